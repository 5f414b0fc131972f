//! Support for the XDP tests: the eBPF object loaded straight from the build (no agent,
//! no pins: each test gets fresh maps and counters), policy written into its maps through
//! `portcullis_common`, crafted frames, and namespace/veth/cgroup/process guards that
//! clean up in `Drop`, panics included.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support"
)]

use std::{
    collections::HashMap,
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use portcullis_common::{
    config::{Config, MODE_AUDIT, MODE_ENFORCE},
    flow::{FlowKey, FlowValue},
    maps,
    policy::{PEER_SET_BITS, PeerAddr, port_entry, port_index, v4_mapped},
    stats::{self, Counter, DeniedKey},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Fails loudly unless root: these tests need BPF, namespaces and cgroups, and a skipped
/// test would look like a passed one.
pub fn require_root() {
    // SAFETY: plain syscall without arguments.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the XDP tests load eBPF programs and need root (run `sudo -E cargo xtask test`)"
    );
}

/// The eBPF object `cargo xtask build` produced.
pub fn object_path() -> PathBuf {
    match std::env::var_os("PORTCULLIS_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bpfel-unknown-none/release/portcullis-ebpf"),
    }
}

/// The object loaded with fresh, unpinned maps, and `pc_xdp` loaded through the verifier.
pub struct Datapath {
    pub ebpf: Ebpf,
}

impl Datapath {
    pub fn load() -> Self {
        require_root();
        let path = object_path();
        let bytes = fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "reading the eBPF object {}: {e} (build it with `cargo xtask build`)",
                path.display()
            )
        });
        let mut ebpf = EbpfLoader::new().load(&bytes).unwrap_or_else(|e| {
            panic!("BPF unavailable: loading {} failed: {e:#}", path.display())
        });
        let prog: &mut Xdp = ebpf
            .program_mut(maps::programs::XDP)
            .expect("pc_xdp in the object")
            .try_into()
            .unwrap();
        if let Err(e) = prog.load() {
            panic!("the verifier rejected pc_xdp: {}", verifier_log(&e));
        }
        Self { ebpf }
    }

    pub fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(maps::programs::XDP)
            .unwrap()
            .try_into()
            .unwrap()
    }

    pub fn xdp_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(maps::programs::XDP)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// Writes the configuration: generation 0, the given mode and echo setting, no events.
    pub fn set_config(&mut self, enforce: bool, icmp_echo: bool) {
        let mut cfg =
            Array::<_, Config>::try_from(self.ebpf.map_mut(maps::CONFIG).unwrap()).unwrap();
        let c = Config {
            generation: 0,
            mode: if enforce { MODE_ENFORCE } else { MODE_AUDIT },
            loopback: 0,
            icmp_echo: u32::from(icmp_echo),
            events_per_sec: 0,
            xdp_flows: 1,
            epoch: 0,
            _reserved: [0; 1],
        };
        cfg.set(0, c, 0).unwrap();
    }

    /// Opens `port` in `direction` for `protocol` to every peer, as rule `rule`.
    pub fn allow(&mut self, direction: u8, protocol: u8, port: u16, rule: u16) {
        self.port(direction, protocol, port, port_entry(rule, 0));
    }

    /// Opens `port` to the members of `set` only.
    pub fn allow_set(&mut self, direction: u8, protocol: u8, port: u16, set: u16) {
        self.port(direction, protocol, port, port_entry(0, set));
    }

    fn port(&mut self, direction: u8, protocol: u8, port: u16, entry: u32) {
        let mut ports = Array::<_, u32>::try_from(self.ebpf.map_mut(maps::PORTS).unwrap()).unwrap();
        ports
            .set(port_index(0, direction, protocol, port).unwrap(), entry, 0)
            .unwrap();
    }

    /// Adds `addr/prefix` (IPv6 or IPv4-mapped, prefix over the 128 bits) to peer set `set`
    /// for rule `rule`.
    pub fn peer(&mut self, set: u16, addr: [u8; 16], prefix: u32, rule: u16) {
        let mut peers =
            LpmTrie::<_, PeerAddr, u32>::try_from(self.ebpf.map_mut(maps::PEERS).unwrap()).unwrap();
        peers
            .insert(
                &Key::new(PEER_SET_BITS + prefix, PeerAddr::new(0, set, addr)),
                u32::from(rule),
                0,
            )
            .unwrap();
    }

    /// Records an outbound flow as the egress program does.
    pub fn flow_out(&mut self, key: FlowKey, rule: u16) {
        let mut flows = BpfHashMap::<_, FlowKey, FlowValue>::try_from(
            self.ebpf.map_mut(maps::FLOWS_OUT).unwrap(),
        )
        .unwrap();
        flows.insert(key, FlowValue::allowed(rule, 0), 0).unwrap();
    }

    /// Whether the flow table holds `key`.
    pub fn has_flow_out(&self, key: &FlowKey) -> bool {
        let flows =
            BpfHashMap::<_, FlowKey, FlowValue>::try_from(self.ebpf.map(maps::FLOWS_OUT).unwrap())
                .unwrap();
        flows.get(key, 0).is_ok()
    }

    fn sum(&self, map: &str, index: u32) -> Counter {
        let a = PerCpuArray::<_, Counter>::try_from(self.ebpf.map(map).unwrap()).unwrap();
        a.get(&index, 0)
            .unwrap()
            .iter()
            .fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            })
    }

    /// A global counter (`stats::*`) of the XDP layer, summed over the CPUs.
    pub fn stat(&self, index: u32) -> Counter {
        self.sum(maps::STATS, stats::LAYER_XDP * stats::STATS_LEN + index)
    }

    /// A rule's counter in the XDP layer, summed over the CPUs.
    pub fn rule(&self, index: u16) -> Counter {
        self.sum(
            maps::RULE_COUNTERS,
            stats::LAYER_XDP * maps::MAX_RULES + u32::from(index),
        )
    }

    /// The denied-port table, summed over the CPUs.
    pub fn denied(&self) -> HashMap<(u8, u8, u16), Counter> {
        let m =
            PerCpuHashMap::<_, DeniedKey, Counter>::try_from(self.ebpf.map(maps::DENIED).unwrap())
                .unwrap();
        let mut out = HashMap::new();
        for item in m.iter() {
            let (k, v) = item.unwrap();
            let c = v.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
            assert_eq!(
                u32::from(k.layer),
                stats::LAYER_XDP,
                "test_run only runs the XDP program"
            );
            out.insert((k.direction, k.protocol, k.port), c);
        }
        out
    }

    /// Runs `pc_xdp` once on `frame` (BPF_PROG_TEST_RUN) and returns its action.
    pub fn run(&self, frame: &[u8]) -> Result<u32, ProgramError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        self.xdp().test_run(opts).map(|r| r.return_value)
    }

    /// Runs `frame` `repeat` times and returns the kernel's average time per run.
    pub fn time(&self, frame: &[u8], repeat: u32) -> Duration {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        self.xdp().test_run(opts).expect("test_run").duration
    }
}

/// The verifier's log out of a load error, for the panic message.
fn verifier_log(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            format!(
                "{io_error}; verifier log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
        other => format!("{other:#}"),
    }
}

// ---------------------------------------------------------------------------------------
// Frames. No checksums: XDP does not verify them, and test_run frames go nowhere.

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_LLDP: u16 = 0x88cc;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Ethernet header (with VLAN tags: each entry is a tag's TPID) followed by `payload`.
pub fn eth(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 fragmentation fields: `more` fragments flag and offset in 8-byte units.
#[derive(Clone, Copy)]
pub struct Frag4 {
    pub id: u16,
    pub more: bool,
    pub offset: u16,
}

pub const NOT_FRAGMENTED: Frag4 = Frag4 {
    id: 1,
    more: false,
    offset: 0,
};

/// An IPv4 header (options padded by the caller to 4 bytes) and `payload`.
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    options: &[u8],
    frag: Frag4,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let flags_offset = (u16::from(frag.more) << 13) | frag.offset;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&frag.id.to_be_bytes());
    h.extend_from_slice(&flags_offset.to_be_bytes());
    h.extend_from_slice(&[64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header whose first next header is `next`, then `payload` (extension headers
/// included).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// A hop-by-hop, routing or destination options header of `units` * 8 bytes (PadN).
pub fn ext(next: u8, units: usize) -> Vec<u8> {
    assert!(units >= 1);
    let mut h = vec![next, (units - 1) as u8];
    h.resize(units * 8, 0);
    if units * 8 > 2 {
        // PadN option filling the rest.
        h[2] = 1;
        h[3] = (units * 8 - 4) as u8;
    }
    h
}

/// An authentication header (RFC 4302) with a 4-byte ICV: 16 bytes.
pub fn ah(next: u8) -> Vec<u8> {
    let mut h = vec![next, 2, 0, 0];
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd]);
    h
}

/// An IPv6 fragment header.
pub fn frag6(next: u8, offset_units: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// A 20-byte TCP header.
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&u32::from(flags & TCP_ACK != 0).to_be_bytes());
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

/// A UDP header and `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// An 8-byte ICMP/ICMPv6 header.
pub fn icmp(ty: u8, code: u8) -> Vec<u8> {
    vec![ty, code, 0, 0, 0, 0, 0, 1]
}

/// An ARP request (Ethernet/IPv4).
pub fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 2, 198, 18, 0, 2];
    a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    a
}

/// `fd00::<last>` style addresses for tests: `prefix` is the second group.
pub fn v6(prefix: u16, last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[2..4].copy_from_slice(&prefix.to_be_bytes());
    a[15] = last;
    a
}

/// The IP datagram length the programs count for a well-formed frame (after the
/// Ethernet header and any VLAN tags).
pub fn ip_len(frame: &[u8]) -> u64 {
    let mut off = 12;
    while matches!(
        u16::from_be_bytes([frame[off], frame[off + 1]]),
        ETH_P_8021Q | ETH_P_8021AD
    ) {
        off += 4;
    }
    let ethertype = u16::from_be_bytes([frame[off], frame[off + 1]]);
    let l3 = off + 2;
    match ethertype {
        ETH_P_IP => u64::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]])),
        ETH_P_IPV6 => 40 + u64::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]])),
        _ => frame.len() as u64,
    }
}

/// A flow key from this host's view (IPv4 addresses are mapped).
pub fn flow_key(
    local: [u8; 16],
    local_port: u16,
    remote: [u8; 16],
    remote_port: u16,
    protocol: u8,
) -> FlowKey {
    FlowKey {
        local,
        remote,
        local_port,
        remote_port,
        protocol,
        _pad: [0; 3],
    }
}

pub fn mapped(a: [u8; 4]) -> [u8; 16] {
    v4_mapped(a)
}

// ---------------------------------------------------------------------------------------
// Namespaces, veth, cgroups, processes.

/// Runs a shell command line, returning its output (never panics on failure).
pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs a shell command line that must succeed; returns its stdout.
pub fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two network namespaces joined by a veth pair: `a` is the protected side, `b` the
/// peer. Addresses: 198.18.<net>.1/24 and fd00:<net>::1/64 on `a`, `.2`/`::2` on `b`.
/// Both namespaces (and with them the veth pair) are deleted on drop.
pub struct Lab {
    pub ns_a: String,
    pub ns_b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub net: u8,
}

impl Lab {
    pub fn new(tag: &str, net: u8) -> Lab {
        require_root();
        let id = std::process::id() % 100_000;
        let lab = Lab {
            ns_a: format!("pcx-{tag}-a-{id}"),
            ns_b: format!("pcx-{tag}-b-{id}"),
            veth_a: format!("pcx{tag}a{id}"),
            veth_b: format!("pcx{tag}b{id}"),
            net,
        };
        assert!(
            lab.veth_a.len() < 16,
            "interface name {:?} too long",
            lab.veth_a
        );
        // Leftovers of an earlier crashed run with the same pid.
        let _ = sh(&format!(
            "ip netns del {} 2>/dev/null; ip netns del {} 2>/dev/null",
            lab.ns_a, lab.ns_b
        ));
        must(&format!("ip netns add {}", lab.ns_a));
        must(&format!("ip netns add {}", lab.ns_b));
        must(&format!(
            "ip link add {} netns {} type veth peer name {} netns {}",
            lab.veth_a, lab.ns_a, lab.veth_b, lab.ns_b
        ));
        for (ns, dev, host) in [(&lab.ns_a, &lab.veth_a, 1), (&lab.ns_b, &lab.veth_b, 2)] {
            must(&format!("ip -n {ns} link set lo up"));
            must(&format!(
                "ip -n {ns} addr add 198.18.{net}.{host}/24 dev {dev}"
            ));
            must(&format!(
                "ip -n {ns} addr add fd00:{net}::{host}/64 dev {dev} nodad"
            ));
            must(&format!("ip -n {ns} link set {dev} up"));
        }
        lab
    }

    pub fn a4(&self) -> String {
        format!("198.18.{}.1", self.net)
    }
    pub fn b4(&self) -> String {
        format!("198.18.{}.2", self.net)
    }
    pub fn a6(&self) -> String {
        format!("fd00:{}::1", self.net)
    }
    pub fn b6(&self) -> String {
        format!("fd00:{}::2", self.net)
    }

    /// Runs `cmd` in namespace `ns`; returns its output.
    pub fn exec(&self, ns: &str, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", cmd])
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {ns} {cmd:?}: {e}"))
    }

    /// Starts `cmd` in namespace `ns` in the background (killed on drop of the guard).
    pub fn spawn(&self, ns: &str, cmd: &str) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &format!("exec {cmd}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?} in {ns}: {e}"));
        Proc {
            child: Some(child),
            what: cmd.to_owned(),
        }
    }

    /// Runs `f` on a thread that entered namespace `a`: for attaching to its veth.
    pub fn in_ns_a<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.ns_a);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: setns on a valid namespace fd; affects only this thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {path}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("thread in the namespace panicked")
        })
    }

    /// Waits until `ns` has a TCP listener on `port`.
    pub fn wait_listening(&self, ns: &str, port: u16, udp: bool) {
        let flag = if udp { "-uln" } else { "-tln" };
        for _ in 0..100 {
            let out = self.exec(ns, &format!("ss -H {flag} 'sport = :{port}'"));
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nothing listens on {} port {port} in {ns} after 5 s",
            if udp { "UDP" } else { "TCP" }
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.ns_a));
        let _ = sh(&format!("ip netns del {}", self.ns_b));
    }
}

/// A background process, killed and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    pub what: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cgroup v2 directory of its own (removed on drop, after its processes are gone).
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        let mount = cgroup2_mount();
        let path = mount.join(format!("pcx-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Cgroup { path }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    for line in info.lines() {
        let mut parts = line.split(" - ");
        let (Some(left), Some(right)) = (parts.next(), parts.next()) else {
            continue;
        };
        if right.split(' ').next() == Some("cgroup2")
            && let Some(mp) = left.split(' ').nth(4)
        {
            return PathBuf::from(mp);
        }
    }
    panic!("no cgroup v2 filesystem mounted");
}

// ---------------------------------------------------------------------------------------
// Frames for the hardening tests (issue 13): ICMP errors that quote a packet, IPv6 with a
// chosen hop limit, special addresses.

/// An ICMPv4 error (`ty`, `code`) quoting the IPv4 header (no options) and first 8 bytes
/// of a `protocol` packet `src:sport -> dst:dport`, as a router would send back.
pub fn icmp_error4(
    ty: u8,
    code: u8,
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    protocol: u8,
) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
    let l4 = quoted_l4(sport, dport);
    m.extend_from_slice(&ipv4(src, dst, protocol, &[], NOT_FRAGMENTED, &l4)[..28]);
    m
}

/// An ICMPv6 error of type `ty` quoting an IPv6 `protocol` packet `src:sport -> dst:dport`.
pub fn icmp_error6(
    ty: u8,
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    protocol: u8,
) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&ipv6(src, dst, protocol, &quoted_l4(sport, dport)));
    m
}

/// The first 8 bytes of a TCP or UDP header (ports, then zeros).
fn quoted_l4(sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = sport.to_be_bytes().to_vec();
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.resize(8, 0);
    l4
}

/// An Ethernet frame with an IPv6 packet of hop limit `hop_limit`.
pub fn v6_hop(src: [u8; 16], dst: [u8; 16], hop_limit: u8, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = ipv6(src, dst, next, payload);
    ip[7] = hop_limit;
    eth(&[], ETH_P_IPV6, &ip)
}

/// An ICMP echo request or reply (`ty`) with identifier `id`.
pub fn echo(ty: u8, id: u16) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m
}

/// `fe80::1`.
pub fn link_local6() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[15] = 1;
    a
}

/// `::1`.
pub fn v6_loopback() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[15] = 1;
    a
}
