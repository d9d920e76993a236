//! Inside a pooled guest ([`super::pool`]): the guest server, started by the guest's init as
//! `vpnlab __vpnlab guest-server TOKEN` with the console as stdin. It reads one job a line
//! (JSON, [`Spec`]), runs it, and answers with marker lines on the console:
//! `@@vpnlab-pool:TOKEN:exit:ID:RC@@` when the job's process ended, then
//! `@@vpnlab-pool:TOKEN:idle:ID@@` once the guest is back to its idle state, or
//! `@@vpnlab-pool:TOKEN:dirty:ID:REASON@@` (the host then kills the guest). `quit` ends it (the
//! init powers the guest off).
//!
//! Each job runs as PID 1 of a PID namespace of its own and in a mount namespace of its own
//! (private propagation): fresh tmpfs on `/tmp`, `/run`, `/var/run`, `/dev/shm` and the job's
//! `tmpfs` dirs, a fresh `/proc` and devpts instance, the shared dir (rw) and the re-exposed
//! dirs (ro) through hostfs. When the job's command exits, that init exits, so the kernel kills
//! everything left in the job's PID namespace, and the mount namespace goes with its last
//! process. The idle check then makes sure nothing escaped: no process but init, the server and
//! the kernel's own, the server's mounts, the guest's network devices and the loaded kernel
//! modules as before the first job.
//! (A network namespace is reachable only through a process, an open fd or an nsfs mount: with
//! no process left and no mount added, none of a job's is left to the next.)

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One job for the guest server (a line of JSON on the console).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Spec {
    pub(super) id: String,
    pub(super) argv: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) cwd: PathBuf,
    /// Mounted read-write (hostfs) at the same path.
    pub(super) shared: PathBuf,
    /// Host dirs hidden by the job's tmpfs mounts, mounted read-only again.
    pub(super) reexpose: Vec<PathBuf>,
    /// A program folder that is a tmpfs root of the job (a binary straight in /tmp), shown at
    /// [`super::plan::GUEST_PROGRAM_DIR`] (`argv[0]` then names it there).
    #[serde(default)]
    pub(super) program_dir: Option<PathBuf>,
    /// Extra dirs covered with an empty tmpfs.
    pub(super) tmpfs: Vec<PathBuf>,
    /// The host path of the guest's private dir (mounted again at [`super::GUEST_PRIVATE`]).
    pub(super) private: PathBuf,
    /// Modules to load first (when not loaded yet), and the modprobe to load them with.
    pub(super) modules: Vec<String>,
    pub(super) modprobe: PathBuf,
}

/// How long the guest may take to be idle again after a job (processes dying, helpers ending).
const SETTLE: Duration = Duration::from_secs(10);

/// Serves jobs from stdin until EOF or `quit` (see the module docs).
pub(crate) fn serve(token: &str) -> Result<()> {
    let marker = |what: &str| format!("@@vpnlab-pool:{token}:{what}@@");
    raw_input(0);
    let _pinned = pin(PIN_DIRS);
    let idle = Idle::take();
    say(&marker("ready"));
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text == "quit" {
            return Ok(());
        }
        if text.is_empty() {
            continue;
        }
        let spec: Spec = match serde_json::from_str(text) {
            Ok(s) => s,
            Err(e) => {
                say(&marker(&format!("bad:{e}")));
                continue;
            }
        };
        match run_job(&spec) {
            Ok(rc) => say(&marker(&format!("exit:{}:{rc}", spec.id))),
            Err(e) => say(&marker(&format!("fail:{}:{}", spec.id, format!("{e:#}").replace(['\n', '@'], " ")))),
        }
        match idle.settle(Instant::now() + SETTLE) {
            Ok(()) => say(&marker(&format!("idle:{}", spec.id))),
            Err(why) => say(&marker(&format!("dirty:{}:{}", spec.id, why.replace(['\n', '@'], " ")))),
        }
    }
}

/// The programs and libraries the labs run (pluto, whack, certutil, openvpn, pppd, ip, the
/// libraries they link), kept open by the server for the guest's life: hostfs frees an inode,
/// and its page cache with it, as soon as nothing uses it (`drop_inode =
/// generic_delete_inode`), so without a reference every exec reads its program and libraries
/// from the host again. An open file keeps them cached across jobs (the cache only fills as
/// jobs read them). vpnlab itself is kept by the server's own mapping.
const PIN_DIRS: &[&str] = &["/usr/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu/nss", "/usr/libexec/ipsec", "/usr/sbin", "/usr/bin"];

fn pin(dirs: &[&str]) -> Vec<std::fs::File> {
    // Up to the hard limit of open files (a few thousand are needed).
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let mut files = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else { continue };
        for e in rd.flatten() {
            // Regular files only (following symlinks): opening a directory or device is no use.
            if std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
                if let Ok(f) = std::fs::File::open(e.path()) {
                    files.push(f);
                }
            }
        }
    }
    files
}

/// A marker on a line of its own (job output may have ended without a newline).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "\n{line}\n");
    let _ = out.flush();
}

/// The console delivers input bytes as written: no echo, no line editing or signals (output
/// processing is left as it was, the same for every job).
fn raw_input(fd: i32) {
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return;
        }
        t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        t.c_iflag &= !(libc::IGNBRK | libc::BRKINT | libc::PARMRK | libc::ISTRIP | libc::INLCR | libc::IGNCR | libc::ICRNL | libc::IXON);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
    }
}

/// Runs `spec` as PID 1 of a new PID namespace with a mount namespace of its own; returns the
/// command's exit code (128+N for signal N).
fn run_job(spec: &Spec) -> Result<i32> {
    // Everything the children need, prepared before fork (this process has one thread).
    let argv: Vec<CString> = spec.argv.iter().map(|a| CString::new(a.as_bytes())).collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if !spec.env.iter().any(|(n, _)| std::ffi::OsStr::new(n) == k) {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(CString::new(kv)?);
        }
    }
    for (k, v) in &spec.env {
        env.push(CString::new(format!("{k}={v}"))?);
    }
    let mounts = mounts_for(spec);
    let cwd = CString::new(spec.cwd.as_os_str().as_bytes())?;
    let load: Vec<&String> = spec.modules.iter().filter(|m| !Path::new("/sys/module").join(m.replace('-', "_")).exists()).collect();
    if !load.is_empty() {
        let st = std::process::Command::new(&spec.modprobe)
            .args(["-d", &format!("{}/modroot", super::GUEST_PRIVATE), "-a"])
            .args(&load)
            .stdin(std::process::Stdio::null())
            .status()
            .context("modprobe")?;
        if !st.success() {
            bail!("modprobe {load:?} failed ({st})");
        }
    }
    // A fork into a new PID namespace (clone3: unshare(CLONE_NEWPID) works once per process).
    let mut ca = super::guest::CloneArgs { flags: libc::CLONE_NEWPID as u64, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let pid =
        unsafe { libc::syscall(libc::SYS_clone3, &mut ca as *mut super::guest::CloneArgs, std::mem::size_of::<super::guest::CloneArgs>()) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("clone3(CLONE_NEWPID)");
    }
    let pid = pid as libc::pid_t;
    if pid == 0 {
        let code = match job_init(&mounts, &argv, &env, &cwd) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("vpnlab guest server: {e:#}");
                125
            }
        };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    loop {
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waitpid");
        }
    }
    // What the job wrote to its shared dir reaches the host before the host is told it ended
    // (its hostfs mount went with its mount namespace, which writes back too: belt and braces).
    unsafe { libc::sync() };
    Ok(code_of(status))
}

fn code_of(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// A mount of the job's namespace: (source, target, fstype, flags, data).
type Mount = (CString, CString, CString, libc::c_ulong, CString);

fn mounts_for(spec: &Spec) -> Vec<Mount> {
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let p = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
    let (nosuid, nodev, noexec, ro) = (libc::MS_NOSUID, libc::MS_NODEV, libc::MS_NOEXEC, libc::MS_RDONLY);
    let mut m: Vec<Mount> = vec![
        (c("proc"), c("/proc"), c("proc"), nosuid | nodev | noexec, c("")),
        (c("devpts"), c("/dev/pts"), c("devpts"), nosuid | noexec, c("gid=5,mode=0620,ptmxmode=0666")),
        (c("tmpfs"), c("/dev/shm"), c("tmpfs"), nosuid | nodev, c("mode=1777")),
        (c("tmpfs"), c("/tmp"), c("tmpfs"), nosuid | nodev, c("mode=1777")),
        (c("tmpfs"), c("/run"), c("tmpfs"), nosuid | nodev, c("mode=0755")),
    ];
    if !Path::new("/var/run").is_symlink() && Path::new("/var/run").is_dir() {
        m.push((c("tmpfs"), c("/var/run"), c("tmpfs"), nosuid | nodev, c("mode=0755")));
    }
    for d in spec.tmpfs.iter().filter(|d| d.is_dir()) {
        m.push((c("tmpfs"), p(d), c("tmpfs"), 0, c("mode=0755")));
    }
    // The shared dir last: a folder shown read-only that holds it must not hide it.
    for d in &spec.reexpose {
        m.push((c("none"), p(d), c("hostfs"), ro, p(d)));
    }
    if let Some(d) = &spec.program_dir {
        m.push((c("none"), c(super::plan::GUEST_PROGRAM_DIR), c("hostfs"), ro, p(d)));
    }
    m.push((c("none"), p(&spec.shared), c("hostfs"), 0, p(&spec.shared)));
    m.push((c("none"), c(super::GUEST_PRIVATE), c("hostfs"), ro, p(&spec.private)));
    m
}

/// In the forked child, PID 1 of the job's PID namespace: own mounts, then the command as its
/// child; returns the command's exit code once it exits (this process then exits, and the
/// kernel kills whatever is left in the namespace).
fn job_init(mounts: &[Mount], argv: &[CString], env: &[CString], cwd: &CString) -> Result<i32> {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
        }
        let root = CString::new("/")?;
        if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("making / private");
        }
    }
    for (src, target, fs, flags, data) in mounts {
        let t = Path::new(std::ffi::OsStr::from_bytes(target.as_bytes()));
        if !t.is_dir() {
            let _ = std::fs::create_dir_all(t);
        }
        let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fs.as_ptr(), *flags, data.as_ptr() as *const libc::c_void) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Err(anyhow!("mount {} on {}: {e}", fs.to_string_lossy(), t.display()));
        }
    }
    for d in ["/run/lock", "/run/netns"] {
        let _ = std::fs::create_dir_all(d);
    }
    let mut argvp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argvp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let devnull = CString::new("/dev/null")?;
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if child == 0 {
        unsafe {
            if libc::chdir(cwd.as_ptr()) != 0 {
                libc::_exit(126);
            }
            let fd = libc::open(devnull.as_ptr(), libc::O_RDONLY);
            if fd >= 0 {
                libc::dup2(fd, 0);
                libc::close(fd);
            }
            libc::execve(argvp[0], argvp.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    // Reap orphans until the command itself exits.
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == child {
            return Ok(code_of(status));
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(std::io::Error::last_os_error()).context("waitpid");
        }
    }
}

/// The guest's idle state, taken before the first job.
struct Idle {
    mounts: String,
    links: Vec<String>,
    modules: Vec<String>,
}

impl Idle {
    fn take() -> Idle {
        Idle { mounts: mountinfo(), links: net_links(), modules: modules() }
    }

    /// Ok once the guest is as it was (waiting up to `deadline` for processes to go; what else
    /// a job could leave does not go by itself).
    fn settle(&self, deadline: Instant) -> Result<(), String> {
        let mut pause = Duration::from_millis(1);
        let mut left = stray_processes();
        // Processes being killed, kernel helpers ending: a short, growing pause until then.
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
            left = stray_processes();
        }
        let (mounts, links, mods) = (mountinfo(), net_links(), modules());
        // (A module unloaded since is no concern: none is, the kernel keeps them.)
        let mut why = Vec::new();
        if !left.is_empty() {
            why.push(format!("processes left: {}", left.join(", ")));
        }
        if mounts != self.mounts {
            let added: Vec<&str> = mounts.lines().filter(|l| !self.mounts.lines().any(|b| b == *l)).collect();
            why.push(format!("mounts changed: {}", added.join("; ")));
        }
        let added: Vec<&String> = mods.iter().filter(|m| !self.modules.contains(m) && !inert(m)).collect();
        if !added.is_empty() {
            why.push(format!("kernel modules loaded: {added:?}"));
        }
        if links != self.links {
            why.push(format!("network devices now {links:?}"));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// The loaded kernel modules: one a job loads (autoloaded) stays, and may change what the next
/// sees (a tunnel module's fallback device in every new network namespace, br_netfilter).
fn modules() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// Modules a job may leave loaded: netfilter's (x_tables and its matches and targets, the
/// iptables tables, conntrack, NAT, defrag, nfnetlink, bpfilter, which iptables-legacy loads on
/// its first use), and the IPsec transforms. They change no network namespace by being loaded: tables, conntrack, NAT and
/// defrag hooks are set up per namespace on first use, so the next job's namespaces are the
/// same as in a fresh guest (where its own first rule loads them). Any other module (a tunnel
/// module's fallback device in every new namespace, br_netfilter's bridge hooks) retires the
/// guest.
fn inert(module: &str) -> bool {
    const PREFIXES: [&str; 5] = ["xt_", "nf_", "iptable_", "ip6table_", "nfnetlink"];
    // And the IPsec transforms (an xfrm type registered, no device): `esp6` for an IPv6 SA.
    const XFRM: [&str; 7] = ["esp4", "esp6", "ah4", "ah6", "ipcomp", "ipcomp6", "xfrm_ipcomp"];
    matches!(module, "x_tables" | "ip_tables" | "ip6_tables" | "bpfilter")
        || XFRM.contains(&module)
        || PREFIXES.iter().any(|p| module.starts_with(p))
}

fn net_links() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Processes other than the guest's init, this server and the kernel's own: `pid (comm)`.
fn stray_processes() -> Vec<String> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == 1 || pid == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        // state ppid pgrp session tty_nr tpgid flags ...
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let flags = fields.get(6).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // Kernel threads, and the user-mode helpers and drivers the kernel starts itself
        // (children of kthreadd: modprobe for an autoload ending on its own, `bpfilter_umh`
        // started at a first iptables-legacy use and kept by the kernel): not a job's. A job's
        // process can never become kthreadd's child (orphans go to their namespace's init).
        if flags & PF_KTHREAD != 0 || fields.get(1) == Some(&"2") {
            continue;
        }
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        out.push(format!("{pid} ({comm})"));
    }
    out
}
