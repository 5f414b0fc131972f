//! `portcullis detect`: which mail-security product runs on this host, from what is
//! installed and running: packages (dpkg's status file, the rpm database), systemd unit
//! files, install directories, and listening TCP sockets (`/proc/net/tcp{,6}`). Each
//! product's signature is data ([`SIGNATURES`]); a product is detected only when every
//! one of its requirements has evidence, and the evidence is printed with it. Listening
//! ports only support a finding (port 25 says "a mail server", not which one).
//!
//! Products that run only on Windows ([`WINDOWS_ONLY`]) are never detected here. The
//! package's postinst runs `portcullis detect --slug` and writes the product it prints
//! into the config; when it prints nothing (none found, or more than one), the config
//! is left for the admin to choose.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use serde::Serialize;

use super::profile::print_json;

const EXAMPLES: &str = "\
A product is detected when every requirement of its signature has evidence: iredmail
needs Postfix and Dovecot (packages or units); xeams its service or install directory;
clearswift-seg its packages, services or install directory. Listening ports are shown
as supporting evidence only. Windows-only products (clearswift-exchange,
gfi-mailessentials, mdaemon-securitygateway) are never detected on Linux.

--write-config FILE fills in `product` in FILE with the one detected product, the
evidence in a comment, when FILE names no product yet (the packaged config), and
checks that FILE still validates (else it is left as it was). A FILE that names a
product or a profile is never changed, and with none or several detected neither.

--json prints {product: slug|null, detected: [{product, evidence: [{kind, name}],
supporting: [..]}], windows_only: [slug]}; product is null unless exactly one product
is detected. --slug prints only that slug (nothing otherwise); the package runs it.

Examples:
  portcullis detect
  portcullis detect --json
  portcullis detect --slug
  portcullis detect --write-config site.toml";

/// Arguments of `portcullis detect`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "slug")]
    json: bool,
    /// Print only the detected product's slug, or nothing when none or several are found.
    #[arg(long)]
    slug: bool,
    /// When exactly one product is detected and this site config names none yet, write
    /// it as `product = ".."` (the package does this on first install); otherwise leave
    /// the file as it is.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "slug"])]
    write_config: Option<PathBuf>,
    /// Inspect the host whose root filesystem is at DIR (an image, a container) instead
    /// of this one: its dpkg status, unit files, install directories and, if DIR/proc is
    /// mounted, its sockets. The rpm database is read only for the running host.
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    root: PathBuf,
}

/// One thing on the host that points at a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
enum Marker {
    /// An installed package (dpkg or rpm).
    Package(&'static str),
    /// A systemd unit file.
    Unit(&'static str),
    /// An install directory.
    Dir(&'static str),
}

/// A product's signature: every requirement needs one marker present (any of them).
struct Signature {
    slug: &'static str,
    requires: &'static [&'static [Marker]],
    /// TCP ports the product listens on, shown as supporting evidence.
    ports: &'static [u16],
}

use Marker::{Dir, Package, Unit};

/// What each Linux product installs. iRedMail is a set-up of Postfix and Dovecot (plus
/// its own directory when installed by its script); Xeams installs itself under
/// /opt/Xeams with a service of its name; Clearswift SEG is a RHEL appliance whose
/// packages and services carry the vendor's name.
const SIGNATURES: &[Signature] = &[
    Signature {
        slug: "iredmail",
        requires: &[
            &[Package("postfix"), Unit("postfix.service")],
            &[
                Package("dovecot-core"),
                Package("dovecot"),
                Unit("dovecot.service"),
            ],
        ],
        ports: &[25, 587, 143, 993],
    },
    Signature {
        slug: "xeams",
        requires: &[&[Unit("xeams.service"), Dir("opt/Xeams"), Dir("opt/xeams")]],
        ports: &[5272, 25],
    },
    Signature {
        slug: "clearswift-seg",
        requires: &[&[
            Package("clearswift-seg"),
            Package("cs-gateway"),
            Unit("cs-gateway.service"),
            Dir("opt/clearswift"),
        ]],
        ports: &[25, 443],
    },
];

/// Profiles of products that run only on Windows: never detected on Linux.
const WINDOWS_ONLY: &[&str] = &[
    "clearswift-exchange",
    "gfi-mailessentials",
    "mdaemon-securitygateway",
];

/// What was found on the host.
#[derive(Debug, Default)]
struct Host {
    packages: BTreeSet<String>,
    units: BTreeSet<String>,
    dirs: BTreeSet<String>,
    listening: BTreeSet<u16>,
}

impl Host {
    fn read(root: &Path) -> Self {
        let mut host = Self {
            packages: dpkg_installed(&root.join("var/lib/dpkg/status")),
            ..Self::default()
        };
        if root == Path::new("/") {
            host.packages.extend(rpm_installed());
        }
        for dir in [
            "etc/systemd/system",
            "usr/lib/systemd/system",
            "lib/systemd/system",
        ] {
            if let Ok(entries) = fs::read_dir(root.join(dir)) {
                host.units.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().to_lowercase()),
                );
            }
        }
        for sig in SIGNATURES {
            for marker in sig.requires.iter().flat_map(|r| r.iter()) {
                if let Dir(d) = marker
                    && root.join(d).is_dir()
                {
                    host.dirs.insert((*d).to_string());
                }
            }
        }
        for file in ["proc/net/tcp", "proc/net/tcp6"] {
            if let Ok(text) = fs::read_to_string(root.join(file)) {
                host.listening.extend(tcp_listeners(&text));
            }
        }
        host
    }

    fn has(&self, marker: Marker) -> bool {
        match marker {
            Package(p) => self.packages.contains(p),
            Unit(u) => self.units.contains(u),
            Dir(d) => self.dirs.contains(d),
        }
    }
}

/// Packages dpkg lists as installed ("Status: install ok installed").
fn dpkg_installed(status: &Path) -> BTreeSet<String> {
    let Ok(text) = fs::read_to_string(status) else {
        return BTreeSet::new();
    };
    text.split("\n\n")
        .filter(|stanza| stanza.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|stanza| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix("Package: "))
                .map(|p| p.trim().to_string())
        })
        .collect()
}

/// Packages in the rpm database, when rpm is installed (RHEL family); empty otherwise.
fn rpm_installed() -> BTreeSet<String> {
    Command::new("rpm")
        .args(["-qa", "--qf", "%{NAME}\\n"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Local ports of sockets in state LISTEN (0A) in a /proc/net/tcp{,6} table.
fn tcp_listeners(table: &str) -> BTreeSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            (state == "0A")
                .then(|| local.rsplit_once(':'))
                .flatten()
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
        })
        .collect()
}

/// One detected product and why.
#[derive(Debug, Serialize)]
struct Finding {
    product: &'static str,
    evidence: Vec<Marker>,
    /// Listening TCP ports the product uses, as "tcp/25".
    supporting: Vec<String>,
}

fn detect(host: &Host) -> Vec<Finding> {
    SIGNATURES
        .iter()
        .filter_map(|sig| {
            let mut evidence = Vec::new();
            for requirement in sig.requires {
                let found: Vec<Marker> = requirement
                    .iter()
                    .copied()
                    .filter(|m| host.has(*m))
                    .collect();
                if found.is_empty() {
                    return None;
                }
                evidence.extend(found);
            }
            Some(Finding {
                product: sig.slug,
                evidence,
                supporting: sig
                    .ports
                    .iter()
                    .filter(|p| host.listening.contains(p))
                    .map(|p| format!("tcp/{p} listening"))
                    .collect(),
            })
        })
        .collect()
}

#[derive(Serialize)]
struct Report<'a> {
    product: Option<&'static str>,
    detected: &'a [Finding],
    windows_only: &'static [&'static str],
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let findings = detect(&Host::read(&args.root));
    let product = match findings.as_slice() {
        [one] => Some(one.product),
        _ => None,
    };
    if let Some(config) = &args.write_config {
        return write_config(config, product.and(findings.first()));
    }
    let mut out = std::io::stdout().lock();
    if args.slug {
        if let Some(p) = product {
            writeln!(out, "{p}")?;
        }
    } else if args.json {
        drop(out);
        print_json(&Report {
            product,
            detected: &findings,
            windows_only: WINDOWS_ONLY,
        })?;
    } else {
        for f in &findings {
            writeln!(out, "{}: {}", f.product, describe(f))?;
        }
        match (product, findings.len()) {
            (Some(p), _) => writeln!(
                out,
                "product: {p} (set product = \"{p}\" in /etc/portcullis/portcullis.toml)"
            )?,
            (None, 0) => writeln!(
                out,
                "product: none detected; choose one from `portcullis profile list` and set \
                 product = \"<slug>\" in /etc/portcullis/portcullis.toml"
            )?,
            (None, _) => writeln!(
                out,
                "product: more than one detected; set the one this host runs as product = \
                 \"<slug>\" in /etc/portcullis/portcullis.toml"
            )?,
        }
        writeln!(
            out,
            "never detected on Linux (Windows-only): {}",
            WINDOWS_ONLY.join(", ")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(f: &Finding) -> String {
    f.evidence
        .iter()
        .map(|m| match m {
            Package(p) => format!("package {p}"),
            Unit(u) => format!("unit {u}"),
            Dir(d) => format!("directory /{d}"),
        })
        .chain(f.supporting.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fills in the product of a site config that names none (the packaged one before a
/// product was chosen). A config that names a product or a profile is the admin's
/// choice and is never changed; the result must still load as a site config, otherwise
/// the file is not touched.
fn write_config(config: &Path, finding: Option<&Finding>) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let Some(finding) = finding else {
        println!(
            "{}: left as it is (no single product detected)",
            config.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let site = crate::config::load_site(config)?;
    if let Some(chosen) = site
        .product
        .as_ref()
        .map(|p| p.get_ref().clone())
        .or_else(|| {
            site.profile
                .as_ref()
                .map(|p| format!("profile {}", p.get_ref().display()))
        })
    {
        println!(
            "{}: left as it is (it already names {chosen}; detected: {})",
            config.display(),
            finding.product
        );
        return Ok(ExitCode::SUCCESS);
    }
    let text =
        fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let updated = with_product(&text, finding);
    let tmp = config.with_extension("toml.detect");
    fs::write(&tmp, &updated).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = crate::config::load_site(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow::Error::from(e).context(format!(
            "{} with product = \"{}\" does not validate; left as it was",
            config.display(),
            finding.product
        )));
    }
    fs::rename(&tmp, config).with_context(|| format!("replacing {}", config.display()))?;
    println!(
        "{}: product = \"{}\" ({})",
        config.display(),
        finding.product,
        describe(finding)
    );
    Ok(ExitCode::SUCCESS)
}

/// The text of a config that names no product with `product = ".."` added: in place of
/// the packaged placeholder comment (`# product = "<slug>"`) when it has one, else
/// before its first setting (top level, so before any `[table]`).
fn with_product(text: &str, finding: &Finding) -> String {
    let line = format!(
        "# Chosen by `portcullis detect` at install: {}.\nproduct = \"{}\"\n",
        describe(finding),
        finding.product
    );
    let mut done = false;
    let mut out = String::with_capacity(text.len() + 100);
    for l in text.lines() {
        let trimmed = l.trim_start();
        let placeholder = trimmed
            .strip_prefix('#')
            .is_some_and(|rest| rest.trim_start().starts_with("product ="));
        let setting = !trimmed.is_empty() && !trimmed.starts_with('#');
        if !done && (placeholder || setting) {
            out.push_str(&line);
            done = true;
            if placeholder {
                continue;
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    if !done {
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(packages: &[&str], units: &[&str], listening: &[u16]) -> Host {
        Host {
            packages: packages.iter().map(|s| s.to_string()).collect(),
            units: units.iter().map(|s| s.to_string()).collect(),
            dirs: BTreeSet::new(),
            listening: listening.iter().copied().collect(),
        }
    }

    fn products(h: &Host) -> Vec<&'static str> {
        detect(h).iter().map(|f| f.product).collect()
    }

    #[test]
    fn postfix_and_dovecot_make_iredmail_and_either_alone_does_not() {
        let both = host(&["postfix", "dovecot-core"], &[], &[25, 22]);
        let found = detect(&both);
        assert_eq!(products(&both), ["iredmail"]);
        assert_eq!(
            found[0].evidence,
            [Package("postfix"), Package("dovecot-core")]
        );
        assert_eq!(found[0].supporting, ["tcp/25 listening"]);
        // Units count as well as packages (a source install).
        assert_eq!(
            products(&host(&[], &["postfix.service", "dovecot.service"], &[])),
            ["iredmail"]
        );
        assert!(products(&host(&["postfix"], &[], &[25])).is_empty());
        assert!(products(&host(&["dovecot-core"], &[], &[143])).is_empty());
    }

    #[test]
    fn write_config_fills_in_the_placeholder_or_the_top() {
        let finding = Finding {
            product: "iredmail",
            evidence: vec![Package("postfix"), Unit("dovecot.service")],
            supporting: vec![],
        };
        let chosen = "# Chosen by `portcullis detect` at install: package postfix, unit \
                      dovecot.service.\nproduct = \"iredmail\"\n";
        let text = "# site\n# product = \"<slug>\"\nmode = \"audit\"\n[peers]\n";
        assert_eq!(
            with_product(text, &finding),
            format!("# site\n{chosen}mode = \"audit\"\n[peers]\n")
        );
        let text = "# site\n\nmode = \"audit\"\n";
        assert_eq!(
            with_product(text, &finding),
            format!("# site\n\n{chosen}mode = \"audit\"\n")
        );
    }

    #[test]
    fn write_config_never_changes_a_chosen_product() {
        // A directory per test: the tests of one binary run in parallel in one process.
        let dir =
            std::env::temp_dir().join(format!("portcullis-detect-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("site.toml");
        let finding = Finding {
            product: "iredmail",
            evidence: vec![Package("postfix")],
            supporting: vec![],
        };
        fs::write(&config, "product = \"xeams\"\n").unwrap();
        write_config(&config, Some(&finding)).unwrap();
        assert_eq!(
            fs::read_to_string(&config).unwrap(),
            "product = \"xeams\"\n"
        );
        fs::write(&config, "# product = \"<slug>\"\nmode = \"audit\"\n").unwrap();
        write_config(&config, Some(&finding)).unwrap();
        let text = fs::read_to_string(&config).unwrap();
        assert!(text.contains("\nproduct = \"iredmail\"\nmode"), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ports_alone_detect_nothing() {
        assert!(products(&host(&[], &[], &[25, 143, 993, 5272, 443])).is_empty());
    }

    #[test]
    fn xeams_by_its_service_or_directory() {
        assert_eq!(products(&host(&[], &["xeams.service"], &[])), ["xeams"]);
        let mut h = host(&[], &[], &[5272]);
        h.dirs.insert("opt/Xeams".into());
        let found = detect(&h);
        assert_eq!(found[0].evidence, [Dir("opt/Xeams")]);
        assert_eq!(found[0].supporting, ["tcp/5272 listening"]);
    }

    #[test]
    fn every_builtin_profile_is_detectable_or_windows_only_never_both() {
        for profile in crate::config::profile::builtin().unwrap() {
            let slug = profile.slug.get_ref().as_str();
            let detectable = SIGNATURES.iter().any(|s| s.slug == slug);
            let windows = WINDOWS_ONLY.contains(&slug);
            assert!(
                detectable != windows,
                "profile {slug}: expected exactly one of a Linux signature or Windows-only, \
                 got signature={detectable} windows_only={windows}"
            );
        }
    }

    #[test]
    fn dpkg_status_counts_installed_packages_only() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-detect-dpkg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let status = dir.join("status");
        fs::write(
            &status,
            "Package: postfix\nStatus: install ok installed\nVersion: 3.7\n\n\
             Package: dovecot-core\nStatus: deinstall ok config-files\n\n\
             Package: libc6\nStatus: install ok installed\n",
        )
        .unwrap();
        let got = dpkg_installed(&status);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["libc6", "postfix"],
            "removed packages (config-files) are not installed"
        );
    }

    #[test]
    fn proc_net_tcp_listeners_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   \
            1: 0100007F:1496 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        assert_eq!(
            tcp_listeners(table).into_iter().collect::<Vec<_>>(),
            [25],
            "the established socket on 5270 is not a listener"
        );
    }
}
