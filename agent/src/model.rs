//! The typed vocabulary every stage shares: who opens a flow ([`Direction`]), the
//! transport ([`Protocol`]) and any IP protocol number ([`IpProtocol`]), audit or
//! enforce ([`Mode`]), how loopback is treated ([`LoopbackMode`]), which peers a rule
//! admits ([`RuleScope`]) and where programs
//! attach ([`ScopeTarget`]). Parsed once from text; nothing later compares strings.

use std::{
    fmt,
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Who opens the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A remote peer opens the flow to a local port.
    In,
    /// This host opens the flow to a remote port.
    Out,
}

impl Direction {
    /// The datapath's encoding (`portcullis_common::policy::DIR_*`).
    pub fn code(self) -> u8 {
        match self {
            Direction::In => portcullis_common::policy::DIR_IN,
            Direction::Out => portcullis_common::policy::DIR_OUT,
        }
    }

    /// From the datapath's encoding.
    pub fn from_code(code: u8) -> Self {
        if code == portcullis_common::policy::DIR_IN {
            Direction::In
        } else {
            Direction::Out
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
        })
    }
}

/// A transport protocol the policy can open ports for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// TCP or UDP from an IP protocol number; None for any other protocol.
    pub fn from_number(n: u8) -> Option<Self> {
        [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .find(|p| p.number() == n)
    }

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => portcullis_common::policy::IPPROTO_TCP,
            Protocol::Udp => portcullis_common::policy::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleScope {
    /// Any peer (or the rule's peer group).
    Any,
    /// Loopback peers only (services that listen on 127.0.0.1/::1). Such rules only
    /// matter with `loopback = "enforce"`; otherwise loopback is exempt anyway.
    Loopback,
}

/// audit | enforce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Count what would be dropped; drop nothing.
    #[default]
    Audit,
    /// Drop what the policy denies.
    Enforce,
}

impl Mode {
    /// The name the config, the CLI and the JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How loopback traffic is treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopbackMode {
    /// 127.0.0.0/8 and ::1 pass, counted on their own.
    #[default]
    Exempt,
    /// The rules apply on loopback too.
    Enforce,
}

impl LoopbackMode {
    /// The name the config and the JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            LoopbackMode::Exempt => "exempt",
            LoopbackMode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for LoopbackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the programs attach.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScopeTarget {
    /// The root cgroup: every process on the host.
    Host,
    /// A cgroup, relative to the cgroup2 mount (e.g. `system.slice/xeams.service`).
    /// Relative, without `..`.
    Cgroup(PathBuf),
    /// A systemd service by name (`postfix@-.service`), or a template for every instance
    /// (`postfix@.service`): every start of it is enforced before its first command runs
    /// (a drop-in attaches the pinned programs to its new cgroup), whether the agent runs
    /// or not.
    Unit(String),
}

impl fmt::Display for ScopeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeTarget::Host => f.write_str("host"),
            ScopeTarget::Cgroup(path) => write!(f, "{}", path.display()),
            ScopeTarget::Unit(name) => f.write_str(name),
        }
    }
}

impl Serialize for ScopeTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ScopeTarget {
    /// Scopes as one line for people and logs: "host, system.slice/x.service".
    pub fn join(scopes: &[ScopeTarget], separator: &str) -> String {
        let names: Vec<String> = scopes.iter().map(ToString::to_string).collect();
        names.join(separator)
    }

    /// How to write a scope (the hint of every scope error).
    pub const HINT: &'static str = "write \"host\", a systemd service such as \"xeams.service\", or a cgroup path relative to the cgroup2 mount such as \"system.slice/xeams.service\"";

    /// Parses a scope as the config writes it: "host", a systemd service name (no `/`,
    /// ending in `.service`), or a cgroup path relative to the cgroup2 mount, without
    /// "." or "..". The error is the message; [`Self::HINT`] is the fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "host" {
            return Ok(ScopeTarget::Host);
        }
        if !text.contains('/') && text.ends_with(UNIT_SUFFIX) {
            return unit_name(text).map(|n| ScopeTarget::Unit(n.to_owned()));
        }
        let path = PathBuf::from(text);
        if text.is_empty() || path.is_absolute() {
            return Err(format!("scope \"{text}\" is not a relative cgroup path"));
        }
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(format!("scope \"{text}\" must not contain \".\" or \"..\""));
        }
        Ok(ScopeTarget::Cgroup(path))
    }

    /// Parses `--scope`: what the config accepts, and also an absolute path under the
    /// cgroup2 mount (checked when the scope is resolved).
    pub fn parse_arg(text: &str) -> Result<Self, String> {
        let path = Path::new(text);
        if path.is_absolute()
            && path
                .components()
                .all(|c| !matches!(c, Component::ParentDir))
        {
            return Ok(ScopeTarget::Cgroup(path.to_path_buf()));
        }
        Self::parse(text).map_err(|e| format!("{e} (hint: {})", Self::HINT))
    }
}

/// The unit type a unit scope names: only services run `ExecStartPre=`.
const UNIT_SUFFIX: &str = ".service";

/// Checks a service name with systemd's rules (unit_name_is_valid): at most 255 bytes,
/// a non-empty prefix of ASCII letters, digits and `:-_.\\`, at most one `@` (a
/// template instance). The name is written into a drop-in path and a command line, so
/// nothing else may pass.
fn unit_name(text: &str) -> Result<&str, String> {
    let prefix = &text[..text.len() - UNIT_SUFFIX.len()];
    let valid_char = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    if text.len() > 255
        || prefix.is_empty()
        || prefix.starts_with('@')
        || !prefix.chars().all(valid_char)
        || prefix.matches('@').count() > 1
    {
        return Err(format!(
            "scope \"{text}\" is not a valid systemd service name"
        ));
    }
    Ok(text)
}

impl<'de> Deserialize<'de> for ScopeTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What a protected unit's start does when the programs are not pinned (the agent has
/// not run since boot, or could not load them): the site's `unpinned_start`, written
/// into each unit's drop-in (`crate::systemd`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum UnpinnedStart {
    /// The start fails: mail waits for the firewall (the default).
    #[default]
    Refuse,
    /// The unit starts unprotected, with an error in its journal and in `status`.
    Unprotected,
}

impl UnpinnedStart {
    /// The name the config and the drop-in use.
    pub fn as_str(self) -> &'static str {
        match self {
            UnpinnedStart::Refuse => "refuse",
            UnpinnedStart::Unprotected => "unprotected",
        }
    }
}

/// Any IP protocol number, named where the datapath knows it (tcp, udp, icmp, icmpv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// Known names and their numbers: the one table both ways go through.
    const NAMES: [(&'static str, u8); 4] = [
        ("tcp", portcullis_common::policy::IPPROTO_TCP),
        ("udp", portcullis_common::policy::IPPROTO_UDP),
        ("icmp", portcullis_common::policy::IPPROTO_ICMP),
        ("icmpv6", portcullis_common::policy::IPPROTO_ICMPV6),
    ];

    /// From a name ("tcp") or a decimal number ("132").
    pub fn parse(text: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, n)| Self(*n))
            .or_else(|| text.parse().ok().map(Self))
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for IpProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown IP protocol \"{text}\"")))
    }
}

impl From<Protocol> for IpProtocol {
    fn from(p: Protocol) -> Self {
        Self(p.number())
    }
}

#[cfg(test)]
mod tests {
    use super::ScopeTarget;

    #[test]
    fn scopes_parse_as_host_unit_or_cgroup() {
        assert_eq!(ScopeTarget::parse("host"), Ok(ScopeTarget::Host));
        assert_eq!(
            ScopeTarget::parse("postfix.service"),
            Ok(ScopeTarget::Unit("postfix.service".into()))
        );
        assert_eq!(
            ScopeTarget::parse("getty@tty1.service"),
            Ok(ScopeTarget::Unit("getty@tty1.service".into()))
        );
        assert_eq!(
            ScopeTarget::parse("system.slice/postfix.service"),
            Ok(ScopeTarget::Cgroup("system.slice/postfix.service".into()))
        );
        for bad in [".service", "a b.service", "a@b@c.service", "x;y.service"] {
            let err = ScopeTarget::parse(bad).expect_err(bad);
            assert!(err.contains("not a valid systemd service name"), "{err}");
        }
        let round = ScopeTarget::parse("xeams.service").expect("valid");
        assert_eq!(ScopeTarget::parse(&round.to_string()), Ok(round));
    }
}
