//! The hand-written NFQUEUE netlink codec: message and attribute layout, the constants, config
//! requests with their acks, and opening the node's netlink and raw (duplicate) sockets.

use super::dup_mark;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
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
pub(super) const RCVBUF: libc::c_int = 16 << 20;

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

pub(super) fn nl_send(fd: RawFd, buf: &[u8]) -> std::io::Result<()> {
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        let r = unsafe {
            libc::sendto(
                fd,
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable.
pub(super) fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) > 0 }
}

/// Sends a config message (sequence number `seq`, NLM_F_ACK set) and waits up to 5s for its
/// ack, ignoring other messages; returns the errno (0 = done).
pub(super) fn config(fd: RawFd, msg: &[u8], seq: u32) -> Result<i32> {
    nl_send(fd, msg).map_err(|e| anyhow!("NFQUEUE config: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(fd, left) {
            bail!("NFQUEUE: no answer from the kernel to a config request");
        }
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOBUFS)) {
                continue;
            }
            bail!("NFQUEUE: reading the answer to a config request: {e}");
        }
        for (ty, s, body) in messages(&buf[..n as usize]) {
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
    if unsafe { libc::if_nametoindex(c_if.as_ptr()) } == 0 {
        bail!("there is no interface `{ifname}`");
    }
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(os_err("socket(AF_NETLINK, NETLINK_NETFILTER)"));
    }
    let nl = unsafe { OwnedFd::from_raw_fd(fd) };
    // A large receive buffer: if it overflowed, the kernel would drop queued packets.
    if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF).is_err() {
        let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF);
    }
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    if unsafe { libc::bind(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t) }
        != 0
    {
        return Err(os_err("bind(netlink)"));
    }
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
    let raw = if duplicate {
        let r = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if r < 0 {
            return Err(os_err("socket(AF_INET, SOCK_RAW, IPPROTO_RAW)"));
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
        Some(raw)
    } else {
        None
    };
    Ok(Sockets { nl, raw })
}
