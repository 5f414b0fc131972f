//! `portcullis status`: the running policy and its counters, as a table or as JSON.
//!
//! The JSON document (`observe::status::Status`) is a contract for scripts; README.md
//! documents it.

use std::{
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use crate::{
    datapath::paths::PathArgs,
    observe::{
        status::collect,
        table::{Watch, print_table, table},
    },
};

/// Arguments of `portcullis status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  portcullis status\n  portcullis status --watch\n  portcullis status --prometheus > /var/lib/node_exporter/portcullis.prom\n  portcullis status --json | jq '.rules[] | select(.packets > 0)'"
)]
pub struct Args {
    /// Print one JSON object (schema in README.md) instead of tables.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Print the Prometheus text exposition the metrics endpoint serves (e.g. for
    /// node_exporter's textfile collector) instead of tables.
    #[arg(long, conflicts_with_all = ["watch", "json"])]
    pub prometheus: bool,
    /// Redraw the tables in place every --interval seconds, like top, with a rate and a
    /// last-hit column per rule (derived from counter changes seen while watching).
    /// Ctrl-C quits.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, default_value_t = 1.0, value_name = "SECS", requires = "watch", value_parser = parse_interval)]
    pub interval: f64,
    #[command(flatten)]
    pub paths: PathArgs,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "interval \"{s}\" is not a number of seconds between 0.1 and 3600"
        )),
    }
}
/// `--watch`: redraws the tables in place every `interval` until Ctrl-C (the default
/// SIGINT action ends the process; nothing needs restoring since the screen is only
/// cleared, never switched to an alternate buffer).
fn watch(args: &Args) -> anyhow::Result<ExitCode> {
    let interval = Duration::from_secs_f64(args.interval);
    let mut w = Watch::default();
    loop {
        let frame = match collect(&args.paths) {
            Ok(s) => {
                w.update(&s, Instant::now());
                table(&s, Some(&w))
            }
            // The agent may be restarting: keep watching and say why the numbers are gone.
            Err(e) => format!("{e:#}\n"),
        };
        let mut out = std::io::stdout().lock();
        // Home, clear screen, then the frame: one write, so the terminal never shows half.
        write!(
            out,
            "\x1b[H\x1b[2J{frame}\n(every {:.1}s, Ctrl-C to quit)\n",
            args.interval
        )?;
        out.flush()?;
        drop(out);
        std::thread::sleep(interval);
    }
}

/// The agent runs but waits for a product: nothing is enforced. `--json` prints
/// `{"waiting": {reason, pid, config, since, how_to_choose}}`.
fn waiting(args: &Args, w: &crate::daemon::waiting::Waiting) -> anyhow::Result<ExitCode> {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "waiting": w }))?
        );
    } else {
        println!(
            "waiting: {} in {} (agent pid {}); nothing is enforced\nto choose: {}",
            w.reason,
            w.config.display(),
            w.pid,
            w.how_to_choose
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.watch {
        return watch(&args);
    }
    if let Some(w) = crate::daemon::waiting::read(&args.paths) {
        return waiting(&args, &w);
    }
    if args.prometheus {
        print!("{}", crate::observe::metrics::gather(&args.paths)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = collect(&args.paths)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_table(&s);
    }
    Ok(ExitCode::SUCCESS)
}
