//! Every example in `portcullis --help` and in each subcommand's `--help` is run here,
//! on the built binary, without root, so that help cannot drift from what the binary
//! accepts. Examples that only make sense against a running agent (they read or change
//! its pinned maps) or that need the internet are listed in [`NOT_RUN`] with the reason;
//! the test fails when an example is neither run nor listed, and when a listed one no
//! longer appears in any help text.
//!
//! How an example is run: with bash (`pipefail`, so `... --json | jq ...` fails when
//! either side does), the binary first on PATH, in a scratch directory holding the
//! `site.toml` and `my-product.toml` the examples name. `/etc/portcullis/portcullis.toml`
//! is replaced by the config the package installs there (`agent/packaging/portcullis.toml`),
//! with the product `portcullis detect` would have filled in (xeams).
//! `run` examples get `--dry-run`: everything `run` does before it touches the kernel.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

/// Examples not run, by prefix, and why. Each must match at least one example.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "portcullis status",
        "reads the running agent's pinned maps (root, a running agent): tests/reporting.rs",
    ),
    (
        "portcullis report",
        "reads the running agent's maps and deny aggregate (root, a running agent): tests/readiness.rs",
    ),
    (
        "portcullis mode",
        "writes the running policy's mode (root, a running agent): tests/service.rs",
    ),
    (
        "portcullis reload",
        "signals the running agent (root, a running agent): tests/service.rs",
    ),
    (
        "systemctl reload portcullis",
        "needs the installed unit under systemd: tests/systemd.rs",
    ),
    (
        "portcullis run --product iredmail --feature pop3s --scope postfix@-.service",
        "a unit scope is asked of systemd as PID 1, which this test's host need not run: tests/systemd.rs",
    ),
    (
        "portcullis doctor",
        "probes the running kernel and verifies the programs (root): tests/doctor.rs",
    ),
    (
        "portcullis detach",
        "removes pinned programs from bpffs (root): tests/datapath.rs, tests/systemd.rs",
    ),
    (
        "ExecCondition=+/usr/bin/portcullis attach",
        "a drop-in line, run by systemd as a unit starts (root): tests/systemd.rs",
    ),
    (
        "portcullis explain --product gfi-mailessentials --direction out --protocol tcp --port 443 --peer meupdate.gfi.com",
        "resolves a vendor's server on the internet; --peer NAME against a local resolver: tests/names.rs",
    ),
];

/// A site config for the examples that name `site.toml`.
const SITE_TOML: &str = r#"product = "iredmail"
features = ["imaps"]
mode = "audit"
scope = ["host"]

[peers]
dns-servers = ["192.0.2.53/32"]
"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

fn help(path: &[&str]) -> String {
    let out = Command::new(bin())
        .args(path)
        .arg("--help")
        .env("PORTCULLIS_LOG", "off")
        .output()
        .expect("run portcullis --help");
    assert!(
        out.status.success(),
        "portcullis {} --help failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The visible subcommands listed under "Commands:" (clap's own `help` left out).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A name starts in column 3; deeper lines continue a wrapped description.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// The example lines of one help text: the indented lines after a line starting with
/// "Example", continuation lines (`\`) joined, trailing `  # comments` removed.
fn examples(help: &str, whose: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut lines = help
        .lines()
        .skip_while(|l| !l.starts_with("Example"))
        .skip(1)
        .take_while(|l| l.starts_with("  "));
    while let Some(line) = lines.next() {
        let mut example = line.trim().to_string();
        while let Some(head) = example.strip_suffix('\\') {
            let next = lines
                .next()
                .unwrap_or_else(|| panic!("{whose}: example ends with a backslash: {example}"));
            example = format!("{} {}", head.trim_end(), next.trim());
        }
        if let Some(at) = example.find("  #") {
            example.truncate(at);
        }
        let example = example.trim().to_string();
        assert!(
            example.starts_with("portcullis ")
                || NOT_RUN.iter().any(|(p, _)| example.starts_with(p)),
            "{whose}: example line {example:?} is not a portcullis command (a help line wrapped \
             by clap? keep examples under 100 columns, or continue them with a backslash)"
        );
        found.push(example);
    }
    found
}

/// Every example of the top-level help and of every (nested) subcommand's help.
fn all_examples() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = queue.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let whose = format!("portcullis {} --help", args.join(" "));
        all.extend(examples(&text, &whose));
        for sub in subcommands(&text) {
            let mut child = path.clone();
            child.push(sub);
            queue.push(child);
        }
    }
    all
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-help-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::write(dir.join("site.toml"), SITE_TOML).expect("write site.toml");
        std::fs::copy(
            manifest.join("../profiles/xeams.toml"),
            dir.join("my-product.toml"),
        )
        .expect("copy a profile as my-product.toml");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_help_example_runs_or_is_listed_with_its_reason() {
    let all = all_examples();
    assert!(
        all.len() >= 20,
        "found only {} examples: is the help format still 'Examples:' + indented lines?\n{all:#?}",
        all.len()
    );
    let scratch = Scratch::new();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/portcullis.toml"),
    )
    .expect("read the packaged config");
    assert!(
        shipped.contains("\n# product = \"<slug>\"\n"),
        "the packaged config has its product placeholder"
    );
    let shipped_config = scratch.0.join("portcullis.toml");
    std::fs::write(
        &shipped_config,
        shipped.replace("\n# product = \"<slug>\"\n", "\nproduct = \"xeams\"\n"),
    )
    .expect("write the installed config");
    let bin_dir = Path::new(bin()).parent().expect("binary dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    let mut failures = Vec::new();
    for example in &all {
        if NOT_RUN.iter().any(|(p, _)| example.starts_with(p)) {
            continue;
        }
        let mut command = example.replace(
            "/etc/portcullis/portcullis.toml",
            shipped_config.to_str().expect("UTF-8 path"),
        );
        if command.starts_with("portcullis run ") && !command.contains("--dry-run") {
            command = match command.split_once(" | ") {
                Some((head, tail)) => format!("{head} --dry-run | {tail}"),
                None => format!("{command} --dry-run"),
            };
        }
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &command])
            .current_dir(&scratch.0)
            .env("PATH", &path)
            .env("PORTCULLIS_LOG", "off")
            .output()
            .expect("run bash");
        ran += 1;
        if !out.status.success() {
            failures.push(format!(
                "{example}\n    ran: {command}\n    exit: {:?}\n    stderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let stale: Vec<_> = NOT_RUN
        .iter()
        .filter(|(p, _)| !all.iter().any(|e| e.starts_with(p)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {ran} help examples failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        stale.is_empty(),
        "NOT_RUN lists examples no help text has any more: {stale:?}"
    );
    eprintln!(
        "ran {ran} help examples; not run ({}): {:#?}",
        all.len() - ran,
        NOT_RUN
    );
}
