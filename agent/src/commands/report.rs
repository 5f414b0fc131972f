//! `portcullis report`, the audit -> enforce decision: its arguments and the text form;
//! the report itself is `crate::observe::report`.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    datapath::paths::PathArgs,
    model::{Mode, Protocol},
    observe::{
        aggregate::{Seen, unix_now},
        ago,
        readiness::{Class, Cover, PortFinding},
        report::{self, Query, Report, parse_duration, parse_min_window},
        rfc3339,
    },
};

const EXAMPLES: &str = "\
Reads the running agent's counters (the pinned maps) and its deny aggregate
(<state-dir>/denies.json), and classes each would-denied port from its flows:
breakage (outbound flows, or inbound flows with payload both ways from any peer),
exposure closed (SYNs and resets, or scanners' probes) or unclear (payload one way, a
completed handshake without payload that is not a scanner's probe, a health check).
Each peer's flows are read on their own. The verdict is the last line; --json prints
an object with \"safe\" (true when enforcing breaks nothing seen: no breakage, no
health check, at most --max-unclear unclear ports, and a window at least
--min-window long: \"not yet\" before) and \"verdict\".

Examples:
  portcullis report
  portcullis report --since 2h
  portcullis report --config /etc/portcullis/portcullis.toml --json | jq .safe
  portcullis report --max-unclear 2  # tolerate two unclear ports
  portcullis report --min-window 30d # a month of audit before \"safe\"
  portcullis report --reset        # after a policy change: start a new window";

/// Arguments of `portcullis report`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only what was seen in the last DURATION (e.g. 30m, 2h, 1d, 1h30m). Dated by the
    /// deny events, so ports whose events the kernel's rate limit dropped may be missing.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<u64>,
    /// The site config the agent runs, to name the site rules and features that would
    /// open a denied port. Default: /etc/portcullis/portcullis.toml when it exists and
    /// names the running product.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Zero the counters and the deny aggregate, starting a new observation window, and
    /// print nothing else.
    #[arg(long, conflicts_with_all = ["since", "json", "max_unclear", "min_window"])]
    pub reset: bool,
    /// Unclear ports (neither breakage nor exposure) still "safe to enforce". Default 0:
    /// any unclear port makes the report unsafe.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_unclear: u64,
    /// The shortest window called safe to enforce (e.g. 7d, 30d, 1h; 0: none): before it, the
    /// verdict is "not yet" and "safe" is false. Default: the config's
    /// audit_min_window, else 7d.
    #[arg(long, value_name = "DURATION", value_parser = parse_min_window)]
    pub min_window: Option<u64>,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.reset {
        report::reset(&args.paths)?;
        println!("counters and deny aggregate reset; the report's window starts now");
        return Ok(ExitCode::SUCCESS);
    }
    let query = Query {
        since: args.since,
        config: args.config.clone(),
        paths: args.paths.clone(),
        max_unclear: args.max_unclear,
        min_window: args.min_window,
    };
    let report = report::build(&query, unix_now())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(r: &Report) {
    let now = unix_now();
    println!(
        "product {}  mode {}  window since {} ({})",
        r.product,
        r.mode,
        rfc3339(r.since),
        ago(now, r.since)
    );
    println!();
    if r.ports.is_empty() {
        println!("No denied ports in the window.");
    } else {
        let title = if r.mode == Mode::Audit {
            "Would-denies"
        } else {
            "Denies"
        };
        println!("{title} by (direction, protocol, port), by what enforcing would do:");
        for class in [Class::Breakage, Class::ExposureClosed, Class::Unclear] {
            let of: Vec<&PortFinding> = r.ports.iter().filter(|f| f.class == class).collect();
            if of.is_empty() {
                continue;
            }
            println!();
            println!("{} ({}):", class.name(), of.len());
            println!(
                "{:<4} {:<6} {:>5} {:>9} {:>6} {:>6} {:>9} {:>9} {:>5} {:<10} {:<28} {:<20} COVERED BY",
                "DIR",
                "PROTO",
                "PORT",
                "PACKETS",
                "FLOWS",
                "HSHAKE",
                "BYTES IN",
                "BYTES OUT",
                "PEERS",
                "LAST SEEN",
                "TOP PEERS",
                "TOP PROCESSES"
            );
            for f in of {
                print_port(f, now);
            }
        }
    }
    if !r.findings.is_empty() {
        println!();
        println!("Findings:");
        for f in &r.findings {
            println!("  {f}");
        }
    }
    if !r.health_checks.is_empty() {
        println!();
        println!("Health checks? (never tolerated by --max-unclear):");
        for h in &r.health_checks {
            println!("  {h}");
        }
    }
    println!();
    if r.rules_never_hit.is_empty() {
        println!("Every rule was hit.");
    } else {
        println!("Rules never hit (candidates to remove):");
        for i in &r.rules_never_hit {
            println!(
                "  {:<32} {:<4} {:<8} {:<16} {}",
                i.id, i.direction, i.protocol, i.ports, i.why
            );
        }
    }
    if r.events_rate_limited > 0 {
        println!();
        println!(
            "{} deny events were dropped by the kernel's rate limit; packet counts are complete, peers and processes are a sample.",
            r.events_rate_limited
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    println!();
    println!("{}", r.verdict);
}

fn print_port(f: &PortFinding, now: u64) {
    let top = |v: &[Seen]| {
        let s: Vec<String> = v
            .iter()
            .take(2)
            .map(|x| format!("{}({})", x.name, x.events))
            .collect();
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.join(",")
        }
    };
    let cover = match &f.covered_by {
        Some(Cover::ConfigRule { rule, config }) => format!("rule \"{rule}\" of {config}"),
        Some(Cover::Feature { feature, rule }) => {
            format!("feature \"{feature}\" (rule \"{rule}\")")
        }
        None if Protocol::from_number(f.protocol.0).is_some() => {
            "nothing: add a site rule".to_owned()
        }
        None => "-".to_owned(),
    };
    let n = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let e = f.evidence.as_ref();
    let peers = e.map(|e| {
        format!(
            "{}{}",
            e.distinct_peers,
            if e.peers_truncated { "+" } else { "" }
        )
    });
    println!(
        "{:<4} {:<6} {:>5} {:>9} {:>6} {:>6} {:>9} {:>9} {:>5} {:<10} {:<28} {:<20} {cover}",
        f.direction.to_string(),
        f.protocol,
        f.port,
        n(f.packets),
        n(e.map(|e| e.total.flows)),
        n(e.map(|e| e.total.handshakes)),
        n(e.map(|e| e.total.payload_bytes_in)),
        n(e.map(|e| e.total.payload_bytes_out)),
        peers.unwrap_or_else(|| "-".to_owned()),
        f.last_seen.map_or_else(|| "-".to_owned(), |t| ago(now, t)),
        top(&f.peers),
        top(&f.processes),
    );
    println!("     {}", f.class_reason);
    // Each listed peer with what its flows read as: the evidence behind the class.
    for p in e.map_or(&[][..], |e| &e.peers[..]) {
        let reading = p.reading.map_or("", |r| r.name());
        println!(
            "       {}{}: {} flows, {} handshakes, {} B in, {} B out{}{}",
            p.address,
            if p.scanner { " (scanner)" } else { "" },
            p.flows.flows,
            p.flows.handshakes,
            p.flows.payload_bytes_in,
            p.flows.payload_bytes_out,
            if reading.is_empty() { "" } else { ": " },
            reading
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert_eq!(parse_duration("1w"), Ok(604_800));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        for bad in [
            "",
            "30",
            "m",
            "2x",
            "-1h",
            "0m",
            "1.5h",
            "99999999999999999999w",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
        }
    }
}
