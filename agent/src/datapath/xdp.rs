//! Attaching the XDP program (`pc_xdp`, in the same object as the cgroup programs and
//! sharing their maps) to network interfaces, with its link pinned like theirs.
//!
//! Native (driver) mode is tried first: the program then runs before the kernel
//! allocates anything for a packet, which is the point of filtering at XDP. Drivers
//! without native XDP get generic (skb) mode: the same verdicts, later in the receive
//! path. The mode is part of the link's pin name (`xdp-<iface>-<mode>-<tag>`), so
//! `status` can say which without asking the kernel.
//!
//! An interface holds one XDP program per mode, so a restart cannot attach a second one
//! next to the first the way cgroup links coexist: when a pinned XDP link for the
//! interface exists, the new program replaces the old one in that link atomically
//! (`BPF_LINK_UPDATE`), and no packet goes unfiltered in between.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::programs::{
    Xdp,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use portcullis_common::maps::programs;

use crate::datapath::loader::Datapath;

/// Where the XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before any skb exists.
    Native,
    /// In the kernel's receive path, on an skb (drivers without native XDP).
    Generic,
}

impl XdpMode {
    fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Prefix of every XDP link pin.
const PIN_PREFIX: &str = "xdp-";

/// The pin name of an XDP link: `xdp-<iface>-<mode>-<tag>`.
fn pin_name(iface: &str, mode: XdpMode, tag: &str) -> String {
    format!("{PIN_PREFIX}{iface}-{mode}-{tag}")
}

/// The interface and mode of an XDP link pin, from its file name; `None` for any other
/// pin (cgroup links). Interface names may contain '-', tags do not.
pub fn describe_pin(path: &Path) -> Option<(String, XdpMode)> {
    let name = path.file_name()?.to_str()?.strip_prefix(PIN_PREFIX)?;
    let (rest, _tag) = name.rsplit_once('-')?;
    let (iface, mode) = rest.rsplit_once('-')?;
    Some((iface.to_owned(), XdpMode::from_name(mode)?))
}

/// Attaches `pc_xdp` to `iface` (native mode, else generic) and pins the link as
/// `links/xdp-<iface>-<mode>-<tag>` under the datapath's pin directory. The program is
/// loaded on first use. If an earlier run left an XDP link pinned for `iface`, that
/// link is switched to the new program atomically and re-pinned under the new tag (its
/// mode unchanged); the old pin is removed. Returns the pin path and the mode.
pub fn attach(dp: &mut Datapath, iface: &str, tag: &str) -> anyhow::Result<(PathBuf, XdpMode)> {
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        bail!("invalid interface name {iface:?}");
    }
    if tag.contains('-') || tag.contains('/') {
        bail!("invalid link tag {tag:?} (no '-' or '/')");
    }
    let links_dir = dp.paths().links();
    let prog: &mut Xdp = dp
        .ebpf
        .program_mut(programs::XDP)
        .with_context(|| {
            format!(
                "the eBPF object has no program {:?} (rebuild with `cargo xtask build`)",
                programs::XDP
            )
        })?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("loading program {} (verifier)", programs::XDP))?;
    }

    if let Some((old_pin, mode)) = pinned_for(&links_dir, iface) {
        match replace(prog, &old_pin) {
            Ok(link) => {
                let path = links_dir.join(pin_name(iface, mode, tag));
                if path != old_pin {
                    let _ = fs::remove_file(&path);
                    link.pin(&path)
                        .with_context(|| format!("pinning link {}", path.display()))?;
                    fs::remove_file(&old_pin)
                        .with_context(|| format!("removing the old pin {}", old_pin.display()))?;
                } else {
                    // Same name: the kernel link behind the pin now runs the new program.
                    drop(link);
                }
                return Ok((path, mode));
            }
            Err(e) => {
                // The interface went away and came back (the old link is defunct), or the
                // pin is stale: start afresh.
                log::warn!(
                    "{}: cannot update the pinned XDP link ({e:#}); attaching a new one",
                    old_pin.display()
                );
                let _ = fs::remove_file(&old_pin);
            }
        }
    }

    let (id, mode) = match prog.attach(iface, aya::programs::XdpMode::Driver) {
        Ok(id) => (id, XdpMode::Native),
        Err(native) => match prog.attach(iface, aya::programs::XdpMode::Skb) {
            Ok(id) => {
                log::info!("{iface}: no native XDP ({native}); attached in generic mode");
                (id, XdpMode::Generic)
            }
            Err(generic) => bail!(
                "attaching {} to interface {iface:?}: native mode: {native}; generic mode: {generic} (does the interface exist in this network namespace? another XDP program attached?)",
                programs::XDP
            ),
        },
    };
    let link = FdLink::try_from(prog.take_link(id)?).with_context(|| {
        format!("{iface}: the kernel attached XDP through netlink, which cannot be pinned (BPF links for XDP need Linux 5.9+)")
    })?;
    let path = links_dir.join(pin_name(iface, mode, tag));
    let _ = fs::remove_file(&path);
    link.pin(&path)
        .with_context(|| format!("pinning link {}", path.display()))?;
    Ok((path, mode))
}

/// The pinned XDP link of `iface`, if any, with its mode.
fn pinned_for(links_dir: &Path, iface: &str) -> Option<(PathBuf, XdpMode)> {
    let dir = fs::read_dir(links_dir).ok()?;
    dir.filter_map(Result::ok)
        .map(|e| e.path())
        .find_map(|p| match describe_pin(&p) {
            Some((i, mode)) if i == iface => Some((p, mode)),
            _ => None,
        })
}

/// Points the pinned link at `prog` (one `BPF_LINK_UPDATE`) and returns it, still
/// pinned at its old path.
fn replace(prog: &mut Xdp, pin: &Path) -> anyhow::Result<FdLink> {
    let old = PinnedLink::from_pin(pin)
        .with_context(|| format!("opening pinned link {}", pin.display()))?;
    let link =
        XdpLink::try_from(FdLink::from(old)).context("the pinned link is not an XDP link")?;
    let id = prog.attach_to_link(link).context("updating the XDP link")?;
    Ok(FdLink::try_from(prog.take_link(id)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        for (iface, mode) in [
            ("eth0", XdpMode::Native),
            ("veth-a-1", XdpMode::Generic),
            ("enp0s31f6", XdpMode::Native),
        ] {
            let name = pin_name(iface, mode, "1700000000");
            assert_eq!(
                describe_pin(Path::new(&name)),
                Some((iface.to_owned(), mode)),
                "{name}"
            );
        }
        assert_eq!(
            describe_pin(Path::new("/x/1234-pc_ingress-1700000000")),
            None
        );
        assert_eq!(describe_pin(Path::new("xdp-eth0-turbo-1")), None);
    }
}
