//! The transcript lines of a step, written from what it observed ([`Fact`]), in the book's
//! voice. Pure: a line shows only what really ran and what really was seen (a service stopped
//! by the harness is `stop client (SIGTERM)`, never a shell command that did not run).

use crate::facts::{Exit, Fact, ImpairCounts, ImpairEnded, PingFact, StartFact, StartOutcome, StopFact, TcpFact, TcpOutcome};
use crate::model::step::{Action, PingExpect};
use std::time::Duration;

/// One transcript line (sanitized by the transcript when pushed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A command and what came of it.
    Say(String),
    /// A daemon's log line: `server.log: <line>`.
    Log { service: String, line: String },
    /// Command output, indented under its command.
    Block(String),
}

fn say(s: String) -> Line {
    Line::Say(s)
}

/// The transcript lines of a step that observed `fact`.
pub fn narrate(action: &Action, fact: &Fact) -> Vec<Line> {
    match fact {
        Fact::Ping(p) => {
            let expect = match action {
                Action::Ping { expect, .. } => expect.clone(),
                _ => PingExpect::Reachable,
            };
            vec![say(format!("{}$ {}  -> {}", p.node, p.shown, ping_outcome(p, &expect)))]
        }
        Fact::Netlink { node, command, result } => vec![say(format!("{node}# {command}{}", refused(result)))],
        Fact::Command { node, cmd, ok, status, .. } => {
            let expect_fail = matches!(action, Action::Sh { expect_fail: true, .. });
            let line = format!("{node}# {cmd}");
            vec![say(match (expect_fail, ok) {
                (false, true) => line,
                (true, false) => format!("{line}  -> fails ({status})"),
                _ => format!("{line}  -> {status}"),
            })]
        }
        Fact::Show { node, cmd, ok, status, output } => {
            let mut v = vec![say(format!("{node}$ {cmd}")), Line::Block(output.clone())];
            if !ok {
                v.push(Line::Say(format!("    ({status})")));
            }
            v
        }
        Fact::Chmod { node, mode, path, result } => vec![say(format!("{node}# chmod {mode:o} {path}{}", refused(result)))],
        Fact::Sysctl { node, key, value, result } => vec![say(format!("{node}# sysctl -w {key}={value}{}", refused(result)))],
        Fact::Trace { node, dest, lines, .. } => vec![say(format!("{node}$ vpnlab trace {dest}")), Line::Block(lines.join("\n"))],
        Fact::Counter { node, name, value } => {
            vec![say(format!("{node}$ counter {name}  -> {}", value.map(|v| v.to_string()).unwrap_or_else(|| "no such counter".into())))]
        }
        Fact::Tcp(t) => vec![say(format!(
            "{}$ tcp {}{}  -> {}",
            t.node,
            t.dest,
            t.send.map(|n| format!(" send {}", human(n))).unwrap_or_default(),
            tcp_outcome(t)
        ))],
        Fact::Impair { node, ifname, ended, started } => {
            let line = match (started, ended) {
                (Some(spec), None) => format!("{node}# impair {ifname} {spec}   (NFQUEUE, harness-native)"),
                (Some(spec), Some(e)) => format!(
                    "{node}# impair {ifname} {spec}   (NFQUEUE, harness-native; the previous `{}` had {})",
                    e.spec,
                    impair_counts(&e.counts)
                ),
                (None, Some(e)) => format!("{node}# impair {ifname} off  -> `{}` had {}", e.spec, impair_counts(&e.counts)),
                (None, None) => format!("{node}# impair {ifname} off  -> no impairment was on"),
            };
            vec![say(line)]
        }
        Fact::Start(s) => vec![say(start_line(s))],
        Fact::Stop(s) => vec![say(stop_line(s))],
        Fact::Restart(stop, start) => vec![say(stop_line(stop)), say(start_line(start))],
        Fact::Log(l) => match &l.found {
            Some(line) => vec![Line::Log { service: l.service.clone(), line: line.clone() }],
            None => vec![say(format!("{}.log: no {} within {:?}", l.service, l.pattern, l.waited.unwrap_or_default()))],
        },
        Fact::CaptureStarted { node, shown } => vec![say(format!("{node}$ {shown} &"))],
        Fact::Capture(c) => {
            let mut v = vec![say(format!("{}: {}  -> {}", c.node, c.shown, capture_outcome(c)))];
            if !c.packets.is_empty() {
                v.push(Line::Block(c.packets.join("\n")));
            }
            v
        }
        Fact::NoLog(l) => match &l.found {
            Some(line) => vec![Line::Log { service: l.service.clone(), line: line.clone() }],
            None => {
                vec![say(format!("{}.log: no {}{}", l.service, l.pattern, l.waited.map(|w| format!(" for {w:?}")).unwrap_or_default()))]
            }
        },
    }
}

/// `none`, `1 packet`, `4 packets`.
pub fn packets(n: usize) -> String {
    match n {
        0 => "none".into(),
        1 => "1 packet".into(),
        n => format!("{n} packets"),
    }
}

/// `4 packets`, `2 packets (stopped after 5s)`, `none (stopped after 1s)`.
pub fn capture_outcome(c: &crate::facts::CaptureFact) -> String {
    match c.stopped_after {
        None => packets(c.packets.len()),
        Some(d) => format!("{} (stopped after {})", packets(c.packets.len()), secs(d)),
    }
}

/// An impairment still on when the scenario ended, with its counters.
pub fn impair_at_end(e: &ImpairEnded) -> Line {
    say(format!("{}: impair {} `{}` was on until the end: it had {}", e.node, e.ifname, e.spec, impair_counts(&e.counts)))
}

fn refused(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!("  -> refused ({e})"),
    }
}

/// `reachable (ttl=63)`, `unreachable (100% loss, no reply within 1s)`, `unreachable (100% loss,
/// every reply dropped at upstream)`, `loss 9% (50 of 55 received)`.
pub fn ping_outcome(p: &PingFact, expect: &PingExpect) -> String {
    let errors = p.errors.iter().map(|e| format!("From {}: {}", e.from, e.what)).collect::<Vec<_>>();
    if let Some(why) = &p.not_sent {
        return format!("unreachable (not sent: {why})");
    }
    match expect {
        PingExpect::Loss(..) => {
            let loss = p.loss_pct().unwrap_or(100);
            let mut s = format!("loss {loss}% ({} of {} received", p.received, p.sent);
            for e in &errors {
                s.push_str("; ");
                s.push_str(e);
            }
            s.push(')');
            s
        }
        _ if p.received > 0 => {
            let mut s = format!("reachable (ttl={}", p.ttl.map(|t| t.to_string()).unwrap_or_else(|| "?".into()));
            for e in &errors {
                s.push_str("; ");
                s.push_str(e);
            }
            s.push(')');
            s
        }
        _ if !errors.is_empty() => format!("unreachable (100% loss; {})", errors.join("; ")),
        // Decided by the kernel's drop events (native): every probe's reply was seen dropped.
        _ if !p.dropped.is_empty() => {
            let mut at: Vec<&str> = p.dropped.iter().map(|d| d.at.as_str()).collect();
            at.sort_unstable();
            at.dedup();
            format!("unreachable (100% loss, every reply dropped at {})", at.join(", "))
        }
        _ => format!("unreachable (100% loss, no reply within {})", secs(p.waited)),
    }
}

/// `1s`, `0.5s`, `200ms`.
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

pub fn tcp_outcome(t: &TcpFact) -> String {
    let within = secs(t.within);
    match t.outcome {
        TcpOutcome::Open => "open".into(),
        TcpOutcome::Complete => "complete".into(),
        TcpOutcome::Refused => "refused (connection refused: nothing listens there)".into(),
        TcpOutcome::Unreachable => "unreachable (an ICMP error ended the connection attempt)".into(),
        TcpOutcome::ConnectTimedOut => format!("stalls (no answer to the SYN within {within})"),
        TcpOutcome::Stalled => format!("stalls (connected; the transfer did not finish within {within})"),
        TcpOutcome::Closed => "closed (connected; the peer closed the connection before the transfer finished)".into(),
    }
}

/// `reordered 5 of 120 packets`, `acted on 0 of 120 packets`.
pub fn impair_counts(c: &ImpairCounts) -> String {
    let kinds = [("dropped", c.dropped), ("reordered", c.reordered), ("duplicated", c.duplicated), ("delayed", c.delayed)];
    let acted: Vec<String> = kinds.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    if acted.is_empty() {
        format!("acted on 0 of {} packets", c.seen)
    } else {
        format!("{} of {} packets", acted.join(", "), c.seen)
    }
}

pub fn exit_words(e: &Exit) -> String {
    match e {
        Exit::Code(c) => format!("exited ({c})"),
        Exit::Signal(s) => format!("killed by {s}"),
    }
}

pub fn start_outcome(s: &StartFact) -> String {
    let re = s.ready.clone().unwrap_or_default();
    match &s.outcome {
        StartOutcome::Started => "started".into(),
        StartOutcome::Ready(line) => line.clone(),
        StartOutcome::Exited(e) => format!("{} before /{re}/", exit_words(e)),
        StartOutcome::NotReady => format!("not ready: no /{re}/ within {:?}", s.timeout),
    }
}

fn start_line(s: &StartFact) -> String {
    let line = format!("{}# {}", s.node, s.cmdline);
    match s.outcome {
        StartOutcome::Started => line,
        _ => format!("{line}  -> {}", start_outcome(s)),
    }
}

fn stop_line(s: &StopFact) -> String {
    if s.already_exited {
        return format!("{}# stop {}  -> it had already {}", s.node, s.service, exit_words(&s.exit));
    }
    match s.killed_after {
        None => format!("{}# stop {} (SIGTERM)  -> {}", s.node, s.service, exit_words(&s.exit)),
        Some(g) => {
            format!("{}# stop {} (SIGTERM)  -> still running after {}, SIGKILL: {}", s.node, s.service, secs(g), exit_words(&s.exit))
        }
    }
}

pub fn human(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}MB", n / 1_000_000)
    } else if n.is_multiple_of(1000) {
        format!("{}KB", n / 1000)
    } else {
        format!("{n}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::*;

    fn p(sent: u32, received: u32) -> PingFact {
        PingFact {
            node: "client".into(),
            shown: "ping -c2 10.198.0.1".into(),
            sent,
            received,
            ttl: (received > 0).then_some(63),
            errors: vec![],
            not_sent: None,
            waited: Duration::from_secs(1),
            dropped: Vec::new(),
        }
    }
    fn ping_action(expect: PingExpect) -> Action {
        Action::Ping { node: 0, src: None, dest: "10.198.0.1".parse().unwrap(), count: 2, size: None, expect }
    }

    #[test]
    fn ping_lines_say_how_the_verdict_was_reached() {
        let line = |f: PingFact, e| narrate(&ping_action(e), &Fact::Ping(f));
        assert_eq!(line(p(2, 2), PingExpect::Reachable), vec![Line::Say("client$ ping -c2 10.198.0.1  -> reachable (ttl=63)".into())]);
        assert_eq!(
            line(p(2, 0), PingExpect::Unreachable),
            vec![Line::Say("client$ ping -c2 10.198.0.1  -> unreachable (100% loss, no reply within 1s)".into())]
        );
        let mut e = p(2, 0);
        e.errors.push(IcmpError { from: "10.198.0.1".into(), what: "Destination Net Unreachable".into() });
        assert_eq!(
            line(e, PingExpect::Unreachable),
            vec![Line::Say("client$ ping -c2 10.198.0.1  -> unreachable (100% loss; From 10.198.0.1: Destination Net Unreachable)".into())]
        );
        let mut n = p(0, 0);
        n.not_sent = Some("connect: Network is unreachable".into());
        assert_eq!(
            line(n, PingExpect::Loss(100, 100)),
            vec![Line::Say("client$ ping -c2 10.198.0.1  -> unreachable (not sent: connect: Network is unreachable)".into())]
        );
        assert_eq!(
            line(p(55, 50), PingExpect::Loss(5, 20)),
            vec![Line::Say("client$ ping -c2 10.198.0.1  -> loss 9% (50 of 55 received)".into())]
        );
        // Decided by the kernel's drop events: says so, and where, instead of a silence it did not wait.
        let mut d = p(2, 0);
        let drop = |at: &str| crate::drops::Drop {
            node: 1,
            ifindex: 2,
            dev: "eth0".into(),
            at: at.into(),
            function: "ip_error".into(),
            reason: "IP_INNOROUTES".into(),
            packet: None,
        };
        d.dropped = vec![drop("upstream"), drop("upstream")];
        assert_eq!(
            line(d, PingExpect::Unreachable),
            vec![Line::Say("client$ ping -c2 10.198.0.1  -> unreachable (100% loss, every reply dropped at upstream)".into())]
        );
    }

    #[test]
    fn a_stop_shows_what_the_harness_did() {
        let s =
            StopFact { node: "client".into(), service: "client".into(), already_exited: false, killed_after: None, exit: Exit::Code(0) };
        assert_eq!(
            narrate(&Action::Service { op: crate::model::step::ServiceOp::Stop, service: 0 }, &Fact::Stop(s.clone())),
            vec![Line::Say("client# stop client (SIGTERM)  -> exited (0)".into())]
        );
        let k = StopFact { killed_after: Some(Duration::from_secs(5)), exit: Exit::Signal("SIGKILL".into()), ..s };
        assert_eq!(stop_line(&k), "client# stop client (SIGTERM)  -> still running after 5s, SIGKILL: killed by SIGKILL");
    }

    #[test]
    fn impairment_counters_are_shown_when_it_ends() {
        let e = ImpairEnded {
            node: "wan".into(),
            ifname: "eth0".into(),
            spec: "reorder every 10 hold 3".into(),
            counts: ImpairCounts { seen: 120, reordered: 12, ..Default::default() },
        };
        let a = Action::Impair { node: 0, ifname: "eth0".into(), spec: None, expect: None };
        let f = Fact::Impair { node: "wan".into(), ifname: "eth0".into(), ended: Some(e.clone()), started: None };
        assert_eq!(
            narrate(&a, &f),
            vec![Line::Say("wan# impair eth0 off  -> `reorder every 10 hold 3` had reordered 12 of 120 packets".into())]
        );
        assert_eq!(
            impair_at_end(&e),
            Line::Say("wan: impair eth0 `reorder every 10 hold 3` was on until the end: it had reordered 12 of 120 packets".into())
        );
        assert_eq!(impair_counts(&ImpairCounts { seen: 7, ..Default::default() }), "acted on 0 of 7 packets");
    }

    #[test]
    fn tcp_lines() {
        let t = |outcome| TcpFact {
            node: "c".into(),
            dest: "10.0.0.1:5001".parse().unwrap(),
            send: Some(200_000),
            within: Duration::from_secs(5),
            outcome,
        };
        assert_eq!(tcp_outcome(&t(TcpOutcome::Stalled)), "stalls (connected; the transfer did not finish within 5s)");
        assert_eq!(tcp_outcome(&t(TcpOutcome::ConnectTimedOut)), "stalls (no answer to the SYN within 5s)");
        let a = Action::Tcp {
            node: 0,
            dest: "10.0.0.1:5001".parse().unwrap(),
            send: Some(200_000),
            within: Duration::from_secs(5),
            expect: crate::model::step::TcpExpect::Complete,
        };
        assert_eq!(
            narrate(&a, &Fact::Tcp(t(TcpOutcome::Complete))),
            vec![Line::Say("c$ tcp 10.0.0.1:5001 send 200KB  -> complete".into())]
        );
    }
}
