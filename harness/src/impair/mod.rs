//! Deterministic, harness-native link impairment for a node (the kernel here has no netem).
//!
//! One iptables rule in the node, inserted at the top of `mangle POSTROUTING`,
//!
//! ```text
//! iptables -w 5 -t mangle -I POSTROUTING -o IFNAME [-p udp] -m mark ! --mark 0x76700000/0xffff0000
//!          -j NFQUEUE --queue-num Q --queue-bypass
//! ```
//!
//! sends every IPv4 packet *leaving* `IFNAME` (forwarded or sent by the node itself, like netem
//! on the interface's egress) to NFQUEUE queue `Q`. `POSTROUTING` rather than `FORWARD`: the
//! lab's own filter rules (`filter FORWARD/OUTPUT`, priority 0) have already run, so only packets
//! that really leave the interface are counted, and our `NF_ACCEPT` verdict (which continues with
//! the *next* hook, not the rest of our chain) skips nothing of the lab's rules except later rules
//! of `mangle POSTROUTING` itself. SNAT/MASQUERADE (`nat POSTROUTING`, priority 100) runs after
//! the verdict.
//!
//! A worker thread holds a raw `NETLINK_NETFILTER` socket (opened on a thread that entered the
//! node's namespace with [`NetNs::run`](crate::ns::NetNs::run)), bound to the queue in `NFQNL_COPY_PACKET` mode, and
//! gives verdicts. Packets are numbered 1, 2, ... in the order the kernel queues them (counting
//! only packets the rule matches), and packet N, 2N, 3N, ... is impaired:
//!
//! * `drop every N`: verdict `NF_DROP`.
//! * `reorder every N hold H`: the verdict of packet N is withheld until H later packets have been
//!   accepted, then issued right after the H-th one's (in the same `sendmsg`); the kernel
//!   re-injects in verdict order, so the receiver sees `.. N-1, N+1 .. N+H, N, N+H+1 ..`. A held
//!   packet that is not followed by H packets is released after [`HOLD_TIMEOUT`], so the end of a
//!   flow is never lost.
//! * `duplicate every N`: packet N is accepted, then an identical copy (the payload the kernel
//!   handed us, with the checksums already completed since `NFQA_CFG_F_GSO` is not set) is sent
//!   from a raw `IPPROTO_RAW` socket of the node, bound to `IFNAME` (`SO_BINDTODEVICE`) and marked
//!   with [`dup_mark`] so the rule above does not queue the copy again. The copy is a
//!   locally-generated packet of the node: it goes through `OUTPUT` and `POSTROUTING` (so NAT
//!   applies the same mapping via conntrack) and out of `IFNAME`. A copy larger than the
//!   interface MTU cannot be sent (`EMSGSIZE`; see [`Impairer::check`]).
//! * `delay D`: every verdict is held until D after the packet was read (a FIFO, so the order is
//!   kept); the worker's poll timeout is the time to the next due packet.
//!
//! IPv6 (`impair IF ipv6 ...`, [`Family::Ipv6`]): the same rule in `ip6tables` (`-p ipv6-icmp`
//! for `icmp`), the same queue handling. Neighbour discovery, router solicitations and
//! advertisements, redirects and MLD reports (ICMPv6 types 130-137 and 143) are accepted at once
//! and not counted, as ARP never reaches an IPv4 rule: whether the kernel sends one depends on
//! its neighbour cache's timers, and counting them would make "every Nth packet" depend on them.
//! Duplicates go out of an IPv6 raw socket (`v6.rs`).
//!
//! GSO packets are segmented by the kernel before queueing (no `NFQA_CFG_F_GSO`), so packets are
//! counted as they appear on the wire. The worker never sleeps: it polls the netlink socket and
//! an eventfd (the stop signal) with a timeout computed from the next held/delayed deadline.
//!
//! `--queue-bypass`: the worker binds the queue *before* the rule is inserted and the rule is
//! deleted *before* the worker stops, so while the rule exists there is always a listener. If the
//! worker nevertheless dies (see [`Impairer::check`]), the kernel accepts packets unimpaired
//! rather than black-holing the lab, which would make daemons time out far from the cause.
//!
//! Stopping ([`Impairer::stop`] or drop): the rule is deleted, then the worker issues `NF_ACCEPT`
//! for every packet it still holds (held/delayed ones first, in order, then any still in the
//! socket buffer) and exits; closing the socket unbinds the queue.

mod engine;
mod impairer;
mod netlink;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v6;
mod v6;

pub use engine::Stats;
pub use impairer::Impairer;

pub use vpnlab_model::impair::{parse, parse_spec, Family, Impairment, Proto, HOLD_TIMEOUT, MAX_DELAY};

const MARK_BASE: u32 = 0x7670_0000;
const MARK_MASK: u32 = 0xffff_0000;

/// The fwmark of the duplicate copies sent for queue `queue` (the rule skips it).
pub fn dup_mark(queue: u16) -> u32 {
    MARK_BASE | queue as u32
}
