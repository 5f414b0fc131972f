//! Which sockets of the enforced host wait for inbound flows (from `/proc/PID/net`), for
//! the report's "exposure closed" findings: a denied inbound port a listener reachable
//! from outside serves is one that enforcing closes.

use std::{fs, net::IpAddr, path::Path};

use crate::model::{IpProtocol, Protocol};

/// A socket waiting for inbound flows: a TCP listener or a bound, unconnected UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The address it is bound to (unspecified: all).
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
}

impl Listener {
    /// Reachable from another host: bound to all addresses or to a non-loopback one.
    pub fn reachable_from_outside(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => !a.is_loopback(),
            IpAddr::V6(a) => {
                !a.is_loopback() && !a.to_ipv4_mapped().is_some_and(|m| m.is_loopback())
            }
        }
    }
}

/// TCP_LISTEN and TCP_CLOSE (an unconnected UDP socket) in `/proc/net/*`'s `st` column.
const TCP_LISTEN: &str = "0A";
const UDP_UNCONNECTED: &str = "07";

/// The listeners of the network namespace of process `pid` (the agent's: the host it
/// enforces), from `/proc/PID/net/{tcp,tcp6,udp,udp6}`; this process's namespace when
/// `pid` is 0 or gone. Unreadable files give no listeners.
///
/// Parsed by hand: four fixed-format kernel files, two columns each; a procfs crate
/// would bring far more than it saves.
pub fn listeners(pid: u32) -> Vec<Listener> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let base = if pid != 0 && proc_dir.join("net").is_dir() {
        proc_dir.join("net")
    } else {
        Path::new("/proc/self/net").to_path_buf()
    };
    let mut out = Vec::new();
    for (file, protocol, state) in [
        ("tcp", Protocol::Tcp, TCP_LISTEN),
        ("tcp6", Protocol::Tcp, TCP_LISTEN),
        ("udp", Protocol::Udp, UDP_UNCONNECTED),
        ("udp6", Protocol::Udp, UDP_UNCONNECTED),
    ] {
        if let Ok(text) = fs::read_to_string(base.join(file)) {
            out.extend(
                parse_proc_net(&text, state)
                    .into_iter()
                    .map(|(addr, port)| Listener {
                        protocol,
                        addr,
                        port,
                    }),
            );
        }
    }
    out
}

/// The local (address, port) of the rows in `state` of a `/proc/net/{tcp,udp}[6]` file.
fn parse_proc_net(text: &str, state: &str) -> Vec<(IpAddr, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let st = cols.nth(1)?;
            if st != state {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            Some((hex_addr(addr)?, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// An address as the kernel prints it: 32-bit words in host (little-endian) order.
fn hex_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        )
    };
    match hex.len() {
        8 => Some(IpAddr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// The finding for an exposure closed on a port a reachable listener serves.
pub fn exposure_finding(
    protocol: IpProtocol,
    port: u16,
    listeners: &[Listener],
) -> Option<(String, String)> {
    let l = listeners.iter().find(|l| {
        l.protocol.number() == protocol.0 && l.port == port && l.reachable_from_outside()
    })?;
    let bound = match l.addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    };
    Some((
        bound.clone(),
        format!(
            "{port} is reachable from outside ({protocol} listener on {bound}); enforcing closes it"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
       0: 00000000:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
       1: 0100007F:2BCB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
       2: 0112A8C6:0019 0212A8C6:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
    ";
    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
       0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0
    ";

    #[test]
    fn proc_net_listeners() {
        let v4 = parse_proc_net(TCP, TCP_LISTEN);
        assert_eq!(
            v4,
            vec![
                ("0.0.0.0".parse().unwrap(), 3306),
                ("127.0.0.1".parse().unwrap(), 11211)
            ]
        );
        assert_eq!(
            parse_proc_net(TCP6, TCP_LISTEN),
            vec![("::1".parse().unwrap(), 80)]
        );
        let ls: Vec<Listener> = v4
            .into_iter()
            .map(|(addr, port)| Listener {
                protocol: Protocol::Tcp,
                addr,
                port,
            })
            .collect();
        let (bound, text) = exposure_finding(IpProtocol(6), 3306, &ls).unwrap();
        assert_eq!(bound, "0.0.0.0:3306");
        assert!(text.starts_with("3306 is reachable from outside"), "{text}");
        assert_eq!(
            exposure_finding(IpProtocol(6), 11211, &ls),
            None,
            "loopback only"
        );
        assert_eq!(
            exposure_finding(IpProtocol(17), 3306, &ls),
            None,
            "other protocol"
        );
    }
}
