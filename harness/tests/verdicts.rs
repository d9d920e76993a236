//! Verdicts you can trust: every scenario gets one of four outcomes (passed, check-failed,
//! drift, error), every selected scenario runs whatever an earlier one did, `vpnlab run` always
//! ends with the summary line, `--report` writes JSON matching REPORT.schema.json and
//! `--repeat` shows what differed between repetitions. Needs root (real namespaces; the
//! missing-return-route cases run real openvpn).
//!
//! The assertions are on outcomes and structure, not on the harness's transcript wording, except
//! for lines the test labs below write themselves.

mod common;
use common::cli::{lab, mixed_labs, vpnlab, Out, GOOD, UNBUILDABLE};
use common::copy_dir;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A transcript that differs on every run (8 random bytes).
const RANDOM: &str = "[lab]\ntitle = \"random\"\n[nodes.a]\n[nodes.b]\n[[links]]\na = \"a:eth0 10.9.0.1/24\"\nb = \"b:eth0 10.9.0.2/24\"\n[scenarios.dice]\nsteps = [\"a: show echo before\", \"a: show od -An -N8 -tx8 /dev/urandom\", \"a: show echo after\"]\n";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_report(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn scenario<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["scenarios"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("{id} in the report: {report:#}"))
}

/// The report validates against REPORT.schema.json.
fn assert_matches_schema(report: &Value) {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(repo().join("REPORT.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("REPORT.schema.json is a valid schema");
    let errors: Vec<String> = validator.iter_errors(report).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "the report does not match REPORT.schema.json:\n{}\n{report:#}", errors.join("\n"));
}

/// `vpnlab: P passed, C check-failed, D drift, E error in X.XXs...`
fn assert_summary(out: &Out, counts: &str) {
    let last = out.last_line();
    assert!(
        last.starts_with(&format!("vpnlab: {counts} in ")),
        "the run ends with the summary `{counts}`; last line: {last:?}\n{}",
        out.text
    );
}

/// A copy of openvpn/missing-return-route (same id, so its snapshots apply) under a temp root.
fn missing_return_route() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("openvpn/missing-return-route");
    copy_dir(&repo().join("labs/openvpn/missing-return-route"), &dst);
    (tmp, dst)
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_fix_replaced_by_a_no_op_is_check_failed_not_drift() {
    let (labs, dir) = missing_return_route();
    let work = tempfile::tempdir().unwrap();
    let file = dir.join("lab.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let no_op = text.replace("\"gateway: ip route add 10.200.0.0/24 via 10.198.0.10\"", "\"gateway: show ip route\"");
    assert_ne!(text, no_op, "the lab has the fix step this test replaces");
    std::fs::write(&file, no_op).unwrap();
    let report = work.path().join("report.json");
    let out = vpnlab(
        &["run", "-q", "--report", &report.to_string_lossy(), "openvpn/missing-return-route::fix-gateway-route"],
        labs.path(),
        work.path(),
    );
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert!(out.text.contains("== openvpn/missing-return-route::fix-gateway-route: check-failed in "), "{}", out.text);
    assert_summary(&out, "0 passed, 1 check-failed, 0 drift, 0 error");
    let r = read_report(&report);
    assert_matches_schema(&r);
    let s = scenario(&r, "openvpn/missing-return-route::fix-gateway-route");
    assert_eq!(s["outcome"], "check-failed", "{s:#}");
    assert_eq!(s["passed"], false);
    // Prelude (5 steps) + the no-op: the first ping after it is the 7th step, index 6.
    assert_eq!(s["failed_step"]["index"], 6, "{s:#}");
    assert_eq!(s["failed_step"]["step"], "client: ping 10.198.0.1 -> reachable", "{s:#}");
    assert!(s["error"].is_null());
    assert!(s["versions"]["openvpn"].as_str().unwrap().starts_with("OpenVPN "), "{s:#}");
    assert_eq!(s["versions"].as_object().unwrap().len(), 1, "only the daemons the lab runs: {s:#}");
    assert_eq!(s["backend"], "native");
    let kept = s["workdir"].as_str().expect("a failed run keeps its work dir");
    assert!(Path::new(kept).join("logs").is_dir());
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn an_edited_unasserted_snapshot_line_is_drift() {
    let (labs, dir) = missing_return_route();
    let work = tempfile::tempdir().unwrap();
    let snap = dir.join("snapshots/fix-gateway-route.snap");
    let text = std::fs::read_to_string(&snap).unwrap();
    // The gateway's `ip route` output: shown, never asserted by a check.
    let target = text.lines().find(|l| l.contains("10.198.0.0/16 dev eth0")).expect("the snapshot shows the gateway's routes").to_string();
    std::fs::write(&snap, text.replacen(&target, &format!("{target} metric 7"), 1)).unwrap();
    let report = work.path().join("report.json");
    let out = vpnlab(
        &["run", "-q", "--report", &report.to_string_lossy(), "openvpn/missing-return-route::fix-gateway-route"],
        labs.path(),
        work.path(),
    );
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert!(out.text.contains("== openvpn/missing-return-route::fix-gateway-route: drift in "), "{}", out.text);
    assert_summary(&out, "0 passed, 0 check-failed, 1 drift, 0 error");
    let r = read_report(&report);
    assert_matches_schema(&r);
    let s = scenario(&r, "openvpn/missing-return-route::fix-gateway-route");
    assert_eq!(s["outcome"], "drift", "{s:#}");
    assert!(s["failed_step"].is_null(), "{s:#}");
    let diff = s["diff"].as_str().expect("a drift carries the diff");
    assert!(diff.contains(&format!("-{target} metric 7")) && diff.contains(&format!("+{target}")), "{diff}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_daemon_that_dies_at_start_is_check_failed_and_the_next_scenario_still_runs() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dies = labs.path().join("t/daemon-exits-at-start");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/daemon-exits-at-start"), &dies);
    lab(labs.path(), "t/good", GOOD);
    let report = work.path().join("report.json");
    // -j 1: one after the other, so the order of the verdicts shows that the next one still ran.
    let out = vpnlab(
        &["run", "-q", "-j", "1", "--report", &report.to_string_lossy(), "t/daemon-exits-at-start", "t/good"],
        labs.path(),
        work.path(),
    );
    assert_eq!(out.code, Some(1), "{}", out.text);
    let dead = out.text.find("== t/daemon-exits-at-start::s: check-failed in ").unwrap_or_else(|| panic!("{}", out.text));
    let next = out.text.find("== t/good::ping: passed in ").unwrap_or_else(|| panic!("the next scenario ran: {}", out.text));
    assert!(dead < next);
    assert_summary(&out, "1 passed, 1 check-failed, 0 drift, 0 error");
    let r = read_report(&report);
    assert_matches_schema(&r);
    let s = scenario(&r, "t/daemon-exits-at-start::s");
    assert_eq!(s["outcome"], "check-failed");
    assert!(s["failed_step"]["index"].is_null(), "a service started with the lab: {s:#}");
    assert_eq!(s["failed_step"]["step"], "start vpn");
    assert_eq!(s["versions"], serde_json::json!({}), "sh is not a VPN daemon");
    assert_eq!(r["summary"]["not_passed"], 1);
    assert_eq!(r["complete"], true);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_run_always_ends_with_the_summary_line_also_after_an_error() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    lab(labs.path(), "t/unbuildable", UNBUILDABLE);
    lab(labs.path(), "t/good", GOOD);
    let out = vpnlab(&["run", "t/unbuildable", "t/good"], labs.path(), work.path());
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert!(out.text.contains("== t/unbuildable::ping: error in "), "{}", out.text);
    assert!(out.text.contains("== t/good::ping: passed in "), "{}", out.text);
    assert_summary(&out, "1 passed, 0 check-failed, 0 drift, 1 error");
    // Only errors: still the summary, still exit 1.
    let out = vpnlab(&["run", "-q", "t/unbuildable"], labs.path(), work.path());
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert_summary(&out, "0 passed, 0 check-failed, 0 drift, 1 error");
    // Bad input is still found before anything runs: exit 2, no summary.
    std::fs::write(labs.path().join("t/good/lab.toml"), GOOD.replace("[nodes.b]", "[nodes.b]\nbogus = 1")).unwrap();
    let out = vpnlab(&["run", "-q", "t/unbuildable", "t/good"], labs.path(), work.path());
    assert_eq!(out.code, Some(2), "{}", out.text);
    assert!(!out.text.contains("== t/unbuildable"), "nothing ran: {}", out.text);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn the_report_of_a_mixed_run_matches_its_schema() {
    // t/good passes, t/dies is check-failed, t/drift drifts (its snapshot edited), t/unbuildable
    // is an error.
    let labs = mixed_labs();
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("sub/../report.json");
    std::fs::create_dir_all(work.path().join("sub")).unwrap();
    let out = vpnlab(
        &["run", "-q", "--report", &report.to_string_lossy(), "t/good", "t/dies", "t/drift", "t/unbuildable"],
        labs.path(),
        work.path(),
    );
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert_summary(&out, "1 passed, 1 check-failed, 1 drift, 1 error");
    let r = read_report(&report);
    assert_matches_schema(&r);
    assert_eq!(r["schema"], "vpnlab-report/1");
    assert_eq!(r["complete"], true);
    assert_eq!(r["repeat"], 1);
    assert_eq!(
        r["summary"],
        serde_json::json!({"passed": 1, "check_failed": 1, "drift": 1, "error": 1, "runs": 4, "scenarios": 4, "differed": 0, "not_passed": 3})
    );
    let ids: Vec<&str> = r["scenarios"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["t/good::ping", "t/dies::s", "t/drift::ping", "t/unbuildable::ping"],
        "in the selection order, whatever order they ended in"
    );
    assert_eq!(scenario(&r, "t/good::ping")["outcome"], "passed");
    assert_eq!(scenario(&r, "t/good::ping")["passed"], true);
    assert!(scenario(&r, "t/good::ping")["workdir"].is_null(), "a passing run keeps nothing");
    assert_eq!(scenario(&r, "t/dies::s")["outcome"], "check-failed");
    let d = scenario(&r, "t/drift::ping");
    assert_eq!(d["outcome"], "drift");
    assert!(d["diff"].as_str().unwrap().contains("-    verdicts-test-line, edited"), "{d:#}");
    let e = scenario(&r, "t/unbuildable::ping");
    assert_eq!(e["outcome"], "error");
    assert!(e["error"].as_str().unwrap().contains("nft"), "{e:#}");
    assert!(e["failed_step"].is_null());
    // The schema is not a rubber stamp: a wrong outcome word or a missing field fails it.
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(repo().join("REPORT.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut bad = r.clone();
    bad["scenarios"][0]["outcome"] = "failed".into();
    assert!(!validator.is_valid(&bad));
    let mut bad = r.clone();
    bad["scenarios"][1].as_object_mut().unwrap().remove("failed_step");
    assert!(!validator.is_valid(&bad));
    let mut bad = r.clone();
    bad["scenarios"][1]["failed_step"] = Value::Null;
    assert!(!validator.is_valid(&bad), "a check-failed scenario names its step");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn repeat_shows_the_lines_that_differed_between_repetitions() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    lab(labs.path(), "t/good", GOOD);
    lab(labs.path(), "t/dice", RANDOM);
    let report = work.path().join("report.json");
    // --accept records the first repetition's transcript; the others are compared with it.
    let out = vpnlab(
        &["run", "-q", "--accept", "--repeat", "3", "--report", &report.to_string_lossy(), "t/good", "t/dice"],
        labs.path(),
        work.path(),
    );
    assert_eq!(out.code, Some(1), "{}", out.text);
    let last = out.last_line();
    assert!(
        last.starts_with("vpnlab: 4 passed, 0 check-failed, 2 drift, 0 error in ")
            && last.ends_with("(3 repetitions each); 1 scenario differed between repetitions"),
        "{last}\n{}",
        out.text
    );
    assert!(
        out.text.contains("== t/dice::dice: the transcript differed between repetitions (2 of 3 differ from repetition 1):"),
        "{}",
        out.text
    );
    assert!(out.text.contains("--- repetition 1\n+++ repetition 2\n"), "{}", out.text);
    assert!(!out.text.contains("the transcript differed between repetitions (0"), "{}", out.text);
    let r = read_report(&report);
    assert_matches_schema(&r);
    assert_eq!(r["repeat"], 3);
    assert_eq!(r["summary"]["runs"], 6);
    assert_eq!(r["summary"]["differed"], 1);
    assert_eq!(r["summary"]["not_passed"], 1);
    let good = scenario(&r, "t/good::ping");
    assert_eq!(good["passed"], true);
    assert_eq!(good["repetitions"]["outcomes"], serde_json::json!(["passed", "passed", "passed"]));
    assert_eq!(good["repetitions"]["differed"], false);
    let dice = scenario(&r, "t/dice::dice");
    assert_eq!(dice["passed"], false);
    assert_eq!(dice["repetitions"]["count"], 3);
    assert_eq!(dice["repetitions"]["outcomes"], serde_json::json!(["passed", "drift", "drift"]));
    assert_eq!(dice["repetitions"]["differed"], true);
    let diffs = dice["repetitions"]["differences"].as_array().unwrap();
    assert_eq!(diffs.iter().map(|d| d["repetition"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
    let d = diffs[0]["diff"].as_str().unwrap();
    // Only the differing line (the random bytes), not its neighbours.
    assert_eq!(d.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).count(), 1, "{d}");
    assert_eq!(d.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).count(), 1, "{d}");
    assert!(!d.contains("before") && !d.contains("after"), "{d}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn an_unwritable_report_path_is_refused_before_anything_runs() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    lab(labs.path(), "t/good", GOOD);
    let out = vpnlab(&["run", "-q", "--report", "/nonexistent-dir/r.json", "t/good"], labs.path(), work.path());
    assert_eq!(out.code, Some(2), "{}", out.text);
    assert!(out.text.contains("/nonexistent-dir/r.json"), "{}", out.text);
    assert!(!out.text.contains("== t/good"), "nothing ran: {}", out.text);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn junit_of_a_mixed_run_has_a_testcase_per_scenario() {
    let labs = mixed_labs();
    let work = tempfile::tempdir().unwrap();
    let junit = work.path().join("junit.xml");
    let out = vpnlab(
        &["run", "-q", "-j", "2", "--junit", &junit.to_string_lossy(), "t/good", "t/dies", "t/drift", "t/unbuildable"],
        labs.path(),
        work.path(),
    );
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert_summary(&out, "1 passed, 1 check-failed, 1 drift, 1 error");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("the JUnit file parses: {e}\n{xml}"));
    let suites: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testsuite")).collect();
    assert_eq!(suites.len(), 1, "{xml}");
    let suite = suites[0];
    assert_eq!(suite.attribute("name"), Some("vpnlab"));
    assert_eq!(suite.attribute("tests"), Some("4"), "{xml}");
    assert_eq!(suite.attribute("failures"), Some("2"), "{xml}");
    assert_eq!(suite.attribute("errors"), Some("1"), "{xml}");
    let cases: Vec<_> = suite.children().filter(|n| n.has_tag_name("testcase")).collect();
    let names: Vec<(&str, &str)> = cases.iter().map(|c| (c.attribute("classname").unwrap(), c.attribute("name").unwrap())).collect();
    assert_eq!(
        names,
        [("t/good", "ping"), ("t/dies", "s"), ("t/drift", "ping"), ("t/unbuildable", "ping")],
        "one testcase per scenario, in selection order"
    );
    for c in &cases {
        let t: f64 = c.attribute("time").expect("a time").parse().unwrap();
        assert!(t >= 0.0);
    }
    let child = |i: usize, tag: &str| cases[i].children().find(|n| n.has_tag_name(tag));
    assert!(child(0, "failure").is_none() && child(0, "error").is_none(), "passed: {xml}");
    let f = child(1, "failure").unwrap_or_else(|| panic!("check-failed is a failure: {xml}"));
    assert_eq!(f.attribute("type"), Some("check-failed"));
    assert!(f.attribute("message").unwrap().contains("`start vpn`"), "the failing step in the message: {xml}");
    let d = child(2, "failure").unwrap_or_else(|| panic!("drift is a failure: {xml}"));
    assert_eq!(d.attribute("type"), Some("drift"));
    assert!(d.attribute("message").unwrap().contains("-    verdicts-test-line, edited"), "the first differing lines in the message: {xml}");
    assert!(d.text().unwrap_or("").contains("+    verdicts-test-line"), "the diff in the body: {xml}");
    let e = child(3, "error").unwrap_or_else(|| panic!("error is an error: {xml}"));
    assert!(e.attribute("message").unwrap().contains("nft"), "{xml}");
    // The daemons' versions as properties (the fixture's daemon is sh: no VPN daemon, none).
    let props: Vec<&str> = suite.descendants().filter(|n| n.has_tag_name("property")).filter_map(|p| p.attribute("name")).collect();
    assert!(props.contains(&"schema") && props.contains(&"repeat"), "{xml}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn parallel_runs_print_each_scenario_together_and_report_in_selection_order() {
    let labs = mixed_labs();
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("r.json");
    let order = ["t/unbuildable", "t/drift", "t/good", "t/dies"];
    let mut args = vec!["run", "-j", "2", "--repeat", "2", "--report"];
    let rp = report.to_string_lossy().to_string();
    args.push(&rp);
    args.extend(order);
    let out = vpnlab(&args, labs.path(), work.path());
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert!(out.last_line().starts_with("vpnlab: 2 passed, 2 check-failed, 2 drift, 2 error in "), "{}", out.text);
    // Every run's lines sit between its header and its verdict, nothing of another run between.
    let lines: Vec<&str> = out.text.lines().collect();
    let mut i = 0;
    let mut runs = 0;
    while i < lines.len() {
        let Some(rest) = lines[i].strip_prefix("== ").filter(|l| l.contains(" backend")) else {
            i += 1;
            continue;
        };
        let id = rest.split(' ').next().unwrap();
        let verdict = (i + 1..lines.len())
            .find(|&j| lines[j].starts_with(&format!("== {id}: ")))
            .unwrap_or_else(|| panic!("a verdict for {id}:\n{}", out.text));
        for l in &lines[i + 1..verdict] {
            assert!(
                !l.starts_with("== ") && (!l.starts_with("  [") || l.starts_with(&format!("  [{id}]"))),
                "{l:?} inside {id}'s block:\n{}",
                out.text
            );
        }
        runs += 1;
        i = verdict + 1;
    }
    assert_eq!(runs, 8, "4 scenarios x 2 repetitions:\n{}", out.text);
    let np = out.text.split("not passed:\n").nth(1).unwrap_or_else(|| panic!("{}", out.text));
    let listed: Vec<&str> =
        np.lines().take_while(|l| l.starts_with("  ")).map(|l| l.split_whitespace().nth(1).unwrap().trim_end_matches(':')).collect();
    assert_eq!(listed, ["t/unbuildable::ping", "t/drift::ping", "t/dies::s"], "not passed, in selection order:\n{}", out.text);
    let r = read_report(&report);
    assert_matches_schema(&r);
    let ids: Vec<&str> = r["scenarios"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["t/unbuildable::ping", "t/drift::ping", "t/good::ping", "t/dies::s"]);
    assert_eq!(r["summary"]["runs"], 8);
    assert_eq!(r["complete"], true);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_bad_job_count_or_junit_path_is_refused_before_anything_runs() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    lab(labs.path(), "t/good", GOOD);
    for bad in [["-j", "0"], ["-j", "two"]] {
        let out = vpnlab(&["run", "-q", bad[0], bad[1], "t/good"], labs.path(), work.path());
        assert_eq!(out.code, Some(2), "{}", out.text);
        assert!(out.text.contains("-j"), "{}", out.text);
        assert!(!out.text.contains("== t/good"), "nothing ran: {}", out.text);
    }
    let out = vpnlab(&["run", "-q", "--junit", "/nonexistent-dir/j.xml", "t/good"], labs.path(), work.path());
    assert_eq!(out.code, Some(2), "{}", out.text);
    assert!(out.text.contains("/nonexistent-dir/j.xml"), "{}", out.text);
    assert!(!out.text.contains("== t/good"), "nothing ran: {}", out.text);
}

#[test]
fn shards_split_the_selection_between_them_each_scenario_once() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    for id in ["t/a", "t/b", "t/c"] {
        lab(labs.path(), id, GOOD);
    }
    let mut ran = Vec::new();
    for k in 1..=2 {
        let report = work.path().join(format!("r{k}.json"));
        let shard = format!("{k}/2");
        let out = vpnlab(
            &["run", "-q", "--accept", "--shard", &shard, "--report", &report.to_string_lossy(), "t/a", "t/b", "t/c"],
            labs.path(),
            work.path(),
        );
        assert_eq!(out.code, Some(0), "{}", out.text);
        let ids: Vec<String> =
            read_report(&report)["scenarios"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
        assert!(out.text.contains(&format!("vpnlab: shard {shard}: {} of 3 scenarios", ids.len())), "{}", out.text);
        ran.push(ids);
    }
    // Numbered in selection order, round robin: 0 and 2 in shard 1, 1 in shard 2.
    assert_eq!(ran, [vec!["t/a::ping", "t/c::ping"], vec!["t/b::ping"]]);
    let out = vpnlab(&["run", "-q", "--shard", "3/2", "t/a"], labs.path(), work.path());
    assert_eq!(out.code, Some(2), "{}", out.text);
    assert!(out.text.contains("expected K/N with 1 <= K <= N"), "{}", out.text);
}
