//! The verdict of the datapath for one flow, computed in userspace: the map image the
//! loader would write, looked up with the same `decide` the programs run
//! (`portcullis_common::policy`). `explain` shows it; `report` asks it which feature or
//! site rule would open a denied port ([`FeatureHints`]). There is no second
//! implementation of the lookup.

use std::net::IpAddr;

use portcullis_common::{
    names::HashKey,
    policy::{Decision, is_loopback},
};
use toml::Spanned;

use super::{
    LoopbackMode, Policy, Rule, compiler,
    image::{Image, RuleIndex, addr16},
};
use crate::{
    config::{profile::Profile, site::Site},
    model::{Direction, Protocol},
};

/// The peer `explain` and `report` assume when none is known: TEST-NET-1, a documentation
/// address (RFC 5737) that no real peer group contains.
pub const DEFAULT_PEER: &str = "192.0.2.1";

/// A flow to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// in | out.
    pub direction: Direction,
    /// tcp | udp.
    pub protocol: Protocol,
    /// Local port (in) or remote port (out).
    pub port: u16,
    /// The remote end.
    pub peer: IpAddr,
}

/// How the datapath treats a new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Loopback traffic passes before the policy is consulted (`loopback = "exempt"`).
    LoopbackExempt,
    /// Allowed by the rule at this index of `Policy::rules`.
    Allow(usize),
    /// Denied, for this `portcullis_common::stats::reason`.
    Deny(u32),
}

/// Decides `flow` under `policy`, through the map image and the datapath's `decide`.
pub fn evaluate(policy: &Policy, flow: Flow) -> anyhow::Result<Verdict> {
    Tables::build(policy)?.evaluate(policy, flow)
}

/// A policy's map image, built once to decide many flows (building is the costly part).
pub struct Tables {
    image: Image,
}

impl Tables {
    /// The image the loader would write for `policy` (generation 0, fresh indices).
    pub fn build(policy: &Policy) -> anyhow::Result<Self> {
        // Any key: what the image decides does not depend on it (see `Image::build`).
        let image = Image::build(policy, &RuleIndex::fresh(policy)?, 0, &HashKey::default())?;
        Ok(Self { image })
    }

    /// Decides `flow` as the datapath does: the loopback exemption first, then
    /// `decide` on the image. `policy` must be the one the tables were built from.
    pub fn evaluate(&self, policy: &Policy, flow: Flow) -> anyhow::Result<Verdict> {
        self.evaluate_as(policy, flow, None)
    }

    /// Like [`Tables::evaluate`], with `flow.peer` learned from a trusted resolver's
    /// answer for `host` (None: learned from nothing).
    pub fn evaluate_as(
        &self,
        policy: &Policy,
        flow: Flow,
        host: Option<&str>,
    ) -> anyhow::Result<Verdict> {
        if policy.loopback == LoopbackMode::Exempt && is_loopback(&addr16(flow.peer)) {
            return Ok(Verdict::LoopbackExempt);
        }
        let (d, p, port, peer) = (flow.direction, flow.protocol, flow.port, flow.peer);
        let decision = match host {
            Some(host) => self.image.decide_learned(d, p, port, peer, host),
            None => self.image.decide(d, p, port, peer),
        };
        Ok(match decision {
            // `rule_index` holds the kernel index of each rule in policy order.
            Decision::Allow(kernel_index) => {
                let rule = self
                    .image
                    .rule_index
                    .iter()
                    .position(|&i| i == kernel_index);
                Verdict::Allow(rule.ok_or_else(|| {
                    anyhow::anyhow!(
                        "the datapath allowed by rule index {kernel_index}, which no rule has"
                    )
                })?)
            }
            Decision::Deny(why) => Verdict::Deny(why),
        })
    }
}

/// The profile's policy with every feature on: what the operator could turn on. The
/// peer groups those features need stand for any peer where the site does not define
/// them, so a rule limited to an undefined group still answers "this feature opens it".
pub struct FeatureHints {
    policy: Policy,
    tables: Tables,
}

impl FeatureHints {
    /// Compiles `profile` with every feature on, under `site`'s settings.
    pub fn new(profile: &Profile, site: &Site) -> anyhow::Result<Self> {
        let mut all = site.clone();
        all.set_features(profile.feature_names());
        for group in profile.site_groups() {
            let empty = all.peers.get(&group).is_none_or(|n| n.get_ref().is_empty());
            if empty && !all.any_peer_groups.iter().any(|g| g.get_ref() == &group) {
                all.any_peer_groups.push(Spanned::new(0..0, group));
            }
        }
        let policy = compiler::compile(profile, &all, None).map_err(anyhow::Error::from)?;
        let tables = Tables::build(&policy)?;
        Ok(Self { policy, tables })
    }

    /// The policy with every feature on.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The rule of an optional feature that would open `flow`, if one would.
    pub fn opening(&self, flow: Flow) -> Option<&Rule> {
        match self.tables.evaluate(&self.policy, flow) {
            Ok(Verdict::Allow(i)) => {
                let rule = &self.policy.rules[i];
                rule.feature.is_some().then_some(rule)
            }
            _ => None,
        }
    }
}
