//! The Debian package on a real systemd host (issue 18): Debian 12 with systemd 252 as
//! PID 1 in systemd-nspawn ([`Container`]). Everything goes through dpkg, systemctl and
//! journalctl inside the container: install (enabled, active, `status` works), reload
//! (a good config applied, a bad one rejected with file:line in the journal), SIGKILL
//! (restarted by systemd, pins adopted), SIGSTOP (the watchdog restarts it, enforcement
//! never stops), upgrade under a 1 ms load, purge (nothing left).

use std::time::Duration;

use portcullis_common::maps::programs;
use portcullis_tests::{
    figures,
    nspawn::{Container, deb},
    workload::{
        SLICE, assert_nothing_lost, connect_once, enforce_config, finish_load, listeners,
        load_figures, start_load,
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

/// The agent's programs attached anywhere in the container's cgroup tree (systemd's own
/// `sd_*` programs left out), as bpftool lists them.
fn ours_attached(c: &Container) -> Vec<String> {
    let ours = [
        programs::INGRESS,
        programs::EGRESS,
        programs::CONNECT4,
        programs::CONNECT6,
    ];
    c.must("bpftool cgroup tree /sys/fs/cgroup")
        .lines()
        .filter(|l| l.split_whitespace().any(|w| ours.contains(&w)))
        .map(str::to_owned)
        .collect()
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
    let c = installed("purge");
    listeners(&c);
    enforce_config(&c, SLICE);
    c.must("systemctl reload portcullis.service");
    assert_eq!(connect_once(&c, 8080), "ok");
    assert_eq!(
        connect_once(&c, 8081),
        "EPERM",
        "the denied port is enforced"
    );
    assert!(links(&c) > 0);
    assert_eq!(ours_attached(&c).len(), 4, "{:#?}", ours_attached(&c));
    let out = c.run("dpkg --purge portcullis 2>&1");
    assert!(
        out.status.success(),
        "dpkg --purge failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let left = c.must(
        "ls -d /sys/fs/bpf/portcullis /etc/portcullis /run/portcullis \
         /etc/systemd/system/*.d/portcullis* /etc/systemd/system/portcullis.service* \
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
    // Nothing enforces any more: the denied port is reachable from the workload's unit.
    assert_eq!(connect_once(&c, 8081), "ok", "still enforced after purge");
    figures(
        "systemd_purge",
        &[
            ("pins_left", "0".into()),
            ("links_left", "0".into()),
            ("drop_ins_left", "0".into()),
        ],
    );
}
