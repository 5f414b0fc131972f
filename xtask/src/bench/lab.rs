//! The benchmark's lab, built from the root tests' guards (`portcullis_tests::lab`): two
//! namespaces, one veth pair and one cgroup per policy size, a veth pair for xdp-filter,
//! the generated profiles and site configs, and a bpffs directory for the programs it
//! pins to run them with BPF_PROG_TEST_RUN. Everything goes in `Drop`.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use portcullis_tests::{Agent, AgentSpec, Cgroup, End, Netns, output, veth};

use super::{BASE_PORT, DENIED_PORT, SIZES};

/// Two namespaces: A (protected: agents, XDP, receivers) and B (senders, xdp-filter).
/// One veth pair per policy size i, `pcb{i}a` in A (198.19.20{i}.1) to `pcb{i}b` in B
/// (.2); one pair `pcbfa`/`pcbfb` inside B for xdp-filter.
pub struct Lab {
    pub ns_a: Netns,
    pub ns_b: Netns,
    /// One cgroup per policy size, the agent's scope and the S2 receiver's home.
    pub cgroups: Vec<Cgroup>,
    /// Profiles, site configs, state directories, flood configs.
    pub dir: PathBuf,
    prog_pins: PathBuf,
    pid: u32,
}

impl Lab {
    pub fn new() -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("portcullis-bench-{pid}"));
        fs::create_dir_all(&dir)?;
        let cgroups = (0..SIZES.len())
            .map(|i| Cgroup::new(&format!("portcullis-bench-{pid}-{i}")))
            .collect::<anyhow::Result<_>>()?;
        let lab = Lab {
            ns_a: Netns::new(&format!("pcbench{pid}a"))?,
            ns_b: Netns::new(&format!("pcbench{pid}b"))?,
            cgroups,
            dir,
            prog_pins: PathBuf::from(format!("/sys/fs/bpf/portcullis-bench-{pid}-progs")),
            pid,
        };
        // From here on, Drop cleans up whatever exists.
        let (a, b) = (lab.ns_a.name.as_str(), lab.ns_b.name.as_str());
        let none: &[String] = &[];
        veth(
            &End {
                ns: b,
                dev: "pcbfa",
                addrs: none,
            },
            &End {
                ns: b,
                dev: "pcbfb",
                addrs: none,
            },
        )?;
        for i in 0..SIZES.len() {
            veth(
                &End {
                    ns: a,
                    dev: &format!("pcb{i}a"),
                    addrs: &[format!("198.19.20{i}.1/24")],
                },
                &End {
                    ns: b,
                    dev: &format!("pcb{i}b"),
                    addrs: &[format!("198.19.20{i}.2/24")],
                },
            )?;
        }
        Ok(lab)
    }

    pub fn pin_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/portcullis-bench-{}-{i}", self.pid))
    }

    /// Starts the agent of size `i` on a site config from [`Lab::site`], in namespace A
    /// (where its XDP veth is), with its own pin and state directories.
    pub fn agent(&self, i: usize, site: &Path) -> anyhow::Result<Agent> {
        Agent::start(&AgentSpec {
            config: site,
            pin_dir: self.pin_dir(i),
            state_dir: self.dir.join(format!("state-{i}")),
            netns: Some(&self.ns_a.name),
            args: &[],
            env: &[],
        })
    }

    /// Writes the generated profile and site config of size `i` and returns the site
    /// config's path. `xdp`: whether the site attaches XDP to the size's veth.
    pub fn site(&self, i: usize, label: &str, rules: usize, xdp: bool) -> anyhow::Result<PathBuf> {
        let profile = self.dir.join(format!("profile-{label}.toml"));
        if !profile.exists() {
            let mut p = format!(
                "slug = \"bench-{label}\"\nproduct = \"bench {label}\"\nvendor = \"portcullis bench\"\nsource = \"generated\"\n"
            );
            let mut rule = |id: &str, ports: &str| {
                let _ = write!(
                    p,
                    "\n[[rule]]\nid = \"{id}\"\ndirection = \"both\"\nprotocol = \"both\"\nports = {ports}\nwhy = \"benchmark\"\nsource = \"generated\"\n"
                );
            };
            for r in 0..rules {
                rule(&format!("r{r}"), &(BASE_PORT as usize + r).to_string());
            }
            if label == "full" {
                rule("low", &format!("\"1-{}\"", DENIED_PORT - 1));
                rule("high", &format!("\"{}-65535\"", DENIED_PORT + 1));
            }
            fs::write(&profile, p)?;
        }
        let site = self.dir.join(format!("site-{label}.toml"));
        fs::write(
            &site,
            format!(
                // The bench's own cgroup is the scope (never the host's root); its XDP
                // side judges only the bench's flows, so it accepts the scope + XDP gap.
                "profile = \"{}\"\nmode = \"enforce\"\nfailsafe = false\nscope = [\"{}\"]\nxdp = [{}]\nxdp_scope_only = true\npin_dir = \"{}\"\n",
                profile.display(),
                self.cgroups[i].rel,
                if xdp {
                    format!("\"pcb{i}a\"")
                } else {
                    String::new()
                },
                self.pin_dir(i).display()
            ),
        )?;
        Ok(site)
    }

    /// Pins a program by id under the lab's program directory (test_run needs an fd).
    /// A path on bpffs for a pin of the benchmark's own (a link), removed with the lab.
    pub fn bpffs_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(&self.prog_pins)?;
        let path = self.prog_pins.join(name);
        let _ = fs::remove_file(&path);
        Ok(path)
    }

    pub fn pin_program(&self, id: u64, name: &str) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(&self.prog_pins)?;
        let path = self.prog_pins.join(name);
        let _ = fs::remove_file(&path);
        output(
            Command::new("bpftool")
                .args(["prog", "pin", "id", &id.to_string()])
                .arg(&path),
        )?;
        Ok(path)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The namespaces and cgroups are guards of their own; receivers and agents are
        // gone by now (their guards drop first).
        let _ = fs::remove_dir_all(&self.prog_pins);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
