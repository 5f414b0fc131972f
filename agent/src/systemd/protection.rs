//! Whether each unit in scope is protected, measured: its live cgroup (systemd's
//! ControlGroup) asked of the kernel for our four programs ([`cgroup_query`]), and its
//! effective `ExecCondition=` (after every drop-in, the admin's override.conf included)
//! checked for our attach. Pin files say neither: a pin outlives its cgroup, and an
//! `ExecCondition=` reset in a later drop-in leaves the pins as they were.
//!
//! `status`, `/metrics` and the agent's periodic check all read [`units`].
//!
//! [`cgroup_query`]: crate::datapath::cgroup_query

use std::path::PathBuf;

use serde::Serialize;

use super::units::{instances, is_template};
use crate::{
    datapath::{
        cgroup_query,
        paths::{PathArgs, cgroup2_mount},
    },
    model::ScopeTarget,
};

/// One unit's protection, as `status --json` shows it under `units`.
#[derive(Clone, Debug, Serialize)]
pub struct UnitProtection {
    /// The unit (an instance, for a template scope).
    pub unit: String,
    /// The scope that put it there (the template, for an instance).
    pub scope: String,
    /// Whether the unit has a live cgroup now.
    pub running: bool,
    /// Its cgroup, relative to the cgroup v2 mount, while it runs.
    pub cgroup: Option<PathBuf>,
    /// Whether its effective ExecCondition= still runs our attach (every future start).
    pub attach_on_start: bool,
    /// Our programs the kernel lists on its live cgroup (4 when protected; 0 when not
    /// running).
    pub programs_attached: usize,
    /// Running: all four programs attached and attach_on_start. Not running:
    /// attach_on_start.
    pub protected: bool,
    /// Why not, when not protected.
    pub reason: Option<String>,
}

/// The protection of every unit the scopes name (templates: each loaded instance, or the
/// template itself when none is loaded). Empty without unit scopes or without systemd.
pub fn units(paths: &PathArgs, scopes: &[ScopeTarget]) -> Vec<UnitProtection> {
    if !super::is_running() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for scope in scopes {
        let ScopeTarget::Unit(name) = scope else {
            continue;
        };
        let concrete = if is_template(name) {
            let found = instances(name);
            if found.is_empty() {
                vec![name.clone()]
            } else {
                found
            }
        } else {
            vec![name.clone()]
        };
        for unit in concrete {
            out.push(one(paths, name, &unit));
        }
    }
    out
}

/// Measures one unit.
fn one(paths: &PathArgs, scope: &str, unit: &str) -> UnitProtection {
    let attach_on_start = if is_template(unit) {
        // A template is never loaded: its drop-in is what every instance will get.
        super::drop_in_path(unit).is_file()
    } else {
        super::property(unit, "ExecCondition").is_some_and(|v| carries_attach(&v, &paths.pin_dir()))
    };
    let cgroup = if is_template(unit) {
        None
    } else {
        super::control_group(unit)
    };
    let live = cgroup.as_ref().and_then(|c| {
        let full = cgroup2_mount().ok()?.join(c);
        full.join("cgroup.procs").is_file().then_some(full)
    });
    let mut reasons = Vec::new();
    if !attach_on_start {
        reasons.push(format!(
            "its effective ExecCondition= does not run `portcullis {} %n` (an override.conf that resets ExecCondition=, or the drop-in is missing: systemctl cat {unit})",
            super::ATTACH_ARGS
        ));
    }
    let mut programs_attached = 0;
    if let Some(full) = &live {
        match cgroup_query::ours_attached(paths, full) {
            Ok(missing) => {
                programs_attached = 4 - missing.len();
                if !missing.is_empty() {
                    reasons.push(format!(
                        "the kernel lists {programs_attached} of our 4 programs on its cgroup {} (missing: {})",
                        full.display(),
                        missing.join(", ")
                    ));
                }
            }
            Err(e) => reasons.push(format!("asking the kernel: {e:#}")),
        }
    }
    UnitProtection {
        unit: unit.to_owned(),
        scope: scope.to_owned(),
        running: live.is_some(),
        cgroup: if live.is_some() { cgroup } else { None },
        attach_on_start,
        programs_attached,
        protected: reasons.is_empty(),
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}

/// Whether an `ExecCondition` property value (`systemctl show`: `{ path=... ; argv[]=...
/// ; ... }` per command) runs our attach for this pin directory.
fn carries_attach(value: &str, pin_dir: &std::path::Path) -> bool {
    let pin = format!("--pin-dir {}", pin_dir.display());
    value
        .split("argv[]=")
        .skip(1)
        .map(|argv| argv.split(" ;").next().unwrap_or(""))
        .any(|argv| argv.contains(super::ATTACH_ARGS) && argv.contains(&pin))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn our_attach_is_recognised_in_an_exec_condition_and_a_reset_one_is_not() {
        let pin = Path::new("/sys/fs/bpf/portcullis");
        let ours = "{ path=/usr/bin/portcullis ; argv[]=/usr/bin/portcullis attach --unit %n --pin-dir /sys/fs/bpf/portcullis ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }";
        assert!(super::carries_attach(ours, pin));
        assert!(!super::carries_attach("", pin));
        assert!(!super::carries_attach(ours, Path::new("/sys/fs/bpf/other")));
    }
}
