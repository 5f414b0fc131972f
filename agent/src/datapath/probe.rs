//! What the running host can carry, probed rather than guessed from the kernel's version:
//! the program types, map types and helpers the programs use (each by a tiny program or
//! map the kernel accepts or refuses, as libbpf's probes do, through aya's `sys` probes),
//! kernel BTF, cgroup v2, bpffs, lockdown, BPF privileges and systemd; and, for `doctor`,
//! whether the real programs verify. The result is one typed [`KernelFeatures`]: `doctor`
//! prints it, `check` and `run` ask it ([`KernelFeatures::refusal`]) whether the policy
//! at hand can be enforced here.

use std::{fs, path::Path};

use portcullis_common::maps::programs;
use serde::Serialize;

use super::{loader, verify};
use crate::{config::PolicyError, model::ScopeTarget, policy::Policy};

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
    pub verified_instructions: Option<u64>,
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
        features.push(host::privileges());
        features.push(host::unprivileged_bpf());
        features.extend(kernel::probes());
        features.extend(host::host_features(with_version));
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
        // As the agent loads them (the same loader settings): `debug verifier`'s run.
        let verified = match verify::verify_each() {
            Ok(v) => v,
            Err(e) => {
                self.programs = wanted
                    .map(|(name, need)| ProgramCheck {
                        name,
                        status: Status::Missing,
                        need,
                        verified_instructions: None,
                        load_ms: None,
                        detail: Some(format!("{e:#}")),
                    })
                    .collect();
                return;
            }
        };
        self.programs = verified
            .into_iter()
            .map(|v| ProgramCheck {
                name: v.name,
                status: if v.error.is_none() {
                    Status::Ok
                } else {
                    Status::Missing
                },
                need: if v.name == programs::XDP {
                    Need::Xdp
                } else {
                    Need::Always
                },
                verified_instructions: v.insns_processed,
                load_ms: Some(u64::try_from(v.load.as_millis()).unwrap_or(u64::MAX)),
                detail: v.error.as_deref().map(log_tail),
            })
            .collect();
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

/// A refusal shortened to what helps: the verifier log's end names the failing
/// instruction (the whole log runs to megabytes; `debug verifier --json` carries it).
fn log_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines.len().saturating_sub(6);
    lines[tail..].join("\n")
}

mod host;
mod kernel;
#[cfg(test)]
mod tests;

pub(super) use kernel::kernel_features;
