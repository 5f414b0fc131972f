//! `portcullis debug image` (hidden): prints, as JSON, the map image (port table, peer
//! trie, host name tables) of the policy the
//! state file records, built from its config with the rule indices and generation the
//! state file names. The root suite compares it with the live pinned maps (a reload
//! killed at any step must leave the maps equal to this image once the agent restarts).
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
    let DebugCommand::Image(args) = command;
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
    let image = Image::build(&policy, &index, state.generation)?;
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
