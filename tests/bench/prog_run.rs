//! `prog_run`: the benchmark's BPF_PROG_TEST_RUN driver (`cargo xtask bench` runs it; it
//! is not a test).
//!
//! ```text
//! prog_run --object OBJ --repeat N --runs R [--chain C] LABEL=STEP[,STEP...]...
//!   STEP    KIND:SOURCE:HEXFRAME
//!   KIND    xdp | skb-ingress | skb-ingress-lo (from the loopback device) | skb-egress
//!   SOURCE  noop (the object's empty baseline of that type), or the bpffs path of a
//!           pinned program (the agent's own programs, pinned by id with bpftool, or a
//!           peer's such as xdp-filter's)
//! prog_run --object OBJ --attach-drop IFNAME --pin PATH
//! ```
//!
//! `--attach-drop` attaches the object's `pc_noop_drop` (drops every frame, reads
//! nothing) to IFNAME in driver mode, pins the link at PATH and exits: the ceiling of
//! an XDP filter on that device (the bench's S1); removing the pin detaches it.
//!
//! A job of several steps is a chain: a run whose outcome depends on state an earlier
//! packet leaves (a DNS answer is learned from once, consuming the question its query
//! recorded), which `repeat = N` of one program cannot measure. Each of its `C` rounds
//! (default 10,000) runs every step once, in order, with `repeat = 1`; its NS is the
//! mean over those rounds of the last step's duration, its RETURN the last step's (the
//! same every time, else an error). A `repeat = 1` duration includes the kernel's two
//! clock reads: compare chains with chains, not with single-step jobs.
//!
//! Every job runs once to warm up (a chain: one round of it), then `R` rounds in which
//! each job runs once with `repeat = N` (a chain: its `C` rounds): the jobs of one round are adjacent in time, so the ratios the
//! benchmark takes between them (ours / no-op, ours / xdp-filter) see the same machine
//! noise. One line per job and round on stdout: `LABEL<TAB>ROUND<TAB>NS<TAB>RETURN`,
//! where NS is the kernel's average time per run (`BPF_PROG_TEST_RUN`'s `duration`,
//! whole nanoseconds; for a chain the mean above, one decimal).

use std::{collections::HashMap, fs, process::ExitCode};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupSkb, CgroupSkbAttachType, TestRun, TestRunOptions, Xdp, XdpMode, links::FdLink,
    },
};
use aya_obj::programs::XdpAttachType;

/// A program ready for test_run, whatever its type.
enum Prog {
    /// A baseline in this process's copy of the object, by name.
    Noop {
        name: &'static str,
        xdp: bool,
    },
    Xdp(Xdp),
    Skb(CgroupSkb),
}

impl Prog {
    fn run(
        &self,
        ebpf: &Ebpf,
        frame: &[u8],
        ctx: Option<&[u8]>,
        repeat: u32,
    ) -> anyhow::Result<(u128, u32)> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx,
            repeat,
            ..TestRunOptions::default()
        };
        let program = |name: &str| {
            ebpf.program(name)
                .with_context(|| format!("{name} in the object"))
        };
        let r = match self {
            Prog::Noop { name, xdp: true } => <&Xdp>::try_from(program(name)?)?.test_run(opts),
            Prog::Noop { name, xdp: false } => {
                <&CgroupSkb>::try_from(program(name)?)?.test_run(opts)
            }
            Prog::Xdp(p) => p.test_run(opts),
            Prog::Skb(p) => p.test_run(opts),
        }
        .context("BPF_PROG_TEST_RUN")?;
        Ok((r.duration.as_nanos(), r.return_value))
    }
}

/// The baselines' names in the object (`ebpf/src/noop.rs`).
const NOOP_XDP: &str = "pc_noop_xdp";
const NOOP_SKB: &str = "pc_noop_skb";
const NOOP_DROP: &str = "pc_noop_drop";

/// `--attach-drop`: see the module docs.
fn attach_drop(ebpf: &mut Ebpf, ifname: &str, pin: &str) -> anyhow::Result<()> {
    let p: &mut Xdp = ebpf
        .program_mut(NOOP_DROP)
        .context("pc_noop_drop in the object")?
        .try_into()?;
    p.load().context("loading pc_noop_drop")?;
    let id = p
        .attach(ifname, XdpMode::Driver)
        .with_context(|| format!("attaching pc_noop_drop to {ifname} (driver mode)"))?;
    let link = FdLink::try_from(p.take_link(id)?).context("the XDP attachment as a bpf_link")?;
    link.pin(pin)
        .with_context(|| format!("pinning the link at {pin}"))?;
    Ok(())
}

/// One program run on one frame.
struct Step {
    prog: usize,
    frame: Vec<u8>,
    /// `struct __sk_buff` input, for `skb-ingress-lo`.
    ctx: Option<Vec<u8>>,
}

struct Job {
    label: String,
    /// One step: run with `repeat`; more: a chain (see the module docs).
    steps: Vec<Step>,
}

impl Job {
    /// (ns per run, return value) of one round.
    fn run(
        &self,
        progs: &[Prog],
        ebpf: &Ebpf,
        repeat: u32,
        chain: u32,
    ) -> anyhow::Result<(f64, u32)> {
        let run = |s: &Step, repeat| progs[s.prog].run(ebpf, &s.frame, s.ctx.as_deref(), repeat);
        let [step] = self.steps.as_slice() else {
            let (mut total, mut ret) = (0u128, None);
            for _ in 0..chain.max(1) {
                let mut last = (0, 0);
                for s in &self.steps {
                    last = run(s, 1)?;
                }
                total += last.0;
                if ret.is_some_and(|r| r != last.1) {
                    bail!(
                        "the chain's last step returned {} after {}",
                        last.1,
                        ret.unwrap_or(0)
                    );
                }
                ret = Some(last.1);
            }
            return Ok((total as f64 / f64::from(chain.max(1)), ret.unwrap_or(0)));
        };
        let (ns, ret) = run(step, repeat)?;
        Ok((ns as f64, ret))
    }
}

/// The head of a `struct __sk_buff` (uapi/linux/bpf.h) up to `ingress_ifindex` (offset
/// 36), set to the loopback device: BPF_PROG_TEST_RUN copies that field into the test
/// skb (a shorter context is zero-extended), so the program sees a packet that crossed
/// loopback. Without it the field is 0 and a 127/8 source is taken for spoofed.
fn loopback_ctx() -> Vec<u8> {
    let mut ctx = vec![0u8; 40];
    ctx[36..40].copy_from_slice(&1u32.to_ne_bytes());
    ctx
}

fn hex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd-length hex frame {s:?}");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("bad hex in frame {s:?}"))
        })
        .collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prog_run: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut object, mut repeat, mut runs, mut chain, mut specs) =
        (None, 1_000_000u32, 7u32, 10_000u32, Vec::new());
    let (mut drop_on, mut pin) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--object" => object = args.next(),
            "--attach-drop" => drop_on = args.next(),
            "--pin" => pin = args.next(),
            "--repeat" => {
                repeat = args
                    .next()
                    .context("--repeat N")?
                    .parse()
                    .context("--repeat N")?
            }
            "--runs" => {
                runs = args
                    .next()
                    .context("--runs R")?
                    .parse()
                    .context("--runs R")?
            }
            "--chain" => {
                chain = args
                    .next()
                    .context("--chain C")?
                    .parse()
                    .context("--chain C")?
            }
            _ => specs.push(a),
        }
    }
    let object = object.context("--object OBJ is required")?;
    let bytes = fs::read(&object).with_context(|| format!("reading the eBPF object {object}"))?;
    // Maps of this copy of the object are fresh and unpinned: the baselines touch none.
    let mut ebpf = EbpfLoader::new()
        .load(&bytes)
        .with_context(|| format!("loading {object}"))?;
    if let Some(ifname) = drop_on {
        return attach_drop(
            &mut ebpf,
            &ifname,
            &pin.context("--attach-drop needs --pin PATH")?,
        );
    }
    let mut progs: Vec<Prog> = Vec::new();
    let mut by_source: HashMap<(String, String), usize> = HashMap::new();
    let mut jobs = Vec::new();
    for spec in &specs {
        let (label, rest) = spec
            .split_once('=')
            .with_context(|| format!("job {spec:?}: expected LABEL=STEP[,STEP...]"))?;
        let mut steps = Vec::new();
        for step in rest.split(',') {
            let mut parts = step.splitn(3, ':');
            let (Some(kind), Some(source), Some(frame)) =
                (parts.next(), parts.next(), parts.next())
            else {
                bail!("job {spec:?}: step {step:?}: expected KIND:SOURCE:HEX");
            };
            // `skb-ingress-lo`: the ingress program, on a packet from the loopback device.
            let (kind, ctx) = match kind {
                "skb-ingress-lo" => ("skb-ingress", Some(loopback_ctx())),
                k => (k, None),
            };
            // Ingress and egress baselines are the same program.
            let key = (
                if source == "noop" {
                    kind.trim_end_matches("-egress")
                        .trim_end_matches("-ingress")
                } else {
                    kind
                }
                .to_owned(),
                source.to_owned(),
            );
            let index = match by_source.get(&key) {
                Some(i) => *i,
                None => {
                    let prog = match (kind, source) {
                        ("xdp", "noop") => {
                            let p: &mut Xdp = ebpf
                                .program_mut(NOOP_XDP)
                                .context("pc_noop_xdp in the object")?
                                .try_into()?;
                            p.load().context("loading pc_noop_xdp")?;
                            Prog::Noop {
                                name: NOOP_XDP,
                                xdp: true,
                            }
                        }
                        ("skb-ingress" | "skb-egress", "noop") => {
                            let p: &mut CgroupSkb = ebpf
                                .program_mut(NOOP_SKB)
                                .context("pc_noop_skb in the object")?
                                .try_into()?;
                            if p.fd().is_err() {
                                p.load().context("loading pc_noop_skb")?;
                            }
                            Prog::Noop {
                                name: NOOP_SKB,
                                xdp: false,
                            }
                        }
                        ("xdp", path) => Prog::Xdp(
                            Xdp::from_pin(path, XdpAttachType::Interface)
                                .with_context(|| format!("opening pinned program {path}"))?,
                        ),
                        ("skb-ingress", path) => Prog::Skb(
                            CgroupSkb::from_pin(path, CgroupSkbAttachType::Ingress)
                                .with_context(|| format!("opening pinned program {path}"))?,
                        ),
                        ("skb-egress", path) => Prog::Skb(
                            CgroupSkb::from_pin(path, CgroupSkbAttachType::Egress)
                                .with_context(|| format!("opening pinned program {path}"))?,
                        ),
                        (k, _) => {
                            bail!(
                                "job {spec:?}: unknown kind {k:?} (xdp, skb-ingress, skb-ingress-lo, skb-egress)"
                            )
                        }
                    };
                    progs.push(prog);
                    by_source.insert(key, progs.len() - 1);
                    progs.len() - 1
                }
            };
            steps.push(Step {
                prog: index,
                frame: hex(frame)?,
                ctx,
            });
        }
        jobs.push(Job {
            label: label.to_owned(),
            steps,
        });
    }
    for job in &jobs {
        job.run(&progs, &ebpf, repeat.min(10_000), 1)
            .with_context(|| format!("warming up {}", job.label))?;
    }
    for round in 0..runs {
        for job in &jobs {
            let (ns, ret) = job
                .run(&progs, &ebpf, repeat, chain)
                .with_context(|| format!("running {}", job.label))?;
            println!("{}\t{round}\t{ns:.1}\t{ret}", job.label);
        }
    }
    Ok(())
}
