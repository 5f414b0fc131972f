//! What the host around the kernel offers: BPF privileges, kernel BTF, the cgroup v2 and
//! bpf mounts, lockdown, and systemd as the service manager.

use std::{fs, io, path::Path};

use aya::{
    programs::{ProgramError, ProgramType},
    sys::is_program_supported,
};

use super::{Feature, Need, Status};
use crate::{datapath::paths, systemd};

/// Whether this process may load BPF programs. Privileges are not the kernel's: without
/// them nothing can be probed, which is unknown (doctor exits 1, `run` fails at its first
/// load), not a refusal; `check` validates a config without root.
pub(super) fn privileges() -> Feature {
    let privileged = is_program_supported(ProgramType::CgroupSkb);
    let denied = matches!(&privileged, Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EPERM));
    Feature {
        name: "bpf".into(),
        label: "privileged BPF (load programs, create maps)".into(),
        status: if denied { Status::Unknown } else { Status::Ok },
        detail: if denied {
            "the kernel refused BPF_PROG_LOAD with EPERM: no privilege, so no probe below can tell"
                .into()
        } else {
            "allowed".into()
        },
        need: Need::Always,
        since: None,
        breaks: "everything: no program can be loaded",
        fix: "run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (CAP_SYS_ADMIN before 5.8)",
    }
}

/// The lockdown mode selected in /sys/kernel/security/lockdown's text
/// ("none [integrity] confidentiality" -> "integrity").
pub(super) fn parse_lockdown(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

/// `kernel.unprivileged_bpf_disabled`: not needed by portcullis (it runs as root); a
/// hardening note for the admin.
pub(super) fn unprivileged_bpf() -> Feature {
    let value = fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim().to_owned());
    let (status, detail) = match value.as_deref() {
        Ok("0") => (
            Status::Warn,
            "0: every user may load BPF programs".to_owned(),
        ),
        Ok(v @ ("1" | "2")) => (Status::Ok, format!("{v}: only privileged users load BPF")),
        Ok(v) => (Status::Ok, v.to_owned()),
        Err(e) => (Status::Unknown, format!("reading it: {e}")),
    };
    Feature {
        name: "unprivileged_bpf".into(),
        label: "kernel.unprivileged_bpf_disabled".into(),
        status,
        detail,
        need: Need::Info,
        since: None,
        breaks: "nothing in portcullis (it loads its programs as root)",
        fix: "sysctl kernel.unprivileged_bpf_disabled=2 (Debian's default) to keep BPF to root",
    }
}

/// BTF, cgroup v2, bpffs, lockdown and systemd (`with_version`: ask systemctl its
/// version too).
pub(super) fn host_features(with_version: bool) -> Vec<Feature> {
    let mut out = Vec::new();
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    out.push(Feature {
        name: "btf".into(),
        label: "kernel BTF (/sys/kernel/btf/vmlinux)".into(),
        status: if btf.exists() {
            Status::Ok
        } else {
            Status::Missing
        },
        detail: if btf.exists() {
            "present".into()
        } else {
            "absent: the kernel was built without CONFIG_DEBUG_INFO_BTF".into()
        },
        need: Need::Always,
        since: Some("5.4"),
        breaks: "portcullis is built and tested only on kernels with BTF",
        fix: "use a distribution kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian, Ubuntu and RHEL kernels are)",
    });
    let mounts = paths::mounts().unwrap_or_default();
    let mounted = |fstype: &str| -> Vec<String> {
        mounts
            .iter()
            .filter(|(_, t)| t == fstype)
            .map(|(p, _)| p.display().to_string())
            .collect()
    };
    let cgroup2 = mounted("cgroup2");
    out.push(Feature {
        name: "cgroup2".into(),
        label: "cgroup v2 mount".into(),
        status: if cgroup2.is_empty() {
            Status::Missing
        } else {
            Status::Ok
        },
        detail: if cgroup2.is_empty() {
            "no cgroup2 filesystem in /proc/self/mountinfo".into()
        } else {
            format!("mounted at {}", cgroup2.join(", "))
        },
        need: Need::Always,
        since: None,
        breaks: "every scope: the programs attach to cgroup v2",
        fix: "mount one (`mount -t cgroup2 none /sys/fs/cgroup`) or boot with systemd.unified_cgroup_hierarchy=1",
    });
    let bpffs = mounted("bpf");
    let known = fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("bpf"))
        })
        .unwrap_or(false);
    let (status, detail) = match (bpffs.is_empty(), known) {
        (false, _) => (Status::Ok, format!("mounted at {}", bpffs.join(", "))),
        (true, true) => (
            Status::Warn,
            "not mounted; `portcullis run` mounts it at the pin directory's parent".into(),
        ),
        (true, false) => (
            Status::Missing,
            "the kernel has no bpf filesystem (/proc/filesystems)".into(),
        ),
    };
    out.push(Feature {
        name: "bpffs".into(),
        label: "bpf filesystem".into(),
        status,
        detail,
        need: Need::Always,
        since: None,
        breaks: "pinned programs and maps: enforcement that outlives the agent, `status`, restarts without a gap",
        fix: "mount it (`mount -t bpf bpf /sys/fs/bpf`)",
    });
    let (status, detail) = match fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(text) => match parse_lockdown(&text) {
            Some("confidentiality") => (
                Status::Warn,
                "confidentiality: BPF may not read kernel memory; portcullis's programs do not, the probes above are what counts".to_owned(),
            ),
            Some(mode) => (Status::Ok, mode.to_owned()),
            None => (Status::Unknown, format!("unreadable: {:?}", text.trim())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            (Status::Ok, "no lockdown (the file is absent)".to_owned())
        }
        Err(e) => (Status::Unknown, format!("reading it: {e}")),
    };
    out.push(Feature {
        name: "lockdown".into(),
        label: "kernel lockdown (/sys/kernel/security/lockdown)".into(),
        status,
        detail,
        need: Need::Info,
        since: None,
        breaks: "nothing portcullis uses in integrity mode; in confidentiality mode programs that read kernel memory",
        fix: "",
    });
    // Whether systemd manages this host decides; its version is for the admin, and
    // costs an exec of systemctl (tens of ms), so only `doctor` asks.
    let running = systemd::is_running();
    let version = if with_version {
        systemd::version().map_or_else(|| "no systemctl".to_owned(), |v| format!("systemd {v}"))
    } else {
        "systemd".to_owned()
    };
    let (status, detail) = if running {
        (Status::Ok, format!("{version}, the service manager"))
    } else {
        (
            Status::Missing,
            format!("{version}: not the service manager here (no /run/systemd/system)"),
        )
    };
    out.push(Feature {
        name: "systemd".into(),
        label: "systemd".into(),
        status,
        detail,
        need: Need::Units,
        since: None,
        breaks: "unit scopes (`scope = [\"postfix.service\"]`) and the packaged service",
        fix: "scope by cgroup path or host instead of by unit",
    });
    out
}
