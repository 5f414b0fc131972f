//! `portcullis detect` on the built binary, against host trees in the formats the real
//! files have (dpkg's status file, unit files), through the hidden `--root`: the product
//! found, its evidence, `--slug`, and `--write-config` on the config the package ships.
//! Needs no root.

use std::{
    fs,
    path::{Path, PathBuf},
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

/// A host tree in a fresh temporary directory, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("portcullis-detect-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    fn root(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const DPKG_STATUS: &str = "\
Package: postfix
Status: install ok installed
Priority: optional
Version: 3.7.11-0+deb12u1

Package: dovecot-core
Status: install ok installed
Version: 1:2.3.19.1+dfsg1-2.1+deb12u1

Package: libc6
Status: install ok installed
Version: 2.36-9+deb12u10
";

fn shipped_config() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/portcullis.toml"))
        .unwrap()
}

#[test]
fn postfix_and_dovecot_are_iredmail_and_the_config_gets_it() {
    let tree = Tree::new("iredmail");
    tree.write("var/lib/dpkg/status", DPKG_STATUS);
    tree.write("lib/systemd/system/postfix.service", "[Service]\n");
    let config = tree.write("etc/portcullis/portcullis.toml", &shipped_config());

    let out = portcullis(&["detect", "--root", tree.root(), "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["product"], "iredmail", "{v:#}");
    let evidence: Vec<String> = v["detected"][0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        evidence,
        [
            "package postfix",
            "unit postfix.service",
            "package dovecot-core"
        ]
    );
    assert_eq!(
        v["windows_only"],
        serde_json::json!([
            "clearswift-exchange",
            "gfi-mailessentials",
            "mdaemon-securitygateway"
        ])
    );

    let slug = portcullis(&["detect", "--root", tree.root(), "--slug"]);
    assert_eq!(String::from_utf8_lossy(&slug.stdout), "iredmail\n");

    let config_arg = config.to_str().unwrap();
    let out = portcullis(&[
        "detect",
        "--root",
        tree.root(),
        "--write-config",
        config_arg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("product = \"iredmail\"") && !written.contains("product = \"xeams\""),
        "the config names iredmail now:\n{written}"
    );
    let check = portcullis(&["check", "--config", config_arg, "--json"]);
    let v: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["product"].as_str(), v["mode"].as_str()),
        (Some(true), Some("iredmail"), Some("audit")),
        "the written config validates, in audit mode"
    );
}

#[test]
fn postfix_alone_is_nothing_and_the_config_is_left_alone() {
    let tree = Tree::new("none");
    tree.write(
        "var/lib/dpkg/status",
        "Package: postfix\nStatus: install ok installed\n\n\
         Package: dovecot-core\nStatus: deinstall ok config-files\n",
    );
    let config = tree.write("etc/portcullis/portcullis.toml", &shipped_config());

    let out = portcullis(&["detect", "--root", tree.root()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("product: none detected") && text.contains("portcullis profile list"),
        "says how to choose:\n{text}"
    );
    let slug = portcullis(&["detect", "--root", tree.root(), "--slug"]);
    assert!(slug.status.success() && slug.stdout.is_empty());
    let out = portcullis(&[
        "detect",
        "--root",
        tree.root(),
        "--write-config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        shipped_config(),
        "nothing detected: the config is not touched"
    );
}
