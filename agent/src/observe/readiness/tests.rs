//! Unit tests of `readiness`.
use super::*;
use std::collections::BTreeMap;

#[test]
fn classes() {
    let scans = ScanTracker::default();
    let class = |d, e: Option<&PortEvidence>, s: &ScanTracker| classify(d, e, s).class;
    assert_eq!(class(Direction::Out, None, &scans), Class::Breakage);
    assert_eq!(class(Direction::In, None, &scans), Class::Unclear);
    let peer = |flows, handshakes, both, from_peer| PeerEvidence {
        flows,
        handshakes,
        flows_with_peer_payload: from_peer,
        flows_with_payload_both_ways: both,
        payload_bytes_in: from_peer * 10,
        payload_bytes_out: both * 10,
        connect_resets: 0,
        first_flow: 100,
        last_flow: 100 + 5 * flows.saturating_sub(1),
    };
    let port = |p: PeerEvidence, addr: &str| PortEvidence {
        total: p,
        peers: [(addr.to_owned(), p)].into(),
        ..PortEvidence::default()
    };
    let syns = port(peer(3, 0, 0, 0), "192.0.2.1");
    assert_eq!(
        class(Direction::In, Some(&syns), &scans),
        Class::ExposureClosed
    );
    let talk = port(peer(1, 1, 1, 1), "192.0.2.1");
    assert_eq!(class(Direction::In, Some(&talk), &scans), Class::Breakage);
    let one_way = port(peer(1, 1, 0, 1), "192.0.2.1");
    assert_eq!(class(Direction::In, Some(&one_way), &scans), Class::Unclear);
    // A completed handshake and nothing from the peer: not a scan unless a scanner's.
    let connect = port(peer(1, 1, 0, 0), "192.0.2.1");
    let c = classify(Direction::In, Some(&connect), &scans);
    assert_eq!(c.class, Class::Unclear, "{}", c.reason);
    assert!(c.health_checks.is_empty());

    let mut scanner = ScanTracker::default();
    for p in 0..SCAN_PORTS as u16 {
        scanner.touch("192.0.2.1", p);
    }
    // A scanner's exchange is still breakage: the verdict is per flow.
    let c = classify(Direction::In, Some(&talk), &scanner);
    assert_eq!(c.class, Class::Breakage, "{}", c.reason);
    // A scanner's connect probe is exposure; the same peer back again and again is not.
    let c = classify(Direction::In, Some(&connect), &scanner);
    assert_eq!(c.class, Class::ExposureClosed, "{}", c.reason);
    let back = port(peer(SCAN_REPEATS + 1, SCAN_REPEATS + 1, 0, 0), "192.0.2.1");
    assert_eq!(class(Direction::In, Some(&back), &scanner), Class::Unclear);

    // A connect scan seen on one port only (its other probes hit closed ports, which
    // leave no flow evidence): connected, reset at once, nothing sent.
    let mut nmap_st = peer(2, 1, 0, 0);
    nmap_st.connect_resets = 1;
    let c = classify(Direction::In, Some(&port(nmap_st, "192.0.2.9")), &scans);
    assert_eq!(c.class, Class::ExposureClosed, "{}", c.reason);
    // The same from a balancer every few seconds: a health check.
    let mut hc_rst = peer(6, 6, 0, 0);
    hc_rst.connect_resets = 6;
    let c = classify(Direction::In, Some(&port(hc_rst, "10.0.0.7")), &scans);
    assert_eq!(
        (c.class, c.health_checks.len()),
        (Class::Unclear, 1),
        "{}",
        c.reason
    );

    // A health check: handshakes every 5 s, nothing sent.
    let check = port(peer(12, 12, 0, 0), "10.0.0.7");
    let c = classify(Direction::In, Some(&check), &scans);
    assert_eq!(c.class, Class::Unclear, "{}", c.reason);
    assert_eq!(c.health_checks.len(), 1);
    assert_eq!(c.health_checks[0].interval_seconds, 5);
    assert_eq!(
        c.health_checks[0].text("in tcp/8080"),
        "10.0.0.7 connects to in tcp/8080 about every 5 s (12 handshakes, no payload from it): a health check? enforcing breaks it"
    );

    // Two peers: one real exchange among scanners' probes makes the port breakage.
    let mut mixed = port(peer(1, 1, 0, 0), "192.0.2.1");
    mixed
        .peers
        .insert("198.51.100.9".to_owned(), peer(1, 1, 1, 1));
    assert_eq!(
        class(Direction::In, Some(&mixed), &scanner),
        Class::Breakage
    );
}

fn finding(port: u16, packets: Option<u64>, events: u64) -> PortFinding {
    PortFinding {
        direction: Direction::Out,
        protocol: IpProtocol(6),
        port,
        packets,
        bytes: None,
        events,
        denies: 0,
        would_denies: events,
        first_seen: None,
        last_seen: None,
        reasons: BTreeMap::new(),
        peers: vec![],
        processes: vec![],
        covered_by: None,
        class: Class::Breakage,
        class_reason: String::new(),
        evidence: None,
        listener: None,
        health_checks: vec![],
    }
}

#[test]
fn verdict_lines() {
    let status = empty_status();
    let safe = verdict(Mode::Audit, true, 0, 60, &[], &status, 0);
    assert_eq!(
        safe,
        "safe to enforce: no would-deny since 1970-01-01T00:00:00Z (60s ago)"
    );
    let ports = [finding(8081, Some(3), 3), finding(5353, None, 1)];
    let unsafe_ = verdict(Mode::Audit, false, 0, 60, &ports, &status, 0);
    assert_eq!(
        unsafe_,
        "not safe to enforce: enforcing would break out tcp/8081 (3 packets), out tcp/5353 (1 event)"
    );
    let mut scanned = finding(3306, Some(2), 2);
    scanned.direction = Direction::In;
    scanned.class = Class::ExposureClosed;
    assert_eq!(
        verdict(
            Mode::Audit,
            true,
            0,
            60,
            std::slice::from_ref(&scanned),
            &status,
            0
        ),
        "safe to enforce: nothing would break since 1970-01-01T00:00:00Z (60s ago); enforcing closes in tcp/3306 (2 packets)"
    );
    let mut unclear = scanned.clone();
    unclear.class = Class::Unclear;
    unclear.port = 5353;
    assert_eq!(
        verdict(Mode::Audit, false, 0, 60, &[scanned, unclear], &status, 0),
        "not safe to enforce: 1 unclear (--max-unclear 0): in tcp/5353 (2 packets)"
    );
    assert!(
        verdict(Mode::Enforce, false, 0, 60, &ports, &status, 0)
            .starts_with("enforcing: denied since")
    );
}

fn empty_status() -> status::Status {
    let mut s = crate::observe::table::tests::status(0);
    s.rules.clear();
    s
}
