//! The figures of one run: samples per figure with their unit and goal, medians and
//! min-max over the rounds, the machine they were taken on, results.json and the summary
//! printed at the end.

use std::{collections::BTreeMap, process::Command, thread, time::Duration};

use portcullis_tests::output;
use serde_json::{Value, json};

use super::Plan;

#[derive(Clone, Copy)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    pub fn met(self, v: f64) -> bool {
        match self {
            Goal::AtMost(g) => v <= g,
            Goal::AtLeast(g) => v >= g,
        }
    }

    pub fn text(self) -> String {
        match self {
            Goal::AtMost(g) => format!("<= {g}"),
            Goal::AtLeast(g) => format!(">= {g}"),
        }
    }
}

pub struct Figure {
    pub unit: &'static str,
    pub samples: Vec<f64>,
    pub goal: Option<Goal>,
}

impl Figure {
    pub fn median(&self) -> f64 {
        percentile_median(&self.samples)
    }
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The median (mean of the middle two for an even count); NaN for no samples.
fn percentile_median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[derive(Default)]
pub struct Results {
    pub figures: BTreeMap<String, Figure>,
    /// Raw series that are not figures themselves (reload latencies).
    pub samples: BTreeMap<String, Vec<f64>>,
    pub xdp_filter_features: String,
}

impl Results {
    pub fn add(&mut self, key: &str, unit: &'static str, samples: Vec<f64>, goal: Option<Goal>) {
        self.figures.insert(
            key.to_owned(),
            Figure {
                unit,
                samples,
                goal,
            },
        );
    }

    pub fn med(&self, key: &str) -> f64 {
        self.figures.get(key).map_or(f64::NAN, Figure::median)
    }

    pub fn json(&self, m: &Machine) -> Value {
        let mut figures = serde_json::Map::new();
        for (k, f) in &self.figures {
            let mut o = json!({
                "median": round3(f.median()),
                "min": round3(f.min()),
                "max": round3(f.max()),
                "unit": f.unit,
                "samples": f.samples.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
            });
            if let Some(g) = f.goal {
                o["goal"] = json!(g.text());
                o["met"] = json!(g.met(f.median()));
            }
            figures.insert(k.clone(), o);
        }
        json!({
            "machine": m.json(),
            "figures": figures,
            "raw": self.samples.iter().map(|(k, v)| (k.clone(), json!(v.iter().map(|x| round3(*x)).collect::<Vec<_>>()))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Where and how the figures were taken.
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub os: String,
    pub commit: String,
    pub rounds: usize,
    pub repeat: u32,
    pub flood_ms: u128,
    pub quick: bool,
    pub elapsed_s: f64,
}

impl Machine {
    pub fn probe(plan: &Plan, quick: bool, elapsed: Duration) -> Machine {
        let run = |c: &str| {
            output(Command::new("sh").arg("-c").arg(c))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".to_owned())
        };
        Machine {
            date: run("date -u '+%Y-%m-%d %H:%M UTC'"),
            kernel: run("uname -r"),
            cpu: run("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"),
            cores: thread::available_parallelism().map_or(0, usize::from),
            memory: run("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo"),
            os: run(". /etc/os-release && echo \"$PRETTY_NAME\""),
            commit: run("git rev-parse --short HEAD"),
            rounds: plan.rounds,
            repeat: plan.repeat,
            flood_ms: plan.flood.as_millis(),
            quick,
            elapsed_s: elapsed.as_secs_f64(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "date": self.date, "kernel": self.kernel, "cpu": self.cpu, "cores": self.cores,
            "memory": self.memory, "os": self.os, "commit": self.commit, "rounds": self.rounds,
            "test_run_repeat": self.repeat, "flood_window_ms": self.flood_ms as u64, "quick": self.quick,
            "bench_seconds": round3(self.elapsed_s),
        })
    }
}

pub fn print_summary(r: &Results) {
    println!();
    println!("{:<48} {:>12} {:>22}  goal", "figure", "median", "min-max");
    for (k, f) in &r.figures {
        if k.starts_with("M2.") && !k.ends_with("full_vs_10") {
            continue;
        }
        let goal = f.goal.map_or(String::new(), |g| {
            format!(
                "{} {}",
                g.text(),
                if g.met(f.median()) { "met" } else { "NOT met" }
            )
        });
        println!(
            "{k:<48} {:>12.3} {:>10.3}-{:<11.3} {goal}",
            f.median(),
            f.min(),
            f.max()
        );
    }
}

/// The nearest-rank percentile `p` (0-100) of the samples; NaN for none.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// Round by round ratios `a[i] / b[i]` of two series measured side by side.
pub fn ratio(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}
