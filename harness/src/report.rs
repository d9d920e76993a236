//! The machine-readable report of `vpnlab run --report FILE` (schema `vpnlab-report/1`,
//! documented in REPORT.md, JSON Schema in REPORT.schema.json): one entry per scenario with its
//! outcome, the failed step or error or snapshot diff, the backend, the daemons' versions and,
//! with `--repeat`, every repetition's outcome and the lines that differed between them.
//!
//! The file is rewritten (atomically: temp file + rename) after every scenario, so an
//! interrupted run leaves a valid report of the scenarios so far with `"complete": false`.

use crate::model::Lab;
use crate::runner::FailedStep;
use crate::suite::{Checked, Outcome, RepetitionDiff, Tally};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

pub const SCHEMA: &str = "vpnlab-report/1";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    /// When the run started, RFC 3339 UTC (`2026-12-01T23:59:48Z`).
    pub started: String,
    pub duration_s: f64,
    /// False while the run is going on (or when it was cut short).
    pub complete: bool,
    /// Runs per scenario (`--repeat`, 1 without it).
    pub repeat: usize,
    pub summary: Summary,
    pub scenarios: Vec<ScenarioReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Runs by outcome: with `--repeat N` every repetition counts.
    pub passed: usize,
    pub check_failed: usize,
    pub drift: usize,
    pub error: usize,
    /// Runs in all (scenarios x repetitions).
    pub runs: usize,
    /// Scenarios judged.
    pub scenarios: usize,
    /// Scenarios whose transcripts differed between repetitions.
    pub differed: usize,
    /// Scenarios that did not pass (an outcome other than passed in any repetition, or
    /// transcripts that differed between repetitions). The run exits 1 when this is not 0.
    pub not_passed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// `family/recipe::scenario`.
    pub id: String,
    pub lab: String,
    pub scenario: String,
    /// The worst outcome over the repetitions (error > check-failed > drift > passed); the
    /// fields below describe the first repetition that had it.
    pub outcome: Outcome,
    /// Passed in every repetition, with the same transcript each time.
    pub passed: bool,
    /// `native` or `uml`; null when no backend could be chosen.
    pub backend: Option<&'static str>,
    pub duration_s: f64,
    pub failed_step: Option<FailedStep>,
    pub error: Option<String>,
    /// Unified diff snapshot -> this run (drift; with a failed check when a snapshot exists).
    pub diff: Option<String>,
    /// The kept work dir (daemon logs, node files), if it was kept.
    pub workdir: Option<String>,
    /// The `--pcap` captures in the kept work dir (`pcap/<node>-<if>.pcap`, `pcap/lan-<name>.pcap`).
    pub pcaps: Vec<String>,
    /// Daemon -> first line of its `--version`, for the daemons the lab's services run.
    pub versions: BTreeMap<String, String>,
    /// Only with `--repeat` (N > 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetitions: Option<Repetitions>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Repetitions {
    pub count: usize,
    pub outcomes: Vec<Outcome>,
    pub durations_s: Vec<f64>,
    /// Did any repetition's transcript differ from the first one's?
    pub differed: bool,
    /// One entry per repetition whose transcript differs from repetition 1's.
    pub differences: Vec<RepetitionDiff>,
}

impl ScenarioReport {
    /// The report entry for the runs (one per repetition, at least one) of a scenario.
    pub fn new(lab: &Lab, scenario: &str, runs: &[Checked], repeat: usize) -> ScenarioReport {
        let worst = runs.iter().map(|r| r.outcome).max().unwrap_or(Outcome::Error);
        let rep = runs.iter().find(|r| r.outcome == worst);
        let diffs = crate::suite::repetition_diffs(&runs.iter().map(|r| r.transcript.as_str()).collect::<Vec<_>>());
        let differed = !diffs.is_empty();
        ScenarioReport {
            id: format!("{}::{scenario}", lab.id),
            lab: lab.id.clone(),
            scenario: scenario.to_string(),
            outcome: worst,
            passed: worst == Outcome::Passed && !differed && !runs.is_empty(),
            backend: rep.and_then(|r| r.backend).map(|b| b.name()),
            duration_s: secs(runs.iter().map(|r| r.duration.as_secs_f64()).sum()),
            failed_step: rep.and_then(|r| r.failed_step.clone()),
            error: rep.and_then(|r| r.error.clone()),
            diff: rep.and_then(|r| r.diff.clone()),
            workdir: rep.and_then(|r| r.workdir.as_ref()).map(|w| w.display().to_string()),
            pcaps: rep.and_then(|r| r.workdir.as_deref()).map(pcaps).unwrap_or_default(),
            versions: crate::versions::of_lab(lab),
            repetitions: (repeat > 1).then(|| Repetitions {
                count: runs.len(),
                outcomes: runs.iter().map(|r| r.outcome).collect(),
                durations_s: runs.iter().map(|r| secs(r.duration.as_secs_f64())).collect(),
                differed,
                differences: diffs,
            }),
        }
    }
}

impl Report {
    pub fn new(started: SystemTime, repeat: usize) -> Report {
        Report {
            schema: SCHEMA,
            started: rfc3339(started),
            duration_s: 0.0,
            complete: false,
            repeat,
            summary: Summary::default(),
            scenarios: Vec::new(),
        }
    }

    /// Adds a scenario's entry and its runs' outcomes to the summary.
    pub fn push(&mut self, entry: ScenarioReport, runs: &Tally) {
        let s = &mut self.summary;
        s.passed += runs.passed;
        s.check_failed += runs.check_failed;
        s.drift += runs.drift;
        s.error += runs.error;
        s.runs += runs.total();
        s.scenarios += 1;
        if entry.repetitions.as_ref().is_some_and(|r| r.differed) {
            s.differed += 1;
        }
        if !entry.passed {
            s.not_passed += 1;
        }
        self.scenarios.push(entry);
    }

    /// Writes the report as pretty JSON: to a temp file beside `path`, then renamed over it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new().prefix(".vpnlab-report").tempfile_in(dir)?;
        std::io::Write::write_all(&mut tmp, format!("{json}\n").as_bytes())?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The pcap files in a kept work dir: `pcap/*.pcap`, and for a scenario run in user-mode-linux
/// the guest's work dir inside it (`vpnlab-*/pcap/*.pcap`); sorted.
pub fn pcaps(work: &Path) -> Vec<String> {
    let mut dirs = vec![work.join("pcap")];
    dirs.extend(
        std::fs::read_dir(work)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("vpnlab-"))
            .map(|e| e.path().join("pcap")),
    );
    let mut out: Vec<String> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

/// Seconds rounded to milliseconds (reports need no nanoseconds).
pub fn secs(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// `2026-12-01T23:59:48Z` (UTC, whole seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A report entry for tests of what is built from entries (JUnit, HTML): `id` is `LAB::SCENARIO`.
#[cfg(test)]
pub(crate) fn test_entry(id: &str, outcome: Outcome) -> ScenarioReport {
    let (lab, sc) = id.split_once("::").expect("LAB::SCENARIO");
    ScenarioReport {
        id: id.into(),
        lab: lab.into(),
        scenario: sc.into(),
        outcome,
        passed: outcome == Outcome::Passed,
        backend: Some("native"),
        duration_s: 1.5,
        failed_step: None,
        error: None,
        diff: None,
        workdir: None,
        pcaps: Vec::new(),
        versions: BTreeMap::new(),
        repetitions: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599)), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn an_empty_report_is_valid_json_with_the_schema_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        Report::new(SystemTime::now(), 1).write(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["complete"], false);
        assert_eq!(v["summary"]["runs"], 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }
}
