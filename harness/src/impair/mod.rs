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

use anyhow::Result;
use std::fmt;
use std::time::Duration;

mod engine;
mod impairer;
mod netlink;
#[cfg(test)]
mod tests;

pub use engine::Stats;
pub use impairer::Impairer;

#[derive(Debug, Clone, PartialEq)]
pub enum Impairment {
    /// Drop every Nth packet (N >= 2).
    DropEvery(u32),
    /// Hold back every Nth packet (N >= 2) and release it after `hold` (>= 1) later packets
    /// have been accepted (or after [`HOLD_TIMEOUT`]).
    Reorder { every: u32, hold: u32 },
    /// Send every Nth packet (N >= 1) twice.
    Duplicate { every: u32 },
    /// Delay every packet by this long (keeping order; 0 < delay <= 10s).
    Delay(Duration),
}

/// Which packets the rule selects (default: all IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
    Icmp,
    /// Only non-first IPv4 fragments (iptables `-f`), e.g. the tails of a fragmented tunnel
    /// packet. Seen only where nothing in the node uses conntrack (which reassembles).
    Fragments,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Icmp => "icmp",
            Proto::Fragments => "fragments",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The canonical step text: `drop every 10`, `reorder every 10 hold 3`, `duplicate every 5`,
/// `delay 50ms`.
impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Impairment::DropEvery(n) => write!(f, "drop every {n}"),
            Impairment::Reorder { every, hold } => write!(f, "reorder every {every} hold {hold}"),
            Impairment::Duplicate { every } => write!(f, "duplicate every {every}"),
            Impairment::Delay(d) => {
                if d.subsec_nanos() % 1_000_000 == 0 {
                    write!(f, "delay {}ms", d.as_millis())
                } else {
                    write!(f, "delay {d:?}")
                }
            }
        }
    }
}

/// The longest a reordered packet is held when fewer than `hold` packets follow it.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest `delay` accepted.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

const MARK_BASE: u32 = 0x7670_0000;
const MARK_MASK: u32 = 0xffff_0000;

/// The fwmark of the duplicate copies sent for queue `queue` (the rule skips it).
pub fn dup_mark(queue: u16) -> u32 {
    MARK_BASE | queue as u32
}

impl Impairment {
    /// Checks the numbers (what [`parse`] enforces), for impairments built in code.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Impairment::DropEvery(n) if n < 2 => Err(format!("drop every {n}: N must be at least 2")),
            Impairment::Reorder { every, .. } if every < 2 => Err(format!("reorder every {every}: N must be at least 2")),
            Impairment::Reorder { hold: 0, .. } => Err("reorder: hold must be at least 1".into()),
            Impairment::Duplicate { every: 0 } => Err("duplicate every 0: N must be at least 1".into()),
            Impairment::Delay(d) if d.is_zero() || d > MAX_DELAY => {
                Err(format!("delay {d:?}: must be more than 0 and at most {MAX_DELAY:?}"))
            }
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------- parsing

use crate::model::route::words;

const USAGE: &str = "expected an impairment: `drop every N`, `reorder every N hold M`, `duplicate every N` or `delay 50ms`";

/// Parses the step's text after `impair IFNAME`: "drop every 10", "reorder every 10 hold 3",
/// "duplicate every 5", "delay 50ms"; an optional trailing "udp" / "tcp" / "icmp" or
/// "proto udp" selects the protocol (default: all IPv4). Errors are (byte offset within `s`,
/// message); a missing word is reported at `s.len()`.
pub fn parse(s: &str) -> Result<(Impairment, Option<Proto>), (usize, String)> {
    let w = words(s);
    let end = s.len();
    let mut i = 0;
    let next = |i: &mut usize| -> Option<(usize, &str)> {
        let r = w.get(*i).copied();
        *i += 1;
        r
    };
    let keyword = |i: &mut usize, kw: &str, after: &str| -> Result<(), (usize, String)> {
        match w.get(*i).copied() {
            Some((_, word)) if word == kw => {
                *i += 1;
                Ok(())
            }
            Some((o, word)) => Err((o, format!("expected `{kw}` after `{after}`, got `{word}`"))),
            None => Err((end, format!("expected `{kw}` after `{after}`"))),
        }
    };
    let number = |i: &mut usize, after: &str, min: u32| -> Result<u32, (usize, String)> {
        match w.get(*i).copied() {
            Some((o, word)) => {
                *i += 1;
                let n: u32 = word.parse().map_err(|_| (o, format!("expected a number of packets after `{after}`, got `{word}`")))?;
                if n < min {
                    return Err((o, format!("`{after} {n}`: the number must be at least {min}")));
                }
                Ok(n)
            }
            None => Err((end, format!("expected a number of packets after `{after}`"))),
        }
    };
    // `fragments` may also come first: `impair eth0 fragments reorder every 10 hold 3`.
    let leading_fragments = matches!(w.first(), Some((_, "fragments")));
    if leading_fragments {
        i += 1;
    }
    let (o0, kind) = next(&mut i).ok_or((end, USAGE.to_string()))?;
    let imp = match kind {
        "drop" => {
            keyword(&mut i, "every", "drop")?;
            Impairment::DropEvery(number(&mut i, "every", 2)?)
        }
        "reorder" => {
            keyword(&mut i, "every", "reorder")?;
            let every = number(&mut i, "every", 2)?;
            keyword(&mut i, "hold", &format!("every {every}"))?;
            let hold = number(&mut i, "hold", 1)?;
            Impairment::Reorder { every, hold }
        }
        "duplicate" => {
            keyword(&mut i, "every", "duplicate")?;
            Impairment::Duplicate { every: number(&mut i, "every", 1)? }
        }
        "delay" => {
            let (o, word) = next(&mut i).ok_or((end, "expected a duration after `delay`, like `50ms`".to_string()))?;
            let d = crate::model::step::parse_duration(word)
                .ok_or((o, format!("`{word}` is not a duration: write it like `50ms` or `1.5s`")))?;
            if d.is_zero() || d > MAX_DELAY {
                return Err((o, format!("a delay must be more than 0 and at most {}s", MAX_DELAY.as_secs())));
            }
            Impairment::Delay(d)
        }
        other => return Err((o0, format!("unknown impairment `{other}`: {USAGE}"))),
    };
    let proto_of = |o: usize, word: &str| -> Result<Proto, (usize, String)> {
        match word {
            "udp" => Ok(Proto::Udp),
            "tcp" => Ok(Proto::Tcp),
            "icmp" => Ok(Proto::Icmp),
            "fragments" => Ok(Proto::Fragments),
            _ => Err((o, format!("unknown protocol `{word}`: udp, tcp or icmp"))),
        }
    };
    let proto = match next(&mut i) {
        None => None,
        Some((_, "proto")) => {
            let (o, word) = next(&mut i).ok_or((end, "expected a protocol after `proto`: udp, tcp or icmp".to_string()))?;
            Some(proto_of(o, word)?)
        }
        Some((o, word @ ("udp" | "tcp" | "icmp" | "fragments"))) if !leading_fragments => Some(proto_of(o, word)?),
        Some((o, word)) => {
            return Err((o, format!("unexpected `{word}`: only a protocol (`udp`, `tcp`, `icmp` or `proto udp`) may follow `{imp}`")))
        }
    };
    if let Some((o, word)) = next(&mut i) {
        return Err((o, format!("unexpected `{word}` after the protocol")));
    }
    Ok((imp, if leading_fragments { Some(Proto::Fragments) } else { proto }))
}
