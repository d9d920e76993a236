//! Runs one scenario of a lab: work dir -> PID namespace -> topology -> node files and PKI ->
//! firewall/setup -> services (ready = a log line) -> prelude and steps -> teardown, writing the
//! transcript as it goes. Teardown runs however the scenario ends (drop order: daemons are
//! stopped, the PID namespace is killed, then the namespaces' last fds close).

use crate::model::step::{Action, PingExpect, ServiceOp, Step};
use crate::model::{Lab, Service};
use crate::ns::PidNs;
use crate::process::{read_from, run_capture, wait_until, Daemon};
use crate::topology::Topology;
use crate::transcript::{sanitize, Transcript};
use crate::workdir::WorkDir;
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a run reports progress and what it keeps.
#[derive(Clone, Default)]
pub struct Options {
    /// Keep the work dir even when the scenario passes.
    pub keep: bool,
    /// Print each step as it runs (to stderr).
    pub progress: bool,
    /// Record every link of the lab to `pcap/<node>-<if>.pcap` (and LANs to `pcap/lan-<name>.pcap`)
    /// in the work dir with tcpdump; the files stay with the work dir of a failed run.
    pub pcap: bool,
}

/// Wall time of the phases of a run.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub build: Duration,
    pub daemons: Duration,
    pub steps: Duration,
    pub teardown: Duration,
}

/// The first step whose expectation did not hold (or the service that never became ready).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailedStep {
    /// 0-based index in prelude + scenario steps; `None` for a service started with the lab.
    pub index: Option<usize>,
    /// The step as written in the lab file (or `start SERVICE`).
    pub step: String,
    /// What was observed (the transcript's words).
    pub observed: String,
    /// What the lab expected.
    pub expected: String,
}

/// The result of running a scenario's steps (before the snapshot comparison).
pub struct Run {
    /// Sanitized transcript.
    pub transcript: String,
    /// Why the steps failed (a check not met, a daemon that died, a deadline).
    pub failure: Option<String>,
    /// The failing check, when `failure` is a check that did not hold.
    pub failed_step: Option<FailedStep>,
    /// `failure` is not a verdict on the daemons: the scenario could not be built or run
    /// (a ruleset refused, a lost namespace, a guest that died).
    pub error: bool,
    pub workdir: Option<PathBuf>,
    pub timings: Timings,
    work: Option<WorkDir>,
}

impl Run {
    /// A result produced elsewhere (a user-mode-linux guest), with the host's work dir.
    pub(crate) fn from_parts(transcript: String, failure: Option<String>, failed_step: Option<FailedStep>, error: bool, timings: Timings, work: WorkDir) -> Run {
        Run { transcript, failure, failed_step, error, workdir: None, timings, work: Some(work) }
    }

    /// Keeps the work dir (on failure, or with --keep) and returns its path.
    pub fn keep_workdir(&mut self) -> Option<PathBuf> {
        if let Some(w) = self.work.take() {
            self.workdir = Some(w.keep());
        }
        self.workdir.clone()
    }
}

/// A step that did not meet its expectation.
struct StepFailed {
    msg: String,
    /// The check that did not hold (observed, expected); `None` for an error of the run.
    check: Option<(String, String)>,
}

#[allow(non_snake_case)]
fn StepFailed(msg: String) -> StepFailed {
    StepFailed { msg, check: None }
}

impl StepFailed {
    fn check(msg: String, observed: impl Into<String>, expected: impl Into<String>) -> StepFailed {
        StepFailed { msg, check: Some((observed.into(), expected.into())) }
    }
}

struct Lab_<'a> {
    /// Active impairments by (node, interface), with their NFQUEUE numbers. Declared before
    /// `pid` so that they are stopped before the lab's processes are killed.
    impairers: Vec<((usize, String), crate::impair::Impairer)>,
    lab: &'a Lab,
    opts: &'a Options,
    work: std::sync::Arc<WorkDir>,
    pid: PidNs,
    topo: Topology,
    daemons: Vec<Option<Daemon>>,
    /// tcpdump captures (`--pcap`), stopped after the daemons at teardown.
    captures: Vec<Daemon>,
    /// Services stopped on purpose (their exit is not a failure).
    stopped: Vec<bool>,
    t: Transcript,
    label: String,
    /// Log sizes at the start of the previous step (for `log ... after`: lines logged since the
    /// previous step began, i.e. caused by it).
    marks: Vec<u64>,
}

/// Runs `scenario` of `lab`. Errors are problems of the environment (cannot create a
/// namespace...); a lab that runs and fails returns `Ok` with `failure` set.
pub fn run(lab: &Lab, scenario: &str, opts: &Options) -> Result<Run> {
    let mut live = Live::start(lab, scenario, opts)?;
    while live.step().is_some() {}
    Ok(live.finish())
}

/// A lab being run step by step (`vpnlab up` keeps one alive between commands; `run` drives
/// one to the end).
pub struct Live<'a> {
    l: Option<Lab_<'a>>,
    rt: tokio::runtime::Runtime,
    work: std::sync::Arc<WorkDir>,
    steps: Vec<&'a Step>,
    next: usize,
    failure: Option<String>,
    failed_step: Option<FailedStep>,
    error: bool,
    timings: Timings,
    deadline: Instant,
    steps_started: Option<Instant>,
    /// The transcript when the lab could not even be built.
    early: String,
}

impl<'a> Live<'a> {
    /// Builds the lab and starts its autostart services. A failure on the way is recorded (see
    /// [`Live::failure`]); only environment problems are errors.
    pub fn start(lab: &'a Lab, scenario: &str, opts: &'a Options) -> Result<Live<'a>> {
        let sc = lab.scenario(scenario).ok_or_else(|| anyhow!("{} has no scenario `{scenario}`", lab.id))?;
        let work = std::sync::Arc::new(WorkDir::new(&format!("{}-{scenario}", lab.id))?);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let label = format!("{}::{scenario}", lab.id);
        let t0 = Instant::now();
        let mut live = Live {
            l: None,
            rt,
            work: work.clone(),
            steps: lab.prelude.iter().chain(sc.steps.iter()).collect(),
            next: 0,
            failure: None,
            failed_step: None,
            error: false,
            timings: Timings::default(),
            deadline: t0 + lab.deadline,
            steps_started: None,
            early: String::new(),
        };
        let built = live.rt.block_on(async {
            let pid = PidNs::create()?;
            let topo = Topology::build(lab).await?;
            Ok::<_, anyhow::Error>((pid, topo))
        });
        let (pid, topo) = match built {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("building the lab failed: {e:#}");
                live.early = format!("# {label}\n!! {msg}\n");
                live.failure = Some(msg);
                live.error = true;
                return Ok(live);
            }
        };
        let mut l = Lab_ {
            impairers: Vec::new(),
            lab,
            opts,
            work,
            pid,
            topo,
            daemons: lab.services.iter().map(|_| None).collect(),
            captures: Vec::new(),
            stopped: vec![false; lab.services.len()],
            t: Transcript::new(&lab.sanitizers),
            label: label.clone(),
            marks: vec![0; lab.services.len()],
        };
        l.t.push(&format!("# {label}"));
        if !sc.about.is_empty() {
            l.t.push(&format!("# {}", sc.about));
        }
        let _g = live.rt.enter();
        let mut failed_service = None;
        let mut timings = Timings::default();
        let r = (|| -> Result<(), StepFailed> {
            l.prepare().map_err(|e| StepFailed(format!("preparing the nodes failed: {e:#}")))?;
            if opts.pcap {
                l.start_captures().map_err(|e| StepFailed(format!("starting the packet captures failed: {e:#}")))?;
            }
            timings.build = t0.elapsed();
            let td = Instant::now();
            for (i, s) in lab.services.iter().enumerate() {
                if s.autostart {
                    if let Err(e) = l.start(i) {
                        failed_service = Some(s.name.clone());
                        return Err(e);
                    }
                }
            }
            timings.daemons = td.elapsed();
            Ok(())
        })();
        drop(_g);
        if let Err(StepFailed { msg, check }) = r {
            l.t.push(&format!("!! {msg}"));
            live.failure = Some(msg);
            match (check, failed_service) {
                (Some((observed, expected)), Some(name)) => live.failed_step = Some(FailedStep { index: None, step: format!("start {name}"), observed, expected }),
                _ => live.error = true,
            }
        }
        live.timings = timings;
        live.l = Some(l);
        Ok(live)
    }

    /// Why the lab failed so far, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Steps not run yet.
    pub fn remaining(&self) -> &[&'a Step] {
        &self.steps[self.next.min(self.steps.len())..]
    }

    /// Runs the next step and returns the transcript lines it added; `None` when there is no
    /// step left or the lab has failed.
    pub fn step(&mut self) -> Option<Vec<String>> {
        if self.failure.is_some() || self.next >= self.steps.len() {
            return None;
        }
        let l = self.l.as_mut()?;
        let started = *self.steps_started.get_or_insert_with(Instant::now);
        let step = self.steps[self.next];
        self.next += 1;
        let before = l.t.len();
        let _g = self.rt.enter();
        let r = if Instant::now() > self.deadline {
            Err(StepFailed(format!("the scenario passed its deadline of {:?} before `{}`", l.lab.deadline, step.text)))
        } else {
            l.step(step, &self.rt).and_then(|()| l.check_daemons()).and_then(|()| l.check_impairers())
        };
        if let Err(StepFailed { msg, check }) = r {
            l.t.push(&format!("!! {msg}"));
            self.failure = Some(msg);
            match check {
                Some((observed, expected)) => self.failed_step = Some(FailedStep { index: Some(self.next - 1), step: step.text.clone(), observed, expected }),
                None => self.error = true,
            }
        }
        self.timings.steps = started.elapsed();
        Some(l.t.lines_from(before))
    }

    /// Network namespaces of the nodes, in lab order (for naming them under /run/netns).
    pub fn node_netns(&self) -> Vec<&crate::ns::NetNs> {
        self.l.as_ref().map(|l| l.topo.nodes.iter().map(|h| &h.ns).collect()).unwrap_or_default()
    }

    /// PID of the lab's PID-namespace init.
    pub fn holder_pid(&self) -> Option<u32> {
        self.l.as_ref().map(|l| l.pid.holder_pid())
    }

    pub fn work_path(&self) -> &Path {
        self.work.path()
    }

    /// The transcript so far.
    pub fn transcript(&self) -> String {
        match &self.l {
            Some(l) => l.t.render(),
            None => self.early.clone(),
        }
    }

    /// Tears the lab down and returns the result.
    pub fn finish(mut self) -> Run {
        let transcript = self.transcript();
        let tt = Instant::now();
        if let Some(mut l) = self.l.take() {
            let _g = self.rt.enter();
            l.teardown();
            drop(l);
        }
        self.timings.teardown = tt.elapsed();
        let work = std::sync::Arc::try_unwrap(self.work).ok();
        Run { transcript, failure: self.failure, failed_step: self.failed_step, error: self.error, workdir: None, timings: self.timings, work }
    }
}

impl Lab_<'_> {
    fn progress(&self, line: &str) {
        if self.opts.progress {
            eprintln!("  [{}] {line}", self.label);
        }
    }

    fn say(&mut self, line: String) {
        let l = self.t.push(&line).to_string();
        self.progress(&l);
    }

    /// A daemon's log line in the transcript: `server.log: <line>`.
    fn say_log(&mut self, service: &str, line: &str) {
        let l = self.t.push_log(&format!("{service}.log: "), line).to_string();
        self.progress(&l);
    }

    fn node_dir(&self, node: usize) -> PathBuf {
        self.work.node_dir(&self.lab.nodes[node].name)
    }

    /// Node directories with their files and PKI, then nft rulesets and setup commands.
    fn prepare(&mut self) -> Result<()> {
        for (i, node) in self.lab.nodes.iter().enumerate() {
            let dir = self.node_dir(i);
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            for f in &node.files {
                copy_tree(&self.lab.dir.join(&f.rel), &dir.join(&f.rel)).with_context(|| format!("copy {} to node `{}`", f.rel.display(), node.name))?;
            }
            for (p, mode) in &node.modes {
                std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(*mode))?;
            }
        }
        if let Some(spec) = &self.lab.pki {
            let pki = self.work.path().join("pki");
            std::fs::create_dir_all(&pki)?;
            crate::pki::generate(spec, &pki)?;
            // Certificates go to the nodes that run daemons.
            let mut daemon_nodes: Vec<usize> = self.lab.services.iter().map(|s| s.node).collect();
            daemon_nodes.dedup();
            for i in daemon_nodes {
                for e in std::fs::read_dir(&pki)? {
                    let e = e?;
                    std::fs::copy(e.path(), self.node_dir(i).join(e.file_name()))?;
                }
            }
        }
        for (i, node) in self.lab.nodes.iter().enumerate() {
            if let Some(rules) = &node.nft {
                let f = self.node_dir(i).join(".vpnlab-ruleset.nft");
                std::fs::write(&f, rules)?;
                self.exec_ok(i, &["nft".into(), "-f".into(), f.to_string_lossy().into_owned()])?;
            }
            for cmd in &node.setup {
                self.exec_ok(i, &["/bin/sh".into(), "-c".into(), cmd.clone()]).with_context(|| format!("setup of node `{}`: {cmd}", node.name))?;
            }
        }
        Ok(())
    }

    /// One tcpdump per link (on its `a` end) and per LAN (on its bridge), ready when it says
    /// it is listening.
    fn start_captures(&mut self) -> Result<()> {
        let dir = self.work.path().join("pcap");
        std::fs::create_dir_all(&dir)?;
        let mut targets: Vec<(&crate::ns::NetNs, String, String)> = Vec::new();
        for l in &self.lab.links {
            let n = &self.lab.nodes[l.a.node].name;
            targets.push((&self.topo.nodes[l.a.node].ns, l.a.ifname.clone(), format!("{n}-{}", l.a.ifname)));
        }
        for (i, lan) in self.lab.lans.iter().enumerate() {
            targets.push((&self.topo.lans[i].ns, "br0".into(), format!("lan-{}", lan.name)));
        }
        for (ns, ifname, file) in targets {
            let pcap = dir.join(format!("{file}.pcap"));
            let argv: Vec<String> = ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0", "-i", &ifname, "-w", &pcap.to_string_lossy()].iter().map(|s| s.to_string()).collect();
            let log = dir.join(format!("{file}.log"));
            let mut d = Daemon::start(&format!("tcpdump-{file}"), ns, &self.pid, &argv, &dir, &log, &[])?;
            let ready = wait_until(Instant::now() + Duration::from_secs(5), || {
                if read_from(&log, 0).contains("listening on") {
                    return Some(Ok(()));
                }
                d.poll_exit().map(|st| Err(anyhow!("tcpdump on {file} exited ({st}): {}", read_from(&log, 0).trim())))
            });
            match ready {
                Some(r) => r?,
                None => bail!("tcpdump on {file} did not start listening within 5s"),
            }
            self.captures.push(d);
        }
        Ok(())
    }

    fn exec(&self, node: usize, argv: &[String]) -> Result<crate::process::Output> {
        run_capture(&self.topo.nodes[node].ns, &self.pid, argv, &self.node_dir(node), self.lab.step_timeout)
    }

    fn exec_ok(&self, node: usize, argv: &[String]) -> Result<()> {
        let out = self.exec(node, argv)?;
        if !out.success() {
            let hint = if out.timed_out { format!(" (cut at the step timeout of {:?})", self.lab.step_timeout) } else { String::new() };
            bail!("`{}` in node `{}`: {}{hint}\n{}", argv.join(" "), self.lab.nodes[node].name, out.describe_status(), out.text.trim_end());
        }
        Ok(())
    }

    fn service(&self, i: usize) -> &Service {
        &self.lab.services[i]
    }

    /// Starts a service and waits for its ready line.
    fn start(&mut self, i: usize) -> Result<(), StepFailed> {
        let s = self.service(i).clone();
        let node = &self.lab.nodes[s.node].name;
        let log = self.work.log(&s.name);
        let d = Daemon::start(&s.name, &self.topo.nodes[s.node].ns, &self.pid, &s.argv, &self.node_dir(s.node), &log, &[])
            .map_err(|e| StepFailed(format!("{e:#}")))?;
        self.stopped[i] = false;
        let start = d.log_start;
        self.daemons[i] = Some(d);
        let cmdline = format!("{node}# {}", s.argv.join(" "));
        let Some(re) = s.ready.clone() else {
            self.say(cmdline);
            return Ok(());
        };
        let deadline = Instant::now() + s.timeout;
        let d = self.daemons[i].as_mut().unwrap();
        let found = wait_until(deadline, || {
            if let Some(l) = read_from(&log, start).lines().find(|l| re.is_match(l)) {
                return Some(Ok(l.to_string()));
            }
            d.poll_exit().map(Err)
        });
        match found {
            Some(Ok(line)) => {
                self.say(format!("{cmdline}  -> {}", sanitize(&line, &self.lab.sanitizers)));
                Ok(())
            }
            Some(Err(st)) => {
                let tail = d.tail(15);
                self.say(format!("{cmdline}  -> exited ({st}) before /{re}/"));
                Err(StepFailed::check(format!("service `{}` exited ({st}) before its ready line /{re}/; last lines of {}:\n{tail}", s.name, log.display()), format!("exited ({st})"), format!("ready: /{re}/")))
            }
            None => {
                let tail = d.tail(15);
                self.say(format!("{cmdline}  -> not ready: no /{re}/ within {:?}", s.timeout));
                Err(StepFailed::check(format!("service `{}` did not log /{re}/ within {:?}; last lines of {}:\n{tail}", s.name, s.timeout, log.display()), format!("no /{re}/ within {:?}", s.timeout), format!("ready: /{re}/")))
            }
        }
    }

    fn stop(&mut self, i: usize) -> Result<(), StepFailed> {
        let name = self.service(i).name.clone();
        let node = self.lab.nodes[self.service(i).node].name.clone();
        let prog = crate::model::daemon_program(&self.service(i).argv);
        let Some(d) = self.daemons[i].as_mut() else {
            return Err(StepFailed(format!("service `{name}` is not running")));
        };
        self.stopped[i] = true;
        let st = d.stop(Duration::from_secs(5)).map_err(|e| StepFailed(format!("stopping `{name}`: {e:#}")))?;
        let how = match st.code() {
            Some(c) => format!("exit {c}"),
            None => "killed".into(),
        };
        self.say(format!("{node}# kill -TERM $(pidof {prog})  -> exited ({how})"));
        Ok(())
    }

    fn trace_lines(&self, node: usize, dest: std::net::IpAddr) -> Result<Vec<String>> {
        let refs: Vec<&crate::ns::NetNs> = self.topo.nodes.iter().map(|h| &h.ns).collect();
        crate::trace::run_ping_trace_refs(&refs, &self.pid, &self.node_dir(node), node, dest)
    }

    fn check_impairers(&self) -> Result<(), StepFailed> {
        for ((node, ifname), imp) in &self.impairers {
            imp.check().map_err(|e| StepFailed(format!("the impairment of {}:{ifname} failed: {e:#}", self.lab.nodes[*node].name)))?;
        }
        Ok(())
    }

    fn impair(&mut self, node: usize, ifname: &str, spec: &Option<(crate::impair::Impairment, Option<crate::impair::Proto>)>) -> Result<(), StepFailed> {
        let name = self.lab.nodes[node].name.clone();
        let key = (node, ifname.to_string());
        if let Some(i) = self.impairers.iter().position(|(k, _)| *k == key) {
            let (_, old) = self.impairers.remove(i);
            old.stop(&self.topo.nodes[node].ns, &self.pid).map_err(|e| StepFailed(format!("stopping the impairment of {name}:{ifname}: {e:#}")))?;
        }
        match spec {
            None => self.say(format!("{name}# impair {ifname} off")),
            Some((imp, proto)) => {
                let proto_txt = proto.as_ref().map(|p| format!(" {p}")).unwrap_or_default();
                self.say(format!("{name}# impair {ifname} {imp}{proto_txt}   (NFQUEUE, harness-native)"));
                let used: Vec<u16> = self.impairers.iter().filter(|((n, _), _)| *n == node).map(|(_, i)| i.queue()).collect();
                let queue = (0..u16::MAX).find(|q| !used.contains(q)).unwrap_or(0);
                let imp = crate::impair::Impairer::start(&self.topo.nodes[node].ns, &self.pid, &self.node_dir(node), ifname, imp.clone(), *proto, queue)
                    .map_err(|e| StepFailed(format!("impair {name}:{ifname}: {e:#}")))?;
                self.impairers.push((key, imp));
            }
        }
        Ok(())
    }

    /// A daemon that died on its own fails the lab (unless it may exit).
    fn check_daemons(&mut self) -> Result<(), StepFailed> {
        for i in 0..self.daemons.len() {
            if self.stopped[i] || self.service(i).may_exit {
                continue;
            }
            if let Some(d) = self.daemons[i].as_mut() {
                if let Some(st) = d.poll_exit() {
                    let tail = d.tail(15);
                    return Err(StepFailed(format!("service `{}` exited unexpectedly ({st}); last lines of {}:\n{tail}", d.name, d.log.display())));
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, step: &Step, rt: &tokio::runtime::Runtime) -> Result<(), StepFailed> {
        let lab = self.lab;
        let now: Vec<u64> = lab.services.iter().map(|s| std::fs::metadata(self.work.log(&s.name)).map(|m| m.len()).unwrap_or(0)).collect();
        let prev_marks = std::mem::replace(&mut self.marks, now);
        let fail = |m: String| StepFailed(m);
        match &step.action {
            Action::Ping { node, src, dest, count, size, expect } => {
                let n = &lab.nodes[*node].name;
                let cmd = format!(
                    "{n}$ ping -c{count}{}{} {dest}",
                    size.map(|s| format!(" -s {s}")).unwrap_or_default(),
                    src.as_ref().map(|s| format!(" -I {s}")).unwrap_or_default()
                );
                let r = crate::probe::ping(&self.topo.nodes[*node].ns, &self.pid, &self.node_dir(*node), src.as_deref(), *dest, *count, *size, expect).map_err(|e| fail(format!("{cmd}: {e:#}")))?;
                let notes = if r.notes.is_empty() { String::new() } else { format!("; {}", r.notes.join("; ")) };
                let (ok, outcome) = match expect {
                    PingExpect::Reachable | PingExpect::Unreachable => {
                        let reachable = r.received > 0;
                        let outcome = if reachable {
                            format!("reachable (ttl={}{notes})", r.ttl.map(|t| t.to_string()).unwrap_or_else(|| "?".into()))
                        } else {
                            format!("unreachable (100% loss{notes})")
                        };
                        (reachable == (*expect == PingExpect::Reachable), outcome)
                    }
                    PingExpect::Loss(a, b) => {
                        let loss = r.loss_pct();
                        self.progress(&format!("{cmd}: {loss}% loss ({} of {} received)", r.received, r.transmitted));
                        let ok = loss >= *a && loss <= *b;
                        let want = if a == b { format!("{a}%") } else { format!("{a}%..{b}%") };
                        (ok, if ok { format!("loss within {want}") } else { format!("loss {loss}% (expected {want})") })
                    }
                };
                self.say(format!("{cmd}  -> {outcome}"));
                if !ok {
                    // Where did it die? A failed reachability check says hop by hop.
                    if *expect == PingExpect::Reachable && r.received == 0 {
                        if let Ok(lines) = self.trace_lines(*node, *dest) {
                            self.t.push("    where the probe went (vpnlab trace):");
                            self.t.push_block(&lines.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"));
                        }
                    }
                    return Err(fail(format!("`{}` expected {}, got {outcome}", step.text, describe_ping(expect))));
                }
            }
            Action::RouteAdd { node, route } | Action::RouteDel { node, route } => {
                let add = matches!(step.action, Action::RouteAdd { .. });
                self.say(format!("{}# ip route {} {}", lab.nodes[*node].name, if add { "add" } else { "del" }, route.text));
                rt.block_on(self.topo.nodes[*node].route(route, add)).map_err(|e| fail(format!("{e:#}")))?;
            }
            Action::RuleAdd { node, rule } | Action::RuleDel { node, rule } => {
                let add = matches!(step.action, Action::RuleAdd { .. });
                self.say(format!("{}# ip rule {} {}", lab.nodes[*node].name, if add { "add" } else { "del" }, rule.text));
                rt.block_on(self.topo.nodes[*node].rule(rule, add)).map_err(|e| fail(format!("{e:#}")))?;
            }
            Action::Sh { node, cmd, expect_fail } => {
                let out = self.exec(*node, &["/bin/sh".into(), "-c".into(), cmd.clone()]).map_err(|e| fail(format!("{e:#}")))?;
                let line = format!("{}# {cmd}", lab.nodes[*node].name);
                if out.success() == *expect_fail {
                    self.say(format!("{line}  -> {}", out.describe_status()));
                    return Err(fail(format!("`{cmd}` {} ({}):\n{}", if *expect_fail { "was expected to fail but succeeded" } else { "failed" }, out.describe_status(), out.text.trim_end())));
                }
                self.say(if *expect_fail { format!("{line}  -> fails ({})", out.describe_status()) } else { line });
            }
            Action::Show { node, cmd } => {
                let out = self.exec(*node, &["/bin/sh".into(), "-c".into(), cmd.clone()]).map_err(|e| fail(format!("{e:#}")))?;
                self.say(format!("{}$ {cmd}", lab.nodes[*node].name));
                self.t.push_block(&out.text);
                if !out.success() {
                    self.t.push(&format!("    ({})", out.describe_status()));
                }
            }
            Action::Chmod { node, mode, path } => {
                self.say(format!("{}# chmod {mode:o} {path}", lab.nodes[*node].name));
                std::fs::set_permissions(self.node_dir(*node).join(path), std::fs::Permissions::from_mode(*mode)).map_err(|e| fail(format!("chmod {path}: {e}")))?;
            }
            Action::Sysctl { node, key, value } => {
                self.say(format!("{}# sysctl -w {key}={value}", lab.nodes[*node].name));
                self.topo.nodes[*node].sysctl(key, value).map_err(|e| fail(format!("{e:#}")))?;
            }
            Action::Tcp { node, dest, send, within, expect } => {
                let server = lab.owner_of(dest.ip());
                let cmd = format!("{}$ tcp {dest}{}", lab.nodes[*node].name, send.map(|n| format!(" send {}", human(n))).unwrap_or_default());
                let out = crate::probe::tcp(&self.topo.nodes[*node].ns, server.map(|s| &self.topo.nodes[s].ns), *dest, *send, *within).map_err(|e| fail(format!("{cmd}: {e:#}")))?;
                self.say(format!("{cmd}  -> {}", out.describe()));
                if !out.meets(expect) {
                    return Err(fail(format!("`{}` expected {expect:?}, got {}", step.text, out.describe())));
                }
            }
            Action::Impair { node, ifname, spec } => self.impair(*node, ifname, spec)?,
            Action::Trace { node, dest } => {
                self.say(format!("{}$ vpnlab trace {dest}", lab.nodes[*node].name));
                let lines = self.trace_lines(*node, *dest).map_err(|e| fail(format!("trace {dest}: {e:#}")))?;
                self.t.push_block(&lines.join("\n"));
            }
            Action::Service { op, service } => match op {
                ServiceOp::Start => self.start(*service)?,
                ServiceOp::Stop => self.stop(*service)?,
                ServiceOp::Restart => {
                    self.stop(*service)?;
                    self.start(*service)?;
                }
            },
            Action::Log { service, pattern, within, after } => {
                let name = &self.service(*service).name;
                let log = self.work.log(name);
                let from = if *after { prev_or(&prev_marks, *service) } else { self.daemons[*service].as_ref().map(|d| d.log_start).unwrap_or(0) };
                let found = wait_until(Instant::now() + *within, || read_from(&log, from).lines().find(|l| pattern.re.is_match(l)).map(str::to_string));
                match found {
                    Some(line) => self.say_log(&name.clone(), &line),
                    None => {
                        let shown = if pattern.re.as_str() == regex::escape(&pattern.text) { format!("'{}'", pattern.text) } else { format!("/{}/", pattern.text) };
                        self.say(format!("{name}.log: no {shown} within {within:?}"));
                        let tail = self.daemons[*service].as_ref().map(|d| d.tail(15)).unwrap_or_default();
                        return Err(fail(format!("`{}`: no matching line in {} within {within:?}; last lines:\n{tail}", step.text, log.display())));
                    }
                }
            }
            Action::NoLog { service, pattern, watch, after } => {
                let name = &self.service(*service).name;
                let log = self.work.log(name);
                let from = if *after { prev_or(&prev_marks, *service) } else { self.daemons[*service].as_ref().map(|d| d.log_start).unwrap_or(0) };
                let find = || read_from(&log, from).lines().find(|l| pattern.re.is_match(l)).map(str::to_string);
                let found = match watch {
                    Some(w) => wait_until(Instant::now() + *w, find),
                    None => find(),
                };
                let shown = if pattern.re.as_str() == regex::escape(&pattern.text) { format!("'{}'", pattern.text) } else { format!("/{}/", pattern.text) };
                match found {
                    None => self.say(format!("{name}.log: no {shown}{}", watch.map(|w| format!(" for {w:?}")).unwrap_or_default())),
                    Some(line) => {
                        self.say_log(&name.clone(), &line);
                        return Err(fail(format!("`{}`: the log has a line it must not have: {line}", step.text)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops daemons in reverse order, then kills everything left in the PID namespace.
    fn teardown(&mut self) {
        for ((node, _), imp) in std::mem::take(&mut self.impairers) {
            let _ = imp.stop(&self.topo.nodes[node].ns, &self.pid);
        }
        for i in (0..self.daemons.len()).rev() {
            if let Some(d) = self.daemons[i].as_mut() {
                let _ = d.stop(Duration::from_secs(2));
            }
        }
        // SIGTERM makes tcpdump flush and close its file.
        for c in self.captures.iter_mut() {
            let _ = c.stop(Duration::from_secs(2));
        }
        self.pid.kill_all();
    }
}

fn prev_or(marks: &[u64], i: usize) -> u64 {
    marks.get(i).copied().unwrap_or(0)
}

fn describe_ping(e: &PingExpect) -> String {
    match e {
        PingExpect::Reachable => "reachable".into(),
        PingExpect::Unreachable => "unreachable".into(),
        PingExpect::Loss(a, b) => format!("loss {a}%..{b}%"),
    }
}

fn human(n: u64) -> String {
    if n % 1_000_000 == 0 {
        format!("{}MB", n / 1_000_000)
    } else if n % 1000 == 0 {
        format!("{}KB", n / 1000)
    } else {
        format!("{n}B")
    }
}

/// Copies a file or a directory tree, keeping modes.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(src)?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        std::fs::set_permissions(dst, meta.permissions())?;
    } else {
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(src, dst)?;
    }
    Ok(())
}
