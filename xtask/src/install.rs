//! `cargo xtask install` and `cargo xtask dist`: the binary, the systemd unit, a safe
//! default config (audit mode, host scope, failsafe SSH), the profiles as documentation,
//! man pages and shell completions; `dist` wraps the same tree into a .deb with
//! `dpkg-deb` (no other packaging tool needed).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{sh, step};

/// Where things go.
pub struct Layout {
    /// Staging root (`--destdir`), or `/`.
    pub destdir: PathBuf,
    /// Installation prefix (`--prefix`), e.g. `/usr` or `/usr/local`.
    pub prefix: PathBuf,
}

impl Layout {
    fn at(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        self.destdir.join(p.strip_prefix("/").unwrap_or(p))
    }

    fn under_prefix(&self, rel: &str) -> PathBuf {
        self.at(self.prefix.join(rel))
    }
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    println!("    {}", to.display());
    Ok(())
}

/// Installs into `layout`. The config is never overwritten if it exists.
pub fn install(root: &Path, layout: &Layout) -> anyhow::Result<()> {
    let bin = root.join("target/release/portcullis");
    step(&format!(
        "installing into {} (prefix {})",
        layout.destdir.display(),
        layout.prefix.display()
    ));
    let installed_bin = layout.under_prefix("bin/portcullis");
    copy(&bin, &installed_bin, 0o755)?;

    let unit = fs::read_to_string(root.join("agent/packaging/portcullis.service"))?.replace(
        "/usr/bin/portcullis",
        &layout.prefix.join("bin/portcullis").display().to_string(),
    );
    let unit_path = layout.at("/lib/systemd/system/portcullis.service");
    fs::create_dir_all(unit_path.parent().context("unit dir")?)?;
    fs::write(&unit_path, unit)?;
    println!("    {}", unit_path.display());

    let config = layout.at("/etc/portcullis/portcullis.toml");
    if config.exists() {
        println!("    {} exists: left as it is", config.display());
    } else {
        copy(
            &root.join("agent/packaging/portcullis.toml"),
            &config,
            0o644,
        )?;
    }

    let doc = layout.under_prefix("share/doc/portcullis");
    for entry in fs::read_dir(root.join("profiles"))? {
        let path = entry?.path();
        copy(
            &path,
            &doc.join("profiles")
                .join(path.file_name().context("file name")?),
            0o644,
        )?;
    }
    copy(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    let dashboard = root.join("agent/dashboards/portcullis.json");
    if dashboard.exists() {
        copy(&dashboard, &doc.join("grafana-dashboard.json"), 0o644)?;
    }

    let gen_dir = root.join("target/generated");
    let _ = fs::remove_dir_all(&gen_dir);
    sh(Command::new(&bin)
        .args(["generate", "man"])
        .arg(gen_dir.join("man")))?;
    sh(Command::new(&bin)
        .args(["generate", "completions"])
        .arg(gen_dir.join("completions")))?;
    for entry in fs::read_dir(gen_dir.join("man"))? {
        let path = entry?.path();
        copy(
            &path,
            &layout
                .under_prefix("share/man/man1")
                .join(path.file_name().context("file name")?),
            0o644,
        )?;
    }
    let comp = gen_dir.join("completions");
    copy(
        &comp.join("portcullis.bash"),
        &layout.under_prefix("share/bash-completion/completions/portcullis"),
        0o644,
    )?;
    copy(
        &comp.join("_portcullis"),
        &layout.under_prefix("share/zsh/vendor-completions/_portcullis"),
        0o644,
    )?;
    copy(
        &comp.join("portcullis.fish"),
        &layout.under_prefix("share/fish/vendor_completions.d/portcullis.fish"),
        0o644,
    )?;
    Ok(())
}

/// Builds `target/dist/portcullis_<version>_<arch>.deb`.
pub fn dist(root: &Path) -> anyhow::Result<PathBuf> {
    let stage = root.join("target/dist/root");
    let _ = fs::remove_dir_all(&stage);
    install(
        root,
        &Layout {
            destdir: stage.clone(),
            prefix: PathBuf::from("/usr"),
        },
    )?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::write(
        debian.join("control"),
        format!(
            "Package: portcullis\nVersion: {version}\nArchitecture: {arch}\nMaintainer: portcullis developers <portcullis@localhost>\n\
             Section: net\nPriority: optional\nDepends: libc6\nRecommends: systemd\n\
             Description: eBPF port allowlist for mail-security products\n \
             Turns a mail-security product's published port table (Xeams, Clearswift,\n \
             GFI MailEssentials, MDaemon SecurityGateway, iRedMail) into a stateful,\n \
             counted eBPF allowlist with an audit mode.\n"
        ),
    )?;
    fs::write(
        debian.join("conffiles"),
        "/etc/portcullis/portcullis.toml\n",
    )?;
    let deb = root.join(format!("target/dist/portcullis_{version}_{arch}.deb"));
    step(&format!("dpkg-deb --build -> {}", deb.display()));
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}
