//! Per-flow evidence of would-denied traffic: what `portcullis report` needs to tell
//! breakage (a real exchange a policy would cut) from exposure (a scanner's touch that
//! enforcement rightly closes).
//!
//! The cgroup programs update one [`FlowEvidence`] per flow ([`crate::flow::FlowKey`])
//! on every would-denied packet in audit mode, replies counted against the flow they
//! belong to included, in the per-CPU LRU map [`crate::maps::AUDIT_FLOWS`]. The agent
//! sums the CPUs, folds each flow into its deny aggregate every flush and deletes the
//! entries of flows it has seen closed or idle. Nothing here decides a verdict.

use crate::policy::DIR_OUT;

/// TCP flag bits as in the TCP header's flags byte.
pub mod tcp {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// What one CPU saw of one would-denied flow. Fields named `in`/`out` count packets
/// this host received / sent, whatever the flow's direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvidence {
    /// `bpf_ktime_get_ns()` of the first packet this CPU counted (0: none).
    pub first_ns: u64,
    /// `bpf_ktime_get_ns()` of the last one.
    pub last_ns: u64,
    /// Wire packets received.
    pub packets_in: u64,
    /// Wire packets sent.
    pub packets_out: u64,
    /// Transport payload bytes received (TCP/UDP data, headers excluded).
    pub payload_in: u64,
    /// Transport payload bytes sent.
    pub payload_out: u64,
    /// `policy::DIR_*` of the flow: who opened it (a reply keeps its flow's direction).
    pub direction: u8,
    /// `stats::reason::*` of the first deny.
    pub reason: u8,
    /// TCP flags of every received packet, OR-ed.
    pub flags_in: u8,
    /// TCP flags of every sent packet, OR-ed.
    pub flags_out: u8,
    /// Padding, zero.
    pub _pad: [u8; 4],
}

impl FlowEvidence {
    /// Adds what another CPU saw of the same flow.
    pub fn merge(&mut self, o: &FlowEvidence) {
        if o.first_ns == 0 {
            return;
        }
        if self.first_ns == 0 {
            self.direction = o.direction;
            self.reason = o.reason;
        }
        self.first_ns = if self.first_ns == 0 {
            o.first_ns
        } else {
            self.first_ns.min(o.first_ns)
        };
        self.last_ns = self.last_ns.max(o.last_ns);
        self.packets_in += o.packets_in;
        self.packets_out += o.packets_out;
        self.payload_in += o.payload_in;
        self.payload_out += o.payload_out;
        self.flags_in |= o.flags_in;
        self.flags_out |= o.flags_out;
    }

    /// TCP flags of the side that opened the flow, and of the side that answered.
    fn opener_answerer(&self) -> (u8, u8) {
        if self.direction == DIR_OUT {
            (self.flags_out, self.flags_in)
        } else {
            (self.flags_in, self.flags_out)
        }
    }

    /// TCP: the three-way handshake completed, i.e. the answering side sent SYN+ACK and
    /// the opener sent an ACK (its SYN carries none, so any ACK of the opener's came
    /// after). False for UDP.
    pub fn handshake(&self) -> bool {
        let (opener, answerer) = self.opener_answerer();
        answerer & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK && opener & tcp::ACK != 0
    }

    /// Payload bytes the remote peer sent.
    pub fn payload_from_peer(&self) -> u64 {
        self.payload_in
    }

    /// Payload bytes this host sent.
    pub fn payload_from_host(&self) -> u64 {
        self.payload_out
    }

    /// TCP: a FIN or RST was seen either way (the flow ended or is ending).
    pub fn closed(&self) -> bool {
        (self.flags_in | self.flags_out) & (tcp::FIN | tcp::RST) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DIR_IN;

    #[test]
    fn handshakes_by_direction() {
        // A SYN scan: SYN in, SYN+ACK out, RST in.
        let syn_scan = FlowEvidence {
            first_ns: 1,
            direction: DIR_IN,
            flags_in: tcp::SYN | tcp::RST,
            flags_out: tcp::SYN | tcp::ACK,
            ..FlowEvidence::default()
        };
        assert!(!syn_scan.handshake());
        assert!(syn_scan.closed());
        let connect_scan = FlowEvidence {
            flags_in: tcp::SYN | tcp::ACK | tcp::RST,
            ..syn_scan
        };
        assert!(connect_scan.handshake());
        // An outbound connection: the roles swap.
        let out = FlowEvidence {
            first_ns: 5,
            direction: DIR_OUT,
            flags_out: tcp::SYN | tcp::ACK,
            flags_in: tcp::SYN | tcp::ACK,
            ..FlowEvidence::default()
        };
        assert!(out.handshake());
        assert!(!out.closed());
        let mut sum = FlowEvidence::default();
        sum.merge(&out);
        sum.merge(&FlowEvidence {
            first_ns: 3,
            last_ns: 9,
            payload_in: 7,
            flags_in: tcp::FIN,
            ..FlowEvidence::default()
        });
        assert_eq!(
            (sum.first_ns, sum.last_ns, sum.payload_in, sum.direction),
            (3, 9, 7, DIR_OUT)
        );
        assert!(sum.closed());
    }
}
