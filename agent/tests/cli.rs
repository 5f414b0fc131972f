//! The command-line contract of `profile`, `check` and `explain`: output formats, JSON
//! fields and exit codes, checked on the built binary. Needs no root.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use serde_json::Value;

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_LOG", "off")
        .output()
        .expect("run portcullis")
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A site config in a fresh temporary directory, removed on drop.
struct TempConfig {
    dir: PathBuf,
    path: PathBuf,
}

impl TempConfig {
    fn new(name: &str, text: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("portcullis-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("site.toml");
        std::fs::write(&path, text).expect("write site config");
        Self { dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn profile_list_has_one_line_per_product_slug_first() {
    let out = portcullis(&["profile", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let slugs: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        slugs,
        [
            "xeams",
            "clearswift-seg",
            "clearswift-exchange",
            "gfi-mailessentials",
            "mdaemon-securitygateway",
            "iredmail"
        ]
    );
    assert!(text.lines().all(|l| l.ends_with(" rules")), "{text}");
    let list = json(&portcullis(&["profile", "list", "--json"]));
    for p in list.as_array().unwrap() {
        for field in ["slug", "vendor", "product", "rules", "features"] {
            assert!(
                p.get(field).is_some(),
                "profile list --json lacks {field}: {p}"
            );
        }
    }
}

#[test]
fn profile_show_json_has_the_contract_fields() {
    let out = portcullis(&["profile", "show", "iredmail", "--all-features", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = json(&out);
    let entries = entries.as_array().unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        for field in [
            "id",
            "direction",
            "protocol",
            "from",
            "to",
            "feature",
            "scope",
            "peers",
            "why",
        ] {
            assert!(e.get(field).is_some(), "entry lacks {field}: {e}");
        }
    }
    let mysql = entries.iter().find(|e| e["id"] == "mysql/in").unwrap();
    assert_eq!(mysql["scope"], "loopback");
    assert_eq!(
        (mysql["from"].as_u64(), mysql["to"].as_u64()),
        (Some(3306), Some(3306))
    );
    let table = portcullis(&["profile", "show", "xeams", "--feature", "pop3"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains("pop3-server"), "{text}");
}

#[test]
fn unknown_product_or_feature_exits_3() {
    let out = portcullis(&["profile", "show", "xeam"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown product \"xeam\""), "{err}");
    assert!(err.contains("xeams"), "{err}");
    let out = portcullis(&["profile", "show", "xeams", "--feature", "pop4"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn check_prints_the_policy_and_json_contract() {
    let site = TempConfig::new(
        "check-ok",
        "product = \"mdaemon-securitygateway\"\nfeatures = [\"ldap\"]\nmode = \"enforce\"\n\
         any_peer_groups = [\"clients\", \"domain-mail-servers\", \"mdaemon-servers\"]\n\
         [peers]\ndns-servers = [\"192.0.2.53\"]\nldap-servers = [\"198.51.100.0/24\"]\n",
    );
    let out = portcullis(&["check", "--config", site.arg()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("ok: "), "{text}");
    assert!(text.contains("failsafe-ssh"), "{text}");
    let report = json(&portcullis(&["check", "--config", site.arg(), "--json"]));
    assert_eq!(report["ok"], true);
    assert_eq!(report["mode"], "enforce");
    for field in [
        "product",
        "loopback",
        "scope",
        "xdp",
        "events_per_sec",
        "pin_dir",
        "metrics",
        "peer_sets",
        "rules",
        "entries",
    ] {
        assert!(report.get(field).is_some(), "check --json lacks {field}");
    }
    let ldap = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "ldap")
        .unwrap()
        .clone();
    assert_eq!(ldap["peer_networks"][0], "198.51.100.0/24");
}

#[test]
fn check_reports_file_and_line_and_exits_3() {
    let site = TempConfig::new(
        "check-bad",
        "product = \"xeams\"\n\n[[rule]]\nid = \"x\"\ndirection = \"in\"\nprotocol = \"tcp\"\nports = 70000\nwhy = \"w\"\n",
    );
    let out = portcullis(&["check", "--config", site.arg()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end(),
        format!(
            "error: {}:7: port 70000 is above 65535 (hint: ports are 1-65535)",
            site.arg()
        )
    );
    let out = portcullis(&["check", "--config", site.arg(), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["error"]["line"], 7);
    assert_eq!(report["error"]["message"], "port 70000 is above 65535");
}

#[test]
fn explain_json_has_the_contract_fields() {
    let out = portcullis(&[
        "explain",
        "--product",
        "iredmail",
        "--direction",
        "in",
        "--protocol",
        "tcp",
        "--port",
        "25",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let allow = json(&out);
    assert_eq!(allow["verdict"], "allow");
    assert_eq!(allow["rule"], "smtp");
    assert_eq!(
        allow["peer"], "192.0.2.1",
        "the default peer is a documentation address"
    );
    for field in ["reason", "why", "source"] {
        assert!(allow.get(field).is_some(), "explain --json lacks {field}");
    }
    let deny = json(&portcullis(&[
        "explain",
        "--product",
        "xeams",
        "--direction",
        "in",
        "--protocol",
        "tcp",
        "--port",
        "110",
        "--json",
    ]));
    assert_eq!(deny["verdict"], "deny");
    assert_eq!(deny["rule"], Value::Null);
    assert_eq!(deny["reason"], "no-rule");
    assert!(deny["hint"].as_str().unwrap().contains("pop3"), "{deny}");
    let exempt = json(&portcullis(&[
        "explain",
        "--product",
        "iredmail",
        "--direction",
        "in",
        "--protocol",
        "tcp",
        "--port",
        "3306",
        "--peer",
        "127.0.0.1",
        "--json",
    ]));
    assert_eq!(
        (exempt["verdict"].as_str(), exempt["reason"].as_str()),
        (Some("allow"), Some("loopback-exempt"))
    );
}

#[test]
fn explain_with_a_config_uses_its_peer_groups() {
    let site = TempConfig::new(
        "explain",
        "product = \"clearswift-exchange\"\n[peers]\nsxg-servers = [\"198.51.100.0/24\"]\n",
    );
    let ask = |peer: &str| {
        json(&portcullis(&[
            "explain",
            "--config",
            site.arg(),
            "--direction",
            "in",
            "--protocol",
            "tcp",
            "--port",
            "23953",
            "--peer",
            peer,
            "--json",
        ]))
    };
    assert_eq!(ask("198.51.100.9")["rule"], "sxg-interceptors/in");
    let other = ask("203.0.113.9");
    assert_eq!(
        (other["verdict"].as_str(), other["reason"].as_str()),
        (Some("deny"), Some("peer"))
    );
}

#[test]
fn check_refuses_a_policy_that_does_not_fit_the_maps_with_file_and_line() {
    // More site rules than the rule counters hold (4096 indices, one meaning "no rule",
    // one for the failsafe): `check` fails as `run` would, with exit code 3.
    let rules: String = (0..5000)
        .map(|i| {
            format!(
                "[[rule]]\nid = \"r{i}\"\ndirection = \"out\"\nprotocol = \"tcp\"\nports = {}\nwhy = \"w\"\n",
                10000 + i
            )
        })
        .collect();
    let site = TempConfig::new("check-full", &format!("product = \"xeams\"\n\n{rules}"));
    let out = portcullis(&["check", "--config", site.arg()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!("error: {}:", site.arg())) && err.contains("does not fit"),
        "{err}"
    );
    let out = portcullis(&["check", "--config", site.arg(), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert!(
        report["error"]["line"].as_u64().is_some_and(|l| l > 1),
        "{report:#}"
    );
}

#[test]
fn vendor_names_are_shown_checked_and_explained() {
    let out = portcullis(&["profile", "show", "gfi-mailessentials"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\npeer groups:\n"), "{text}");
    assert!(text.contains("  gfi-ftp: ftp.gfisoftware.com\n"), "{text}");
    let entries = json(&portcullis(&[
        "profile",
        "show",
        "gfi-mailessentials",
        "--json",
    ]));
    let updates = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "http-updates")
        .unwrap()
        .clone();
    assert!(
        updates["peer_names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "*.mailshell.net"),
        "{updates}"
    );

    // A bad host name is a policy error at its line: exit 3.
    let site = TempConfig::new(
        "bad-name",
        "product = \"gfi-mailessentials\"\n[peers]\ngfi-ftp = [\n  \"ftp..example.com\"]\n",
    );
    let out = portcullis(&["check", "--config", site.arg()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!(
            "error: {}:4: host name \"ftp..example.com\" has an empty label (hint: ",
            site.arg()
        )),
        "{err}"
    );

    // A name given to --peer is resolved (here by /etc/hosts) and judged as learned.
    let site = TempConfig::new(
        "explain-name",
        "product = \"gfi-mailessentials\"\nloopback = \"enforce\"\n[peers]\ngfi-update-servers = [\"localhost\"]\n",
    );
    let explain = |peer: &str| {
        json(&portcullis(&[
            "explain",
            "--config",
            site.arg(),
            "--direction",
            "out",
            "--protocol",
            "tcp",
            "--port",
            "443",
            "--peer",
            peer,
            "--json",
        ]))
    };
    let named = explain("localhost");
    assert_eq!(named["verdict"], "allow", "{named}");
    assert_eq!(named["rule"], "http-updates");
    assert_eq!(named["peer_name"], "localhost");
    assert!(!named["resolved"].as_array().unwrap().is_empty());
    let addr = named["peer"].as_str().unwrap().to_string();
    let by_address = explain(&addr);
    assert_eq!(
        by_address["verdict"], "deny",
        "an address alone is not learned: {by_address}"
    );
    assert_eq!(by_address["reason"], "peer");
}

#[test]
fn check_and_run_refuse_a_cgroup_scope_with_xdp_unless_the_site_accepts_it() {
    // Cgroup scope with XDP: only the scope's egress fills XDP's reply table, so a cgroup
    // scope with XDP would silently drop every other process's replies on that
    // interface. Refused (exit 3, the xdp line, the fix) unless `xdp_scope_only = true`.
    let text = "product = \"xeams\"\nscope = [\"system.slice/xeams.service\"]\nxdp = [\"eth0\"]\n";
    let site = TempConfig::new("scope-xdp", text);
    let out = portcullis(&["check", "--config", site.arg()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!("error: {}:3:", site.arg()))
            && err.contains("cgroup scope")
            && err.contains("xdp_scope_only = true")
            && err.contains("scope = [\"host\"]"),
        "{err}"
    );
    let out = portcullis(&["run", "--config", site.arg()]);
    assert_eq!(out.status.code(), Some(3), "run refuses it too: {out:?}");
    // The command line can make the combination as well.
    let out = portcullis(&[
        "run",
        "--product",
        "xeams",
        "--scope",
        "system.slice/xeams.service",
        "--xdp",
        "eth0",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("xdp_scope_only"),
        "{out:?}"
    );
    // Accepted when said, and with the host scope.
    let accepted = TempConfig::new("scope-xdp-ok", &format!("{text}xdp_scope_only = true\n"));
    let out = portcullis(&["check", "--config", accepted.arg()]);
    assert!(out.status.success(), "{out:?}");
    let host = TempConfig::new(
        "host-xdp",
        "product = \"xeams\"\nscope = [\"host\"]\nxdp = [\"eth0\"]\n",
    );
    let out = portcullis(&["check", "--config", host.arg()]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn export_writes_both_formats_and_refuses_what_a_format_cannot_express_with_exit_3() {
    // Both formats, to stdout and to a file, from a product and from a config.
    let nft = portcullis(&["export", "--format", "nft", "--product", "iredmail"]);
    assert!(
        nft.status.success(),
        "{}",
        String::from_utf8_lossy(&nft.stderr)
    );
    let text = String::from_utf8(nft.stdout).unwrap();
    assert!(text.contains("table inet portcullis {"), "{text}");
    assert!(text.contains("counter failsafe-ssh { }"), "{text}");
    let site = TempConfig::new(
        "export",
        "product = \"iredmail\"\nmode = \"enforce\"\nscope = [\"host\"]\n\n\
         [[rule]]\nid = \"relay-in\"\ndirection = \"in\"\nprotocol = \"tcp\"\nports = 2525\n\
         peers = \"relays\"\nwhy = \"the relays\"\n\n[peers]\nrelays = [\"192.0.2.0/24\"]\n",
    );
    let file = site.dir.join("out.ps1");
    let out = portcullis(&[
        "export",
        "--format",
        "windows-firewall",
        "--config",
        site.arg(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "-o writes the file, not stdout");
    let script = std::fs::read_to_string(&file).unwrap();
    assert!(
        script.contains("-LocalPort '2525' -RemoteAddress '192.0.2.0/24'"),
        "{script}"
    );
    assert!(
        script.contains("-DefaultOutboundAction Block"),
        "enforce: {script}"
    );

    // Refused, exit 3, naming the setting and the way out.
    let lo = TempConfig::new(
        "export-lo",
        "product = \"iredmail\"\nloopback = \"enforce\"\n\n[peers]\ndns-servers = [\"192.0.2.53/32\"]\n",
    );
    let out = portcullis(&[
        "export",
        "--format",
        "windows-firewall",
        "--config",
        lo.arg(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loopback = \"enforce\"") && err.contains("hint"),
        "{err}"
    );
    let ok = portcullis(&["export", "--format", "nft", "--config", lo.arg()]);
    assert!(ok.status.success(), "nft expresses loopback enforcement");
    let scoped = TempConfig::new(
        "export-scope",
        "product = \"xeams\"\nscope = [\"system.slice/xeams.service\"]\n",
    );
    let out = portcullis(&["export", "--format", "nft", "--config", scoped.arg()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--host-wide"));
    let wide = portcullis(&[
        "export",
        "--format",
        "nft",
        "--config",
        scoped.arg(),
        "--host-wide",
    ]);
    assert!(wide.status.success());
    let unknown = portcullis(&["export", "--format", "nft", "--product", "nope"]);
    assert_eq!(unknown.status.code(), Some(3), "an unknown product");
}
