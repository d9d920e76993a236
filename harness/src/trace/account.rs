//! When one reading of the observation points is the last: every packet of the probe counted
//! as created has ended, so nothing can still change the sets.
//!
//! Without this, the points are read until three readings 20 ms apart agree (`observe.rs`,
//! `settle`): ~60 ms of waiting after the drop events already said where the probes died, and
//! still only a guess that nothing is in flight. The check here is a proof instead, by counting.
//! It is asked only once the probe's traffic is over (ping has exited after the drop events
//! accounted for both probes: no request is sent any more), on a reading taken after the drop
//! events it is given (so each drop counted here happened before the reading started).
//!
//! For each kind of packet (echo request to `dest`, echo reply from `dest`, ICMP error quoting
//! either):
//! - **created**: a packet of the probe is built in one node and passes that node's output hook
//!   once (ping's requests, the replies, the errors a node sends): counted in `out_first`. A
//!   packet that is forwarded, bridged, or carried through a tunnel (a VPN daemon writes it to
//!   its tun device, the kernel decapsulates it) enters the next node at prerouting, not output.
//! - **ended**: it is handed to a node's own stack (counted in `in_last`, after every other
//!   input chain), or the kernel frees it as dropped (a drop event of that kind; copies refused
//!   by a socket (`Drop::is_copy`) and `OTHERHOST` copies of a frame a LAN bridge flooded say
//!   nothing about the packet itself, which goes on).
//!
//! The reading is final when, for every kind, created == ended, and the replies created equal
//! the requests delivered. Why nothing can change after it:
//! - The counts only grow, and a packet ends once. Equality with the drops taken before the
//!   reading means every packet created by the time of the reading had ended by then.
//! - A new packet needs a live one to make it. Requests: ping is gone. Replies: one per request
//!   delivered (`icmp_echo` builds it on the same call chain as the delivery); the equality of
//!   replies created and requests delivered means every delivered request's reply exists, and is
//!   therefore counted, and has ended. ICMP errors: a node sends one while it holds the packet it
//!   quotes (the kernel builds and sends it, through the output hook, before it frees that
//!   packet: `ip_error`, `ip_forward`'s TTL check, the REJECT target, `icmp_send` for a redirect
//!   before forwarding), so an error about an ended packet exists already; no error is sent
//!   about an error.
//! - Frames a bridge in a node switched (with br_netfilter the node's hooks see them) may have
//!   been flooded, and their copies are not counted as created or ended: such a reading is
//!   never taken as the last ([`bridged`]).
//! - A packet held somewhere (a userspace VPN daemon, an unresolved neighbour's queue, an
//!   impairment's delay) has not ended: the counts differ and the readings go on as before.
//!   Anything the counting does not foresee (a request whose destination does not answer, a
//!   packet rewritten by NAT out of the sets' matches, a stale packet of an earlier check) makes
//!   them differ too, never agree by accident in the wrong direction: then the three readings
//!   decide, as before.

use super::kernel::kind_of;
use super::ruleset::{set_name, Hook, Kind, Obs, Pos, KINDS};
use crate::drops::Drop;
use std::net::IpAddr;

/// Whether this reading (every node's sets, read after `drops` were taken) accounts for every
/// packet of the probe to or from `dest` (see the module's doc).
pub(super) fn complete(obs: &[Obs], drops: &[Drop], dest: IpAddr) -> bool {
    let count =
        |h: Hook, p: Pos, k: Kind| -> u64 { obs.iter().flat_map(|o| o.sets.get(&set_name(h, p, k))).flatten().map(|e| e.packets).sum() };
    let dropped = |k: Kind| drops.iter().filter(|d| !d.is_copy() && d.reason != "OTHERHOST" && kind_of(d, dest) == Some(k)).count() as u64;
    let created = |k: Kind| count(Hook::Out, Pos::First, k);
    let delivered = |k: Kind| count(Hook::In, Pos::Last, k);
    created(Kind::Req) > 0
        && created(Kind::Rep) == delivered(Kind::Req)
        && KINDS.iter().all(|&k| created(k) == delivered(k) + dropped(k))
        && !obs.iter().any(bridged)
}

/// Whether a node's bridge switched a packet of the probe (seen at prerouting and forward on
/// the same device with the same TTL: a routed packet's TTL drops before forward), as
/// `Walker::unbridge` finds such passes. A frame a bridge floods goes out of every port at
/// once, and its copies, counted on their way through bridging nodes, end unseen (refused as
/// `OTHERHOST`, or never in a hook at all): no count says when they are done, so a lab that
/// bridges the probe's packets waits for the readings to agree.
fn bridged(o: &Obs) -> bool {
    KINDS.iter().any(|&k| {
        let pre = o.sets.get(&set_name(Hook::Pre, Pos::First, k)).map(Vec::as_slice).unwrap_or(&[]);
        let fwd = o.sets.get(&set_name(Hook::Fwd, Pos::First, k)).map(Vec::as_slice).unwrap_or(&[]);
        fwd.iter().any(|f| pre.iter().any(|p| p.ttl == f.ttl && p.dev == f.dev))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drops::{Packet, L4};
    use crate::trace::ruleset::Elem;

    const DEST: &str = "10.0.2.2";

    fn elem(packets: u64) -> Elem {
        Elem { ttl: 64, dev: "eth0".into(), saddr: None, daddr: None, itype: String::new(), code: String::new(), packets }
    }

    /// Nodes' sets from (node, hook, pos, kind, packets).
    fn obs(points: &[(usize, Hook, Pos, Kind, u64)]) -> Vec<Obs> {
        let mut v: Vec<Obs> = (0..3).map(|_| Obs::default()).collect();
        for &(n, h, p, k, c) in points {
            v[n].sets.entry(set_name(h, p, k)).or_default().push(elem(c));
        }
        v
    }

    fn echo(reply: bool, seq: u16) -> Packet {
        let (a, b): (IpAddr, IpAddr) = ("10.0.1.2".parse().unwrap(), DEST.parse().unwrap());
        let (src, dst) = if reply { (b, a) } else { (a, b) };
        Packet { src, dst, ttl: 63, l4: L4::Echo { reply, id: 7, seq } }
    }

    fn drop_of(node: usize, reason: &str, packet: Packet) -> Drop {
        Drop { node, ifindex: 2, dev: String::new(), at: String::new(), function: "f".into(), reason: reason.into(), packet: Some(packet) }
    }

    fn error_about(p: Packet) -> Packet {
        Packet { src: "10.0.3.1".parse().unwrap(), dst: p.src, ttl: 64, l4: L4::IcmpError { itype: 3, code: 0, quoted: Some(Box::new(p)) } }
    }

    use Hook::{In, Out, Pre};
    use Kind::{ErrRep, Rep, Req};
    use Pos::{First, Last};

    /// missing-return-route's shape: node 0 pings node 1, whose replies node 2 drops for want
    /// of a route, sending node 1 an error about each.
    fn replies_dropped_with_errors(errors_delivered: u64) -> (Vec<Obs>, Vec<Drop>) {
        let o = obs(&[
            (0, Out, First, Req, 2),
            (1, In, Last, Req, 2),
            (1, Out, First, Rep, 2),
            (2, Pre, First, Rep, 2),
            (2, Out, First, ErrRep, 2),
            (1, Pre, First, ErrRep, errors_delivered),
            (1, In, Last, ErrRep, errors_delivered),
        ]);
        let drops = (1..=2).map(|s| drop_of(2, "IP_INNOROUTES", echo(true, s))).collect();
        (o, drops)
    }

    #[test]
    fn every_packet_ended() {
        let (o, d) = replies_dropped_with_errors(2);
        assert!(complete(&o, &d, DEST.parse().unwrap()));
    }

    #[test]
    fn an_error_in_flight_is_not_the_end() {
        // The second error has left node 2 but not reached node 1's input yet.
        let (o, d) = replies_dropped_with_errors(1);
        assert!(!complete(&o, &d, DEST.parse().unwrap()));
    }

    #[test]
    fn a_reply_not_yet_built_is_not_the_end() {
        // Both requests delivered, one reply built and dropped: the other's reply may follow
        // (or the node never answers): not final either way.
        let o = obs(&[(0, Out, First, Req, 2), (1, In, Last, Req, 2), (1, Out, First, Rep, 1)]);
        let d = vec![drop_of(2, "IP_INNOROUTES", echo(true, 1))];
        assert!(!complete(&o, &d, DEST.parse().unwrap()));
    }

    #[test]
    fn copies_and_flooded_frames_are_no_end() {
        // The request was seen dropped only as a raw socket's copy and as a flooded frame at a
        // bystander: it is still on its way.
        let o = obs(&[(0, Out, First, Req, 1)]);
        let d = vec![drop_of(1, "SOCKET_FILTER", echo(false, 1)), drop_of(2, "OTHERHOST", echo(false, 1))];
        assert!(!complete(&o, &d, DEST.parse().unwrap()));
        // Dropped for real at node 1, with an error back to node 0 that arrived.
        let o = obs(&[(0, Out, First, Req, 1), (1, Out, First, Kind::ErrReq, 1), (0, In, Last, Kind::ErrReq, 1)]);
        let d = vec![drop_of(1, "IP_INNOROUTES", echo(false, 1))];
        assert!(complete(&o, &d, DEST.parse().unwrap()));
        // A drop of another destination's packet ends nothing of ours.
        let other = Packet { dst: "10.0.9.9".parse().unwrap(), ..echo(false, 1) };
        let o = obs(&[(0, Out, First, Req, 1)]);
        assert!(!complete(&o, &[drop_of(1, "IP_INNOROUTES", other)], DEST.parse().unwrap()));
        assert!(complete(&o, &[drop_of(1, "IP_INNOROUTES", echo(false, 1))], DEST.parse().unwrap()));
    }

    #[test]
    fn an_error_drop_counts_as_its_end() {
        let o = obs(&[(0, Out, First, Req, 1), (1, Out, First, Kind::ErrReq, 1)]);
        let d = vec![drop_of(1, "NETFILTER_DROP", echo(false, 1)), drop_of(2, "IP_INNOROUTES", error_about(echo(false, 1)))];
        assert!(complete(&o, &d, DEST.parse().unwrap()));
        assert!(!complete(&o, &d[..1], DEST.parse().unwrap()));
    }

    #[test]
    fn a_bridged_pass_waits_for_the_readings() {
        let (mut o, d) = replies_dropped_with_errors(2);
        assert!(complete(&o, &d, DEST.parse().unwrap()));
        // Node 1 also switched the requests between two ports of its bridge br0 (same TTL at
        // prerouting and forward); a routed pass (TTL one less at forward) is no such thing.
        let e = |ttl, dev: &str| Elem { ttl, dev: dev.into(), ..elem(2) };
        o[1].sets.insert(set_name(Pre, First, Req), vec![e(64, "br0")]);
        o[1].sets.insert(set_name(Hook::Fwd, First, Req), vec![e(63, "br0")]);
        assert!(complete(&o, &d, DEST.parse().unwrap()));
        o[1].sets.insert(set_name(Hook::Fwd, First, Req), vec![e(64, "br0")]);
        assert!(!complete(&o, &d, DEST.parse().unwrap()));
    }

    #[test]
    fn nothing_sent_is_not_an_account() {
        assert!(!complete(&obs(&[]), &[], DEST.parse().unwrap()));
    }
}
