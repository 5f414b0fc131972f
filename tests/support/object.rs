//! The eBPF object loaded straight from the build, with no agent and no pins: each test
//! gets fresh maps and counters, writes its policy into the maps through
//! `portcullis_common`, and runs `pc_xdp` ([`Datapath`]) or `pc_ingress` ([`Ingress`])
//! on crafted frames ([`crate::frames`]) with BPF_PROG_TEST_RUN, or attaches `pc_xdp`
//! to a lab veth.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{CgroupSkb, ProgramError, TestRun, TestRunOptions, Xdp},
};
use portcullis_common::{
    config::{Config, LOOPBACK_ENFORCE, LOOPBACK_EXEMPT, MODE_AUDIT, MODE_ENFORCE},
    flow::{FLOW_PORT_BYTES, FlowKey, FlowValue, flow_port_slot},
    maps,
    names::{NameKey, NameValue, SlotKey, SlotNames},
    policy::{DIR_IN, IPPROTO_TCP, PEER_SET_BITS, PeerAddr, port_entry, port_index, v4_mapped},
    stats::{self, Counter, DeniedKey, DeniedSlot},
};

use crate::require_root;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

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
        let mut ebpf = open();
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
            dns_grace: 0,
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

    /// Records an outbound flow as the egress program does: its local port marked in
    /// `PC_FLOW_PORTS` first, then the entry.
    pub fn flow_out(&mut self, key: FlowKey, rule: u16) {
        let (index, byte) = flow_port_slot(key.protocol, key.local_port);
        let mut marks = Array::<_, [u8; FLOW_PORT_BYTES]>::try_from(
            self.ebpf.map_mut(maps::FLOW_PORTS).unwrap(),
        )
        .unwrap();
        let mut entry = marks.get(&index, 0).unwrap();
        entry[byte] = 1;
        marks.set(index, entry, 0).unwrap();
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

    /// A global counter (`stats::*`) of the XDP layer, summed over the CPUs.
    pub fn stat(&self, index: u32) -> Counter {
        sum(
            &self.ebpf,
            maps::STATS,
            stats::LAYER_XDP * stats::STATS_LEN + index,
        )
    }

    /// A rule's counter in the XDP layer, summed over the CPUs.
    pub fn rule(&self, index: u16) -> Counter {
        sum(
            &self.ebpf,
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
        // A key's count is its table entry plus the per-CPU cache slots that hold it.
        let hot = PerCpuArray::<_, DeniedSlot>::try_from(self.ebpf.map(maps::DENIED_HOT).unwrap())
            .unwrap();
        for i in 0..maps::DENIED_HOT_SLOTS {
            for slot in hot.get(&i, 0).unwrap().iter() {
                if slot.count.packets == 0 {
                    continue;
                }
                let k = slot.key;
                assert_eq!(
                    u32::from(k.layer),
                    stats::LAYER_XDP,
                    "test_run only runs the XDP program"
                );
                let c = out.entry((k.direction, k.protocol, k.port)).or_default();
                c.packets += slot.count.packets;
                c.bytes += slot.count.bytes;
            }
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

/// The object at [`object_path`] opened with fresh, unpinned maps, no program loaded yet.
fn open() -> Ebpf {
    require_root();
    let path = object_path();
    let bytes = fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading the eBPF object {}: {e} (build it with `cargo xtask build`)",
            path.display()
        )
    });
    EbpfLoader::new()
        .load(&bytes)
        .unwrap_or_else(|e| panic!("BPF unavailable: loading {} failed: {e:#}", path.display()))
}

/// A per-CPU counter of `map`, summed over the CPUs.
fn sum(ebpf: &Ebpf, map: &str, index: u32) -> Counter {
    let a = PerCpuArray::<_, Counter>::try_from(ebpf.map(map).unwrap()).unwrap();
    a.get(&index, 0)
        .unwrap()
        .iter()
        .fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        })
}

/// The object with `pc_ingress` loaded through the verifier: the cgroup ingress verdict
/// on crafted packets, including what real traffic cannot carry (a loopback source that
/// did not cross the loopback device: the kernel drops such a martian before any hook).
pub struct Ingress {
    pub ebpf: Ebpf,
}

impl Ingress {
    pub fn load() -> Self {
        let mut ebpf = open();
        let prog: &mut CgroupSkb = ebpf
            .program_mut(maps::programs::INGRESS)
            .expect("pc_ingress in the object")
            .try_into()
            .unwrap();
        if let Err(e) = prog.load() {
            panic!("the verifier rejected pc_ingress: {}", verifier_log(&e));
        }
        Self { ebpf }
    }

    /// Writes the configuration: generation 0, enforce mode, loopback exempt (else
    /// judged by the rules), no events. The policy stays empty: no port is open.
    pub fn set_config(&mut self, loopback_enforce: bool) {
        let mut cfg =
            Array::<_, Config>::try_from(self.ebpf.map_mut(maps::CONFIG).unwrap()).unwrap();
        let c = Config {
            generation: 0,
            mode: MODE_ENFORCE,
            loopback: if loopback_enforce {
                LOOPBACK_ENFORCE
            } else {
                LOOPBACK_EXEMPT
            },
            icmp_echo: 1,
            events_per_sec: 0,
            xdp_flows: 0,
            epoch: 0,
            dns_grace: 0,
        };
        cfg.set(0, c, 0).unwrap();
    }

    /// Runs `pc_ingress` once on `frame` (an Ethernet frame: test_run strips the header)
    /// and returns its verdict (1 pass, 0 drop). `from_loopback`: the packet crossed
    /// the loopback device (`ingress_ifindex` 1, set through the `struct __sk_buff`
    /// input, which test_run zero-extends), else it has no input device (0).
    pub fn run(&self, frame: &[u8], from_loopback: bool) -> u32 {
        let mut ctx = [0u8; 40];
        ctx[36..40].copy_from_slice(&1u32.to_ne_bytes());
        let prog: &CgroupSkb = self
            .ebpf
            .program(maps::programs::INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: from_loopback.then_some(&ctx[..]),
            ..TestRunOptions::default()
        };
        prog.test_run(opts)
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_TEST_RUN of pc_ingress (from_loopback {from_loopback}): {e:#} \
                     (an input context with ingress_ifindex set: 6.1 accepts it, 5.10 \
                     refuses it with EINVAL, which is why this test is not in the kernel \
                     matrix's core)"
                )
            })
            .return_value
    }

    /// A global counter (`stats::*`) of the cgroup layer, summed over the CPUs.
    pub fn stat(&self, index: u32) -> Counter {
        sum(
            &self.ebpf,
            maps::STATS,
            stats::LAYER_CGROUP * stats::STATS_LEN + index,
        )
    }

    /// A counter of the DNS learner (`stats::dns::*`), summed over the CPUs.
    pub fn dns_stat(&self, index: u32) -> u64 {
        let a = PerCpuArray::<_, u64>::try_from(self.ebpf.map(maps::DNS_STATS).unwrap()).unwrap();
        a.get(&index, 0).unwrap().iter().sum()
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

/// The live policy generation read from an agent's pinned maps: what the programs enforce
/// right now, in the form `portcullis debug image` prints an image.
#[derive(Debug, PartialEq, Eq)]
pub struct LivePolicy {
    pub generation: u32,
    pub enforce: bool,
    pub loopback_enforce: bool,
    pub icmp_echo: bool,
    /// Non-zero `PORTS` entries of the live generation, (map index, value), sorted.
    pub ports: Vec<(u32, u32)>,
    /// `PEERS` entries of the live generation, (prefix_len, set word, address, rule), sorted.
    pub peers: Vec<(u32, u32, [u8; 16], u32)>,
    /// `NAMES` entries of the live generation, (hash, kind, groups), sorted.
    pub names: Vec<(u64, u8, u64)>,
    /// `SLOT_NAMES` entries of the live generation, (slot, mask, rules), sorted.
    pub slot_names: Vec<(u16, u64, Vec<u16>)>,
}

impl LivePolicy {
    /// Reads the pinned maps under `pin_dir` (an agent's `PORTCULLIS_PIN_DIR`).
    pub fn read(pin_dir: &Path) -> LivePolicy {
        let open = |name: &str| {
            let p = pin_dir.join("maps").join(name);
            aya::maps::Map::from_map_data(
                aya::maps::MapData::from_pin(&p)
                    .unwrap_or_else(|e| panic!("opening {}: {e}", p.display())),
            )
            .unwrap()
        };
        let config = Array::<_, Config>::try_from(open(maps::CONFIG)).unwrap();
        let c = config.get(&0, 0).expect("reading the configuration");
        let base = port_index(c.generation, DIR_IN, IPPROTO_TCP, 0).unwrap();
        let ports_path = pin_dir.join("maps").join(maps::PORTS);
        let ports = aya::maps::MapData::from_pin(&ports_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", ports_path.display()));
        let mut live_ports: Vec<(u32, u32)> = lookup_batch_u32(&ports)
            .into_iter()
            .filter(|&(k, v)| v != 0 && (base..base + 4 * 65536).contains(&k))
            .collect();
        live_ports.sort_unstable();
        let peers = LpmTrie::<_, PeerAddr, u32>::try_from(open(maps::PEERS)).unwrap();
        let mut live_peers = Vec::new();
        for k in peers.keys() {
            let k = k.expect("listing the peer table");
            let set = u32::from_be_bytes(k.data().set);
            if (set >> 16) & 1 == c.generation {
                let rule = peers.get(&k, 0).expect("reading a peer entry");
                live_peers.push((k.prefix_len(), set, k.data().addr, rule));
            }
        }
        live_peers.sort_unstable();
        let names_map = BpfHashMap::<_, NameKey, NameValue>::try_from(open(maps::NAMES)).unwrap();
        let mut names: Vec<(u64, u8, u64)> = names_map
            .iter()
            .map(|e| e.expect("listing the name table"))
            .filter(|(k, _)| k.generation == c.generation)
            .map(|(k, v)| (k.hash, k.kind, v.groups))
            .collect();
        names.sort_unstable();
        let slots_map =
            BpfHashMap::<_, SlotKey, SlotNames>::try_from(open(maps::SLOT_NAMES)).unwrap();
        let mut slot_names: Vec<(u16, u64, Vec<u16>)> = slots_map
            .iter()
            .map(|e| e.expect("listing the slot name table"))
            .filter(|(k, _)| k.generation == c.generation)
            .map(|(k, v)| (k.slot, v.mask, v.rules.to_vec()))
            .collect();
        slot_names.sort_unstable();
        LivePolicy {
            generation: c.generation,
            enforce: c.mode == MODE_ENFORCE,
            loopback_enforce: c.loopback == LOOPBACK_ENFORCE,
            icmp_echo: c.icmp_echo == 1,
            ports: live_ports,
            peers: live_peers,
            names,
            slot_names,
        }
    }

    /// The same fields out of `portcullis debug image`'s JSON (`enforce` from `status`).
    pub fn from_image(image: &serde_json::Value, enforce: bool) -> LivePolicy {
        let n = |v: &serde_json::Value| v.as_u64().expect("a number in the image") as u32;
        let mut ports: Vec<(u32, u32)> = image["ports"]
            .as_array()
            .expect("image.ports")
            .iter()
            .map(|p| (n(&p[0]), n(&p[1])))
            .collect();
        ports.sort_unstable();
        let mut peers: Vec<(u32, u32, [u8; 16], u32)> = image["peers"]
            .as_array()
            .expect("image.peers")
            .iter()
            .map(|p| {
                let mut addr = [0u8; 16];
                for (i, b) in p["addr"].as_array().expect("addr").iter().enumerate() {
                    addr[i] = n(b) as u8;
                }
                (n(&p["prefix_len"]), n(&p["set"]), addr, n(&p["rule"]))
            })
            .collect();
        peers.sort_unstable();
        let mut names: Vec<(u64, u8, u64)> = image["names"]
            .as_array()
            .expect("image.names")
            .iter()
            .map(|e| {
                let u = |k: &str| e[k].as_u64().expect("a number in image.names");
                (u("hash"), u("kind") as u8, u("groups"))
            })
            .collect();
        names.sort_unstable();
        let mut slot_names: Vec<(u16, u64, Vec<u16>)> = image["slot_names"]
            .as_array()
            .expect("image.slot_names")
            .iter()
            .map(|e| {
                let rules = e["rules"].as_array().expect("rules");
                (
                    n(&e["slot"]) as u16,
                    e["mask"].as_u64().expect("mask"),
                    rules.iter().map(|r| n(r) as u16).collect(),
                )
            })
            .collect();
        slot_names.sort_unstable();
        LivePolicy {
            generation: n(&image["generation"]),
            enforce,
            loopback_enforce: image["loopback_enforce"].as_bool().expect("loopback"),
            icmp_echo: image["icmp_echo"].as_bool().expect("icmp_echo"),
            ports,
            peers,
            names,
            slot_names,
        }
    }
}

/// Every (key, value) of a u32 -> u32 array map, read with BPF_MAP_LOOKUP_BATCH: the port
/// table has 524288 entries, too many for one lookup syscall each in a test that reads
/// it 200 times. aya 0.14 has no batch API; the attribute is the `batch` member of
/// `union bpf_attr` (include/uapi/linux/bpf.h).
fn lookup_batch_u32(map: &aya::maps::MapData) -> Vec<(u32, u32)> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    #[repr(C)]
    struct Batch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const CHUNK: usize = 65536;
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let (mut keys, mut values) = (vec![0u32; CHUNK], vec![0u32; CHUNK]);
    let (mut cursor_in, mut cursor_out) = (0u32, 0u32);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut attr = Batch {
            in_batch: if first {
                0
            } else {
                (&raw const cursor_in) as u64
            },
            out_batch: (&raw mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the kernel writes at most `count` keys and values into the buffers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<Batch>(),
            )
        };
        let err = std::io::Error::last_os_error();
        let n = attr.count as usize;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        if r < 0 {
            assert_eq!(
                err.raw_os_error(),
                Some(libc::ENOENT),
                "BPF_MAP_LOOKUP_BATCH: {err}"
            );
            return out;
        }
        first = false;
        cursor_in = cursor_out;
    }
}
