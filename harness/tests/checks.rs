//! Checks that cannot pass for the wrong reason, shown on a real lab (real openvpn, real ping;
//! root): each check's negative case fails with what was observed and what was expected.
//! Scenarios are added to a copy of `openvpn/missing-return-route` and run without snapshots.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vpnlab::{model, runner};

fn work_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        assert!(vpnlab::env::is_root(), "these tests need root: run `sudo -E cargo test`");
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("checks-root-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        p
    })
}

/// Options whose work dirs go under [`work_root`] (given to the runner, not through the
/// environment: nothing here calls `set_var`).
fn opts() -> runner::Options {
    runner::Options { work_root: Some(work_root().to_path_buf()), ..Default::default() }
}

/// The lab with `scenarios` (TOML text) appended, loaded from a temp copy.
fn lab_with(scenarios: &str) -> (tempfile::TempDir, model::Lab) {
    work_root();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/openvpn/missing-return-route");
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("openvpn/missing-return-route");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["lab.toml", "basic-udp-server.conf", "basic-udp-client.conf"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let toml = std::fs::read_to_string(dst.join("lab.toml")).unwrap();
    // No prelude: each scenario here says exactly what it runs.
    let start = toml.find("prelude = [").unwrap();
    let end = start + toml[start..].find("]\n").unwrap() + 2;
    let toml = format!("{}{}\n{scenarios}", &toml[..start], &toml[end..]);
    std::fs::write(dst.join("lab.toml"), toml).unwrap();
    let lab = model::load(&dst).unwrap_or_else(|e| panic!("{e}"));
    (tmp, lab)
}

fn run(lab: &model::Lab, scenario: &str) -> runner::Run {
    let r = runner::run(lab, scenario, &opts()).unwrap();
    assert!(!r.error, "{scenario}: an error, not a verdict: {:?}\n{}", r.failure, r.transcript);
    r
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_line_logged_before_a_change_does_not_satisfy_a_check_after_it() {
    let (_t, lab) = lab_with(
        r#"
[scenarios.before-change]
steps = ["gateway: ip route add 10.200.0.0/24 via 10.198.0.10", "log server /Initialization Sequence Completed/ within 300ms"]
[scenarios.since-start]
steps = ["gateway: ip route add 10.200.0.0/24 via 10.198.0.10", "log server /Initialization Sequence Completed/ since start"]
[scenarios.after-restart]
steps = ["restart server", "log server /Initialization Sequence Completed/"]
"#,
    );
    let r = run(&lab, "before-change");
    let f = r.failed_step.expect("the check must fail: the line was logged before the change");
    assert_eq!(f.index, Some(1));
    assert!(f.observed.contains("since the last change"), "{f:?}");
    let r = run(&lab, "since-start");
    assert!(r.failure.is_none(), "{:?}\n{}", r.failure, r.transcript);
    let r = run(&lab, "after-restart");
    assert!(r.failure.is_none(), "a restart is a change, and its own line comes after it: {:?}\n{}", r.failure, r.transcript);
    assert!(r.transcript.contains("server# stop server (SIGTERM)  -> exited (0)"), "{}", r.transcript);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn reachability_checks_fail_both_ways_and_say_what_they_saw() {
    let (_t, lab) = lab_with(
        r#"
[scenarios.expect-reachable]
steps = ["client: ping 10.198.1.12"]
[scenarios.expect-unreachable]
steps = ["client: ping 10.198.0.10 -> unreachable"]
[scenarios.no-route]
steps = ["lanhost: ip route del default", "lanhost: ping 10.200.0.2 -> loss 100%"]
"#,
    );
    let f = run(&lab, "expect-reachable").failed_step.unwrap();
    assert_eq!(f.expected, "reachable");
    assert_eq!(f.observed, "unreachable (100% loss, no reply within 5s)");
    let f = run(&lab, "expect-unreachable").failed_step.unwrap();
    assert_eq!((f.expected.as_str(), f.observed.as_str()), ("unreachable", "reachable (ttl=64)"));
    // A probe that could not be sent is not a measured loss of 100%.
    let f = run(&lab, "no-route").failed_step.unwrap();
    assert_eq!(f.observed, "unreachable (not sent: connect: Network is unreachable)");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn an_impairment_shows_its_counters_and_can_be_asserted() {
    let (_t, lab) = lab_with(
        r#"
[scenarios.acted]
steps = ["wan: impair eth1 drop every 2 udp", "client: ping -c 10 10.198.0.10 -> loss 1%..99%", "wan: impair eth1 off -> acted"]
[scenarios.idle]
steps = ["wan: impair eth1 drop every 2 icmp", "client: ping -c 4 10.198.0.10", "wan: impair eth1 off -> acted"]
"#,
    );
    let r = run(&lab, "acted");
    assert!(r.failure.is_none(), "{:?}\n{}", r.failure, r.transcript);
    assert!(r.transcript.contains("wan# impair eth1 off  -> `drop every 2 udp` had dropped "), "{}", r.transcript);
    // The probes cross wan inside the tunnel (UDP): an ICMP-only impairment sees none of them.
    let r = run(&lab, "idle");
    let f = r.failed_step.expect("an impairment that acted on nothing must fail `-> acted`");
    assert_eq!(f.expected, "acted (on at least one packet)");
    assert!(f.observed.starts_with("acted on 0 of "), "{f:?}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_trace_expectation_is_judged_on_where_the_round_trip_ended() {
    let (_t, lab) = lab_with(
        r#"
[scenarios.right-place]
steps = ["client: trace 10.198.1.12 -> dropped at upstream", "client: trace 10.198.0.10 -> delivered"]
[scenarios.wrong-place]
steps = ["client: trace 10.198.1.12 -> dropped at gateway"]
"#,
    );
    let r = run(&lab, "right-place");
    assert!(r.failure.is_none(), "{:?}\n{}", r.failure, r.transcript);
    let f = run(&lab, "wrong-place").failed_step.expect("the reply dies at upstream, not at the gateway");
    assert_eq!((f.observed.as_str(), f.expected.as_str()), ("dropped at upstream", "dropped at gateway"));
}
