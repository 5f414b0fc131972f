//! Cgroup ids to names: the deny log shows `cgroup_path` and `unit` for the cgroup id
//! an event carries, found by walking the cgroup v2 tree (cached, and walked again at
//! most every few seconds for an id it does not know).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::datapath::paths;

/// A cgroup id the cache does not know triggers a new walk of the cgroup tree at most
/// this often (a unit that starts gets a new cgroup; a storm of events from a cgroup
/// that is already gone must not turn into a storm of directory walks).
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// Most cgroup directories one walk visits (a runaway tree must not stall the agent).
const MAX_CGROUPS: usize = 100_000;

/// Where an event's cgroup is, when the cgroup tree knows its id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupName {
    /// Path relative to the cgroup v2 mount ("/" for the root).
    pub path: String,
    /// The innermost systemd unit (`*.service` or `*.scope`) on the path, if any.
    pub unit: Option<String>,
}

impl CgroupName {
    pub(super) fn from_relative(path: &str) -> Self {
        let unit = path
            .rsplit('/')
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
            .map(str::to_owned);
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        Self { path, unit }
    }
}

/// cgroup id -> path. The id of a cgroup v2 directory is its inode number, so one walk
/// of the tree fills the cache; ids it does not know trigger another walk, at most once
/// per [`RESCAN_INTERVAL`].
#[derive(Debug, Default)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    by_id: HashMap<u64, CgroupName>,
    last_walk: Option<Instant>,
}

impl CgroupNames {
    /// A cache over the cgroup v2 mount (found in /proc/self/mountinfo; none: no names).
    pub fn new() -> Self {
        Self {
            root: paths::cgroup2_mount().ok(),
            ..Self::default()
        }
    }

    /// A cache over a given tree (tests).
    #[cfg(test)]
    fn at(root: &std::path::Path) -> Self {
        Self {
            root: Some(root.to_path_buf()),
            ..Self::default()
        }
    }

    /// The name of cgroup `id`, if the tree has it.
    pub fn resolve(&mut self, id: u64) -> Option<&CgroupName> {
        if id == 0 {
            return None;
        }
        if !self.by_id.contains_key(&id)
            && self
                .last_walk
                .is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL)
        {
            self.walk();
        }
        self.by_id.get(&id)
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some(root) = &self.root else { return };
        let mut by_id = HashMap::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if by_id.len() >= MAX_CGROUPS {
                break;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            by_id.insert(meta.ino(), CgroupName::from_relative(&rel));
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        self.by_id = by_id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_ids_resolve_to_paths_and_units() {
        let dir = std::env::temp_dir().join(format!("portcullis-cg-{}", std::process::id()));
        let unit = dir.join("system.slice/xeams.service");
        fs::create_dir_all(&unit).unwrap();
        let ino = fs::metadata(&unit).unwrap().ino();
        let mut names = CgroupNames::at(&dir);
        let got = names.resolve(ino).cloned().unwrap();
        assert_eq!(
            got,
            CgroupName {
                path: "system.slice/xeams.service".into(),
                unit: Some("xeams.service".into())
            }
        );
        let root = fs::metadata(&dir).unwrap().ino();
        assert_eq!(names.resolve(root).unwrap().path, "/");
        assert_eq!(names.resolve(0), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
