//! A protected workload inside a [`Container`]: listeners on the container's loopback
//! (8080, which [`crate::web_out`] opens, and 8081, which no rule opens) run as units of
//! their own (not enforced); a client runs as `fakemail.service` in [`SLICE`], and tries
//! both ports. A unit that holds the slice keeps its cgroup (and the programs attached
//! to it) alive between runs of the client.
//!
//! The load client is `net.py load`, the same one the service tests run in a Lab: every
//! interval it connects to the allowed and to the denied port and counts what happened.

use std::time::Duration;

use crate::{figures, nspawn::Container, web_out};

/// The protected unit.
pub const UNIT: &str = "fakemail.service";

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

/// Starts the load client as [`UNIT`]: an allowed and a denied connect() every
/// `interval_ms` until [`finish_load`].
pub fn start_load(c: &Container, interval_ms: u32) {
    let _ = c.run("rm -f /root/load.stop /root/load.json");
    c.must(&format!(
        "systemd-run --quiet --unit={UNIT} --slice={SLICE} python3 {NET_PY} load 127.0.0.1 8080 8081 \
         {interval_ms} /root/load.stop /root/load.json"
    ));
}

/// One connect() to `port` from a run of [`UNIT`] in [`SLICE`]: net.py's verdict
/// (`ok`, `EPERM`, ...).
pub fn connect_once(c: &Container, port: u16) -> String {
    c.must(&format!(
        "systemd-run --quiet --wait --pipe --unit={UNIT} --slice={SLICE} \
         python3 {NET_PY} connect 127.0.0.1 {port}"
    ))
    .trim()
    .to_owned()
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

/// The load client's verdict: no allowed connection failed, no denied one got through,
/// and there was enough load (`min` allowed connections) for that to mean something.
pub fn assert_nothing_lost(counts: &serde_json::Value, min: u64) {
    assert_eq!(
        counts["allowed_failed"], 0,
        "allowed connections failed: {counts}"
    );
    assert_eq!(
        counts["denied_ok"], 0,
        "denied connections got through: {counts}"
    );
    assert!(
        counts["allowed_ok"].as_u64().unwrap_or(0) >= min,
        "too little load: {counts}"
    );
}

/// The reliability summary line of a load run (`RELIABILITY: ...`).
pub fn load_figures(test: &str, counts: &serde_json::Value, extra: &[(&str, String)]) {
    let n = |k: &str| counts[k].as_u64().unwrap_or(0);
    let mut fields = extra.to_vec();
    fields.extend([
        (
            "allowed_tried",
            (n("allowed_ok") + n("allowed_failed")).to_string(),
        ),
        ("allowed_failed", n("allowed_failed").to_string()),
        (
            "denied_tried",
            (n("denied_blocked") + n("denied_ok")).to_string(),
        ),
        ("denied_passed", n("denied_ok").to_string()),
    ]);
    figures(test, &fields);
}
