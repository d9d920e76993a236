//! Reachability probes: real `ping` in a node, and harness-native TCP connect / transfer
//! (a listener on a thread inside the destination node, a client on a thread inside the source).

use crate::model::step::PingExpect;
use crate::ns::{NetNs, PidNs};
use crate::process::run_capture;
use anyhow::Result;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// What a ping run showed.
#[derive(Debug, Clone, PartialEq)]
pub struct PingResult {
    pub transmitted: u32,
    pub received: u32,
    pub ttl: Option<u32>,
    /// ICMP errors and notes (`Destination Net Unreachable`, `Redirect Host`), sanitized and
    /// deduplicated, in order.
    pub notes: Vec<String>,
}

/// Parses iputils ping output.
pub fn parse_ping(out: &str) -> PingResult {
    let mut r = PingResult { transmitted: 0, received: 0, ttl: None, notes: Vec::new() };
    for line in out.lines() {
        if let Some(i) = line.find("ttl=") {
            if r.ttl.is_none() {
                r.ttl = line[i + 4..].split_whitespace().next().and_then(|t| t.parse().ok());
            }
        }
        if line.starts_with("From ") {
            // "From 10.0.0.1 icmp_seq=1 Destination Net Unreachable" -> "From 10.0.0.1: Destination Net Unreachable"
            let mut words = line.split_whitespace();
            words.next();
            let from = words.next().unwrap_or("").trim_end_matches(':');
            let rest: Vec<&str> = words.filter(|w| !w.starts_with("icmp_seq=")).collect();
            let note = format!("From {from}: {}", rest.join(" "));
            if !r.notes.contains(&note) {
                r.notes.push(note);
            }
        }
        if line.contains("packets transmitted") {
            let nums: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
            if nums.len() >= 2 {
                r.transmitted = nums[0];
                r.received = nums[1];
            }
        }
    }
    r
}

/// How long a negative reachability check listens for a late reply when nothing (no ICMP
/// error, no failed route lookup) has already decided it. Replies inside a lab take well under
/// a millisecond; a second is a thousand times that, so a loaded machine cannot turn a slow
/// reply into a drop. An ICMP error or an unsendable probe ends the wait at once (ping stops
/// when every probe has been answered, by a reply or by an error).
pub const SILENCE: Duration = Duration::from_secs(1);

/// How long a reachability check waits for its replies (ping's `-w`).
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// The drops that show every one of a ping's `count` probes lost inside the lab: for one echo
/// id, sequence numbers 1..=count each dropped as its reply from `dest`, an ICMP error quoting
/// the request or the reply, or (with `requests`) the request to `dest` itself. Copies refused
/// by a socket ([`crate::drops::Drop::is_copy`]) prove nothing. `None` while some probe may
/// still be answered.
///
/// A negative check leaves out dropped requests: the node that dropped one may have sent the
/// pinger an ICMP error (no route, a REJECT rule: the kernel reports both as drops), which ping
/// prints if it is still running and the transcript shows; stopping ping first would make that
/// line depend on timing. A dropped reply's or error's ICMP error never goes to the pinger. The
/// trace's own probe prints nothing and counts requests too.
pub fn probes_lost(drops: &[crate::drops::Drop], dest: IpAddr, count: u32, requests: bool) -> Option<Vec<crate::drops::Drop>> {
    use std::collections::BTreeMap;
    let mut by_id: BTreeMap<u16, BTreeMap<u16, &crate::drops::Drop>> = BTreeMap::new();
    for d in drops.iter().filter(|d| !d.is_copy()) {
        let Some(p) = &d.packet else { continue };
        let Some((reply, id, seq)) = p.echo() else { continue };
        // The echo itself, or the one an ICMP error quotes.
        let echo = match &p.l4 {
            crate::drops::L4::IcmpError { quoted: Some(q), .. } => q.as_ref(),
            _ => p,
        };
        let error = matches!(p.l4, crate::drops::L4::IcmpError { .. });
        let ours = if reply { echo.src == dest } else { echo.dst == dest && (requests || error) };
        if ours && seq >= 1 && u32::from(seq) <= count {
            by_id.entry(id).or_default().entry(seq).or_insert(d);
        }
    }
    by_id.into_values().find(|seqs| seqs.len() as u32 >= count).map(|seqs| seqs.into_values().cloned().collect())
}

/// The echo replies a node's kernel received (`IcmpInEchoReps` / `Icmp6InEchoReplies`, counted
/// before any socket sees them; only the check's own ping runs in the node meanwhile).
struct EchoCounter<'a> {
    netns: &'a NetNs,
    key: &'static str,
}

impl<'a> EchoCounter<'a> {
    fn new(netns: &'a NetNs, v6: bool) -> Self {
        EchoCounter { netns, key: if v6 { "Icmp6InEchoReplies" } else { "IcmpInEchoReps" } }
    }

    fn replies(&self) -> Result<u32> {
        let c = crate::counters::read(self.netns)?;
        let n = c.get(self.key).ok_or_else(|| anyhow::anyhow!("node `{}`: no {} counter", self.netns.name, self.key))?;
        Ok(u32::try_from(*n).unwrap_or(0))
    }

    /// The replies received since `before`, once none came for [`SILENCE`] (within 10 s). A loss
    /// check needs this: once any reply came, iputils' ping waits only two round trips after
    /// its last probe (not its `-W`), so a reply held up longer (a TCP tunnel's retransmission
    /// under load) would count as lost, and the count would change with the load.
    fn late_replies(&self, before: u32) -> Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = self.replies()?;
        let mut since = Instant::now();
        while since.elapsed() < SILENCE && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.replies()?;
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
        }
        Ok(seen.wrapping_sub(before))
    }
}

/// Runs real `ping`. Reachability checks stop at the first `count` replies (deadline 5 s);
/// negative checks send `count` probes 10 ms apart and wait [`SILENCE`] after the last; loss
/// checks send exactly `count` (20 ms apart); a `loss 0%` check whose ping reports a loss also
/// counts the replies that still reach the node until [`SILENCE`] passes without one
/// ([`EchoCounter::late_replies`]). With
/// the lab's drop events (`drops`), a negative check ends as soon as every probe's reply is seen
/// dropped inside the lab ([`probes_lost`]; the drops go into the fact); with no such
/// evidence it still waits out the silence.
#[allow(clippy::too_many_arguments)]
pub fn ping(
    netns: &NetNs,
    pid: &PidNs,
    cwd: &Path,
    node: &str,
    src: Option<&str>,
    dest: IpAddr,
    count: u32,
    size: Option<u32>,
    expect: &PingExpect,
    drops: Option<&mut crate::drops::Watch>,
) -> Result<crate::facts::PingFact> {
    let silence = format!("{}", SILENCE.as_secs_f64());
    let mut argv: Vec<String> = vec!["ping".into(), "-n".into(), "-c".into(), count.to_string()];
    match expect {
        PingExpect::Reachable => {
            argv.extend(["-i".to_string(), "0.01".to_string(), "-w".to_string(), REPLY_DEADLINE.as_secs().to_string()])
        }
        PingExpect::Unreachable => argv.extend(["-i".to_string(), "0.01".to_string(), "-W".to_string(), silence]),
        PingExpect::Loss(..) => argv.extend(["-i".to_string(), "0.02".to_string(), "-W".to_string(), silence]),
    }
    if let Some(s) = src {
        argv.extend(["-I".to_string(), s.to_string()]);
    }
    if let Some(n) = size {
        argv.extend(["-s".to_string(), n.to_string()]);
    }
    argv.push(dest.to_string());
    let shown = format!(
        "ping -c{count}{}{} {dest}",
        size.map(|s| format!(" -s {s}")).unwrap_or_default(),
        src.map(|s| format!(" -I {s}")).unwrap_or_default()
    );
    let mut lost: Option<Vec<crate::drops::Drop>> = None;
    let echoes = EchoCounter::new(netns, dest.is_ipv6());
    // `loss 0%`: every probe answered, however late ping stopped waiting (see
    // `EchoCounter::late_replies`). A ranged loss check keeps ping's own count (its transcript
    // shows the count; the replies its losses are made of never come).
    let replies_before = match expect {
        PingExpect::Loss(0, 0) => Some(echoes.replies()?),
        _ => None,
    };
    let out = match (expect, drops) {
        (PingExpect::Unreachable, Some(watch)) => {
            let from = watch.mark();
            let mut decide = |slice: Duration| {
                lost = watch.wait(from, slice, |d| probes_lost(d, dest, count, false));
                lost.is_some()
            };
            crate::process::NodeCmd::new(netns, pid, &argv, cwd).timeout(Duration::from_secs(30)).capture_until(&mut decide)?
        }
        _ => run_capture(netns, pid, &argv, cwd, Duration::from_secs(30))?,
    };
    let mut r = parse_ping(&out.text);
    if let (Some(before), true) = (replies_before, r.received < r.transmitted) {
        // Replies ping stopped waiting for (see `EchoCounter::late_replies`) still count.
        // The counter counts duplicates too; ping's statistics say how many it saw.
        let dups = out.text.split(", +").nth(1).and_then(|t| t.split(' ').next()).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
        r.received = r.received.max(echoes.late_replies(before)?.saturating_sub(dups).min(r.transmitted));
    }
    let mut fact = crate::facts::PingFact {
        node: node.to_string(),
        shown,
        sent: r.transmitted,
        received: r.received,
        ttl: r.ttl,
        errors: r
            .notes
            .iter()
            .filter_map(|n| n.strip_prefix("From "))
            .filter_map(|n| n.split_once(": "))
            .map(|(f, w)| crate::facts::IcmpError { from: f.to_string(), what: w.to_string() })
            .collect(),
        not_sent: None,
        waited: if matches!(expect, PingExpect::Reachable) { REPLY_DEADLINE } else { SILENCE },
        dropped: lost.unwrap_or_default(),
    };
    // No route at all: ping cannot even send ("connect: Network is unreachable").
    if let Some(l) = out.text.lines().find(|l| l.contains("Network is unreachable") && !l.starts_with("From ")) {
        fact.not_sent = Some(l.trim().trim_start_matches("ping: ").to_string());
        return Ok(fact);
    }
    if r.transmitted == 0 && !out.text.contains("packets transmitted") {
        anyhow::bail!("ping did not run: {}", out.text.trim());
    }
    Ok(fact)
}

pub use crate::facts::TcpOutcome;

/// Connects from `from` to `dest` (served by a listener in `server`), optionally sending
/// `send` bytes that the listener counts and acknowledges, all within `within`.
pub fn tcp(from: &NetNs, server: Option<&NetNs>, dest: SocketAddr, send: Option<u64>, within: Duration) -> Result<TcpOutcome> {
    let deadline = Instant::now() + within;
    let listener = match server {
        Some(ns) => Some(ns.run(move || -> std::io::Result<TcpListener> {
            let l = TcpListener::bind(dest)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })??),
        None => None,
    };
    std::thread::scope(|s| -> Result<TcpOutcome> {
        let server_thread = listener.map(|l| {
            s.spawn(move || -> std::io::Result<()> {
                // Accept one connection, count bytes to EOF, answer with the count.
                let (mut c, _) = loop {
                    match l.accept() {
                        Ok(c) => break c,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if Instant::now() >= deadline {
                                return Ok(());
                            }
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(e) => return Err(e),
                    }
                };
                c.set_nonblocking(false)?;
                c.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
                let mut total: u64 = 0;
                let mut buf = vec![0u8; 65536];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return Ok(()),
                    }
                }
                let _ = c.write_all(&total.to_be_bytes());
                Ok(())
            })
        });
        let outcome = from.run(move || -> TcpOutcome {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let mut c = match TcpStream::connect_timeout(&dest, left) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return TcpOutcome::Refused,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES | libc::EPERM)) => {
                    return TcpOutcome::Unreachable
                }
                Err(_) => return TcpOutcome::ConnectTimedOut,
            };
            let Some(n) = send else { return TcpOutcome::Open };
            let chunk = vec![0x5au8; 16384];
            let mut sent = 0u64;
            while sent < n {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || c.set_write_timeout(Some(left)).is_err() {
                    return TcpOutcome::Stalled;
                }
                let k = chunk.len().min((n - sent) as usize);
                match c.write(&chunk[..k]) {
                    Ok(w) => sent += w as u64,
                    Err(e) => return stalled_or_closed(&e),
                }
            }
            let _ = c.shutdown(Shutdown::Write);
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let _ = c.set_read_timeout(Some(left));
            let mut ack = [0u8; 8];
            match c.read_exact(&mut ack) {
                Ok(()) if u64::from_be_bytes(ack) == n => TcpOutcome::Complete,
                // The listener answers with the count it received: a short count or an early
                // EOF means the connection was closed before the transfer finished.
                Ok(()) => TcpOutcome::Closed,
                Err(e) => stalled_or_closed(&e),
            }
        })?;
        if let Some(t) = server_thread {
            let _ = t.join();
        }
        Ok(outcome)
    })
}

/// A socket error during a transfer: a timeout is a stall, anything else (EOF, reset, broken
/// pipe) is the connection closed by the other end.
fn stalled_or_closed(e: &std::io::Error) -> TcpOutcome {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => TcpOutcome::Stalled,
        _ => TcpOutcome::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reachable_ping() {
        let out = "PING 10.198.0.1 (10.198.0.1) 56(84) bytes of data.\n64 bytes from 10.198.0.1: icmp_seq=1 ttl=63 time=0.1 ms\n64 bytes from 10.198.0.1: icmp_seq=2 ttl=63 time=0.1 ms\n\n--- 10.198.0.1 ping statistics ---\n2 packets transmitted, 2 received, 0% packet loss, time 51ms\n";
        let r = parse_ping(out);
        assert_eq!((r.transmitted, r.received, r.ttl), (2, 2, Some(63)));
    }

    #[test]
    fn parses_icmp_errors_once() {
        let out = "From 10.198.0.1 icmp_seq=1 Destination Net Unreachable\nFrom 10.198.0.1 icmp_seq=2 Destination Net Unreachable\n--- x ---\n2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1ms\n";
        let r = parse_ping(out);
        assert_eq!((r.transmitted, r.received), (2, 0));
        assert_eq!(r.notes, vec!["From 10.198.0.1: Destination Net Unreachable".to_string()]);
    }
}
