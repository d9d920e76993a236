//! The worker: reads queued packets and gives verdicts (drop, reorder, duplicate, delay),
//! counting them in [`Stats`]; releases everything it holds when stopped.

use super::netlink::{
    attrs, config, messages, nl_errno, nl_send, push_msg, NFNL_SUBSYS_QUEUE, NFQA_CFG_CMD, NFQA_PACKET_HDR, NFQA_PAYLOAD, NFQA_VERDICT_HDR,
    NFQNL_CFG_CMD_UNBIND, NFQNL_MSG_CONFIG, NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NF_ACCEPT, NF_DROP, NLMSG_ERROR, NLM_F_ACK,
};
use super::{Impairment, HOLD_TIMEOUT};
use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, MsgFlags};
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

// ---------------------------------------------------------------- the worker

/// Counters so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Packets the rule queued.
    pub seen: u64,
    pub dropped: u64,
    /// Packets held back (`reorder`).
    pub reordered: u64,
    /// Copies sent (`duplicate`).
    pub duplicated: u64,
    /// Packets delayed (`delay`).
    pub delayed: u64,
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) stats: Mutex<Stats>,
    /// The first problem the worker met (fatal or not).
    pub(super) error: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn bump(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }
    pub(super) fn note(&self, msg: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(msg);
        }
    }
}

pub(super) struct Held {
    pub(super) id: u32,
    /// Accepted packets still to pass before it is released.
    pub(super) left: u32,
    pub(super) since: Instant,
}

pub(super) struct Engine {
    pub(super) imp: Impairment,
    pub(super) queue: u16,
    pub(super) nl: OwnedFd,
    pub(super) raw: Option<OwnedFd>,
    pub(super) count: u64,
    pub(super) held: Vec<Held>,
    pub(super) delayed: VecDeque<(u32, Instant)>,
    /// Verdict messages not sent yet (sent together, in order).
    pub(super) out: Vec<u8>,
    pub(super) shared: Arc<Shared>,
}

impl Engine {
    pub(super) fn verdict(&mut self, id: u32, v: u32) {
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&v.to_be_bytes());
        hdr[4..].copy_from_slice(&id.to_be_bytes());
        push_msg(&mut self.out, NFQNL_MSG_VERDICT, 0, 0, self.queue, &[(NFQA_VERDICT_HDR, &hdr)]);
    }

    pub(super) fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            let r = nl_send(self.nl.as_fd(), &self.out);
            self.out.clear();
            r.context("sending NFQUEUE verdicts")?;
        }
        Ok(())
    }

    /// One queued packet. `passthrough`: stopping, accept without impairing.
    pub(super) fn packet(&mut self, id: u32, payload: &[u8], now: Instant, passthrough: bool) -> Result<()> {
        if super::v6::is_link_control(payload) {
            // IPv6 neighbour discovery / MLD: passed, not counted (see the module docs).
            self.verdict(id, NF_ACCEPT);
            return Ok(());
        }
        self.shared.bump(|s| s.seen += 1);
        if passthrough {
            self.verdict(id, NF_ACCEPT);
            return Ok(());
        }
        self.count += 1;
        let count = self.count;
        let nth = |every: u32| count.is_multiple_of(every as u64);
        match self.imp.clone() {
            Impairment::DropEvery(n) => {
                if nth(n) {
                    self.verdict(id, NF_DROP);
                    self.shared.bump(|s| s.dropped += 1);
                } else {
                    self.verdict(id, NF_ACCEPT);
                }
            }
            Impairment::Reorder { every, hold } => {
                if nth(every) {
                    self.held.push(Held { id, left: hold, since: now });
                    self.shared.bump(|s| s.reordered += 1);
                } else {
                    self.verdict(id, NF_ACCEPT);
                    for h in &mut self.held {
                        h.left -= 1;
                    }
                    let (go, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held).into_iter().partition(|h| h.left == 0);
                    self.held = keep;
                    for h in go {
                        self.verdict(h.id, NF_ACCEPT);
                    }
                }
            }
            Impairment::Duplicate { every } => {
                self.verdict(id, NF_ACCEPT);
                if nth(every) {
                    // The original first, then its copy.
                    self.flush()?;
                    match self.send_copy(payload) {
                        Ok(()) => self.shared.bump(|s| s.duplicated += 1),
                        Err(e) => self.shared.note(format!("could not send the copy of packet {}: {e}", self.count)),
                    }
                }
            }
            Impairment::Delay(d) => {
                self.delayed.push_back((id, now + d));
                self.shared.bump(|s| s.delayed += 1);
            }
        }
        if self.out.len() > 16 << 10 {
            self.flush()?;
        }
        Ok(())
    }

    pub(super) fn send_copy(&self, pkt: &[u8]) -> std::io::Result<()> {
        let raw = self.raw.as_ref().ok_or_else(|| std::io::Error::other("no raw socket"))?;
        super::netlink::send_raw(raw, pkt)
    }

    /// A datagram from the netlink socket.
    pub(super) fn datagram(&mut self, buf: &[u8], passthrough: bool) -> Result<()> {
        let now = Instant::now();
        for (ty, _, body) in messages(buf) {
            if ty == NLMSG_ERROR {
                let e = nl_errno(body);
                if e != 0 {
                    self.shared.note(format!("the kernel refused a verdict: {}", std::io::Error::from_raw_os_error(e)));
                }
                continue;
            }
            if ty != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
                continue;
            }
            let mut id = None;
            let mut payload: &[u8] = &[];
            for (t, data) in attrs(body, 4) {
                match t {
                    NFQA_PACKET_HDR if data.len() >= 4 => id = Some(u32::from_be_bytes(data[..4].try_into().unwrap())),
                    NFQA_PAYLOAD => payload = data,
                    _ => {}
                }
            }
            if let Some(id) = id {
                self.packet(id, payload, now, passthrough)?;
            }
        }
        Ok(())
    }

    /// Releases held packets whose time has come.
    pub(super) fn due(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.delayed.front() {
            if at > now {
                break;
            }
            self.delayed.pop_front();
            self.verdict(id, NF_ACCEPT);
        }
        if self.held.iter().any(|h| h.since + HOLD_TIMEOUT <= now) {
            let (go, keep): (Vec<Held>, Vec<Held>) =
                std::mem::take(&mut self.held).into_iter().partition(|h| h.since + HOLD_TIMEOUT <= now);
            self.held = keep;
            for h in go {
                self.verdict(h.id, NF_ACCEPT);
            }
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let d = self.delayed.front().map(|&(_, at)| at);
        let h = self.held.iter().map(|h| h.since + HOLD_TIMEOUT).min();
        match (d, h) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn release_all(&mut self) {
        for (id, _) in std::mem::take(&mut self.delayed) {
            self.verdict(id, NF_ACCEPT);
        }
        for h in std::mem::take(&mut self.held) {
            self.verdict(h.id, NF_ACCEPT);
        }
    }

    /// Reads what is in the socket now (at most `max` datagrams). Ok(false): nothing more.
    pub(super) fn read_some(&mut self, buf: &mut [u8], max: usize, passthrough: bool) -> Result<bool> {
        for _ in 0..max {
            let n = match recv(self.nl.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOBUFS) => {
                    self.shared.note("the NFQUEUE socket overran: the kernel dropped packets it could not queue".into());
                    continue;
                }
                Err(e) => return Err(anyhow!("reading the NFQUEUE socket: {e}")),
            };
            let data = buf[..n].to_vec();
            self.datagram(&data, passthrough)?;
        }
        Ok(true)
    }

    pub(super) fn run(mut self, wake: OwnedFd) {
        let mut buf = vec![0u8; 256 << 10];
        let r = (|| -> Result<()> {
            loop {
                let now = Instant::now();
                self.due(now);
                self.flush()?;
                let timeout = match self.next_deadline() {
                    None => PollTimeout::NONE,
                    Some(at) => {
                        let us = at.saturating_duration_since(now).as_micros();
                        PollTimeout::try_from(us.div_ceil(1000)).unwrap_or(PollTimeout::MAX)
                    }
                };
                let mut fds = [PollFd::new(self.nl.as_fd(), PollFlags::POLLIN), PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => bail!("poll: {e}"),
                }
                let (readable, woken) = (fds[0].any().unwrap_or(false), fds[1].any().unwrap_or(false));
                if woken {
                    // Stopping (the rule is gone): release what we hold, in order, then accept
                    // whatever is still in the socket.
                    self.release_all();
                    self.flush()?;
                    while self.read_some(&mut buf, usize::MAX, true)? {}
                    self.flush()?;
                    return self.unbind();
                }
                if readable {
                    self.read_some(&mut buf, 256, false)?;
                }
            }
        })();
        if let Err(e) = r {
            self.shared.note(format!("the impairment stopped: {e:#}"));
            self.release_all();
            let _ = self.flush();
            let _ = self.unbind();
        }
    }

    /// Unbinds the queue explicitly: closing the socket would too, but only once every copy of
    /// the fd is closed, and a child forked by another thread holds one until it execs; the
    /// queue number must be free for the next impairment when `stop` returns.
    pub(super) fn unbind(&mut self) -> Result<()> {
        let cmd = [NFQNL_CFG_CMD_UNBIND, 0, 0, libc::AF_INET as u8];
        let mut msg = Vec::new();
        push_msg(&mut msg, NFQNL_MSG_CONFIG, NLM_F_ACK, 2, self.queue, &[(NFQA_CFG_CMD, &cmd)]);
        match config(self.nl.as_fd(), &msg, 2)? {
            0 => Ok(()),
            e => bail!("unbinding queue {}: {}", self.queue, std::io::Error::from_raw_os_error(e)),
        }
    }
}
