//! The Debian package on a real systemd host (issue 18): Debian 12 with systemd 252 as
//! PID 1 in systemd-nspawn ([`Container`]). Everything goes through dpkg, systemctl and
//! journalctl inside the container: install (enabled, active, `status` works), reload
//! (a good config applied, a bad one rejected with file:line in the journal), SIGKILL
//! (restarted by systemd, pins adopted), SIGSTOP (the watchdog restarts it, enforcement
//! never stops), upgrade under a 1 ms load, purge (nothing left).
//!
//! Unit scopes (`scope = ["fakemail.service"]`): a service whose first act is a
//! connect() to a denied and one to an allowed port, restarted 100 times with the agent
//! running, 20 times with it stopped and 20 times with it killed; a simulated boot (no
//! pins, the unit started first); a unit entering the scope while it runs and leaving it.

use std::time::Duration;

use portcullis_common::maps::programs;
use portcullis_tests::{
    figures,
    load::{assert_nothing_lost, load_figures},
    nspawn::{Container, deb},
    workload::{
        PROBE_UNIT, Probes, SLICE, enforce_config, finish_load, install_probe_unit, listeners,
        start_load, start_probes,
    },
};
use serde_json::Value;

/// Boots a container and installs the package under test; the unit must come up
/// enabled and active with the packaged (audit, host scope) config.
fn installed(name: &str) -> Container {
    let c = Container::boot(name);
    let out = c.install_deb(&deb());
    assert!(
        out.status.success(),
        "dpkg -i failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_active(&c);
    c
}

/// Waits until portcullis.service is active (READY=1 came: the programs are attached).
fn wait_active(c: &Container) {
    c.wait_for(
        "portcullis.service active",
        "systemctl is-active --quiet portcullis.service",
        Duration::from_secs(30),
    );
}

/// `portcullis status --json` inside the container.
fn status(c: &Container) -> Value {
    serde_json::from_str(&c.must("portcullis status --json")).expect("status --json is JSON")
}

/// The agent's main pid as systemd sees it (0 when it has none).
fn main_pid(c: &Container) -> u32 {
    c.must("systemctl show -P MainPID portcullis.service")
        .trim()
        .parse()
        .expect("MainPID is a number")
}

/// Waits until systemd runs the agent with a pid other than `old`, and it is ready.
fn wait_restarted(c: &Container, old: u32, limit: Duration) -> u32 {
    c.wait_for(
        "portcullis.service restarted with a new pid",
        &format!(
            "pid=$(systemctl show -P MainPID portcullis.service); \
             [ \"$pid\" != 0 ] && [ \"$pid\" != {old} ] && systemctl is-active --quiet portcullis.service"
        ),
        limit,
    );
    main_pid(c)
}

/// Pinned links under the agent's pin directory.
fn links(c: &Container) -> usize {
    c.must("ls /sys/fs/bpf/portcullis/links 2>/dev/null | wc -l")
        .trim()
        .parse()
        .expect("a count")
}

/// Installs, switches the agent to enforce on the workload's slice with `systemctl
/// reload`, then starts the load client in it.
fn enforcing(name: &str) -> Container {
    let c = installed(name);
    listeners(&c);
    enforce_config(&c, SLICE);
    c.must("systemctl reload portcullis.service");
    let s = status(&c);
    assert_eq!(s["mode"], "enforce", "{s:#}");
    start_load(&c, 1);
    c
}

/// The agent's four cgroup programs by name.
const OURS: [&str; 4] = [
    programs::INGRESS,
    programs::EGRESS,
    programs::CONNECT4,
    programs::CONNECT6,
];

/// The agent's programs attached anywhere in the container's cgroup tree (systemd's own
/// `sd_*` programs left out), as bpftool lists them.
fn ours_attached(c: &Container) -> Vec<String> {
    c.must("bpftool cgroup tree /sys/fs/cgroup")
        .lines()
        .filter(|l| l.split_whitespace().any(|w| OURS.contains(&w)))
        .map(str::to_owned)
        .collect()
}

/// How many of the agent's programs are attached to one cgroup.
fn ours_attached_to(c: &Container, cgroup: &str) -> usize {
    c.must(&format!("bpftool cgroup show {cgroup}"))
        .lines()
        .filter(|l| l.split_whitespace().any(|w| OURS.contains(&w)))
        .count()
}

#[test]
fn install_enables_and_starts_the_unit_in_audit_mode() {
    let c = installed("install");
    assert_eq!(
        c.must("systemctl is-enabled portcullis.service").trim(),
        "enabled"
    );
    let s = status(&c);
    assert_eq!(s["mode"], "audit", "the packaged config audits: {s:#}");
    assert_eq!(s["scopes"], serde_json::json!(["host"]), "{s:#}");
    assert!(s["attached_links"].as_u64().unwrap_or(0) > 0, "{s:#}");
    assert_eq!(s["pid"].as_u64(), Some(u64::from(main_pid(&c))), "{s:#}");
    assert!(
        c.must("dpkg-query -W -f='${Conffiles}' portcullis")
            .contains("/etc/portcullis/portcullis.toml"),
        "the config is a conffile"
    );
    assert!(
        c.run("test -e /usr/share/man/man1/portcullis.1.gz")
            .status
            .success(),
        "gzipped man page installed"
    );

    // The unit's hardening, rated by this systemd (252).
    let security = c.must("systemd-analyze security --no-pager portcullis.service 2>&1");
    let score: f64 = security
        .lines()
        .find_map(|l| l.split("portcullis.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{security}"));
    figures(
        "systemd_install",
        &[
            ("enabled", "yes".into()),
            ("active", "yes".into()),
            ("security_exposure", format!("{score:.1}")),
        ],
    );
    assert!(
        score <= 3.0,
        "systemd-analyze security rates the unit {score} (goal <= 3.0):\n{security}"
    );
}

#[test]
fn reload_applies_a_good_config_and_rejects_a_bad_one_keeping_the_policy() {
    let c = installed("reload");
    let before = status(&c);
    // Good: enforce mode (a different policy than the packaged audit one).
    let good = c
        .must("cat /etc/portcullis/portcullis.toml")
        .replace("mode = \"audit\"", "mode = \"enforce\"");
    c.write("/etc/portcullis/portcullis.toml", &good);
    c.must("systemctl reload portcullis.service");
    let after = status(&c);
    assert_eq!(after["mode"], "enforce", "{after:#}");
    assert_eq!(
        after["policy_version"].as_u64(),
        before["policy_version"].as_u64().map(|v| v + 1),
        "{after:#}"
    );

    // Bad: a mode that does not exist, on a known line.
    let lines = good.lines().count();
    c.write(
        "/etc/portcullis/portcullis.toml",
        &good.replace("mode = \"enforce\"", "mode = \"enforcing\""),
    );
    let bad_line = good
        .lines()
        .position(|l| l.starts_with("mode = "))
        .expect("a mode line")
        + 1;
    assert!(bad_line <= lines);
    let reload = c.run("systemctl reload portcullis.service");
    assert!(
        !reload.status.success(),
        "systemctl reload accepted a bad config"
    );
    let journal = c.journal("portcullis.service");
    let at = format!("/etc/portcullis/portcullis.toml:{bad_line}");
    assert!(
        journal.contains(&at),
        "the journal does not name {at}:\n{journal}"
    );
    let kept = status(&c);
    assert_eq!(kept["policy_version"], after["policy_version"], "{kept:#}");
    assert_eq!(kept["mode"], "enforce", "{kept:#}");
    assert!(
        c.run("systemctl is-active --quiet portcullis.service")
            .status
            .success(),
        "the agent stopped after a rejected reload"
    );
    figures(
        "systemd_reload",
        &[
            ("good_applied", "yes".into()),
            ("bad_rejected_at", at),
            ("policy_kept", "yes".into()),
        ],
    );
}

#[test]
fn sigkill_is_restarted_by_systemd_and_adopts_the_pins_without_a_gap() {
    let c = enforcing("sigkill");
    let pid = main_pid(&c);
    let before = links(&c);
    c.must("systemctl kill -s SIGKILL portcullis.service");
    let new = wait_restarted(&c, pid, Duration::from_secs(30));
    let counts = finish_load(&c);
    assert_nothing_lost(&counts, 100);
    assert_eq!(links(&c), before, "the restarted agent's links");
    let s = status(&c);
    assert_eq!(s["pid"].as_u64(), Some(u64::from(new)), "{s:#}");
    assert_eq!(s["mode"], "enforce", "{s:#}");
    load_figures(
        "systemd_sigkill",
        &counts,
        &[("restarted", "yes".into()), ("interval_ms", "1".into())],
    );
}

#[test]
fn sigstop_is_restarted_by_the_watchdog_and_enforcement_never_stops() {
    let c = enforcing("sigstop");
    // A short watchdog for the test (the unit's is 30 s); a stopped process cannot take
    // the watchdog's SIGABRT, so it is killed once TimeoutAbortSec= runs out.
    c.write(
        "/etc/systemd/system/portcullis.service.d/test-watchdog.conf",
        "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n",
    );
    c.must("systemctl daemon-reload && systemctl restart portcullis.service");
    let pid = main_pid(&c);
    c.must("systemctl kill -s SIGSTOP portcullis.service");
    let new = wait_restarted(&c, pid, Duration::from_secs(60));
    let counts = finish_load(&c);
    assert_nothing_lost(&counts, 100);
    let journal = c.journal("portcullis.service");
    assert!(
        journal.contains("Watchdog timeout"),
        "not restarted by the watchdog:\n{journal}"
    );
    assert_eq!(status(&c)["pid"].as_u64(), Some(u64::from(new)));
    load_figures(
        "systemd_sigstop_watchdog",
        &counts,
        &[
            ("watchdog_restart", "yes".into()),
            ("interval_ms", "1".into()),
        ],
    );
}

#[test]
fn upgrade_over_itself_under_1ms_load_loses_nothing() {
    let c = enforcing("upgrade");
    let pid = main_pid(&c);
    let out = c.install_deb(&deb());
    assert!(
        out.status.success(),
        "dpkg -i over the installed package failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let new = wait_restarted(&c, pid, Duration::from_secs(30));
    let counts = finish_load(&c);
    assert_nothing_lost(&counts, 100);
    assert_eq!(
        status(&c)["mode"],
        "enforce",
        "the upgrade kept the admin's config"
    );
    load_figures(
        "systemd_upgrade",
        &counts,
        &[
            ("restarted", (new != pid).to_string()),
            ("interval_ms", "1".into()),
        ],
    );
}

#[test]
fn purge_leaves_no_pins_links_drop_ins_or_binary() {
    let c = protecting_probe("purge");
    assert_eq!(
        start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1),
        ENFORCED_ONCE
    );
    assert_eq!(ours_attached(&c).len(), 4, "{:#?}", ours_attached(&c));
    assert!(c.path(&drop_in(PROBE_UNIT)).exists());
    let out = c.run("dpkg --purge portcullis 2>&1");
    assert!(
        out.status.success(),
        "dpkg --purge failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let left = c.must(
        "ls -d /sys/fs/bpf/portcullis /etc/portcullis /run/portcullis \
         /etc/systemd/system/*.d/*portcullis* /etc/systemd/system/portcullis.service* \
         /etc/systemd/system/*/portcullis.service 2>/dev/null; true",
    );
    assert_eq!(left.trim(), "", "left behind after purge:\n{left}");
    assert!(
        !c.run("command -v portcullis").status.success(),
        "portcullis is still installed"
    );
    let attached = ours_attached(&c);
    assert!(
        attached.is_empty(),
        "programs still attached after purge:\n{attached:#?}"
    );
    // Nothing enforces any more, and the unit starts without portcullis.
    let after = start_probes(&c, &format!("systemctl restart {PROBE_UNIT}"), 1);
    assert_eq!((after.failed, after.denied_passed), (0, 1), "{after:?}");
    figures(
        "systemd_purge",
        &[
            ("pins_left", "0".into()),
            ("links_left", "0".into()),
            ("drop_ins_left", "0".into()),
            ("unit_starts_after_purge", "yes".into()),
        ],
    );
}

/// A start of [`PROBE_UNIT`] that ran enforced: allowed connect worked, denied refused.
const ENFORCED_ONCE: Probes = Probes {
    failed: 0,
    ran: 1,
    allowed_ok: 1,
    denied_passed: 0,
};

/// The end of [`PROBE_UNIT`]'s link pin names (a regex): `unit:` and the name with its
/// dots escaped, since bpffs refuses names with dots.
const PROBE_LINKS: &str = "-unit:fakemail%2eservice$";

/// The drop-in portcullis writes for a unit scope.
fn drop_in(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}.d/50-portcullis.conf")
}

/// Installs, starts the listeners, protects [`PROBE_UNIT`] by name in enforce mode
/// before its unit file exists (an unknown unit is accepted; `check` names it), then
/// writes the unit file. The unit does not run yet.
fn protecting_probe(name: &str) -> Container {
    let c = installed(name);
    listeners(&c);
    enforce_config(&c, PROBE_UNIT);
    let check = c.must("portcullis check --config /etc/portcullis/portcullis.toml");
    assert!(
        check.contains(&format!(
            "note: scope {PROBE_UNIT}: systemd knows no unit of that name"
        )),
        "check does not name the unknown unit:\n{check}"
    );
    c.must("systemctl reload portcullis.service");
    assert!(
        c.path(&drop_in(PROBE_UNIT)).exists(),
        "no drop-in for {PROBE_UNIT}"
    );
    install_probe_unit(&c);
    c
}

/// Asserts that every one of `n` starts ran enforced, and prints the figures.
fn assert_all_enforced(test: &str, p: &Probes, n: u32) {
    figures(
        test,
        &[
            ("starts", n.to_string()),
            ("failed", p.failed.to_string()),
            ("allowed_ok", p.allowed_ok.to_string()),
            ("denied_passed", p.denied_passed.to_string()),
        ],
    );
    assert_eq!(
        *p,
        Probes {
            failed: 0,
            ran: n,
            allowed_ok: n,
            denied_passed: 0
        },
        "{test}: not every start ran enforced"
    );
}

#[test]
fn unit_scope_holds_on_100_restarts_and_5_kill_then_start_with_the_agent_running() {
    let c = protecting_probe("restarts");
    // The first start of a unit that did not exist when it was put in the scope.
    assert_eq!(
        start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1),
        ENFORCED_ONCE
    );
    let restarts = start_probes(&c, &format!("systemctl restart {PROBE_UNIT}"), 100);
    assert_all_enforced("systemd_unit_restarts_agent_running", &restarts, 100);
    // The main process killed, then a start (what systemd 252 does not re-apply
    // BPFProgram= for).
    let killed = start_probes(
        &c,
        &format!(
            "systemctl kill -s SIGKILL {PROBE_UNIT}; \
             while systemctl is-active --quiet {PROBE_UNIT}; do :; done; \
             systemctl start {PROBE_UNIT}"
        ),
        5,
    );
    assert_all_enforced("systemd_unit_kill_then_start", &killed, 5);
    // The links of earlier cgroups do not pile up: one set, on the current cgroup.
    let links = c.must(&format!(
        "ls /sys/fs/bpf/portcullis/links | grep -c -- '{PROBE_LINKS}'"
    ));
    assert_eq!(links.trim(), "4", "unit links left behind");
}

#[test]
fn unit_scope_holds_while_the_agent_is_stopped_or_killed() {
    let c = protecting_probe("agentdown");
    assert_eq!(
        start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1),
        ENFORCED_ONCE
    );
    c.must("systemctl stop portcullis.service");
    let stopped = start_probes(&c, &format!("systemctl restart {PROBE_UNIT}"), 20);
    assert_all_enforced("systemd_unit_restarts_agent_stopped", &stopped, 20);
    assert!(
        !c.run("systemctl is-active --quiet portcullis.service")
            .status
            .success(),
        "the restarts started the agent: the test proved nothing"
    );

    c.must("systemctl start portcullis.service");
    c.must("systemctl kill -s SIGKILL portcullis.service");
    let killed = start_probes(&c, &format!("systemctl restart {PROBE_UNIT}"), 20);
    assert_all_enforced("systemd_unit_restarts_agent_killed", &killed, 20);
}

#[test]
fn at_boot_a_unit_started_before_the_agent_does_not_run_unprotected() {
    let c = protecting_probe("boot");
    assert_eq!(
        start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1),
        ENFORCED_ONCE
    );
    // What a reboot takes away: the running units, the pins (bpffs lives in memory) and
    // /run. The drop-in is in /etc and stays, as it does across a real reboot.
    c.must(&format!("systemctl stop {PROBE_UNIT} portcullis.service"));
    c.must("rm -rf /sys/fs/bpf/portcullis /run/portcullis");
    assert!(c.path(&drop_in(PROBE_UNIT)).exists());

    // The unit first, alone: it must not start at all.
    let early = start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1);
    assert_eq!(
        (early.failed, early.ran),
        (1, 0),
        "the unit started without its programs: {early:?}"
    );
    let journal = c.journal(PROBE_UNIT);
    assert!(
        journal.contains("is not pinned"),
        "the failed start does not say why:\n{journal}"
    );
    // Both in one transaction, as at boot when a target pulls both in: the unit waits
    // for the agent (the drop-in's After=). (`systemctl start a b` would not do: it
    // queues two transactions, and the first may run before the second exists.)
    c.write(
        "/etc/systemd/system/boot-sim.target",
        &format!("[Unit]\nWants={PROBE_UNIT} portcullis.service\n"),
    );
    c.must("systemctl daemon-reload");
    let boot = start_probes(&c, "systemctl start boot-sim.target", 1);
    assert_eq!(boot, ENFORCED_ONCE, "the unit started with the agent");
    figures(
        "systemd_unit_boot",
        &[
            ("started_before_agent", "failed".into()),
            ("started_with_agent", "enforced".into()),
        ],
    );
}

#[test]
fn a_running_unit_is_attached_at_once_and_leaving_the_scope_removes_everything() {
    let c = installed("enterleave");
    listeners(&c);
    install_probe_unit(&c);
    // Running before it is in the scope: the packaged config only audits.
    let before = start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1);
    assert_eq!(before.denied_passed, 1, "{before:?}");
    let cgroup = format!("/sys/fs/cgroup/system.slice/{PROBE_UNIT}");

    enforce_config(&c, PROBE_UNIT);
    c.must("systemctl reload portcullis.service");
    let on_unit = |c: &Container| ours_attached_to(c, &cgroup);
    assert_eq!(on_unit(&c), 4, "the running instance is not attached");
    assert_eq!(
        start_probes(&c, &format!("systemctl restart {PROBE_UNIT}"), 1),
        ENFORCED_ONCE
    );

    // Out of the scope again: drop-in, links and programs go; the next start is free.
    enforce_config(&c, SLICE);
    c.must("systemctl reload portcullis.service");
    assert!(!c.path(&drop_in(PROBE_UNIT)).exists(), "the drop-in stayed");
    assert_eq!(on_unit(&c), 0, "programs stayed on the unit's cgroup");
    let unit_links = c.run(&format!(
        "ls /sys/fs/bpf/portcullis/links | grep -- '{PROBE_LINKS}'"
    ));
    assert!(
        !unit_links.status.success(),
        "unit links stayed: {}",
        String::from_utf8_lossy(&unit_links.stdout)
    );
    let after = start_probes(&c, &format!("systemctl restart {PROBE_UNIT}"), 1);
    assert_eq!((after.failed, after.denied_passed), (0, 1), "{after:?}");
    figures(
        "systemd_unit_enter_leave",
        &[
            ("running_instance_attached", "4".into()),
            ("after_leaving", "nothing left".into()),
        ],
    );
}
