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
        state::{NamesState, State},
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
        dns_grace: settings.dns_grace,
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
    let image = Image::build(policy, &index, generation, &dp.name_key())?;
    let resolvers: Vec<_> = settings.resolvers.iter().map(|r| r.network).collect();
    dp.set_resolvers(&resolvers)?;
    dp.reset_rule_counters(&fresh)?;
    fault::point(Step::Counters);
    // A new epoch: every flow is decided again on its next packet (revocation).
    let config = Config {
        epoch: live.epoch.wrapping_add(1),
        ..config_for(policy, generation, settings)
    };
    dp.install(&image, config)?;
    let version = previous.map_or(1, |s| s.policy_version + 1);
    let mut state = State::new(policy, &index, &settings.scopes, generation, version);
    state.names = NamesState::new(
        policy,
        settings.dns_grace,
        settings.resolvers.clone(),
        &dp.name_key(),
    );
    Ok(state)
}
