//! Product profiles: a vendor's published port table as reviewed rules
//! (`profiles/*.toml`, schema in `profiles/README.md`).
//!
//! This module owns the rule form that both profiles and site configs write
//! ([`RuleSpec`]) and parses it. Values are checked as they are read: ports in 1-65535,
//! ranges not reversed, known directions and protocols, well-formed ids. A bad value
//! is therefore an error at its own line. Cross-checks between a profile and a site
//! (features, peer groups, duplicate ids across the two) are the compiler's job.
//!
//! The six built-in profiles are embedded in the binary. A user's own profile file can
//! be loaded by path.

use std::{
    collections::BTreeSet,
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

use crate::{
    config::{
        error::{Invalid, LineIndex, PolicyError, de_error},
        peers::PeerList,
    },
    model::{Protocol, RuleScope},
};

/// Name of the built-in peer set of `scope = "loopback"` rules. Sites can't define it.
pub const LOOPBACK_SET: &str = "loopback";

/// The built-in profiles: (slug, TOML text).
const BUILTIN: [(&str, &str); 6] = [
    ("xeams", include_str!("../../../profiles/xeams.toml")),
    (
        "clearswift-seg",
        include_str!("../../../profiles/clearswift-seg.toml"),
    ),
    (
        "clearswift-exchange",
        include_str!("../../../profiles/clearswift-exchange.toml"),
    ),
    (
        "gfi-mailessentials",
        include_str!("../../../profiles/gfi-mailessentials.toml"),
    ),
    (
        "mdaemon-securitygateway",
        include_str!("../../../profiles/mdaemon-securitygateway.toml"),
    ),
    ("iredmail", include_str!("../../../profiles/iredmail.toml")),
];

/// Slugs of the built-in profiles, in listing order.
pub const SLUGS: [&str; 6] = {
    let mut slugs = [""; 6];
    let mut i = 0;
    while i < BUILTIN.len() {
        slugs[i] = BUILTIN[i].0;
        i += 1;
    }
    slugs
};

/// One product profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name: `xeams`, `iredmail`, ...
    pub slug: Spanned<String>,
    /// Product display name.
    pub product: String,
    /// Vendor name.
    pub vendor: String,
    /// The source document the rules transcribe.
    pub source: String,
    /// Optional functionality a site can turn on.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// The vendor's named servers, as peer groups its rules use.
    #[serde(default, rename = "peer_group")]
    pub vendor_groups: Vec<VendorGroup>,
    /// The rules, in profile order.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
    /// Where the profile was read from (`profiles/<slug>.toml` for built-in ones).
    #[serde(skip)]
    pub file: PathBuf,
    #[serde(skip)]
    lines: LineIndex,
}

/// A feature a profile's rules can depend on.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// What sites write in `features = [..]` and `--feature`.
    pub name: Spanned<String>,
    /// What turning it on means.
    pub description: String,
}

/// A peer group the vendor's table fills in: the servers (host names, wildcards or
/// networks) a row names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorGroup {
    /// The group's name, as rules write it in `peers = ".."`.
    pub name: Spanned<String>,
    /// Its members.
    #[serde(deserialize_with = "crate::config::peers::peer_list")]
    pub peers: PeerList,
    /// What the servers are for, short.
    pub why: String,
    /// Document and row the servers are named in.
    pub source: String,
}

/// One rule as a profile or a site config writes it. Spanned fields are the ones later
/// checks (in the compiler) may need to point at.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable id, unique in the profile.
    pub id: Spanned<String>,
    /// in | out | both.
    pub direction: DirectionSpec,
    /// tcp | udp | both.
    pub protocol: ProtocolSpec,
    /// The ports, validated.
    pub ports: Spanned<Ports>,
    /// The feature that turns the rule on (None: always on).
    #[serde(default)]
    pub feature: Option<Spanned<String>>,
    /// any | loopback.
    #[serde(default = "any_scope")]
    pub scope: RuleScope,
    /// The peer group the rule is limited to.
    #[serde(default)]
    pub peers: Option<Spanned<String>>,
    /// The vendor's reason, short.
    pub why: String,
    /// Document and row (required in profiles; site rules default to "site").
    #[serde(default)]
    pub source: Option<String>,
    /// What the port rule does not capture of the vendor's row.
    #[serde(default)]
    pub note: Option<String>,
}

fn any_scope() -> RuleScope {
    RuleScope::Any
}

/// A rule's direction as written: a vendor's "In/Out" is `Both`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectionSpec {
    /// A remote peer opens the flow to a local port.
    In,
    /// This host opens the flow to a remote port.
    Out,
    /// Both; compiles to two rules, `<id>/in` and `<id>/out`.
    Both,
}

/// A rule's protocol as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolSpec {
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// TCP and UDP.
    Both,
}

impl ProtocolSpec {
    /// The protocols it stands for.
    pub fn protocols(self) -> &'static [Protocol] {
        match self {
            ProtocolSpec::Tcp => &[Protocol::Tcp],
            ProtocolSpec::Udp => &[Protocol::Udp],
            ProtocolSpec::Both => &[Protocol::Tcp, Protocol::Udp],
        }
    }
}

/// Reads one of a fixed set of lowercase keywords, with an error that quotes the value
/// and lists the choices.
fn keyword<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    what: &str,
    choices: &[(&str, T)],
) -> Result<T, D::Error> {
    let value = String::deserialize(d)?;
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            de_error(
                format!("{what} \"{value}\" is not one of {}", names.join(", ")),
                format!("write {what} = {}", names.join(" or ")),
            )
        })
}

impl<'de> Deserialize<'de> for DirectionSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(
            d,
            "direction",
            &[("in", Self::In), ("out", Self::Out), ("both", Self::Both)],
        )
    }
}

impl<'de> Deserialize<'de> for ProtocolSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(
            d,
            "protocol",
            &[("tcp", Self::Tcp), ("udp", Self::Udp), ("both", Self::Both)],
        )
    }
}

/// A rule's ports: inclusive ranges in 1-65535, as written (the compiler merges them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports(Vec<(u16, u16)>);

impl Ports {
    /// The ranges, in the order written.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
}

const PORTS_HINT: &str = "ports are 1-65535";
const PORTS_FORM_HINT: &str =
    "write a port (25), a range (\"6000-6010\") or a list ([80, 443, \"6000-6010\"])";

fn port(value: i64) -> Result<u16, Invalid> {
    match value {
        1..=65535 => Ok(value as u16),
        0 => Err(Invalid::new("port 0 is not a port", PORTS_HINT)),
        v if v < 0 => Err(Invalid::new(format!("port {v} is below 1"), PORTS_HINT)),
        v => Err(Invalid::new(format!("port {v} is above 65535"), PORTS_HINT)),
    }
}

fn port_range(text: &str) -> Result<(u16, u16), Invalid> {
    let number = |s: &str| {
        s.trim().parse::<i64>().map_err(|_| {
            Invalid::new(
                format!("\"{text}\" is not a port or port range"),
                PORTS_FORM_HINT,
            )
        })
    };
    let (from, to) = match text.split_once('-') {
        Some((a, b)) => (port(number(a)?)?, port(number(b)?)?),
        None => {
            let p = port(number(text)?)?;
            (p, p)
        }
    };
    if from > to {
        return Err(Invalid::new(
            format!("port range \"{text}\" is reversed"),
            format!("write the lower port first: \"{to}-{from}\""),
        ));
    }
    Ok((from, to))
}

/// One element of a port list as written, checked once its span is known.
enum RawPort {
    Number(i64),
    Text(String),
}

impl RawPort {
    fn range(&self) -> Result<(u16, u16), Invalid> {
        match self {
            RawPort::Number(n) => port(*n).map(|p| (p, p)),
            RawPort::Text(t) => port_range(t),
        }
    }
}

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Raw;
        impl de::Visitor<'_> for Raw {
            type Value = RawPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port or a \"from-to\" range")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                Ok(RawPort::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPort, E> {
                Ok(RawPort::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPort, E> {
                Ok(RawPort::Text(v.to_string()))
            }
        }
        d.deserialize_any(Raw)
    }
}

struct PortVisitor;

impl<'de> de::Visitor<'de> for PortVisitor {
    type Value = Vec<(u16, u16)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port, a \"from-to\" range, or a list of them")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        RawPort::Number(v)
            .range()
            .map(|r| vec![r])
            .map_err(Invalid::de)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        port_range(v).map(|r| vec![r]).map_err(Invalid::de)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut ranges = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawPort>>()? {
            ranges.push(item.get_ref().range().map_err(|e| e.de_at(item.span()))?);
        }
        if ranges.is_empty() {
            return Err(Invalid::new("the port list is empty", PORTS_FORM_HINT).de());
        }
        Ok(ranges)
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PortVisitor).map(Ports)
    }
}

/// Whether `name` is a valid id, slug, feature or peer group name: lowercase letters,
/// digits, and `-`, `_`, `.` after the first character. `/` is kept out because the
/// compiler uses it for the `/in` and `/out` halves of a `both` rule.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// A name error at `span` of `file`.
pub(crate) fn check_name(
    what: &str,
    name: &Spanned<String>,
    file: &Path,
    lines: &LineIndex,
) -> Result<(), PolicyError> {
    if valid_name(name.get_ref()) {
        return Ok(());
    }
    Err(
        PolicyError::new(format!("{what} \"{}\" is not a valid name", name.get_ref()))
            .hint(
                "use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit",
            )
            .at(Some(file), lines, name.span()),
    )
}

/// Checks that do not need the other file: names, ids unique in this file, a `why`,
/// and (for profiles, `features = Some(..)`) a `source` and a declared feature.
pub(crate) fn check_rules(
    rules: &[RuleSpec],
    file: &Path,
    lines: &LineIndex,
    features: Option<&BTreeSet<&str>>,
) -> Result<(), PolicyError> {
    let mut ids = BTreeSet::new();
    for rule in rules {
        let id = rule.id.get_ref();
        let here = |message: String, hint: &str| {
            PolicyError::new(message)
                .hint(hint)
                .at(Some(file), lines, rule.id.span())
        };
        check_name("rule id", &rule.id, file, lines)?;
        if !ids.insert(id.as_str()) {
            return Err(here(
                format!("duplicate rule id \"{id}\""),
                "rule ids must be unique: counters are kept by id",
            ));
        }
        if rule.why.trim().is_empty() {
            return Err(here(
                format!("rule \"{id}\" has an empty \"why\""),
                "say in a few words why the port is open",
            ));
        }
        if let Some(group) = &rule.peers {
            check_name("peer group", group, file, lines)?;
        }
        let Some(features) = features else { continue };
        if rule.source.as_deref().is_none_or(|s| s.trim().is_empty()) {
            return Err(here(
                format!("rule \"{id}\" has no \"source\""),
                "name the document and row the rule transcribes, e.g. source = \"<file> row 3\"",
            ));
        }
        if let Some(feature) = &rule.feature
            && !features.contains(feature.get_ref().as_str())
        {
            let declared: Vec<&str> = features.iter().copied().collect();
            return Err(PolicyError::new(format!(
                "rule \"{id}\" names unknown feature \"{}\"",
                feature.get_ref()
            ))
            .hint(if declared.is_empty() {
                "declare it in a [[features]] table".to_string()
            } else {
                format!(
                    "declare it in a [[features]] table; declared: {}",
                    declared.join(", ")
                )
            })
            .at(Some(file), lines, feature.span()));
        }
    }
    Ok(())
}

/// A profile's `[[peer_group]]`s: valid unique names, not the built-in `loopback`, at
/// least one member, a `why` and a `source`.
fn check_vendor_groups(
    groups: &[VendorGroup],
    file: &Path,
    lines: &LineIndex,
) -> Result<(), PolicyError> {
    let mut names = BTreeSet::new();
    for group in groups {
        let name = group.name.get_ref();
        let here = |message: String, hint: &str| {
            PolicyError::new(message)
                .hint(hint)
                .at(Some(file), lines, group.name.span())
        };
        check_name("peer group", &group.name, file, lines)?;
        if name == LOOPBACK_SET {
            return Err(here(
                "peer group \"loopback\" is built in".into(),
                "use scope = \"loopback\" in the rule, or another group name",
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(here(
                format!("duplicate peer group \"{name}\""),
                "declare each peer group once",
            ));
        }
        if group.peers.get_ref().is_empty() {
            return Err(
                PolicyError::new(format!("peer group \"{name}\" has no peers"))
                    .hint(
                        "list the servers the vendor names, e.g. peers = [\"updates.example.com\"]",
                    )
                    .at(Some(file), lines, group.peers.span()),
            );
        }
        if group.why.trim().is_empty() || group.source.trim().is_empty() {
            return Err(here(
                format!("peer group \"{name}\" needs a \"why\" and a \"source\""),
                "say what the servers are for and the document and row that names them",
            ));
        }
    }
    Ok(())
}

impl Profile {
    /// Parses and checks a profile's `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, PolicyError> {
        let mut profile: Profile =
            toml::from_str(text).map_err(|e| PolicyError::from_toml(file, text, &e))?;
        profile.file = file.to_path_buf();
        profile.lines = LineIndex::new(text);
        let lines = &profile.lines;
        check_name("profile slug", &profile.slug, file, lines)?;
        let mut features = BTreeSet::new();
        for feature in &profile.features {
            check_name("feature", &feature.name, file, lines)?;
            if !features.insert(feature.name.get_ref().as_str()) {
                return Err(PolicyError::new(format!(
                    "duplicate feature \"{}\"",
                    feature.name.get_ref()
                ))
                .hint("declare each feature once")
                .at(Some(file), lines, feature.name.span()));
            }
        }
        check_vendor_groups(&profile.vendor_groups, file, lines)?;
        check_rules(&profile.rules, file, lines, Some(&features))?;
        Ok(profile)
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = crate::config::error::read_config(
            path,
            "profile",
            "give the path of a profile TOML file (schema in profiles/README.md)",
        )?;
        Self::parse(&text, path)
    }

    /// The names of its features, in declaration order.
    pub fn feature_names(&self) -> Vec<String> {
        self.features
            .iter()
            .map(|f| f.name.get_ref().clone())
            .collect()
    }

    /// Every peer group its rules name.
    pub fn peer_groups(&self) -> BTreeSet<String> {
        self.rules
            .iter()
            .filter_map(|r| r.peers.as_ref())
            .map(|p| p.get_ref().clone())
            .collect()
    }

    /// The peer groups its rules name that it does not fill in itself: the site's to
    /// define (DNS servers, LDAP servers, ...).
    pub fn site_groups(&self) -> BTreeSet<String> {
        let mut groups = self.peer_groups();
        for g in &self.vendor_groups {
            groups.remove(g.name.get_ref());
        }
        groups
    }

    /// The `[[peer_group]]` named `name`.
    pub fn vendor_group(&self, name: &str) -> Option<&VendorGroup> {
        self.vendor_groups.iter().find(|g| g.name.get_ref() == name)
    }

    /// Byte offset -> line index of the profile's text.
    pub fn lines(&self) -> &LineIndex {
        &self.lines
    }
}

/// The built-in profile `slug`.
pub fn find(slug: &str) -> Result<Profile, PolicyError> {
    let Some((name, text)) = BUILTIN.iter().find(|(name, _)| *name == slug) else {
        return Err(
            PolicyError::new(format!("unknown product \"{slug}\"")).hint(format!(
                "built-in products: {}; or give a profile file by path",
                SLUGS.join(", ")
            )),
        );
    };
    Profile::parse(text, &PathBuf::from(format!("profiles/{name}.toml")))
}

/// Every built-in profile, in listing order.
pub fn builtin() -> Result<Vec<Profile>, PolicyError> {
    SLUGS.iter().map(|slug| find(slug)).collect()
}

/// Whether a NAME given where a slug is expected (`profile show NAME`,
/// `explain --product NAME`) is a path to a profile file instead: it has a `/` or ends
/// in `.toml`, which no slug does.
pub fn is_path(name: &str) -> bool {
    name.contains('/') || name.ends_with(".toml")
}

#[cfg(test)]
mod tests;
