//! What the running host can carry, probed rather than guessed from the kernel's version:
//! the program types, map types and helpers the programs use (each by a tiny program or
//! map the kernel accepts or refuses, as libbpf's probes do, through aya's `sys` probes),
//! kernel BTF, cgroup v2, bpffs, lockdown, BPF privileges and systemd; and, for `doctor`,
//! whether the real programs verify. The result is one typed [`KernelFeatures`]: `doctor`
//! prints it, `check` and `run` ask it ([`KernelFeatures::refusal`]) whether the policy
//! at hand can be enforced here.

use std::{fs, io, path::Path, time::Instant};

use aya::{
    maps::MapType,
    programs::{ProgramError, ProgramType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use portcullis_common::maps::programs;
use serde::Serialize;

use super::{loader, paths};
use crate::{config::PolicyError, model::ScopeTarget, policy::Policy, systemd};

/// The kernel's release string, "5.10.0-46-amd64", and its version when it parses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelRelease {
    /// As `uname -r` prints it.
    pub release: String,
    /// (major, minor, patch) of its leading "X.Y[.Z]".
    pub version: Option<(u32, u32, u32)>,
}

impl KernelRelease {
    /// The running kernel's (from /proc/sys/kernel/osrelease).
    pub fn running() -> Self {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self::parse(&release)
    }

    /// Parses a release string; a distribution suffix ("-46-amd64", ".el9_4.x86_64") is
    /// kept in `release` and ignored in `version`.
    pub fn parse(release: &str) -> Self {
        let numbers: Vec<u32> = release
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map_while(|n| n.parse().ok())
            .collect();
        let version = match numbers[..] {
            [major, minor, patch] => Some((major, minor, patch)),
            [major, minor] => Some((major, minor, 0)),
            _ => None,
        };
        Self {
            release: release.to_owned(),
            version,
        }
    }
}

/// Which policies depend on a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Every policy: without it the programs do not load or do not enforce.
    Always,
    /// An XDP interface is configured (`xdp = [...]`, `run --xdp`).
    Xdp,
    /// A systemd unit is in the scope.
    Units,
    /// Nothing depends on it: reported for the admin (a speed-up the loader uses where
    /// it exists, a hardening note).
    Info,
}

/// What one policy asks of the host, beyond what every policy needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Needs {
    /// The policy has host-name peers. Reported; no probe depends on it today (the DNS
    /// answer parser runs in bounded loops, without `bpf_loop`, from 5.10 on).
    pub names: bool,
    /// An XDP interface is configured.
    pub xdp: bool,
    /// A systemd unit is in the scope.
    pub units: bool,
}

impl Needs {
    /// What `policy`, attached to `scopes` and with XDP on `xdp`, needs.
    pub fn of(policy: &Policy, xdp: &[String], scopes: &[ScopeTarget]) -> Self {
        Self {
            names: policy.peer_sets.iter().any(|s| !s.names.is_empty()),
            xdp: !xdp.is_empty(),
            units: scopes.iter().any(|s| matches!(s, ScopeTarget::Unit(_))),
        }
    }

    /// Whether a feature needed by `need` is needed here.
    pub fn wants(&self, need: Need) -> bool {
        match need {
            Need::Always => true,
            Need::Xdp => self.xdp,
            Need::Units => self.units,
            Need::Info => false,
        }
    }
}

/// The outcome of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Present.
    Ok,
    /// Absent (or refused): what depends on it cannot work.
    Missing,
    /// Works, with a caveat worth the admin's attention.
    Warn,
    /// The probe itself failed (no privileges, an unexpected error): nothing is known.
    Unknown,
}

/// One probed feature.
#[derive(Clone, Debug, Serialize)]
pub struct Feature {
    /// Stable identifier for scripts: "program_type:xdp", "map_type:lru_hash",
    /// "helper:example/cgroup_skb", "btf", "cgroup2", ...
    pub name: String,
    /// What it is, for people.
    pub label: String,
    /// The probe's outcome.
    pub status: Status,
    /// What the probe saw ("mounted at /sys/fs/cgroup", the kernel's refusal, ...).
    pub detail: String,
    /// Which policies depend on it.
    pub need: Need,
    /// The first mainline kernel that has it, where that helps the admin.
    pub since: Option<&'static str>,
    /// What stops working without it.
    pub breaks: &'static str,
    /// How to get it, or how to do without.
    pub fix: &'static str,
}

/// Whether one of the real programs verified on this kernel.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramCheck {
    /// The program's name in the object (`pc_egress`, ...).
    pub name: &'static str,
    /// Ok: verified and loaded; Missing: refused; Unknown: not tried (see `detail`).
    pub status: Status,
    /// Which policies load it.
    pub need: Need,
    /// Instructions the verifier processed (the kernel's limit is one million), also
    /// for a refused program (how far it got).
    pub verified_instructions: Option<u32>,
    /// Wall time of the load (verification is most of it).
    pub load_ms: Option<u64>,
    /// The refusal: the error and the end of the verifier's log.
    pub detail: Option<String>,
}

/// Everything probed on this host.
#[derive(Clone, Debug, Serialize)]
pub struct KernelFeatures {
    /// The running kernel.
    pub kernel: KernelRelease,
    /// Every probe, in a fixed order.
    pub features: Vec<Feature>,
    /// The real programs, when [`KernelFeatures::verify_programs`] ran.
    pub programs: Vec<ProgramCheck>,
}

/// A helper the programs call, from one program type.
struct HelperUse {
    helper: BpfHelper,
    name: &'static str,
    program: (ProgramType, &'static str),
    need: Need,
    since: Option<&'static str>,
    breaks: &'static str,
    fix: &'static str,
}

const SKB: (ProgramType, &str) = (ProgramType::CgroupSkb, "cgroup_skb");
const SOCK_ADDR: (ProgramType, &str) = (ProgramType::CgroupSockAddr, "cgroup_sock_addr");
const XDP: (ProgramType, &str) = (ProgramType::Xdp, "xdp");

const UPGRADE: &str = "run a newer kernel (see README, Requirements)";
const NO_XDP: &str =
    "remove the interfaces from `xdp` (or drop --xdp): the cgroup programs still enforce";

/// Every helper the programs call, and from which program type (the verifier decides
/// per program type: a helper can exist and still be refused to one type).
const HELPERS: &[HelperUse] = {
    use BpfHelper as H;
    const fn h(
        helper: BpfHelper,
        name: &'static str,
        program: (ProgramType, &'static str),
        need: Need,
        since: Option<&'static str>,
        breaks: &'static str,
    ) -> HelperUse {
        let fix = match need {
            Need::Xdp => NO_XDP,
            Need::Info => "",
            _ => UPGRADE,
        };
        HelperUse {
            helper,
            name,
            program,
            need,
            since,
            breaks,
            fix,
        }
    }
    const RATE: &str = "nothing: the deny events' rate limit reads the precise clock instead (tens of ns more per event; the loader chooses)";
    const EXPIRY: &str = "the expiry of addresses learned from DNS answers (in every verdict)";
    const RECORD: &str = "the per-socket verdict record (stateful enforcement)";
    const EVENTS: &str = "deny events (the deny log, `report`)";
    &[
        h(
            H::BPF_FUNC_ktime_get_coarse_ns,
            "bpf_ktime_get_coarse_ns",
            SKB,
            Need::Info,
            Some("5.11"),
            RATE,
        ),
        h(
            H::BPF_FUNC_ktime_get_coarse_ns,
            "bpf_ktime_get_coarse_ns",
            SOCK_ADDR,
            Need::Info,
            Some("5.11"),
            RATE,
        ),
        h(
            H::BPF_FUNC_ktime_get_coarse_ns,
            "bpf_ktime_get_coarse_ns",
            XDP,
            Need::Info,
            Some("5.11"),
            RATE,
        ),
        h(
            H::BPF_FUNC_ktime_get_boot_ns,
            "bpf_ktime_get_boot_ns",
            SKB,
            Need::Always,
            Some("5.8"),
            EXPIRY,
        ),
        h(
            H::BPF_FUNC_ktime_get_boot_ns,
            "bpf_ktime_get_boot_ns",
            SOCK_ADDR,
            Need::Always,
            Some("5.8"),
            EXPIRY,
        ),
        h(
            H::BPF_FUNC_ktime_get_boot_ns,
            "bpf_ktime_get_boot_ns",
            XDP,
            Need::Xdp,
            Some("5.8"),
            EXPIRY,
        ),
        h(
            H::BPF_FUNC_sk_storage_get,
            "bpf_sk_storage_get",
            SKB,
            Need::Always,
            Some("5.2"),
            RECORD,
        ),
        h(
            H::BPF_FUNC_sk_storage_get,
            "bpf_sk_storage_get",
            SOCK_ADDR,
            Need::Always,
            None,
            RECORD,
        ),
        h(
            H::BPF_FUNC_sk_fullsock,
            "bpf_sk_fullsock",
            SKB,
            Need::Always,
            Some("5.1"),
            RECORD,
        ),
        h(
            H::BPF_FUNC_skb_cgroup_id,
            "bpf_skb_cgroup_id",
            SKB,
            Need::Always,
            None,
            EVENTS,
        ),
        h(
            H::BPF_FUNC_skb_load_bytes,
            "bpf_skb_load_bytes",
            SKB,
            Need::Always,
            None,
            "the per-flow evidence of would-denied packets and the DNS answer parser",
        ),
        h(
            H::BPF_FUNC_ringbuf_reserve,
            "bpf_ringbuf_reserve",
            SKB,
            Need::Always,
            Some("5.8"),
            EVENTS,
        ),
        h(
            H::BPF_FUNC_ringbuf_reserve,
            "bpf_ringbuf_reserve",
            SOCK_ADDR,
            Need::Always,
            Some("5.8"),
            EVENTS,
        ),
        h(
            H::BPF_FUNC_ringbuf_reserve,
            "bpf_ringbuf_reserve",
            XDP,
            Need::Xdp,
            Some("5.8"),
            EVENTS,
        ),
        h(
            H::BPF_FUNC_get_current_pid_tgid,
            "bpf_get_current_pid_tgid",
            SOCK_ADDR,
            Need::Always,
            None,
            "the process named in a denied connect's event",
        ),
        h(
            H::BPF_FUNC_get_current_comm,
            "bpf_get_current_comm",
            SOCK_ADDR,
            Need::Always,
            None,
            "the process named in a denied connect's event",
        ),
        h(
            H::BPF_FUNC_get_current_cgroup_id,
            "bpf_get_current_cgroup_id",
            SOCK_ADDR,
            Need::Always,
            None,
            "the cgroup named in a denied connect's event",
        ),
    ]
};

/// The outcome of a kernel probe: supported, not, or the probe failed.
fn status_of<E: std::fmt::Display>(r: Result<bool, E>, refused: &str) -> (Status, String) {
    match r {
        Ok(true) => (Status::Ok, "supported".to_owned()),
        Ok(false) => (Status::Missing, refused.to_owned()),
        Err(e) => (Status::Unknown, format!("the probe failed: {e}")),
    }
}

/// Creates an array with `BPF_F_MMAPABLE` (the port table's flag, Linux 5.5+): the
/// kernel refuses the flag with EINVAL where arrays cannot be mapped.
fn mmapable_array_supported() -> io::Result<bool> {
    use aya_obj::generated::{BPF_F_MMAPABLE, bpf_attr, bpf_cmd, bpf_map_type};
    // SAFETY: bpf_attr is plain data; all-zero is its "no options" value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_1.map_type = bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;
    attr.__bindgen_anon_1.key_size = 4;
    attr.__bindgen_anon_1.value_size = 4;
    attr.__bindgen_anon_1.max_entries = 1;
    attr.__bindgen_anon_1.map_flags = BPF_F_MMAPABLE;
    // SAFETY: the kernel reads a bpf_attr of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_CREATE as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        unsafe { libc::close(fd as i32) };
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) => Ok(false),
        _ => Err(e),
    }
}

/// The lockdown mode selected in /sys/kernel/security/lockdown's text
/// ("none [integrity] confidentiality" -> "integrity").
fn parse_lockdown(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

impl KernelFeatures {
    /// Probes everything but the real programs and systemd's version (a few
    /// milliseconds: each probe is a two-instruction program or a one-entry map): what
    /// `check` and `run` ask before they accept a policy.
    pub fn probe() -> Self {
        Self::probe_features(false)
    }

    /// [`KernelFeatures::probe`], and systemd's version (`systemctl --version`) for the
    /// admin: what `doctor` shows.
    pub fn probe_all() -> Self {
        Self::probe_features(true)
    }

    fn probe_features(with_version: bool) -> Self {
        // The socket-storage probe's failed create frees the map after an RCU grace
        // period (about 25 ms here, more than all other probes together): it runs beside
        // them.
        let mut sk_storage = Some(std::thread::spawn(|| is_map_supported(MapType::SkStorage)));
        let mut features = Vec::new();
        let kernel = KernelRelease::running();
        features.push(Feature {
            name: "kernel".into(),
            label: "kernel release".into(),
            status: Status::Ok,
            detail: kernel.release.clone(),
            need: Need::Info,
            since: None,
            breaks: "",
            fix: "",
        });
        // Privileges are not the kernel's: without them nothing can be probed, which is
        // unknown (doctor exits 1, `run` fails at its first load), not a refusal; `check`
        // validates a config without root.
        let privileged = is_program_supported(ProgramType::CgroupSkb);
        let denied = matches!(&privileged, Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EPERM));
        features.push(Feature {
            name: "bpf".into(),
            label: "privileged BPF (load programs, create maps)".into(),
            status: if denied { Status::Unknown } else { Status::Ok },
            detail: if denied {
                "the kernel refused BPF_PROG_LOAD with EPERM: no privilege, so no probe below can tell".into()
            } else {
                "allowed".into()
            },
            need: Need::Always,
            since: None,
            breaks: "everything: no program can be loaded",
            fix: "run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (CAP_SYS_ADMIN before 5.8)",
        });
        features.push(unprivileged_bpf());
        for (ty, name, need, since, breaks, fix) in [
            (
                SKB.0,
                SKB.1,
                Need::Always,
                "4.10",
                "the packet programs (ingress, egress)",
                UPGRADE,
            ),
            (
                SOCK_ADDR.0,
                SOCK_ADDR.1,
                Need::Always,
                "4.17",
                "the connect() programs: outbound flows are not refused at connect",
                UPGRADE,
            ),
            (XDP.0, XDP.1, Need::Xdp, "4.8", "the XDP filter", NO_XDP),
        ] {
            let (status, detail) = status_of(
                is_program_supported(ty),
                "the kernel does not know this program type",
            );
            features.push(Feature {
                name: format!("program_type:{name}"),
                label: format!("program type {name}"),
                status,
                detail,
                need,
                since: Some(since),
                breaks,
                fix,
            });
        }
        for (ty, name, since, breaks) in [
            (
                MapType::Array,
                "array",
                "3.19",
                "the policy tables and the configuration",
            ),
            (MapType::PerCpuArray, "percpu_array", "4.6", "the counters"),
            (MapType::Hash, "hash", "3.19", "the host-name tables"),
            (
                MapType::LruHash,
                "lru_hash",
                "4.10",
                "the flow tables (replies, related ICMP)",
            ),
            (
                MapType::LruPerCpuHash,
                "lru_percpu_hash",
                "4.10",
                "the denied-port and audit evidence tables",
            ),
            (
                MapType::LpmTrie,
                "lpm_trie",
                "4.11",
                "peer networks and trusted resolvers",
            ),
            (
                MapType::RingBuf,
                "ringbuf",
                "5.8",
                "deny events (the deny log, `report`)",
            ),
            (
                MapType::SkStorage,
                "sk_storage",
                "5.2",
                "the per-socket verdict record (stateful enforcement)",
            ),
        ] {
            let supported = if ty == MapType::SkStorage {
                sk_storage.take().map_or(Ok(false), |t| {
                    t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
                })
            } else {
                is_map_supported(ty)
            };
            let (status, detail) = status_of(supported, "the kernel does not know this map type");
            features.push(Feature {
                name: format!("map_type:{name}"),
                label: format!("map type {name}"),
                status,
                detail,
                need: Need::Always,
                since: Some(since),
                breaks,
                fix: UPGRADE,
            });
        }
        let (status, detail) = status_of(
            mmapable_array_supported(),
            "the kernel refuses BPF_F_MMAPABLE on arrays",
        );
        features.push(Feature {
            name: "map_type:array_mmapable".into(),
            label: "map type array with BPF_F_MMAPABLE".into(),
            status,
            detail,
            need: Need::Always,
            since: Some("5.5"),
            breaks: "the port table (created mappable, written in place)",
            fix: UPGRADE,
        });
        for h in HELPERS {
            let (status, detail) = status_of(
                is_helper_supported(h.program.0, h.helper),
                &format!("the verifier does not let {} programs call it", h.program.1),
            );
            features.push(Feature {
                name: format!("helper:{}/{}", h.name, h.program.1),
                label: format!("helper {} in {} programs", h.name, h.program.1),
                status,
                detail,
                need: h.need,
                since: h.since,
                breaks: h.breaks,
                fix: h.fix,
            });
        }
        features.extend(host_features(with_version));
        Self {
            kernel,
            features,
            programs: Vec::new(),
        }
    }

    /// Loads the real programs of the embedded object (the kernel verifies each) without
    /// pinning or attaching anything, and records for each whether it verified, the
    /// verifier's instruction count and the load time. The maps it creates go with it.
    pub fn verify_programs(&mut self) {
        let wanted = loader::CGROUP_PROGRAMS
            .iter()
            .map(|(name, _)| (*name, Need::Always))
            .chain([(programs::XDP, Need::Xdp)]);
        let privileged = self
            .features
            .iter()
            .any(|f| f.name == "bpf" && f.status == Status::Ok);
        if !privileged {
            self.programs = wanted
                .map(|(name, need)| ProgramCheck {
                    name,
                    status: Status::Unknown,
                    need,
                    verified_instructions: None,
                    load_ms: None,
                    detail: Some("not tried: no privilege to load programs".into()),
                })
                .collect();
            return;
        }
        // As the agent loads it (the same loader settings).
        let bits = kernel_features();
        let mut ebpf = match loader::object_loader(&bits).load(loader::OBJECT) {
            Ok(e) => e,
            Err(e) => {
                self.programs = wanted
                    .map(|(name, need)| ProgramCheck {
                        name,
                        status: Status::Missing,
                        need,
                        verified_instructions: None,
                        load_ms: None,
                        detail: Some(format!("the object's maps could not be created: {e}")),
                    })
                    .collect();
                return;
            }
        };
        for (name, need) in wanted {
            let start = Instant::now();
            let result =
                loader::program(&mut ebpf, name).and_then(|prog| loader::load_program(name, prog));
            let took = start.elapsed();
            let prog = ebpf.program(name);
            let detail = result.err().map(|e| refusal_text(&e));
            self.programs.push(ProgramCheck {
                name,
                status: if detail.is_none() {
                    Status::Ok
                } else {
                    Status::Missing
                },
                need,
                verified_instructions: match &detail {
                    // A refused program has no info: its log's last words say how far
                    // the verifier got.
                    Some(log) => processed_instructions(log),
                    None => prog
                        .and_then(|p| p.info().ok())
                        .and_then(|i| i.verified_instruction_count()),
                },
                load_ms: Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX)),
                detail,
            });
        }
    }

    /// Why a policy with `needs` cannot be enforced as written on this host, or None.
    /// Only what was found missing counts: a probe that could not run (no privileges)
    /// refuses nothing here (`doctor` reports it as unknown), nor do programs that were
    /// not verified.
    pub fn refusal(&self, needs: &Needs) -> Option<String> {
        let mut reasons: Vec<String> = self
            .features
            .iter()
            .filter(|f| f.status == Status::Missing && needs.wants(f.need))
            .map(|f| {
                let who = match f.need {
                    Need::Xdp => "xdp needs",
                    Need::Units => "unit scopes need",
                    Need::Always | Need::Info => "portcullis needs",
                };
                let since = f
                    .since
                    .map(|v| format!(" (kernel {v}+)"))
                    .unwrap_or_default();
                format!(
                    "{who} {}{since}; here: {} (kernel {}); {}",
                    f.label, f.detail, self.kernel.release, f.fix
                )
            })
            .collect();
        reasons.extend(
            self.programs
                .iter()
                .filter(|p| p.status == Status::Missing && needs.wants(p.need))
                .map(|p| {
                    format!(
                        "the verifier of kernel {} refuses program {}",
                        self.kernel.release, p.name
                    )
                }),
        );
        if reasons.is_empty() {
            return None;
        }
        Some(format!(
            "{}; `portcullis doctor` shows every probe",
            reasons.join("; ")
        ))
    }

    /// [`KernelFeatures::refusal`] as the error `check` and `run` exit with (code 3),
    /// placed in the site config when there is one.
    pub fn require(&self, needs: &Needs, config: Option<&Path>) -> Result<(), PolicyError> {
        match self.refusal(needs) {
            None => Ok(()),
            Some(why) => {
                let mut error = PolicyError::new(why);
                error.file = config.map(Path::to_path_buf);
                Err(error)
            }
        }
    }

    /// Whether every probe `needs` depends on was found present (not merely "not found
    /// missing"), and every program verified that was tried.
    pub fn all_known(&self, needs: &Needs) -> bool {
        self.features
            .iter()
            .filter(|f| needs.wants(f.need))
            .all(|f| matches!(f.status, Status::Ok | Status::Warn))
    }
}

/// The kernel's refusal of a program, shortened to what helps: aya's error with the last
/// lines of the verifier log (its end names the failing instruction).
fn refusal_text(e: &anyhow::Error) -> String {
    let text = e
        .chain()
        .find_map(|c| c.downcast_ref::<ProgramError>())
        .map_or_else(|| format!("{e:#}"), ToString::to_string);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines.len().saturating_sub(6);
    lines[tail..].join("\n")
}

/// The "processed N insns" of a verifier log.
fn processed_instructions(log: &str) -> Option<u32> {
    let (_, after) = log.rsplit_once("processed ")?;
    after.split(' ').next()?.parse().ok()
}

/// `kernel.unprivileged_bpf_disabled`: not needed by portcullis (it runs as root); a
/// hardening note for the admin.
fn unprivileged_bpf() -> Feature {
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
fn host_features(with_version: bool) -> Vec<Feature> {
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

/// The `portcullis_common::kernel` bits the running kernel offers, probed by loading a
/// test program per helper (never guessed from the version: distributions backport).
/// The loader sets them before every load of the object (`loader::object_loader`).
pub(super) fn kernel_features() -> u32 {
    use aya::{
        programs::ProgramType,
        sys::{BpfHelper, is_helper_supported},
    };
    use portcullis_common::kernel::COARSE_CLOCK;
    let mut bits = 0;
    if is_helper_supported(
        ProgramType::CgroupSkb,
        BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
    )
    .unwrap_or(false)
    {
        bits |= COARSE_CLOCK;
    }
    log::debug!("kernel features for the programs: {bits:#x}");
    bits
}

#[cfg(test)]
mod tests;
