//! `vpnlab bench openvpn/missing-return-route`: the lab against a plain shell script of the same
//! steps (`missing-return-route.sh`: ip, openssl, openvpn, `ping -c2 -W1`) in the same run, and
//! the time of each step of `where-it-dies` (its traces, its negative pings).

use super::{fmt3, ms, stats};
use crate::model::{self, step::Action};
use crate::runner::{Live, Options};
use anyhow::{bail, Context, Result};
use std::fmt::Write;
use std::process::Command;
use std::time::{Duration, Instant};

pub const LAB: &str = "openvpn/missing-return-route";
const SCRIPT: &str = include_str!("missing-return-route.sh");

/// One run of the script: (total, until the last check).
fn script_once(lab: &model::Lab) -> Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("missing-return-route.sh");
    std::fs::write(&path, SCRIPT)?;
    let mut cmd = Command::new("unshare");
    // vpnlab blocks the signals it takes on one thread; the script's `kill` must reach openvpn.
    // SAFETY: only an async-signal-safe sigprocmask between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            crate::ns::unblock_all_signals();
            Ok(())
        });
    }
    let out = cmd
        .args(["--mount", "--propagation", "private", "bash"])
        .arg(&path)
        .arg(std::fs::canonicalize(&lab.dir).with_context(|| format!("{}", lab.dir.display()))?)
        .output()
        .context("unshare bash missing-return-route.sh")?;
    if !out.status.success() {
        bail!("the shell script failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let t: Vec<u64> = String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if t.len() != 3 {
        bail!("bad timestamps from the script: {:?}", String::from_utf8_lossy(&out.stdout));
    }
    Ok((Duration::from_nanos(t[2] - t[0]), Duration::from_nanos(t[1] - t[0])))
}

/// The markdown sections (also printed to stderr line by line).
pub fn sections(lab: &model::Lab, reps: usize) -> Result<String> {
    let mut md = String::new();
    let mut say = |l: String| {
        eprintln!("{l}");
        let _ = writeln!(md, "{l}");
    };
    say(format!("\n## {LAB}::fix-gateway-route against a plain shell script\n\nThe same run, alternating: vpnlab (native) and `harness/src/bench/missing-return-route.sh`, the prelude and steps by hand (ip, openssl, openvpn, `ping -c2 -W1`), both including build and teardown. Phases are vpnlab's medians.\n"));
    say("| | total | build | daemons | steps | teardown |".into());
    say("|---|---|---|---|---|---|".into());
    let (mut v, mut s, mut s_checks) = (vec![], vec![], vec![]);
    let mut ph: [Vec<Duration>; 4] = Default::default();
    for _ in 0..reps {
        let t = Instant::now();
        let r = crate::backend::run(lab, "fix-gateway-route", &Options::default(), crate::backend::Backend::Native)?;
        v.push(t.elapsed());
        if let Some(f) = &r.failure {
            bail!("{LAB}::fix-gateway-route failed during the benchmark: {f}");
        }
        for (i, d) in [r.timings.build, r.timings.daemons, r.timings.steps, r.timings.teardown].into_iter().enumerate() {
            ph[i].push(d);
        }
        let (total, checks) = script_once(lab)?;
        s.push(total);
        s_checks.push(checks);
    }
    let [b, d, st, td] = ph;
    let (vs, ss) = (stats(v), stats(s.clone()));
    say(format!("| vpnlab | {} | {} | {} | {} | {} |", fmt3(vs), ms(stats(b).1), ms(stats(d).1), ms(stats(st).1), ms(stats(td).1)));
    say(format!("| shell script | {} | | | until the last check: {} | |", fmt3(ss), ms(stats(s_checks).1)));
    say(format!("\nvpnlab / script (medians): {:.2}x\n", vs.1.as_secs_f64() / ss.1.as_secs_f64()));
    md.push_str(&steps_section(lab, reps)?);
    Ok(md)
}

/// Every step of `where-it-dies` timed (`Live::step`), min / median / max over `reps` runs.
fn steps_section(lab: &model::Lab, reps: usize) -> Result<String> {
    let mut md = format!("\n## {LAB}::where-it-dies step by step\n\nEach step's wall time (the runner's `Live::step`): negative pings end when the kernel reports every probe dropped inside the lab (else after 1 s of silence); traces observe every node's hooks and the kernel's drops.\n\n| step | time |\n|---|---|\n");
    let mut times: Vec<(String, Vec<Duration>)> = Vec::new();
    let opts = Options::default();
    for _ in 0..reps {
        let mut live = Live::start(lab, "where-it-dies", &opts)?;
        let mut i = 0;
        while let Some(step) = live.remaining().first().copied() {
            let shown = matches!(step.action, Action::Trace { .. } | Action::Ping { .. });
            let t = Instant::now();
            if live.step().is_none() {
                break;
            }
            if shown {
                if times.len() <= i {
                    times.push((step.text.clone(), Vec::new()));
                }
                times[i].1.push(t.elapsed());
                i += 1;
            }
        }
        if let Some(f) = live.failure() {
            bail!("{LAB}::where-it-dies failed during the benchmark: {f}");
        }
        live.finish();
    }
    for (text, v) in times {
        let line = format!("| `{text}` | {} |", fmt3(stats(v)));
        eprintln!("{line}");
        let _ = writeln!(md, "{line}");
    }
    Ok(md)
}
