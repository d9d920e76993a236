//! `vpnlab run --junit FILE`: JUnit XML for CI systems that read test results (GitHub Actions
//! reporters, GitLab, Jenkins), from vpnlab itself, beside the JSON report. One `<testsuite
//! name="vpnlab">`, one `<testcase classname="LAB" name="SCENARIO" time="...">` per scenario in
//! selection order; a `<failure>` for check-failed and drift (and for transcripts that differed
//! between `--repeat` runs), an `<error>` for error, with the failing step or the first differing
//! lines in `message` and the details (transcript, diff, kept work dir) in the body; the
//! daemons' versions as properties (of the suite, and of each test case for its own lab).
//!
//! Written with `quick-junit` (the crate cargo-nextest writes its JUnit with): it knows the
//! element and attribute names CI readers expect, escapes XML and drops characters XML cannot
//! carry (control characters, ANSI escapes) — a transcript may hold anything a daemon printed.

use crate::report::{Report, ScenarioReport};
use crate::suite::{describe_failed_step, Outcome};
use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What JUnit readers (and the HTML report) show beyond the report entry: the body of a failure
/// (the verdict's full report: transcript, diff, work dir), the transcript (as the test case's
/// system-out) and, for the HTML report, every daemon's log.
#[derive(Debug, Clone, Default)]
pub struct Details {
    pub body: String,
    pub transcript: String,
    /// (service, log text), from [`crate::suite::Checked::logs`].
    pub logs: Vec<(String, String)>,
}

/// How many differing lines a drift's message carries.
const DIFF_LINES_IN_MESSAGE: usize = 4;

/// The first lines a unified diff adds or removes (`-old`, `+new`), without its headers.
pub fn first_changed_lines(diff: &str, n: usize) -> Vec<&str> {
    diff.lines()
        .filter(|l| (l.starts_with('-') && !l.starts_with("---")) || (l.starts_with('+') && !l.starts_with("+++")))
        .take(n)
        .collect()
}

/// The one-line message of a scenario that did not pass (`None` when it passed).
pub fn message(e: &ScenarioReport) -> Option<String> {
    let diff_head = |d: &str| first_changed_lines(d, DIFF_LINES_IN_MESSAGE).iter().map(|l| l.trim_end()).collect::<Vec<_>>().join(" | ");
    Some(match e.outcome {
        Outcome::Passed => {
            let r = e.repetitions.as_ref().filter(|r| r.differed)?;
            let first = r.differences.first().map(|d| diff_head(&d.diff)).unwrap_or_default();
            format!(
                "the transcript differed between repetitions ({} of {} differ from repetition 1): {first}",
                r.differences.len(),
                r.count
            )
        }
        Outcome::CheckFailed => match &e.failed_step {
            Some(f) => format!("check-failed: {}", describe_failed_step(f)),
            None => format!("check-failed: {}", e.error.as_deref().unwrap_or("a check did not hold")),
        },
        Outcome::Drift => match &e.diff {
            Some(d) => format!("drift: every check held, but the transcript differs from the snapshot: {}", diff_head(d)),
            None => "drift: every check held, but there is no snapshot".to_string(),
        },
        Outcome::Error => {
            format!("error: {}", e.error.as_deref().and_then(|s| s.lines().next()).unwrap_or("the scenario could not be run"))
        }
    })
}

/// The JUnit report of a run: `report`'s scenarios (selection order), with `details` by id.
pub fn build(report: &Report, details: &BTreeMap<String, Details>) -> quick_junit::Report {
    let mut suite = TestSuite::new("vpnlab");
    let mut versions: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &report.scenarios {
        for (d, v) in &e.versions {
            versions.entry(d.as_str()).or_insert(v.as_str());
        }
    }
    suite.add_property(Property::new("schema", crate::report::SCHEMA));
    suite.add_property(Property::new("repeat", report.repeat.to_string()));
    suite.add_property(Property::new("complete", report.complete.to_string()));
    for (d, v) in &versions {
        suite.add_property(Property::new(*d, *v));
    }
    for e in &report.scenarios {
        let det = details.get(&e.id).cloned().unwrap_or_default();
        let status = match message(e) {
            None => TestCaseStatus::success(),
            Some(msg) => {
                let kind = if e.outcome == Outcome::Error { NonSuccessKind::Error } else { NonSuccessKind::Failure };
                let mut st = TestCaseStatus::non_success(kind);
                let ty = if e.outcome == Outcome::Passed { "differed" } else { e.outcome.as_str() };
                let mut body = det.body.clone();
                if let Some(r) = e.repetitions.as_ref().filter(|r| r.differed) {
                    for d in &r.differences {
                        body.push_str(&format!("\n{}", d.diff));
                    }
                }
                st.set_message(msg).set_type(ty).set_description(body);
                st
            }
        };
        let mut tc = TestCase::new(e.scenario.as_str(), status);
        tc.set_classname(e.lab.as_str());
        tc.set_time(Duration::from_secs_f64(e.duration_s.max(0.0)));
        if let Some(b) = e.backend {
            tc.add_property(Property::new("backend", b));
        }
        for (d, v) in &e.versions {
            tc.add_property(Property::new(d.as_str(), v.as_str()));
        }
        if let Some(w) = &e.workdir {
            tc.add_property(Property::new("workdir", w.as_str()));
        }
        if !det.transcript.is_empty() {
            tc.set_system_out(det.transcript.as_str());
        }
        suite.add_test_case(tc);
    }
    suite.set_time(Duration::from_secs_f64(report.duration_s.max(0.0)));
    let mut r = quick_junit::Report::new("vpnlab");
    r.set_time(Duration::from_secs_f64(report.duration_s.max(0.0)));
    r.add_test_suite(suite);
    r
}

/// Writes the JUnit XML: to a temp file beside `path`, then renamed over it (a reader never
/// sees half a file; an interrupted run leaves the scenarios so far).
pub fn write(report: &Report, details: &BTreeMap<String, Details>, path: &Path) -> std::io::Result<()> {
    let xml = build(report, details).to_string().map_err(std::io::Error::other)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".vpnlab-junit").tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, xml.as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::FailedStep;

    fn entry(id: &str, outcome: Outcome) -> ScenarioReport {
        let mut e = crate::report::test_entry(id, outcome);
        e.versions = BTreeMap::from([("openvpn".to_string(), "OpenVPN 2.6.14 x86_64-pc-linux-gnu".to_string())]);
        e
    }

    #[test]
    fn messages_name_the_step_or_the_first_differing_lines() {
        let mut cf = entry("a/b::c", Outcome::CheckFailed);
        cf.failed_step = Some(FailedStep {
            index: Some(6),
            step: "client: ping 10.198.0.1 -> reachable".into(),
            observed: "unreachable (100% loss)".into(),
            expected: "reachable".into(),
        });
        assert_eq!(
            message(&cf).unwrap(),
            "check-failed: step 7 `client: ping 10.198.0.1 -> reachable`: observed unreachable (100% loss), expected reachable"
        );
        let mut d = entry("a/b::d", Outcome::Drift);
        d.diff = Some("--- snapshot (expected)\n+++ this run (actual)\n@@ -3 +3 @@\n ctx\n-    old line\n+    new line\n".into());
        assert_eq!(
            message(&d).unwrap(),
            "drift: every check held, but the transcript differs from the snapshot: -    old line | +    new line"
        );
        let mut e = entry("a/b::e", Outcome::Error);
        e.error = Some("nft refused the ruleset\nline 2".into());
        assert_eq!(message(&e).unwrap(), "error: nft refused the ruleset");
        assert_eq!(message(&entry("a/b::p", Outcome::Passed)), None);
    }

    #[test]
    fn control_characters_in_a_transcript_still_give_well_formed_xml() {
        let mut r = Report::new(std::time::SystemTime::now(), 1);
        let mut e = entry("a/b::e", Outcome::Error);
        e.error = Some("bad \u{1b}[31mred\u{1b}[0m <&> \u{7} \"quoted\"".into());
        r.push(e, &crate::suite::Tally { error: 1, ..Default::default() });
        let details = BTreeMap::from([(
            "a/b::e".to_string(),
            Details { body: "body \u{0} <tag>".into(), transcript: "t\u{8}x ]]>".into(), ..Default::default() },
        )]);
        let xml = build(&r, &details).to_string().unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|err| panic!("{err}\n{xml}"));
        let tc = doc.descendants().find(|n| n.has_tag_name("testcase")).unwrap();
        assert_eq!(tc.attribute("classname"), Some("a/b"));
        assert_eq!(tc.attribute("name"), Some("e"));
        let err = tc.children().find(|n| n.has_tag_name("error")).unwrap();
        assert!(err.attribute("message").unwrap().contains("<&>"), "{xml}");
        assert!(err.text().unwrap_or("").contains("<tag>"), "{xml}");
    }
}
