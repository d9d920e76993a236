//! Runs one scenario of a lab: work dir -> PID namespace -> topology -> node files and PKI ->
//! firewall/setup -> services (ready = a log line) -> prelude and steps -> teardown, writing the
//! transcript as it goes. Teardown runs however the scenario ends (drop order: daemons are
//! stopped, the PID namespace is killed, then the namespaces' last fds close).

use crate::facts::Fact;
use crate::judge::judge;
use crate::model::step::{Action, ServiceOp, Step};
use crate::model::Lab;
use crate::narrate::narrate;
use crate::ns::PidNs;
use crate::process::Daemon;
use crate::topology::Topology;
use crate::transcript::Transcript;
use crate::workdir::WorkDir;
use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod prepare;
mod shell;
mod steps;

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
    /// Where the work dir is made; `None`: `$VPNLAB_WORK_ROOT`, else the temp dir.
    pub work_root: Option<std::path::PathBuf>,
}

impl Options {
    /// A new work dir for a run labelled `label`, under [`Options::work_root`].
    pub fn work_dir(&self, label: &str) -> Result<WorkDir> {
        match &self.work_root {
            Some(root) => WorkDir::new_in(root, label),
            None => WorkDir::new(label),
        }
    }

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
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
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

/// The result of running a scenario's steps (before the snapshot comparison): the same type
/// whichever backend ran it (a user-mode-linux guest sends it to the host serialized) and for a
/// lab kept up by `vpnlab up` (`Live::finish`).
#[derive(serde::Serialize, serde::Deserialize)]
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
    /// The kept work dir (this machine's path: not sent across).
    #[serde(skip)]
    pub workdir: Option<PathBuf>,
    pub timings: Timings,
    #[serde(skip)]
    work: Option<WorkDir>,
}

impl Run {
    /// A result produced elsewhere (a user-mode-linux guest), given the host's work dir.
    pub(crate) fn with_work(mut self, work: WorkDir) -> Run {
        self.workdir = None;
        self.work = Some(work);
        self
    }

    /// The work dir while the run holds it (or once kept): daemon logs, node files, pcaps.
    pub fn work_path(&self) -> Option<&Path> {
        self.work.as_ref().map(|w| w.path()).or(self.workdir.as_deref())
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
    /// The step the check belongs to (index, text) when it is not the step that just ran (a
    /// capture collected after the step it wrapped).
    at: Option<(usize, String)>,
}

#[allow(non_snake_case)]
fn StepFailed(msg: String) -> StepFailed {
    StepFailed { msg, check: None, at: None }
}

impl StepFailed {
    fn check(msg: String, observed: impl Into<String>, expected: impl Into<String>) -> StepFailed {
        StepFailed { msg, check: Some((observed.into(), expected.into())), at: None }
    }
}

struct Lab_<'a> {
    /// Active impairments by (node, interface), with their NFQUEUE numbers. Declared first
    /// so that they are stopped before the lab's processes are killed.
    impairers: Vec<((usize, String), crate::impair::Impairer)>,
    lab: &'a Lab,
    opts: &'a Options,
    work: std::sync::Arc<WorkDir>,
    topo: Topology,
    daemons: Vec<Option<Daemon>>,
    /// tcpdump captures (`--pcap`), stopped after the daemons at teardown.
    captures: Vec<Daemon>,
    /// `capture` steps started and not collected yet (collected after the next step that is
    /// not a capture).
    pending_captures: Vec<crate::capture::Capture>,
    /// Index (in prelude + steps) of the step running.
    index: usize,
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
    /// The lab's drop events (`crate::drops`), started at the first negative ping; `Some(None)`
    /// where the kernel gives none.
    drops: Option<Option<crate::drops::Watch>>,
    /// Declared last, so dropped last: killing the PID namespace's init waits until every
    /// process in it is reaped, and the daemons and captures above (our children) are reaped
    /// by their own drops. Dropped earlier (a panic unwinding past the teardown), it waited
    /// forever on their zombies.
    pid: PidNs,
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
        let work = std::sync::Arc::new(opts.work_dir(&format!("{}-{scenario}", lab.id))?);
        let label = format!("{}::{scenario}", lab.id);
        let t0 = Instant::now();
        let mut live = Live {
            l: None,
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
        let built = PidNs::create().and_then(|pid| Ok((pid, Topology::build(lab)?)));
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
            pending_captures: Vec::new(),
            index: 0,
            stopped: vec![false; lab.services.len()],
            t: Transcript::new(&lab.sanitizers),
            label: label.clone(),
            marks: vec![0; lab.services.len()],
            change_marks: vec![0; lab.services.len()],
            drops: None,
        };
        l.t.push(&format!("# {label}"));
        if !sc.about.is_empty() {
            l.t.push(&format!("# {}", sc.about));
        }
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
        if let Err(StepFailed { msg, check, .. }) = r {
            l.t.push(&format!("!! {msg}"));
            live.failure = Some(msg);
            match (check, failed_service) {
                (Some((observed, expected)), Some(name)) => {
                    live.failed_step = Some(FailedStep { index: None, step: format!("start {name}"), observed, expected })
                }
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
            let running = crate::with::Component::of_daemon(c.daemon)
                .and_then(|x| l.opts.with.get(x))
                .map(|x| x.version.clone())
                .unwrap_or_else(|| crate::versions::version(c.daemon));
            if !c.holds(&running) {
                return Some(Vec::new());
            }
        }
        let before = l.t.len();
        let r = if Instant::now() > self.deadline {
            Err(StepFailed(format!("the scenario passed its deadline of {:?} before `{}`", l.lab.deadline, step.text)))
        } else {
            l.index = self.next - 1;
            l.step(step).and_then(|()| l.check_daemons()).and_then(|()| l.check_impairers())
        };
        // Captures started before this step end after it (also when it failed: their packets
        // belong to the transcript); the step's own failure comes first.
        let r = if matches!(step.action, Action::Capture { .. }) {
            r
        } else {
            let c = l.end_captures();
            r.and(c)
        };
        self.record(r, step);
        self.timings.steps = started.elapsed();
        self.l.as_ref().map(|l| l.t.lines_from(before))
    }

    fn record(&mut self, r: Result<(), StepFailed>, step: &Step) {
        let Err(StepFailed { msg, check, at }) = r else {
            return;
        };
        if let Some(l) = self.l.as_mut() {
            l.t.push(&format!("!! {msg}"));
        }
        self.failure = Some(msg);
        match check {
            Some((observed, expected)) => {
                let (index, text) = at.unwrap_or_else(|| (self.next - 1, step.text.clone()));
                self.failed_step = Some(FailedStep { index: Some(index), step: text, observed, expected })
            }
            None => self.error = true,
        }
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
    pub fn finish(self) -> Run {
        self.finish_with(true)
    }

    /// The result without tearing the lab down: its daemons, namespaces and work dir are left
    /// as they are. Only for a run inside a user-mode-linux guest, which is powered off right
    /// afterwards: everything the lab made dies with the guest's kernel, and the host removes
    /// the shared work dir. (Stopping the daemons there took 0.1-2.3 s per scenario: pluto
    /// deletes its states, runs its updown script and waits for the peer on SIGTERM.)
    pub fn finish_abandoned(self) -> Run {
        self.finish_with(false)
    }

    fn finish_with(mut self, teardown: bool) -> Run {
        // Impairments still on: their counters belong to the transcript (a phase that was
        // impaired shows whether the impairment acted).
        // Captures whose step did not run (a version condition skipped it) end here.
        if let Some(l) = self.l.as_mut().filter(|l| !l.pending_captures.is_empty()) {
            let r = if self.failure.is_none() { l.end_captures() } else { Ok(()) };
            if let Err(f) = r {
                let step = self.steps[self.next.saturating_sub(1).min(self.steps.len().saturating_sub(1))];
                self.record(Err(f), step);
            }
        }
        if let Some(l) = self.l.as_mut() {
            for e in l.impairments_at_end() {
                l.tell(crate::narrate::impair_at_end(&e));
            }
        }
        let transcript = self.transcript();
        let tt = Instant::now();
        if let Some(mut l) = self.l.take() {
            if teardown {
                // Shown on stderr, outside the transcript: a failed teardown is no verdict on the lab.
                for e in l.teardown() {
                    eprintln!("vpnlab: {}: teardown: {e}", l.label);
                }
                drop(l);
            } else {
                // Not even dropped: dropping kills the PID namespace and closes the namespaces.
                std::mem::forget(l);
            }
        }
        self.timings.teardown = tt.elapsed();
        let work = if teardown {
            std::sync::Arc::try_unwrap(self.work).ok()
        } else {
            // Left on disk (the host removes the shared dir it is in).
            std::mem::forget(self.work);
            None
        };
        Run {
            transcript,
            failure: self.failure,
            failed_step: self.failed_step,
            error: self.error,
            workdir: None,
            timings: self.timings,
            work,
        }
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

    /// Stops daemons in reverse order, then kills everything left in the PID namespace. Goes on
    /// past every error and returns them all (the caller shows them; they are not the verdict).
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        // A dropped capture's tcpdump is killed and reaped.
        self.pending_captures.clear();
        for ((node, ifname), imp) in std::mem::take(&mut self.impairers) {
            if let Err(e) = imp.stop(&self.topo.nodes[node].ns, &self.pid) {
                errors.push(format!("impairment of {}:{ifname}: {e:#}", self.lab.nodes[node].name));
            }
        }
        for i in (0..self.daemons.len()).rev() {
            if let Some(d) = self.daemons[i].as_mut() {
                if let Err(e) = d.stop(Duration::from_secs(2)) {
                    errors.push(format!("stopping {}: {e:#}", d.name));
                }
            }
        }
        // SIGTERM makes tcpdump flush and close its file.
        for c in self.captures.iter_mut() {
            if let Err(e) = c.stop(Duration::from_secs(2)) {
                errors.push(format!("stopping the capture {}: {e:#}", c.name));
            }
        }
        self.pid.kill_all();
        errors
    }
}
