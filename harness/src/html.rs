//! `vpnlab run --html FILE`: the run as one self-contained HTML page for people: the summary
//! counts, every scenario with its outcome, the failing step or the error, the transcript with
//! its difference from the snapshot highlighted, each daemon's log (collapsed), the lab's
//! topology as SVG and the `--pcap` files. No script, no external resource (a
//! Content-Security-Policy forbids both): it can be mailed, uploaded as a CI artifact and opened
//! offline.
//!
//! Built from the same data as the JSON report (one source of truth): the [`Report`] and its
//! entries, with the [`Details`] JUnit also gets (the transcript, the daemons' logs), and one
//! SVG per lab ([`Topologies`]).
//!
//! Written with `maud`: its `html!` templates are checked at compile time and escape every
//! spliced value (transcripts and logs carry whatever a daemon printed); only the two trusted
//! pieces (our stylesheet, the SVG that Graphviz or `diagram::builtin_svg` escaped) go in as
//! `PreEscaped`.

use crate::junit::{message, Details};
use crate::model::Lab;
use crate::report::{Report, ScenarioReport};
use crate::suite::{describe_failed_step, Outcome};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use std::collections::BTreeMap;
use std::path::Path;

/// Each lab's topology as SVG and what drew it, by lab id; drawn once per run.
#[derive(Debug, Clone, Default)]
pub struct Topologies(BTreeMap<String, (String, &'static str)>);

impl Topologies {
    pub fn of<'a>(labs: impl IntoIterator<Item = &'a Lab>) -> Topologies {
        Topologies(labs.into_iter().map(|l| (l.id.clone(), crate::diagram::svg(l))).collect())
    }
}

/// One line of the transcript view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// In the snapshot and in this run.
    Same,
    /// Only in this run.
    Added,
    /// Only in the snapshot.
    Removed,
}

/// The transcript with the snapshot's lines that it lacks put back in place: every line of
/// `transcript` in order (marked `Added` where the unified `diff` snapshot -> this run adds it),
/// and the lines the diff removes, where they were. `None` when the diff is not a diff of this
/// transcript (then both are shown apart).
pub fn merge(transcript: &str, diff: &str) -> Option<Vec<(Mark, String)>> {
    let actual = format!("{}\n", transcript.trim_end());
    let lines: Vec<&str> = actual.lines().collect();
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut in_hunk = false;
    for l in diff.lines() {
        if let Some(h) = l.strip_prefix("@@ -") {
            // `@@ -3,7 +3,8 @@`, `@@ -3 +3 @@`, `@@ -5 +4,0 @@` (nothing left: after line 4)
            let new = h.split(' ').nth(1)?.strip_prefix('+')?;
            let (start, count) = match new.split_once(',') {
                Some((s, c)) => (s.parse::<usize>().ok()?, c.parse::<usize>().ok()?),
                None => (new.parse::<usize>().ok()?, 1),
            };
            let first = if count == 0 { start } else { start.checked_sub(1)? };
            if first < at || first > lines.len() {
                return None;
            }
            out.extend(lines[at..first].iter().map(|l| (Mark::Same, l.to_string())));
            at = first;
            in_hunk = true;
            continue;
        }
        if !in_hunk {
            continue; // the `---` / `+++` header
        }
        let (mark, text) = match l.split_at_checked(1) {
            Some((" ", t)) => (Mark::Same, t),
            Some(("+", t)) => (Mark::Added, t),
            Some(("-", t)) => (Mark::Removed, t),
            Some(("\\", _)) => continue, // `\ No newline at end of file`
            _ if l.is_empty() => (Mark::Same, ""),
            _ => return None,
        };
        if mark != Mark::Removed {
            if lines.get(at) != Some(&text) {
                return None;
            }
            at += 1;
        }
        out.push((mark, text.to_string()));
    }
    out.extend(lines[at..].iter().map(|l| (Mark::Same, l.to_string())));
    Some(out)
}

const CSS: &str = r#"
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em; color: #1d1d1f; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin: .2em 0 .5em; }
.meta, .muted { color: #666; }
.counts { display: flex; gap: .8em; margin: 1em 0; flex-wrap: wrap; }
.count { border-radius: 6px; padding: .5em 1em; min-width: 6em; text-align: center; background: #f2f2f2; }
.count .n { display: block; font-size: 1.8em; }
.badge { display: inline-block; white-space: nowrap; border-radius: 4px; padding: .05em .5em; font-weight: 600; font-family: monospace; font-size: .95em; }
.passed { background: #dff3e3; color: #0b5d1e; } .check-failed { background: #fbdcdc; color: #8a1010; }
.drift { background: #fdf0cf; color: #6b4a00; } .error { background: #ead9f3; color: #4f1470; }
table.index { border-collapse: collapse; width: 100%; } table.index td, table.index th { text-align: left; padding: .25em .6em; border-bottom: 1px solid #eee; vertical-align: top; } table.index td:last-child { white-space: nowrap; }
.scenario { border: 1px solid #ddd; border-left-width: 6px; border-radius: 6px; padding: .6em 1em; margin: 1em 0; }
.scenario.passed { border-left-color: #2e9e4b; background: none; color: inherit; } .scenario.check-failed { border-left-color: #c62828; background: none; color: inherit; }
.scenario.drift { border-left-color: #d9a400; background: none; color: inherit; } .scenario.error { border-left-color: #7b1fa2; background: none; color: inherit; }
.why { font-weight: 600; }
.failed-step { background: #fff4f4; border: 1px solid #f0b4b4; border-radius: 4px; padding: .4em .8em; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .1em 1em; margin: .5em 0; font-size: .9em; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; font-family: monospace; overflow-wrap: anywhere; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; border-radius: 4px; padding: .5em; overflow-x: auto; font-size: .85em; line-height: 1.35; }
pre.transcript span { display: block; white-space: pre; min-height: 1.35em; }
pre.transcript .add { background: #d7f5dd; } pre.transcript .add::before { content: "+ "; color: #0b5d1e; }
pre.transcript .del { background: #fbdcdc; text-decoration: line-through; } pre.transcript .del::before { content: "- "; color: #8a1010; }
pre.transcript .same::before { content: "  "; }
pre.diff .add { background: #d7f5dd; } pre.diff .del { background: #fbdcdc; } pre.diff span { display: block; white-space: pre; }
figure.topology { margin: .5em 0; overflow-x: auto; } figure.topology svg { max-width: 100%; height: auto; }
figcaption { color: #666; font-size: .85em; }
details { margin: .3em 0; } summary { cursor: pointer; font-family: monospace; }
"#;

/// The page for `report` (selection order), with `details` by scenario id and the labs' pictures.
pub fn render(report: &Report, details: &BTreeMap<String, Details>, topologies: &Topologies) -> String {
    let s = &report.summary;
    let counts = format!("{} passed, {} check-failed, {} drift, {} error", s.passed, s.check_failed, s.drift, s.error);
    // Labs in the order their first scenario appears, each with its scenarios.
    let mut labs: Vec<(&str, Vec<(usize, &ScenarioReport)>)> = Vec::new();
    for (i, e) in report.scenarios.iter().enumerate() {
        match labs.iter_mut().find(|(l, _)| *l == e.lab) {
            Some((_, v)) => v.push((i, e)),
            None => labs.push((e.lab.as_str(), vec![(i, e)])),
        }
    }
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "vpnlab: " (counts) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "vpnlab run" }
                p.meta {
                    "started " (report.started) " · " (format!("{:.2}", report.duration_s)) " s · "
                    (plural(s.scenarios, "scenario")) ", " (plural(s.runs, "run"))
                    @if report.repeat > 1 { " (" (report.repeat) " repetitions each)" }
                    @if !report.complete { " · " strong { "incomplete: the run is going on or was cut short" } }
                }
                div.counts id="summary" {
                    @for (o, n) in [(Outcome::Passed, s.passed), (Outcome::CheckFailed, s.check_failed), (Outcome::Drift, s.drift), (Outcome::Error, s.error)] {
                        div class={ "count " @if n > 0 { (o.as_str()) } } { span.n { (n) } (o.as_str()) }
                    }
                    @if s.differed > 0 { div.count.drift { span.n { (s.differed) } "differed between repetitions" } }
                }
                p.summary-line { code { "vpnlab: " (counts) } " · " (s.not_passed) " not passed" }
                table.index {
                    thead { tr { th { "outcome" } th { "scenario" } th { "why" } th { "time" } } }
                    tbody {
                        @for (i, e) in report.scenarios.iter().enumerate() {
                            tr {
                                td { span class={ "badge " (e.outcome.as_str()) } { (e.outcome.as_str()) } }
                                td { a href={ "#s-" (i) } { (e.id) } }
                                td { (message(e).unwrap_or_default()) }
                                td { (format!("{:.2} s", e.duration_s)) }
                            }
                        }
                    }
                }
                @for (lab, entries) in &labs {
                    section.lab {
                        h2 { (lab) }
                        @if let Some((svg, how)) = topologies.0.get(*lab) {
                            figure.topology {
                                (PreEscaped(svg.as_str()))
                                figcaption { "topology of " (lab) ", drawn by " (how) }
                            }
                        }
                        @for (i, e) in entries {
                            (scenario(*i, e, details.get(&e.id)))
                        }
                    }
                }
            }
        }
    };
    page.into_string()
}

fn diff_block(diff: &str) -> Markup {
    html! {
        pre.diff {
            @for l in diff.lines() {
                @let cls = if l.starts_with("+++") || l.starts_with("---") { "head" } else if l.starts_with('+') { "add" } else if l.starts_with('-') { "del" } else { "ctx" };
                span class=(cls) { (l) }
            }
        }
    }
}

fn scenario(i: usize, e: &ScenarioReport, det: Option<&Details>) -> Markup {
    let transcript = det.map(|d| d.transcript.as_str()).unwrap_or("");
    let merged = e.diff.as_deref().and_then(|d| merge(transcript, d)).filter(|_| !transcript.is_empty());
    html! {
        article class={ "scenario " (e.outcome.as_str()) } id={ "s-" (i) } {
            h3 { span class={ "badge " (e.outcome.as_str()) } { (e.outcome.as_str()) } " " (e.id) }
            @if let Some(m) = message(e) { p.why { (m) } }
            @if let Some(f) = &e.failed_step {
                div.failed-step {
                    h4 { "Failing step" }
                    p { code { (describe_failed_step(f)) } }
                    dl.facts {
                        dt { "step" } dd { (f.step) }
                        dt { "observed" } dd { (f.observed) }
                        dt { "expected" } dd { (f.expected) }
                    }
                }
            }
            @if let Some(err) = &e.error { h4 { "Error" } pre.error-text { (err) } }
            dl.facts {
                dt { "backend" } dd { (e.backend.unwrap_or("none")) }
                dt { "time" } dd { (format!("{:.3} s", e.duration_s)) }
                @for (d, v) in &e.versions { dt { (d) } dd { (v) } }
                @if let Some(w) = &e.workdir { dt { "work dir" } dd { (w) } }
            }
            @if let Some(m) = &merged {
                h4 { "Transcript (differences from the snapshot marked: " span.badge.passed { "+ this run" } " " span.badge.check-failed { "- snapshot" } ")" }
                pre.transcript {
                    @for (mark, l) in m {
                        @let cls = match mark { Mark::Same => "same", Mark::Added => "add", Mark::Removed => "del" };
                        span class=(cls) { (l) }
                    }
                }
            } @else {
                @if !transcript.is_empty() {
                    h4 { "Transcript" }
                    pre.transcript { @for l in transcript.trim_end().lines() { span.same { (l) } } }
                }
                @if let Some(d) = &e.diff { h4 { "Difference from the snapshot" } (diff_block(d)) }
            }
            @if let Some(r) = e.repetitions.as_ref().filter(|r| r.differed) {
                h4 { "Differences between repetitions" }
                @for d in &r.differences { (diff_block(&d.diff)) }
            }
            @if let Some(d) = det.filter(|d| !d.logs.is_empty()) {
                h4 { "Daemon logs" }
                @for (name, text) in &d.logs {
                    details.log {
                        summary { (name) ".log (" (plural(text.lines().count(), "line")) ")" }
                        pre { (text) }
                    }
                }
            }
            @if !e.pcaps.is_empty() {
                h4 { "Packet captures" }
                ul.pcaps { @for p in &e.pcaps { li { code { (p) } } } }
            }
        }
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Writes the page: to a temp file beside `path`, then renamed over it (a reader never sees half
/// a page; an interrupted run leaves the scenarios so far).
pub fn write(report: &Report, details: &BTreeMap<String, Details>, topologies: &Topologies, path: &Path) -> std::io::Result<()> {
    let page = render(report, details, topologies);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".vpnlab-html").tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, page.as_bytes())?;
    // A page to open in a browser, often as another user than the root that ran the labs.
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests;
