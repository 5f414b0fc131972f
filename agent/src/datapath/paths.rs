//! Where things live on the host: the pin directory (maps and links under bpffs) and the
//! state directory ([`PathArgs`]), the cgroup v2 mount and bpffs, both found in
//! /proc/self/mountinfo and never assumed.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Where pins and state live. Shared by `run`, `status`, `detach`, `reload` and `attach`.
#[derive(Clone, Debug, clap::Args)]
pub struct PathArgs {
    /// bpffs directory for pinned maps and links (bpffs is mounted if it is not).
    /// Default: the config's `pin_dir`, else /sys/fs/bpf/portcullis.
    #[arg(long, env = "PORTCULLIS_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory for the agent's state file (rule ids, scope, policy version).
    #[arg(long, env = "PORTCULLIS_STATE_DIR", default_value = "/run/portcullis")]
    pub state_dir: PathBuf,
}

/// Where maps and links are pinned unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis";

impl PathArgs {
    /// The pin directory: the flag or environment, else [`DEFAULT_PIN_DIR`].
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR))
    }

    /// Directory of the pinned maps.
    pub fn maps(&self) -> PathBuf {
        self.pin_dir().join("maps")
    }

    /// Pin path of one map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Directory of the pinned links.
    pub fn links(&self) -> PathBuf {
        self.pin_dir().join("links")
    }

    /// Directory of the pinned programs (what `attach --unit` attaches to a unit's new
    /// cgroup when the agent is not there to do it).
    pub fn progs(&self) -> PathBuf {
        self.pin_dir().join("progs")
    }

    /// Pin path of one program.
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs().join(name)
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

/// The mounts of /proc/self/mountinfo: (mount point, filesystem type).
pub(super) fn mounts() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// (mount point, filesystem type) of each line of a mountinfo text; malformed lines are
/// skipped.
pub(super) fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ..."
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        let Some(fstype) = line.split(" - ").nth(1).and_then(|s| s.split(' ').next()) else {
            continue;
        };
        out.push((PathBuf::from(unescape(mount_point)), fstype.to_owned()));
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (never assumed).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    mounts()?
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(p, _)| p)
        .context("no cgroup v2 filesystem is mounted (portcullis attaches to cgroup v2; mount one with `mount -t cgroup2 none /sys/fs/cgroup`)")
}

/// Makes sure the pin directory is on a bpffs, mounting bpffs at its parent when nothing
/// is mounted there (a fresh machine often has no /sys/fs/bpf mount).
pub fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    let parent = pin_dir
        .parent()
        .context("the pin directory has no parent")?;
    let on_bpffs = |mounts: &[(PathBuf, String)]| {
        mounts
            .iter()
            .filter(|(m, _)| parent.starts_with(m))
            .max_by_key(|(m, _)| m.as_os_str().len())
            .is_some_and(|(_, t)| t == "bpf")
    };
    if on_bpffs(&mounts()?) {
        return Ok(());
    }
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let target = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings or NULL for `data`.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!(
                "mounting bpffs at {} (needs CAP_SYS_ADMIN)",
                parent.display()
            )
        });
    }
    log::info!("mounted bpffs at {}", parent.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_gives_mount_points_and_types_unescaped() {
        let text = "\
25 1 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
40 25 0:33 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:15 - bpf bpf rw,mode=700
41 1 0:34 / /mnt/with\\040space rw - tmpfs tmpfs rw
short line
";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                (PathBuf::from("/sys"), "sysfs".to_owned()),
                (PathBuf::from("/sys/fs/cgroup"), "cgroup2".to_owned()),
                (PathBuf::from("/sys/fs/bpf"), "bpf".to_owned()),
                (PathBuf::from("/mnt/with space"), "tmpfs".to_owned()),
            ]
        );
    }

    #[test]
    fn mountinfo_with_several_optional_fields_still_finds_the_type() {
        // Optional fields ("shared:N master:M") vary in number; the type follows " - ".
        let text =
            "30 25 0:26 / /sys/fs/cgroup/unified rw shared:8 master:2 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![(
                PathBuf::from("/sys/fs/cgroup/unified"),
                "cgroup2".to_owned()
            )]
        );
    }
}
