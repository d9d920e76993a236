//! Runs one scenario of a lab: work dir -> PID namespace -> topology -> node files and PKI ->
//! firewall/setup -> services (ready = a log line) -> prelude and steps -> teardown, writing the
//! transcript as it goes. Teardown runs however the scenario ends (drop order: daemons are
//! stopped, the PID namespace is killed, then the namespaces' last fds close).

use crate::facts::{Exit, Fact, ImpairEnded, LogFact, LogScope, StartFact, StartOutcome, StopFact, TcpFact};
use crate::judge::judge;
use crate::model::step::{Action, PingExpect, ServiceOp, Step};
use crate::narrate::{narrate, Line};
use crate::model::{Lab, Service};
use crate::ns::PidNs;
use crate::process::{read_from, wait_until, Daemon};
use crate::topology::Topology;
use crate::transcript::{sanitize, Transcript};
use crate::workdir::WorkDir;
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a run's progress lines go instead of stderr: called with each whole line
/// (`  [lab::scenario] client$ ping ...`), from the thread running the scenario.
pub type ProgressSink = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// How a run reports progress and what it keeps.
#[derive(Clone, Default)]
pub struct Options {
    /// Keep the work dir even when the scenario passes.
    pub keep: bool,
    /// Print each step as it runs (to stderr, or to `sink` when there is one).
    pub progress: bool,
    /// Receives the progress lines instead of stderr (`vpnlab run -j N` keeps each scenario's
    /// lines together; the progress bar shows the current step). When set, lines are produced
    /// even without `progress`: the sink decides what to show.
    pub sink: Option<ProgressSink>,
    /// Record every link of the lab to `pcap/<node>-<if>.pcap` (and LANs to `pcap/lan-<name>.pcap`)
    /// in the work dir with tcpdump; the files stay with the work dir of a failed run.
    pub pcap: bool,
    /// Builds of the daemons chosen with `--with` (bind mounts in each service's private mount
    /// namespace); empty: the host's.
    pub with: crate::with::With,
}

impl Options {
    /// Whether progress lines are wanted at all (printed, or for the sink).
    pub fn wants_progress(&self) -> bool {
        self.progress || self.sink.is_some()
    }

    /// A progress line: to the sink when there is one, else to stderr with `progress`.
    pub fn emit(&self, line: &str) {
        match &self.sink {
            Some(sink) => sink(line),
            None if self.progress => eprintln!("{line}"),
            None => {}
        }
    }
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
    /// Log sizes when the last step that changed something began (a `log` check's default
    /// start: lines caused by the change).
    change_marks: Vec<u64>,
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
            change_marks: vec![0; lab.services.len()],
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
                    let f = l.start(i)?;
                    let fact = Fact::Start(f.clone());
                    let action = Action::Service { op: ServiceOp::Start, service: i };
                    for line in narrate(&action, &fact) {
                        l.tell(line);
                    }
                    if let Err(miss) = judge(&action, &fact) {
                        failed_service = Some(s.name.clone());
                        return Err(StepFailed::check(l.not_ready(i, &f), miss.observed, miss.expected));
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
        // `[openvpn >= 2.7] ...`: a step for other versions than the one running is skipped
        // (it leaves no line in the transcript).
        if let Some(c) = &step.when {
            let running = crate::with::Component::of_daemon(c.daemon).and_then(|x| l.opts.with.get(x)).map(|x| x.version.clone()).unwrap_or_else(|| crate::versions::version(c.daemon));
            if !c.holds(&running) {
                return Some(Vec::new());
            }
        }
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
        // Impairments still on: their counters belong to the transcript (a phase that was
        // impaired shows whether the impairment acted).
        if let Some(l) = self.l.as_mut() {
            for e in l.impairments_at_end() {
                l.tell(crate::narrate::impair_at_end(&e));
            }
        }
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
        self.opts.emit(&format!("  [{}] {line}", self.label));
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
        // A command that uses a daemon's own tools (`ipsec auto ...`, `ipsec initnss`) runs them
        // from the same build as the daemon (`--with`): whack must speak pluto's version.
        let mounts = self.opts.with.mounts_for_command(argv);
        crate::process::run_capture_mounts(&self.topo.nodes[node].ns, &self.pid, argv, &self.node_dir(node), self.lab.step_timeout, &mounts)
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

    /// Starts a service and waits for its ready line; says what happened.
    fn start(&mut self, i: usize) -> Result<StartFact, StepFailed> {
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
    fn not_ready(&self, i: usize, f: &StartFact) -> String {
        let tail = self.daemons[i].as_ref().map(|d| d.tail(15)).unwrap_or_default();
        format!("service `{}`: {}; last lines of {}:\n{tail}", f.service, crate::narrate::start_outcome(f), self.work.log(&f.service).display())
    }

    fn stop(&mut self, i: usize) -> Result<StopFact, StepFailed> {
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

    /// Ends the impairment of `node:ifname` (if one is on) and starts `spec` (if given).
    fn impair(&mut self, node: usize, ifname: &str, spec: &Option<(crate::impair::Impairment, Option<crate::impair::Proto>)>) -> Result<Fact, StepFailed> {
        let name = self.lab.nodes[node].name.clone();
        let key = (node, ifname.to_string());
        let mut ended = None;
        if let Some(i) = self.impairers.iter().position(|(k, _)| *k == key) {
            let (_, old) = self.impairers.remove(i);
            let spec = impair_spec(&old);
            let stats = old.stop(&self.topo.nodes[node].ns, &self.pid).map_err(|e| StepFailed(format!("stopping the impairment of {name}:{ifname}: {e:#}")))?;
            ended = Some(ImpairEnded { node: name.clone(), ifname: ifname.to_string(), spec, counts: stats.into() });
        }
        let mut started = None;
        if let Some((imp, proto)) = spec {
            let used: Vec<u16> = self.impairers.iter().filter(|((n, _), _)| *n == node).map(|(_, i)| i.queue()).collect();
            let queue = (0..u16::MAX).find(|q| !used.contains(q)).unwrap_or(0);
            let imp = crate::impair::Impairer::start(&self.topo.nodes[node].ns, &self.pid, &self.node_dir(node), ifname, imp.clone(), *proto, queue)
                .map_err(|e| StepFailed(format!("impair {name}:{ifname}: {e:#}")))?;
            started = Some(impair_spec(&imp));
            self.impairers.push((key, imp));
        }
        Ok(Fact::Impair { node: name, ifname: ifname.to_string(), ended, started })
    }

    /// Impairments still on, with their counters so far (shown at the end of a scenario).
    fn impairments_at_end(&self) -> Vec<ImpairEnded> {
        self.impairers
            .iter()
            .map(|((node, ifname), imp)| ImpairEnded { node: self.lab.nodes[*node].name.clone(), ifname: ifname.clone(), spec: impair_spec(imp), counts: imp.stats().into() })
            .collect()
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

    fn tell(&mut self, line: Line) {
        match line {
            Line::Say(s) => self.say(s),
            Line::Log { service, line } => self.say_log(&service, &line),
            Line::Block(b) => self.t.push_block(&b),
        }
    }

    /// Runs a step: executes it (observed facts), writes its transcript lines from the facts,
    /// and judges it against its expectation.
    fn step(&mut self, step: &Step, rt: &tokio::runtime::Runtime) -> Result<(), StepFailed> {
        let sizes: Vec<u64> = self.lab.services.iter().map(|s| std::fs::metadata(self.work.log(&s.name)).map(|m| m.len()).unwrap_or(0)).collect();
        let prev_marks = std::mem::replace(&mut self.marks, sizes.clone());
        if step.action.changes() {
            self.change_marks = sizes;
        }
        let fact = self.observe(&step.action, rt, &prev_marks)?;
        for line in narrate(&step.action, &fact) {
            self.tell(line);
        }
        let Err(miss) = judge(&step.action, &fact) else {
            return Ok(());
        };
        // Where did it die? A failed reachability check says hop by hop.
        if let (Action::Ping { node, dest, expect: PingExpect::Reachable, .. }, Fact::Ping(p)) = (&step.action, &fact) {
            if p.received == 0 {
                if let Ok(lines) = self.trace_lines(*node, *dest) {
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

    /// Executes a step and returns what it observed. `Err` only when it could not be executed
    /// at all (an error of the run, not a verdict).
    fn observe(&mut self, action: &Action, rt: &tokio::runtime::Runtime, prev_marks: &[u64]) -> Result<Fact, StepFailed> {
        let lab = self.lab;
        let node_name = |n: &usize| lab.nodes[*n].name.clone();
        let fail = StepFailed;
        Ok(match action {
            Action::Ping { node, src, dest, count, size, expect } => {
                let n = node_name(node);
                let f = crate::probe::ping(&self.topo.nodes[*node].ns, &self.pid, &self.node_dir(*node), &n, src.as_deref(), *dest, *count, *size, expect).map_err(|e| fail(format!("{n}: ping {dest}: {e:#}")))?;
                Fact::Ping(f)
            }
            Action::RouteAdd { node, route } | Action::RouteDel { node, route } => {
                let add = matches!(action, Action::RouteAdd { .. });
                let result = rt.block_on(self.topo.nodes[*node].route(route, add)).map_err(|e| format!("{e:#}"));
                Fact::Netlink { node: node_name(node), command: format!("ip route {} {}", if add { "add" } else { "del" }, route.text), result }
            }
            Action::RuleAdd { node, rule } | Action::RuleDel { node, rule } => {
                let add = matches!(action, Action::RuleAdd { .. });
                let result = rt.block_on(self.topo.nodes[*node].rule(rule, add)).map_err(|e| format!("{e:#}"));
                Fact::Netlink { node: node_name(node), command: format!("ip rule {} {}", if add { "add" } else { "del" }, rule.text), result }
            }
            Action::Sh { node, cmd, .. } => {
                let out = self.exec(*node, &["/bin/sh".into(), "-c".into(), cmd.clone()]).map_err(|e| fail(format!("{e:#}")))?;
                Fact::Command { node: node_name(node), cmd: cmd.clone(), ok: out.success(), status: out.describe_status(), output: out.text }
            }
            Action::Show { node, cmd } => {
                let out = self.exec(*node, &["/bin/sh".into(), "-c".into(), cmd.clone()]).map_err(|e| fail(format!("{e:#}")))?;
                Fact::Show { node: node_name(node), cmd: cmd.clone(), ok: out.success(), status: out.describe_status(), output: out.text }
            }
            Action::Chmod { node, mode, path } => {
                let result = std::fs::set_permissions(self.node_dir(*node).join(path), std::fs::Permissions::from_mode(*mode)).map_err(|e| e.to_string());
                Fact::Chmod { node: node_name(node), mode: *mode, path: path.clone(), result }
            }
            Action::Sysctl { node, key, value } => {
                let result = self.topo.nodes[*node].sysctl(key, value).map_err(|e| format!("{e:#}"));
                Fact::Sysctl { node: node_name(node), key: key.clone(), value: value.clone(), result }
            }
            Action::Tcp { node, dest, send, within, .. } => {
                let server = lab.owner_of(dest.ip());
                let outcome = crate::probe::tcp(&self.topo.nodes[*node].ns, server.map(|s| &self.topo.nodes[s].ns), *dest, *send, *within).map_err(|e| fail(format!("{}: tcp {dest}: {e:#}", node_name(node))))?;
                Fact::Tcp(TcpFact { node: node_name(node), dest: *dest, send: *send, within: *within, outcome })
            }
            Action::Impair { node, ifname, spec, .. } => self.impair(*node, ifname, spec)?,
            Action::Counter { node, name, .. } => {
                let all = crate::counters::read(&self.topo.nodes[*node].ns).map_err(|e| fail(format!("counter {name}: {e:#}")))?;
                Fact::Counter { node: node_name(node), name: name.clone(), value: all.get(name).copied() }
            }
            Action::Trace { node, dest, .. } => {
                let refs: Vec<&crate::ns::NetNs> = self.topo.nodes.iter().map(|h| &h.ns).collect();
                let t = crate::trace::run_ping_trace_full(&refs, &self.pid, &self.node_dir(*node), *node, *dest).map_err(|e| fail(format!("trace {dest}: {e:#}")))?;
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
                let found = wait_until(Instant::now() + *within, || read_from(&log, from).lines().find(|l| pattern.re.is_match(l)).map(str::to_string));
                Fact::Log(LogFact { service: self.service(*service).name.clone(), pattern: shown_pattern(pattern), scope: *scope, waited: Some(*within), found })
            }
            Action::NoLog { service, pattern, watch, scope } => {
                let from = self.log_from(*service, *scope, prev_marks);
                let log = self.work.log(&self.service(*service).name);
                let find = || read_from(&log, from).lines().find(|l| pattern.re.is_match(l)).map(str::to_string);
                let found = match watch {
                    Some(w) => wait_until(Instant::now() + *w, find),
                    None => find(),
                };
                Fact::NoLog(LogFact { service: self.service(*service).name.clone(), pattern: shown_pattern(pattern), scope: *scope, waited: *watch, found })
            }
        })
    }

    /// Where in a service's log a `log`/`nolog` check starts reading.
    fn log_from(&self, service: usize, scope: LogScope, prev_marks: &[u64]) -> u64 {
        let started = self.daemons[service].as_ref().map(|d| d.log_start).unwrap_or(0);
        match scope {
            LogScope::SinceStart => started,
            LogScope::SincePrevious => prev_or(prev_marks, service),
            LogScope::SinceChange => prev_or(&self.change_marks, service).max(started),
        }
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

/// A pattern as the lab wrote it: `/regex/` or `'literal'`.
fn shown_pattern(p: &crate::model::step::LinePattern) -> String {
    if p.re.as_str() == regex::escape(&p.text) {
        format!("'{}'", p.text)
    } else {
        format!("/{}/", p.text)
    }
}

/// An impairment as written in a step: `reorder every 10 hold 3 udp`.
fn impair_spec(imp: &crate::impair::Impairer) -> String {
    format!("{}{}", imp.impairment(), imp.proto().map(|p| format!(" {p}")).unwrap_or_default())
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
