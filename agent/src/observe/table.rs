//! `status` as text tables, and what `--watch` derives from successive reads (a rate
//! and a "last hit" column per rule).

use std::{collections::HashMap, time::Instant};

use super::status::Status;
use crate::model::ScopeTarget;

/// Prints a [`Status`] as tables.
pub fn print_table(s: &Status) {
    print!("{}", table(s, None));
}

/// What `--watch` learns by comparing successive reads. The kernel keeps no time per
/// rule, so "last hit" is the last refresh at which a rule's packet counter moved, and
/// is only known for hits seen while watching.
#[derive(Debug, Default)]
pub struct Watch {
    started: Option<Instant>,
    previous: HashMap<String, (u64, Instant)>,
    rate: HashMap<String, f64>,
    last_hit: HashMap<String, Instant>,
}

impl Watch {
    /// Takes in a new read made at `now`.
    pub fn update(&mut self, s: &Status, now: Instant) {
        self.started.get_or_insert(now);
        for r in &s.rules {
            if let Some(&(packets, at)) = self.previous.get(&r.id) {
                let secs = now.duration_since(at).as_secs_f64();
                let delta = r.packets.saturating_sub(packets);
                if secs > 0.0 {
                    self.rate.insert(r.id.clone(), delta as f64 / secs);
                }
                if delta > 0 {
                    self.last_hit.insert(r.id.clone(), now);
                }
            }
            self.previous.insert(r.id.clone(), (r.packets, now));
        }
    }

    fn columns(&self, id: &str, now: Instant) -> (String, String) {
        let rate = self
            .rate
            .get(id)
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        let last = self.last_hit.get(id).map_or_else(
            || "-".to_owned(),
            |t| format!("{}s ago", now.duration_since(*t).as_secs()),
        );
        (rate, last)
    }
}

/// A [`Status`] as text tables; with `watch`, the rule table has a rate and a last-hit
/// column.
pub fn table(s: &Status, watch: Option<&Watch>) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let now = Instant::now();
    let _ = writeln!(
        o,
        "product {}  mode {}  loopback {}  scope {}  links {}  policy v{} (generation {}) loaded {}  pid {}",
        s.product,
        s.mode,
        s.loopback,
        ScopeTarget::join(&s.scopes, ","),
        s.attached_links,
        s.policy_version,
        s.generation,
        crate::observe::rfc3339(s.loaded_at),
        s.pid,
    );
    for u in &s.units {
        let running = if u.running { "running" } else { "not running" };
        match &u.reason {
            None => {
                let _ = writeln!(
                    o,
                    "unit {}: protected ({running}, {} of 4 programs on its cgroup, attach on every start)",
                    u.unit, u.programs_attached
                );
            }
            Some(reason) => {
                let _ = writeln!(
                    o,
                    "error: unit {}: NOT PROTECTED ({running}): {reason}",
                    u.unit
                );
            }
        }
    }
    let _ = writeln!(o);
    let _ = write!(
        o,
        "{:<32} {:<4} {:<8} {:<16} {:>10} {:>12}",
        "RULE", "DIR", "PROTO", "PORTS", "PACKETS", "BYTES"
    );
    let _ = writeln!(
        o,
        "{}",
        if watch.is_some() {
            format!(" {:>9} {:>10}", "PKTS/S", "LAST HIT")
        } else {
            String::new()
        }
    );
    for r in &s.rules {
        let _ = write!(
            o,
            "{:<32} {:<4} {:<8} {:<16} {:>10} {:>12}",
            r.id, r.direction, r.protocol, r.ports, r.packets, r.bytes
        );
        let extra = watch
            .map(|w| w.columns(&r.id, now))
            .map(|(rate, last)| format!(" {rate:>9} {last:>10}"));
        let _ = writeln!(o, "{}", extra.unwrap_or_default());
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "allowed {} pkts  denied {} pkts  would-deny {} pkts  loopback-exempt {} pkts  icmp {} pkts  malformed {} pkts",
        s.allowed.packets,
        s.denied.packets,
        s.would_deny.packets,
        s.loopback_exempt.packets,
        s.icmp_passed.packets,
        s.malformed.packets
    );
    if !s.denies.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<4} {:<10} {:<10} {:>10} {:>12}",
            "DIR", "REASON", "ACTION", "PACKETS", "BYTES"
        );
        for d in &s.denies {
            let action = if d.audit { "would-drop" } else { "dropped" };
            let _ = writeln!(
                o,
                "{:<4} {:<10} {:<10} {:>10} {:>12}",
                d.direction, d.reason, action, d.packets, d.bytes
            );
        }
    }
    if !s.denied_ports.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<4} {:<8} {:>6} {:>10} {:>12}",
            "DIR", "PROTO", "PORT", "PACKETS", "BYTES"
        );
        for d in s.denied_ports.iter().take(20) {
            let _ = writeln!(
                o,
                "{:<4} {:<8} {:>6} {:>10} {:>12}",
                d.direction, d.protocol, d.port, d.packets, d.bytes
            );
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "events: {} sent, {} rate-limited, {} lost (ring full)",
        s.events.sent, s.events.rate_limited, s.events.ring_full
    );
    o.push_str(&super::names::table(&s.names));
    o
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        model::{LoopbackMode, Mode},
        observe::status::{EventStatus, RuleStatus, Traffic, XdpStatus},
    };

    /// A one-rule status whose rule counted `packets`.
    pub(crate) fn status(packets: u64) -> Status {
        Status {
            product: "lab".into(),
            mode: Mode::Audit,
            loopback: LoopbackMode::Exempt,
            scopes: vec![ScopeTarget::Host],
            attached_links: 4,
            xdp: XdpStatus::default(),
            names: Default::default(),
            units: Vec::new(),
            generation: 1,
            policy_version: 1,
            policy_digest: String::new(),
            loaded_at: 0,
            pid: 1,
            rules: vec![RuleStatus {
                id: "smtp/in".into(),
                direction: "in".into(),
                protocol: "tcp".into(),
                ports: "25".into(),
                packets,
                bytes: packets * 60,
            }],
            allowed: Traffic::default(),
            denies: vec![],
            denied: Traffic::default(),
            would_deny: Traffic::default(),
            loopback_exempt: Traffic::default(),
            icmp_passed: Traffic::default(),
            malformed: Traffic::default(),
            denied_ports: vec![],
            events: EventStatus {
                sent: 0,
                rate_limited: 0,
                ring_full: 0,
            },
        }
    }

    #[test]
    fn watch_derives_rate_and_last_hit_from_counter_changes() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        w.update(&status(10), t0);
        assert_eq!(
            w.columns("smtp/in", t0),
            ("-".into(), "-".into()),
            "nothing known after one read"
        );
        w.update(&status(30), t0 + Duration::from_secs(2));
        assert_eq!(
            w.columns("smtp/in", t0 + Duration::from_secs(2)),
            ("10.0".into(), "0s ago".into())
        );
        w.update(&status(30), t0 + Duration::from_secs(4));
        assert_eq!(
            w.columns("smtp/in", t0 + Duration::from_secs(5)),
            ("0.0".into(), "3s ago".into())
        );
        let text = table(&status(30), Some(&w));
        assert!(
            text.contains("PKTS/S") && text.contains("LAST HIT"),
            "{text}"
        );
        assert!(!table(&status(30), None).contains("LAST HIT"));
    }
}
