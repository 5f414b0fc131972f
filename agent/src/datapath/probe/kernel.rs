//! What the kernel offers the programs, each probed by a tiny program or map the kernel
//! accepts or refuses (libbpf's way, through aya's `sys` probes): the program types, the
//! map types and every helper the programs call from each program type; and the
//! `portcullis_common::kernel` bits the loader sets from them.

use std::io;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

use super::{Feature, Need, Status};

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

/// The program types, map types and helpers, in a fixed order.
pub(super) fn probes() -> Vec<Feature> {
    // The socket-storage probe's failed create frees the map after an RCU grace period
    // (about 25 ms here, more than all other probes together): it runs beside them.
    let mut sk_storage = Some(std::thread::spawn(|| is_map_supported(MapType::SkStorage)));
    let mut features = Vec::new();
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
    features
}

/// The `portcullis_common::kernel` bits the running kernel offers, probed by loading a
/// test program per helper (never guessed from the version: distributions backport).
/// The loader sets them before every load of the object (`loader::object_loader`).
pub(in crate::datapath) fn kernel_features() -> u32 {
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
