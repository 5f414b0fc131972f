//! The Python tools of the fleet tests (`tests/fleet.rs`): ansible-core and ansible-lint
//! from PyPI, pinned in full in `xtask/ansible-requirements.txt`, in a venv under
//! `target/ansible`.
//!
//! The venv is made by Debian's `/usr/bin/python3` (not whatever `python3` is first on
//! PATH): the systemd test host is Debian 12 with the same Python 3.11 at the same path,
//! so the test copies this venv into the container and runs the play there with
//! connection local. A stamp file holds the requirements it was built from; a change of
//! the file rebuilds it, and an interrupted build is never taken as done.

use std::{fs, path::Path, process::Command};

use anyhow::Context as _;

use crate::{sh, step};

/// The venv, relative to the workspace root (tests/fleet.rs reads it there).
pub const VENV_DIR: &str = "target/ansible";

/// The pinned requirements.
const REQUIREMENTS: &str = include_str!("../ansible-requirements.txt");

/// The interpreter the venv is made from; the test host has the same one.
const PYTHON: &str = "/usr/bin/python3";

/// Creates the venv and installs the pinned tools, unless the stamp says it is done.
pub fn venv(root: &Path) -> anyhow::Result<()> {
    let dir = root.join(VENV_DIR);
    let stamp = dir.join(".portcullis-requirements");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENTS) {
        step(&format!(
            "setup: ansible-core and ansible-lint present ({VENV_DIR})"
        ));
        return Ok(());
    }
    step(&format!(
        "setup: installing ansible-core and ansible-lint from PyPI into {VENV_DIR}"
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    sh(Command::new(PYTHON).args(["-m", "venv"]).arg(&dir))?;
    let requirements = dir.join("requirements.txt");
    fs::write(&requirements, REQUIREMENTS)?;
    sh(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    fs::write(&stamp, REQUIREMENTS)?;
    Ok(())
}
