//! The trace's observation points where the kernel has no nftables inet family (Debian's
//! user-mode-linux kernel is built without `NF_TABLES_INET`/`NF_TABLES_IPV4`): the same ten
//! points (first and last on each of the five IP hooks) made of iptables rules with the `NFLOG`
//! target, whose packets vpnlab reads back from nfnetlink_log in every node.
//!
//! | hook        | first                       | last                         |
//! |-------------|-----------------------------|------------------------------|
//! | prerouting  | raw PREROUTING (-300), 1st  | mangle PREROUTING (-150), last |
//! | input       | mangle INPUT (-150), 1st    | security INPUT (50), last    |
//! | forward     | mangle FORWARD (-150), 1st  | security FORWARD (50), last  |
//! | output      | raw OUTPUT (-300), 1st      | security OUTPUT (50), last   |
//! | postrouting | mangle POSTROUTING, 1st     | mangle POSTROUTING, last     |
//!
//! A lab's firewall (filter table, priority 0; nat, which never drops) sits between the first
//! and the last point of every hook where it can drop, as with the nft table's -500/500 chains.
//! The rules log every ICMP packet (the prefix names the point); vpnlab classifies each packet
//! exactly as the nft sets' matches do ([`classify`]: echo request to the destination, echo
//! reply from it, ICMP errors quoting either) and counts it under the same key (TTL, interface,
//! addresses or ICMP type and code, with nft's names), so the walker sees the same observations
//! and writes the same lines.
//!
//! The netlink side is the `netlink-packet-netfilter` crate (the rust-netlink family that
//! rtnetlink belongs to): its nflog config requests and packet attributes, no hand-written codec.
//! Every socket is opened inside its node, so it only receives that namespace's packets.

use super::ruleset::{set_name, Elem, Fam, Hook, Kind, Obs, Pos};
use super::TraceNode;
use crate::ns::PidNs;
use crate::process::run_capture;
use anyhow::{bail, Context, Result};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{config_request, ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The nfnetlink_log group of the trace's rules (one instance per network namespace).
const GROUP: u16 = 4243;
const PREFIX: &str = "vpnlab_trace_";

/// Where each observation point sits: (hook, position, table, chain, insert first?).
const POINTS: [(Hook, Pos, &str, &str, bool); 10] = [
    (Hook::Pre, Pos::First, "raw", "PREROUTING", true),
    (Hook::Pre, Pos::Last, "mangle", "PREROUTING", false),
    (Hook::In, Pos::First, "mangle", "INPUT", true),
    (Hook::In, Pos::Last, "security", "INPUT", false),
    (Hook::Fwd, Pos::First, "mangle", "FORWARD", true),
    (Hook::Fwd, Pos::Last, "security", "FORWARD", false),
    (Hook::Out, Pos::First, "raw", "OUTPUT", true),
    (Hook::Out, Pos::Last, "security", "OUTPUT", false),
    (Hook::Post, Pos::First, "mangle", "POSTROUTING", true),
    (Hook::Post, Pos::Last, "mangle", "POSTROUTING", false),
];

/// The `iptables-restore --noflush` input that adds (`add`) or deletes the ten rules.
pub(super) fn rules(fam: Fam, add: bool) -> String {
    let proto = if fam.v6 { "ipv6-icmp" } else { "icmp" };
    let mut out = String::new();
    for table in ["raw", "mangle", "security"] {
        out.push_str(&format!("*{table}\n"));
        for (h, p, t, chain, first) in POINTS {
            if t != table {
                continue;
            }
            let op = match (add, first) {
                (false, _) => format!("-D {chain}"),
                (true, true) => format!("-I {chain} 1"),
                (true, false) => format!("-A {chain}"),
            };
            out.push_str(&format!("{op} -p {proto} -j NFLOG --nflog-group {GROUP} --nflog-prefix {PREFIX}{}_{}\n", h.short(), p.name()));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// A logged packet: (the rule's prefix, in ifindex, out ifindex, the IP packet).
type Logged = (String, u32, u32, Vec<u8>);

/// What one node's log has counted so far: set name -> key -> packets.
pub(super) type Counts = BTreeMap<String, BTreeMap<Key, u64>>;

/// An element's key (as [`Elem`] without the count).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    ttl: u8,
    dev: String,
    saddr: Option<IpAddr>,
    daddr: Option<IpAddr>,
    itype: String,
    code: String,
}

/// The rules and the sockets of every node; removed on drop if [`Installed::remove`] was not
/// reached (error, panic).
pub(super) struct Installed<'a, 'b> {
    nodes: &'a [TraceNode<'b>],
    pid: &'a PidNs,
    cwd: &'a Path,
    fam: Fam,
    dest: IpAddr,
    socks: Vec<Socket>,
    /// Every logged packet, counted, per node.
    counts: Vec<HashMap<Logged, u64>>,
    files: [PathBuf; 2],
    done: bool,
}

fn restore(fam: Fam) -> String {
    if fam.v6 { "ip6tables-restore" } else { "iptables-restore" }.to_string()
}

impl<'a, 'b> Installed<'a, 'b> {
    /// Opens a log socket in every node, then adds the rules there.
    pub(super) fn install(nodes: &'a [TraceNode<'b>], pid: &'a PidNs, cwd: &'a Path, fam: Fam, dest: IpAddr) -> Result<Self> {
        let mut socks = Vec::new();
        for n in nodes {
            socks.push(n.netns.run(open_socket)?.with_context(|| format!("node `{}`: opening the trace's nfnetlink_log socket", n.name))?);
        }
        let mut files = Vec::new();
        for add in [true, false] {
            let mut f = tempfile::Builder::new()
                .prefix(".vpnlab-trace-")
                .suffix(".rules")
                .tempfile_in(cwd)
                .context("creating the trace rules file")?;
            std::io::Write::write_all(&mut f, rules(fam, add).as_bytes()).context("writing the trace rules file")?;
            files.push(f.into_temp_path().keep().context("keeping the trace rules file")?);
        }
        let files: [PathBuf; 2] = files.try_into().expect("two files");
        let me = Installed { nodes, pid, cwd, fam, dest, socks, counts: vec![HashMap::new(); nodes.len()], files, done: false };
        super::ruleset::par(nodes, |n| {
            let argv = vec![restore(fam), "--noflush".to_string(), me.files[0].to_string_lossy().into_owned()];
            let out = run_capture(n.netns, pid, &argv, cwd, super::NFT_TIMEOUT)?;
            if !out.success() {
                let first: Vec<&str> = out.text.lines().take(3).collect();
                bail!(
                    "node `{}`: adding the trace's NFLOG rules failed ({}); the trace needs either nftables' inet family or iptables with the NFLOG target (CONFIG_NETFILTER_XT_TARGET_NFLOG):\n{}",
                    n.name,
                    out.describe_status(),
                    first.join("\n")
                );
            }
            Ok(())
        })?;
        Ok(me)
    }

    /// Reads what every node logged since the last call; returns the counts so far.
    pub(super) fn read(&mut self) -> Result<Vec<Counts>> {
        let mut buf = vec![0u8; 1 << 16];
        for (i, s) in self.socks.iter().enumerate() {
            loop {
                let n = match s.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).with_context(|| format!("node `{}`: reading the trace's log", self.nodes[i].name)),
                };
                let mut off = 0;
                while off < n {
                    let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..n]) else { break };
                    let len = m.header.length as usize;
                    if let Some(p) = packet(&m) {
                        *self.counts[i].entry(p).or_default() += 1;
                    }
                    if len == 0 {
                        break;
                    }
                    off += (len + 3) & !3;
                }
            }
        }
        Ok(self.counts.iter().map(|c| self.classify_all(c, None)).collect())
    }

    /// The observations, with interface names and NAT bindings read inside each node.
    ///
    /// The last points of prerouting and postrouting (mangle, -150) sit before NAT (nat, -100
    /// and 100), where the nft chains (500) see translated addresses; so a packet's addresses
    /// there are translated as the node's conntrack entry for it says (DNAT of the destination
    /// at prerouting, SNAT of the source at postrouting), as the packet left the hook.
    pub(super) fn obs(&self) -> Result<Vec<Obs>> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let fam = self.fam;
            let (names, nat) = n
                .netns
                .run(move || -> Result<(HashMap<u32, String>, Vec<Binding>)> {
                    let names = nix::net::if_::if_nameindex()
                        .map(|l| l.iter().map(|i| (i.index(), i.name().to_string_lossy().into_owned())).collect())
                        .context("listing its interfaces")?;
                    Ok((names, icmp_bindings(fam).context("reading its conntrack table")?))
                })?
                .with_context(|| format!("node `{}`", n.name))?;
            let counts = self.classify_all(&self.counts[i], Some(&names));
            let mut obs = Obs::default();
            for (set, keys) in counts {
                let post_last = set.starts_with("post_last_");
                let pre_last = set.starts_with("pre_last_");
                let mut v: Vec<Elem> = Vec::new();
                for (k, packets) in keys {
                    let (mut saddr, mut daddr) = (k.saddr, k.daddr);
                    if let (Some(s), Some(d)) = (saddr, daddr) {
                        if let Some((ns, nd)) = translate(&nat, s, d) {
                            if post_last {
                                saddr = Some(ns);
                            }
                            if pre_last {
                                daddr = Some(nd);
                            }
                        }
                    }
                    match v.iter_mut().find(|e| e.ttl == k.ttl && e.dev == k.dev && e.saddr == saddr && e.daddr == daddr) {
                        Some(e) => e.packets += packets,
                        None => v.push(Elem { ttl: k.ttl, dev: k.dev, saddr, daddr, itype: k.itype, code: k.code, packets }),
                    }
                }
                obs.sets.insert(set, v);
            }
            out.push(obs);
        }
        Ok(out)
    }

    fn classify_all(&self, raw: &HashMap<Logged, u64>, names: Option<&HashMap<u32, String>>) -> Counts {
        let mut out = Counts::new();
        for ((prefix, indev, outdev, payload), n) in raw {
            let Some((h, p)) = point(prefix) else { continue };
            let Some((kind, mut key)) = classify(self.fam, self.dest, payload) else { continue };
            let idx = match h {
                Hook::Pre | Hook::In => *indev,
                Hook::Fwd | Hook::Out | Hook::Post => *outdev,
            };
            key.dev = match names {
                Some(m) => m.get(&idx).cloned().unwrap_or_default(),
                None => idx.to_string(),
            };
            *out.entry(set_name(h, p, kind)).or_default().entry(key).or_default() += n;
        }
        out
    }

    /// Deletes the rules in every node (the sockets close with `self`).
    pub(super) fn remove(mut self) -> Result<()> {
        self.done = true;
        let r = self.delete_rules();
        self.remove_files();
        r
    }

    fn delete_rules(&self) -> Result<()> {
        super::ruleset::par(self.nodes, |n| {
            let argv = vec![restore(self.fam), "--noflush".to_string(), self.files[1].to_string_lossy().into_owned()];
            let out = run_capture(n.netns, self.pid, &argv, self.cwd, super::NFT_TIMEOUT)?;
            if !out.success() {
                bail!("node `{}`: removing the trace's NFLOG rules failed ({}):\n{}", n.name, out.describe_status(), out.text.trim_end());
            }
            Ok(())
        })
        .map(|_| ())
    }

    fn remove_files(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for Installed<'_, '_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.delete_rules();
            self.remove_files();
        }
    }
}

/// A socket bound to the trace's group, copying whole packets, flushed at once (run inside the
/// node: the socket belongs to its namespace).
fn open_socket() -> Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER).context("socket(NETLINK_NETFILTER)")?;
    s.bind_auto().context("binding the netlink socket")?;
    let _ = s.set_rx_buf_sz(4 << 20);
    let req = config_request(
        NetfilterProtoFamily::Unspec,
        GROUP,
        vec![ConfigCmd::Bind.into(), ConfigMode::new_packet(0xffff).into(), Timeout::new(1).into(), ConfigNla::QThresh(1)],
    );
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    s.send(&buf, 0).context("sending the nfnetlink_log bind request")?;
    let mut ack = vec![0u8; 4096];
    let n = s.recv(&mut &mut ack[..], 0).context("reading the nfnetlink_log bind answer")?;
    match NetlinkMessage::<NetfilterMessage>::deserialize(&ack[..n]) {
        Ok(m) => match m.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => {
                bail!("binding nfnetlink_log group {GROUP}: {} (is nfnetlink_log available?)", e.to_io())
            }
            NetlinkPayload::Error(_) => Ok(s),
            other => bail!("binding nfnetlink_log group {GROUP}: unexpected answer {other:?}"),
        },
        Err(e) => bail!("binding nfnetlink_log group {GROUP}: unreadable answer: {e}"),
    }
}

/// A logged packet of the trace's group: (prefix, in ifindex, out ifindex, IP packet).
fn packet(m: &NetlinkMessage<NetfilterMessage>) -> Option<Logged> {
    let NetlinkPayload::InnerMessage(NetfilterMessage { inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)), .. }) = &m.payload
    else {
        return None;
    };
    let (mut prefix, mut indev, mut outdev, mut payload) = (None, 0, 0, None);
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => prefix = Some(p.to_string_lossy().into_owned()),
            PacketNla::IfIndexInDev(i) => indev = *i,
            PacketNla::IfIndexOutDev(i) => outdev = *i,
            PacketNla::Payload(p) => payload = Some(p.clone()),
            _ => {}
        }
    }
    Some((prefix?, indev, outdev, payload?))
}

/// The observation point a rule's prefix names.
fn point(prefix: &str) -> Option<(Hook, Pos)> {
    let rest = prefix.strip_prefix(PREFIX)?;
    POINTS.iter().find(|(h, p, ..)| rest == format!("{}_{}", h.short(), p.name())).map(|(h, p, ..)| (*h, *p))
}

/// The IP header's fields the trace needs: (ttl, protocol, source, destination, header length).
fn ip_header(fam: Fam, b: &[u8]) -> Option<(u8, u8, IpAddr, IpAddr, usize)> {
    if fam.v6 {
        if b.len() < 40 || b[0] >> 4 != 6 {
            return None;
        }
        let a = |r: std::ops::Range<usize>| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[r]).expect("16 bytes")));
        Some((b[7], b[6], a(8..24), a(24..40), 40))
    } else {
        let ihl = usize::from(b.first()? & 0x0f) * 4;
        if b.len() < 20 || b[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        let a = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
        Some((b[8], b[9], a(12), a(16), ihl))
    }
}

/// Which of the trace's kinds a packet is, and its key (interface left empty): the same matches
/// as the nft sets ([`Fam::matcher`]) and the same names nft prints for ICMP types and codes.
pub(super) fn classify(fam: Fam, dest: IpAddr, b: &[u8]) -> Option<(Kind, Key)> {
    let (icmp_proto, echo_req, echo_rep) = if fam.v6 { (58, 128, 129) } else { (1, 8, 0) };
    let (ttl, proto, saddr, daddr, hl) = ip_header(fam, b)?;
    if proto != icmp_proto {
        return None;
    }
    let (itype, code) = (*b.get(hl)?, *b.get(hl + 1)?);
    let key = |saddr, daddr, itype: String, code: String| Key { ttl, dev: String::new(), saddr, daddr, itype, code };
    if itype == echo_req && daddr == dest {
        return Some((Kind::Req, key(Some(saddr), Some(daddr), String::new(), String::new())));
    }
    if itype == echo_rep && saddr == dest {
        return Some((Kind::Rep, key(Some(saddr), Some(daddr), String::new(), String::new())));
    }
    let type_name = error_type_name(fam, itype)?;
    // The quoted packet starts after the 8-byte ICMP header.
    let q = b.get(hl + 8..)?;
    let (_, qproto, qs, qd, qhl) = ip_header(fam, q)?;
    let qtype = *q.get(qhl)?;
    if qproto != icmp_proto {
        return None;
    }
    let names = || (type_name.to_string(), code_name(fam, code));
    if qd == dest && qtype == echo_req {
        let (t, c) = names();
        return Some((Kind::ErrReq, key(None, None, t, c)));
    }
    if qs == dest && qtype == echo_rep {
        let (t, c) = names();
        return Some((Kind::ErrRep, key(None, None, t, c)));
    }
    None
}

/// The ICMP error types the nft sets match, by nft's names.
fn error_type_name(fam: Fam, t: u8) -> Option<&'static str> {
    Some(match (fam.v6, t) {
        (false, 3) | (true, 1) => "destination-unreachable",
        (false, 11) | (true, 3) => "time-exceeded",
        (false, 12) | (true, 4) => "parameter-problem",
        (false, 5) => "redirect",
        (true, 2) => "packet-too-big",
        _ => return None,
    })
}

/// An ICMP code as nft lists it (its `icmp_code`/`icmpv6_code` symbols, else the number).
fn code_name(fam: Fam, c: u8) -> String {
    let s = match (fam.v6, c) {
        (false, 0) => "net-unreachable",
        (false, 1) => "host-unreachable",
        (false, 2) => "prot-unreachable",
        (false, 3) => "port-unreachable",
        (false, 4) => "frag-needed",
        (false, 9) => "net-prohibited",
        (false, 10) => "host-prohibited",
        (false, 13) => "admin-prohibited",
        (true, 0) => "no-route",
        (true, 1) => "admin-prohibited",
        (true, 3) => "addr-unreachable",
        (true, 4) => "port-unreachable",
        (true, 5) => "policy-fail",
        (true, 6) => "reject-route",
        _ => return c.to_string(),
    };
    s.to_string()
}

/// A conntrack entry's two tuples: (original source, original destination, reply source,
/// reply destination).
type Binding = (IpAddr, IpAddr, IpAddr, IpAddr);

/// The ICMP conntrack entries of the calling thread's namespace (a netlink dump; none where
/// conntrack was never loaded there).
fn icmp_bindings(fam: Fam) -> Result<Vec<Binding>> {
    use netlink_packet_core::{NetlinkHeader, NLM_F_DUMP, NLM_F_REQUEST};
    use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple};
    use netlink_packet_netfilter::NetfilterHeader;
    let mut s = Socket::new(NETLINK_NETFILTER).context("socket(NETLINK_NETFILTER)")?;
    s.bind_auto().context("binding the netlink socket")?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let family = if fam.v6 { NetfilterProtoFamily::IPv6 } else { NetfilterProtoFamily::IPv4 };
    let mut req = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), ConntrackMessage::Get(vec![]))),
    );
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    s.send(&buf, 0).context("sending the conntrack dump request")?;
    let icmp = if fam.v6 { 58 } else { 1 };
    let tuple = |t: &[Tuple]| {
        let (mut src, mut dst, mut proto) = (None, None, None);
        for x in t {
            match x {
                Tuple::Ip(ips) => {
                    for ip in ips {
                        match ip {
                            IPTuple::SourceAddress(a) => src = Some(*a),
                            IPTuple::DestinationAddress(a) => dst = Some(*a),
                            _ => {}
                        }
                    }
                }
                Tuple::Proto(ps) => {
                    for p in ps {
                        if let ProtoTuple::Protocol(p) = p {
                            proto = Some(u8::from(*p));
                        }
                    }
                }
                _ => {}
            }
        }
        Some((src?, dst?, proto?))
    };
    let mut out = Vec::new();
    let mut rbuf = vec![0u8; 1 << 16];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    s.set_non_blocking(false).ok();
    loop {
        if std::time::Instant::now() > deadline {
            bail!("the conntrack dump did not end within 5 s");
        }
        let n = s.recv(&mut &mut rbuf[..], 0).context("reading the conntrack dump")?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<NetfilterMessage>::deserialize(&rbuf[off..n]).map_err(|e| anyhow::anyhow!("conntrack dump: {e}"))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                // No conntrack in this kernel: nothing was translated.
                NetlinkPayload::Error(e) if e.code.is_some() => return Ok(out),
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs)),
                    ..
                }) => {
                    let (mut orig, mut reply) = (None, None);
                    for a in &attrs {
                        match a {
                            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
                            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
                            _ => {}
                        }
                    }
                    if let (Some((os, od, op)), Some((rs, rd, _))) = (orig, reply) {
                        if op == icmp {
                            out.push((os, od, rs, rd));
                        }
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

/// The addresses a packet `s -> d` leaves NAT with (its conntrack entry's other tuple,
/// inverted), if an entry covers it and translates it.
fn translate(nat: &[Binding], s: IpAddr, d: IpAddr) -> Option<(IpAddr, IpAddr)> {
    for &(os, od, rs, rd) in nat {
        if (os, od) == (s, d) && (rd, rs) != (s, d) {
            return Some((rd, rs));
        }
        if (rs, rd) == (s, d) && (od, os) != (s, d) {
            return Some((od, os));
        }
    }
    None
}
