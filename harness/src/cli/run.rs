//! `vpnlab run`: every selected scenario on `-j N` worker threads; the main thread alone prints
//! (progress lines, verdicts, a progress bar on a terminal) and rewrites the report and JUnit
//! files after every scenario.

use std::time::Instant;
use vpnlab::error::{EnvError, Exit};
use vpnlab::{model, runner, suite};

/// Where `vpnlab run` writes its machine-readable accounts (each rewritten after every scenario).
pub struct Outputs<'a> {
    pub report: Option<&'a std::path::Path>,
    pub junit: Option<&'a std::path::Path>,
    pub html: Option<&'a std::path::Path>,
}

/// What the worker threads tell the main thread, which alone prints (so a scenario's lines are
/// never interleaved with another's, and the progress bar is drawn by one thread).
enum Event {
    /// A run of scenario `job` starts: its `== LAB::SCENARIO (... backend)` line.
    Started { job: usize, header: String },
    /// A progress line of the run of `job` going on (`  [lab::scenario] client$ ping ...`).
    Line { job: usize, line: String },
    /// The run of `job` ended with this verdict.
    Done { job: usize, rep: usize, out: Box<suite::Checked> },
}

/// A scenario of the selection, with its runs so far and, once all ran, its report entry.
#[derive(Default)]
struct Slot {
    /// Lines of the run going on (grouped output: printed with its verdict).
    lines: Vec<String>,
    runs: Vec<suite::Checked>,
    /// The report entry, this scenario's counts, and what JUnit shows beyond the entry.
    done: Option<(vpnlab::report::ScenarioReport, suite::Tally, vpnlab::junit::Details)>,
    /// (outcome, headline) when it did not pass.
    not_passed: Option<(String, String)>,
}

/// The terminal side of a run: a progress bar on a terminal (scenarios done/total, what runs
/// now, ETA) with every line printed above it; plain lines otherwise (CI logs, tests).
struct Display {
    bar: Option<indicatif::ProgressBar>,
    /// id and latest step of every run going on, for the bar's message.
    running: std::collections::BTreeMap<usize, (String, String)>,
}

impl Display {
    fn new(runs: usize, repeat: usize) -> Display {
        use std::io::IsTerminal;
        // Plain lines when stderr is not a terminal, so logs and tests see exactly the lines.
        let bar = (runs > 1 && std::io::stderr().is_terminal()).then(|| {
            let style =
                indicatif::ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len} {prefix} {elapsed} (ETA {eta}) {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> ");
            let b = indicatif::ProgressBar::new(runs as u64).with_style(style).with_prefix(if repeat > 1 { "runs" } else { "scenarios" });
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        Display { bar, running: Default::default() }
    }

    /// Prints above the bar (the bar is cleared, the text printed, the bar redrawn).
    fn print(&self, text: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn refresh(&self) {
        if let Some(b) = &self.bar {
            let msg: Vec<String> =
                self.running.values().map(|(id, step)| if step.is_empty() { id.clone() } else { format!("{id}: {step}") }).collect();
            b.set_message(msg.join("  |  "));
        }
    }

    fn started(&mut self, job: usize, id: String) {
        self.running.insert(job, (id, String::new()));
        self.refresh();
    }

    fn step(&mut self, job: usize, line: &str) {
        if let Some(r) = self.running.get_mut(&job) {
            // `  [lab::scenario] client$ ping ...` -> `client$ ping ...`
            let t = line.trim_start();
            r.1 = t.strip_prefix('[').and_then(|t| t.split_once("] ")).map(|(_, s)| s).unwrap_or(t).to_string();
            self.refresh();
        }
    }

    fn done(&mut self, job: usize) {
        self.running.remove(&job);
        if let Some(b) = &self.bar {
            b.inc(1);
        }
        self.refresh();
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Runs every selected scenario (`repeat` times each) on `jobs` worker threads, printing a
/// verdict line per run (with `jobs` > 1 together with that run's step lines, when it ends),
/// then the scenarios that did not pass and the summary line, which always ends the run. The
/// JSON report and the JUnit file are rewritten after every scenario, in selection order.
///
/// The repetitions of one scenario run one after the other on the same worker (scenarios run
/// in parallel): `--accept` writes the snapshot in the first repetition and the others are
/// compared with it, and a scenario's repetitions never compete with each other.
pub fn run_suite(
    selected: &[(model::Lab, Vec<String>)],
    opts: &runner::Options,
    accept: bool,
    repeat: u32,
    jobs: usize,
    outputs: Outputs,
) -> anyhow::Result<u8> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let repeat = repeat as usize;
    let t0 = Instant::now();
    let started = std::time::SystemTime::now();
    let work: Vec<(&model::Lab, &str)> = selected.iter().flat_map(|(l, ss)| ss.iter().map(move |s| (l, s.as_str()))).collect();
    let mut slots: Vec<Slot> = work.iter().map(|_| Slot::default()).collect();
    let mut write_error: Option<String> = None;
    let build_report = |slots: &[Slot], complete: bool| {
        let mut r = vpnlab::report::Report::new(started, repeat);
        for (e, t, _) in slots.iter().filter_map(|s| s.done.as_ref()) {
            r.push(e.clone(), t);
        }
        r.complete = complete;
        r.duration_s = vpnlab::report::secs(t0.elapsed().as_secs_f64());
        r
    };
    // Each lab's picture for the HTML report, drawn once.
    let topologies = outputs.html.map(|_| vpnlab::html::Topologies::of(selected.iter().map(|(l, _)| l))).unwrap_or_default();
    let save = |slots: &[Slot], complete: bool, write_error: &mut Option<String>| {
        if outputs.report.is_none() && outputs.junit.is_none() && outputs.html.is_none() {
            return;
        }
        let r = build_report(slots, complete);
        if let Some(p) = outputs.report {
            if let Err(e) = r.write(p) {
                *write_error = Some(format!("vpnlab: cannot write the report {}: {e}", p.display()));
            }
        }
        if let Some(p) = outputs.junit {
            let details: std::collections::BTreeMap<String, vpnlab::junit::Details> =
                slots.iter().filter_map(|s| s.done.as_ref()).map(|(e, _, d)| (e.id.clone(), d.clone())).collect();
            if let Err(e) = vpnlab::junit::write(&r, &details, p) {
                *write_error = Some(format!("vpnlab: cannot write the JUnit file {}: {e}", p.display()));
            }
        }
        if let Some(p) = outputs.html {
            let details: std::collections::BTreeMap<String, vpnlab::junit::Details> =
                slots.iter().filter_map(|s| s.done.as_ref()).map(|(e, _, d)| (e.id.clone(), d.clone())).collect();
            if let Err(e) = vpnlab::html::write(&r, &details, &topologies, p) {
                *write_error = Some(format!("vpnlab: cannot write the HTML report {}: {e}", p.display()));
            }
        }
    };
    // An unwritable report or JUnit file is an environment problem: found before anything runs.
    save(&slots, false, &mut write_error);
    if let Some(e) = write_error.take() {
        return Err(EnvError {
            msg: e.trim_start_matches("vpnlab: ").to_string(),
            hint: "give --report / --junit / --html a path in a writable directory".into(),
        }
        .into());
    }
    let mut tally = suite::Tally::default();
    let interrupted = |tally: &suite::Tally| {
        vpnlab::ns::set_interrupted_summary(format!("vpnlab: {} in {:.2}s (interrupted)", tally.counts(), t0.elapsed().as_secs_f64()))
    };
    interrupted(&tally);
    let workers = jobs.clamp(1, work.len().max(1));
    // With one worker every step is printed as it runs (as always); with more, a scenario's
    // lines wait for its verdict so that they are printed together.
    let grouped = workers > 1;
    let quiet = !opts.progress;
    let mut display = Display::new(work.len() * repeat, repeat);
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    std::thread::scope(|scope| {
        for w in 0..workers {
            let tx = tx.clone();
            let (next, work) = (&next, &work);
            std::thread::Builder::new()
                .name(format!("vpnlab-worker-{w}"))
                .spawn_scoped(scope, move || loop {
                    let job = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(lab, s)) = work.get(job) else { break };
                    for rep in 1..=repeat {
                        let backend = vpnlab::backend::choose_for(lab, Some(s), None).map(|b| b.name()).unwrap_or("no");
                        let nth = if repeat > 1 { format!(", repetition {rep} of {repeat}") } else { String::new() };
                        let wl = opts.with.label();
                        let wl = if wl.is_empty() { wl } else { format!(", with {wl}") };
                        let header = format!("== {}::{s} ({backend} backend{wl}{nth})", lab.id);
                        if tx.send(Event::Started { job, header }).is_err() {
                            return;
                        }
                        let mut o = opts.clone();
                        let lines = tx.clone();
                        o.sink = Some(std::sync::Arc::new(move |line: &str| {
                            let _ = lines.send(Event::Line { job, line: line.to_string() });
                        }));
                        let out = suite::run_checked(lab, s, &o, accept && rep == 1);
                        if tx.send(Event::Done { job, rep, out: Box::new(out) }).is_err() {
                            return;
                        }
                    }
                })
                .expect("start a worker thread");
        }
        drop(tx);
        for ev in rx {
            match ev {
                Event::Started { job, header } => {
                    if grouped {
                        slots[job].lines = vec![header];
                    } else {
                        display.print(&header);
                    }
                    let (lab, s) = work[job];
                    display.started(job, format!("{}::{s}", lab.id));
                }
                Event::Line { job, line } => {
                    if !quiet {
                        if grouped {
                            slots[job].lines.push(line.clone());
                        } else {
                            display.print(&line);
                        }
                    }
                    display.step(job, &line);
                }
                Event::Done { job, rep, out } => {
                    let mut block = std::mem::take(&mut slots[job].lines);
                    block.push(format!(
                        "== {}{}",
                        out.verdict_line(),
                        if repeat > 1 { format!(" [repetition {rep} of {repeat}]") } else { String::new() }
                    ));
                    if !out.report.is_empty() {
                        block.push(out.report.clone());
                    }
                    display.print(&block.join("\n"));
                    tally.add(out.outcome);
                    interrupted(&tally);
                    display.done(job);
                    slots[job].runs.push(*out);
                    if rep == repeat {
                        let (lab, s) = work[job];
                        let slot = &mut slots[job];
                        let runs = std::mem::take(&mut slot.runs);
                        let mut entry = vpnlab::report::ScenarioReport::new(lab, s, &runs, repeat);
                        entry.versions = vpnlab::versions::of_lab_with(lab, &opts.with);
                        let mut this = suite::Tally::default();
                        runs.iter().for_each(|r| this.add(r.outcome));
                        let rep_run = runs.iter().find(|r| r.outcome == entry.outcome);
                        if let Some(r) = rep_run.filter(|_| entry.outcome != suite::Outcome::Passed) {
                            slot.not_passed = Some((entry.outcome.to_string(), r.headline.clone()));
                        }
                        let details = vpnlab::junit::Details {
                            body: rep_run.map(|r| r.report.clone()).unwrap_or_default(),
                            transcript: runs.first().map(|r| r.transcript.clone()).unwrap_or_default(),
                            logs: rep_run.map(|r| r.logs.clone()).unwrap_or_default(),
                        };
                        slot.done = Some((entry, this, details));
                        save(&slots, false, &mut write_error);
                    }
                }
            }
        }
    });
    display.finish();
    // The warm user-mode-linux guests are not needed any more: ended and their dirs removed.
    vpnlab::backend::uml::pool::shutdown();
    for (e, _, _) in slots.iter().filter_map(|s| s.done.as_ref()) {
        if let Some(reps) = e.repetitions.as_ref().filter(|r| r.differed) {
            eprintln!(
                "== {}: the transcript differed between repetitions ({} of {} differ from repetition 1):",
                e.id,
                reps.differences.len(),
                reps.count
            );
            for d in &reps.differences {
                eprint!("{}", d.diff);
            }
        }
    }
    let differed =
        slots.iter().filter_map(|s| s.done.as_ref()).filter(|(e, _, _)| e.repetitions.as_ref().is_some_and(|r| r.differed)).count();
    // In selection order, whatever order the scenarios ended in.
    let not_passed: Vec<(String, &str, &str)> = slots
        .iter()
        .filter_map(|s| Some((s.done.as_ref()?.0.id.clone(), s.not_passed.as_ref()?)))
        .map(|(id, (o, h))| (id, o.as_str(), h.as_str()))
        .collect();
    if !not_passed.is_empty() {
        eprintln!("not passed:");
        for (id, outcome, why) in &not_passed {
            eprintln!("  {outcome:<12} {id}: {why}");
        }
    }
    save(&slots, true, &mut write_error);
    if let Some(e) = &write_error {
        eprintln!("{e}");
    }
    let reps = if repeat > 1 {
        format!(" ({repeat} repetitions each); {differed} scenario{} differed between repetitions", if differed == 1 { "" } else { "s" })
    } else {
        String::new()
    };
    println!("vpnlab: {} in {:.2}s{reps}", tally.counts(), t0.elapsed().as_secs_f64());
    Ok(if write_error.is_some() {
        Exit::Unusable
    } else if tally.all_passed() && differed == 0 {
        Exit::Passed
    } else {
        Exit::NotPassed
    }
    .code())
}
