//! The systemd side of unit scopes (`scope = ["postfix.service"]`).
//!
//! systemd gives a service a new cgroup on every start, and the kernel drops a cgroup's
//! programs with the cgroup. So each protected unit gets a drop-in,
//! `/etc/systemd/system/<unit>.d/50-portcullis.conf`, whose `ExecStartPre=+portcullis
//! attach --unit %n` attaches the pinned programs to the unit's new cgroup before its
//! own processes run, on every start, whether the agent runs or not. Without the pins
//! (after a reboot, before the agent has run) that command fails and so does the start:
//! the unit never runs unprotected. `After=portcullis.service` makes a unit started in
//! the same transaction as the agent (at boot) wait for it instead.
//!
//! The drop-ins live in /etc because they must outlive a reboot; the agent writes them
//! on start and reload, removes those of units that left the scope, and `portcullis
//! detach` removes them all. systemd is asked through `systemctl` (daemon-reload, a
//! unit's cgroup and load state): the same interface an admin uses.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Where the drop-ins go: the admin's unit directory, which survives a reboot.
const UNIT_DIR: &str = "/etc/systemd/system";

/// The drop-in's file name in `<unit>.d/`.
const DROP_IN: &str = "50-portcullis.conf";

/// First line of every drop-in portcullis writes: only files with it are ever removed.
const MARKER: &str = "# Written by portcullis";

/// Whether systemd is the service manager here (sd_booted's test).
pub fn is_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The version of systemd on this host (`systemctl --version`), or None when systemctl
/// is not there or says something else.
pub fn version() -> Option<u32> {
    let out = Command::new("systemctl").arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The number of `systemctl --version`'s first line: "systemd 252 (252.36-1~deb12u1)".
fn parse_version(text: &str) -> Option<u32> {
    text.lines()
        .next()?
        .strip_prefix("systemd ")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn drop_in_path(unit: &str) -> PathBuf {
    Path::new(UNIT_DIR).join(format!("{unit}.d")).join(DROP_IN)
}

/// The drop-in of one protected unit. `exe` is this binary, `pin_dir` the agent's.
fn drop_in_text(unit: &str, exe: &Path, pin_dir: &Path) -> String {
    format!(
        "{MARKER}: \"{unit}\" is in its scope. Removed by `portcullis detach` or when the\n\
         # unit leaves the scope; do not edit.\n\
         #\n\
         # Every start of the unit first attaches the pinned programs to its new cgroup. Without\n\
         # them (the agent has not run since boot) the start fails: it never runs unprotected.\n\
         [Unit]\n\
         After=portcullis.service\n\
         \n\
         [Service]\n\
         ExecStartPre=+{} attach --unit %n --pin-dir {}\n",
        exe.display(),
        pin_dir.display()
    )
}

/// This binary's path for the drop-ins. During a package upgrade the running file may
/// be replaced; the kernel then reports it as "... (deleted)", which is the same path.
fn own_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the portcullis binary's path")?;
    let text = exe.to_string_lossy();
    Ok(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(&text).to_owned(),
    ))
}

/// Units that carry a portcullis drop-in for the agent with this pin directory.
fn units_with_drop_in(pin_dir: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(UNIT_DIR) else {
        return Vec::new();
    };
    let ours = format!(" --pin-dir {}\n", pin_dir.display());
    let mut units: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".d")?.to_owned();
            let text = fs::read_to_string(drop_in_path(&name)).ok()?;
            (text.starts_with(MARKER) && text.contains(&ours)).then_some(name)
        })
        .collect();
    units.sort();
    units
}

/// Makes the drop-ins match `units`: writes (or rewrites) those of `units`, removes
/// portcullis's drop-in from every other unit, and reloads systemd if anything changed.
/// Returns the units whose drop-in was removed (their links are the caller's to remove).
pub fn sync_drop_ins(units: &[String], pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    if units.is_empty() && units_with_drop_in(pin_dir).is_empty() {
        return Ok(Vec::new());
    }
    if !units.is_empty() && !is_running() {
        bail!(
            "unit scopes ({}) need systemd as the service manager (no /run/systemd/system); use a cgroup path instead",
            units.join(", ")
        );
    }
    let exe = own_exe()?;
    let mut changed = false;
    for unit in units {
        let path = drop_in_path(unit);
        let text = drop_in_text(unit, &exe, pin_dir);
        if fs::read_to_string(&path).is_ok_and(|t| t == text) {
            continue;
        }
        let dir = path.parent().context("drop-in directory")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        log::info!("scope {unit}: drop-in {} written", path.display());
        changed = true;
    }
    let gone: Vec<String> = units_with_drop_in(pin_dir)
        .into_iter()
        .filter(|u| !units.contains(u))
        .collect();
    for unit in &gone {
        remove_drop_in(unit)?;
        changed = true;
    }
    if changed {
        daemon_reload()?;
    }
    Ok(gone)
}

/// Removes one unit's drop-in (and its directory when that is left empty).
fn remove_drop_in(unit: &str) -> anyhow::Result<()> {
    let path = drop_in_path(unit);
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        // Only when empty: the admin's own drop-ins stay.
        let _ = fs::remove_dir(dir);
    }
    log::info!("scope {unit}: drop-in {} removed", path.display());
    Ok(())
}

/// Removes every drop-in of the agent with this pin directory (`portcullis detach`);
/// reloads systemd if there was any. Returns the units they belonged to.
pub fn remove_all_drop_ins(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let units = units_with_drop_in(pin_dir);
    for unit in &units {
        remove_drop_in(unit)?;
    }
    if !units.is_empty() && is_running() {
        daemon_reload()?;
    }
    Ok(units)
}

/// `systemctl daemon-reload`: systemd reads the drop-ins again.
fn daemon_reload() -> anyhow::Result<()> {
    let out = Command::new("systemctl")
        .arg("daemon-reload")
        .output()
        .context("running systemctl daemon-reload")?;
    if !out.status.success() {
        bail!(
            "systemctl daemon-reload failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One property of a unit (`systemctl show -P`), or None when systemctl cannot say.
fn property(unit: &str, name: &str) -> Option<String> {
    let out = Command::new("systemctl")
        .args(["show", "-P", name, "--", unit])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The cgroup a running unit is in, relative to the cgroup2 mount
/// (`system.slice/postfix.service`); None when it is not running.
pub fn control_group(unit: &str) -> Option<PathBuf> {
    property(unit, "ControlGroup")
        .filter(|cg| !cg.is_empty())
        .map(|cg| PathBuf::from(cg.trim_start_matches('/')))
}

/// Whether systemd knows a unit of this name (None: systemd is not there to ask).
pub fn knows(unit: &str) -> Option<bool> {
    if !is_running() {
        return None;
    }
    property(unit, "LoadState").map(|state| state != "not-found")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn version_is_the_number_of_the_first_line() {
        assert_eq!(
            super::parse_version("systemd 252 (252.36-1~deb12u1)\n+PAM +AUDIT\n"),
            Some(252)
        );
        assert_eq!(super::parse_version("systemd 257.9-1\n"), Some(257));
        assert_eq!(super::parse_version("not systemd\n"), None);
        assert_eq!(super::parse_version(""), None);
    }

    #[test]
    fn drop_in_attaches_before_the_unit_runs_and_orders_after_the_agent() {
        let text = super::drop_in_text(
            "postfix.service",
            Path::new("/usr/bin/portcullis"),
            Path::new("/sys/fs/bpf/portcullis"),
        );
        assert!(text.starts_with(super::MARKER), "{text}");
        assert!(
            text.contains("\n[Unit]\nAfter=portcullis.service\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\n[Service]\nExecStartPre=+/usr/bin/portcullis attach --unit %n --pin-dir /sys/fs/bpf/portcullis\n"
            ),
            "{text}"
        );
    }
}
