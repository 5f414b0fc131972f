//! `cargo xtask fuzz`: the cargo-fuzz targets of `tests/fuzz` (the profile and site
//! parsers with the compiler, the map image with `decide`, and the DNS answer parser
//! the datapath learns names with), each for a fixed time.
//!
//! The seed corpus in `tests/fuzz/corpus/<target>` is read but never written: what the
//! fuzzer finds goes to `target/fuzz/corpus/<target>`, and a crash to
//! `target/fuzz/artifacts/<target>/`, so a run leaves the repository as it was. A crash
//! fails the task with the command that reproduces it.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{nightly_cargo, step};

/// The fuzz targets (`tests/fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 4] = ["config", "decide", "dns", "question"];

/// Installs cargo-fuzz when it is missing.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    step("installing cargo-fuzz");
    crate::sh(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
}

/// Runs every target for `seconds`; returns one `RELIABILITY:` figures line per target.
pub fn run(root: &Path, seconds: u64) -> anyhow::Result<Vec<String>> {
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("tests/fuzz");
    let mut lines = Vec::new();
    for target in TARGETS {
        let seeds = fuzz_dir.join("corpus").join(target);
        let corpus = root.join("target/fuzz/corpus").join(target);
        let artifacts = root.join("target/fuzz/artifacts").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let inputs = std::fs::read_dir(&seeds).map_or(0, Iterator::count);
        step(&format!(
            "fuzzing {target} for {seconds} s ({inputs} seeds in {})",
            seeds.display()
        ));
        let out = nightly_cargo()
            .current_dir(root)
            .args(["fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            // Build products under the workspace's (ignored) target directory.
            .arg("--target-dir")
            .arg(root.join("target/fuzz/build"))
            .args(["-O", target])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .context("starting cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprintln!("{log}");
            bail!(
                "fuzz target {target} failed (crash inputs in {}); reproduce with: rustup run nightly cargo fuzz run --fuzz-dir tests/fuzz {target} <input>",
                artifacts.display()
            );
        }
        // libFuzzer ends with "Done <runs> runs in <s> second(s)".
        let runs = log
            .lines()
            .rev()
            .find_map(|l| {
                l.strip_prefix("Done ")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        let found = std::fs::read_dir(&corpus).map_or(0, Iterator::count);
        let line = format!(
            "RELIABILITY: fuzz-{target}: inputs_run={runs} seconds={seconds} seeds={inputs} corpus={found} crashes=0"
        );
        println!("{line}");
        lines.push(line);
    }
    Ok(lines)
}
