//! Reading `portcullis status --json`: a rule's counters, the deny totals and the
//! denied-ports table, each panicking with the whole status when a field is missing; and
//! the ports of a `report --json`.

use serde_json::Value;

/// Field of a rule from `status --json`.
pub fn rule_field(status: &Value, id: &str, field: &str) -> u64 {
    status["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no rule {id:?} in status: {status:#}"))[field]
        .as_u64()
        .unwrap_or_else(|| panic!("rule {id:?} has no number {field:?}: {status:#}"))
}

/// A rule total from `status --json`.
pub fn rule_packets(status: &Value, id: &str) -> u64 {
    rule_field(status, id, "packets")
}

/// Deny (or would-deny) packets and bytes for a direction and reason.
pub fn denies(status: &Value, direction: &str, reason: &str, audit: bool) -> (u64, u64) {
    status["denies"]
        .as_array()
        .expect("denies")
        .iter()
        .find(|d| d["direction"] == direction && d["reason"] == reason && d["audit"] == audit)
        .map_or((0, 0), |d| {
            (
                d["packets"].as_u64().unwrap_or(0),
                d["bytes"].as_u64().unwrap_or(0),
            )
        })
}

/// Whether the denied-ports table has (direction, protocol, port).
pub fn denied_port(status: &Value, direction: &str, protocol: &str, port: u16) -> u64 {
    status["denied_ports"]
        .as_array()
        .expect("denied_ports")
        .iter()
        .find(|d| d["direction"] == direction && d["protocol"] == protocol && d["port"] == port)
        .map_or(0, |d| d["packets"].as_u64().unwrap_or(0))
}

/// The (direction, protocol, port) of each port in a `report --json`, sorted.
pub fn reported_ports(r: &Value) -> Vec<(String, String, u64)> {
    let mut v: Vec<(String, String, u64)> = r["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["direction"].as_str().unwrap_or("?").to_owned(),
                p["protocol"].as_str().unwrap_or("?").to_owned(),
                p["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}
