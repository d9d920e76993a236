//! Tests of the UML backend (real guests, serialised): results, leak checks, modules, the FPU shim.

use super::dirs::{private_base, write_executable, MEMORY_PREFIX, PRIVATE_PREFIX};
use super::guest::session_members;
use super::host::{host_xsave_size, HostConfig, UML_XSTATE_SIZE};
use super::plan::write_alternatives;
use super::*;
use std::sync::Mutex;

/// Guests are serialised: each may use up to a GB and a CPU, and the leak checks below
/// look for any linux.uml process.
pub(super) static SERIAL: Mutex<()> = Mutex::new(());

pub(super) fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn skip() -> bool {
    match available() {
        Ok(()) => false,
        Err(reason) => {
            eprintln!("skipping UML test: {reason}");
            true
        }
    }
}

thread_local! {
    /// (pid = session id of the guest, private dir, memory dir) of this thread's last run.
    static LAST_RUN: std::cell::RefCell<Option<(i32, PathBuf, PathBuf)>> =
        const { std::cell::RefCell::new(None) };
}

/// [`super::run`], noting the guest in `LAST_RUN` for [`assert_clean`].
fn run(job: &UmlJob) -> Result<UmlOutcome> {
    super::run_observed(job, |pid, private, memdir| LAST_RUN.with(|l| *l.borrow_mut() = Some((pid, private.to_owned(), memdir.to_owned()))))
}

pub(super) fn home_uml() -> Vec<std::ffi::OsString> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    std::fs::read_dir(home.join(".uml")).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default()
}

/// Nothing of the last run on this thread is left: no process in its session (zombies
/// included), no process mentioning its private dir, no temp dirs, no mounts, no umid
/// dir in ~/.uml. (Other users of this machine may run their own linux.uml, so the
/// check is scoped to our run rather than `pgrep linux.uml`.)
fn assert_clean(home_uml_before: &[std::ffi::OsString]) {
    let (sid, private, memdir) = LAST_RUN.with(|l| l.borrow_mut().take()).expect("a guest was started");
    assert!(session_members(sid).is_empty(), "left in session {sid}: {:?}", session_members(sid));
    let needle = private.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains(&needle), "process left: {:?} {cmdline}", e.file_name());
    }
    assert!(!private.exists(), "{} left behind", private.display());
    assert!(!memdir.exists(), "{} left behind", memdir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&needle) && !mounts.contains(" hostfs "), "host mounts: {mounts}");
    assert_eq!(home_uml(), home_uml_before, "~/.uml changed");
}

fn sh(script: &str, shared: &Path) -> UmlJob {
    let mut job = UmlJob::new(vec!["/bin/sh".into(), "-c".into(), script.into()], shared);
    job.timeout = Duration::from_secs(120);
    job
}

fn run_ok(job: &UmlJob) -> UmlOutcome {
    let home = home_uml();
    let out = run(job).expect("UML run");
    eprintln!("UML: exit {} boot {:?} total {:?} shim {}\n{}", out.exit_code, out.boot, out.total, out.fpu_shim, out.console);
    assert_clean(&home);
    out
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_trivial_command_times_env_cwd_and_shared_dir() {
    let _g = lock();
    if skip() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    std::fs::create_dir(shared.path().join("sub")).unwrap();
    let mut job = sh(
        "echo \"foo=$FOO\"; echo \"cwd=$(pwd)\"; echo written > result.txt; \
             touch /cannot-write 2>/dev/null && echo root-writable; exit 7",
        shared.path(),
    );
    job.cwd = shared.path().join("sub");
    job.env.push(("FOO".into(), "it's a \"test\"".into()));
    let out = run_ok(&job);
    assert_eq!(out.exit_code, 7);
    assert!(out.console.contains("foo=it's a \"test\""), "{}", out.console);
    assert!(out.console.contains(&format!("cwd={}", shared.path().join("sub").canonicalize().unwrap().display())));
    assert!(!out.console.contains("root-writable"));
    assert!(!out.console.contains("@@vpnlab-uml"));
    assert!(out.boot > Duration::ZERO && out.boot < out.total);
    assert_eq!(std::fs::read_to_string(shared.path().join("sub/result.txt")).unwrap(), "written\n");
    let names: Vec<_> = std::fs::read_dir(shared.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("sub")], "stray files in the shared dir");

    // A trivial command, for the timings.
    let t = run_ok(&UmlJob::new(vec!["/bin/true".into()], shared.path()));
    assert_eq!(t.exit_code, 0);
    eprintln!("TIMING /bin/true: boot {:?}, total {:?}", t.boot, t.total);
}

/// The guest's alternatives hold for every process, whatever its PATH: `/usr/sbin/ipsec`
/// (which puts /usr/sbin first) and a plain `/usr/sbin`-first PATH both get
/// iptables-legacy and see a rule added through the other; the host's links are unchanged.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_alternatives_hold_for_every_path() {
    let _g = lock();
    if skip() || !Path::new("/etc/alternatives/iptables").is_symlink() || !Path::new("/usr/sbin/iptables-legacy").exists() {
        return;
    }
    let host_before = std::fs::read_link("/etc/alternatives/iptables").unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut script = String::from(
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin; echo \"link=$(readlink -f /usr/sbin/iptables)\"; \
             echo \"v=$(iptables -V)\"; iptables -A INPUT -s 192.0.2.7 -j DROP || echo add-failed; \
             echo \"save=$(iptables-save | grep -c 192.0.2.7)\"",
    );
    if Path::new("/usr/sbin/ipsec").exists() {
        script.push_str("; echo \"look=$(/usr/sbin/ipsec look iptables 2>&1 | grep -c '^DROP.*192\\.0\\.2\\.7')\"");
    }
    let mut job = sh(&script, shared.path());
    job.alternatives = vec![
        ("iptables".into(), "/usr/sbin/iptables-legacy".into()),
        ("iptables-save".into(), "/usr/sbin/iptables-legacy-save".into()),
        ("no-such-alternative".into(), "/bin/false".into()),
    ];
    let out = run_ok(&job);
    assert_eq!(out.exit_code, 0, "{}", out.console);
    assert!(out.console.contains("link=/usr/sbin/xtables-legacy-multi"), "{}", out.console);
    assert!(out.console.contains("v=iptables v") && out.console.contains("(legacy)"), "{}", out.console);
    assert!(out.console.contains("save=1"), "{}", out.console);
    assert!(!out.console.contains("add-failed"), "{}", out.console);
    if Path::new("/usr/sbin/ipsec").exists() {
        assert!(out.console.contains("look=1"), "`ipsec look iptables` did not list the rule:\n{}", out.console);
    }
    assert_eq!(std::fs::read_link("/etc/alternatives/iptables").unwrap(), host_before);
}

#[test]
fn write_alternatives_copies_and_changes_links() {
    let host = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/usr/sbin/iptables-nft", host.path().join("iptables")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/vim.basic", host.path().join("editor")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("alt");
    write_alternatives(&dir, host.path(), &[("iptables".into(), "/usr/sbin/iptables-legacy".into()), ("absent".into(), "/x".into())])
        .unwrap();
    assert_eq!(std::fs::read_link(dir.join("iptables")).unwrap(), Path::new("/usr/sbin/iptables-legacy"));
    assert_eq!(std::fs::read_link(dir.join("editor")).unwrap(), Path::new("/usr/bin/vim.basic"));
    assert!(!dir.join("absent").exists() && !dir.join("absent").is_symlink());
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_ppp_device_opens() {
    let _g = lock();
    if skip() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let mut job = sh("exec 3<>/dev/ppp && echo ppp-open-ok; exec 3>&-; grep -E '^ppp_(generic|async) ' /proc/modules", shared.path());
    job.modules = vec!["ppp_generic".into(), "ppp_async".into()];
    let out = run_ok(&job);
    assert_eq!(out.exit_code, 0, "{}", out.console);
    assert!(out.console.contains("ppp-open-ok"));
    assert!(out.console.contains("ppp_async "));
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_network_namespaces_and_veth() {
    let _g = lock();
    if skip() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let mut job = sh(
        "set -e; ip netns add x; ip -n x link add va type veth peer name vb; \
             ip -n x link set va up; ip -n x link set vb up; ip -n x -br link show vb",
        shared.path(),
    );
    job.modules = vec!["veth".into(), "bridge".into()];
    let out = run_ok(&job);
    assert_eq!(out.exit_code, 0, "{}", out.console);
    assert!(out.console.contains("vb@va"), "{}", out.console);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_esp_xfrm_state() {
    let _g = lock();
    if skip() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let mut job = sh(
        "set -e; \
             ip xfrm state add src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x100 \
               enc 'cbc(aes)' 0x$(printf '%032x' 1) auth 'hmac(sha256)' 0x$(printf '%064x' 1); \
             ip xfrm state add src 10.0.0.2 dst 10.0.0.1 proto esp spi 0x101 \
               aead 'rfc4106(gcm(aes))' 0x$(printf '%040x' 1) 128; \
             ip xfrm state list | grep -c '^src' ",
        shared.path(),
    );
    job.modules = vec!["esp4".into()];
    let out = run_ok(&job);
    assert_eq!(out.exit_code, 0, "{}", out.console);
    assert!(out.console.lines().any(|l| l.trim() == "2"), "{}", out.console);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_tun_device() {
    let _g = lock();
    if skip() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let mut job = sh("set -e; ip tuntap add mode tun tun0; ip -br link show tun0", shared.path());
    job.modules = vec!["tun".into()];
    let out = run_ok(&job);
    assert_eq!(out.exit_code, 0, "{}", out.console);
    assert!(out.console.contains("tun0"), "{}", out.console);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_timeout_kills_everything() {
    let _g = lock();
    if skip() {
        return;
    }
    let home = home_uml();
    let shared = tempfile::tempdir().unwrap();
    // Some guest processes (a background child, a pipeline) so there is more to kill.
    let mut job = sh("sleep 1000 & sleep 1000 | cat; echo never", shared.path());
    job.timeout = Duration::from_secs(8);
    let t = Instant::now();
    let err = run(&job).expect_err("must time out");
    let took = t.elapsed();
    eprintln!("timeout error after {took:?}: {err:#}");
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_clean(&home);
    assert_eq!(std::fs::read_dir(shared.path()).unwrap().count(), 0);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_bad_module_is_an_error() {
    let _g = lock();
    if skip() {
        return;
    }
    let home = home_uml();
    let shared = tempfile::tempdir().unwrap();
    let mut job = sh("echo should-not-run", shared.path());
    job.modules = vec!["no_such_module_xyz".into()];
    let err = run(&job).expect_err("module load must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("modprobe"), "{msg}");
    assert!(!msg.contains("should-not-run"), "{msg}");
    assert_clean(&home);
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_init_script_quoting() {
    let host = HostConfig { version: "6.1".into(), modprobe: "/sbin/modprobe".into(), cc: None };
    let d = tempfile::tempdir().unwrap();
    let mut job = UmlJob::new(vec!["/bin/echo".into(), "a'b".into(), "$HOME".into()], d.path());
    job.modules = vec!["esp4".into(), "tun".into(), "drbg".into()];
    let plan = Plan::new(&job, &host).unwrap();
    let s = plan.init_script(Path::new("/tmp/vpnlab-uml-x"));
    assert!(plan.fstab(Path::new("/tmp/vpnlab-uml-x")).contains("none /run/vpnlab-uml hostfs ro,/tmp/vpnlab-uml-x,X-mount.mkdir 0 0"));
    assert!(s.contains(r#"'/bin/echo' 'a'\''b' '$HOME' </dev/null"#), "{s}");
    let mods = &plan.modules;
    assert_eq!(mods.iter().filter(|m| *m == "drbg").count(), 1);
    assert!(mods.iter().position(|m| m == "esp4") > mods.iter().position(|m| m == "drbg"));
    job.env.push(("BAD NAME".into(), "x".into()));
    assert!(Plan::new(&job, &host).is_err());
}
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_program_and_cwd_outside_the_shared_dir() {
    let _g = lock();
    if skip() {
        return;
    }
    // Both below /tmp, which is a fresh tmpfs in the guest: they are re-exposed read-only.
    let shared = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let prog = bin.path().join("prog.sh");
    write_executable(
        &prog,
        "#!/bin/sh\necho \"prog ran in $(pwd) args $*\"\ntouch x 2>/dev/null || echo cwd-read-only\necho out > \"$1/out.txt\"\n",
    )
    .unwrap();
    let mut job =
        UmlJob::new(vec![prog.to_string_lossy().into(), shared.path().canonicalize().unwrap().to_string_lossy().into()], shared.path());
    job.cwd = bin.path().to_path_buf();
    job.timeout = Duration::from_secs(120);
    let out = run_ok(&job);
    assert_eq!(out.exit_code, 0, "{}", out.console);
    assert!(out.console.contains(&format!("prog ran in {}", bin.path().canonicalize().unwrap().display())), "{}", out.console);
    assert!(out.console.contains("cwd-read-only"), "{}", out.console);
    assert!(!bin.path().join("x").exists());
    assert_eq!(std::fs::read_to_string(shared.path().join("out.txt")).unwrap(), "out\n");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_program_straight_in_tmp_keeps_the_guest_tmp_and_the_shared_dir() {
    let _g = lock();
    if skip() {
        return;
    }
    // A vpnlab binary copied to /tmp: showing /tmp itself to the guest would hide its own /tmp
    // and the shared dir below it ("writing exit code" failed before the fix).
    let shared = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let prog = std::path::PathBuf::from(format!("/tmp/vpnlab-uml-test-prog-{}.sh", std::process::id()));
    write_executable(&prog, "#!/bin/sh\necho \"prog $0\"\necho tmp > /tmp/t && cat /tmp/t\necho out > \"$1/out.txt\"\n").unwrap();
    let mut job =
        UmlJob::new(vec![prog.to_string_lossy().into(), shared.path().canonicalize().unwrap().to_string_lossy().into()], shared.path());
    job.timeout = Duration::from_secs(120);
    let out = run(&job);
    let _ = std::fs::remove_file(&prog);
    let out = out.unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.console);
    assert!(out.console.contains("\ntmp\n"), "the guest's /tmp is writable: {}", out.console);
    assert_eq!(std::fs::read_to_string(shared.path().join("out.txt")).unwrap(), "out\n");
    assert!(!Path::new("/tmp/t").exists() || std::fs::read_to_string("/tmp/t").map(|t| t != "tmp\n").unwrap_or(true));
}

/// Helper for `uml_guest_dies_with_its_harness`: only does something when re-invoked by
/// that test (a separate process that the test SIGKILLs while the guest runs).
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_helper_long_running_guest() {
    let Some(shared) = std::env::var_os("VPNLAB_UML_TEST_HELPER") else { return };
    let mut job = sh("touch started; exec sleep 1000", Path::new(&shared));
    job.timeout = Duration::from_secs(600);
    let _ = run(&job);
}

/// Starts this test binary's `test` (a helper that runs a guest whose command touches
/// `started` in `shared`, then sleeps) in a process of its own, as the `*_dies_with_its_harness`
/// tests kill it; returns once the guest's command runs.
pub(super) fn start_helper(test: &str, env: &str, shared: &Path) -> std::process::Child {
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, shared)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while !shared.join("started").exists() {
        if Instant::now() >= until {
            let _ = helper.kill();
            let _ = helper.wait();
            panic!("guest did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    helper
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_guest_dies_with_its_harness() {
    let _g = lock();
    if skip() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let mut helper = start_helper("backend::uml::tests::uml_helper_long_running_guest", "VPNLAB_UML_TEST_HELPER", shared.path());
    // The UML kernel is the helper's child with exe linux.uml; its session holds the rest.
    let helper_pid = helper.id() as i32;
    let kernel = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = st.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)?.parse::<i32>().ok());
            ppid == Some(helper_pid) && std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() == Some(Path::new(UML_KERNEL))
        })
        .expect("UML kernel process of the helper");
    let members = session_members(kernel);
    eprintln!("guest session {kernel}: {} host processes", members.len());
    assert!(members.len() > 2, "{members:?}");
    helper.kill().unwrap(); // SIGKILL: no destructors run, only PDEATHSIG and the pid namespace
    helper.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !session_members(kernel).is_empty() {
        assert!(Instant::now() < until, "left after the harness died: {:?}", session_members(kernel));
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its temp dirs stay until the next run sweeps them (another test's UML run in
    // parallel may already have swept them, so only "gone after a sweep" is asserted).
    let helper_dirs = || -> Vec<PathBuf> {
        [(private_base(), PRIVATE_PREFIX), (PathBuf::from("/dev/shm"), MEMORY_PREFIX)]
            .iter()
            .flat_map(|(d, p)| {
                let prefix = format!("{p}{helper_pid}-");
                std::fs::read_dir(d)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .filter(move |e| e.file_name().unwrap().to_string_lossy().starts_with(&prefix))
            })
            .collect()
    };
    sweep_stale_dirs();
    assert_eq!(helper_dirs(), Vec::<PathBuf>::new());
}

fn has_avx512f() -> bool {
    #[allow(unused_unsafe)]
    let b = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.ebx;
    b & (1 << 16) != 0 && host_xsave_size() > UML_XSTATE_SIZE
}

/// Threads of one guest process share one host process; the FPU shim must keep their
/// AVX-512 state apart across context switches.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root (run as another user, its guests were seen to outlive the test): sudo -E cargo test")]
fn uml_avx512_state_survives_guest_thread_switches() {
    let _g = lock();
    if skip() {
        return;
    }
    let Some(cc) = host_config().unwrap().cc.clone().filter(|_| has_avx512f()) else {
        eprintln!("skipping: host has no AVX-512 (FPU shim not used)");
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let src = shared.path().join("avxstress.c");
    std::fs::write(&src, AVX_STRESS_C).unwrap();
    let bin = shared.path().join("avxstress");
    let st = std::process::Command::new(cc).args(["-O2", "-mavx512f", "-pthread", "-o"]).arg(&bin).arg(&src).status().unwrap();
    assert!(st.success());
    let mut job = UmlJob::new(vec![bin.to_string_lossy().into(), "4".into(), "2".into()], shared.path());
    job.timeout = Duration::from_secs(120);
    let out = run_ok(&job);
    assert!(out.console.contains("TOTAL-BAD 0"), "{}", out.console);
    assert_eq!(out.exit_code, 0);
}

const AVX_STRESS_C: &str = r#"// Threads keep a thread-specific pattern in ymm0-15 (upper halves), zmm16-31 and k1-k7 and
// verify it continuously; a context switch that loses state shows up as a mismatch.
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
static volatile int stop;
static long bad[8], iters[8];
static void *worker(void *arg) {
    long id = (long)arg;
    uint64_t pat[8] __attribute__((aligned(64)));
    for (int i = 0; i < 8; i++) pat[i] = 0x1111111111111111ULL * (id + 1) + i;
    uint64_t kpat = 0x5a ^ id;
    __asm__ volatile(
        "vmovdqu64 (%0), %%zmm16\n vmovdqu64 (%0), %%zmm17\n vmovdqu64 (%0), %%zmm31\n"
        "vmovdqu64 (%0), %%ymm0\n vmovdqu64 (%0), %%ymm15\n kmovq %1, %%k7\n"
        :: "r"(pat), "r"(kpat) : "xmm0", "xmm15", "xmm16", "xmm17", "xmm31", "k7");
    while (!stop) {
        uint64_t m1, m2, m3, m4, kk;
        __asm__ volatile(
            "vpcmpeqq (%5), %%zmm16, %%k1\n kmovq %%k1, %0\n"
            "vpcmpeqq (%5), %%zmm31, %%k1\n kmovq %%k1, %1\n"
            "vpcmpeqq (%5), %%ymm15, %%k1\n kmovq %%k1, %2\n"
            "vpcmpeqq (%5), %%ymm0, %%k1\n kmovq %%k1, %3\n"
            "kmovq %%k7, %4\n"
            : "=r"(m1), "=r"(m2), "=r"(m3), "=r"(m4), "=r"(kk) : "r"(pat) : "k1");
        if (m1 != 0xff || m2 != 0xff || m3 != 0xf || m4 != 0xf || kk != kpat) {
            bad[id]++;
            __asm__ volatile(  /* reload */
                "vmovdqu64 (%0), %%zmm16\n vmovdqu64 (%0), %%zmm31\n vmovdqu64 (%0), %%ymm0\n vmovdqu64 (%0), %%ymm15\n kmovq %1, %%k7\n"
                :: "r"(pat), "r"(kpat) : "xmm0", "xmm15", "xmm16", "xmm31", "k7");
        }
        iters[id]++;
    }
    return 0;
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4, secs = argc > 2 ? atoi(argv[2]) : 3;
    pthread_t t[8];
    for (long i = 0; i < n; i++) pthread_create(&t[i], 0, worker, (void *)i);
    struct timespec ts = { secs, 0 }; nanosleep(&ts, 0);
    stop = 1;
    long tb = 0;
    for (int i = 0; i < n; i++) { pthread_join(t[i], 0); printf("thread %d iters %ld bad %ld\n", i, iters[i], bad[i]); tb += bad[i]; }
    printf("TOTAL-BAD %ld\n", tb);
    return tb != 0;
}
"#;
