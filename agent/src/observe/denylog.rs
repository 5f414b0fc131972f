//! The deny log: one structured `key=value` line per deny event, on stderr, within a
//! per-second budget.
//!
//! The kernel already rate-limits the ring buffer per CPU (`events_per_sec`); the log
//! has its own limit on top ([`RateLimiter`]), because a flood of denied packets must not
//! flood the journal either. Lines over the limit are counted and replaced by one
//! `suppressed K deny log lines` line. Values with spaces or quotes are double-quoted,
//! so a line always splits back into the same pairs.

use std::{
    borrow::Cow,
    net::IpAddr,
    time::{Duration, Instant},
};

use portcullis_common::{
    event::{DenyEvent, hook},
    stats::reason,
};

use super::cgroups::CgroupName;
use crate::model::{Direction, IpProtocol};

/// An address in the datapath's 16-byte form, IPv4-mapped addresses shown as IPv4.
pub fn event_addr(a: &[u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.into(),
        None => v6.into(),
    }
}

/// The process name of an event ("" where the hook does not know it).
pub(super) fn comm(e: &DenyEvent) -> String {
    String::from_utf8_lossy(e.comm.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// A log value: bare when it is one plain word, else double-quoted with `"` and `\`
/// escaped, so a line always splits back into the same pairs.
fn quote(v: &str) -> Cow<'_, str> {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        Cow::Borrowed(v)
    } else {
        let escaped: String = v
            .chars()
            .flat_map(|c| match c {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                '\n' => vec!['\\', 'n'],
                c if c.is_control() => vec!['?'],
                c => vec![c],
            })
            .collect();
        Cow::Owned(format!("\"{escaped}\""))
    }
}

pub(super) fn format_line(e: &DenyEvent, cgroup: Option<&CgroupName>) -> String {
    use std::fmt::Write as _;
    let direction = Direction::from_code(e.direction);
    let (src, sport, dst, dport) = if direction == Direction::In {
        (
            event_addr(&e.remote),
            e.remote_port,
            event_addr(&e.local),
            e.local_port,
        )
    } else {
        (
            event_addr(&e.local),
            e.local_port,
            event_addr(&e.remote),
            e.remote_port,
        )
    };
    // Denies have no rule (a rule allows); `rule=none` keeps the field present so every
    // line has the same keys.
    let mut line = format!(
        "verdict={} rule=none direction={direction} protocol={} src={src} sport={sport} dst={dst} dport={dport} reason={} hook={} cgroup={}",
        if e.dropped == 1 { "deny" } else { "would-deny" },
        IpProtocol(e.protocol),
        reason::NAMES.get(e.reason as usize).unwrap_or(&"unknown"),
        hook::NAMES.get(e.hook as usize).unwrap_or(&"unknown"),
        e.cgroup_id,
    );
    if let Some(c) = cgroup {
        let _ = write!(line, " cgroup_path={}", quote(&c.path));
        if let Some(unit) = &c.unit {
            let _ = write!(line, " unit={}", quote(unit));
        }
    }
    if e.pid != 0 {
        let _ = write!(line, " pid={} comm={}", e.pid, quote(&comm(e)));
    }
    line
}

/// A per-second line budget. Lines over it are counted, and the count is reported once
/// the second is over.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
    suppressed_since: Option<Instant>,
}

impl RateLimiter {
    /// At most `per_sec` lines per second (0: no lines, everything is counted).
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            window: None,
            used: 0,
            suppressed: 0,
            suppressed_since: None,
        }
    }

    /// Whether a line may be written at `now`. Returns the suppression summary that is
    /// due first, if any.
    pub fn admit(&mut self, now: Instant) -> (bool, Option<String>) {
        let summary = self.summary(now);
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.per_sec {
            self.used += 1;
            (true, summary)
        } else {
            self.suppressed += 1;
            self.suppressed_since.get_or_insert(now);
            (false, summary)
        }
    }

    /// The summary line for lines suppressed in a window that is over, if any.
    pub fn summary(&mut self, now: Instant) -> Option<String> {
        let since = self.suppressed_since?;
        let window_over = self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1));
        if !window_over || self.suppressed == 0 {
            return None;
        }
        let n = std::mem::take(&mut self.suppressed);
        self.suppressed_since = None;
        let secs = now.duration_since(since).as_secs().max(1);
        Some(format!(
            "suppressed {n} deny log lines in the last {secs}s (over {} lines/s; `portcullis report` has them all)",
            self.per_sec
        ))
    }
}

#[cfg(test)]
mod tests {
    use portcullis_common::policy::{DIR_IN, DIR_OUT};

    use super::*;
    use crate::observe::events::tests::event;

    #[test]
    fn line_is_key_value_with_src_and_dst_by_direction() {
        let out = format_line(&event(DIR_OUT, 8081, [198, 18, 0, 2], "curl", 1), None);
        assert_eq!(
            out,
            "verdict=deny rule=none direction=out protocol=tcp src=198.18.0.1 sport=40000 dst=198.18.0.2 dport=8081 \
             reason=no-rule hook=connect cgroup=42 pid=77 comm=curl"
        );
        let inbound = format_line(&event(DIR_IN, 25, [203, 0, 113, 9], "", 0), None);
        assert!(inbound.starts_with("verdict=would-deny rule=none direction=in protocol=tcp src=203.0.113.9 sport=40000 dst=198.18.0.1 dport=25 "), "{inbound}");
        assert!(
            !inbound.contains("pid="),
            "no pid where the hook does not know it: {inbound}"
        );
        let named = format_line(
            &event(DIR_OUT, 53, [192, 0, 2, 53], "my proc", 1),
            Some(&CgroupName::from_relative("system.slice/xeams.service")),
        );
        assert!(named.ends_with("cgroup=42 cgroup_path=system.slice/xeams.service unit=xeams.service pid=77 comm=\"my proc\""), "{named}");
    }

    #[test]
    fn quoting_keeps_pairs_splittable() {
        assert_eq!(quote("curl"), "curl");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("x\"y\\"), "\"x\\\"y\\\\\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("k=v"), "\"k=v\"");
    }

    #[test]
    fn rate_limit_suppresses_and_summarises_once_per_window() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(3);
        let admitted = (0..10).filter(|_| rl.admit(t0).0).count();
        assert_eq!(admitted, 3);
        assert_eq!(
            rl.summary(t0 + Duration::from_millis(500)),
            None,
            "no summary inside the window"
        );
        let (ok, summary) = rl.admit(t0 + Duration::from_millis(1100));
        assert!(ok, "a new second has a new budget");
        let summary = summary.expect("the summary comes with the next line");
        assert!(
            summary.starts_with("suppressed 7 deny log lines"),
            "{summary}"
        );
        assert_eq!(
            rl.summary(t0 + Duration::from_secs(5)),
            None,
            "reported once"
        );
        // A quiet period: flush reports it without a new event.
        for _ in 0..5 {
            rl.admit(t0 + Duration::from_millis(1200));
        }
        assert!(
            rl.summary(t0 + Duration::from_millis(2200))
                .is_some_and(|s| s.starts_with("suppressed 3 "))
        );
        let mut none = RateLimiter::new(0);
        assert!(!none.admit(t0).0, "0 lines per second writes nothing");
    }
}
