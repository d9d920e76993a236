//! The NFQUEUE netlink codec: message and attribute layout, the constants, config requests with
//! their acks, and opening the node's netlink and raw (duplicate) sockets (through nix).
//!
//! Hand-written on purpose, after looking for a crate (checked 2026-05):
//! - `netlink-packet-netfilter` 0.4 (which the trace's nflog.rs uses) has nfnetlink_log and
//!   nftables messages but no nfnetlink_queue ones.
//! - `nfq` 0.2.5: one release line, unsafe throughout, and it does not fit here: its socket is
//!   opened without `SOCK_CLOEXEC` (a daemon spawned in the node would inherit the bound queue
//!   and keep it alive after the impairer is gone), a config request waits for its ack with no
//!   deadline, and every received `Message` pins the whole receive buffer it came in (64 KiB +
//!   a page), so the thousands of packets a `delay` holds would pin hundreds of MiB.
//!
//! What is here is the few fixed layouts NFQUEUE needs (about 100 lines, tested by the impair
//! tests and the `openvpn/replay-window` lab against the real kernel).

use super::dup_mark;
use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::net::if_::if_nametoindex;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{bind, recv, sendto, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- netlink (NFQUEUE)

pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLM_F_REQUEST: u16 = 1;
pub(super) const NLM_F_ACK: u16 = 4;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NFNL_SUBSYS_QUEUE: u16 = 3;
pub(super) const NFQNL_MSG_PACKET: u16 = 0;
pub(super) const NFQNL_MSG_VERDICT: u16 = 1;
pub(super) const NFQNL_MSG_CONFIG: u16 = 2;
pub(super) const NFQA_PACKET_HDR: u16 = 1;
pub(super) const NFQA_VERDICT_HDR: u16 = 2;
pub(super) const NFQA_PAYLOAD: u16 = 10;
pub(super) const NFQA_CFG_CMD: u16 = 1;
pub(super) const NFQA_CFG_PARAMS: u16 = 2;
pub(super) const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
pub(super) const NFQNL_CFG_CMD_BIND: u8 = 1;
pub(super) const NFQNL_CFG_CMD_UNBIND: u8 = 2;
pub(super) const NFQNL_COPY_PACKET: u8 = 2;
pub(super) const NF_DROP: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;
/// Packets the kernel may hold for us (a 10s delay of a fast flow needs many).
pub(super) const QUEUE_MAXLEN: u32 = 16384;
pub(super) const RCVBUF: usize = 16 << 20;

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one nfnetlink queue message (header, nfgenmsg, attributes) to `buf`.
pub(super) fn push_msg(buf: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, &[u8])]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
    buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]); // nfgen_family, version NFNETLINK_V0
    buf.extend_from_slice(&queue.to_be_bytes()); // res_id
    for (ty, data) in attrs {
        buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(data);
        buf.resize(align4(buf.len() - start) + start, 0);
    }
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    buf[start + 4..start + 6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    buf[start + 6..start + 8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
}

/// The netlink messages of a datagram: (type, seq, body after the header).
pub(super) fn messages(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
        out.push((ty, seq, &buf[off + NLMSG_HDRLEN..off + len]));
        off += align4(len);
    }
    out
}

/// The attributes of a message body (after `skip` bytes of fixed header): (type, data).
pub(super) fn attrs(body: &[u8], skip: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = skip;
    std::iter::from_fn(move || {
        if off + 4 > body.len() {
            return None;
        }
        let len = u16::from_ne_bytes([body[off], body[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([body[off + 2], body[off + 3]]) & 0x3fff;
        if len < 4 || off + len > body.len() {
            return None;
        }
        let data = &body[off + 4..off + len];
        off += align4(len);
        Some((ty, data))
    })
}

/// The errno of an NLMSG_ERROR body (0 = ack).
pub(super) fn nl_errno(body: &[u8]) -> i32 {
    body.get(0..4).map(|b| -i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(0)
}

pub(super) fn os_err(what: &str) -> anyhow::Error {
    anyhow!("{what}: {}", std::io::Error::last_os_error())
}

pub(super) fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> std::io::Result<()> {
    let r =
        unsafe { libc::setsockopt(fd, level, name, val as *const T as *const libc::c_void, std::mem::size_of::<T>() as libc::socklen_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends `buf` to the kernel (netlink port 0), retrying on EINTR.
pub(super) fn nl_send(fd: BorrowedFd, buf: &[u8]) -> std::io::Result<()> {
    loop {
        match sendto(fd.as_raw_fd(), buf, &NetlinkAddr::new(0, 0), MsgFlags::empty()) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable.
pub(super) fn wait_readable(fd: BorrowedFd, timeout: Duration) -> bool {
    let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut p, PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX)).is_ok_and(|n| n > 0)
}

/// Sends a config message (sequence number `seq`, NLM_F_ACK set) and waits up to 5s for its
/// ack, ignoring other messages; returns the errno (0 = done).
pub(super) fn config(fd: BorrowedFd, msg: &[u8], seq: u32) -> Result<i32> {
    nl_send(fd, msg).map_err(|e| anyhow!("NFQUEUE config: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(fd, left) {
            bail!("NFQUEUE: no answer from the kernel to a config request");
        }
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOBUFS) => continue,
            Err(e) => bail!("NFQUEUE: reading the answer to a config request: {e}"),
        };
        for (ty, s, body) in messages(&buf[..n]) {
            if ty == NLMSG_ERROR && s == seq {
                return Ok(nl_errno(body));
            }
        }
    }
}

/// The sockets of an impairer, opened on a thread inside the node's namespace.
pub(super) struct Sockets {
    pub(super) nl: OwnedFd,
    /// For duplicates only.
    pub(super) raw: Option<OwnedFd>,
}

pub(super) fn open_sockets(ifname: &str, queue: u16, duplicate: bool) -> Result<Sockets> {
    let c_if = CString::new(ifname).map_err(|_| anyhow!("NUL in interface name"))?;
    if if_nametoindex(c_if.as_c_str()).is_err() {
        bail!("there is no interface `{ifname}`");
    }
    let nl = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
        .context("socket(AF_NETLINK, NETLINK_NETFILTER)")?;
    // A large receive buffer: if it overflowed, the kernel would drop queued packets.
    if nix::sys::socket::setsockopt(&nl, sockopt::RcvBufForce, &RCVBUF).is_err() {
        let _ = nix::sys::socket::setsockopt(&nl, sockopt::RcvBuf, &RCVBUF);
    }
    bind(nl.as_raw_fd(), &NetlinkAddr::new(0, 0)).context("bind(netlink)")?;
    let fd = nl.as_fd();
    // Bind the queue, copy whole packets, raise the queue length: one message, acked.
    let cmd = [NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8]; // command, pad, pf (be16)
    let mut params = 0xffffu32.to_be_bytes().to_vec(); // copy_range
    params.push(NFQNL_COPY_PACKET);
    let maxlen = QUEUE_MAXLEN.to_be_bytes();
    let mut msg = Vec::new();
    push_msg(
        &mut msg,
        NFQNL_MSG_CONFIG,
        NLM_F_ACK,
        1,
        queue,
        &[(NFQA_CFG_CMD, &cmd), (NFQA_CFG_PARAMS, &params), (NFQA_CFG_QUEUE_MAXLEN, &maxlen)],
    );
    match config(fd, &msg, 1)? {
        0 => {}
        // EPERM: another socket is bound to this queue number (we are root).
        libc::EPERM | libc::EBUSY => {
            bail!("NFQUEUE queue {queue} is already in use in this node (give each impairment of a node its own queue number)")
        }
        e => bail!("NFQUEUE: binding queue {queue}: {}", std::io::Error::from_raw_os_error(e)),
    }
    let raw = if duplicate { Some(raw_socket(libc::AF_INET, ifname, queue)?) } else { None };
    Ok(Sockets { nl, raw })
}

/// An `IPPROTO_RAW` socket of `family` (`AF_INET` or `AF_INET6`; the header is included) that
/// duplicates go out of, marked so the impairment's rule skips the copies, bound to `ifname`.
/// Opened on a thread inside the node's namespace.
pub(super) fn raw_socket(family: libc::c_int, ifname: &str, queue: u16) -> Result<OwnedFd> {
    let c_if = CString::new(ifname).map_err(|_| anyhow!("NUL in interface name"))?;
    let r = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if r < 0 {
        return Err(os_err("socket(SOCK_RAW, IPPROTO_RAW)"));
    }
    let raw = unsafe { OwnedFd::from_raw_fd(r) };
    let mark: u32 = dup_mark(queue);
    setsockopt(r, libc::SOL_SOCKET, libc::SO_MARK, &mark).context("SO_MARK on the raw socket")?;
    let dev = c_if.as_bytes_with_nul();
    let rc = unsafe {
        libc::setsockopt(r, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_ptr() as *const libc::c_void, dev.len() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(os_err(&format!("SO_BINDTODEVICE {ifname}")));
    }
    Ok(raw)
}

/// Sends a copy of the IP packet `pkt` (header included, either family) from a raw socket, to
/// the packet's own destination.
pub(super) fn send_raw(raw: &OwnedFd, pkt: &[u8]) -> std::io::Result<()> {
    use nix::sys::socket::{sendto, MsgFlags, SockaddrIn, SockaddrIn6};
    let sent = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let dst = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]), 0);
            sendto(raw.as_raw_fd(), pkt, &SockaddrIn::from(dst), MsgFlags::empty())
        }
        Some(6) if pkt.len() >= 40 => {
            let a: [u8; 16] = pkt[24..40].try_into().expect("16 bytes");
            let dst = std::net::SocketAddrV6::new(std::net::Ipv6Addr::from(a), 0, 0, 0);
            sendto(raw.as_raw_fd(), pkt, &SockaddrIn6::from(dst), MsgFlags::empty())
        }
        _ => return Err(std::io::Error::other("not an IP packet")),
    };
    sent.map(|_| ()).map_err(std::io::Error::from)
}
