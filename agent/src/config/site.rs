//! The site config: what one installation says about itself. It names the product (or a
//! profile file), the features it uses, its peer groups, extra rules, the mode, and
//! where and how the daemon attaches.
//!
//! It is parsed once, with serde and `deny_unknown_fields` throughout: a misspelt key
//! is an error, never a silently looser policy. Values are checked while they are read,
//! so each error points at its own line. Fields keep their source spans where the
//! compiler may later need to point at them (features, peer groups, rules).
//!
//! Defaults (an empty file is a valid site config apart from naming no product):
//! `features = []`, `mode = "audit"`, `failsafe = true`, `loopback = "exempt"`,
//! `icmp_echo = true`, no `[peers]`, `any_peer_groups = []`, `vendor_peers = "names"`,
//! no `[[rule]]`,
//! `scope = ["host"]`, `xdp = []`, `xdp_scope_only = false`, `events_per_sec = 100`,
//! `dns_grace = 60`, `unpinned_start = "refuse"`, `pin_dir = "/sys/fs/bpf/portcullis"`,
//! `audit_min_window = "7d"`, `[metrics] listen` unset (no endpoint), and every part of
//! the `base` set on (`config::base`: the host's own NTP, mirrors, resolvers, DHCP and
//! metrics, under host scope).
//!
//! The peer group `dns-servers` ([`DNS_SERVERS`]) is also the list of trusted resolvers
//! the datapath learns host name addresses from (`config::resolvers`): it takes
//! networks only.

pub use crate::config::peers::Cidr;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::{
    config::{
        base::{self, BaseRule, BaseSwitches, HostBase},
        error::{LineIndex, PolicyError, de_error},
        peers::{self, PeerList},
        profile::{self, LOOPBACK_SET, Profile, RuleSpec},
    },
    model::{LoopbackMode, Mode},
    model::{ScopeTarget, UnpinnedStart},
};

/// The peer group of the site's DNS resolvers: the trusted resolvers, when defined.
pub const DNS_SERVERS: &str = "dns-servers";

/// Longest `dns_grace` accepted, in seconds (one day, like the longest TTL honoured).
pub const MAX_DNS_GRACE: u32 = 86_400;

/// The site config the packaged agent runs (and `report` reads) unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/portcullis/portcullis.toml";

/// Why a cgroup scope and XDP are refused together unless `xdp_scope_only = true`: only
/// the scope's egress programs record the flows whose replies XDP lets in, so on an XDP
/// interface every other process's replies would be dropped, silently. Used for the
/// site config (with its line) and for `run --scope/--xdp` (without).
pub fn scope_xdp_error() -> PolicyError {
    PolicyError::new(
        "xdp with a cgroup scope drops the replies to every flow a process outside the scope opens on the xdp interfaces (only the scope's egress fills the xdp reply table)",
    )
    .hint(
        "use scope = [\"host\"] with xdp, or no xdp with a cgroup scope, or set xdp_scope_only = true to accept that only the scope's flows get replies through xdp",
    )
}

/// A site config. See the module docs for the defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Slug of a built-in profile. Exactly one of `product` and `profile` is set.
    #[serde(default)]
    pub product: Option<Spanned<String>>,
    /// Path of a profile file, relative to the site config's directory.
    #[serde(default)]
    pub profile: Option<Spanned<PathBuf>>,
    /// Profile features to turn on.
    #[serde(default)]
    pub features: Vec<Spanned<String>>,
    /// audit (default) | enforce.
    #[serde(default)]
    pub mode: Mode,
    /// Keep inbound `failsafe_port`/tcp open (rule `failsafe-ssh`). Default true.
    #[serde(default = "yes")]
    pub failsafe: bool,
    /// The TCP port the failsafe rule keeps open: the host's SSH port. Default 22.
    #[serde(default = "ssh_port")]
    pub failsafe_port: std::num::NonZeroU16,
    /// exempt (default) | enforce.
    #[serde(default)]
    pub loopback: LoopbackMode,
    /// Let ICMP echo through. Default true.
    #[serde(default = "yes")]
    pub icmp_echo: bool,
    /// Peer groups: name -> networks and host names. A group the profile defines too
    /// is replaced by the site's list.
    #[serde(default, deserialize_with = "peer_groups")]
    pub peers: BTreeMap<String, PeerList>,
    /// Peer groups that may be undefined or empty, meaning "any peer".
    #[serde(default)]
    pub any_peer_groups: Vec<Spanned<String>>,
    /// names: rules with a peer group of the profile's named servers are limited to
    /// those servers (their addresses learned from DNS answers); any (the default):
    /// those groups mean any peer.
    #[serde(default)]
    pub vendor_peers: VendorPeers,
    /// Extra site rules, after the profile's.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
    /// Where to attach: the whole host, or cgroups. Default `["host"]`.
    #[serde(default = "host_scope", deserialize_with = "scope_list")]
    pub scope: Vec<ScopeTarget>,
    /// Interfaces to attach the XDP program to. Default none.
    #[serde(default, deserialize_with = "interfaces")]
    pub xdp: Vec<String>,
    /// With a cgroup scope and XDP: accept that XDP passes replies only to flows the
    /// scope opened. Default false, and the combination is refused (see
    /// [`scope_xdp_error`]).
    #[serde(default)]
    pub xdp_scope_only: bool,
    /// Deny events per second before rate limiting. Default 100.
    #[serde(default = "default_events_per_sec")]
    pub events_per_sec: u32,
    /// Seconds an address learned from a DNS answer stays usable for new flows after
    /// its TTL ran out (a client may connect a little after the answer expired, or
    /// from a cache). Default 60, at most [`MAX_DNS_GRACE`].
    #[serde(default = "default_dns_grace", deserialize_with = "dns_grace")]
    pub dns_grace: u32,
    /// What a unit scope's start does when the programs are not pinned (after a
    /// reboot with the agent disabled, or programs a new kernel refuses): `refuse` (the
    /// default: the unit fails to start, it never runs unprotected) or `unprotected`
    /// (it starts, with an error in its journal and `protected: false` in status).
    #[serde(default)]
    pub unpinned_start: UnpinnedStart,
    /// Where maps and links are pinned. Default `/sys/fs/bpf/portcullis`.
    #[serde(default = "default_pin_dir", deserialize_with = "absolute_path")]
    pub pin_dir: PathBuf,
    /// The shortest audit window `portcullis report` calls safe to enforce after, e.g.
    /// `"7d"` (the default: weekly jobs run at least once), `"30d"` (monthly renewals),
    /// `"0"` (no minimum). `report --min-window` overrides it.
    #[serde(default = "default_audit_min_window", deserialize_with = "duration")]
    pub audit_min_window: Duration,
    /// The metrics endpoint.
    #[serde(default)]
    pub metrics: Metrics,
    /// The parts of the `base` set kept: `base = false`, or `[base] ntp = false`, ...
    /// Default: all on.
    #[serde(default, deserialize_with = "base::switches")]
    pub base: BaseSwitches,
    /// What the host's configuration names for the base set, once read
    /// ([`Site::read_host`]); empty until then, so parsing alone does no I/O.
    #[serde(skip)]
    pub host: HostBase,
    #[serde(skip)]
    lines: LineIndex,
}

/// What the profile's named servers (its `[[peer_group]]`s) mean for the site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VendorPeers {
    /// Rules of those groups are limited to the vendor's servers, their addresses
    /// learned from trusted resolvers' answers. The default: it is what the vendor
    /// documents, and the default mode (audit) shows what it would refuse before a
    /// site enforces it (README "Names").
    #[default]
    Names,
    /// Those groups mean any peer: the one-line way back, for a gateway whose software
    /// resolves in a way the kernel cannot read (DoH, DoT, an in-process cache).
    Any,
}

impl VendorPeers {
    /// The name the config and the JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            VendorPeers::Names => "names",
            VendorPeers::Any => "any",
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Socket address to serve metrics on, e.g. `"127.0.0.1:9975"`. Default: off.
    #[serde(default, deserialize_with = "socket_addr")]
    pub listen: Option<SocketAddr>,
}

fn yes() -> bool {
    true
}

fn ssh_port() -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(22).expect("22 is not zero")
}

fn host_scope() -> Vec<ScopeTarget> {
    vec![ScopeTarget::Host]
}

fn default_events_per_sec() -> u32 {
    100
}

fn default_dns_grace() -> u32 {
    60
}

fn dns_grace<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let secs = i64::deserialize(d)?;
    match u32::try_from(secs) {
        Ok(s) if s <= MAX_DNS_GRACE => Ok(s),
        _ => Err(de_error(
            format!("dns_grace = {secs} is out of range"),
            format!("give seconds from 0 to {MAX_DNS_GRACE}; the default is 60"),
        )),
    }
}

/// The default `audit_min_window`: seven days.
pub const DEFAULT_AUDIT_MIN_WINDOW: Duration = Duration::from_secs(7 * 86_400);

fn default_audit_min_window() -> Duration {
    DEFAULT_AUDIT_MIN_WINDOW
}

/// A duration written like `30m`, `2h`, `7d`, `1w` or `1h30m`, or `0` (one parser for
/// the config and the command line: `observe::report::parse_min_window`).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    crate::observe::report::parse_min_window(&text)
        .map(Duration::from_secs)
        .map_err(|e| de_error(e, "write a duration such as \"7d\", \"30d\" or \"12h\""))
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/portcullis")
}

fn scope_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ScopeTarget>, D::Error> {
    let list = Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| ScopeTarget::parse(s).map_err(|e| de_error(e, ScopeTarget::HINT)))
        .collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() {
        return Err(de_error(
            "scope is empty",
            "write scope = [\"host\"] or list the cgroups to attach to",
        ));
    }
    if list.len() > 1 && list.contains(&ScopeTarget::Host) {
        return Err(de_error(
            "scope lists \"host\" with other cgroups",
            "\"host\" already covers every cgroup: list it alone",
        ));
    }
    let unique: BTreeSet<_> = list.iter().collect();
    if unique.len() != list.len() {
        return Err(de_error(
            "scope lists a cgroup twice",
            "list each cgroup once",
        ));
    }
    Ok(list)
}

/// `[peers]`: each member is checked with its own span ([`peers::peer_list`]).
fn peer_groups<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, PeerList>, D::Error> {
    #[derive(Deserialize)]
    struct Members(#[serde(deserialize_with = "peers::peer_list")] PeerList);
    let raw = BTreeMap::<String, Members>::deserialize(d)?;
    Ok(raw.into_iter().map(|(name, m)| (name, m.0)).collect())
}

fn interfaces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    let mut seen = BTreeSet::new();
    for name in &list {
        // Linux interface names: 1-15 bytes (IFNAMSIZ - 1), no '/' or whitespace.
        let valid = !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && !name.chars().any(|c| c == '/' || c.is_whitespace());
        if !valid {
            return Err(de_error(
                format!("interface name \"{name}\" is not valid"),
                "use a name from `ip link`, at most 15 characters",
            ));
        }
        if !seen.insert(name) {
            return Err(de_error(
                format!("interface \"{name}\" is listed twice"),
                "list each interface once",
            ));
        }
    }
    Ok(list)
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(d)?;
    if !path.is_absolute() {
        return Err(de_error(
            format!("pin_dir \"{}\" is not an absolute path", path.display()),
            "pin under the bpf filesystem, e.g. \"/sys/fs/bpf/portcullis\"",
        ));
    }
    Ok(path)
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        de_error(
            format!("listen address \"{text}\" is not a socket address"),
            "write an address and port, e.g. \"127.0.0.1:9975\" or \"[::1]:9975\"",
        )
    })
}

impl Site {
    /// The top-level keys of a site config (to spot one misplaced under a table).
    pub const TOP_LEVEL_KEYS: [&str; 21] = [
        "product",
        "profile",
        "features",
        "mode",
        "failsafe",
        "failsafe_port",
        "loopback",
        "icmp_echo",
        "any_peer_groups",
        "vendor_peers",
        "scope",
        "xdp",
        "xdp_scope_only",
        "events_per_sec",
        "dns_grace",
        "unpinned_start",
        "pin_dir",
        "audit_min_window",
        "rule",
        "metrics",
        "base",
    ];

    /// Parses and checks a site config's `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, PolicyError> {
        let mut site: Site =
            toml::from_str(text).map_err(|e| PolicyError::from_toml(file, text, &e))?;
        site.lines = LineIndex::new(text);
        for (name, networks) in &site.peers {
            let name = Spanned::new(networks.span(), name.clone());
            profile::check_name("peer group", &name, file, &site.lines)?;
            if name.get_ref() == LOOPBACK_SET {
                return Err(PolicyError::new("peer group \"loopback\" is built in")
                    .hint("use scope = \"loopback\" in the rule, or another group name")
                    .at(Some(file), &site.lines, name.span()));
            }
            if name.get_ref() == DNS_SERVERS
                && let Some(host) = peers::names(networks.get_ref()).next()
            {
                return Err(PolicyError::new(format!(
                    "peer group \"{DNS_SERVERS}\" lists the host name \"{host}\"; it names the trusted resolvers, which must be addresses"
                ))
                .hint("write the resolvers' addresses or networks, e.g. dns-servers = [\"192.0.2.53\"] (a resolver's name would need a resolver to find it)")
                .at(Some(file), &site.lines, networks.span()));
            }
        }
        for name in &site.any_peer_groups {
            profile::check_name("peer group", name, file, &site.lines)?;
        }
        profile::check_rules(&site.rules, file, &site.lines, None)?;
        if !site.xdp.is_empty() && site.scope != [ScopeTarget::Host] && !site.xdp_scope_only {
            /// Only the span of `xdp`, for the error (the site itself keeps no span of it).
            #[derive(Deserialize)]
            struct XdpSpan {
                xdp: Spanned<toml::Value>,
            }
            let span = toml::from_str::<XdpSpan>(text).map_or(0..0, |x| x.xdp.span());
            return Err(scope_xdp_error().at(Some(file), &site.lines, span));
        }
        Ok(site)
    }

    /// The built-in default site for a product: audit, failsafe on, loopback exempt,
    /// the vendor's named servers on (`vendor_peers = "names"`), and every peer group
    /// the site would fill in meaning any peer (the default knows nothing of the
    /// site's servers). `product` is not checked here; compiling
    /// reports an unknown one.
    pub fn default_for(product: &str) -> Site {
        match profile::find(product) {
            Ok(profile) => Site::for_profile(&profile),
            Err(_) => Site {
                product: Some(Spanned::new(0..0, product.to_string())),
                ..Site::empty()
            },
        }
    }

    /// The built-in default site (see [`Site::default_for`]) for a profile.
    pub fn for_profile(profile: &Profile) -> Site {
        Site {
            product: Some(Spanned::new(0..0, profile.slug.get_ref().clone())),
            any_peer_groups: profile
                .site_groups()
                .into_iter()
                .map(|g| Spanned::new(0..0, g))
                .collect(),
            ..Site::empty()
        }
    }

    /// Replaces the features (e.g. with those given on the command line).
    pub fn set_features(&mut self, features: Vec<String>) {
        self.features = features
            .into_iter()
            .map(|f| Spanned::new(0..0, f))
            .collect();
    }

    /// Reads what the host under `root` (`/` on a real host) names for the base set.
    pub fn read_host(&mut self, root: &Path) {
        self.host = HostBase::read(root);
    }

    /// The base rules this site keeps: none unless the scope is the whole host (a
    /// cgroup scope leaves the host's own traffic alone).
    pub fn base_rules(&self) -> Vec<BaseRule> {
        if self.scope != [ScopeTarget::Host] {
            return Vec::new();
        }
        self.host.rules(&self.base, self.metrics.listen)
    }

    /// Byte offset -> line index of the config's text (empty for built-in defaults).
    pub fn lines(&self) -> &LineIndex {
        &self.lines
    }

    /// Span of the `product` or `profile` value: where errors about the profile's
    /// rules point in the site config.
    pub fn profile_span(&self) -> Range<usize> {
        match (&self.product, &self.profile) {
            (Some(p), _) => p.span(),
            (None, Some(p)) => p.span(),
            (None, None) => 0..0,
        }
    }

    /// Every default, no product. Parsing the empty document keeps the defaults in one
    /// place (the serde attributes above).
    fn empty() -> Site {
        toml::from_str("").expect("an empty site config parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Site, PolicyError> {
        Site::parse(text, Path::new("site.toml"))
    }

    #[test]
    fn defaults() {
        let site = parse("product = \"xeams\"").unwrap();
        assert_eq!(site.mode, Mode::Audit);
        assert!(site.failsafe);
        assert_eq!(site.loopback, LoopbackMode::Exempt);
        assert!(site.icmp_echo);
        assert_eq!(site.scope, vec![ScopeTarget::Host]);
        assert!(site.xdp.is_empty());
        assert_eq!(site.events_per_sec, 100);
        assert_eq!(site.dns_grace, 60);
        assert_eq!(site.pin_dir, PathBuf::from("/sys/fs/bpf/portcullis"));
        assert_eq!(site.metrics.listen, None);
        assert_eq!(site.audit_min_window, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn audit_min_window_is_a_duration() {
        let site = parse("product = \"xeams\"\naudit_min_window = \"30d\"").unwrap();
        assert_eq!(site.audit_min_window, Duration::from_secs(30 * 86_400));
        let none = parse("product = \"xeams\"\naudit_min_window = \"0\"").unwrap();
        assert_eq!(none.audit_min_window, Duration::ZERO);
        let err = parse("product = \"xeams\"\naudit_min_window = \"7 days\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"7 days\"") && err.contains(":2"), "{err}");
    }

    #[test]
    fn daemon_settings() {
        let site = parse(
            "product = \"xeams\"\nscope = [\"system.slice/xeams.service\"]\nxdp = [\"eth0\"]\n\
             xdp_scope_only = true\nevents_per_sec = 5\ndns_grace = 0\npin_dir = \"/sys/fs/bpf/x\"\n[metrics]\nlisten = \"127.0.0.1:9975\"\n",
        )
        .unwrap();
        assert_eq!(
            site.scope,
            vec![ScopeTarget::Cgroup("system.slice/xeams.service".into())]
        );
        assert_eq!(site.xdp, vec!["eth0".to_string()]);
        assert!(site.xdp_scope_only);
        assert_eq!(site.events_per_sec, 5);
        assert_eq!(site.dns_grace, 0);
        assert_eq!(site.metrics.listen, Some("127.0.0.1:9975".parse().unwrap()));
    }

    #[test]
    fn bad_daemon_settings_are_errors_at_their_line() {
        for (text, needle) in [
            ("scope = [\"/sys/fs/cgroup/x\"]", "relative cgroup path"),
            ("scope = [\"a/../b\"]", "\"..\""),
            ("scope = []", "scope is empty"),
            ("scope = [\"host\", \"a\"]", "with other cgroups"),
            ("scope = [\"a\"]\nxdp = [\"eth0\"]", "cgroup scope"),
            ("xdp = [\"a very long interface\"]", "interface name"),
            ("pin_dir = \"bpf\"", "absolute"),
            ("dns_grace = -1", "out of range"),
            ("dns_grace = 86401", "out of range"),
            (
                "[peers]\ndns-servers = [\"192.0.2.53\",\n  \"ns.example.com\"]",
                "host name \"ns.example.com\"",
            ),
            ("[metrics]\nlisten = \"localhost\"", "socket address"),
            ("[metrics]\nport = 1", "unknown field"),
        ] {
            let err = parse(&format!("product = \"xeams\"\n{text}\n")).unwrap_err();
            assert!(err.message.contains(needle), "{text}: {err}");
            assert!(err.line.is_some_and(|l| l >= 2), "{text}: {err}");
        }
    }

    #[test]
    fn top_level_keys_are_the_fields() {
        for key in Site::TOP_LEVEL_KEYS {
            let err = parse(&format!("{key} = 0\n"))
                .err()
                .map(|e| e.message)
                .unwrap_or_default();
            assert!(!err.contains("unknown field"), "{key}: {err}");
        }
        let err = parse("porduct = 0\n").unwrap_err();
        assert!(err.message.contains("unknown field `porduct`"));
    }

    #[test]
    fn cidrs() {
        let site =
            parse("product = \"x\"\n[peers]\na = [\"192.0.2.1\", \"2001:db8::/32\"]").unwrap();
        let nets: Vec<String> = site.peers["a"]
            .get_ref()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["192.0.2.1/32", "2001:db8::/32"]);
        let err = parse("product = \"x\"\n[peers]\na = [\"10.0.0.5/8\"]").unwrap_err();
        assert!(err.hint.unwrap().contains("10.0.0.0/8"));
    }
}
