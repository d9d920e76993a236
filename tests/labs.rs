//! One libtest-mimic trial per lab scenario, named `family/recipe::scenario`. Filters,
//! `--list`, `--test-threads` and `--ignored` work as with the built-in harness.
//!
//! A lab whose programs are not installed is ignored with the reason and the package to
//! install, except with CI=true, where it fails: a CI that silently skips labs is worse than a
//! red one. Not being root fails every trial with the fix.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::path::Path;
use vpnlab::{env, model, runner, snapshot, suite};

fn main() {
    vpnlab::backend::guest_main_if_requested();
    snapshot::quiet_insta();
    vpnlab::ns::install_signal_cleanup();
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("labs");
    vpnlab::workdir::sweep();
    let mut trials = Vec::new();
    for dir in suite::discover(&root) {
        let id = model::lab_id(&dir);
        let lab = match model::load(&dir) {
            Ok(lab) => lab,
            Err(e) => {
                let msg = e.to_string();
                trials.push(Trial::test(format!("{id}::lab.toml"), move || Err(Failed::from(msg))));
                continue;
            }
        };
        let lab = std::sync::Arc::new(lab);
        for sc in &lab.scenarios {
            let lab = lab.clone();
            let name = sc.name.clone();
            trials.push(Trial::ignorable_test(format!("{id}::{name}"), move || run_one(&lab, &name)));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn run_one(lab: &model::Lab, scenario: &str) -> Result<Completion, Failed> {
    env::require_root().map_err(|e| Failed::from(e.to_string()))?;
    if let Some(why) = env::unmet(lab) {
        if snapshot::is_ci() {
            return Err(format!("{why} (CI=true: a lab that cannot run is a failure, not a skip)").into());
        }
        return Ok(Completion::ignored_with(why));
    }
    // VPNLAB_PROGRESS=1 prints every step; VPNLAB_PCAP=1 records every link (kept with failed runs).
    let opts = runner::Options { keep: false, progress: std::env::var_os("VPNLAB_PROGRESS").is_some(), pcap: std::env::var_os("VPNLAB_PCAP").is_some() };
    let out = suite::run_checked(lab, scenario, &opts, false).map_err(|e| Failed::from(format!("{e:#}")))?;
    if out.passed {
        if !out.report.is_empty() {
            eprintln!("{}", out.report);
        }
        Ok(Completion::Completed)
    } else {
        Err(out.report.into())
    }
}
