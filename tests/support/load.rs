//! The verdict over the counts of `net.py load` (an allowed and a denied connect() every
//! interval): the same for the load client in a Lab (tests/service.rs) and in a systemd
//! container (tests/systemd.rs).

use crate::figures;

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
