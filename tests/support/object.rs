//! The eBPF object loaded straight from the build, with no agent and no pins: each test
//! gets fresh maps and counters, writes its policy into the maps through
//! `portcullis_common`, and runs `pc_xdp` on crafted frames ([`crate::frames`]) with
//! BPF_PROG_TEST_RUN or attaches it to a lab veth.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
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
