//! Policy -> kernel: a compiled policy becomes a map image, which is written into the
//! idle generation and made live with the runtime configuration in one map write. Start
//! and reload both go through [`install`].

use portcullis_common::config::{
    Config, LOOPBACK_ENFORCE, LOOPBACK_EXEMPT, MODE_AUDIT, MODE_ENFORCE,
};

use super::settings::Settings;
use crate::{
    datapath::{
        fault::{self, Step},
        loader::Datapath,
        state::State,
    },
    model::{LoopbackMode, Mode},
    policy::{
        Policy,
        image::{Image, RuleIndex},
    },
};

/// The runtime configuration for a policy.
pub fn config_for(policy: &Policy, generation: u32, settings: &Settings) -> Config {
    Config {
        generation,
        mode: if policy.mode == Mode::Enforce {
            MODE_ENFORCE
        } else {
            MODE_AUDIT
        },
        loopback: if policy.loopback == LoopbackMode::Enforce {
            LOOPBACK_ENFORCE
        } else {
            LOOPBACK_EXEMPT
        },
        icmp_echo: u32::from(policy.icmp_echo),
        events_per_sec: settings.events_per_sec,
        xdp_flows: u32::from(!settings.xdp.is_empty()),
        epoch: 0,
        _reserved: [0; 1],
    }
}

/// Installs `policy` in the idle generation and makes it live. Returns the new state.
pub fn install(
    dp: &mut Datapath,
    policy: &Policy,
    settings: &Settings,
    previous: Option<&State>,
) -> anyhow::Result<State> {
    let prev_index = previous.map(State::rule_index).unwrap_or_default();
    let index = RuleIndex::carry_over(&prev_index, policy)?;
    let fresh: Vec<u16> = index
        .iter()
        .filter(|(id, _)| prev_index.get(id).is_none())
        .map(|(_, i)| i)
        .collect();
    // Build first: a policy that does not fit is rejected before any map is touched.
    let live = dp.config()?;
    let generation = 1 - (live.generation & 1);
    let image = Image::build(policy, &index, generation)?;
    warn_unlearned_names(policy);
    dp.reset_rule_counters(&fresh)?;
    fault::point(Step::Counters);
    // A new epoch: every flow is decided again on its next packet (revocation).
    let config = Config {
        epoch: live.epoch.wrapping_add(1),
        ..config_for(policy, generation, settings)
    };
    dp.install(&image, config)?;
    let version = previous.map_or(1, |s| s.policy_version + 1);
    Ok(State::new(
        policy,
        &index,
        &settings.scopes,
        generation,
        version,
    ))
}

/// The datapath of this build does not yet learn addresses from DNS answers (issue 15,
/// kernel side pending), so a peer group that is only host names admits no address:
/// say so once per install, with the way back.
fn warn_unlearned_names(policy: &Policy) {
    let groups: Vec<&str> = policy
        .peer_sets
        .iter()
        .filter(|s| !s.names.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    if !groups.is_empty() {
        log::warn!(
            "peer groups with host names ({}) admit only their networks: this build does not learn addresses from DNS answers yet; set vendor_peers = \"any\" (or list the groups in any_peer_groups) to keep their ports open to any peer",
            groups.join(", ")
        );
    }
}
