//! The Debian package on a real systemd host: Debian 12 with systemd 252 as
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
//!
//! What a unit scope names, with Debian's real Postfix (postfix.service is a oneshot
//! wrapper, the daemon runs in postfix@-.service): the wrapper, a typo and a socket-
//! activated unit refused by `check` and `run` with the fix; postfix@-.service held over
//! restarts (a relay to a denied port refused, to an allowed one reached); a template with
//! two instances; the unit's own ExecStartPre= running attached, an override that resets
//! ExecCondition= reported (`status --json` units[].protected from the kernel) and
//! repaired; the agent disabled across a simulated reboot under both `unpinned_start`
//! settings, and `portcullis detach` as the way out.

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

/// Installs, starts the listeners, writes [`PROBE_UNIT`]'s unit file and protects it by
/// name in enforce mode (`check` accepts it: systemd knows it). The unit does not run yet.
fn protecting_probe(name: &str) -> Container {
    let c = installed(name);
    listeners(&c);
    install_probe_unit(&c);
    enforce_config(&c, PROBE_UNIT);
    c.must("portcullis check --config /etc/portcullis/portcullis.toml");
    c.must("systemctl reload portcullis.service");
    assert!(
        c.path(&drop_in(PROBE_UNIT)).exists(),
        "no drop-in for {PROBE_UNIT}"
    );
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

/// `portcullis check` of the site config inside the container (not checked).
const CHECK: &str = "portcullis check --config /etc/portcullis/portcullis.toml";

/// Per-unit protection from `status --json`: the entry of `unit`.
fn unit_status(c: &Container, unit: &str) -> Value {
    let s = status(c);
    s["units"]
        .as_array()
        .and_then(|units| units.iter().find(|u| u["unit"] == unit))
        .cloned()
        .unwrap_or_else(|| panic!("status --json has no units entry for {unit}: {s:#}"))
}

/// Starts Debian's real Postfix: postfix.service (a oneshot running /bin/true) pulls in
/// postfix@-.service, which runs the daemon. The root filesystem has it installed, not
/// enabled.
fn start_postfix(c: &Container) {
    c.must("systemctl start postfix.service");
    c.wait_for(
        "postfix@-.service active",
        "systemctl is-active --quiet postfix@-.service",
        Duration::from_secs(30),
    );
}

#[test]
fn postfix_service_is_refused_with_the_unit_that_runs_the_daemon_and_typos_are_caught() {
    let c = installed("postfixwrap");
    listeners(&c);
    start_postfix(&c);
    let before = status(&c);

    // The wrapper unit: a oneshot whose ExecStart is /bin/true.
    enforce_config(&c, "postfix.service");
    let check = c.run(CHECK);
    let err = portcullis_tests::stderr(&check);
    assert_eq!(
        check.status.code(),
        Some(3),
        "check accepted postfix.service: {err}"
    );
    for want in [
        "/etc/portcullis/portcullis.toml:3",
        "\"postfix.service\" protects nothing",
        "ExecStart=/bin/true",
        "scope = [\"postfix@-.service\"]",
        "scope = [\"postfix@.service\"]",
    ] {
        assert!(err.contains(want), "check's error lacks {want:?}:\n{err}");
    }
    // `run` (here: the agent's reload) refuses it the same way; the policy stays.
    assert!(
        !c.run("systemctl reload portcullis.service")
            .status
            .success(),
        "the agent accepted postfix.service"
    );
    assert!(
        c.journal("portcullis.service").contains("protects nothing"),
        "the agent's journal does not say why"
    );
    assert_eq!(status(&c)["policy_version"], before["policy_version"]);
    assert!(!c.path(&drop_in("postfix.service")).exists());

    // A typo of a unit name: an error with the nearest unit.
    enforce_config(&c, "postfx.service");
    let typo = c.run(CHECK);
    let err = portcullis_tests::stderr(&typo);
    assert_eq!(typo.status.code(), Some(3), "check accepted a typo: {err}");
    assert!(
        err.contains("systemd knows no unit") && err.contains("did you mean \"postfix.service\""),
        "{err}"
    );

    // A cgroup path that does not exist: accepted, with the unit that runs the daemon.
    enforce_config(&c, "system.slice/postfix.service");
    let out = c.must(CHECK);
    assert!(
        out.contains("warning: scope \"system.slice/postfix.service\": no such cgroup")
            && out.contains(
                "\"postfix@-.service\" (cgroup system.slice/system-postfix.slice/postfix@-.service)"
            ),
        "{out}"
    );
    figures(
        "systemd_postfix_wrapper",
        &[
            ("postfix_service", "refused, exit 3".into()),
            ("hint", "postfix@-.service".into()),
            ("typo", "refused with did-you-mean".into()),
        ],
    );
}

/// Queues one mail to a remote domain; Postfix relays it to its relayhost.
fn send_mail(c: &Container) {
    c.must(
        "printf 'Subject: t\\n\\nt\\n' | /usr/sbin/sendmail -f root@localhost someone@example.org",
    );
}

/// Lines of Postfix's smtp client in the journal since boot.
fn smtp_log(c: &Container) -> String {
    c.must("journalctl -b --no-pager -o cat -t postfix/smtp")
}

/// Waits until the smtp client logged `n` lines containing `what`.
fn wait_smtp(c: &Container, what: &str, n: usize) {
    c.wait_for(
        &format!("{n} smtp log lines with {what:?}"),
        &format!(
            "postqueue -f; test $(journalctl -b --no-pager -o cat -t postfix/smtp | grep -cF -- '{what}') -ge {n}"
        ),
        // A first delivery after a restart can wait for the queue manager's scan.
        Duration::from_secs(60),
    );
}

#[test]
fn postfix_instance_scope_holds_over_restarts_and_refuses_a_relay_to_a_denied_port() {
    let c = installed("postfixrelay");
    listeners(&c);
    start_postfix(&c);
    // Relay everything to a port the lab profile does not open (8081 listens).
    c.must("postconf -e 'relayhost = [127.0.0.1]:8081' && systemctl reload postfix.service");
    enforce_config(&c, "postfix@-.service");
    c.must(CHECK);
    c.must("systemctl reload portcullis.service");
    let cgroup = "/sys/fs/cgroup/system.slice/system-postfix.slice/postfix@-.service";
    assert_eq!(
        ours_attached_to(&c, cgroup),
        4,
        "the running postfix@-.service is not attached at once"
    );
    let denied_line = "127.0.0.1[127.0.0.1]:8081: Operation not permitted";
    const RESTARTS: usize = 5;
    for i in 1..=RESTARTS {
        c.must("systemctl restart postfix@-.service");
        let u = unit_status(&c, "postfix@-.service");
        assert_eq!(u["protected"], true, "restart {i}: {u:#}");
        assert_eq!(u["programs_attached"], 4, "restart {i}: {u:#}");
        send_mail(&c);
        wait_smtp(&c, denied_line, i);
    }
    let log = smtp_log(&c);
    assert!(
        !log.contains("8081: Connection refused") && !log.contains("8081 while receiving"),
        "a relay to the denied port got through:\n{log}"
    );
    let s = status(&c);
    let denied_out = s["denied_ports"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["port"] == 8081 && p["direction"] == "out");
    assert!(denied_out, "no denied-port counter for 8081 out: {s:#}");

    // The allowed outcome: the same relay to the port the profile opens reaches it (the
    // listener closes the connection before any greeting).
    c.must("postconf -e 'relayhost = [127.0.0.1]:8080' && systemctl reload postfix.service");
    send_mail(&c);
    wait_smtp(&c, "while receiving the initial server greeting", 1);
    figures(
        "systemd_postfix_instance",
        &[
            ("restarts", RESTARTS.to_string()),
            ("denied_relays_refused", format!("{RESTARTS}/{RESTARTS}")),
            ("allowed_relay", "reached".into()),
        ],
    );
}

/// A template unit whose instances each run the probe of [`PROBE_UNIT`].
const TEMPLATE: &str = "fakeprobe@.service";

fn install_template(c: &Container) {
    c.write(
        &format!("/etc/systemd/system/{TEMPLATE}"),
        "[Unit]\nDescription=probe instance %i\nStartLimitIntervalSec=0\n\n[Service]\nType=notify\n\
         ExecStart=/usr/bin/python3 /root/net.py probe 127.0.0.1 8080 8081 /var/log/fakemail-probe.log\n",
    );
    c.must("systemctl daemon-reload");
}

#[test]
fn a_template_scope_protects_the_running_instance_at_once_and_every_new_one() {
    let c = installed("template");
    listeners(&c);
    install_template(&c);
    // Instance a runs before the scope names the template.
    let before = start_probes(&c, "systemctl start fakeprobe@a.service", 1);
    assert_eq!(before.denied_passed, 1, "{before:?}");
    enforce_config(&c, TEMPLATE);
    c.must(CHECK);
    c.must("systemctl reload portcullis.service");
    assert_eq!(
        ours_attached_to(
            &c,
            "/sys/fs/cgroup/system.slice/system-fakeprobe.slice/fakeprobe@a.service"
        ),
        4,
        "the running instance is not attached at once"
    );
    assert_eq!(unit_status(&c, "fakeprobe@a.service")["protected"], true);
    // A new instance, and a restart of the first: both enforced from their first packet.
    assert_eq!(
        start_probes(&c, "systemctl start fakeprobe@b.service", 1),
        ENFORCED_ONCE
    );
    let restarts = start_probes(
        &c,
        "systemctl restart fakeprobe@a.service fakeprobe@b.service",
        5,
    );
    assert_eq!(
        (
            restarts.failed,
            restarts.ran,
            restarts.allowed_ok,
            restarts.denied_passed
        ),
        (0, 10, 10, 0),
        "{restarts:?}"
    );
    for unit in ["fakeprobe@a.service", "fakeprobe@b.service"] {
        let u = unit_status(&c, unit);
        assert_eq!(
            (u["protected"].clone(), u["scope"].clone()),
            (Value::from(true), Value::from(TEMPLATE)),
            "{u:#}"
        );
    }
    figures(
        "systemd_template",
        &[
            ("running_instance_attached", "at once".into()),
            ("instance_starts_enforced", "11/11".into()),
        ],
    );
}

#[test]
fn the_units_own_pre_commands_run_attached_and_a_reset_exec_condition_is_reported_and_repaired() {
    let c = protecting_probe("override");
    // The unit's own ExecStartPre= tries the denied port: it runs after our attach.
    c.write(
        &format!("/etc/systemd/system/{PROBE_UNIT}.d/10-pre.conf"),
        "[Service]\nExecStartPre=/bin/sh -c 'python3 /root/net.py connect 127.0.0.1 8081 > /run/pre.txt'\n",
    );
    c.must("systemctl daemon-reload");
    assert_eq!(
        start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1),
        ENFORCED_ONCE
    );
    let pre = c.must("cat /run/pre.txt");
    assert_eq!(
        pre.trim(),
        "EPERM",
        "the unit's own ExecStartPre ran unprotected"
    );

    // `systemctl edit` with an empty ExecStartPre= drops the unit's pre-commands, not ours.
    c.write(
        &format!("/etc/systemd/system/{PROBE_UNIT}.d/override.conf"),
        "[Service]\nExecStartPre=\n",
    );
    c.must("systemctl daemon-reload");
    assert_eq!(
        start_probes(&c, &format!("systemctl restart {PROBE_UNIT}"), 1),
        ENFORCED_ONCE
    );
    assert_eq!(unit_status(&c, PROBE_UNIT)["protected"], true);

    // One that resets ExecCondition= removes our attach: detected, and the running unit
    // is attached again by the agent.
    c.write(
        &format!("/etc/systemd/system/{PROBE_UNIT}.d/override.conf"),
        "[Service]\nExecCondition=\n",
    );
    c.must("systemctl daemon-reload");
    let u = unit_status(&c, PROBE_UNIT);
    assert_eq!(u["protected"], false, "{u:#}");
    assert_eq!(u["attach_on_start"], false, "{u:#}");
    assert!(
        u["reason"]
            .as_str()
            .unwrap_or("")
            .contains("ExecCondition="),
        "{u:#}"
    );
    let text = c.must("portcullis status");
    assert!(
        text.contains(&format!("error: unit {PROBE_UNIT}: NOT PROTECTED")),
        "{text}"
    );
    // Its next start runs without our attach (what the admin's override did) ...
    let unprotected = start_probes(&c, &format!("systemctl restart {PROBE_UNIT}"), 1);
    assert_eq!(unprotected.denied_passed, 1, "{unprotected:?}");
    // ... and the agent finds the bare cgroup, logs it and attaches it again.
    c.wait_for(
        "the agent re-attached the unit",
        &format!(
            "portcullis status --json | python3 -c 'import json,sys; u=[u for u in json.load(sys.stdin)[\"units\"] if u[\"unit\"]==\"{PROBE_UNIT}\"][0]; sys.exit(u[\"programs_attached\"]!=4)'"
        ),
        Duration::from_secs(20),
    );
    let journal = c.journal("portcullis.service");
    assert!(
        journal.contains(&format!("{PROBE_UNIT} is not protected")) && journal.contains("again"),
        "{journal}"
    );
    // Removing the override makes it protected again.
    c.must(&format!(
        "rm /etc/systemd/system/{PROBE_UNIT}.d/override.conf && systemctl daemon-reload"
    ));
    assert_eq!(unit_status(&c, PROBE_UNIT)["protected"], true);
    figures(
        "systemd_unit_override",
        &[
            ("own_exec_start_pre", "ran attached (EPERM)".into()),
            ("empty_exec_start_pre", "still protected".into()),
            ("empty_exec_condition", "reported, re-attached".into()),
        ],
    );
}

/// Stops the probe unit and the agent, disables the agent and takes away what a reboot
/// takes (pins, /run); the drop-ins in /etc stay.
fn reboot_without_agent(c: &Container) {
    c.must(&format!(
        "systemctl stop {PROBE_UNIT} portcullis.service && systemctl disable portcullis.service"
    ));
    c.must("rm -rf /sys/fs/bpf/portcullis /run/portcullis");
    assert!(c.path(&drop_in(PROBE_UNIT)).exists());
}

#[test]
fn with_the_agent_disabled_a_unit_is_refused_by_default_or_starts_unprotected_and_detach_is_the_way_out()
 {
    // Default (refuse): the unit does not start; `portcullis detach` lets it.
    let c = protecting_probe("noagent");
    reboot_without_agent(&c);
    let refused = start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1);
    assert_eq!((refused.failed, refused.ran), (1, 0), "{refused:?}");
    assert!(c.journal(PROBE_UNIT).contains("is not pinned"));
    let detach = c.must("portcullis detach");
    assert!(
        !c.path(&drop_in(PROBE_UNIT)).exists(),
        "detach left the drop-in: {detach}"
    );
    let freed = start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1);
    assert_eq!((freed.failed, freed.denied_passed), (0, 1), "{freed:?}");

    // unpinned_start = "unprotected": the unit starts, loudly, and status tells once the
    // agent runs again (which attaches it).
    let c = protecting_probe("noagentopen");
    let config = c.must("cat /etc/portcullis/portcullis.toml");
    c.write(
        "/etc/portcullis/portcullis.toml",
        &format!("{config}unpinned_start = \"unprotected\"\n"),
    );
    c.must("systemctl reload portcullis.service");
    assert!(
        c.must(&format!("cat {}", drop_in(PROBE_UNIT)))
            .contains("--unpinned unprotected"),
        "the drop-in does not carry the setting"
    );
    reboot_without_agent(&c);
    let open = start_probes(&c, &format!("systemctl start {PROBE_UNIT}"), 1);
    assert_eq!((open.failed, open.denied_passed), (0, 1), "{open:?}");
    let journal = c.journal(PROBE_UNIT);
    assert!(journal.contains("STARTS UNPROTECTED"), "{journal}");
    c.must("systemctl start portcullis.service");
    wait_active(&c);
    let u = unit_status(&c, PROBE_UNIT);
    assert_eq!(
        u["protected"], true,
        "the agent did not attach the running unit: {u:#}"
    );
    figures(
        "systemd_unit_without_agent",
        &[
            ("refuse", "unit failed; detach let it start".into()),
            (
                "unprotected",
                "started, journal error; agent attached it".into(),
            ),
        ],
    );
}

#[test]
fn a_socket_activated_unit_is_refused_with_the_reason_and_the_alternative() {
    let c = installed("socket");
    c.write(
        "/etc/systemd/system/sockdemo.socket",
        "[Socket]\nListenStream=127.0.0.1:7777\n",
    );
    c.write(
        "/etc/systemd/system/sockdemo.service",
        "[Service]\nExecStart=/usr/bin/python3 -c 'import socket,time; s=socket.socket(fileno=3); time.sleep(3600)'\n",
    );
    c.must("systemctl daemon-reload && systemctl start sockdemo.socket");
    enforce_config(&c, "sockdemo.service");
    let check = c.run(CHECK);
    let err = portcullis_tests::stderr(&check);
    assert_eq!(check.status.code(), Some(3), "check accepted it: {err}");
    assert!(
        err.contains("started by socket activation (sockdemo.socket)")
            && err.contains("PID 1's cgroup")
            && err.contains("systemctl disable --now sockdemo.socket"),
        "{err}"
    );
    assert!(
        !c.run("systemctl reload portcullis.service")
            .status
            .success()
    );
    // Without its socket unit it is a plain service: accepted.
    c.must("systemctl stop sockdemo.socket && rm /etc/systemd/system/sockdemo.socket && systemctl daemon-reload");
    c.must(CHECK);
    figures(
        "systemd_socket_activation",
        &[("socket_activated_scope", "refused, exit 3".into())],
    );
}
