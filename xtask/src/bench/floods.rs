//! S1, S2: a 64-byte UDP flood (trafgen) from namespace B to A across N destination
//! ports no rule opens, and the packets each filter drops per second: our XDP program
//! against nftables `netdev ingress` (S1), our cgroup_skb ingress program against
//! nftables `inet input` with sockets bound to the ports (S2), each nftables both with a
//! set and with a linear chain of N rules. The peers (trafgen, nftables) live here: only
//! the benchmark uses them.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use portcullis_tests::{Agent, Proc, Signal, in_cgroup_netns, in_netns, output};
use serde_json::Value;

use super::{
    BASE_PORT, FLOOD_PORT, Plan, SIZES, Tools,
    agent::denied,
    lab::Lab,
    stats::{Goal, Results, ratio},
};
use crate::step;

/// A trafgen flood from B to size i's veth in A, 60-byte frames (64 on the wire with the
/// FCS) to `ports` consecutive UDP ports from [`FLOOD_PORT`]; killed on drop.
struct Flood {
    child: Child,
    log: PathBuf,
}

impl Flood {
    fn start(lab: &Lab, i: usize, ports: usize) -> anyhow::Result<Flood> {
        let v: Value = serde_json::from_str(&output(Command::new("ip").args([
            "-n",
            &lab.ns_a.name,
            "-j",
            "link",
            "show",
            &format!("pcb{i}a"),
        ]))?)?;
        let mac = v[0]["address"].as_str().context("the veth's MAC address")?;
        let conf = lab.dir.join(format!("flood-{i}-{ports}.cfg"));
        fs::write(
            &conf,
            format!(
                "{{ eth(da={mac}, type=0x0800), ipv4(saddr=198.19.20{i}.2, daddr=198.19.20{i}.1, ttl=64), udp(sp=40000, dp=dinc({FLOOD_PORT}, {})), fill(0x00, 18) }}\n",
                FLOOD_PORT as usize + ports - 1
            ),
        )?;
        let log = lab.dir.join("trafgen.log");
        let file = fs::File::create(&log)?;
        let child = lab
            .ns_b
            .command("trafgen")
            .args(["--dev", &format!("pcb{i}b"), "--conf"])
            .arg(&conf)
            .args(["--cpus", "1"])
            // Its own process group: trafgen forks a sender per CPU, and only a ^C-like
            // SIGINT to the whole group stops the sender and makes it print its summary.
            .process_group(0)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting trafgen")?;
        Ok(Flood { child, log })
    }

    /// Stops the flood and returns how long trafgen says it sent, in seconds.
    fn stop(mut self) -> anyhow::Result<f64> {
        Signal::Int.send_group(self.child.id());
        let status = self.child.wait()?;
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        // trafgen's summary: "1 sec, 959826 usec on CPU0 (243172 packets)".
        let secs = text
            .lines()
            .filter(|l| l.contains("usec on CPU"))
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some(w.first()?.parse::<f64>().ok()? + w.get(2)?.parse::<f64>().ok()? / 1e6)
            })
            .fold(0.0, f64::max);
        if secs <= 0.0 {
            bail!(
                "trafgen ({status}) reported no sending time: {}",
                text.trim()
            );
        }
        Ok(secs)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        Signal::Kill.send_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops per second: the filter's drop counter before and after one flood, divided by
/// the time trafgen spent sending. The counters are read while nothing is sent, so
/// reading them (a process each) takes no CPU from the flood.
fn drop_rate(
    lab: &Lab,
    plan: &Plan,
    i: usize,
    ports: usize,
    count: &dyn Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<f64> {
    let c0 = count()?;
    let flood = Flood::start(lab, i, ports)?;
    thread::sleep(plan.flood);
    let secs = flood.stop()?;
    // Let the receive path drain what is queued.
    thread::sleep(Duration::from_millis(100));
    let c1 = count()?;
    if c1 <= c0 {
        bail!(
            "no drops counted during the flood (size {i}, {ports} ports): the filter did not see it"
        );
    }
    Ok((c1 - c0) as f64 / secs)
}

/// The ceiling of any XDP filter on this path: the object's `pc_noop_drop` (drops every
/// frame, reads nothing) attached to size i's veth by `prog_run --attach-drop`, during
/// one flood; the veth's own count of XDP drops over the time trafgen spent sending.
/// (xdp-tools' `xdp-bench drop` would be the obvious peer, but 1.3.1 fails to load on
/// this kernel: it wants a tracepoint, `xdp_redirect_map_err`, that 6.18 no longer has.)
/// Our XDP must be off: it would see the flood first.
fn xdp_drop_ceiling(
    tools: &Tools,
    lab: &Lab,
    plan: &Plan,
    i: usize,
    ports: usize,
) -> anyhow::Result<f64> {
    let dev = format!("pcb{i}a");
    let pin = lab.bpffs_path(&format!("drop-link-{i}"))?;
    output(
        lab.ns_a
            .command(&tools.prog_run)
            .arg("--object")
            .arg(&tools.object)
            .args(["--attach-drop", &dev, "--pin"])
            .arg(&pin),
    )
    .context("attaching the empty XDP drop program")?;
    // Unpinning the only reference detaches it, on error too.
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _unpin = Unpin(pin);
    let drops = || -> anyhow::Result<u64> {
        let text = output(lab.ns_a.command("ethtool").args(["-S", &dev]))?;
        Ok(text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_drops"))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum())
    };
    drop_rate(lab, plan, i, ports, &drops)
}

/// An nftables table in namespace A, deleted on drop.
struct NftTable {
    ns: String,
    family: &'static str,
}

const NFT_TABLE: &str = "pcbench";

impl NftTable {
    /// `hook`: "ingress" (netdev, on the veth) or "input" (inet). `set`: a set lookup,
    /// else a linear chain of one rule per allowed port.
    fn load(lab: &Lab, i: usize, ports: usize, hook: &str, set: bool) -> anyhow::Result<NftTable> {
        let family = if hook == "ingress" { "netdev" } else { "inet" };
        let allowed: Vec<String> = (0..ports)
            .map(|p| (BASE_PORT as usize + p).to_string())
            .collect();
        let chain_head = if hook == "ingress" {
            format!("type filter hook ingress device \"pcb{i}a\" priority 0; policy accept;")
        } else {
            "type filter hook input priority 0; policy accept;".to_owned()
        };
        let body = if set {
            "udp dport @allowed accept\n".to_owned()
        } else {
            allowed
                .iter()
                .map(|p| format!("udp dport {p} accept\n"))
                .collect()
        };
        let script = format!(
            "table {family} {NFT_TABLE} {{\n set allowed {{ type inet_service; elements = {{ {} }} }}\n counter drops {{ }}\n chain filter {{\n {chain_head}\n {body} meta l4proto udp counter name \"drops\" drop\n }}\n}}\n",
            allowed.join(", ")
        );
        let path = lab.dir.join("nft.conf");
        fs::write(&path, script)?;
        let table = NftTable {
            ns: lab.ns_a.name.clone(),
            family,
        };
        output(lab.ns_a.command("nft").arg("-f").arg(&path))
            .context("loading the nftables ruleset")?;
        Ok(table)
    }

    fn drops(&self) -> anyhow::Result<u64> {
        let text = output(in_netns(&self.ns, "nft").args([
            "list",
            "counter",
            self.family,
            NFT_TABLE,
            "drops",
        ]))?;
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .context("parsing nft's counter")
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = in_netns(&self.ns, "nft")
            .args(["delete", "table", self.family, NFT_TABLE])
            .status();
    }
}

/// A process in namespace A and size i's cgroup with a UDP socket bound to each flooded
/// port, so the flood reaches sockets (cgroup_skb ingress runs at socket delivery).
fn receiver(lab: &Lab, i: usize, ports: usize) -> anyhow::Result<Proc> {
    let py = format!(
        "import resource,socket,time\nresource.setrlimit(resource.RLIMIT_NOFILE,(4096,4096))\nss=[]\nfor p in range({FLOOD_PORT},{}):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('198.19.20{i}.1',p)); ss.append(s)\nprint('bound',flush=True)\ntime.sleep(3600)\n",
        FLOOD_PORT as usize + ports
    );
    let mut child = in_cgroup_netns(&lab.cgroups[i].path, &lab.ns_a.name)
        .args(["python3", "-c", &py])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the UDP receiver")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("receiver stdout")?;
    let r = Proc(child);
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "bound" {
        bail!("the UDP receiver could not bind its {ports} ports");
    }
    Ok(r)
}

pub fn measure_floods(
    tools: &Tools,
    lab: &Lab,
    plan: &Plan,
    agents: &mut [Agent],
    r: &mut Results,
) -> anyhow::Result<()> {
    for (i, (size, ports)) in SIZES.iter().enumerate().take(3) {
        step(&format!(
            "bench S1: {ports}-port UDP flood, drops/s: our XDP vs nftables netdev ingress (set, linear chain of {ports})"
        ));
        let (mut ours, mut set, mut linear, mut ceiling) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            // The agent's XDP goes on for our measurement and off for nftables' (XDP
            // runs before netdev ingress and would drop the flood first): a reload of
            // the same site file with `xdp` rewritten.
            lab.site(i, size, *ports, true)?;
            agents[i].reload()?;
            let agent = &agents[i];
            ours.push(drop_rate(lab, plan, i, *ports, &|| denied(agent))?);
            lab.site(i, size, *ports, false)?;
            agents[i].reload()?;
            for (set_lookup, out) in [(true, &mut set), (false, &mut linear)] {
                let t = NftTable::load(lab, i, *ports, "ingress", set_lookup)?;
                out.push(drop_rate(lab, plan, i, *ports, &|| t.drops())?);
            }
            ceiling.push(xdp_drop_ceiling(tools, lab, plan, i, *ports)?);
        }
        r.add(
            &format!("S1.{size}.xdp_drop_ceiling.pps"),
            "drops/s",
            ceiling.clone(),
            None,
        );
        r.add(
            &format!("S1.{size}.ours_vs_ceiling"),
            "ratio",
            ratio(&ours, &ceiling),
            None,
        );
        add_flood(
            r,
            "S1",
            size,
            "ours_xdp",
            "nft_netdev_set",
            "nft_netdev_linear",
            ours,
            set,
            linear,
        );

        step(&format!(
            "bench S2: {ports}-port UDP flood to bound sockets, drops/s: our cgroup_skb vs nftables inet input"
        ));
        let receiver = receiver(lab, i, *ports)?;
        let (mut ours, mut set, mut linear) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            let agent = &agents[i];
            ours.push(drop_rate(lab, plan, i, *ports, &|| denied(agent))?);
            for (set_lookup, out) in [(true, &mut set), (false, &mut linear)] {
                let t = NftTable::load(lab, i, *ports, "input", set_lookup)?;
                out.push(drop_rate(lab, plan, i, *ports, &|| t.drops())?);
            }
        }
        drop(receiver);
        add_flood(
            r,
            "S2",
            size,
            "ours_cgroup_skb",
            "nft_inet_set",
            "nft_inet_linear",
            ours,
            set,
            linear,
        );
    }
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call per flood figure, names spelled out"
)]
fn add_flood(
    r: &mut Results,
    fig: &str,
    size: &str,
    ours_name: &str,
    set_name: &str,
    linear_name: &str,
    ours: Vec<f64>,
    set: Vec<f64>,
    linear: Vec<f64>,
) {
    r.add(
        &format!("{fig}.{size}.{ours_name}.pps"),
        "drops/s",
        ours.clone(),
        None,
    );
    r.add(
        &format!("{fig}.{size}.{set_name}.pps"),
        "drops/s",
        set.clone(),
        None,
    );
    r.add(
        &format!("{fig}.{size}.{linear_name}.pps"),
        "drops/s",
        linear.clone(),
        None,
    );
    r.add(
        &format!("{fig}.{size}.ours_vs_set"),
        "ratio",
        ratio(&ours, &set),
        Some(Goal::AtLeast(1.0)),
    );
    r.add(
        &format!("{fig}.{size}.ours_vs_linear"),
        "ratio",
        ratio(&ours, &linear),
        None,
    );
}
