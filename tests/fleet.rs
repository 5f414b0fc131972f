//! Many gateways: the Ansible role in `agent/packaging/ansible` really run on
//! the real systemd host of `tests/support/nspawn.rs` (Debian 12, systemd as PID 1), and
//! the Prometheus rules in `agent/packaging/prometheus` checked and unit-tested by
//! promtool.
//!
//! The play runs inside the container with connection local: `cargo xtask setup` builds
//! a venv of ansible-core (PyPI, pinned) from Debian's `/usr/bin/python3`, and the test
//! copies it in, since the container has the same Python 3.11 at the same path. The
//! role, the .deb under test and a one-role playbook are copied in next to it. What the
//! role did is then checked with real traffic from a protected unit (an allowed and a
//! denied connect()), `portcullis status --json` and `report --json`, never by reading
//! the play's output alone.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use portcullis_tests::{
    denies, figures,
    nspawn::{Container, deb},
    rule_packets, sh, stderr, stdout,
    workload::{SLICE, listeners},
};
use serde_json::{Value, json};

/// Where the test puts things inside the container.
const FLEET_DIR: &str = "/opt/fleet";

/// The venv `cargo xtask setup` builds (xtask's `ansible::VENV_DIR`).
const VENV_DIR: &str = "target/ansible";

/// The playbook: the role on this host, nothing else.
const PLAYBOOK: &str = "\
- name: Portcullis on a mail gateway
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: portcullis
";

/// Ansible's settings for the test: the role's folder, the one-host inventory, the
/// container's own Python for modules (it has python3-apt), no colours.
const ANSIBLE_CFG: &str = "\
[defaults]
roles_path = /opt/fleet/roles
inventory = /opt/fleet/hosts.ini
interpreter_python = /usr/bin/python3
nocolor = true
retry_files_enabled = false
";

/// The inventory: this host, reached without SSH.
const INVENTORY: &str = "localhost ansible_connection=local\n";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The venv with ansible-core and ansible-lint; panics with the fix when it is missing.
fn venv() -> PathBuf {
    let dir = workspace_root().join(VENV_DIR);
    assert!(
        dir.join("bin/ansible-lint").is_file() && dir.join(".portcullis-requirements").is_file(),
        "no ansible venv at {}: run `cargo xtask setup` (it installs ansible-core and \
         ansible-lint from PyPI there)",
        dir.display()
    );
    dir
}

/// The outcome of one `ansible-playbook` run.
struct Play {
    /// ansible-playbook exited 0.
    ok: bool,
    /// Its output (stdout and stderr).
    output: String,
    /// The recap's counts for the host.
    changed: u64,
    failed: u64,
}

/// A test host with the role, the .deb and ansible copied in.
struct Gateway {
    c: Container,
    /// The .deb as the play sees it (a path on the controller, which is this host).
    deb: String,
}

impl Gateway {
    fn boot(name: &str) -> Gateway {
        let venv = venv();
        let c = Container::boot(name);
        let copy = |from: &Path, inside: &str| {
            let to = c.path(inside);
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            let out = sh(&format!("cp -a {} {}", from.display(), to.display()));
            assert!(
                out.status.success(),
                "copying {}: {}",
                from.display(),
                stderr(&out)
            );
        };
        copy(&venv, &format!("{FLEET_DIR}/ansible"));
        copy(
            &workspace_root().join("agent/packaging/ansible"),
            &format!("{FLEET_DIR}/roles/portcullis"),
        );
        c.write(&format!("{FLEET_DIR}/site.yml"), PLAYBOOK);
        c.write(&format!("{FLEET_DIR}/ansible.cfg"), ANSIBLE_CFG);
        c.write(&format!("{FLEET_DIR}/hosts.ini"), INVENTORY);
        let deb = c.copy_in(&deb(), "/root/debs");
        // The protected workload's listeners and slice exist before the role runs: the
        // config names the slice, and `portcullis check` (the template's validation)
        // reads it.
        listeners(&c);
        Gateway { c, deb }
    }

    /// Runs the play with `vars` (as extra vars, so they win over the role's defaults).
    fn play(&self, vars: &Value) -> Play {
        self.c.write(
            &format!("{FLEET_DIR}/vars.json"),
            &serde_json::to_string_pretty(vars).expect("vars"),
        );
        let out = self.c.run(&format!(
            "cd {FLEET_DIR} && ANSIBLE_CONFIG={FLEET_DIR}/ansible.cfg \
             {FLEET_DIR}/ansible/bin/python -m ansible playbook site.yml -e @vars.json 2>&1"
        ));
        let output = stdout(&out);
        let recap = output
            .lines()
            .rev()
            .find(|l| l.starts_with("localhost") && l.contains("changed="))
            .unwrap_or_else(|| panic!("no play recap for localhost in:\n{output}"));
        let count = |key: &str| -> u64 {
            recap
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in the recap {recap:?}"))
        };
        Play {
            ok: out.status.success(),
            changed: count("changed"),
            failed: count("failed"),
            output,
        }
    }

    /// Runs the play and requires it to succeed.
    fn play_ok(&self, vars: &Value) -> Play {
        let play = self.play(vars);
        assert!(
            play.ok && play.failed == 0,
            "the play failed:\n{}",
            play.output
        );
        play
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.c.must("portcullis status --json")).expect("status JSON")
    }

    fn report(&self) -> Value {
        serde_json::from_str(&self.c.must("portcullis report --json")).expect("report JSON")
    }

    fn config(&self) -> String {
        self.c.must("cat /etc/portcullis/portcullis.toml")
    }

    /// Waits until the report's window spans the minimum (the config's
    /// `audit_min_window`), checking that it did not before; returns the report.
    fn wait_for_window(&self) -> Value {
        let short = self.report();
        assert_eq!(short["window_complete"], false, "{short:#}");
        assert_eq!(
            short["safe"], false,
            "never safe before the window: {short:#}"
        );
        assert!(
            short["verdict"]
                .as_str()
                .is_some_and(|v| v.starts_with("not yet: ")),
            "{short:#}"
        );
        assert_eq!(short["min_window_seconds"], MIN_WINDOW_SECS, "{short:#}");
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_secs(MIN_WINDOW_SECS + 30);
        loop {
            let r = self.report();
            if r["window_complete"] == true {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the window never reached {MIN_WINDOW_SECS} s: {r:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

/// The role's variables for the protected workload: xeams plus site rules, enforcing on
/// the workload's slice, loopback enforced (the workload talks over the container's
/// loopback). The peer group (networks and a host name, plain strings) and the quoted
/// `why` exercise the template's quoting.
fn site_vars(deb: &str, mode: &str) -> Value {
    json!({
        "portcullis_deb": deb,
        "portcullis_product": "xeams",
        "portcullis_features": ["pop3"],
        "portcullis_mode": mode,
        "portcullis_scope": [SLICE],
        "portcullis_failsafe": false,
        "portcullis_loopback": "enforce",
        "portcullis_events_per_sec": 1000,
        "portcullis_peers": {
            "mail-relays": ["198.51.100.0/24", "2001:db8::/64", "relay.example.net"]
        },
        "portcullis_rules": [
            { "id": "web-out", "direction": "out", "protocol": "tcp", "ports": 8080,
              "why": "the lab's web service" },
            { "id": "relay-in", "direction": "in", "protocol": "tcp", "ports": ["2525-2526", 2600],
              "peers": "mail-relays", "why": "mail from the \"relays\"" }
        ],
        "portcullis_metrics_listen": "127.0.0.1:9975",
        "portcullis_audit_min_window": format!("{MIN_WINDOW_SECS}s")
    })
}

/// The audit window the tests ask for before enforce (the role's default is 7 days):
/// longer than a play takes from the agent's start or a reset to the gate, so "not yet"
/// is seen for sure.
const MIN_WINDOW_SECS: u64 = 45;

/// One connect() to 127.0.0.1:`port` from a transient unit in the protected [`SLICE`]:
/// net.py's verdict (`ok`, `EPERM`, ...). [`listeners`] put net.py in /root.
fn connect_once(c: &Container, port: u16) -> String {
    c.must(&format!(
        "systemd-run --quiet --wait --pipe --unit=fleet-client --slice={SLICE} \
         python3 /root/net.py connect 127.0.0.1 {port}"
    ))
    .trim()
    .to_owned()
}

/// The metrics the agent serves inside the container (its metrics endpoint).
fn scrape(c: &Container) -> String {
    c.must(
        "python3 -c 'import urllib.request; \
         print(urllib.request.urlopen(\"http://127.0.0.1:9975/metrics\").read().decode())'",
    )
}

#[test]
fn role_installs_and_enforces_is_idempotent_and_a_bad_config_keeps_the_policy() {
    let g = Gateway::boot("fleet-role");
    assert!(
        !g.c.run("command -v portcullis").status.success(),
        "the host has portcullis before the role ran"
    );

    // First run: installs the .deb and writes the config, but the fresh agent's window
    // is shorter than the minimum: nothing denied yet is not "safe", so the gate keeps
    // the host in audit and the play fails saying "not yet".
    let vars = site_vars(&g.deb, "enforce");
    let first = g.play(&vars);
    assert!(
        first.changed > 0,
        "the first run changed nothing:\n{}",
        first.output
    );
    assert!(
        !first.ok
            && first.output.contains("not switching to enforce")
            && first.output.contains("not yet: "),
        "a fresh install was switched to enforce:\n{}",
        first.output
    );
    assert_eq!(g.status()["mode"], "audit");
    assert!(
        g.config()
            .contains(&format!("audit_min_window = \"{MIN_WINDOW_SECS}s\""))
    );
    // Once the window spans the minimum (and nothing was denied), the same variables
    // switch the host, without force.
    assert_eq!(g.wait_for_window()["safe"], true);
    let switched = g.play_ok(&vars);
    assert!(
        !switched
            .output
            .contains("forced by portcullis_force_enforce"),
        "the switch was forced:\n{}",
        switched.output
    );
    assert_eq!(
        g.c.must("systemctl is-enabled portcullis.service").trim(),
        "enabled"
    );
    let s = g.status();
    assert_eq!(s["mode"], "enforce", "{s:#}");
    assert_eq!(s["product"], "xeams", "{s:#}");
    assert_eq!(s["scopes"], json!([SLICE]), "{s:#}");
    let config = g.config();
    for line in [
        "mode = \"enforce\"",
        "features = [\"pop3\"]",
        "\"mail-relays\" = [\"198.51.100.0/24\", \"2001:db8::/64\", \"relay.example.net\"]",
        "ports = [\"2525-2526\", 2600]",
        "why = \"mail from the \\\"relays\\\"\"",
    ] {
        assert!(
            config.contains(line),
            "no `{line}` in the config:\n{config}"
        );
    }

    // Real traffic from the protected unit: the site rule's port connects, a port no
    // rule opens is refused, and the counters say so.
    assert_eq!(connect_once(&g.c, 8080), "ok", "the allowed connect");
    assert_eq!(connect_once(&g.c, 8081), "EPERM", "the denied connect");
    let s = g.status();
    let allowed = rule_packets(&s, "web-out");
    let (denied, _) = denies(&s, "out", "no-rule", false);
    assert!(allowed > 0, "web-out counted nothing: {s:#}");
    assert!(denied >= 1, "the refused connect was not counted: {s:#}");
    let version = s["policy_version"].clone();

    // The metrics the rules are written against are the ones the agent serves.
    let metrics = scrape(&g.c);
    for name in rule_metric_names() {
        assert!(
            metrics.contains(&format!("\n{name}")) || metrics.contains(&format!("# TYPE {name} ")),
            "the rules use {name}, which the agent does not serve:\n{metrics}"
        );
    }

    // Second run, same variables: nothing changes.
    let second = g.play_ok(&vars);
    assert_eq!(
        second.changed, 0,
        "the second run changed something:\n{}",
        second.output
    );
    assert_eq!(
        g.status()["policy_version"],
        version,
        "the second run reloaded"
    );

    // Bad variables, caught by the role's argument spec: nothing runs.
    let mut bad = vars.clone();
    bad["portcullis_mode"] = json!("enforcing");
    let spec = g.play(&bad);
    assert!(
        !spec.ok && spec.failed > 0,
        "mode \"enforcing\" was accepted:\n{}",
        spec.output
    );
    assert!(
        spec.output.contains("portcullis_mode"),
        "the failure does not name the variable:\n{}",
        spec.output
    );

    // Bad variables only the agent can tell: a feature xeams does not have, and a peer
    // that is not a network. `portcullis check` refuses the file, the play fails, and
    // the host keeps its config and its running policy.
    for (key, value, needle) in [
        (
            "portcullis_features",
            json!(["pop3", "no-such-feature"]),
            "no-such-feature",
        ),
        (
            "portcullis_peers",
            json!({ "mail-relays": ["198.51.100.0/33"] }),
            "198.51.100.0/33",
        ),
    ] {
        let mut bad = vars.clone();
        bad[key] = value;
        let play = g.play(&bad);
        assert!(
            !play.ok && play.failed > 0,
            "{key} = {} was accepted:\n{}",
            bad[key],
            play.output
        );
        assert!(
            play.output.contains("failed to validate") && play.output.contains(needle),
            "the failure does not come from portcullis check naming {needle:?}:\n{}",
            play.output
        );
        assert_eq!(g.config(), config, "the config file changed after {key}");
        let s = g.status();
        assert_eq!(
            s["policy_version"], version,
            "the policy changed after {key}: {s:#}"
        );
        assert_eq!(s["mode"], "enforce", "{s:#}");
        assert_eq!(
            connect_once(&g.c, 8081),
            "EPERM",
            "still enforced after {key}"
        );
    }
    assert_eq!(
        connect_once(&g.c, 8080),
        "ok",
        "still allowed after the bad runs"
    );

    figures(
        "fleet_role",
        &[
            ("first_run_changed", first.changed.to_string()),
            ("fresh_install_refused", "yes".into()),
            ("second_run_changed", second.changed.to_string()),
            ("bad_runs_rejected", "3".into()),
            ("policy_kept", "yes".into()),
            ("allowed_packets", allowed.to_string()),
            ("denied_packets", denied.to_string()),
        ],
    );
}

#[test]
fn enforce_gate_refuses_while_not_safe_switches_once_safe_and_says_when_forced() {
    let g = Gateway::boot("fleet-gate");
    let audit = site_vars(&g.deb, "audit");
    let enforce = site_vars(&g.deb, "enforce");
    g.play_ok(&audit);
    assert_eq!(g.status()["mode"], "audit");

    // A would-deny in the audit window: the workload connects to a port no rule opens.
    assert_eq!(connect_once(&g.c, 8081), "ok", "audit mode drops nothing");
    let report = g.report();
    assert_eq!(report["safe"], false, "{report:#}");

    // Asked to enforce: refused. The host stays in audit, the config says audit, and
    // the play fails naming the report's verdict and the way out.
    let refused = g.play(&enforce);
    assert!(
        !refused.ok && refused.failed > 0,
        "not refused:\n{}",
        refused.output
    );
    assert!(
        refused.output.contains("not switching to enforce")
            && refused.output.contains("not safe to enforce")
            && refused.output.contains("portcullis_force_enforce"),
        "the refusal does not say why:\n{}",
        refused.output
    );
    assert_eq!(g.status()["mode"], "audit");
    assert!(g.config().contains("mode = \"audit\""), "{}", g.config());
    assert_eq!(
        connect_once(&g.c, 8081),
        "ok",
        "still auditing after the refusal"
    );

    // The same, with refusals as warnings: the play passes, the host stays in audit.
    let mut warn = enforce.clone();
    warn["portcullis_enforce_refused"] = json!("warn");
    let warned = g.play_ok(&warn);
    assert!(
        warned.output.contains("not switching to enforce"),
        "{}",
        warned.output
    );
    assert_eq!(g.status()["mode"], "audit");

    // The operator fixed the cause and started a new window. Before the window spans
    // the minimum the gate refuses ("not yet"); after it, the same variables switch the
    // host, without force.
    g.c.must("portcullis report --reset");
    let early = g.play(&enforce);
    assert!(
        !early.ok && early.output.contains("not yet: "),
        "switched before the minimum window:\n{}",
        early.output
    );
    assert_eq!(g.status()["mode"], "audit");
    assert_eq!(g.wait_for_window()["safe"], true);
    let switched = g.play_ok(&enforce);
    assert!(switched.changed > 0, "{}", switched.output);
    assert!(
        !switched
            .output
            .contains("forced by portcullis_force_enforce"),
        "{}",
        switched.output
    );
    assert_eq!(g.status()["mode"], "enforce");
    assert_eq!(
        connect_once(&g.c, 8081),
        "EPERM",
        "enforcing after the switch"
    );
    assert_eq!(connect_once(&g.c, 8080), "ok");

    // Back to audit (never gated), a would-deny again, and a forced switch: it happens,
    // and the run says it was forced, with the verdict it overrode.
    g.play_ok(&audit);
    assert_eq!(g.status()["mode"], "audit");
    assert_eq!(connect_once(&g.c, 8081), "ok");
    assert_eq!(g.report()["safe"], false);
    let mut force = enforce.clone();
    force["portcullis_force_enforce"] = json!(true);
    let forced = g.play_ok(&force);
    assert!(
        forced
            .output
            .contains("switched to enforce although portcullis report says it is not safe")
            && forced.output.contains("forced by portcullis_force_enforce")
            && forced.output.contains("tcp/8081"),
        "the forced run does not say so:\n{}",
        forced.output
    );
    assert_eq!(g.status()["mode"], "enforce");
    assert_eq!(
        connect_once(&g.c, 8081),
        "EPERM",
        "enforcing after the forced switch"
    );

    figures(
        "fleet_gate",
        &[
            ("refused_while_unsafe", "yes".into()),
            ("refused_before_min_window", "yes".into()),
            ("switched_once_safe", "yes".into()),
            ("forced_said", "yes".into()),
        ],
    );
}

/// The `portcullis_*` metric names the rules file uses, read from the file itself.
fn rule_metric_names() -> Vec<String> {
    let text = std::fs::read_to_string(rules_file()).expect("the rules file");
    // Comments name variables of the Ansible role (portcullis_mode), not metrics.
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names: Vec<String> = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("portcullis_") {
        // Recording rules (`portcullis:...`) and alert names are not exported metrics.
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let preceded_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        if preceded_ok && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        rest = &tail[end..];
    }
    assert!(!names.is_empty(), "no portcullis_ metric in the rules file");
    names
}

fn rules_file() -> PathBuf {
    workspace_root().join("agent/packaging/prometheus/portcullis.rules.yml")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(workspace_root().join("agent/packaging/prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool ({e}): run `cargo xtask setup` (Debian package prometheus)")
        });
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out) + &stderr(&out)
}

#[test]
fn prometheus_rules_check_and_their_unit_tests_pass() {
    let check = promtool(&["check", "rules", "portcullis.rules.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let tests = promtool(&["test", "rules", "portcullis.rules.test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");
    // The scrape example (with the rules it loads) and the federation example.
    for example in ["prometheus.yml", "federation.yml"] {
        let config = promtool(&["check", "config", example]);
        assert!(config.contains("is valid prometheus config"), "{config}");
    }
    figures(
        "fleet_prometheus",
        &[
            ("rules_checked", "yes".into()),
            ("rule_tests", "pass".into()),
        ],
    );
}

#[test]
fn ansible_lint_is_clean_on_the_role() {
    let venv = venv();
    let out = Command::new(venv.join("bin/ansible-lint"))
        .args([
            "--offline",
            "--nocolor",
            "--strict",
            "--profile",
            "production",
        ])
        .current_dir(workspace_root().join("agent/packaging/ansible"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                venv.join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("running ansible-lint");
    let text = stdout(&out) + &stderr(&out);
    assert!(out.status.success(), "ansible-lint:\n{text}");
    assert!(text.contains("0 failure(s), 0 warning(s)"), "{text}");
}
