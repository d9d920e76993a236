//! Tests of the warm-guest pool (real guests, serialised with the other UML tests): a guest is
//! reused and nothing of a job is seen by the next, a guest left not idle is retired, a timed
//! out job kills its guest, nothing is left after `shutdown` or when the harness is SIGKILLed.

use super::dirs::{private_base, sweep_stale_dirs, MEMORY_PREFIX, PRIVATE_PREFIX};
use super::pool::{run_with, shutdown, Pooled};
use super::tests::{home_uml, lock, skip, start_helper};
use super::*;

/// The guest server of this test binary: [`uml_pool_server_helper`] re-invoked in the guest.
fn test_server(token: &str) -> (Vec<String>, Vec<(String, String)>) {
    let exe = std::env::current_exe().unwrap().to_string_lossy().into_owned();
    let argv = ["--exact", "backend::uml::pool_tests::uml_pool_server_helper", "--nocapture", "--test-threads=1"];
    (std::iter::once(exe).chain(argv.iter().map(|a| a.to_string())).collect(), vec![("VPNLAB_UML_POOL_TOKEN".into(), token.into())])
}

/// Only does something when started as a pooled guest's server by [`test_server`].
#[test]
fn uml_pool_server_helper() {
    let Ok(token) = std::env::var("VPNLAB_UML_POOL_TOKEN") else { return };
    super::server::serve(&token).unwrap();
}

fn sh(script: &str, shared: &Path) -> UmlJob {
    let mut job = UmlJob::new(vec!["/bin/sh".into(), "-c".into(), script.into()], shared);
    job.timeout = Duration::from_secs(120);
    job
}

fn pooled(job: &UmlJob) -> Pooled {
    let p = run_with(job, &["veth".to_string()], test_server).expect("pooled UML run");
    eprintln!("pooled: booted {} exit {} total {:?}\n{}", p.booted, p.outcome.exit_code, p.outcome.total, p.outcome.console);
    p
}

/// Nothing of this process's guests is left: no guest process (their command lines name their
/// private dirs), no private or memory dir, no host mount, ~/.uml unchanged.
fn assert_pool_clean(home_before: &[std::ffi::OsString]) {
    let me = std::process::id();
    let needle = format!("{PRIVATE_PREFIX}{me}-");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        assert!(!cmdline.contains(&needle), "guest process left: {:?} {cmdline}", e.file_name());
    }
    for (dir, prefix) in [(private_base(), PRIVATE_PREFIX), (PathBuf::from("/dev/shm"), MEMORY_PREFIX)] {
        let mine = format!("{prefix}{me}-");
        let left: Vec<_> =
            std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&mine)).collect();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(" hostfs "), "host mounts: {mounts}");
    assert_eq!(home_uml(), home_before, "~/.uml changed");
}

/// A job leaves a daemon, a process holding a network namespace, a mount and files in every
/// tmpfs; the next job runs in the same guest (its idle check passed) and sees none of them.
/// A job that leaves the guest itself changed (a kernel module loaded) gets its guest retired: the next job boots a fresh one.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn uml_pool_reuses_guests_and_nothing_carries_over() {
    let _g = lock();
    if skip() {
        return;
    }
    let home = home_uml();
    let shared = tempfile::tempdir().unwrap();
    let a = pooled(&sh(
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 &
         unshare -n sh -c 'ip link add v0 type veth peer name v1 && echo up > /tmp/netns-up; exec sleep 1000' </dev/null >/dev/null 2>&1 &
         while [ ! -e /tmp/netns-up ]; do :; done
         mkdir -p /tmp/m && mount -t tmpfs carry /tmp/m && echo mounted
         echo carry > /tmp/carry; echo carry > /run/carry; echo carry > /dev/shm/carry
         echo \"pid $$\"
         for p in /proc/[0-9]*; do echo \"proc $(cat $p/comm)\"; done
         echo result > result.txt",
        shared.path(),
    ));
    assert!(a.booted);
    assert_eq!(a.outcome.exit_code, 0);
    let seen = |out: &UmlOutcome, what: &str| out.console.lines().filter(|l| l.starts_with(what)).map(str::to_string).collect::<Vec<_>>();
    assert!(a.outcome.console.contains("mounted"), "{}", a.outcome.console);
    assert_eq!(seen(&a.outcome, "proc sleep").len(), 2, "both left-behind processes ran: {}", a.outcome.console);
    assert_eq!(std::fs::read_to_string(shared.path().join("result.txt")).unwrap(), "result\n", "written back to the host");

    let b = pooled(&sh(
        "for f in /tmp/carry /run/carry /dev/shm/carry /tmp/m /tmp/netns-up; do [ -e $f ] && echo \"left $f\"; done
         grep carry /proc/self/mountinfo | sed 's/^/left mount /'
         echo \"pid $$\"
         for p in /proc/[0-9]*; do echo \"proc $(cat $p/comm)\"; done",
        shared.path(),
    ));
    assert!(!b.booted, "the guest was reused");
    assert_eq!(b.outcome.exit_code, 0);
    assert_eq!(seen(&b.outcome, "left"), Vec::<String>::new());
    assert!(seen(&b.outcome, "proc sleep").is_empty(), "{}", b.outcome.console);
    // Each job's command is PID 2 of a fresh PID namespace (its init is 1): the same numbers.
    assert_eq!(seen(&a.outcome, "pid "), vec!["pid 2".to_string()]);
    assert_eq!(seen(&b.outcome, "pid "), vec!["pid 2".to_string()]);

    // The negative case: the guest is not idle after this job (a module autoloaded: it stays
    // in the kernel), so it is not reused.
    let c = pooled(&sh("unshare -n ip link add d0 type dummy && echo dummy-added; ls /sys/class/net", shared.path()));
    assert!(!c.booted && c.outcome.console.contains("dummy-added"), "{}", c.outcome.console);
    let d = pooled(&sh("[ -e /sys/module/dummy ] && echo dummy-loaded; echo done", shared.path()));
    assert!(d.booted, "a guest left changed is retired");
    assert!(!d.outcome.console.contains("dummy-loaded"), "{}", d.outcome.console);

    // A job past its deadline: its guest is killed, the job an error; the next boots a guest.
    let mut slow = sh("sleep 1000 & sleep 1000 | cat", shared.path());
    slow.timeout = Duration::from_secs(5);
    let t = Instant::now();
    let err = run_with(&slow, &["veth".to_string()], test_server).expect_err("must time out");
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let e = pooled(&sh("echo after", shared.path()));
    assert!(e.booted && e.outcome.console.contains("after"));

    shutdown();
    assert_pool_clean(&home);
}

/// Helper for `uml_pool_guest_dies_with_its_harness` (a separate process the test SIGKILLs).
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn uml_pool_helper_long_running_guest() {
    let Some(shared) = std::env::var_os("VPNLAB_UML_POOL_TEST_HELPER") else { return };
    let _ = pooled(&sh("echo warm", Path::new(&shared)));
    let mut job = sh("touch started; exec sleep 1000", Path::new(&shared));
    job.timeout = Duration::from_secs(600);
    let _ = run_with(&job, &["veth".to_string()], test_server);
}

/// A harness SIGKILLed while its pooled guest runs a job: the guest (every host process of it)
/// dies with it, and the next run's sweep removes its dirs.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn uml_pool_guest_dies_with_its_harness() {
    let _g = lock();
    if skip() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let mut helper =
        start_helper("backend::uml::pool_tests::uml_pool_helper_long_running_guest", "VPNLAB_UML_POOL_TEST_HELPER", shared.path());
    let helper_pid = helper.id() as i32;
    let kernels: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = st.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)?.parse::<i32>().ok());
            ppid == Some(helper_pid) && std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() == Some(Path::new(UML_KERNEL))
        })
        .collect();
    assert_eq!(kernels.len(), 1, "one warm guest, reused for the second job");
    let kernel = kernels[0];
    assert!(super::guest::session_members(kernel).len() > 2);
    helper.kill().unwrap();
    helper.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !super::guest::session_members(kernel).is_empty() {
        assert!(Instant::now() < until, "left after the harness died: {:?}", super::guest::session_members(kernel));
        std::thread::sleep(Duration::from_millis(10));
    }
    sweep_stale_dirs();
    for (dir, prefix) in [(private_base(), PRIVATE_PREFIX), (PathBuf::from("/dev/shm"), MEMORY_PREFIX)] {
        let theirs = format!("{prefix}{helper_pid}-");
        let left: Vec<_> =
            std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&theirs)).collect();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
}
