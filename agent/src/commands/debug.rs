//! `portcullis debug image` (hidden): prints, as JSON, the map image (port table, peer
//! trie, host name tables) of the policy the
//! state file records, built from its config with the rule indices and generation the
//! state file names. The root suite compares it with the live pinned maps (a reload
//! killed at any step must leave the maps equal to this image once the agent restarts).
//!
//! `portcullis debug verifier` (hidden): loads each program of the embedded object into
//! this kernel (nothing pinned or attached) and prints, per program, the instructions the
//! verifier processed and the load time, or the refusal. The kernel matrix
//! (`cargo xtask test --kernel`) runs it in each guest for its figures.
//!
//! For tests and diagnosis, not a stable interface.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, ensure};
use serde::Serialize;

use crate::{
    datapath::{paths::PathArgs, state::State},
    policy::{LoopbackMode, compiler, image::Image},
};

/// `portcullis debug ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DebugCommand {
    /// Print the map image of the running policy (JSON).
    Image(ImageArgs),
    /// Load every program into this kernel, unattached: verifier instruction counts and
    /// load times (exit 1 if the kernel refuses one).
    Verifier(VerifierArgs),
}

/// Arguments of `portcullis debug verifier`.
#[derive(Debug, clap::Args)]
pub struct VerifierArgs {
    /// One JSON array of {program, insns_processed, load_ms, error}.
    #[arg(long)]
    json: bool,
}

/// One program, as `debug verifier --json` prints it.
#[derive(Serialize)]
struct VerifiedJson {
    program: &'static str,
    /// `null` when the kernel reports no count (a success on Linux < 5.16).
    insns_processed: Option<u64>,
    load_ms: f64,
    /// The refusal, with the verifier log; `null` when the program loaded.
    error: Option<String>,
}

/// Arguments of `portcullis debug image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// The site config the running policy came from (default: the one the state file names).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    paths: PathArgs,
}

/// One `PEERS` entry: prefix length, the key's set word (`generation << 16 | set`) and
/// address, and the rule index it maps to.
#[derive(Serialize)]
struct PeerJson {
    prefix_len: u32,
    set: u32,
    addr: [u8; 16],
    rule: u16,
}

/// One `NAMES` entry: the pattern's hash and kind, and its name groups (bits).
#[derive(Serialize)]
struct NameJson {
    hash: u64,
    kind: u8,
    groups: u64,
}

/// One `SLOT_NAMES` entry: the slot, its name groups (bits) and the rule of each bit.
#[derive(Serialize)]
struct SlotNamesJson {
    slot: u16,
    mask: u64,
    rules: Vec<u16>,
}

/// The image as printed.
#[derive(Serialize)]
struct ImageJson {
    generation: u32,
    policy_version: u64,
    loopback_enforce: bool,
    icmp_echo: bool,
    /// Non-zero `PORTS` entries of the generation, as (map index, value).
    ports: Vec<(u32, u32)>,
    peers: Vec<PeerJson>,
    /// `NAMES` entries of the generation.
    names: Vec<NameJson>,
    /// `SLOT_NAMES` entries of the generation.
    slot_names: Vec<SlotNamesJson>,
}

/// Runs the subcommand.
pub fn run(command: DebugCommand) -> anyhow::Result<ExitCode> {
    match command {
        DebugCommand::Image(args) => image(args),
        DebugCommand::Verifier(args) => verifier(&args),
    }
}

/// `debug verifier`: each program loaded on its own, the verifier's figures printed.
fn verifier(args: &VerifierArgs) -> anyhow::Result<ExitCode> {
    let verified = crate::datapath::verify::verify_each()?;
    let refused = verified.iter().filter(|v| v.error.is_some()).count();
    if args.json {
        let out: Vec<VerifiedJson> = verified
            .into_iter()
            .map(|v| VerifiedJson {
                program: v.name,
                insns_processed: v.insns_processed,
                load_ms: (v.load.as_secs_f64() * 1e4).round() / 10.0,
                error: v.error,
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "{:<12} {:>10} {:>10}  result",
            "program", "insns", "load ms"
        );
        for v in &verified {
            let insns = v
                .insns_processed
                .map_or_else(|| "-".to_owned(), |n| n.to_string());
            // The verifier's log runs to megabytes: `--json` carries it whole.
            let result = if v.error.is_some() {
                "REFUSED (the verifier log: --json)"
            } else {
                "loaded"
            };
            println!(
                "{:<12} {insns:>10} {:>10.1}  {result}",
                v.name,
                v.load.as_secs_f64() * 1e3
            );
        }
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `debug image`.
fn image(args: ImageArgs) -> anyhow::Result<ExitCode> {
    let state = State::read(&args.paths.state_file())?;
    let config = args
        .config
        .or_else(|| state.config.clone())
        .context("the state file names no config (started with --product): pass --config")?;
    let site = crate::config::load_site(&config)?;
    let policy = compiler::compile_site(&site, Some(&config))?;
    let index = state.rule_index();
    let mut ids: Vec<&str> = policy.rules.iter().map(|r| r.id.as_str()).collect();
    let mut recorded: Vec<&str> = index.iter().map(|(id, _)| id).collect();
    ids.sort_unstable();
    recorded.sort_unstable();
    ensure!(
        ids == recorded,
        "{} is not the policy the state file records (rules {ids:?}, recorded {recorded:?})",
        config.display()
    );
    // The live key, so the hashes are the pinned map's.
    let key = crate::datapath::names::read_key(&args.paths).context(
        "the image's host name hashes are under the pinned maps' key: start the agent first",
    )?;
    let image = Image::build(&policy, &index, state.generation, &key)?;
    let base = image.ports_base();
    let out = ImageJson {
        generation: image.generation,
        policy_version: state.policy_version,
        loopback_enforce: policy.loopback == LoopbackMode::Enforce,
        icmp_echo: policy.icmp_echo,
        ports: image
            .ports
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, v)| (base + i as u32, *v))
            .collect(),
        peers: image
            .peers
            .iter()
            .map(|e| PeerJson {
                prefix_len: e.prefix_len,
                set: u32::from_be_bytes(e.key.set),
                addr: e.key.addr,
                rule: e.rule,
            })
            .collect(),
        names: image
            .names
            .iter()
            .map(|(k, v)| NameJson {
                hash: k.hash,
                kind: k.kind,
                groups: v.groups,
            })
            .collect(),
        slot_names: image
            .slot_names
            .iter()
            .map(|(k, v)| SlotNamesJson {
                slot: k.slot,
                mask: v.mask,
                rules: v.rules.to_vec(),
            })
            .collect(),
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(ExitCode::SUCCESS)
}
