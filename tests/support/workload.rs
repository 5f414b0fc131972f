//! A protected workload inside a [`Container`]: listeners on the container's loopback
//! (8080, which [`crate::web_out`] opens, and 8081, which no rule opens) run as units of
//! their own (not enforced). Two kinds of client try both ports:
//! - a load client (`net.py load`) as the transient [`LOAD_UNIT`] in [`SLICE`], for the
//!   cgroup-path scope `protected.slice`; a unit that holds the slice keeps its cgroup
//!   (and the programs attached to it) alive between runs of the client;
//! - [`PROBE_UNIT`], a real service (unit file, `Type=notify`) whose first act on every
//!   start is a connect() to the denied and one to the allowed port, for unit scopes.
//!
//! The load client is `net.py load`, the same one the service tests run in a Lab: every
//! interval it connects to the allowed and to the denied port and counts what happened.

use std::time::Duration;

use crate::{nspawn::Container, web_out};

/// The transient unit the load client runs as.
pub const LOAD_UNIT: &str = "mailload.service";

/// The protected service of the unit-scope tests.
pub const PROBE_UNIT: &str = "fakemail.service";

/// Where [`PROBE_UNIT`] appends one line per start.
const PROBE_LOG: &str = "/var/log/fakemail-probe.log";

/// The slice the protected unit runs in; as a scope, the cgroup `protected.slice`.
pub const SLICE: &str = "protected.slice";

/// Where net.py is inside the container.
const NET_PY: &str = "/root/net.py";

/// Copies net.py in, starts the two listeners and the unit that holds [`SLICE`]; returns
/// once both listeners accept.
pub fn listeners(c: &Container) {
    c.copy_in(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("support/net.py"),
        "/root",
    );
    for port in [8080, 8081] {
        c.must(&format!(
            "systemd-run --quiet --unit=listen{port} python3 {NET_PY} listen {port} --host 127.0.0.1"
        ));
    }
    c.must(&format!(
        "systemd-run --quiet --unit=slice-holder --slice={SLICE} sleep infinity"
    ));
    for port in [8080, 8081] {
        c.wait_for(
            &format!("a listener on 127.0.0.1:{port}"),
            &format!("test \"$(python3 {NET_PY} connect 127.0.0.1 {port})\" = ok"),
            Duration::from_secs(10),
        );
    }
}

/// A site config protecting `scope` in enforce mode with the lab profile (outbound
/// 8080 open, nothing else; in /opt (the unit cannot see /root), not among the package's files); loopback enforced, since the workload's traffic stays on
/// the container's loopback. Written to /etc/portcullis (the package's conffile).
pub fn enforce_config(c: &Container, scope: &str) {
    c.write(
        "/opt/lab-profile.toml",
        &format!(
            "slug = \"lab\"\nproduct = \"Lab\"\nvendor = \"portcullis tests\"\nsource = \"tests\"\n{}",
            web_out()
        ),
    );
    c.write(
        "/etc/portcullis/portcullis.toml",
        &format!(
            "profile = \"/opt/lab-profile.toml\"\nmode = \"enforce\"\nscope = [\"{scope}\"]\n\
             failsafe = false\nloopback = \"enforce\"\nevents_per_sec = 1000\n"
        ),
    );
}

/// Starts the load client as [`LOAD_UNIT`]: an allowed and a denied connect() every
/// `interval_ms` until [`finish_load`].
pub fn start_load(c: &Container, interval_ms: u32) {
    let _ = c.run("rm -f /root/load.stop /root/load.json");
    c.must(&format!(
        "systemd-run --quiet --unit={LOAD_UNIT} --slice={SLICE} python3 {NET_PY} load 127.0.0.1 8080 8081 \
         {interval_ms} /root/load.stop /root/load.json"
    ));
}

/// Stops the load client and returns its counts.
pub fn finish_load(c: &Container) -> serde_json::Value {
    c.must("touch /root/load.stop");
    let text = c.wait_for(
        "the load client's result",
        "cat /root/load.json",
        Duration::from_secs(15),
    );
    serde_json::from_str(&text).expect("load result JSON")
}

/// Writes [`PROBE_UNIT`]'s unit file (not started). `StartLimitIntervalSec=0`: the tests
/// restart it more often than systemd's default start limit allows.
pub fn install_probe_unit(c: &Container) {
    c.write(
        &format!("/etc/systemd/system/{PROBE_UNIT}"),
        &format!(
            "[Unit]\nDescription=a mail service whose first act is a connect() to a denied and to an allowed port\n\
             StartLimitIntervalSec=0\n\n[Service]\nType=notify\n\
             ExecStart=/usr/bin/python3 {NET_PY} probe 127.0.0.1 8080 8081 {PROBE_LOG}\n"
        ),
    );
    c.must("systemctl daemon-reload");
}

/// What the starts of [`PROBE_UNIT`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Probes {
    /// Starts systemd reported as failed (the unit did not run).
    pub failed: u32,
    /// Starts whose process ran (one log line each).
    pub ran: u32,
    /// ... whose connect() to the allowed port worked.
    pub allowed_ok: u32,
    /// ... whose connect() to the denied port got through.
    pub denied_passed: u32,
}

/// Runs the shell command `each` `n` times inside the container (one shell, so the loop
/// goes at systemd's pace, not nsenter's), counting the runs that fail, and reads what
/// the starts of [`PROBE_UNIT`] saw meanwhile.
pub fn start_probes(c: &Container, each: &str, n: u32) -> Probes {
    c.must(&format!("rm -f {PROBE_LOG}"));
    let out = c.must(&format!(
        "failed=0; for i in $(seq {n}); do {{ {each}; }} 2>/dev/null || failed=$((failed+1)); done; echo $failed"
    ));
    let failed = out.trim().parse().expect("a count");
    let log = c.run(&format!("cat {PROBE_LOG}"));
    let text = String::from_utf8_lossy(&log.stdout);
    let mut p = Probes {
        failed,
        ..Probes::default()
    };
    for line in text.lines() {
        p.ran += 1;
        p.allowed_ok += u32::from(line.contains("allowed=ok"));
        p.denied_passed += u32::from(line.contains("denied=ok"));
    }
    p
}
