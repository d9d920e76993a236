//! Self-tests of the harness that need root and real daemons: a snapshot edited by one line
//! fails with a diff, a lab without its fix step fails, and nothing (process, namespace, work
//! dir) survives a run that passes or a `vpnlab run` killed with SIGKILL half-way.

mod common;
use common::copy_dir;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vpnlab::{model, runner, suite};

const LAB: &str = "openvpn/missing-return-route";

fn labs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs")
}

/// All runs of this test binary use a private work root, so leftovers can be checked exactly.
fn work_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        assert!(vpnlab::env::is_root(), "the harness self-tests need root: run `sudo -E cargo test`");
        // Under target/tmp (cargo's scratch dir for integration tests), not /tmp: nothing to leak.
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("selftest-root-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        p
    })
}

/// Options whose work dirs go under [`work_root`] (given to the runner, not through the
/// environment: nothing here calls `set_var`).
fn opts() -> runner::Options {
    runner::Options { work_root: Some(work_root().to_path_buf()), ..Default::default() }
}

/// A copy of a lab folder that a test may edit.
fn copy_lab(id: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(id);
    copy_dir(&labs().join(id), &dst);
    (tmp, dst)
}

/// Processes whose cwd is below `root` (daemons run in their node's directory).
fn procs_under(root: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.starts_with(root) {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                out.push((pid, comm.trim().to_string()));
            }
        }
    }
    out
}

fn netns_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// The namespaces of a run's processes, without the host's: a child seen between its fork and its
/// `setns` into the node (its cwd is already the node's directory) is still in the host's.
fn lab_spaces(procs: impl IntoIterator<Item = u32>) -> HashSet<String> {
    let host = netns_of(std::process::id());
    procs.into_iter().filter_map(netns_of).filter(|n| Some(n) != host.as_ref()).collect()
}

fn all_pids() -> HashSet<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok()).collect()
}

/// Is one of `spaces` still in use by a process that already existed at the kill (`old`)? The
/// kernel reuses a freed namespace's inode number at once, and other tests (or another `cargo
/// test`) create namespaces all the time; but a namespace that reuses a number is newer than the
/// kill, and so is every process in it. A leaked process is older, whatever its cwd.
fn old_process_in(spaces: &HashSet<String>, old: &HashSet<u32>) -> bool {
    all_pids().into_iter().filter(|p| old.contains(p)).any(|p| netns_of(p).is_some_and(|n| spaces.contains(&n)))
}

/// Runs the next vpnlab command (`list`) with this work root: it sweeps dead runs' work dirs.
fn next_command_sweeps(root: &Path) {
    let (labs_copy, _) = copy_lab(LAB);
    let st = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        .arg("list")
        .env("VPNLAB_WORK_ROOT", root)
        .env("VPNLAB_LABS", labs_copy.path())
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn an_edited_snapshot_line_fails_with_a_diff() {
    work_root();
    let (_tmp, dir) = copy_lab(LAB);
    let snap = dir.join("snapshots/fix-gateway-route.snap");
    let text = std::fs::read_to_string(&snap).unwrap();
    let edited = text.replacen("-> reachable (ttl=63)", "-> reachable (ttl=64)", 1);
    assert_ne!(text, edited, "the snapshot has the line this test edits");
    std::fs::write(&snap, edited).unwrap();
    let lab = model::load(&dir).unwrap();
    let out = suite::run_checked(&lab, "fix-gateway-route", &opts(), false);
    assert_eq!(out.outcome, suite::Outcome::Drift, "an edited snapshot line is drift: {}", out.report);
    assert!(out.failed_step.is_none() && out.diff.is_some());
    assert!(out.report.contains("-client$ ping -c2 10.198.0.1  -> reachable (ttl=64)"), "{}", out.report);
    assert!(out.report.contains("+client$ ping -c2 10.198.0.1  -> reachable (ttl=63)"), "{}", out.report);
    // And the unedited copy passes (the test can tell the two apart).
    std::fs::write(&snap, text).unwrap();
    let out = suite::run_checked(&lab, "fix-gateway-route", &opts(), false);
    assert_eq!(out.outcome, suite::Outcome::Passed, "{}", out.report);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn removing_the_fix_step_fails_the_scenario() {
    work_root();
    let (_tmp, dir) = copy_lab(LAB);
    let file = dir.join("lab.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let without = text.replace("  \"gateway: ip route add 10.200.0.0/24 via 10.198.0.10\",\n", "");
    assert_ne!(text, without, "the lab has the fix step this test removes");
    std::fs::write(&file, without).unwrap();
    let lab = model::load(&dir).unwrap();
    let out = suite::run_checked(&lab, "fix-gateway-route", &opts(), false);
    assert_eq!(out.outcome, suite::Outcome::CheckFailed, "{}", out.report);
    let f = out.failed_step.as_ref().expect("the failed check is named");
    assert_eq!(f.step, "client: ping 10.198.0.1 -> reachable");
    assert_eq!(f.index, Some(5), "the 6th of prelude (5) + steps");
    assert!(f.observed.contains("unreachable") && f.expected.contains("reachable"), "{f:?}");
    assert!(
        out.failure_message().starts_with("check-failed: step 6 `client: ping 10.198.0.1 -> reachable`: observed "),
        "{}",
        out.failure_message()
    );
    // The failed run keeps its work dir with the daemon logs, and says where.
    let kept = out.workdir.clone().expect("a failed run keeps its work dir");
    assert!(kept.starts_with(work_root()), "{} is under the work root given in the options", kept.display());
    assert!(kept.join("logs/server.log").is_file() && out.report.contains(&kept.display().to_string()));
    std::fs::remove_dir_all(kept).unwrap();
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_passing_run_leaves_nothing() {
    let root = work_root();
    let lab = model::load(&labs().join(LAB)).unwrap();
    let out = suite::run_checked(&lab, "fix-masquerade", &opts(), false);
    assert_eq!(out.outcome, suite::Outcome::Passed, "{}", out.report);
    assert!(out.workdir.is_none());
    // (other tests of this binary run other scenarios under the same root at the same time)
    let ours = |p: &(u32, String)| {
        std::fs::read_link(format!("/proc/{}/cwd", p.0)).map(|c| c.to_string_lossy().contains("fix-masquerade")).unwrap_or(false)
    };
    let left: Vec<_> = procs_under(root).into_iter().filter(ours).collect();
    assert_eq!(left, vec![], "no process of the lab survives it");
    let leftover: Vec<_> =
        std::fs::read_dir(root).unwrap().flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains("fix-masquerade")).collect();
    assert_eq!(leftover, Vec::<PathBuf>::new(), "the work dir is removed");
}

/// Starts `vpnlab run LAB` with its own work root and waits until both daemons are up.
fn start_half_way(root: &Path) -> (std::process::Child, Vec<(u32, String)>, HashSet<String>) {
    let child = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        // One scenario at a time: the test counts one scenario's two daemons and one work dir.
        .args(["run", "-q", "-j", "1", &labs().join(LAB).to_string_lossy()])
        .env("VPNLAB_WORK_ROOT", root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("both openvpn daemons", Duration::from_secs(20), || procs_under(root).iter().filter(|(_, c)| c == "openvpn").count() == 2);
    let daemons = procs_under(root);
    let spaces = lab_spaces(daemons.iter().map(|(p, _)| *p));
    assert!(!spaces.is_empty());
    (child, daemons, spaces)
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn sigterm_and_sigint_leave_nothing_at_all() {
    work_root();
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let root = tempfile::tempdir().unwrap();
        let (mut child, daemons, spaces) = start_half_way(root.path());
        let old = all_pids();
        unsafe { libc::kill(child.id() as i32, sig) };
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(code), "vpnlab exits 128+signal after cleaning up");
        wait_for("the lab's processes to die", Duration::from_secs(5), || {
            daemons.iter().all(|(p, _)| !Path::new(&format!("/proc/{p}")).exists())
        });
        wait_for("the lab's namespaces to go", Duration::from_secs(5), || !old_process_in(&spaces, &old));
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "no work dir left, without any sweep");
    }
}

/// A panic in the middle of a scenario (here: its progress lines written to a closed stderr)
/// unwinds through the lab's teardown: the run ends and leaves no process. It used to hang
/// forever: the PID namespace was dropped before the daemons, and its init waited for their
/// zombies, which only the daemons' own drops reap.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_panic_half_way_ends_the_run_and_leaves_nothing() {
    work_root();
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        .args(["run", "--trace-debug", "-j", "1", &format!("{}::where-it-dies", labs().join(LAB).to_string_lossy())])
        .env("VPNLAB_WORK_ROOT", root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line, then close the pipe: the next progress line panics.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stderr.take().unwrap()), &mut first).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if ended.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(ended.is_some(), "vpnlab did not end within 60 s of a panic (first line: {first:?})");
    wait_for("the lab's processes to die", Duration::from_secs(5), || procs_under(root.path()).is_empty());
}

/// `-j 2`: two scenarios up at once; SIGTERM stops both, removes both work dirs, and the run
/// still ends with its summary so far.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn sigterm_during_a_parallel_run_leaves_nothing_and_prints_the_summary_so_far() {
    work_root();
    let root = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        .args(["run", "-q", "-j", "2", &labs().join(LAB).to_string_lossy()])
        .env("VPNLAB_WORK_ROOT", root.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Two scenarios' daemons (two openvpn each) at the same time.
    wait_for("two scenarios' daemons at once", Duration::from_secs(30), || {
        procs_under(root.path()).iter().filter(|(_, c)| c == "openvpn").count() >= 4
    });
    let daemons = procs_under(root.path());
    let spaces = lab_spaces(daemons.iter().map(|(p, _)| *p));
    let old = all_pids();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "vpnlab exits 128+signal after cleaning up");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().unwrap_or("");
    assert!(last.starts_with("vpnlab: ") && last.ends_with("(interrupted)"), "the summary so far ends the run: {stdout:?}");
    wait_for("the labs' processes to die", Duration::from_secs(5), || {
        daemons.iter().all(|(p, _)| !Path::new(&format!("/proc/{p}")).exists())
    });
    wait_for("the labs' namespaces to go", Duration::from_secs(5), || !old_process_in(&spaces, &old));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "no work dir left, without any sweep");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn sigkill_half_way_leaves_nothing_once_the_next_command_starts() {
    work_root();
    let root = tempfile::tempdir().unwrap();
    let (mut child, daemons, spaces) = start_half_way(root.path());
    let old = all_pids();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_for("the lab's processes to die with vpnlab", Duration::from_secs(5), || {
        daemons.iter().all(|(p, _)| !Path::new(&format!("/proc/{p}")).exists())
    });
    wait_for("the lab's namespaces to go", Duration::from_secs(5), || !old_process_in(&spaces, &old));
    // The work dir is left (SIGKILL runs no code) until the next vpnlab command sweeps it.
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    next_command_sweeps(root.path());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "the next command swept the dead run's work dir");
}

/// The same lab through user-mode-linux gives the same transcript as natively (same snapshot):
/// one whose negative checks no drop event decides natively (those say where the replies died,
/// which the guest's kernel cannot tell: `@uml` variants), with a firewall, forwarding and a
/// silent negative ping.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn the_uml_backend_matches_the_native_snapshot() {
    work_root();
    if let Err(why) = vpnlab::backend::uml::available() {
        panic!("user-mode-linux is not usable here ({why}); `ci/setup` installs it");
    }
    let root = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        .args(["run", &format!("{}::enable-forwarding", labs().join("openvpn/client-to-client").display())])
        .env("VPNLAB_BACKEND", "uml")
        .env("VPNLAB_WORK_ROOT", root.path())
        .env("CI", "true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("(uml backend)"), "{err}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "nothing left");
}

/// SIGKILL at many points of a run (topology build, daemon start, steps, teardown): once the
/// next vpnlab command has started, nothing of the killed run is left.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn sigkill_at_any_point_leaves_nothing() {
    work_root();
    for delay_ms in [0u64, 3, 10, 25, 50, 100, 200, 350, 500, 700] {
        let root = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
            .args(["run", "-q", &format!("{}::fix-masquerade", labs().join(LAB).display())])
            .env("VPNLAB_WORK_ROOT", root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Follow the run's processes until the kill, so that even short-lived ones are known.
        let mut seen: HashSet<u32> = HashSet::new();
        let mut spaces: HashSet<String> = HashSet::new();
        let until = Instant::now() + Duration::from_millis(delay_ms);
        loop {
            for (p, _) in procs_under(root.path()) {
                seen.insert(p);
                spaces.extend(lab_spaces([p]));
            }
            if Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let old = all_pids();
        child.kill().unwrap();
        child.wait().unwrap();
        wait_for(&format!("processes gone (kill at {delay_ms} ms)"), Duration::from_secs(5), || {
            seen.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()) && procs_under(root.path()).is_empty()
        });
        wait_for(&format!("namespaces gone (kill at {delay_ms} ms)"), Duration::from_secs(5), || !old_process_in(&spaces, &old));
        next_command_sweeps(root.path());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "kill at {delay_ms} ms: the work dir is swept");
    }
}

/// Two `vpnlab run` of the same lab at the same time both pass (anonymous namespaces cannot
/// collide), next to a third lab.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn concurrent_runs_of_the_same_lab_do_not_collide() {
    work_root();
    let root = tempfile::tempdir().unwrap();
    let run = |target: String| {
        Command::new(env!("CARGO_BIN_EXE_vpnlab"))
            .args(["run", "-q", &target])
            .env("VPNLAB_WORK_ROOT", root.path())
            .env("CI", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = vec![
        run(labs().join(LAB).display().to_string()),
        run(labs().join(LAB).display().to_string()),
        run(labs().join("openvpn/basic-server").display().to_string()),
    ];
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}
