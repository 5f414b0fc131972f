//! `cargo xtask`: everything needed to go from a fresh machine to a built, tested and
//! installed portcullis. Every command runs `setup` first; `setup` is idempotent and
//! prints one line per step.
//!
//! - `setup`: system packages, the nightly toolchain's rust-src, bpf-linker, cargo-deb,
//!   cargo-generate-rpm, and the Debian 12 root filesystem the systemd tests boot (debootstrap, cached).
//! - `build`: the eBPF object (nightly, bpfel-unknown-none), then the agent (release),
//!   which embeds it.
//! - `setup` also caches Debian's kernels 5.10, 6.1 and 6.12 and virtme-ng (kernels.rs).
//! - `test`: fmt, clippy (the eBPF crate on its own), unit tests, then the root
//!   integration tests in `tests/` (real programs, cgroups, namespaces and clients) on
//!   this machine's kernel, then the kernel matrix: a core of them in a qemu guest per
//!   Debian kernel, with the verifier's figures (`--kernel` picks kernels).
//! - `run`: the agent in audit mode on its built-in default policy.
//! - `bench`: the performance figures (test_run cost, size independence, xdp-filter and
//!   nftables side by side, memory, startup, reload) into `xtask/bench/`. Root; not part
//!   of `test`.
//! - `fuzz`: the cargo-fuzz targets in `tests/fuzz` for a while each (nightly).
//! - `install`, `dist`: install the binary, unit, config, docs, man pages and
//!   completions; or package the same as a .deb (cargo-deb, checked with lintian) and an
//!   .rpm (cargo-generate-rpm, checked with rpmlint), with SHA256SUMS.

mod ansible;
mod bench;
mod fuzz;
mod install;
mod kernels;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "portcullis build tasks",
    after_help = "Examples:\n  cargo xtask test\n  cargo xtask test --kernel 6.1 --kernel 5.10\n  cargo xtask test names --kernel host,6.12\n  cargo xtask run\n  PORTCULLIS_SKIP_ROOT_TESTS=1 cargo xtask test"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the eBPF object and the agent (release).
    Build,
    /// fmt, clippy, unit tests, root integration tests, the kernel matrix.
    Test {
        /// Only run tests whose name contains this (the guests too, with --kernel).
        filter: Option<String>,
        /// Kernels to run on: 5.10, 6.1, 6.12 (a qemu guest each, the core of the root
        /// suites) and host (every root test on this machine). Repeat it or give a list.
        /// Default: all of them; with a filter, the host only.
        #[arg(long = "kernel", value_name = "KERNEL", value_delimiter = ',')]
        kernels: Vec<kernels::Kernel>,
        /// Guests that run at the same time. Two: a guest's tests run one at a time, so
        /// it keeps about one of its two TCG vCPUs busy (measured: 194 s of CPU in a
        /// 407 s run), and two guests fill a two-core machine.
        #[arg(long, default_value_t = 2, value_name = "N")]
        jobs: usize,
    },
    /// Build, then install the binary, systemd unit, default config, docs, man pages and
    /// shell completions.
    Install {
        /// Installation prefix.
        #[arg(long, default_value = "/usr")]
        prefix: PathBuf,
        /// Staging directory prepended to every path (packaging).
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
    },
    /// Build, then measure: per-packet cost, independence from policy size, xdp-filter
    /// and nftables side by side, memory, startup, reload. Writes xtask/bench/. Root.
    Bench {
        /// Also write the raw results (one key per figure) to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// A short smoke run (3 rounds, smaller repeat counts): not publishable figures.
        #[arg(long)]
        quick: bool,
        /// Only the Names section (DNS learning), printed and not written to
        /// xtask/bench/: for checking that section after a change to it.
        #[arg(long, hide = true)]
        names_only: bool,
        /// Only the BPF_PROG_TEST_RUN sections (M1, M2, M3), printed and not written to
        /// xtask/bench/: for comparing datapath changes without the floods.
        #[arg(long, hide = true, conflicts_with = "names_only")]
        progs_only: bool,
    },
    /// Build, then package everything `install` installs as a .deb and an .rpm in
    /// target/dist, lint both, and write SHA256SUMS.
    Dist,
    /// Build, then run the fuzz targets (parsers and compiler; map image and decide).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Build, then run the agent in audit mode on its built-in default policy.
    Run {
        /// Extra arguments for `portcullis run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::all(),
        Task::Build => {
            setup::all()?;
            build(&root)
        }
        Task::Test {
            filter,
            kernels,
            jobs,
        } => {
            setup::all()?;
            build(&root)?;
            let kernels = if !kernels.is_empty() {
                kernels
            } else if filter.is_some() {
                vec![kernels::Kernel::Host]
            } else {
                kernels::ALL.to_vec()
            };
            test(&root, filter.as_deref(), &kernels, jobs.max(1))
        }
        Task::Install { prefix, destdir } => {
            setup::all()?;
            build(&root)?;
            install::install(&root, &install::Layout { destdir, prefix })
        }
        Task::Bench {
            json,
            quick,
            names_only,
            progs_only,
        } => {
            setup::all()?;
            build(&root)?;
            bench::run(
                &root,
                &bench::Options {
                    json,
                    quick,
                    names_only,
                    progs_only,
                },
            )
        }
        Task::Fuzz { seconds } => {
            setup::all()?;
            build(&root)?;
            fuzz::run(&root, seconds).map(drop)
        }
        Task::Dist => {
            setup::all()?;
            build(&root)?;
            let packages = install::dist(&root)?;
            println!("{}", packages.deb.display());
            println!("{}", packages.rpm.display());
            Ok(())
        }
        Task::Run { args } => {
            setup::all()?;
            build(&root)?;
            let bin = root.join("target/release/portcullis");
            let mut cmd = Command::new(&bin);
            cmd.arg("run").arg("--mode").arg("audit").args(&args);
            step(&format!(
                "{} run --mode audit {}",
                bin.display(),
                args.join(" ")
            ));
            let status = cmd.status().context("starting portcullis")?;
            if !status.success() {
                bail!("portcullis exited with {status}");
            }
            Ok(())
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Prints a step line.
pub fn step(what: &str) {
    println!("==> {what}");
}

/// Runs a command, failing with its command line if it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// A cargo command for the nightly toolchain, free of the outer (stable) cargo's
/// toolchain environment.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

const EBPF_ARGS: [&str; 7] = [
    "-p",
    "portcullis-ebpf",
    "--release",
    "--target",
    "bpfel-unknown-none",
    "-Z",
    "build-std=core",
];

fn build(root: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    step("building the eBPF programs (nightly, bpfel-unknown-none)");
    sh(nightly_cargo().arg("build").args(EBPF_ARGS))?;
    let object = root.join("target/bpfel-unknown-none/release/portcullis-ebpf");
    step("building the agent (release, eBPF object embedded)");
    sh(Command::new("cargo")
        .args(["build", "--release", "-p", "portcullis"])
        .env("PORTCULLIS_EBPF_OBJECT", &object))?;
    step(&format!(
        "built target/release/portcullis in {:.0?}",
        t.elapsed()
    ));
    Ok(())
}

fn test(
    root: &Path,
    filter: Option<&str>,
    kernels: &[kernels::Kernel],
    jobs: usize,
) -> anyhow::Result<()> {
    let object = root.join("target/bpfel-unknown-none/release/portcullis-ebpf");
    step("cargo fmt --check");
    sh(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    step("clippy (agent, common, xtask, tests), warnings denied");
    sh(Command::new("cargo")
        .args([
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env("PORTCULLIS_EBPF_OBJECT", &object))?;
    step("clippy (eBPF crate, nightly, bpfel-unknown-none), warnings denied");
    sh(nightly_cargo()
        .arg("clippy")
        .args(EBPF_ARGS)
        .args(["--", "-D", "warnings"]))?;
    step("unit tests (no root)");
    let mut unit = Command::new("cargo");
    unit.args([
        "test",
        "--release",
        "-p",
        "portcullis",
        "-p",
        "portcullis-common",
        "-p",
        "xtask",
    ])
    .env("PORTCULLIS_EBPF_OBJECT", &object);
    if let Some(f) = filter {
        unit.args(["--", f]);
    }
    let (status, mut results) = tee_figures(&mut unit)?;
    if !status.success() {
        bail!("unit tests failed ({status})");
    }
    if env::var("PORTCULLIS_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        println!();
        println!("!!! The kernel matrix was NOT run either.");
        println!(
            "!!! PORTCULLIS_SKIP_ROOT_TESTS=1: the root integration tests (real eBPF programs,"
        );
        println!(
            "!!! cgroups, namespaces and traffic) were NOT run. Nothing was verified in the kernel."
        );
        println!();
        return fuzz_and_summary(root, results, &[]);
    }
    if kernels.contains(&kernels::Kernel::Host) {
        host_root_tests(root, filter, &mut results)?;
    }
    let guests: Vec<kernels::Kernel> = kernels
        .iter()
        .copied()
        .filter(|k| *k != kernels::Kernel::Host)
        .collect();
    let runs = matrix(root, filter, &guests, jobs)?;
    let failed: Vec<String> = runs
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.kernel)))
        .collect();
    if !failed.is_empty() {
        for r in &runs {
            results.extend(r.results.iter().cloned());
        }
        print_summary(&results);
        kernels::print_summary(&runs);
        bail!("the kernel matrix failed: {}", failed.join("; "));
    }
    fuzz_and_summary(root, results, &runs)
}

/// The kernel matrix: each guest kernel booted, the core run in it; `jobs` at a time.
fn matrix(
    root: &Path,
    filter: Option<&str>,
    guests: &[kernels::Kernel],
    jobs: usize,
) -> anyhow::Result<Vec<kernels::GuestRun>> {
    if guests.is_empty() {
        return Ok(Vec::new());
    }
    let object = root.join("target/bpfel-unknown-none/release/portcullis-ebpf");
    step("kernel matrix: the root test binaries (built, not run)");
    let binaries = kernels::test_binaries(&object)?;
    let names: Vec<String> = guests.iter().map(ToString::to_string).collect();
    step(&format!(
        "kernel matrix: {} under qemu (TCG), {jobs} at a time",
        names.join(", ")
    ));
    let (cpu0, wall0) = (kernels::children_cpu(), Instant::now());
    let queue = std::sync::Mutex::new(guests.to_vec());
    let runs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(guests.len()) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().expect("queue").first().copied();
                    let Some(kernel) = next else { break };
                    queue.lock().expect("queue").retain(|k| *k != kernel);
                    let run = kernels::run_guest(root, kernel, &binaries, filter);
                    runs.lock().expect("runs").push((kernel, run));
                }
            });
        }
    });
    // The guests' CPU time is what they would take on an idle machine whose two cores
    // they had to themselves (about half of it in wall time): on a shared build machine
    // their wall times mostly measure the neighbours.
    step(&format!(
        "kernel matrix: {:.0} s wall, {:.0} s of CPU for the guests",
        wall0.elapsed().as_secs_f64(),
        kernels::children_cpu() - cpu0
    ));
    let mut runs = runs.into_inner().expect("runs");
    runs.sort_by_key(|(k, _)| *k);
    runs.into_iter()
        .map(|(k, r)| r.with_context(|| format!("kernel {k}")))
        .collect()
}

/// Every root test (or those matching `filter`) on this machine's kernel.
fn host_root_tests(
    root: &Path,
    filter: Option<&str>,
    results: &mut Vec<String>,
) -> anyhow::Result<()> {
    let object = root.join("target/bpfel-unknown-none/release/portcullis-ebpf");
    // The systemd tests install the package on a real systemd host: build and lint it.
    let packages = install::dist(root)?;
    step("root integration tests (real programs, cgroups, namespaces, clients, systemd)");
    let mut it = Command::new("cargo");
    it.args([
        "test",
        "--release",
        "-p",
        "portcullis-tests",
        "--",
        "--test-threads=1",
    ])
    .env("PORTCULLIS_BIN", root.join("target/release/portcullis"))
    .env("PORTCULLIS_EBPF_OBJECT", &object)
    .env("PORTCULLIS_DEB", &packages.deb)
    .env("PORTCULLIS_RPM", &packages.rpm);
    if let Some(f) = filter {
        it.arg(f);
    }
    let (status, figures) = tee_figures(&mut it)?;
    results.extend(figures);
    if !status.success() {
        print_summary(results);
        bail!("root integration tests failed ({status})");
    }
    Ok(())
}

/// The fuzz smoke run (skipped only on request, loudly), then the reliability summary
/// and the matrix's.
fn fuzz_and_summary(
    root: &Path,
    mut figures: Vec<String>,
    runs: &[kernels::GuestRun],
) -> anyhow::Result<()> {
    for r in runs {
        figures.extend(r.results.iter().cloned());
    }
    if env::var("PORTCULLIS_SKIP_FUZZ").as_deref() == Ok("1") {
        println!();
        println!(
            "!!! PORTCULLIS_SKIP_FUZZ=1: the fuzz smoke run (parsers, compiler, map image) was NOT run."
        );
        println!();
    } else {
        step("fuzz smoke run (60 s per target)");
        figures.extend(fuzz::run(root, 60)?);
    }
    print_summary(&figures);
    kernels::print_summary(runs);
    Ok(())
}

/// Runs a command whose output is passed through as it comes, and collects the lines of
/// figures the tests print (`RELIABILITY: <test>: key=value ...`, see tests/support).
fn tee_figures(cmd: &mut Command) -> anyhow::Result<(std::process::ExitStatus, Vec<String>)> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    let figures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().context("stdout")?);
    let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().context("stderr")?);
    // cargo announces each test binary on stderr ("Running tests/names.rs (target/..)")
    // before the binary writes its results on stdout: the result line is named after it.
    let suite = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let readers: Vec<_> = [(out, false), (err, true)]
        .into_iter()
        .map(|(stream, is_err)| {
            let figures = figures.clone();
            let suite = suite.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = if is_err {
                        writeln!(std::io::stderr(), "{l}")
                    } else {
                        writeln!(std::io::stdout(), "{l}")
                    };
                    if let Some(at) = l.find("RELIABILITY: ") {
                        figures.lock().expect("figures").push(l[at..].to_owned());
                    } else if l.starts_with("test result: ") {
                        let name = suite.lock().expect("suite").clone();
                        figures
                            .lock()
                            .expect("figures")
                            .push(format!("{name}: {l}"));
                    } else if let Some(running) = l.trim_start().strip_prefix("Running ") {
                        *suite.lock().expect("suite") = suite_name(running);
                    }
                }
            })
        })
        .collect();
    let status = child
        .wait()
        .with_context(|| format!("waiting for {line}"))?;
    for r in readers {
        let _ = r.join();
    }
    let figures = std::mem::take(&mut *figures.lock().expect("figures"));
    Ok((status, figures))
}

/// The name of a test binary in cargo's "Running" line: `tests/names.rs (target/..)`
/// -> `names`, `unittests src/main.rs (target/release/deps/xtask-..)` -> `xtask`.
fn suite_name(running: &str) -> String {
    let (source, binary) = running.split_once(" (").unwrap_or((running, ""));
    if source.starts_with("unittests") {
        let file = binary
            .trim_end_matches(')')
            .rsplit('/')
            .next()
            .unwrap_or("");
        let crate_name = file.rsplit_once('-').map_or(file, |(name, _)| name);
        return format!("unit {crate_name}");
    }
    Path::new(source.trim())
        .file_stem()
        .map_or_else(|| source.to_owned(), |s| s.to_string_lossy().into_owned())
}

/// The figures of every test in one block at the end (the README quotes them), the
/// result of each test binary (with its wall time: "finished in"), then the total of
/// every `cargo test` run: `tests: N passed, M failed`.
fn print_summary(lines: &[String]) {
    let (results, figures): (Vec<&String>, Vec<&String>) =
        lines.iter().partition(|l| l.contains("test result: "));
    println!();
    println!("==> reliability summary ({} lines)", figures.len());
    for f in figures {
        println!("{f}");
    }
    println!();
    println!(
        "==> test binaries ({}); [kernel] for the matrix's guests",
        results.len()
    );
    for r in &results {
        println!("{r}");
    }
    let (passed, failed) = results.iter().fold((0, 0), |(p, f), l| {
        let (lp, lf) = passed_failed(l);
        (p + lp, f + lf)
    });
    println!();
    println!("tests: {passed} passed, {failed} failed");
}

/// The counts of one `test result: ok. 6 passed; 0 failed; ...` line.
fn passed_failed(line: &str) -> (u64, u64) {
    let count = |word: &str| {
        line.split([';', '.'])
            .map(str::trim)
            .find_map(|part| part.strip_suffix(word)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (count(" passed"), count(" failed"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_test_binaries_from_cargos_running_lines() {
        assert_eq!(
            super::suite_name("tests/names.rs (target/release/deps/names-8901c029d1592de4)"),
            "names"
        );
        assert_eq!(
            super::suite_name("unittests src/main.rs (target/release/deps/xtask-0a1b2c)"),
            "unit xtask"
        );
    }

    #[test]
    fn reads_cargo_test_summaries() {
        let line = "test result: ok. 58 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.14s";
        assert_eq!(super::passed_failed(line), (58, 2));
        let guest = "[6.12] datapath: test result: ok. 4 passed; 0 failed; 0 ignored";
        assert_eq!(super::passed_failed(guest), (4, 0));
        assert_eq!(
            super::passed_failed("test result: ok. 0 passed; 0 failed;"),
            (0, 0)
        );
    }
}
