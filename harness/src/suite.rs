//! Finding labs and judging a scenario: the one verdict that `vpnlab run` and `cargo test`
//! share. A scenario's [`Outcome`] is one of four: it passed (every check held and the
//! transcript equals the snapshot), a check failed (an expectation did not hold, a service never
//! became ready, a daemon died), it drifted (every check held, only the transcript differs from
//! the snapshot), or it could not be judged at all (error: the lab could not be built or run).

use crate::backend::Backend;
use crate::model::{self, Lab};
use crate::runner::{FailedStep, Options, Timings};
use crate::snapshot;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The labs folder: `--labs-dir` / $VPNLAB_LABS, else ./labs, else the one next to this crate's
/// sources.
pub fn labs_root() -> PathBuf {
    if let Some(p) = &crate::config::get().labs_dir {
        return p.clone();
    }
    let here = PathBuf::from("labs");
    if here.join(".").is_dir() && std::fs::read_dir(&here).map(|mut d| d.next().is_some()).unwrap_or(false) {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("labs")
}

/// Every lab folder (`<root>/<family>/<recipe>/lab.toml`), sorted by id.
pub fn discover(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fam in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for rec in std::fs::read_dir(fam.path()).into_iter().flatten().flatten() {
            if rec.path().join("lab.toml").is_file() {
                out.push(rec.path());
            }
        }
    }
    out.sort();
    out
}

/// The name of a lab that the user can pass back to vpnlab (in hints): its id when the lab is the
/// one of that id under the labs folder, else the path of its folder (relative to the current
/// directory when it is below it). A lab outside the labs folder has an id made of its two last
/// folders, which no command would find.
pub fn cli_name(id: &str, dir: &Path) -> String {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let here = canon(dir);
    if here.is_some() && canon(&labs_root().join(id)) == here {
        return id.to_string();
    }
    let abs = here.unwrap_or_else(|| dir.to_path_buf());
    let rel = std::env::current_dir().ok().and_then(|c| abs.strip_prefix(canon(&c)?).ok().map(Path::to_path_buf));
    match rel {
        Some(r) if !r.as_os_str().is_empty() => r.display().to_string(),
        _ => abs.display().to_string(),
    }
}

/// Resolves `LAB[::SCENARIO]` where LAB is an id under `root` or a lab folder's path.
pub fn resolve(arg: &str, root: &Path) -> Result<(PathBuf, Option<String>), crate::error::EnvError> {
    let (lab, scenario) = match arg.rsplit_once("::") {
        Some((l, s)) => (l, Some(s.to_string())),
        None => (arg, None),
    };
    let as_path = PathBuf::from(lab);
    let dir = if model::lab_file(&as_path).is_file() {
        as_path
    } else if root.join(lab).join("lab.toml").is_file() {
        root.join(lab)
    } else {
        let known: Vec<String> = discover(root).iter().map(|d| model::lab_id(d)).collect();
        return Err(crate::error::EnvError {
            msg: format!("no lab `{lab}`: not a lab id under {} nor a folder with a lab.toml", root.display()),
            hint: format!("known labs: {}", if known.is_empty() { "none".into() } else { known.join(", ") }),
        });
    };
    Ok((dir, scenario))
}

/// What happened to one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every check held and the transcript equals the snapshot (or was recorded as the first one).
    Passed,
    /// Every check held; only the transcript differs from the snapshot.
    Drift,
    /// An expectation did not hold: a step's check, a service that never became ready, a daemon
    /// that died. A verdict on the daemons (or on the lab's claims about them).
    CheckFailed,
    /// The scenario could not be built or run: no verdict on the daemons at all.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Passed, Outcome::CheckFailed, Outcome::Drift, Outcome::Error];

    /// The word used on verdict lines, in the summary and in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::CheckFailed => "check-failed",
            Outcome::Drift => "drift",
            Outcome::Error => "error",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one run of a scenario, with everything needed to explain it.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `family/recipe::scenario`.
    pub id: String,
    pub outcome: Outcome,
    /// One line saying why it did not pass (empty when it passed): the failed step, the error,
    /// or that the transcript differs from the snapshot.
    pub headline: String,
    /// What to tell the user: the headline with the transcript or the diff, the kept work dir;
    /// for a pass only a note (a snapshot written), usually empty.
    pub report: String,
    /// The check that did not hold (check-failed).
    pub failed_step: Option<FailedStep>,
    /// Why it could not be run (error).
    pub error: Option<String>,
    /// The unified diff snapshot -> this run (drift; also given with a failed check).
    pub diff: Option<String>,
    /// This run's sanitized transcript (empty when nothing ran).
    pub transcript: String,
    pub workdir: Option<PathBuf>,
    /// Every daemon's log (service name, text; long logs keep their end), read before a
    /// passing run's work dir goes: for the HTML report.
    pub logs: Vec<(String, String)>,
    pub timings: Timings,
    /// The backend that ran it (`None` when none could be chosen).
    pub backend: Option<Backend>,
    /// Wall time of the whole scenario (run and judgement).
    pub duration: Duration,
}

impl Checked {
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }

    /// The verdict line's tail: `passed in 0.61s (build 10 ms, ...)` or `check-failed in ...`.
    pub fn verdict_line(&self) -> String {
        let tm = &self.timings;
        format!(
            "{}: {} in {:.2}s (build {:.0} ms, daemons {:.0} ms, steps {:.0} ms, teardown {:.0} ms)",
            self.id,
            self.outcome,
            self.duration.as_secs_f64(),
            tm.build.as_secs_f64() * 1e3,
            tm.daemons.as_secs_f64() * 1e3,
            tm.steps.as_secs_f64() * 1e3,
            tm.teardown.as_secs_f64() * 1e3
        )
    }

    /// For test harnesses: `check-failed: step 3 `...`: observed ..., expected ...` on the first
    /// line, then the full report.
    pub fn failure_message(&self) -> String {
        format!("{}: {}\n{}", self.outcome, self.headline, self.report)
    }
}

/// `step 3 `client: ping 10.198.0.1 -> reachable`: observed unreachable (100% loss), expected
/// reachable` (steps counted from 1 over prelude + scenario steps; a service started with the
/// lab is named by its `start NAME`).
pub fn describe_failed_step(f: &FailedStep) -> String {
    let which = match f.index {
        Some(i) => format!("step {} `{}`", i + 1, f.step),
        None => format!("`{}`", f.step),
    };
    format!("{which}: observed {}, expected {}", f.observed, f.expected)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Runs a scenario and judges it (see [`Outcome`]). Never fails: whatever goes wrong while
/// building or running the scenario (no backend, a guest that died, a panic in the harness) is
/// an [`Outcome::Error`] in the result. `accept` writes the snapshot instead of comparing
/// (never under CI).
pub fn run_checked(lab: &Lab, scenario: &str, opts: &Options, accept: bool) -> Checked {
    run_checked_on(lab, scenario, opts, accept, None)
}

/// [`run_checked`] on a given backend (`None`: chosen as usual, `VPNLAB_BACKEND` included). A
/// backend whose kernel lacks a feature the scenario needs makes it an `error` naming the
/// feature and what brings it.
pub fn run_checked_on(lab: &Lab, scenario: &str, opts: &Options, accept: bool, backend: Option<Backend>) -> Checked {
    let t0 = Instant::now();
    let id = format!("{}::{scenario}", lab.id);
    let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| judge(lab, scenario, opts, accept, &id, backend)));
    let mut c = match judged {
        Ok(c) => c,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let msg = format!("the harness panicked running this scenario: {what}");
            Checked::error(&id, None, msg)
        }
    };
    c.duration = t0.elapsed();
    c
}

impl Checked {
    fn error(id: &str, backend: Option<Backend>, msg: String) -> Checked {
        Checked {
            id: id.to_string(),
            outcome: Outcome::Error,
            headline: first_line(&msg).to_string(),
            report: format!("{id}: ERROR: {msg}"),
            failed_step: None,
            error: Some(msg),
            diff: None,
            transcript: String::new(),
            workdir: None,
            logs: Vec::new(),
            timings: Timings::default(),
            backend,
            duration: Duration::ZERO,
        }
    }
}

fn judge(lab: &Lab, scenario: &str, opts: &Options, accept: bool, id: &str, force: Option<Backend>) -> Checked {
    let backend = match crate::backend::choose_for(lab, Some(scenario), force) {
        Ok(b) => b,
        Err(why) => return Checked::error(id, force, format!("{id} cannot run here: {why}")),
    };
    let mut run = match crate::backend::run(lab, scenario, opts, backend) {
        Ok(r) => r,
        Err(e) => return Checked::error(id, Some(backend), format!("{e:#}")),
    };
    let mut c = Checked {
        id: id.to_string(),
        outcome: Outcome::Passed,
        headline: String::new(),
        report: String::new(),
        failed_step: run.failed_step.clone(),
        error: None,
        diff: None,
        transcript: run.transcript.clone(),
        workdir: None,
        logs: run.work_path().map(daemon_logs).unwrap_or_default(),
        timings: run.timings.clone(),
        backend: Some(backend),
        duration: Duration::ZERO,
    };
    // A snapshot variant per daemon minor version (`<scenario>@openvpn-2.7.snap`) when a
    // non-host version ran and the lab has one; else `<scenario>.snap`. A lab the host runs
    // natively but that was sent into user-mode-linux (`--backend uml`, the UML lab trials) is
    // compared with `<scenario>@uml.snap` first: that kernel has no drop events, so a trace
    // infers its drops (`crate::drops`).
    let mut variants = opts.with.variants(lab);
    if backend == Backend::Uml && crate::backend::has_all(Backend::Native, lab, scenario) {
        variants.insert(0, "uml".to_string());
    }
    let (snap_path, variant) = snapshot::choose(lab, scenario, &variants);
    // What `--accept` / a `.snap.new` writes: the variant of the version that ran when its
    // transcript differs from the base snapshot, else the base.
    let write_as: Option<String> = match variants.first() {
        None => None,
        Some(v) => {
            let base = snapshot::stored(&snapshot::path(lab, scenario)).ok().flatten();
            match base {
                Some(b) if snapshot::compare(Some(&b), &run.transcript) == snapshot::Verdict::Match => None,
                _ => Some(variant.clone().unwrap_or_else(|| v.clone())),
            }
        }
    };
    if let Some(f) = run.failure.clone() {
        // The snapshot diff helps to see where the run left the documented path.
        let diff = match snapshot::stored(&snap_path).ok().flatten() {
            Some(stored) => match snapshot::compare(Some(&stored), &run.transcript) {
                snapshot::Verdict::Mismatch(d) => Some(d),
                _ => None,
            },
            None => None,
        };
        let diff_text = diff.as_ref().map(|d| format!("\ndifference from the snapshot:\n{d}")).unwrap_or_default();
        if run.error {
            c.outcome = Outcome::Error;
            c.headline = first_line(&f).to_string();
            c.error = Some(f.clone());
            c.report = format!(
                "{id}: ERROR (the scenario could not be run; no verdict on the daemons): {f}\n--- transcript ---\n{}",
                run.transcript
            );
        } else {
            c.outcome = Outcome::CheckFailed;
            c.headline = match &run.failed_step {
                Some(fs) => describe_failed_step(fs),
                None => first_line(&f).to_string(),
            };
            c.report = format!("{id}: CHECK FAILED: {f}\n--- transcript ---\n{}{diff_text}", run.transcript);
        }
        c.diff = diff;
    } else {
        match snapshot::stored(&snap_path) {
            Err(e) => {
                c.outcome = Outcome::Error;
                c.headline = e.clone();
                c.error = Some(e.clone());
                c.report = format!("{id}: ERROR: {e}");
            }
            Ok(stored) => {
                let first = stored.is_none() && !snapshot::is_ci();
                if (accept && !snapshot::is_ci()) || first {
                    if write_as.is_none() {
                        // The base holds for this version: a stale variant would shadow it.
                        if let Some(v) = &variant {
                            let _ = std::fs::remove_file(snapshot::variant_path(lab, scenario, v));
                        }
                    }
                    match snapshot::accept_variant(lab, scenario, write_as.as_deref(), &run.transcript) {
                        Ok(p) if first => c.report = format!("{id}: no snapshot yet: the checks passed and this run's transcript was recorded as the first snapshot ({}); review and commit it", p.display()),
                        Ok(p) => c.report = format!("{id}: snapshot written to {}", p.display()),
                        Err(e) => {
                            let msg = format!("writing the snapshot {} failed: {e}", snap_path.display());
                            c.outcome = Outcome::Error;
                            c.headline = msg.clone();
                            c.error = Some(msg.clone());
                            c.report = format!("{id}: ERROR: {msg}");
                        }
                    }
                } else if let Err(msg) = snapshot::check_variant(lab, scenario, &snap_path, write_as.as_deref(), &run.transcript) {
                    c.outcome = Outcome::Drift;
                    c.diff = match snapshot::compare(stored.as_deref(), &run.transcript) {
                        snapshot::Verdict::Mismatch(d) => Some(d),
                        _ => None,
                    };
                    c.headline = if stored.is_none() {
                        format!("every check held, but there is no snapshot at {} (CI=true: none is recorded)", snap_path.display())
                    } else {
                        format!("every check held, but the transcript differs from {}", snap_path.display())
                    };
                    c.report = msg;
                }
            }
        }
    }
    if c.outcome != Outcome::Passed || opts.keep {
        if let Some(w) = run.keep_workdir() {
            c.report.push_str(&format!("\nwork dir (daemon logs, node files) kept at {}", w.display()));
        }
    }
    c.workdir = run.workdir.clone();
    c
}

/// How much of a daemon's log [`daemon_logs`] keeps (its end: where a daemon says why it stopped).
pub const LOG_TAIL_BYTES: usize = 64 * 1024;

/// The daemon logs of a work dir, by service name: `logs/*.log`, and for a scenario run in
/// user-mode-linux the guest's own work dir inside it (`vpnlab-*/logs/*.log`). A log longer
/// than [`LOG_TAIL_BYTES`] keeps its end, after a line saying how much was cut.
pub fn daemon_logs(work: &Path) -> Vec<(String, String)> {
    let mut dirs = vec![work.join("logs")];
    let mut inner: Vec<PathBuf> = std::fs::read_dir(work)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vpnlab-"))
        .map(|e| e.path().join("logs"))
        .collect();
    inner.sort();
    dirs.extend(inner);
    let mut out = Vec::new();
    for d in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        for f in files {
            let Ok(bytes) = std::fs::read(&f) else { continue };
            let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let text = if bytes.len() > LOG_TAIL_BYTES {
                // The end, from the start of a whole line.
                let cut = bytes.len() - LOG_TAIL_BYTES;
                let cut = bytes[cut..].iter().position(|&b| b == b'\n').map_or(cut, |i| cut + i + 1);
                format!("[... the first {cut} bytes cut]\n{}", String::from_utf8_lossy(&bytes[cut..]))
            } else {
                String::from_utf8_lossy(&bytes).into_owned()
            };
            out.push((name, text));
        }
    }
    out
}

/// Counts of outcomes over runs, for the summary line and the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub passed: usize,
    pub check_failed: usize,
    pub drift: usize,
    pub error: usize,
}

impl Tally {
    pub fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Passed => self.passed += 1,
            Outcome::CheckFailed => self.check_failed += 1,
            Outcome::Drift => self.drift += 1,
            Outcome::Error => self.error += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.passed + self.check_failed + self.drift + self.error
    }

    pub fn all_passed(&self) -> bool {
        self.total() == self.passed
    }

    /// `45 passed, 2 check-failed, 1 drift, 1 error` (zero counts included: the line's shape
    /// never changes, so scripts can parse it).
    pub fn counts(&self) -> String {
        format!("{} passed, {} check-failed, {} drift, {} error", self.passed, self.check_failed, self.drift, self.error)
    }
}

/// Transcripts of the repetitions of one scenario that differ from the first repetition's.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RepetitionDiff {
    /// 1-based number of the repetition compared with repetition 1.
    pub repetition: usize,
    /// Its differing lines: a unified diff without context, repetition 1 -> this one.
    pub diff: String,
}

/// Compares every repetition's transcript with the first one's; one entry per repetition whose
/// transcript differs.
pub fn repetition_diffs(transcripts: &[&str]) -> Vec<RepetitionDiff> {
    let Some(first) = transcripts.first() else { return Vec::new() };
    let a = format!("{}\n", first.trim_end());
    transcripts
        .iter()
        .enumerate()
        .skip(1)
        .filter_map(|(i, t)| {
            let b = format!("{}\n", t.trim_end());
            if a == b {
                return None;
            }
            let diff = similar::TextDiff::from_lines(&a, &b)
                .unified_diff()
                .context_radius(0)
                .header("repetition 1", &format!("repetition {}", i + 1))
                .to_string();
            Some(RepetitionDiff { repetition: i + 1, diff })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_words_are_stable() {
        let words: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(words, ["passed", "check-failed", "drift", "error"]);
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), serde_json::Value::String(o.as_str().into()));
        }
    }

    #[test]
    fn tally_counts_every_outcome_with_zeroes() {
        let mut t = Tally::default();
        assert_eq!(t.counts(), "0 passed, 0 check-failed, 0 drift, 0 error");
        for o in [Outcome::Passed, Outcome::Passed, Outcome::CheckFailed, Outcome::Error] {
            t.add(o);
        }
        assert_eq!(t.counts(), "2 passed, 1 check-failed, 0 drift, 1 error");
        assert!(!t.all_passed());
        assert_eq!(t.total(), 4);
    }

    #[test]
    fn failed_steps_are_counted_from_one() {
        let f = FailedStep {
            index: Some(2),
            step: "client: ping 10.0.0.1".into(),
            observed: "unreachable (100% loss)".into(),
            expected: "reachable".into(),
        };
        assert_eq!(describe_failed_step(&f), "step 3 `client: ping 10.0.0.1`: observed unreachable (100% loss), expected reachable");
        let f = FailedStep {
            index: None,
            step: "start vpn".into(),
            observed: "exited with status 1".into(),
            expected: "Initialization Sequence Completed".into(),
        };
        assert_eq!(describe_failed_step(&f), "`start vpn`: observed exited with status 1, expected Initialization Sequence Completed");
    }

    #[test]
    fn a_failure_message_starts_with_the_outcome() {
        let f = FailedStep {
            index: Some(2),
            step: "client: ping 10.0.0.1".into(),
            observed: "unreachable".into(),
            expected: "reachable".into(),
        };
        let mut c = Checked::error("a/b::c", None, "nft refused the ruleset\nline 2".into());
        assert_eq!(c.failure_message().lines().next().unwrap(), "error: nft refused the ruleset");
        c.outcome = Outcome::CheckFailed;
        c.headline = describe_failed_step(&f);
        c.failed_step = Some(f);
        assert_eq!(
            c.failure_message().lines().next().unwrap(),
            "check-failed: step 3 `client: ping 10.0.0.1`: observed unreachable, expected reachable"
        );
        assert!(c.verdict_line().starts_with("a/b::c: check-failed in "), "{}", c.verdict_line());
    }

    #[test]
    fn repetitions_report_only_the_differing_lines() {
        let a = "x\ny 1\nz\n";
        let b = "x\ny 2\nz\n";
        let d = repetition_diffs(&[a, a, b]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].repetition, 3);
        assert!(d[0].diff.contains("-y 1\n") && d[0].diff.contains("+y 2\n"), "{}", d[0].diff);
        assert!(!d[0].diff.contains(" x\n"), "no context lines: {}", d[0].diff);
        assert!(repetition_diffs(&[a, a]).is_empty());
        assert!(repetition_diffs(&[]).is_empty());
    }
}
