//! An admin's first day with the Debian package, on a real systemd host (Debian 12 in
//! systemd-nspawn, [`Container`]), whose root filesystem has Postfix and Dovecot
//! installed (not running):
//! - installed there, the package's `portcullis detect` chooses iredmail, writes it into
//!   the config, and the unit comes up ready with it;
//! - with Dovecot removed no product is found: the unit still comes up (READY) but
//!   waits, enforcing nothing, `status` says so and how to choose, and a reload after the
//!   admin chose starts it, in the same process;
//! - in enforce with host scope, the `base` set keeps the host's own traffic working:
//!   NTP to the server chrony.conf names, `apt-get update` from the mirror the apt
//!   sources name (both by name, resolved through the resolver of resolv.conf: dnsmasq
//!   in a lab namespace wired to the container) and a Prometheus scrape of the agent's
//!   metrics listener, while an unlisted port and an unlisted host are denied and
//!   counted; with `base = false` the same NTP and mirror traffic is denied.

use std::time::Duration;

use portcullis_common::maps::programs;
use portcullis_tests::{
    Lab, Zone, denied_port, denies, must,
    nspawn::{Container, deb},
    rule_packets,
};
use serde_json::Value;

const CONFIG: &str = "/etc/portcullis/portcullis.toml";

/// Installs the package; returns dpkg's output (the postinst's included).
fn install(c: &Container) -> String {
    let out = c.install_deb(&deb());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dpkg -i failed:\n{text}");
    text
}

fn wait_active(c: &Container) {
    c.wait_for(
        "portcullis.service active",
        "systemctl is-active --quiet portcullis.service",
        Duration::from_secs(60),
    );
}

fn status(c: &Container) -> Value {
    serde_json::from_str(&c.must("portcullis status --json")).expect("status --json is JSON")
}

/// The agent's programs loaded in the container's kernel view (bpftool names them).
fn ours_loaded(c: &Container) -> Vec<String> {
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
fn postfix_and_dovecot_installed_the_package_chooses_iredmail_and_starts_ready() {
    let c = Container::boot("choose");
    let dpkg = install(&c);
    assert!(
        dpkg.contains(&format!("{CONFIG}: product = \"iredmail\"")),
        "the postinst ran detect and chose iredmail; dpkg said:\n{dpkg}"
    );
    let config = c.must(&format!("cat {CONFIG}"));
    assert!(
        config.contains("\nproduct = \"iredmail\"\n")
            && config.contains("# Chosen by `portcullis detect` at install: package postfix"),
        "the config names iredmail, with the evidence:\n{config}"
    );
    wait_active(&c);
    let s = status(&c);
    assert_eq!(s["product"], "iredmail", "{s:#}");
    assert_eq!(s["mode"], "audit", "{s:#}");
    assert!(s["attached_links"].as_u64().unwrap_or(0) > 0, "{s:#}");
    assert!(!ours_loaded(&c).is_empty(), "the programs are attached");
    let text = c.must("systemctl show -P StatusText portcullis.service");
    assert!(!text.contains("waiting"), "StatusText: {text}");

    // An admin's edit survives: detect never changes a config that names a product.
    c.must(&format!(
        "sed -i 's/^product = .*/product = \"xeams\"/' {CONFIG} && portcullis detect --write-config {CONFIG}"
    ));
    assert!(
        c.must(&format!("cat {CONFIG}"))
            .contains("\nproduct = \"xeams\"\n")
    );
}

#[test]
fn with_no_product_found_the_unit_waits_enforcing_nothing_until_one_is_chosen() {
    let c = Container::boot("waits");
    c.must("dpkg --purge dovecot-core >/dev/null");
    let dpkg = install(&c);
    assert!(
        dpkg.contains(&format!(
            "{CONFIG}: left as it is (no single product detected)"
        )),
        "dpkg said:\n{dpkg}"
    );
    wait_active(&c);
    let pid = c.must("systemctl show -P MainPID portcullis.service");
    let text = c.must("systemctl show -P StatusText portcullis.service");
    assert!(
        text.contains("waiting: no product chosen in /etc/portcullis/portcullis.toml"),
        "sd_notify STATUS: {text}"
    );
    let out = c.must("portcullis status");
    assert!(
        out.contains("waiting: no product chosen")
            && out.contains("nothing is enforced")
            && out.contains("portcullis detect")
            && out.contains("systemctl reload portcullis"),
        "status says the agent waits and how to choose:\n{out}"
    );
    let s = status(&c);
    assert_eq!(s["waiting"]["reason"], "no product chosen", "{s:#}");
    assert_eq!(
        s["waiting"]["pid"].as_u64().map(|p| p.to_string()),
        Some(pid.trim().into())
    );
    // Nothing enforced: no program attached anywhere, no link pinned.
    assert_eq!(
        ours_loaded(&c),
        Vec::<String>::new(),
        "a waiting agent attaches nothing"
    );
    assert_eq!(
        c.must("ls /sys/fs/bpf/portcullis/links 2>/dev/null | wc -l")
            .trim(),
        "0"
    );
    // A reload while nothing is chosen keeps it waiting, and says why.
    let reload = c.run("systemctl reload portcullis.service");
    assert!(
        !reload.status.success(),
        "a reload without a product cannot start it"
    );
    assert!(c.must("portcullis status").contains("waiting"));

    // The admin chooses: a reload starts the agent in the same process (same pid).
    c.must(&format!(
        "sed -i 's/^# product = .*/product = \"iredmail\"/' {CONFIG} && systemctl reload portcullis.service"
    ));
    let s = status(&c);
    assert_eq!(s["product"], "iredmail", "{s:#}");
    assert!(s["attached_links"].as_u64().unwrap_or(0) > 0, "{s:#}");
    assert_eq!(
        c.must("systemctl show -P MainPID portcullis.service"),
        pid,
        "the waiting process became the agent"
    );
    assert!(!ours_loaded(&c).is_empty());
    let text = c.must("systemctl show -P StatusText portcullis.service");
    assert!(!text.contains("waiting"), "StatusText: {text}");
}

/// A UDP server answering every datagram with its first 48 bytes: an NTP server's
/// shape, enough for a client that waits for its reply.
const NTP_SERVER: &str = "import socket, sys\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.bind((sys.argv[1], 123))\n\
while True:\n    d, a = s.recvfrom(512)\n    s.sendto(d[:48], a)\n";

/// An SNTP client: resolves the name through the host's resolver, sends one request and
/// prints `reply N`, `EPERM` or `timeout`.
const NTP_CLIENT: &str = "import socket, sys\n\
a = socket.getaddrinfo(sys.argv[1], 123, socket.AF_INET, socket.SOCK_DGRAM)[0][4]\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.settimeout(3)\n\
try:\n    s.sendto(b'\\x23' + bytes(47), a)\n    print('reply', len(s.recvfrom(512)[0]))\n\
except PermissionError:\n    print('EPERM')\n\
except socket.timeout:\n    print('timeout')\n";

/// A TCP client: resolves the name, connects, prints `ok`, `EPERM` or the error.
const CONNECT: &str = "import socket, sys\n\
a = socket.getaddrinfo(sys.argv[1], int(sys.argv[2]), socket.AF_INET, socket.SOCK_STREAM)[0][4]\n\
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
s.settimeout(3)\n\
try:\n    s.connect(a)\n    print('ok')\n\
except PermissionError:\n    print('EPERM')\n\
except OSError as e:\n    print(type(e).__name__)\n";

/// Runs `cmd` in the container as a transient unit (in system.slice, so under the host
/// scope; a command entered with nsenter would run in the test's own cgroup).
fn in_unit(c: &Container, cmd: &str) -> String {
    c.must(&format!(
        "systemd-run --quiet --wait --pipe --collect -p Type=exec {cmd}"
    ))
}

#[test]
fn host_scope_in_enforce_keeps_ntp_mirrors_and_metrics_and_denies_the_rest() {
    let mut lab = Lab::new("base");
    let c = Container::boot("base");
    let third = lab
        .b4
        .split('.')
        .nth(2)
        .expect("an IPv4 address")
        .to_owned();
    let net = format!("198.19.{third}");
    let (server, other, inside) = (format!("{net}.1"), format!("{net}.3"), format!("{net}.2"));
    let dev = format!("{}c", lab.tag);
    c.wire_to(
        &lab.ns_b,
        &dev,
        &format!("{server}/24"),
        &format!("{inside}/24"),
    );
    must(&format!("ip -n {} addr add {other}/24 dev {dev}", lab.ns_b));

    // The lab's servers: the resolver, the mirror (a flat apt repository), NTP, and
    // listeners on ports and a host no source names.
    lab.dnsmasq(
        &server,
        &Zone::new(
            300,
            &[
                ("mirror.lab.test", &server),
                ("ntp.lab.test", &server),
                ("other.lab.test", &other),
            ],
        ),
    );
    let repo = lab.dir.join("repo");
    std::fs::create_dir_all(&repo).expect("the mirror's directory");
    std::fs::write(repo.join("Packages"), "").expect("Packages");
    std::fs::write(
        repo.join("Release"),
        "Origin: lab\nLabel: lab\nSuite: lab\nCodename: lab\nDate: Mon, 07 Dec 2026 00:00:00 UTC\n\
         SHA256:\n e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 Packages\n",
    )
    .expect("Release");
    let ntp_server = lab.write("ntp-server.py", NTP_SERVER);
    lab.spawn_b(&format!(
        "exec python3 -m http.server 8080 --bind {server} --directory {} 2>{}/http.log",
        repo.display(),
        lab.dir.display()
    ));
    lab.spawn_b(&format!("exec python3 {} {server}", ntp_server.display()));
    for (host, port) in [(&server, 8081), (&other, 8080)] {
        lab.spawn_b(&format!(
            "exec {} listen {port} --host {host}",
            portcullis_tests::net_py()
        ));
    }
    let ns_b = lab.ns_b.clone();
    for (host, port) in [(&server, 8080), (&server, 8081), (&other, 8080)] {
        lab.wait_tcp(&ns_b, host, port);
    }
    lab.wait_udp(&ns_b, 123);

    // The host: its resolver, time server and package sources name the lab's.
    c.must(&format!(
        "rm -f /etc/resolv.conf /etc/apt/sources.list.d/* && echo 'nameserver {server}' > /etc/resolv.conf"
    ));
    c.write(
        "/etc/chrony/chrony.conf",
        "# the lab's time server\npool ntp.lab.test iburst\n",
    );
    c.write(
        "/etc/apt/sources.list",
        "deb [trusted=yes] http://mirror.lab.test:8080/ ./\n",
    );
    c.write("/root/ntp.py", NTP_CLIENT);
    c.write("/root/connect.py", CONNECT);
    install(&c);
    wait_active(&c);
    let config = c.must(&format!("cat {CONFIG}"));
    c.write(
        CONFIG,
        &config
            .replace("mode = \"audit\"", "mode = \"enforce\"")
            .replace("listen = \"127.0.0.1:9975\"", "listen = \"0.0.0.0:9975\""),
    );
    c.must("systemctl restart portcullis.service");
    wait_active(&c);
    let s = status(&c);
    assert_eq!(
        (s["product"].as_str(), s["mode"].as_str()),
        (Some("iredmail"), Some("enforce")),
        "{s:#}"
    );

    // Each base line says where it comes from.
    let explain = c.must(&format!(
        "portcullis explain --config {CONFIG} --direction out --protocol udp --port 123 --peer ntp.lab.test"
    ));
    assert!(
        explain.starts_with("allow:")
            && explain.contains("base: ntp from /etc/chrony/chrony.conf line 2"),
        "{explain}"
    );
    let show = c.must(&format!("portcullis check --config {CONFIG}"));
    assert!(
        show.contains("base-mirrors: base: package mirrors from /etc/apt/sources.list line 1")
            && show.contains("base-dns: base: resolvers from /etc/resolv.conf line 1")
            && show.contains("base-metrics: base: metrics listener"),
        "{show}"
    );

    // Allowed: NTP, the package index, the metrics scrape.
    assert_eq!(
        in_unit(&c, "python3 /root/ntp.py ntp.lab.test").trim(),
        "reply 48"
    );
    let update = in_unit(&c, "sh -c 'apt-get update 2>&1'");
    assert!(
        update.contains("mirror.lab.test:8080") && !update.contains("Err:"),
        "apt-get update from the lab's mirror:\n{update}"
    );
    let http_log = std::fs::read_to_string(lab.dir.join("http.log")).unwrap_or_default();
    assert!(
        http_log.contains("/Release HTTP/1.1\" 200"),
        "the mirror served apt:\n{http_log}"
    );
    let scrape = lab.on_b(&format!(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://{inside}:9975/metrics', timeout=5).read().decode())\""
    ));
    let metrics = String::from_utf8_lossy(&scrape.stdout);
    assert!(
        scrape.status.success() && metrics.contains("portcullis_"),
        "a scrape from outside: {metrics}{}",
        String::from_utf8_lossy(&scrape.stderr)
    );

    // Denied: a port no rule opens on the mirror, and a host no source names.
    assert_eq!(
        in_unit(&c, "python3 /root/connect.py mirror.lab.test 8081").trim(),
        "EPERM"
    );
    assert_eq!(
        in_unit(&c, "python3 /root/connect.py other.lab.test 8080").trim(),
        "EPERM"
    );
    assert_eq!(
        in_unit(&c, "python3 /root/connect.py mirror.lab.test 8080").trim(),
        "ok"
    );

    let s = status(&c);
    for id in ["base-ntp", "base-mirrors", "base-metrics"] {
        assert!(rule_packets(&s, id) > 0, "{id} counted nothing: {s:#}");
    }
    assert!(denied_port(&s, "out", "tcp", 8081) > 0, "{s:#}");
    assert!(denies(&s, "out", "peer", false).0 > 0, "{s:#}");

    // The same host with the base set switched off: the profile alone cuts it off from
    // its time server and its mirror, so it was the base set that kept them.
    let config = c.must(&format!("cat {CONFIG}"));
    c.write(CONFIG, &format!("base = false\n{config}"));
    c.must("systemctl reload portcullis.service");
    let ntp = in_unit(&c, "python3 /root/ntp.py ntp.lab.test");
    assert!(
        matches!(ntp.trim(), "EPERM" | "timeout"),
        "NTP without the base set: {ntp}"
    );
    assert_eq!(
        in_unit(&c, "python3 /root/connect.py mirror.lab.test 8080").trim(),
        "EPERM"
    );
    assert!(denied_port(&status(&c), "out", "udp", 123) > 0);
}
