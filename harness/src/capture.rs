//! The `capture` step: a real `tcpdump` in a node around the next step. It is started (and
//! waited for: `listening on`) before that step runs and collected after it: it ends by itself
//! after N packets, or is stopped `within` after the step (SIGTERM; tcpdump prints what it has).
//! Its packet lines are made deterministic here: tcpdump runs with `-t` (no timestamps) and
//! `--immediate-mode` (each packet is printed as it arrives, so none is still buffered when the
//! capture is stopped), and what differs between runs of the same exchange (ephemeral ports,
//! ping ids, TCP sequence numbers and windows, ESP SPIs) is replaced by a word.

use crate::facts::CaptureFact;
use crate::ns::{NetNs, PidNs};
use crate::process::{read_from, wait_until, Daemon};
use anyhow::{anyhow, bail, Result};
use regex::{Captures, Regex};
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// A capture started by a `capture` step and not collected yet.
pub struct Capture {
    daemon: Daemon,
    log: std::path::PathBuf,
    pub node: String,
    pub shown: String,
    pub count: u32,
    pub within: Duration,
    /// The step (its expectation is judged when the capture is collected), its index in
    /// prelude + steps and its text (a missed expectation names it).
    pub action: crate::model::step::Action,
    pub index: usize,
    pub text: String,
}

/// The tcpdump command line that runs (the transcript shows the short form, `crate::model::step::capture_shown`).
pub fn argv(ifname: &str, count: u32, filter: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = ["tcpdump", "-n", "-t", "-l", "--immediate-mode", "-Z", "root", "-i", ifname, "-c", &count.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(filter.map(str::to_string));
    v
}

impl Capture {
    /// Starts tcpdump in `ns` and waits (5 s at most) until it listens.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        ns: &NetNs,
        pid: &PidNs,
        dir: &Path,
        node: &str,
        ifname: &str,
        count: u32,
        filter: Option<&str>,
        within: Duration,
        index: usize,
        text: &str,
        action: &crate::model::step::Action,
    ) -> Result<Capture> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join(format!("{node}-{ifname}-step{index}.log"));
        let argv = argv(ifname, count, filter);
        let mut daemon = Daemon::start(&format!("tcpdump-{node}-{ifname}"), ns, pid, &argv, dir, &log, &[])?;
        let ready = wait_until(Instant::now() + Duration::from_secs(5), || {
            if read_from(&log, 0).contains("listening on") {
                return Some(Ok(()));
            }
            daemon.poll_exit().map(|st| Err(anyhow!("`{}` in node `{node}` exited ({st}): {}", argv.join(" "), read_from(&log, 0).trim())))
        });
        match ready {
            Some(r) => r?,
            None => bail!("tcpdump on {node}:{ifname} did not start listening within 5s"),
        }
        let shown = crate::model::step::capture_shown(ifname, count, filter);
        Ok(Capture { daemon, log, node: node.into(), shown, count, within, action: action.clone(), index, text: text.into() })
    }

    /// Waits until tcpdump has seen its N packets or `within` has passed, stops it, and
    /// returns its packets (sanitized by [`sanitize_packet`]).
    pub fn collect(&mut self) -> Result<CaptureFact> {
        let exited = wait_until(Instant::now() + self.within, || self.daemon.poll_exit());
        let stopped_after = match exited {
            Some(st) if st.success() => None,
            Some(st) => bail!("`{}` in node `{}` failed ({st}): {}", self.shown, self.node, read_from(&self.log, 0).trim()),
            None => {
                self.daemon.stop(Duration::from_secs(2))?;
                Some(self.within)
            }
        };
        let packets = packet_lines(&read_from(&self.log, 0)).into_iter().map(|l| sanitize_packet(&l)).collect();
        Ok(CaptureFact { node: self.node.clone(), shown: self.shown.clone(), count: self.count, packets, stopped_after })
    }
}

/// tcpdump's packet lines, without its own messages (`tcpdump: ...`, `listening on ...`, the
/// statistics it prints when it ends).
pub fn packet_lines(out: &str) -> Vec<String> {
    static STATS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\d+ packets? (captured|received by filter|dropped by kernel)$").expect("valid regex"));
    out.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with("tcpdump: ") && !l.starts_with("listening on ") && !STATS.is_match(l))
        .map(str::to_string)
        .collect()
}

/// Replaces what differs between two runs of the same exchange: ephemeral ports (32768 and up,
/// Linux's default `ip_local_port_range`) by `PORT`, ICMP echo ids by `ID`, TCP sequence and
/// acknowledgement numbers, windows and timestamps by `N`, ESP SPIs by `SPI`.
pub fn sanitize_packet(line: &str) -> String {
    static PORT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\.(\d{5})(: | > |,)").expect("valid regex"));
    static ECHO_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(ICMP echo (?:request|reply), id )\d+").expect("valid regex"));
    static TCP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(seq|ack|win|TS val|ecr) \d+(:\d+)?").expect("valid regex"));
    static SPI: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"spi=0x[0-9a-f]+").expect("valid regex"));
    let mut s = PORT
        .replace_all(line, |c: &Captures| match c[1].parse::<u32>() {
            Ok(p) if p >= 32768 => format!(".PORT{}", &c[2]),
            _ => c[0].to_string(),
        })
        .into_owned();
    s = ECHO_ID.replace_all(&s, "${1}ID").into_owned();
    if s.contains("Flags [") {
        s = TCP.replace_all(&s, "$1 N").into_owned();
    }
    SPI.replace_all(&s, "spi=0xSPI").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_messages_are_not_packets() {
        let out = "tcpdump: verbose output suppressed, use -v[v]... for full protocol decode\n\
                   listening on eth0, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                   IP 172.16.0.1.500 > 172.16.0.2.500: isakmp: parent_sa ikev2_init[I]\n\
                   1 packet captured\n2 packets received by filter\n0 packets dropped by kernel\n";
        assert_eq!(packet_lines(out), vec!["IP 172.16.0.1.500 > 172.16.0.2.500: isakmp: parent_sa ikev2_init[I]"]);
    }

    #[test]
    fn what_differs_between_runs_is_replaced() {
        let s = sanitize_packet;
        assert_eq!(s("IP 192.0.2.2.45678 > 198.51.100.10.1194: UDP, length 54"), "IP 192.0.2.2.PORT > 198.51.100.10.1194: UDP, length 54");
        assert_eq!(s("IP 10.0.0.1.1194 > 10.0.0.2.12345: UDP, length 54"), "IP 10.0.0.1.1194 > 10.0.0.2.12345: UDP, length 54");
        assert_eq!(
            s("IP 10.0.2.33 > 192.168.0.1: ICMP echo request, id 4711, seq 1, length 64"),
            "IP 10.0.2.33 > 192.168.0.1: ICMP echo request, id ID, seq 1, length 64"
        );
        assert_eq!(
            s("IP 10.0.0.1.40000 > 10.0.0.2.80: Flags [S], seq 3928374123, win 64240, options [mss 1460,TS val 1 ecr 0], length 0"),
            "IP 10.0.0.1.PORT > 10.0.0.2.80: Flags [S], seq N, win N, options [mss 1460,TS val N ecr N], length 0"
        );
        assert_eq!(
            s("IP 172.16.0.1 > 172.16.0.2: ESP(spi=0x1a2b3c4d,seq=0x1), length 120"),
            "IP 172.16.0.1 > 172.16.0.2: ESP(spi=0xSPI,seq=0x1), length 120"
        );
    }
}
