//! A step of a scenario: executed into a [`Fact`], narrated, judged; and the services,
//! impairments and log scopes the steps use.

use super::{Lab_, StepFailed};
use crate::facts::{Exit, Fact, ImpairEnded, LogFact, LogScope, StartFact, StartOutcome, StopFact, TcpFact};
use crate::judge::judge;
use crate::model::step::{Action, PingExpect, ServiceOp, Step};
use crate::model::Service;
use crate::narrate::{narrate, Line};
use crate::process::{read_from, wait_until, Daemon};
use crate::transcript::sanitize;
use anyhow::Result;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

impl Lab_<'_> {
    pub(super) fn service(&self, i: usize) -> &Service {
        &self.lab.services[i]
    }

    /// Starts a service and waits for its ready line; says what happened.
    pub(super) fn start(&mut self, i: usize) -> Result<StartFact, StepFailed> {
        let s = self.service(i).clone();
        let node = self.lab.nodes[s.node].name.clone();
        let log = self.work.log(&s.name);
        let mounts = self.opts.with.mounts(&s.argv);
        let d = Daemon::start(&s.name, &self.topo.nodes[s.node].ns, &self.pid, &s.argv, &self.node_dir(s.node), &log, &mounts)
            .map_err(|e| StepFailed(format!("{e:#}")))?;
        self.stopped[i] = false;
        let start = d.log_start;
        self.daemons[i] = Some(d);
        let mut fact = StartFact {
            node,
            service: s.name.clone(),
            cmdline: s.argv.join(" "),
            ready: s.ready.as_ref().map(|r| r.as_str().to_string()),
            timeout: s.timeout,
            outcome: StartOutcome::Started,
        };
        let Some(re) = s.ready.clone() else {
            return Ok(fact);
        };
        let deadline = Instant::now() + s.timeout;
        let d = self.daemons[i].as_mut().unwrap();
        let found = wait_until(deadline, || {
            if let Some(l) = read_from(&log, start).lines().find(|l| re.is_match(l)) {
                return Some(Ok(l.to_string()));
            }
            d.poll_exit().map(Err)
        });
        fact.outcome = match found {
            Some(Ok(line)) => StartOutcome::Ready(sanitize(&line, &self.lab.sanitizers)),
            Some(Err(st)) => StartOutcome::Exited(Exit::from_status(st)),
            None => StartOutcome::NotReady,
        };
        Ok(fact)
    }

    /// The failure message of a service that did not become ready (with its log's tail).
    pub(super) fn not_ready(&self, i: usize, f: &StartFact) -> String {
        let tail = self.daemons[i].as_ref().map(|d| d.tail(15)).unwrap_or_default();
        format!(
            "service `{}`: {}; last lines of {}:\n{tail}",
            f.service,
            crate::narrate::start_outcome(f),
            self.work.log(&f.service).display()
        )
    }

    pub(super) fn stop(&mut self, i: usize) -> Result<StopFact, StepFailed> {
        let name = self.service(i).name.clone();
        let node = self.lab.nodes[self.service(i).node].name.clone();
        let Some(d) = self.daemons[i].as_mut() else {
            return Err(StepFailed(format!("service `{name}` was never started")));
        };
        self.stopped[i] = true;
        let grace = Duration::from_secs(5);
        let (st, already, killed) = d.stop_observed(grace).map_err(|e| StepFailed(format!("stopping `{name}`: {e:#}")))?;
        Ok(StopFact { node, service: name, already_exited: already, killed_after: killed.then_some(grace), exit: Exit::from_status(st) })
    }

    /// The trace's own ping from `node` to `dest` (`trace::Opts::ping`).
    pub(super) fn trace(&self, node: usize, dest: std::net::IpAddr) -> Result<crate::trace::Trace> {
        let refs: Vec<&crate::ns::NetNs> = self.topo.nodes.iter().map(|h| &h.ns).collect();
        let (nodes, cwd) = (crate::trace::TraceNode::all(&refs), self.node_dir(node));
        crate::trace::Opts { nodes: &nodes, pid: &self.pid, cwd: &cwd, src: node, dest, method: None, kernel_drops: None }.ping()
    }

    pub(super) fn check_impairers(&self) -> Result<(), StepFailed> {
        for ((node, ifname), imp) in &self.impairers {
            imp.check().map_err(|e| StepFailed(format!("the impairment of {}:{ifname} failed: {e:#}", self.lab.nodes[*node].name)))?;
        }
        Ok(())
    }

    /// Ends the impairment of `node:ifname` (if one is on) and starts `spec` (if given).
    pub(super) fn impair(
        &mut self,
        node: usize,
        ifname: &str,
        spec: &Option<(crate::impair::Impairment, Option<crate::impair::Proto>, crate::impair::Family)>,
    ) -> Result<Fact, StepFailed> {
        let name = self.lab.nodes[node].name.clone();
        let key = (node, ifname.to_string());
        let mut ended = None;
        if let Some(i) = self.impairers.iter().position(|(k, _)| *k == key) {
            let (_, old) = self.impairers.remove(i);
            let spec = impair_spec(&old);
            let stats = old
                .stop(&self.topo.nodes[node].ns, &self.pid)
                .map_err(|e| StepFailed(format!("stopping the impairment of {name}:{ifname}: {e:#}")))?;
            ended = Some(ImpairEnded { node: name.clone(), ifname: ifname.to_string(), spec, counts: stats.into() });
        }
        let mut started = None;
        if let Some((imp, proto, family)) = spec {
            let used: Vec<u16> = self.impairers.iter().filter(|((n, _), _)| *n == node).map(|(_, i)| i.queue()).collect();
            let queue = (0..u16::MAX).find(|q| !used.contains(q)).unwrap_or(0);
            let imp = crate::impair::Impairer::start_family(
                &self.topo.nodes[node].ns,
                &self.pid,
                &self.node_dir(node),
                ifname,
                imp.clone(),
                *proto,
                *family,
                queue,
            )
            .map_err(|e| StepFailed(format!("impair {name}:{ifname}: {e:#}")))?;
            started = Some(impair_spec(&imp));
            self.impairers.push((key, imp));
        }
        Ok(Fact::Impair { node: name, ifname: ifname.to_string(), ended, started })
    }

    /// Impairments still on, with their counters so far (shown at the end of a scenario).
    pub(super) fn impairments_at_end(&self) -> Vec<ImpairEnded> {
        self.impairers
            .iter()
            .map(|((node, ifname), imp)| ImpairEnded {
                node: self.lab.nodes[*node].name.clone(),
                ifname: ifname.clone(),
                spec: impair_spec(imp),
                counts: imp.stats().into(),
            })
            .collect()
    }

    /// A daemon that died on its own fails the lab (unless it may exit).
    pub(super) fn check_daemons(&mut self) -> Result<(), StepFailed> {
        for i in 0..self.daemons.len() {
            if self.stopped[i] || self.service(i).may_exit {
                continue;
            }
            if let Some(d) = self.daemons[i].as_mut() {
                if let Some(st) = d.poll_exit() {
                    let tail = d.tail(15);
                    return Err(StepFailed(format!(
                        "service `{}` exited unexpectedly ({st}); last lines of {}:\n{tail}",
                        d.name,
                        d.log.display()
                    )));
                }
            }
        }
        Ok(())
    }

    pub(super) fn tell(&mut self, line: Line) {
        self.tell_of(line, None)
    }

    /// Tells a narrated line; a block under a command step (`output_of`) is that command's
    /// output (every sanitizer applies, see [`crate::transcript::sanitize_output`]). Block lines
    /// are shown as progress too (a live run shows what a `show` step shows).
    pub(super) fn tell_of(&mut self, line: Line, output_of: Option<&str>) {
        match line {
            Line::Say(s) => self.say(s),
            Line::Log { service, line } => self.say_log(&service, &line),
            Line::Block(b) => {
                let before = self.t.len();
                match output_of {
                    Some(cmd) => self.t.push_output(cmd, &b),
                    None => self.t.push_block(&b),
                }
                for l in self.t.lines_from(before) {
                    self.progress(&l);
                }
            }
        }
    }

    /// Runs a step: executes it (observed facts), writes its transcript lines from the facts,
    /// and judges it against its expectation.
    pub(super) fn step(&mut self, step: &Step) -> Result<(), StepFailed> {
        let sizes: Vec<u64> =
            self.lab.services.iter().map(|s| std::fs::metadata(self.work.log(&s.name)).map(|m| m.len()).unwrap_or(0)).collect();
        let prev_marks = std::mem::replace(&mut self.marks, sizes.clone());
        if step.action.changes() {
            self.change_marks = sizes;
        }
        let fact = self.observe(&step.action, &step.text, &prev_marks)?;
        let output_of = match &step.action {
            Action::Sh { cmd, .. } | Action::Show { cmd, .. } => Some(cmd.as_str()),
            _ => None,
        };
        for line in narrate(&step.action, &fact) {
            self.tell_of(line, output_of);
        }
        let Err(miss) = judge(&step.action, &fact) else {
            return Ok(());
        };
        // Where did it die? A failed reachability check says hop by hop.
        if let (Action::Ping { node, dest, expect: PingExpect::Reachable, .. }, Fact::Ping(p)) = (&step.action, &fact) {
            if p.received == 0 {
                if let Ok(lines) = self.trace(*node, *dest).map(|t| t.lines) {
                    self.t.push("    where the probe went (vpnlab trace):");
                    self.t.push_block(&lines.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"));
                }
            }
        }
        let mut msg = format!("`{}`: expected {}, observed {}", step.text, miss.expected, miss.observed);
        match &fact {
            Fact::Command { output, .. } if !output.trim().is_empty() => msg.push_str(&format!(":\n{}", output.trim_end())),
            Fact::Log(l) | Fact::NoLog(l) => {
                if let Some(i) = self.lab.services.iter().position(|s| s.name == l.service) {
                    let tail = self.daemons[i].as_ref().map(|d| d.tail(15)).unwrap_or_default();
                    msg.push_str(&format!("; last lines of {}:\n{tail}", self.work.log(&l.service).display()));
                }
            }
            Fact::Start(f) | Fact::Restart(_, f) => {
                if let Some(i) = self.lab.services.iter().position(|s| s.name == f.service) {
                    msg = format!("`{}`: {}", step.text, self.not_ready(i, f));
                }
            }
            _ => {}
        }
        Err(StepFailed::check(msg, miss.observed, miss.expected))
    }

    /// The lab's drop events, started on first use (`None` where the kernel gives none, or
    /// starting failed: then negative checks wait out their silence as before).
    fn start_drop_watch(&mut self) {
        if self.drops.is_none() {
            let started = crate::drops::available().ok().and_then(|()| {
                let spaces: Vec<&crate::ns::NetNs> = self.topo.nodes.iter().map(|h| &h.ns).collect();
                crate::drops::Watch::start(&spaces).ok()
            });
            self.drops = Some(started);
        }
    }

    /// Executes a step and returns what it observed. `Err` only when it could not be executed
    /// at all (an error of the run, not a verdict).
    pub(super) fn observe(&mut self, action: &Action, text: &str, prev_marks: &[u64]) -> Result<Fact, StepFailed> {
        let lab = self.lab;
        let node_name = |n: &usize| lab.nodes[*n].name.clone();
        let fail = StepFailed;
        Ok(match action {
            Action::Ping { node, src, dest, count, size, expect } => {
                let n = node_name(node);
                let dir = self.node_dir(*node);
                if matches!(expect, PingExpect::Unreachable) {
                    self.start_drop_watch();
                }
                let watch = if matches!(expect, PingExpect::Unreachable) { self.drops.as_mut().and_then(|w| w.as_mut()) } else { None };
                let mut f = crate::probe::ping(
                    &self.topo.nodes[*node].ns,
                    &self.pid,
                    &dir,
                    &n,
                    src.as_deref(),
                    *dest,
                    *count,
                    *size,
                    expect,
                    watch,
                )
                .map_err(|e| fail(format!("{n}: ping {dest}: {e:#}")))?;
                let spaces: Vec<&crate::ns::NetNs> = self.topo.nodes.iter().map(|h| &h.ns).collect();
                crate::drops::name_devs(&mut f.dropped, &spaces);
                f.dropped.iter_mut().for_each(|d| d.at = node_name(&d.node));
                Fact::Ping(f)
            }
            Action::RouteAdd { node, route } | Action::RouteDel { node, route } => {
                let add = matches!(action, Action::RouteAdd { .. });
                let result = self.topo.route(*node, route, add).map_err(|e| format!("{e:#}"));
                Fact::Netlink {
                    node: node_name(node),
                    command: format!("ip route {} {}", if add { "add" } else { "del" }, route.text),
                    result,
                }
            }
            Action::RuleAdd { node, rule } | Action::RuleDel { node, rule } => {
                let add = matches!(action, Action::RuleAdd { .. });
                let result = self.topo.rule(*node, rule, add).map_err(|e| format!("{e:#}"));
                Fact::Netlink {
                    node: node_name(node),
                    command: format!("ip rule {} {}", if add { "add" } else { "del" }, rule.text),
                    result,
                }
            }
            Action::Sh { node, cmd, .. } => {
                let out = self.exec_sh(*node, cmd).map_err(|e| fail(format!("{e:#}")))?;
                Fact::Command {
                    node: node_name(node),
                    cmd: cmd.clone(),
                    ok: out.success(),
                    status: out.describe_status(),
                    output: out.text,
                }
            }
            Action::Show { node, cmd, tty } => {
                let out = self.exec_sh_on(*node, cmd, *tty).map_err(|e| fail(format!("{e:#}")))?;
                Fact::Show { node: node_name(node), cmd: cmd.clone(), ok: out.success(), status: out.describe_status(), output: out.text }
            }
            Action::Chmod { node, mode, path } => {
                let result = std::fs::set_permissions(self.node_dir(*node).join(path), std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| e.to_string());
                Fact::Chmod { node: node_name(node), mode: *mode, path: path.clone(), result }
            }
            Action::Sysctl { node, key, value } => {
                let result = self.topo.nodes[*node].sysctl(key, value).map_err(|e| format!("{e:#}"));
                Fact::Sysctl { node: node_name(node), key: key.clone(), value: value.clone(), result }
            }
            Action::Tcp { node, dest, send, within, .. } => {
                let server = lab.owner_of(dest.ip());
                let outcome = crate::probe::tcp(&self.topo.nodes[*node].ns, server.map(|s| &self.topo.nodes[s].ns), *dest, *send, *within)
                    .map_err(|e| fail(format!("{}: tcp {dest}: {e:#}", node_name(node))))?;
                Fact::Tcp(TcpFact { node: node_name(node), dest: *dest, send: *send, within: *within, outcome })
            }
            Action::Impair { node, ifname, spec, .. } => self.impair(*node, ifname, spec)?,
            Action::Capture { node, ifname, count, filter, within, .. } => {
                let c = crate::capture::Capture::start(
                    &self.topo.nodes[*node].ns,
                    &self.pid,
                    &self.work.path().join("capture"),
                    &node_name(node),
                    ifname,
                    *count,
                    filter.as_deref(),
                    *within,
                    self.index,
                    text,
                    action,
                )
                .map_err(|e| fail(format!("{e:#}")))?;
                let fact = Fact::CaptureStarted { node: c.node.clone(), shown: c.shown.clone() };
                self.pending_captures.push(c);
                fact
            }
            Action::Counter { node, name, .. } => {
                let all = crate::counters::read(&self.topo.nodes[*node].ns).map_err(|e| fail(format!("counter {name}: {e:#}")))?;
                Fact::Counter { node: node_name(node), name: name.clone(), value: all.get(name).copied() }
            }
            Action::Trace { node, dest, .. } => {
                let t = self.trace(*node, *dest).map_err(|e| fail(format!("trace {dest}: {e:#}")))?;
                Fact::Trace { node: node_name(node), dest: *dest, lines: t.lines, end: t.end }
            }
            Action::Service { op, service } => match op {
                ServiceOp::Start => Fact::Start(self.start(*service)?),
                ServiceOp::Stop => Fact::Stop(self.stop(*service)?),
                ServiceOp::Restart => {
                    let stopped = self.stop(*service)?;
                    Fact::Restart(stopped, self.start(*service)?)
                }
            },
            Action::Log { service, pattern, within, scope } => {
                let from = self.log_from(*service, *scope, prev_marks);
                let log = self.work.log(&self.service(*service).name);
                let found = wait_until(Instant::now() + *within, || {
                    read_from(&log, from).lines().find(|l| pattern.re.is_match(l)).map(str::to_string)
                });
                Fact::Log(LogFact {
                    service: self.service(*service).name.clone(),
                    pattern: shown_pattern(pattern),
                    scope: *scope,
                    waited: Some(*within),
                    found,
                })
            }
            Action::NoLog { service, pattern, watch, scope } => {
                let from = self.log_from(*service, *scope, prev_marks);
                let log = self.work.log(&self.service(*service).name);
                let find = || read_from(&log, from).lines().find(|l| pattern.re.is_match(l)).map(str::to_string);
                let found = match watch {
                    Some(w) => wait_until(Instant::now() + *w, find),
                    None => find(),
                };
                Fact::NoLog(LogFact {
                    service: self.service(*service).name.clone(),
                    pattern: shown_pattern(pattern),
                    scope: *scope,
                    waited: *watch,
                    found,
                })
            }
        })
    }

    /// Collects the pending captures in the order they were started: each one's lines go into
    /// the transcript; the first whose expectation does not hold is the failure.
    pub(super) fn end_captures(&mut self) -> Result<(), StepFailed> {
        let mut first = Ok(());
        for mut c in std::mem::take(&mut self.pending_captures) {
            let fact = match c.collect() {
                Ok(f) => Fact::Capture(f),
                Err(e) => {
                    first = first.and(Err(StepFailed(format!("{e:#}"))));
                    continue;
                }
            };
            for line in narrate(&c.action, &fact) {
                self.tell(line);
            }
            if let Err(miss) = judge(&c.action, &fact) {
                let msg = format!("`{}`: expected {}, observed {}", c.text, miss.expected, miss.observed);
                let mut f = StepFailed::check(msg, miss.observed, miss.expected);
                f.at = Some((c.index, c.text.clone()));
                first = first.and(Err(f));
            }
        }
        first
    }

    /// Where in a service's log a `log`/`nolog` check starts reading.
    pub(super) fn log_from(&self, service: usize, scope: LogScope, prev_marks: &[u64]) -> u64 {
        let started = self.daemons[service].as_ref().map(|d| d.log_start).unwrap_or(0);
        match scope {
            LogScope::SinceStart => started,
            LogScope::SincePrevious => prev_or(prev_marks, service),
            LogScope::SinceChange => prev_or(&self.change_marks, service).max(started),
        }
    }
}

pub(super) fn prev_or(marks: &[u64], i: usize) -> u64 {
    marks.get(i).copied().unwrap_or(0)
}

/// A pattern as the lab wrote it: `/regex/` or `'literal'`.
pub(super) fn shown_pattern(p: &crate::model::step::LinePattern) -> String {
    if p.re.as_str() == regex::escape(&p.text) {
        format!("'{}'", p.text)
    } else {
        format!("/{}/", p.text)
    }
}

/// An impairment as written in a step: `reorder every 10 hold 3 udp`.
pub(super) fn impair_spec(imp: &crate::impair::Impairer) -> String {
    let family = if imp.family() == crate::impair::Family::Ipv6 { "ipv6 " } else { "" };
    format!("{family}{}{}", imp.impairment(), imp.proto().map(|p| format!(" {p}")).unwrap_or_default())
}
