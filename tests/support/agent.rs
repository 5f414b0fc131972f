//! The real agent under test: a running `portcullis run` as a guard value, with its own
//! pin and state directories, stopped (SIGTERM, then `portcullis detach` if anything is
//! left) on drop. The root tests start it through [`Lab::agent`]; `cargo xtask bench`
//! starts one per policy size with [`Agent::start`] and times its startup and reloads.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Lab, Signal, bin, in_netns};

/// A line of the agent's output that someone waits for, stamped when it was read.
pub enum Event {
    /// The "ready:" line (stdout) and its text.
    Ready(Instant, String),
    /// A "reloaded:" log line.
    Reloaded(Instant),
    /// A "reload rejected" log line and its text.
    Rejected(String),
    /// One of the two output streams closed: the process is exiting.
    Closed,
}

/// A child's stdout and stderr, read line by line on two threads (so that the child never
/// blocks on a full pipe), kept in order of arrival, with the lines of [`Event`] also
/// forwarded as they arrive.
pub struct Captured {
    lines: Arc<Mutex<Vec<String>>>,
    /// The events, in order of arrival.
    pub events: mpsc::Receiver<Event>,
}

impl Captured {
    /// Takes the child's piped stdout and stderr and starts reading them.
    pub fn start(child: &mut Child) -> Captured {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::channel();
        let streams: [(Option<Box<dyn Read + Send>>, bool); 2] = [
            (child.stdout.take().map(|s| Box::new(s) as _), true),
            (child.stderr.take().map(|s| Box::new(s) as _), false),
        ];
        for (stream, is_stdout) in streams {
            let Some(stream) = stream else { continue };
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let now = Instant::now();
                    if is_stdout && line.starts_with("ready:") {
                        let _ = tx.send(Event::Ready(now, line.clone()));
                    } else if line.contains("reloaded: ") {
                        let _ = tx.send(Event::Reloaded(now));
                    } else if line.contains("reload rejected") {
                        let _ = tx.send(Event::Rejected(line.clone()));
                    }
                    lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
                let _ = tx.send(Event::Closed);
            });
        }
        Captured { lines, events }
    }

    /// All output so far, one line each.
    pub fn text(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    /// The last `n` lines, joined with " | " (for an error message).
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }
}

/// How to start an agent.
pub struct AgentSpec<'a> {
    /// The site config (`run --config`).
    pub config: &'a Path,
    /// The agent's bpffs pin directory (`PORTCULLIS_PIN_DIR`).
    pub pin_dir: PathBuf,
    /// The agent's state directory (`PORTCULLIS_STATE_DIR`).
    pub state_dir: PathBuf,
    /// The network namespace to run in; `None`: this process's.
    pub netns: Option<&'a str>,
    /// Extra arguments after `run --config FILE`.
    pub args: &'a [&'a str],
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
}

/// A running `portcullis run` ([`bin`]), with its own pin and state directories.
pub struct Agent {
    child: Option<Child>,
    output: Captured,
    /// Environment for every `portcullis` command aimed at this agent.
    pub env: Vec<(String, String)>,
    /// The agent's pin directory.
    pub pin_dir: PathBuf,
    netns: Option<String>,
    detach_on_drop: bool,
    /// From the spawn to the "ready:" line.
    pub startup: Duration,
    /// The "ready:" line.
    pub ready: String,
}

impl Agent {
    /// Starts the agent and waits (up to 60 s) until it says it is ready; fails with its
    /// output if it exits first.
    pub fn start(spec: &AgentSpec) -> anyhow::Result<Agent> {
        let bin = bin();
        if !bin.is_file() {
            bail!(
                "{} is missing: run `cargo xtask build` first",
                bin.display()
            );
        }
        let env = vec![
            (
                "PORTCULLIS_PIN_DIR".to_owned(),
                spec.pin_dir.display().to_string(),
            ),
            (
                "PORTCULLIS_STATE_DIR".to_owned(),
                spec.state_dir.display().to_string(),
            ),
        ];
        let mut cmd = match spec.netns {
            Some(ns) => in_netns(ns, &bin),
            None => Command::new(&bin),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(spec.config)
            .args(spec.args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(spec.env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("starting portcullis run")?;
        let output = Captured::start(&mut child);
        let mut agent = Agent {
            child: Some(child),
            output,
            env,
            pin_dir: spec.pin_dir.clone(),
            netns: spec.netns.map(str::to_owned),
            detach_on_drop: true,
            startup: Duration::ZERO,
            ready: String::new(),
        };
        // Verification is most of a start: minutes for a large program under TCG.
        let deadline = t0 + Duration::from_secs(60) * crate::patience();
        loop {
            if let Ok(Event::Ready(at, line)) =
                agent.output.events.recv_timeout(Duration::from_millis(100))
            {
                agent.startup = at - t0;
                agent.ready = line;
                return Ok(agent);
            }
            let exited = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                // Let the readers drain what the agent printed last.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "portcullis run --config {} did not become ready (exit: {exited:?}); output:\n{}",
                    spec.config.display(),
                    agent.output()
                );
            }
        }
    }

    /// All output so far.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Runs another `portcullis` subcommand against this agent's pins and state (in the
    /// agent's namespace).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = match &self.netns {
            Some(ns) => in_netns(ns, bin()),
            None => Command::new(bin()),
        };
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running portcullis")
    }

    /// `portcullis status --json`, or why it failed.
    pub fn try_status(&self) -> anyhow::Result<Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("status --json is not JSON")
    }

    /// `portcullis status --json`.
    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Whether the agent process is still running (it has neither exited nor crashed).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGHUP and waits for the agent's "reloaded:" log line. Returns the time
    /// from the signal to the line.
    pub fn reload(&mut self) -> anyhow::Result<Duration> {
        while self.output.events.try_recv().is_ok() {}
        let t0 = Instant::now();
        Signal::Hup.send(self.pid());
        loop {
            match self.output.events.recv_timeout(Duration::from_secs(60)) {
                Ok(Event::Reloaded(at)) => return Ok(at - t0),
                Ok(Event::Rejected(why)) => bail!("the agent rejected a reload: {why}"),
                Ok(Event::Ready(..)) => {}
                Ok(Event::Closed) | Err(_) => bail!(
                    "the agent did not answer a reload: {}",
                    self.output.tail(20)
                ),
            }
        }
    }

    /// Sends SIGHUP to an agent started with the test-only `PORTCULLIS_FAULT_AT` and
    /// waits (up to 60 s) for it to die at that step. Panics unless it died by SIGKILL.
    pub fn reload_killed(mut self) {
        use std::os::unix::process::ExitStatusExt as _;
        let mut child = self.child.take().expect("a running agent");
        Signal::Hup.send(child.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for the agent") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not die in the reload: {}",
                self.output.tail(20)
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the agent should have been killed by its fault point: {}",
            self.output.tail(20)
        );
        self.detach_on_drop = false;
    }

    /// kill -9: the agent gets no chance to clean up; its pinned programs stay.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.detach_on_drop = false;
    }

    /// Sends SIGTERM and waits; returns the agent's whole output.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.output()
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            Signal::Term.send(child.id());
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            // Give the reader threads a moment to drain the pipes.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
        // Whatever the agent left (it was killed, or a test failed midway).
        if self.detach_on_drop && self.pin_dir.exists() {
            let _ = self.cli(&["detach"]);
        }
    }
}

impl Lab {
    /// Starts the agent on a config from [`Lab::config`] and waits until it is ready.
    pub fn agent(&self, config: &Path, extra: &[&str]) -> Agent {
        self.agent_env(config, extra, &[])
    }

    /// Like [`Lab::agent`], with extra environment variables.
    pub fn agent_env(&self, config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        self.start_agent(config, None, extra, env)
    }

    /// Starts the agent in namespace A (its `/proc/PID/net` and interfaces are A's).
    pub fn agent_in_a(&self, config: &Path, extra: &[&str]) -> Agent {
        self.start_agent(config, Some(&self.ns_a), extra, &[])
    }

    /// Starts the agent in namespace A with XDP on A's veth (`run --xdp`), where the
    /// interface it filters lives; the config must accept a cgroup scope with XDP.
    pub fn agent_xdp(&self, config: &Path) -> Agent {
        self.agent_in_a(config, &["--xdp", &self.veth_a()])
    }

    fn start_agent(
        &self,
        config: &Path,
        netns: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        Agent::start(&AgentSpec {
            config,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/portcullis-{}", self.tag)),
            state_dir: self.dir.join("state"),
            netns,
            args,
            env,
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
    }
}
