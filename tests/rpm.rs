//! The .rpm's scriptlets, really run by rpm: installed, upgraded and erased into a
//! scratch root (a copy of the Debian root filesystem the systemd tests boot, which has
//! the /bin/sh and the offline `systemctl` the scriptlets call). No systemd runs in the
//! scratch root, so what the scriptlets can do there is what they must do offline:
//! enable the unit on install only (an admin's `disable` survives an upgrade), keep an
//! edited config on upgrade, and on erase disable the unit and remove every file but the
//! edited config (kept as .rpmsave). Starting and restarting the unit under a running
//! systemd is the .deb's test on the booted host (`tests/systemd.rs`); the rpm's
//! scriptlets take the same branches (`agent/packaging/rpm`).
//!
//! Every rpm command runs in a private mount namespace (`unshare --mount`): the %preun
//! runs `portcullis detach` chrooted, and nothing it might mount may reach the machine.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use portcullis_tests::{must, nspawn, require_root, sh, stderr, stdout};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The .rpm under test: `PORTCULLIS_RPM` (set by `cargo xtask test`), else the newest
/// `target/dist/portcullis-*.rpm` that `cargo xtask dist` built.
fn rpm_file() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_RPM") {
        return PathBuf::from(p);
    }
    let dir = workspace_root().join("target/dist");
    fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rpm"))
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no portcullis-*.rpm in {}: run `cargo xtask dist` (or set PORTCULLIS_RPM)",
                dir.display()
            )
        })
}

/// A copy of the root filesystem, removed on drop.
struct ScratchRoot(PathBuf);

impl ScratchRoot {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-rpm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        must(&format!(
            "cp -a {} {}",
            nspawn::rootfs().display(),
            dir.display()
        ));
        // Not a booted system: the scriptlets must see no running systemd.
        assert!(
            !dir.join("run/systemd/system").exists(),
            "the copied root filesystem has run/systemd/system"
        );
        Self(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// `rpm --root` with these arguments, in a private mount namespace; the output of a
    /// command that must succeed and whose scriptlets must not fail.
    fn rpm(&self, args: &str) -> String {
        let cmd = format!(
            "unshare --mount --propagation private rpm --root {} {args}",
            self.0.display()
        );
        let out = sh(&cmd);
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(
            out.status.success() && !e.contains("scriptlet failed"),
            "{cmd}: expected success with no failed scriptlet, got {}\nstdout: {o}\nstderr: {e}",
            out.status
        );
        format!("{o}{e}")
    }

    /// systemctl inside the root, offline (`systemctl --root`).
    fn is_enabled(&self) -> String {
        let out = Command::new("systemctl")
            .arg(format!("--root={}", self.0.display()))
            .args(["is-enabled", "portcullis.service"])
            .output()
            .expect("run systemctl --root");
        stdout(&out).trim().to_string()
    }

    fn set_enabled(&self, on: bool) {
        must(&format!(
            "systemctl --root={} {} portcullis.service",
            self.0.display(),
            if on { "enable" } else { "disable" }
        ));
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Release 2 of the same package, built with cargo-generate-rpm from the files
/// `cargo xtask dist` staged, so that rpm sees a real upgrade.
fn release_2(into: &Path) -> PathBuf {
    let root = workspace_root();
    let out = Command::new("cargo")
        .current_dir(&root)
        .args([
            "generate-rpm",
            "-p",
            "agent",
            "-s",
            "release = \"2\"",
            "--output",
        ])
        .arg(into)
        .output()
        .expect("run cargo generate-rpm");
    assert!(
        out.status.success(),
        "cargo generate-rpm for release 2 failed (run `cargo xtask dist` first): {}",
        stderr(&out)
    );
    into.join(
        fs::read_dir(into)
            .expect("read release 2 dir")
            .flatten()
            .map(|e| e.file_name())
            .find(|n| n.to_string_lossy().ends_with("-2.x86_64.rpm"))
            .expect("a -2 rpm"),
    )
}

#[test]
fn rpm_install_upgrade_erase_in_a_scratch_root() {
    require_root();
    let rpm = rpm_file();
    let root = ScratchRoot::new();
    root.rpm("--initdb");

    // Install: %post ran `portcullis detect --write-config` (this root has Postfix and
    // Dovecot installed, so it chose iredmail), files in place, the unit enabled, the
    // config in audit mode.
    let installed = root.rpm(&format!("-i --nodeps {}", rpm.display()));
    assert!(
        installed.contains("/etc/portcullis/portcullis.toml: product = \"iredmail\""),
        "%post runs portcullis detect on install; rpm said:\n{installed}"
    );
    for f in [
        "usr/bin/portcullis",
        "usr/lib/systemd/system/portcullis.service",
        "etc/portcullis/portcullis.toml",
        "usr/share/man/man1/portcullis.1.gz",
        "usr/share/doc/portcullis/docs/install.md",
    ] {
        assert!(root.path(f).is_file(), "installed: expected {f}, missing");
    }
    assert_eq!(root.is_enabled(), "enabled", "install enables the unit");
    let config = fs::read_to_string(root.path("etc/portcullis/portcullis.toml")).unwrap();
    assert!(
        config.contains("mode = \"audit\""),
        "the installed config starts in audit mode:\n{config}"
    );
    let version = must(&format!(
        "chroot {} /usr/bin/portcullis --version",
        root.0.display()
    ));
    assert!(version.contains("portcullis"), "binary runs: {version}");

    // Upgrade: the admin disabled the unit and edited the config; both survive.
    root.set_enabled(false);
    let edited = format!("{config}\n# edited by the admin\n");
    fs::write(root.path("etc/portcullis/portcullis.toml"), &edited).unwrap();
    let scratch = root.path("tmp/release-2");
    fs::create_dir_all(&scratch).unwrap();
    let rpm2 = release_2(&scratch);
    root.rpm(&format!("-U --nodeps {}", rpm2.display()));
    let q = root.rpm("-q portcullis");
    assert!(
        q.contains("portcullis-0.1.0-2"),
        "upgraded to release 2: {q}"
    );
    assert_eq!(
        root.is_enabled(),
        "disabled",
        "an upgrade does not enable a unit the admin disabled"
    );
    assert_eq!(
        fs::read_to_string(root.path("etc/portcullis/portcullis.toml")).unwrap(),
        edited,
        "an upgrade keeps the edited config"
    );

    // Erase: the unit disabled, the files gone, the edited config kept as .rpmsave.
    root.set_enabled(true);
    root.rpm("-e --nodeps portcullis");
    assert_eq!(root.is_enabled(), "", "erase leaves no unit to be enabled");
    for f in [
        "usr/bin/portcullis",
        "usr/lib/systemd/system/portcullis.service",
        "etc/systemd/system/multi-user.target.wants/portcullis.service",
        "etc/portcullis/portcullis.toml",
    ] {
        assert!(
            !root.path(f).exists() && root.path(f).symlink_metadata().is_err(),
            "erased: expected {f} gone, still there"
        );
    }
    assert!(
        root.path("etc/portcullis/portcullis.toml.rpmsave")
            .is_file(),
        "erase keeps the edited config as portcullis.toml.rpmsave"
    );
    let q = sh(&format!("rpm --root {} -q portcullis", root.0.display()));
    assert!(
        !q.status.success(),
        "rpm -q after erase: expected not installed, got {}",
        stdout(&q)
    );
}
