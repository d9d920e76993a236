//! Finding labs and judging a scenario: the one verdict that `vpnlab run` and `cargo test`
//! share (steps met + transcript equal to the snapshot).

use crate::model::{self, Lab};
use crate::runner::{Options, Timings};
use crate::snapshot;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The labs folder: $VPNLAB_LABS, else ./labs, else the one next to this crate's sources.
pub fn labs_root() -> PathBuf {
    if let Some(p) = std::env::var_os("VPNLAB_LABS") {
        return PathBuf::from(p);
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

/// The verdict on one scenario.
pub struct Outcome {
    pub passed: bool,
    /// What to tell the user (failure reason with the transcript or the diff; or a note).
    pub report: String,
    pub workdir: Option<PathBuf>,
    pub timings: Timings,
    pub backend: crate::backend::Backend,
}

/// Runs a scenario and compares its transcript with the snapshot. `accept` writes the
/// snapshot instead of comparing (never under CI).
pub fn run_checked(lab: &Lab, scenario: &str, opts: &Options, accept: bool) -> Result<Outcome> {
    let backend = crate::backend::choose(lab).map_err(|why| crate::error::EnvError { msg: format!("{} cannot run here: {why}", lab.id), hint: "run `sudo ci/setup`".into() })?;
    let mut run = crate::backend::run(lab, scenario, opts, backend)?;
    let id = format!("{}::{scenario}", lab.id);
    let (passed, mut report) = if let Some(f) = &run.failure {
        let diff = match snapshot::compare(snapshot::stored(&snapshot::path(lab, scenario)).ok().flatten().as_deref(), &run.transcript) {
            snapshot::Verdict::Mismatch(d) => format!("\ndifference from the snapshot:\n{d}"),
            _ => String::new(),
        };
        (false, format!("{id}: FAILED: {f}\n--- transcript ---\n{}{diff}", run.transcript))
    } else if accept && !snapshot::is_ci() {
        let p = snapshot::accept(lab, scenario, &run.transcript)?;
        (true, format!("{id}: snapshot written to {}", p.display()))
    } else if snapshot::stored(&snapshot::path(lab, scenario)).map_err(anyhow::Error::msg)?.is_none() && !snapshot::is_ci() {
        let p = snapshot::accept(lab, scenario, &run.transcript)?;
        (true, format!("{id}: no snapshot yet: the checks passed and this run's transcript was recorded as the first snapshot ({}); review and commit it", p.display()))
    } else {
        match snapshot::check(lab, scenario, &run.transcript) {
            Ok(()) => (true, String::new()),
            Err(msg) => (false, msg),
        }
    };
    if !passed || opts.keep {
        if let Some(w) = run.keep_workdir() {
            report.push_str(&format!("\nwork dir (daemon logs, node files) kept at {}", w.display()));
        }
    }
    Ok(Outcome { passed, report, workdir: run.workdir.clone(), timings: run.timings.clone(), backend })
}
