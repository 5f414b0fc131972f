//! Asks the kernel which of our programs are attached to a cgroup (`BPF_PROG_QUERY`, what
//! `bpftool cgroup show` does), so that "protected" is measured on the live cgroup, not
//! inferred from link pins: a pin outlives the cgroup it was attached to, and a unit
//! started without our drop-in gets a new cgroup that no pin names.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::Context as _;
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd};

use super::{
    loader::{CGROUP_PROGRAMS, Hook},
    paths::PathArgs,
};

/// The attach type each of our cgroup programs uses.
fn attach_type(hook: Hook) -> bpf_attach_type {
    use aya::programs::{CgroupSkbAttachType as Skb, CgroupSockAddrAttachType as Addr};
    match hook {
        Hook::Skb(Skb::Ingress) => bpf_attach_type::BPF_CGROUP_INET_INGRESS,
        Hook::Skb(Skb::Egress) => bpf_attach_type::BPF_CGROUP_INET_EGRESS,
        Hook::SockAddr(Addr::Connect4) => bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
        Hook::SockAddr(Addr::Connect6) => bpf_attach_type::BPF_CGROUP_INET6_CONNECT,
        // Only the four above are in CGROUP_PROGRAMS.
        Hook::SockAddr(_) => bpf_attach_type::__MAX_BPF_ATTACH_TYPE,
    }
}

/// Program ids attached directly to the cgroup (not inherited) for one attach type.
fn query(cgroup: &fs::File, kind: bpf_attach_type) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    // SAFETY: bpf_attr is plain data; all-zero is its "no options" value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.query.__bindgen_anon_1.target_fd = cgroup.as_fd().as_raw_fd() as u32;
    attr.query.attach_type = kind as u32;
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
    // SAFETY: the kernel writes at most `prog_cnt` ids into the live vector above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_QUERY as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote back how many ids it stored.
    let n = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
    ids.truncate(n.min(64));
    Ok(ids)
}

/// How many of our four cgroup programs (the ones pinned under `paths`, by kernel id)
/// are attached to the cgroup at `cgroup`, and the names of those missing.
pub fn ours_attached(paths: &PathArgs, cgroup: &Path) -> anyhow::Result<Vec<&'static str>> {
    let file =
        fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let mut missing = Vec::new();
    for (name, hook) in CGROUP_PROGRAMS {
        let pin = paths.prog(name);
        let ours = aya::programs::ProgramInfo::from_pin(&pin)
            .with_context(|| format!("reading pinned program {}", pin.display()))?
            .id();
        let ids = query(&file, attach_type(hook)).with_context(|| {
            format!(
                "BPF_PROG_QUERY of {} for {name}'s attach type",
                cgroup.display()
            )
        })?;
        if !ids.contains(&ours) {
            missing.push(name);
        }
    }
    Ok(missing)
}
