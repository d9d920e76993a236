//! `vpnlab matrix`: every selected scenario against every chosen daemon build, side by side.
//! A column is one resolved `--with NAME=SPEC`; a lab runs in the columns of the daemons its
//! services use (the other daemons stay the host's). Each cell is the scenario's outcome (see
//! `suite::Outcome`) with, when it did not pass, its headline and the first differing lines.

use crate::model::Lab;
use crate::runner::Options;
use crate::suite::{self, Outcome};
use crate::with::{Choice, With};
use serde::Serialize;

/// How many changed lines of a diff a cell shows.
const FIRST_LINES: usize = 6;

#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// `openvpn=2.7.8` (the exact version that ran).
    pub label: String,
    /// As given on the command line.
    pub spec: String,
    /// The first line of the daemon's `--version`.
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub outcome: Outcome,
    /// Why it did not pass (empty when it passed).
    pub headline: String,
    /// The first changed lines of the diff from the snapshot (`-expected` / `+actual`).
    pub first_lines: Vec<String>,
    /// The snapshot it was compared with (a variant, or the base).
    pub snapshot: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: String,
    /// One per column; `None` where the lab does not run that daemon.
    pub cells: Vec<Option<Cell>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub schema: &'static str,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

fn uses(lab: &Lab, c: &Choice) -> bool {
    lab.services.iter().any(|s| crate::versions::daemon_of(&s.argv) == Some(c.component.daemon()))
}

/// The changed lines of a unified diff (no headers, no context).
pub fn changed_lines(diff: &str, n: usize) -> Vec<String> {
    diff.lines()
        .filter(|l| (l.starts_with('-') || l.starts_with('+')) && !l.starts_with("---") && !l.starts_with("+++"))
        .take(n)
        .map(str::to_string)
        .collect()
}

/// Runs the grid. Labs that use none of the columns' daemons are left out.
pub fn run(selected: &[(Lab, Vec<String>)], columns: &[Choice], progress: bool) -> Matrix {
    let mut rows = Vec::new();
    for (lab, scenarios) in selected {
        if !columns.iter().any(|c| uses(lab, c)) {
            continue;
        }
        for s in scenarios {
            let id = format!("{}::{s}", lab.id);
            let mut cells = Vec::new();
            for c in columns {
                if !uses(lab, c) {
                    cells.push(None);
                    continue;
                }
                let opts =
                    Options { keep: false, progress, pcap: false, with: With { choices: vec![c.clone()] }, sink: None, work_root: None };
                eprintln!("== {id} (with {})", c.label());
                let out = suite::run_checked(lab, s, &opts, false);
                eprintln!("== {} [with {}]", out.verdict_line(), c.label());
                let (snap, _) = crate::snapshot::choose(lab, s, &opts.with.variants(lab));
                let mut first = out.diff.as_deref().map(|d| changed_lines(d, FIRST_LINES)).unwrap_or_default();
                if out.outcome == Outcome::Error {
                    first = out.error.as_deref().unwrap_or("").lines().take(FIRST_LINES).map(str::to_string).collect();
                }
                cells.push(Some(Cell {
                    outcome: out.outcome,
                    headline: out.headline.clone(),
                    first_lines: if out.outcome == Outcome::Passed { Vec::new() } else { first },
                    snapshot: snap.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                }));
            }
            rows.push(Row { id, cells });
        }
    }
    Matrix {
        schema: "vpnlab-matrix/1",
        columns: columns.iter().map(|c| Column { label: c.label(), spec: c.spec.clone(), version: c.version.clone() }).collect(),
        rows,
    }
}

impl Matrix {
    pub fn all_passed(&self) -> bool {
        self.rows.iter().flat_map(|r| r.cells.iter().flatten()).all(|c| c.outcome == Outcome::Passed)
    }

    fn word(c: &Option<Cell>) -> String {
        match c {
            None => "-".into(),
            Some(c) if c.snapshot.contains('@') && c.outcome == Outcome::Passed => "passed (variant)".into(),
            Some(c) => c.outcome.to_string(),
        }
    }

    /// The grid as plain text, then the cells that did not pass.
    pub fn text(&self) -> String {
        let w0 = self.rows.iter().map(|r| r.id.len()).max().unwrap_or(8).max(8);
        let ws: Vec<usize> = self.columns.iter().map(|c| c.label.len().max(16)).collect();
        let mut out = format!("{:w0$}", "scenario");
        for (c, w) in self.columns.iter().zip(&ws) {
            out.push_str(&format!("  {:w$}", c.label, w = *w));
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!("{:w0$}", r.id));
            for (c, w) in r.cells.iter().zip(&ws) {
                out.push_str(&format!("  {:w$}", Self::word(c), w = *w));
            }
            out.push('\n');
        }
        for (r, col, c) in self.failures() {
            out.push_str(&format!("\n{} [{}]: {}: {}\n", r.id, col.label, c.outcome, c.headline));
            for l in &c.first_lines {
                out.push_str(&format!("    {l}\n"));
            }
        }
        out
    }

    fn failures(&self) -> Vec<(&Row, &Column, &Cell)> {
        let mut v = Vec::new();
        for r in &self.rows {
            for (c, col) in r.cells.iter().zip(&self.columns) {
                if let Some(c) = c.as_ref().filter(|c| c.outcome != Outcome::Passed) {
                    v.push((r, col, c));
                }
            }
        }
        v
    }

    /// MATRIX.md: how to regenerate it, the exact versions, the grid, the cells that did not pass.
    pub fn markdown(&self, with_args: &[String]) -> String {
        let mut out = String::from("# vpnlab matrix: labs x daemon versions\n\n");
        let args: Vec<String> = with_args.iter().map(|a| format!("--with {a}")).collect();
        out.push_str(&format!("Regenerate: `vpnlab matrix {} --quiet` (writes this file and `matrix.json`).\n", args.join(" ")));
        out.push_str("A lab runs in the columns of the daemons its services use; `-`: not used by the lab. ");
        out.push_str("`passed (variant)`: equal to the lab's snapshot variant for that minor version (`snapshots/<scenario>@<daemon>-<minor>.snap`).\n\n");
        out.push_str("| column | SPEC | `--version` of the build that ran |\n|---|---|---|\n");
        for c in &self.columns {
            out.push_str(&format!("| {} | `{}` | `{}` |\n", c.label, c.spec, c.version));
        }
        out.push_str("\n| scenario |");
        for c in &self.columns {
            out.push_str(&format!(" {} |", c.label));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(self.columns.len()));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!("| {} |", r.id));
            for c in &r.cells {
                out.push_str(&format!(" {} |", Self::word(c)));
            }
            out.push('\n');
        }
        let fails = self.failures();
        let total = self.rows.iter().flat_map(|r| r.cells.iter().flatten()).count();
        out.push_str(&format!("\n{} of {total} cells passed.\n", total - fails.len()));
        if !fails.is_empty() {
            out.push_str("\n## Cells that did not pass\n");
            for (r, col, c) in fails {
                out.push_str(&format!("\n### {} with {}\n\n{}: {}\n", r.id, col.label, c.outcome, c.headline.replace('|', "\\|")));
                if !c.first_lines.is_empty() {
                    out.push_str("\n```diff\n");
                    for l in &c.first_lines {
                        out.push_str(&format!("{l}\n"));
                    }
                    out.push_str("```\n");
                }
            }
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn changed_lines_skip_headers_and_context() {
        let d = "--- snapshot (expected)\n+++ this run (actual)\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n d\n";
        assert_eq!(super::changed_lines(d, 6), ["-b", "+c"]);
    }
}
