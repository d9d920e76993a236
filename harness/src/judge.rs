//! The verdict on one step, from what it observed and what the lab expected. Pure: no I/O, no
//! clock; unit-tested without root.

use crate::facts::{Fact, LogFact, StartOutcome, TcpOutcome};
use crate::model::step::{Action, ImpairExpect, PingExpect, TcpExpect};

/// A check that did not hold: what was observed, what was expected (the transcript's words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub observed: String,
    pub expected: String,
}

fn miss(observed: impl Into<String>, expected: impl Into<String>) -> Result<(), Miss> {
    Err(Miss { observed: observed.into(), expected: expected.into() })
}

/// Did the step's expectation hold? Steps without an expectation hold when what they did
/// succeeded (a route the kernel refused, a failing `sh`, a service that never became ready
/// do not).
pub fn judge(action: &Action, fact: &Fact) -> Result<(), Miss> {
    match (action, fact) {
        (Action::Ping { expect, .. }, Fact::Ping(p)) => {
            let replied = p.received > 0;
            match expect {
                PingExpect::Reachable if replied => Ok(()),
                PingExpect::Reachable => miss(crate::narrate::ping_outcome(p, expect), "reachable"),
                PingExpect::Unreachable if !replied => Ok(()),
                PingExpect::Unreachable => miss(crate::narrate::ping_outcome(p, expect), "unreachable"),
                PingExpect::Loss(a, b) => {
                    let want = if a == b { format!("loss {a}%") } else { format!("loss {a}%..{b}%") };
                    match p.loss_pct() {
                        Some(l) if (*a..=*b).contains(&l) => Ok(()),
                        _ => miss(crate::narrate::ping_outcome(p, expect), want),
                    }
                }
            }
        }
        (Action::Tcp { expect, .. }, Fact::Tcp(t)) => {
            let ok = matches!(
                (expect, t.outcome),
                (TcpExpect::Open, TcpOutcome::Open)
                    | (TcpExpect::Complete, TcpOutcome::Complete)
                    | (TcpExpect::Refused, TcpOutcome::Refused)
                    | (TcpExpect::Unreachable, TcpOutcome::Unreachable)
                    | (TcpExpect::Stalls, TcpOutcome::Stalled | TcpOutcome::ConnectTimedOut)
                    | (TcpExpect::Closed, TcpOutcome::Closed)
            );
            if ok {
                Ok(())
            } else {
                miss(crate::narrate::tcp_outcome(t), expect.word())
            }
        }
        (Action::Sh { expect_fail, .. }, Fact::Command { ok, status, .. }) => match (expect_fail, ok) {
            (false, true) | (true, false) => Ok(()),
            (false, false) => miss(format!("failed ({status})"), "success"),
            (true, true) => miss(format!("succeeded ({status})"), "fails"),
        },
        (_, Fact::Netlink { result: Err(e), .. }) => miss(format!("refused: {e}"), "done"),
        (_, Fact::Chmod { result: Err(e), .. }) => miss(format!("failed: {e}"), "done"),
        (_, Fact::Sysctl { result: Err(e), .. }) => miss(format!("failed: {e}"), "done"),
        (_, Fact::Start(s)) | (_, Fact::Restart(_, s)) => match &s.outcome {
            StartOutcome::Started | StartOutcome::Ready(_) => Ok(()),
            StartOutcome::Exited(_) | StartOutcome::NotReady => {
                miss(crate::narrate::start_outcome(s), format!("ready: /{}/", s.ready.clone().unwrap_or_default()))
            }
        },
        (Action::Log { .. }, Fact::Log(l)) => match &l.found {
            Some(_) => Ok(()),
            None => miss(format!("no line like {} {}", l.pattern, scope_words(l)), format!("a line like {}", l.pattern)),
        },
        (Action::NoLog { .. }, Fact::NoLog(l)) => match &l.found {
            None => Ok(()),
            Some(line) => miss(format!("logged: {}", line.trim()), format!("no line like {}", l.pattern)),
        },
        (Action::Impair { expect: Some(e), .. }, Fact::Impair { ended, .. }) => {
            let acted = ended.as_ref().map(|x| x.counts.acted()).unwrap_or(0);
            let counts = ended.as_ref().map(|x| crate::narrate::impair_counts(&x.counts)).unwrap_or_else(|| "no impairment was on".into());
            match e {
                ImpairExpect::Acted if acted > 0 => Ok(()),
                ImpairExpect::Idle if ended.is_some() && acted == 0 => Ok(()),
                ImpairExpect::Acted => miss(counts, "acted (on at least one packet)"),
                ImpairExpect::Idle => miss(counts, "idle (acted on no packet)"),
            }
        }
        (Action::Counter { expect: Some((op, n)), .. }, Fact::Counter { value, .. }) => match value {
            Some(v) if op.holds(*v, *n) => Ok(()),
            Some(v) => miss(v.to_string(), format!("{} {n}", op.as_str())),
            None => miss("no such counter", format!("{} {n}", op.as_str())),
        },
        (Action::Trace { expect: Some(e), .. }, Fact::Trace { end, .. }) => {
            use crate::model::step::TraceExpect;
            use crate::trace::TraceEnd;
            let observed = match end {
                TraceEnd::Delivered => "delivered (the reply came back)".to_string(),
                TraceEnd::DroppedAt(n) => format!("dropped at {n}"),
                TraceEnd::Other => "neither delivered nor dropped with a reason (see the trace)".to_string(),
            };
            match (e, end) {
                (TraceExpect::Delivered, TraceEnd::Delivered) => Ok(()),
                (TraceExpect::DroppedAt(want), TraceEnd::DroppedAt(got)) if want == got => Ok(()),
                (TraceExpect::Delivered, _) => miss(observed, "delivered"),
                (TraceExpect::DroppedAt(want), _) => miss(observed, format!("dropped at {want}")),
            }
        }
        (Action::Capture { expect: Some(n), .. }, Fact::Capture(c)) => {
            if c.packets.len() == *n as usize {
                Ok(())
            } else {
                miss(crate::narrate::capture_outcome(c), crate::narrate::packets(*n as usize))
            }
        }
        _ => Ok(()),
    }
}

fn scope_words(l: &LogFact) -> String {
    use crate::facts::LogScope::*;
    let scope = match l.scope {
        SinceStart => "since the service started",
        SinceChange => "since the last change",
        SincePrevious => "since the previous step",
    };
    match l.waited {
        Some(w) => format!("{scope} (waited {w:?})"),
        None => scope.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::*;
    use std::time::Duration;

    fn ping(sent: u32, received: u32) -> PingFact {
        PingFact {
            node: "c".into(),
            shown: "ping -c2 10.0.0.1".into(),
            sent,
            received,
            ttl: (received > 0).then_some(64),
            errors: vec![],
            not_sent: None,
            waited: Duration::from_secs(1),
            dropped: Vec::new(),
        }
    }
    fn ping_action(expect: PingExpect) -> Action {
        Action::Ping { node: 0, src: None, dest: "10.0.0.1".parse().unwrap(), count: 2, size: None, expect }
    }

    #[test]
    fn ping_reachability() {
        assert!(judge(&ping_action(PingExpect::Reachable), &Fact::Ping(ping(2, 2))).is_ok());
        assert!(judge(&ping_action(PingExpect::Unreachable), &Fact::Ping(ping(2, 0))).is_ok());
        let m = judge(&ping_action(PingExpect::Reachable), &Fact::Ping(ping(2, 0))).unwrap_err();
        assert_eq!(m.expected, "reachable");
        assert!(m.observed.starts_with("unreachable"), "{m:?}");
        assert!(judge(&ping_action(PingExpect::Unreachable), &Fact::Ping(ping(2, 1))).is_err());
    }

    #[test]
    fn loss_is_judged_on_the_measured_value_and_nothing_sent_is_not_100_percent() {
        assert!(judge(&ping_action(PingExpect::Loss(5, 20)), &Fact::Ping(ping(55, 50))).is_ok());
        let m = judge(&ping_action(PingExpect::Loss(0, 0)), &Fact::Ping(ping(55, 50))).unwrap_err();
        assert_eq!(m.expected, "loss 0%");
        assert!(m.observed.contains("9%"), "{m:?}");
        let mut none = ping(0, 0);
        none.not_sent = Some("connect: Network is unreachable".into());
        assert!(judge(&ping_action(PingExpect::Loss(100, 100)), &Fact::Ping(none.clone())).is_err(), "nothing sent is not a loss of 100%");
        assert!(judge(&ping_action(PingExpect::Unreachable), &Fact::Ping(none)).is_ok());
    }

    fn tcp(outcome: TcpOutcome, expect: TcpExpect) -> Result<(), Miss> {
        let send = matches!(expect, TcpExpect::Complete | TcpExpect::Stalls | TcpExpect::Closed).then_some(1000);
        let f =
            Fact::Tcp(TcpFact { node: "c".into(), dest: "10.0.0.1:5001".parse().unwrap(), send, within: Duration::from_secs(5), outcome });
        judge(&Action::Tcp { node: 0, dest: "10.0.0.1:5001".parse().unwrap(), send, within: Duration::from_secs(5), expect }, &f)
    }

    #[test]
    fn tcp_outcomes_are_distinct() {
        use TcpOutcome::*;
        let all = [Open, Complete, Refused, Unreachable, ConnectTimedOut, Stalled, Closed];
        for (expect, good) in [
            (TcpExpect::Open, vec![Open]),
            (TcpExpect::Complete, vec![Complete]),
            (TcpExpect::Refused, vec![Refused]),
            (TcpExpect::Unreachable, vec![Unreachable]),
            (TcpExpect::Stalls, vec![Stalled, ConnectTimedOut]),
            (TcpExpect::Closed, vec![Closed]),
        ] {
            for o in all {
                assert_eq!(tcp(o, expect.clone()).is_ok(), good.contains(&o), "{o:?} vs {expect:?}");
            }
        }
    }

    fn log_fact(found: Option<&str>) -> LogFact {
        LogFact {
            service: "server".into(),
            pattern: "/OPTIONS IMPORT/".into(),
            scope: LogScope::SinceChange,
            waited: Some(Duration::from_secs(5)),
            found: found.map(String::from),
        }
    }

    #[test]
    fn log_and_nolog() {
        let pat = crate::model::step::LinePattern { re: regex::Regex::new("OPTIONS IMPORT").unwrap(), text: "OPTIONS IMPORT".into() };
        let log = Action::Log { service: 0, pattern: pat.clone(), within: Duration::from_secs(5), scope: LogScope::SinceChange };
        let nolog = Action::NoLog { service: 0, pattern: pat, watch: None, scope: LogScope::SinceChange };
        assert!(judge(&log, &Fact::Log(log_fact(Some("OPTIONS IMPORT: x")))).is_ok());
        let m = judge(&log, &Fact::Log(log_fact(None))).unwrap_err();
        assert!(m.observed.contains("since the last change"), "{m:?}");
        assert!(judge(&nolog, &Fact::NoLog(log_fact(None))).is_ok());
        assert!(judge(&nolog, &Fact::NoLog(log_fact(Some("OPTIONS IMPORT: x")))).is_err());
    }

    #[test]
    fn sh_and_refused_operations() {
        let f = |ok| Fact::Command {
            node: "n".into(),
            cmd: "true".into(),
            ok,
            status: if ok { "exit 0".into() } else { "exit 1".into() },
            output: String::new(),
        };
        let sh = |expect_fail| Action::Sh { node: 0, cmd: "true".into(), expect_fail };
        assert!(judge(&sh(false), &f(true)).is_ok());
        assert!(judge(&sh(false), &f(false)).is_err());
        assert!(judge(&sh(true), &f(false)).is_ok());
        assert!(judge(&sh(true), &f(true)).is_err());
        let show = Action::Show { node: 0, cmd: "ip route".into(), tty: false };
        let refused = Fact::Netlink { node: "n".into(), command: "ip route add x".into(), result: Err("File exists".into()) };
        assert!(judge(&show, &refused).is_err());
    }

    #[test]
    fn a_service_that_never_became_ready_fails() {
        let s = |outcome| StartFact {
            node: "n".into(),
            service: "server".into(),
            cmdline: "openvpn".into(),
            ready: Some("Init".into()),
            timeout: Duration::from_secs(5),
            outcome,
        };
        let a = Action::Service { op: crate::model::step::ServiceOp::Start, service: 0 };
        assert!(judge(&a, &Fact::Start(s(StartOutcome::Ready("Init".into())))).is_ok());
        assert!(judge(&a, &Fact::Start(s(StartOutcome::NotReady))).is_err());
        let m = judge(&a, &Fact::Start(s(StartOutcome::Exited(Exit::Code(1))))).unwrap_err();
        assert_eq!(m.observed, "exited (1) before /Init/");
    }

    #[test]
    fn a_counter_is_compared() {
        use crate::model::counter::CmpOp;
        let a = |op, n| Action::Counter { node: 0, name: "IpExtInNoRoutes".into(), expect: Some((op, n)) };
        let f = |v| Fact::Counter { node: "gw".into(), name: "IpExtInNoRoutes".into(), value: v };
        assert!(judge(&a(CmpOp::Gt, 0), &f(Some(4))).is_ok());
        let m = judge(&a(CmpOp::Eq, 0), &f(Some(4))).unwrap_err();
        assert_eq!((m.observed.as_str(), m.expected.as_str()), ("4", "= 0"));
        assert!(judge(&a(CmpOp::Ge, 0), &f(None)).is_err(), "a counter the kernel lacks is no zero");
    }

    #[test]
    fn a_trace_is_judged_on_where_it_ended() {
        use crate::model::step::TraceExpect;
        use crate::trace::TraceEnd;
        let a = |e| Action::Trace { node: 0, dest: "10.0.0.1".parse().unwrap(), expect: Some(e) };
        let f = |end| Fact::Trace { node: "c".into(), dest: "10.0.0.1".parse().unwrap(), lines: vec![], end };
        assert!(judge(&a(TraceExpect::DroppedAt("gw".into())), &f(TraceEnd::DroppedAt("gw".into()))).is_ok());
        let m = judge(&a(TraceExpect::DroppedAt("gw".into())), &f(TraceEnd::DroppedAt("upstream".into()))).unwrap_err();
        assert_eq!((m.observed.as_str(), m.expected.as_str()), ("dropped at upstream", "dropped at gw"));
        assert!(judge(&a(TraceExpect::Delivered), &f(TraceEnd::Delivered)).is_ok());
        assert!(judge(&a(TraceExpect::Delivered), &f(TraceEnd::Other)).is_err());
        assert!(judge(&a(TraceExpect::DroppedAt("gw".into())), &f(TraceEnd::Delivered)).is_err());
    }

    #[test]
    fn a_capture_is_judged_on_how_many_packets_it_saw() {
        let a = |e| Action::Capture { node: 0, ifname: "eth0".into(), count: 4, filter: None, within: Duration::from_secs(1), expect: e };
        let f = |n: usize, stopped: bool| {
            Fact::Capture(CaptureFact {
                node: "wan".into(),
                shown: "tcpdump -ni eth0 -c 4".into(),
                count: 4,
                packets: vec!["IP 10.0.0.1 > 10.0.0.2: ESP(spi=0xSPI,seq=0x1), length 120".into(); n],
                stopped_after: stopped.then_some(Duration::from_secs(1)),
            })
        };
        assert!(judge(&a(Some(4)), &f(4, false)).is_ok());
        assert!(judge(&a(Some(0)), &f(0, true)).is_ok());
        assert!(judge(&a(None), &f(2, true)).is_ok(), "without an expectation a capture only shows");
        let m = judge(&a(Some(0)), &f(1, true)).unwrap_err();
        assert_eq!((m.observed.as_str(), m.expected.as_str()), ("1 packet (stopped after 1s)", "none"));
        let m = judge(&a(Some(4)), &f(2, true)).unwrap_err();
        assert_eq!((m.observed.as_str(), m.expected.as_str()), ("2 packets (stopped after 1s)", "4 packets"));
    }

    #[test]
    fn impairment_counters_can_be_asserted() {
        let ended = |acted| {
            Some(ImpairEnded {
                node: "wan".into(),
                ifname: "eth0".into(),
                spec: "drop every 5".into(),
                counts: ImpairCounts { seen: 10, dropped: acted, ..Default::default() },
            })
        };
        let a = |e| Action::Impair { node: 0, ifname: "eth0".into(), spec: None, expect: Some(e) };
        let f = |e| Fact::Impair { node: "wan".into(), ifname: "eth0".into(), ended: e, started: None };
        assert!(judge(&a(ImpairExpect::Acted), &f(ended(2))).is_ok());
        assert!(judge(&a(ImpairExpect::Acted), &f(ended(0))).is_err());
        assert!(judge(&a(ImpairExpect::Idle), &f(ended(0))).is_ok());
        assert!(judge(&a(ImpairExpect::Acted), &f(None)).is_err());
    }
}
