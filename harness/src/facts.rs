//! What a step observed, as typed data. A step executes and returns a [`Fact`]; the pure
//! [`crate::judge`] decides from it (and the step's expectation) whether the check held, and
//! the pure [`crate::narrate`] writes the transcript lines from it. Nothing in a fact is
//! invented: every field is something that ran or was seen.

use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One ICMP error ping printed (`From 10.198.0.1 icmp_seq=1 Destination Net Unreachable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IcmpError {
    pub from: String,
    pub what: String,
}

/// A real `ping` run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingFact {
    pub node: String,
    /// The command as it is shown (`ping -c2 -s 1400 -I eth1 10.0.0.1`).
    pub shown: String,
    pub sent: u32,
    pub received: u32,
    pub ttl: Option<u32>,
    /// ICMP errors about the probes, deduplicated, in order.
    pub errors: Vec<IcmpError>,
    /// ping could not send at all (`connect: Network is unreachable`): no route for the probe.
    pub not_sent: Option<String>,
    /// How long a probe without an answer was waited for (the negative check's silence).
    pub waited: Duration,
    /// A negative check decided by the kernel's drop events: one drop per probe (the request,
    /// its reply or an ICMP error about either), which ended the wait early. Empty when the
    /// silence decided (or the check was not negative).
    pub dropped: Vec<crate::drops::Drop>,
}

impl PingFact {
    /// Measured loss in percent, computed as ping prints it (lost * 100 / sent, rounded
    /// down); `None` when nothing was sent.
    pub fn loss_pct(&self) -> Option<u32> {
        (self.sent > 0).then(|| self.sent.saturating_sub(self.received) * 100 / self.sent)
    }
}

/// How a TCP check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TcpOutcome {
    /// Connected (connect-only check).
    Open,
    /// Every byte was sent and acknowledged by the listener.
    Complete,
    /// A RST answered the SYN: nothing listens there.
    Refused,
    /// An ICMP error ended the attempt (no route, host/net unreachable, prohibited).
    Unreachable,
    /// No answer to the SYN until the deadline.
    ConnectTimedOut,
    /// Connected, then the transfer made no progress until the deadline.
    Stalled,
    /// Connected, then the peer closed or reset the connection before the transfer completed.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpFact {
    pub node: String,
    pub dest: SocketAddr,
    pub send: Option<u64>,
    pub within: Duration,
    pub outcome: TcpOutcome,
}

/// Counters of an impairment when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ImpairCounts {
    pub seen: u64,
    pub dropped: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub delayed: u64,
}

impl ImpairCounts {
    /// Packets the impairment did something to.
    pub fn acted(&self) -> u64 {
        self.dropped + self.reordered + self.duplicated + self.delayed
    }
}

impl From<crate::impair::Stats> for ImpairCounts {
    fn from(s: crate::impair::Stats) -> Self {
        ImpairCounts { seen: s.seen, dropped: s.dropped, reordered: s.reordered, duplicated: s.duplicated, delayed: s.delayed }
    }
}

/// An impairment that ended (replaced, switched off, or still on at the end of the scenario).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImpairEnded {
    pub node: String,
    pub ifname: String,
    pub spec: String,
    pub counts: ImpairCounts,
}

/// How a daemon stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Exit {
    Code(i32),
    Signal(String),
}

impl Exit {
    pub fn from_status(st: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (st.code(), st.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(signal_name(s)),
            (None, None) => Exit::Signal("?".into()),
        }
    }
}

pub fn signal_name(s: i32) -> String {
    nix::sys::signal::Signal::try_from(s).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {s}"))
}

/// A service stopped by a step: SIGTERM to its process group, SIGKILL after the grace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StopFact {
    pub node: String,
    pub service: String,
    /// It had already exited before the step (nothing was signalled).
    pub already_exited: bool,
    /// SIGTERM was not enough: SIGKILL after the grace period.
    pub killed_after: Option<Duration>,
    pub exit: Exit,
}

/// A service started by a step (or with the lab).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartFact {
    pub node: String,
    pub service: String,
    /// The command line that ran.
    pub cmdline: String,
    /// Its ready pattern, if it has one.
    pub ready: Option<String>,
    pub timeout: Duration,
    pub outcome: StartOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum StartOutcome {
    /// Started, no ready line to wait for.
    Started,
    /// The ready line it logged.
    Ready(String),
    /// It exited before its ready line.
    Exited(Exit),
    /// No ready line within the timeout.
    NotReady,
}

/// Which log lines a `log`/`nolog` check reads (part of the step's syntax, so in the model).
pub use vpnlab_model::step::LogScope;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogFact {
    pub service: String,
    /// The pattern as written (`/re/` or `'literal'`).
    pub pattern: String,
    pub scope: LogScope,
    /// `log`: how long it waited at most; `nolog ... for D`: how long it watched.
    pub waited: Option<Duration>,
    /// The first matching line (raw; the narrator's transcript sanitizes it).
    pub found: Option<String>,
}

/// What a step observed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Fact {
    Ping(PingFact),
    /// `ip route|rule add|del`, done over netlink; `result` is the kernel's answer.
    Netlink {
        node: String,
        command: String,
        result: Result<(), String>,
    },
    /// `sh CMD`: its exit status and output.
    Command {
        node: String,
        cmd: String,
        ok: bool,
        status: String,
        output: String,
    },
    /// `show CMD`: its output (no verdict).
    Show {
        node: String,
        cmd: String,
        ok: bool,
        status: String,
        output: String,
    },
    Chmod {
        node: String,
        mode: u32,
        path: String,
        result: Result<(), String>,
    },
    Sysctl {
        node: String,
        key: String,
        value: String,
        result: Result<(), String>,
    },
    Trace {
        node: String,
        dest: IpAddr,
        lines: Vec<String>,
        end: crate::trace::TraceEnd,
    },
    /// A kernel counter's value (`None`: the kernel has no counter of that name).
    Counter {
        node: String,
        name: String,
        value: Option<i64>,
    },
    Tcp(TcpFact),
    /// `impair IF SPEC|off`: the impairment it ended (with its counters), then what it started.
    Impair {
        node: String,
        ifname: String,
        ended: Option<ImpairEnded>,
        started: Option<String>,
    },
    Start(StartFact),
    Stop(StopFact),
    /// `restart`: a stop, then a start.
    Restart(StopFact, StartFact),
    Log(LogFact),
    NoLog(LogFact),
    /// `capture ...`: tcpdump listens in the node (collected after the next step).
    CaptureStarted {
        node: String,
        shown: String,
    },
    /// A capture collected after the step it wrapped.
    Capture(CaptureFact),
}

/// What a `capture` step's tcpdump printed, sanitized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureFact {
    pub node: String,
    /// `tcpdump -ni eth0 -c 4 'udp port 500'`
    pub shown: String,
    pub count: u32,
    /// The packet lines (no timestamps; see `crate::capture::sanitize_packet`).
    pub packets: Vec<String>,
    /// `None`: tcpdump ended by itself after `count` packets; else it was stopped after this long.
    pub stopped_after: Option<Duration>,
}
