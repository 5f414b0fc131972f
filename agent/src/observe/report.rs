//! The audit -> enforce decision behind `portcullis report`.
//!
//! It answers "what would break if I enforced now?" from two sources: the kernel's
//! denied-port table (exact packet counts, not rate-limited, but undated) and the
//! agent's deny aggregate `denies.json` (dated, with top peers and processes, but built
//! from rate-limited events). Ports are grouped by (direction, protocol, port). For each
//! port no rule opens, the report names what would open it: a rule of the site config
//! (when the config is known) or a feature of the product's profile, found with
//! `policy::verdict` (the datapath's own lookup): there is no second implementation.
//!
//! Each port is classed (`observe::readiness`) from its flow evidence: breakage,
//! exposure closed or unclear. "Safe to enforce" means no breakage and at most
//! `--max-unclear` unclear ports; exposures closed never make it unsafe. An exposure on a
//! port a listener reachable from outside serves is a finding of its own.
//!
//! [`reset`] starts a new observation window: it zeroes the pinned counters of every
//! layer, deletes the per-flow evidence and empties `denies.json`, recording when. That is what to do after changing
//! the policy, so old would-denies stop counting.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use portcullis_common::maps as names;
use serde::Serialize;

use super::{
    aggregate::{self, DenyFile},
    readiness::{self, Class, Cover, Evidence, PortFinding, port_name, verdict},
    rfc3339,
    status::{self, Traffic},
};
use crate::{
    config::{
        profile,
        site::{DEFAULT_AUDIT_MIN_WINDOW, DEFAULT_CONFIG, Site},
    },
    datapath::{paths::PathArgs, state::State},
    model::{Direction, IpProtocol, Mode, Protocol},
    policy::{
        Policy, compiler,
        verdict::{DEFAULT_PEER, FeatureHints, Flow, Tables, Verdict},
    },
};

/// What a report is asked for.
#[derive(Clone, Debug)]
pub struct Query {
    /// Only the last this many seconds.
    pub since: Option<u64>,
    /// The site config the agent runs (default: the packaged one, when it names the
    /// running product).
    pub config: Option<PathBuf>,
    /// The running agent's pins and state.
    pub paths: PathArgs,
    /// Unclear ports tolerated by "safe to enforce".
    pub max_unclear: u64,
    /// The shortest window called safe, in seconds (default: the config's
    /// `audit_min_window`, else [`DEFAULT_AUDIT_MIN_WINDOW`]).
    pub min_window: Option<u64>,
}

/// A rule with no traffic in the window.
#[derive(Clone, Debug, Serialize)]
pub struct IdleRule {
    /// Rule id.
    pub id: String,
    /// in | out.
    pub direction: String,
    /// tcp | udp | tcp,udp.
    pub protocol: String,
    /// Ports as written.
    pub ports: String,
    /// The vendor's reason.
    pub why: String,
}

/// The `report --json` document.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Profile slug.
    pub product: String,
    /// audit | enforce.
    pub mode: Mode,
    /// Unix time the window starts (counters' start, last reset, or --since).
    pub since: u64,
    /// The --since duration in seconds, if given.
    pub since_seconds: Option<u64>,
    /// Denied ports, most packets (then events) first.
    pub ports: Vec<PortFinding>,
    /// Rules that allowed nothing since the counters started: candidates to remove.
    pub rules_never_hit: Vec<IdleRule>,
    /// Would-denies (audit) in the kernel's counters.
    pub would_deny: Traffic,
    /// Denies (enforce) in the kernel's counters.
    pub denied: Traffic,
    /// Deny events the kernel's rate limit dropped (not in denies.json).
    pub events_rate_limited: u64,
    /// Ports (as `in tcp/3306`) enforcing would break.
    pub breakage: Vec<String>,
    /// Ports where enforcing closes an exposure.
    pub exposure_closed: Vec<String>,
    /// Ports the evidence does not class.
    pub unclear: Vec<String>,
    /// The `--max-unclear` the verdict used.
    pub max_unclear: u64,
    /// Seconds the window spans (now - since).
    pub window_seconds: u64,
    /// The minimum window the verdict used (`--min-window`, else the config's
    /// `audit_min_window`, else 7 days).
    pub min_window_seconds: u64,
    /// The window spans the minimum: before that, audit mode is never "safe" (an empty
    /// window on a fresh install has seen nothing, not nothing breaking).
    pub window_complete: bool,
    /// Exposures closed on ports with a listener reachable from outside.
    pub findings: Vec<String>,
    /// Peers that look like health checks, in words (their ports are unclear, and any
    /// makes the report unsafe whatever `max_unclear` says: a failed health check takes
    /// the host out of its pool).
    pub health_checks: Vec<String>,
    /// True when enforcing breaks nothing seen in the window: no breakage, at most
    /// `max_unclear` unclear ports (exposures closed do not count).
    pub safe: bool,
    /// The one-line verdict.
    pub verdict: String,
    /// Why some ports carry no `covered_by` even though something might open them.
    pub notes: Vec<String>,
}

/// When the counters started: the last reset, else when the stats map was pinned (its
/// inode's change time on bpffs).
fn counting_since(paths: &PathArgs, file: Option<&DenyFile>) -> u64 {
    let pinned = fs::metadata(paths.map(names::STATS)).map_or(0, |m| m.ctime().max(0) as u64);
    pinned.max(file.map_or(0, |f| f.reset_at))
}

/// The policies that tell what would open a port: the site config's (if known) and the
/// profile's with every feature on.
struct Hints {
    config: Option<(PathBuf, Policy, Tables)>,
    all_features: Option<FeatureHints>,
    /// The config's `audit_min_window`, when a config was read.
    min_window: Option<u64>,
}

impl Hints {
    fn load(product: &str, config: Option<&Path>, notes: &mut Vec<String>) -> Self {
        let default = Path::new(DEFAULT_CONFIG);
        let (path, explicit) = match config {
            Some(p) => (Some(p), true),
            None if default.is_file() => (Some(default), false),
            None => (None, false),
        };
        let mut hints = Hints {
            config: None,
            all_features: None,
            min_window: None,
        };
        let mut profile = None;
        if let Some(path) = path {
            let compiled = crate::config::load_site(path).and_then(|site| {
                let profile = compiler::site_profile(&site, Some(path))?;
                let policy = compiler::compile_site(&site, Some(path))?;
                Ok((profile, site, policy))
            });
            match compiled {
                // The default config only counts when it is the running product's.
                Ok((p, site, policy)) if explicit || policy.product == product => {
                    if let Ok(tables) = Tables::build(&policy) {
                        hints.config = Some((path.to_path_buf(), policy, tables));
                    }
                    hints.min_window = Some(site.audit_min_window.as_secs());
                    profile = Some((p, site));
                }
                Ok(_) => {}
                Err(e) => notes.push(format!(
                    "config \"{}\" does not compile ({e}); no site-rule hints",
                    path.display()
                )),
            }
        }
        let all = match profile {
            Some((p, site)) => FeatureHints::new(&p, &site),
            None => profile::find(product)
                .map_err(anyhow::Error::from)
                .and_then(|p| FeatureHints::new(&p, &Site::default_for(product))),
        };
        match all {
            Ok(all) => hints.all_features = Some(all),
            Err(_) => notes.push(format!(
                "\"{product}\" is not a built-in profile and no config was given: no feature hints (pass --config)"
            )),
        }
        hints
    }

    /// What would open `flow`, if anything.
    fn cover(&self, flow: Flow) -> Option<Cover> {
        if let Some((path, policy, tables)) = &self.config
            && let Ok(Verdict::Allow(i)) = tables.evaluate(policy, flow)
        {
            return Some(Cover::ConfigRule {
                rule: policy.rules[i].id.clone(),
                config: path.display().to_string(),
            });
        }
        let rule = self.all_features.as_ref()?.opening(flow)?;
        Some(Cover::Feature {
            feature: rule.feature.clone()?,
            rule: rule.id.clone(),
        })
    }
}

/// Parses `30s`, `30m`, `2h`, `1d`, `1w` and sums like `1h30m` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad =
        || format!("duration \"{text}\" is not like 30m, 2h, 1d or 1h30m (units: s, m, h, d, w)");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// A minimum window: a duration as [`parse_duration`] reads it, or `0` for none (a
/// site that decides without one, a test).
pub fn parse_min_window(text: &str) -> Result<u64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    parse_duration(text).map_err(|e| format!("{e}, or 0 for no minimum"))
}

/// Builds the report at `now`.
pub fn build(query: &Query, now: u64) -> anyhow::Result<Report> {
    let paths = &query.paths;
    let status = status::collect(paths)?;
    let state = State::read(&paths.state_file())?;
    let file = DenyFile::read(&aggregate::denies_file(paths))?;
    let scans = file
        .as_ref()
        .map(|f| f.scan_peers.clone())
        .unwrap_or_default();
    let counted_from = counting_since(paths, file.as_ref());
    let cutoff = query.since.map(|s| now.saturating_sub(s));
    let since = cutoff.unwrap_or(counted_from).max(counted_from);
    // The kernel's counts are undated: they belong to the window only when it holds
    // everything they counted.
    let kernel_in_window = cutoff.is_none_or(|c| counted_from >= c);

    let mut notes = Vec::new();
    let mut ports: BTreeMap<(Direction, IpProtocol, u16), PortFinding> = BTreeMap::new();
    let blank = |direction, protocol, port| PortFinding {
        direction,
        protocol,
        port,
        packets: None,
        bytes: None,
        events: 0,
        denies: 0,
        would_denies: 0,
        first_seen: None,
        last_seen: None,
        reasons: BTreeMap::new(),
        peers: Vec::new(),
        processes: Vec::new(),
        covered_by: None,
        class: Class::Unclear,
        class_reason: String::new(),
        evidence: None,
        listener: None,
        health_checks: Vec::new(),
    };
    if kernel_in_window {
        for d in &status.denied_ports {
            let f = ports
                .entry((d.direction, d.protocol, d.port))
                .or_insert_with(|| blank(d.direction, d.protocol, d.port));
            f.packets = Some(d.packets);
            f.bytes = Some(d.bytes);
        }
    }
    for p in file
        .iter()
        .flat_map(|f| &f.ports)
        .filter(|p| p.last_seen >= since)
    {
        let f = ports
            .entry((p.direction, p.protocol, p.port))
            .or_insert_with(|| blank(p.direction, p.protocol, p.port));
        f.events = p.denies + p.would_denies;
        f.denies = p.denies;
        f.would_denies = p.would_denies;
        f.first_seen = Some(p.first_seen);
        f.last_seen = Some(p.last_seen);
        f.reasons = p.reasons.clone();
        f.peers = p.peers.clone();
        f.processes = p.processes.clone();
        if p.evidence.total.flows > 0 {
            f.evidence = Some(Evidence::new(p.direction, &p.evidence, &scans));
        }
        let c = readiness::classify(p.direction, Some(&p.evidence), &scans);
        (f.class, f.class_reason, f.health_checks) = (c.class, c.reason, c.health_checks);
    }
    let listeners = readiness::listeners(status.pid);
    let mut findings = Vec::new();
    for f in ports.values_mut() {
        if f.class_reason.is_empty() {
            // Only in the kernel's table: no events, no evidence.
            let c = readiness::classify(f.direction, None, &scans);
            (f.class, f.class_reason) = (c.class, c.reason);
        }
        if f.class == Class::ExposureClosed
            && f.direction == Direction::In
            && let Some((bound, text)) = readiness::exposure_finding(f.protocol, f.port, &listeners)
        {
            f.listener = Some(bound);
            findings.push(text);
        }
    }

    let hints = Hints::load(&status.product, query.config.as_deref(), &mut notes);
    for f in ports.values_mut() {
        let Some(protocol) = Protocol::from_number(f.protocol.0) else {
            continue;
        };
        // The busiest peer decides where a rule is limited to peer groups; without one,
        // a documentation address that is in no group.
        let peer = f
            .peers
            .first()
            .and_then(|p| p.name.parse::<IpAddr>().ok())
            .unwrap_or_else(|| {
                DEFAULT_PEER
                    .parse()
                    .expect("the default peer is an address")
            });
        f.covered_by = hints.cover(Flow {
            direction: f.direction,
            protocol,
            port: f.port,
            peer,
        });
    }

    let mut ports: Vec<PortFinding> = ports.into_values().collect();
    ports.sort_by(|a, b| {
        b.packets
            .unwrap_or(0)
            .cmp(&a.packets.unwrap_or(0))
            .then(b.events.cmp(&a.events))
            .then(a.port.cmp(&b.port))
    });
    let rules_never_hit = state
        .rules
        .iter()
        .filter(|r| status.rules.iter().any(|s| s.id == r.id && s.packets == 0))
        .map(|r| IdleRule {
            id: r.id.clone(),
            direction: r.direction.clone(),
            protocol: r.protocol.clone(),
            ports: r.ports.clone(),
            why: r.why.clone(),
        })
        .collect();
    if !kernel_in_window {
        notes.push(format!(
            "the kernel's counters run since {}, before the --since window: ports are from logged events only",
            rfc3339(counted_from)
        ));
    }
    let any_counted = if kernel_in_window {
        status.would_deny.packets + status.denied.packets > 0
    } else {
        false
    };
    let labels = |class| -> Vec<String> {
        ports
            .iter()
            .filter(|f| f.class == class)
            .map(port_name)
            .collect()
    };
    let (breakage, exposure_closed, unclear) = (
        labels(Class::Breakage),
        labels(Class::ExposureClosed),
        labels(Class::Unclear),
    );
    // Counted, but the denied-port table lost every entry (LRU): nothing to class.
    let unknown = ports.is_empty() && any_counted;
    let health_checks: Vec<String> = ports
        .iter()
        .flat_map(|f| f.health_checks.iter().map(|h| h.text(&port_name(f))))
        .collect();
    let min_window = query
        .min_window
        .or(hints.min_window)
        .unwrap_or(DEFAULT_AUDIT_MIN_WINDOW.as_secs());
    let window_seconds = now.saturating_sub(since);
    let window_complete = window_seconds >= min_window;
    let evidence_safe = breakage.is_empty()
        && unclear.len() as u64 <= query.max_unclear
        && health_checks.is_empty()
        && !unknown;
    let mode = state.mode;
    let mut verdict = verdict(
        mode,
        evidence_safe,
        since,
        now,
        &ports,
        &status,
        query.max_unclear,
    );
    if mode == Mode::Audit && !window_complete {
        verdict = format!(
            "not yet: the window is {} long, the minimum is {} (--min-window, audit_min_window); so far: {verdict}",
            span(window_seconds),
            span(min_window)
        );
    }
    let safe = evidence_safe && window_complete;
    Ok(Report {
        product: status.product.clone(),
        mode,
        since,
        since_seconds: query.since,
        ports,
        rules_never_hit,
        would_deny: status.would_deny,
        denied: status.denied,
        events_rate_limited: status.events.rate_limited,
        breakage,
        exposure_closed,
        unclear,
        max_unclear: query.max_unclear,
        window_seconds,
        min_window_seconds: min_window,
        window_complete,
        findings,
        health_checks,
        safe,
        verdict,
        notes,
    })
}

/// `7d`, `2h 30m`, `45s`: a span in the largest units, at most two.
fn span(seconds: u64) -> String {
    let units = [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)];
    let parts: Vec<String> = units
        .iter()
        .scan(seconds, |left, (name, size)| {
            let n = *left / size;
            *left %= size;
            Some((n, name))
        })
        .filter(|(n, _)| *n > 0)
        .take(2)
        .map(|(n, name)| format!("{n}{name}"))
        .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Zeroes the pinned counters and empties the deny aggregate (recording the reset time,
/// which a running agent notices on its next flush and follows).
///
/// The writes race with the programs' per-CPU increments: a packet counted at the very
/// instant of the reset may be lost or kept. That is the nature of a reset.
pub fn reset(paths: &PathArgs) -> anyhow::Result<()> {
    crate::datapath::counters::reset(paths)?;
    crate::datapath::evidence::EvidenceMap::open(paths)?.clear();
    let now = aggregate::unix_now();
    DenyFile::empty(now, now).write(&aggregate::denies_file(paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(45), "45s");
        assert_eq!(span(9000), "2h 30m");
        assert_eq!(span(7 * 86_400), "7d");
        assert_eq!(span(7 * 86_400 + 61), "7d 1m");
    }

    #[test]
    fn features_and_config_rules_cover_denied_ports() {
        let mut notes = Vec::new();
        // iRedMail's profile has optional features; with none of them on, a port only a
        // feature opens is found through the all-features policy.
        let hints = Hints::load("iredmail", None, &mut notes);
        let policy = hints
            .all_features
            .as_ref()
            .expect("iredmail compiles with every feature")
            .policy();
        let feature_rule = policy
            .rules
            .iter()
            .find(|r| {
                r.feature.is_some() && r.peers.is_none() && r.scope == crate::policy::RuleScope::Any
            })
            .expect("iredmail has a feature rule open to any peer");
        let flow = Flow {
            direction: feature_rule.direction,
            protocol: feature_rule.protocols[0],
            port: feature_rule.ports[0].0,
            peer: DEFAULT_PEER.parse().unwrap(),
        };
        match hints.cover(flow) {
            Some(Cover::Feature { feature, .. }) => {
                assert_eq!(Some(feature), feature_rule.feature.clone())
            }
            other => panic!("expected a feature hint for {flow:?}, got {other:?}"),
        }
        let nothing = Flow {
            direction: Direction::Out,
            protocol: Protocol::Udp,
            port: 65000,
            peer: DEFAULT_PEER.parse().unwrap(),
        };
        assert_eq!(hints.cover(nothing), None);
    }
}
