//! Members of a peer group, as profiles and site configs write them: networks
//! (`"192.0.2.0/24"`, a bare address) and host names (`"repo.clearswift.net"`,
//! `"*.mailshell.net"`).
//!
//! Each member is checked where it is written, so an error points at its own line.
//! Names follow RFC 1035 as RFC 1123 relaxed it: labels of 1-63 letters, digits and
//! hyphens, not starting or ending with a hyphen, at most 253 characters in all, and a
//! last label that is not all digits (so a mistyped address is never taken for a name).
//! They are case-insensitive and kept in lowercase. `*.example.com` matches every name
//! below `example.com`, at any depth, but not `example.com` itself; `*` only stands
//! alone as the first label, and needs at least two labels after it, so that no
//! wildcard covers a whole top-level domain.

use std::{fmt, net::IpAddr, ops::Range};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

use crate::config::error::Invalid;

/// A network of a peer group: a CIDR, or a bare address meaning that one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// Parses a CIDR or a bare address.
    pub fn parse(text: &str) -> Result<Cidr, Invalid> {
        let net = match (text.parse::<IpNet>(), text.parse::<IpAddr>()) {
            (Ok(net), _) => net,
            (_, Ok(addr)) => IpNet::from(addr),
            _ => {
                return Err(Invalid::new(
                    format!("invalid CIDR \"{text}\""),
                    "write an IPv4 or IPv6 network such as \"192.0.2.0/24\" or \"2001:db8::/32\", or a single address",
                ));
            }
        };
        // A typo such as 10.0.0.5/8 would open far more than meant: refuse host bits.
        if net.trunc() != net {
            return Err(Invalid::new(
                format!("CIDR \"{text}\" has host bits set"),
                format!("did you mean \"{}\"?", net.trunc()),
            ));
        }
        Ok(Cidr(net))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A host name or wildcard, validated and lowercase.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName {
    /// `*.name`: every name strictly below `name`.
    pub wildcard: bool,
    /// The name (after `*.` for a wildcard), lowercase, no trailing dot.
    pub name: String,
}

const NAME_HINT: &str = "a host name is labels of letters, digits and '-' separated by dots, e.g. \"repo.example.com\", or \"*.example.com\" for every name below example.com";

impl HostName {
    /// Parses a name or a `*.` wildcard.
    pub fn parse(text: &str) -> Result<HostName, Invalid> {
        let bad = |why: String| Invalid::new(format!("host name \"{text}\" {why}"), NAME_HINT);
        let lower = text.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.ends_with('.') {
            return Err(Invalid::new(
                format!("host name \"{text}\" ends with a dot"),
                format!(
                    "write it without the trailing dot: \"{}\"",
                    text.trim_end_matches('.')
                ),
            ));
        }
        if name.len() > 253 {
            return Err(bad(format!(
                "is {} characters long; at most 253",
                name.len()
            )));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() {
                return Err(bad("has an empty label".into()));
            }
            if *label == "*" {
                return Err(bad(
                    "has '*' inside; a wildcard is only \"*.\" at the start".into(),
                ));
            }
            if label.len() > 63 {
                return Err(bad(format!(
                    "has a label of {} characters; at most 63",
                    label.len()
                )));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(bad(format!("has the character '{c}'")));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad(format!(
                    "has a label \"{label}\" that starts or ends with '-'"
                )));
            }
        }
        if labels.len() > portcullis_common::names::MAX_LABELS {
            return Err(bad(format!(
                "has {} labels; the datapath matches at most {}",
                labels.len(),
                portcullis_common::names::MAX_LABELS
            )));
        }
        if labels
            .last()
            .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(bad("ends in an all-numeric label".into()));
        }
        if wildcard && labels.len() < 2 {
            return Err(Invalid::new(
                format!("wildcard \"{text}\" covers a whole top-level domain"),
                "name at least two labels after \"*.\", e.g. \"*.example.com\"",
            ));
        }
        Ok(HostName {
            wildcard,
            name: name.to_string(),
        })
    }

    /// Whether `host` (a dotted name, any case) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.strip_suffix(&self.name)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
        } else {
            host == self.name
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

impl Serialize for HostName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        HostName::parse(&String::deserialize(d)?).map_err(Invalid::de)
    }
}

/// One member of a peer group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// A network.
    Net(Cidr),
    /// A host name or wildcard, matched against DNS answers.
    Name(HostName),
}

impl Peer {
    /// Parses a member: text with a '/' or ':' or made of digits and dots is an
    /// address or network (so "10.0.0.5/8" is an error about host bits, not a bad
    /// name); anything else is a host name.
    pub fn parse(text: &str) -> Result<Peer, Invalid> {
        let address_like =
            text.contains(['/', ':']) || text.chars().all(|c| c.is_ascii_digit() || c == '.');
        if address_like {
            Cidr::parse(text).map(Peer::Net)
        } else {
            HostName::parse(text).map(Peer::Name)
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Net(c) => write!(f, "{}", c.0),
            Peer::Name(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Peer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A peer group's members as written, with the span of the list.
pub type PeerList = Spanned<Vec<Peer>>;

/// Reads a list of members; each one is checked with its own span, so an error in a
/// list written over several lines points at the right line.
pub fn peer_list<'de, D: Deserializer<'de>>(d: D) -> Result<PeerList, D::Error> {
    let list = Spanned::<Vec<Spanned<String>>>::deserialize(d)?;
    let span: Range<usize> = list.span();
    let members = list
        .into_inner()
        .into_iter()
        .map(|text| Peer::parse(text.get_ref()).map_err(|e| e.de_at(text.span())))
        .collect::<Result<Vec<_>, D::Error>>()?;
    Ok(Spanned::new(span, members))
}

/// The networks of a member list.
pub fn networks(list: &[Peer]) -> impl Iterator<Item = IpNet> + '_ {
    list.iter().filter_map(|p| match p {
        Peer::Net(c) => Some(c.0),
        Peer::Name(_) => None,
    })
}

/// The names of a member list.
pub fn names(list: &[Peer]) -> impl Iterator<Item = &HostName> {
    list.iter().filter_map(|p| match p {
        Peer::Name(n) => Some(n),
        Peer::Net(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> Invalid {
        Peer::parse(text).unwrap_err()
    }

    #[test]
    fn names_and_networks() {
        assert_eq!(
            Peer::parse("Repo.ClearSwift.NET").unwrap(),
            Peer::Name(HostName {
                wildcard: false,
                name: "repo.clearswift.net".into()
            })
        );
        let w = HostName::parse("*.mailshell.net").unwrap();
        assert!(w.wildcard);
        assert_eq!(w.to_string(), "*.mailshell.net");
        assert!(matches!(Peer::parse("192.0.2.1").unwrap(), Peer::Net(_)));
        assert!(matches!(
            Peer::parse("2001:db8::/32").unwrap(),
            Peer::Net(_)
        ));
        assert!(Peer::parse("resolver1-mdaemon.ctmail.com").is_ok());
        assert!(Peer::parse("gfi-downloader-137146314.us-east-1.elb.amazonaws.com").is_ok());
        assert!(Peer::parse("0.rhel.pool.ntp.org").is_ok());
    }

    #[test]
    fn wildcards_match_any_depth_below_but_not_the_apex() {
        let w = HostName::parse("*.mailshell.net").unwrap();
        assert!(w.matches("sn12.mailshell.net"));
        assert!(w.matches("a.b.MailShell.net."));
        assert!(!w.matches("mailshell.net"));
        assert!(!w.matches("evilmailshell.net"));
        let e = HostName::parse("repo.clearswift.net").unwrap();
        assert!(e.matches("REPO.clearswift.net"));
        assert!(!e.matches("x.repo.clearswift.net"));
    }

    #[test]
    fn each_bad_name_has_its_own_message_and_a_hint() {
        for (text, needle) in [
            ("example.com.", "ends with a dot"),
            ("a..example.com", "empty label"),
            ("a.*.example.com", "'*' inside"),
            ("*.com", "whole top-level domain"),
            ("under_score.example.com", "character '_'"),
            ("-a.example.com", "starts or ends with '-'"),
            ("a-.example.com", "starts or ends with '-'"),
            ("1.2.3.400", "invalid CIDR"),
            ("10.0.0.5/8", "host bits"),
            ("example.123", "all-numeric"),
        ] {
            let e = err(text);
            assert!(e.message.contains(needle), "{text}: {}", e.message);
            assert!(!e.hint.is_empty(), "{text}");
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(err(&long_label).message.contains("at most 63"));
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert!(err(&long_name).message.contains("at most 253"));
        let many = vec!["a"; 33].join(".") + ".com";
        assert!(err(&many).message.contains("labels"));
    }
}
