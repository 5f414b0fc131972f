//! What the operator sees of a running policy: the status model ([`status`]) and its
//! tables ([`table`]), the host names learned from DNS ([`names`]), the Prometheus metrics ([`metrics`]), deny events ([`events`]) as
//! log lines ([`denylog`], with cgroup names from [`cgroups`]) and as the aggregate
//! behind `report` ([`aggregate`], with the per-flow [`evidence`] that [`readiness`]
//! classifies as breakage or exposure). It reads counters and events through
//! `crate::datapath`; it never touches the kernel itself.

pub mod aggregate;
pub mod cgroups;
pub mod denylog;
pub mod events;
pub mod evidence;
pub mod metrics;
pub mod names;
pub mod readiness;
pub mod report;
pub mod status;
pub mod table;

/// A Unix time as RFC 3339 UTC, e.g. `2026-01-31T12:00:00Z`.
pub fn rfc3339(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// How long ago `then` was, at `now` (Unix seconds), as people say it: "42s ago".
pub fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        7200..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
