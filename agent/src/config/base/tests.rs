//! The base set read from a fake host tree in a scratch directory.

use super::*;
use std::path::PathBuf;

/// A scratch root, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        let dir =
            std::env::temp_dir().join(format!("portcullis-base-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Root(dir)
    }

    fn file(&self, path: &str, text: &str) -> &Self {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shown(found: &[Found]) -> Vec<String> {
    found
        .iter()
        .map(|f| match f.port {
            Some(p) => format!("{}:{p} {}:{}", f.peer, f.origin.file, f.origin.line),
            None => format!("{} {}:{}", f.peer, f.origin.file, f.origin.line),
        })
        .collect()
}

#[test]
fn ntp_from_chrony_ntpd_and_timesyncd() {
    let root = Root::new("ntp");
    root.file(
        "etc/chrony/chrony.conf",
        "# Debian\nconfdir /etc/chrony/conf.d\npool 2.debian.pool.ntp.org iburst\n\
         server 192.0.2.123 iburst # lab\n! server off.example.com\nsourcedir /etc/chrony/sources.d\n",
    )
    .file("etc/chrony/sources.d/lab.sources", "server time.lab.example\n")
    .file("etc/chrony/conf.d/x.conf", "peer peer.lab.example\n")
    .file("etc/ntp.conf", "server 127.127.1.0\nserver -4 ntp.example.org iburst\n")
    .file(
        "etc/systemd/timesyncd.conf",
        "[Time]\n#NTP=commented.example.com\nNTP=a.example.net b.example.net\n",
    );
    let host = HostBase::read(&root.0);
    assert_eq!(
        shown(&host.ntp),
        [
            "2.debian.pool.ntp.org /etc/chrony/chrony.conf:3",
            "192.0.2.123/32 /etc/chrony/chrony.conf:4",
            "peer.lab.example /etc/chrony/conf.d/x.conf:1",
            "time.lab.example /etc/chrony/sources.d/lab.sources:1",
            "ntp.example.org /etc/ntp.conf:2",
            "a.example.net /etc/systemd/timesyncd.conf:3",
            "b.example.net /etc/systemd/timesyncd.conf:3",
        ]
    );
}

#[test]
fn mirrors_from_apt_and_dnf_sources() {
    let root = Root::new("mirrors");
    root.file(
        "etc/apt/sources.list",
        "deb http://deb.debian.org/debian bookworm main\n# deb http://off.example.com/ x main\n\
         deb [signed-by=/k.gpg arch=amd64] https://mirror.lab.example:8443/debian bookworm main\n\
         deb file:/srv/repo ./\ndeb-src http://deb.debian.org/debian bookworm main\n",
    )
    .file(
        "etc/apt/sources.list.d/debian.sources",
        "Types: deb\nURIs: http://security.debian.org/debian-security\n  http://[2001:db8::80]/d\nSuites: bookworm\n\n\
         Types: deb\nURIs: http://disabled.example.com/\nEnabled: no\n",
    )
    .file(
        "etc/yum.repos.d/rocky.repo",
        "[baseos]\nname=BaseOS\nmirrorlist=https://mirrors.rockylinux.org/mirrorlist?arch=x\n\
         #baseurl=http://dl.rockylinux.org/$contentdir\nenabled=1\n\n[extras]\nbaseurl=http://a.example.org/x,http://b.example.org/y\n\
         \thttp://c.example.org/z\nenabled=0\n\n[epel]\nbaseurl=http://$mirror/epel\n metalink=https://m.fedoraproject.org/x\n",
    );
    let host = HostBase::read(&root.0);
    assert_eq!(
        shown(&host.mirrors),
        [
            "deb.debian.org /etc/apt/sources.list:1",
            "mirror.lab.example:8443 /etc/apt/sources.list:3",
            "security.debian.org /etc/apt/sources.list.d/debian.sources:2",
            "2001:db8::80/128 /etc/apt/sources.list.d/debian.sources:3",
            "mirrors.rockylinux.org /etc/yum.repos.d/rocky.repo:3",
        ]
    );
}

#[test]
fn resolvers_dhcp_and_the_rules() {
    let root = Root::new("rules");
    root.file(
        "etc/resolv.conf",
        "search lab\nnameserver 10.0.0.53\nnameserver 10.0.0.54\n",
    )
    .file(
        "etc/chrony/chrony.conf",
        "server 10.0.0.123\nserver 10.0.0.124\n",
    )
    .file(
        "etc/apt/sources.list",
        "deb http://mirror.lab:8080/debian bookworm main\n",
    )
    .file("proc/1/comm", "systemd\n")
    .file("proc/812/comm", "dhclient\n");
    let host = HostBase::read(&root.0);
    assert_eq!(
        host.dhcp.as_ref().unwrap().file,
        "process dhclient (pid 812)"
    );
    let listen: SocketAddr = "127.0.0.1:9975".parse().unwrap();
    let rules = host.rules(&BaseSwitches::default(), Some(listen));
    let ids: Vec<&str> = rules.iter().map(|r| r.rule.id.as_str()).collect();
    assert_eq!(ids, RULE_IDS);
    let ntp = &rules[0];
    assert_eq!(ntp.rule.ports, [(123, 123)]);
    assert_eq!(ntp.rule.peers.as_deref(), Some("base-ntp-servers"));
    assert_eq!(ntp.members.len(), 2);
    assert!(
        ntp.rule
            .source
            .starts_with("base: ntp from /etc/chrony/chrony.conf lines 1, 2 "),
        "{}",
        ntp.rule.source
    );
    assert_eq!(rules[1].rule.ports, [(80, 80), (443, 443), (8080, 8080)]);
    assert_eq!(rules[2].rule.protocols, [Protocol::Udp, Protocol::Tcp]);
    assert!(rules[2].rule.source.contains("/etc/resolv.conf lines 2, 3"));
    assert_eq!(
        (rules[3].rule.direction, rules[3].rule.ports[0]),
        (Direction::In, (68, 68))
    );
    assert_eq!(
        (rules[4].rule.direction, rules[4].rule.ports[0]),
        (Direction::Out, (67, 67))
    );
    assert_eq!(rules[5].rule.ports, [(9975, 9975)]);
    assert!(rules[5].rule.source.contains("127.0.0.1:9975"));

    let off = BaseSwitches {
        ntp: false,
        dhcp: false,
        ..BaseSwitches::default()
    };
    let ids: Vec<String> = host
        .rules(&off, None)
        .into_iter()
        .map(|r| r.rule.id)
        .collect();
    assert_eq!(ids, ["base-mirrors", "base-dns"]);
}

#[test]
fn an_empty_host_has_no_base_rules() {
    let root = Root::new("empty");
    let host = HostBase::read(&root.0);
    assert_eq!(host, HostBase::default());
    assert!(host.rules(&BaseSwitches::default(), None).is_empty());
}

#[test]
fn switches_in_the_site_config() {
    use crate::config::Site;
    let parse =
        |text: &str| Site::parse(&format!("product = \"xeams\"\n{text}"), Path::new("s.toml"));
    assert_eq!(parse("").unwrap().base, BaseSwitches::default());
    assert_eq!(
        parse("base = false").unwrap().base,
        BaseSwitches::all(false)
    );
    let site = parse("[base]\nntp = false\nmetrics = false\n").unwrap();
    assert!(!site.base.ntp && !site.base.metrics && site.base.mirrors && site.base.dhcp);
    let err = parse("[base]\nntpd = false\n").unwrap_err();
    assert!(err.message.contains("unknown field `ntpd`"), "{err}");
    assert_eq!(err.line, Some(3), "{err}");
    let err = parse("base = \"off\"\n").unwrap_err();
    assert!(err.message.contains("true, false, or a table"), "{err}");
}

#[test]
fn base_rules_follow_host_scope_only() {
    use crate::config::Site;
    let root = Root::new("scope");
    root.file("etc/resolv.conf", "nameserver 10.0.0.53\n");
    let mut host = Site::parse("product = \"iredmail\"\n", Path::new("s.toml")).unwrap();
    host.read_host(&root.0);
    let policy = crate::policy::compiler::compile_site(&host, None).unwrap();
    let dns = policy
        .rules
        .iter()
        .find(|r| r.id == "base-dns")
        .expect("base-dns under host scope");
    let set = policy
        .peer_sets
        .iter()
        .find(|s| s.name == "base-resolvers")
        .unwrap();
    assert_eq!(set.networks[0].to_string(), "10.0.0.53/32");
    assert!(dns.source.contains("/etc/resolv.conf line 1"));
    assert_eq!(policy.rules.last().unwrap().id, "failsafe-ssh");

    let mut unit = Site::parse(
        "product = \"iredmail\"\nscope = [\"system.slice/postfix.service\"]\n",
        Path::new("s.toml"),
    )
    .unwrap();
    unit.read_host(&root.0);
    let policy = crate::policy::compiler::compile_site(&unit, None).unwrap();
    assert!(!policy.rules.iter().any(|r| r.id.starts_with("base-")));

    let clash = Site::parse(
        "product = \"iredmail\"\n[[rule]]\nid = \"base-ntp\"\ndirection = \"out\"\nprotocol = \"udp\"\nports = [123]\nwhy = \"x\"\n",
        Path::new("s.toml"),
    )
    .unwrap();
    let err = crate::policy::compiler::compile_site(&clash, None).unwrap_err();
    assert!(
        err.message.contains("the base set has a rule with this id"),
        "{err}"
    );
}
