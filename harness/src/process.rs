//! Processes in a node: spawned inside the node's network namespace and the lab's PID
//! namespace, with a private mount namespace (/sys and /proc remounted so `ip`, `ps` and
//! sysfs show the node's view), in their own session/process group, stdout+stderr in one
//! ordered log file. Each process also has a UTS namespace of its own carrying the node's host
//! name (`hostname = ...`, default the node's name), so `hostname` and daemons' logs show it. Waiting is event-driven with deadlines (pidfd for exits).

use crate::ns::{NetNs, PidNs};
use anyhow::{anyhow, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A bind mount inside the process's private mount namespace.
#[derive(Debug, Clone)]
pub struct BindMount {
    pub src: PathBuf,
    pub dst: PathBuf,
}

/// The three standard streams of a command started in a node.
pub struct Stdio3 {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Stdio3 {
    /// stdin from /dev/null; stdout and stderr as given (one file for both keeps the order of
    /// lines the order they were written).
    pub fn output(stdout: Stdio, stderr: Stdio) -> Self {
        Stdio3 { stdin: Stdio::null(), stdout, stderr }
    }
    /// All three from the caller (`vpnlab exec`/`shell`: this terminal).
    pub fn inherit() -> Self {
        Stdio3 { stdin: Stdio::inherit(), stdout: Stdio::inherit(), stderr: Stdio::inherit() }
    }
}

/// Builds the command for `argv` in a node, in a session of its own unless `new_session` is
/// false (interactive use, `vpnlab shell`: the terminal stays the controlling terminal).
pub fn command(netns: &NetNs, argv: &[String], cwd: &Path, io: Stdio3, mounts: &[BindMount], new_session: bool) -> Result<Command> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).current_dir(cwd).stdin(io.stdin).stdout(io.stdout).stderr(io.stderr);
    cmd.env("VPNLAB_NODE", &netns.name);
    let fd: RawFd = netns.raw_fd();
    let c = |s: &str| CString::new(s).map_err(|_| anyhow!("NUL in path"));
    let root = c("/")?;
    let sys = c("/sys")?;
    let proc_ = c("/proc")?;
    let sysfs = c("sysfs")?;
    let procfs = c("proc")?;
    // The node's host name, in a UTS namespace of the process's own (the host's name is never
    // touched; a lab namespace `lan:NAME` has no processes).
    let mut hostname = netns.hostname().as_bytes().to_vec();
    hostname.truncate(64); // HOST_NAME_MAX (a LAN's namespace `lan:NAME` may be longer)
    let binds: Vec<(CString, CString)> =
        mounts.iter().map(|m| Ok((c(&m.src.to_string_lossy())?, c(&m.dst.to_string_lossy())?))).collect::<Result<_>>()?;
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
            crate::ns::unblock_all_signals();
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            check(libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            libc::umount2(sys.as_ptr(), libc::MNT_DETACH);
            check(libc::mount(sysfs.as_ptr(), sys.as_ptr(), sysfs.as_ptr(), 0, std::ptr::null()))?;
            check(libc::mount(
                procfs.as_ptr(),
                proc_.as_ptr(),
                procfs.as_ptr(),
                (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong,
                std::ptr::null(),
            ))?;
            for (src, dst) in &binds {
                check(libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
            }
            if new_session {
                let _ = nix::unistd::setsid();
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Opens a log file for appending (created if missing).
pub fn log_file(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("open log {}", path.display()))
}

/// A pidfd for waiting on a child's exit with a deadline.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        None
    } else {
        Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Waits for `child` to exit until `deadline`; `None` if it is still running then.
pub fn wait_deadline(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    if let Some(st) = child.try_wait()? {
        return Ok(Some(st));
    }
    let fd = pidfd(child.id());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(fd) = &fd {
            let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut p, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX));
        } else {
            std::thread::sleep(left.min(Duration::from_millis(5)));
        }
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Polls `f` until it yields a value or `deadline` passes (short, growing intervals).
pub fn wait_until<T>(deadline: Instant, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let mut pause = Duration::from_micros(500);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// The result of a short command.
#[derive(Debug)]
pub struct Output {
    pub status: Option<ExitStatus>,
    /// stdout and stderr interleaved in the order written.
    pub text: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }
    pub fn describe_status(&self) -> String {
        match self.status {
            _ if self.timed_out => "timed out".into(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (_, Some(sig)) => format!("killed by signal {sig}"),
                _ => "unknown".into(),
            },
            None => "unknown".into(),
        }
    }
}

/// A short command to run in a node: where, what and how, as named fields instead of a long
/// positional argument list. `NodeCmd::new(..)` has a 10 s timeout, no mounts, no environment;
/// [`capture`](Self::capture), [`capture_until`](Self::capture_until) and
/// [`tty`](Self::tty) run it.
#[derive(Clone, Copy)]
pub struct NodeCmd<'a> {
    pub netns: &'a NetNs,
    pub pid: &'a PidNs,
    pub argv: &'a [String],
    pub cwd: &'a Path,
    /// The command (with its process group) is killed when this runs out.
    pub timeout: Duration,
    /// Bind mounts in the command's private mount namespace.
    pub mounts: &'a [BindMount],
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a Path)],
}

impl<'a> NodeCmd<'a> {
    pub fn new(netns: &'a NetNs, pid: &'a PidNs, argv: &'a [String], cwd: &'a Path) -> Self {
        NodeCmd { netns, pid, argv, cwd, timeout: Duration::from_secs(10), mounts: &[], env: &[] }
    }
    pub fn timeout(self, timeout: Duration) -> Self {
        NodeCmd { timeout, ..self }
    }
    pub fn mounts(self, mounts: &'a [BindMount]) -> Self {
        NodeCmd { mounts, ..self }
    }
    pub fn env(self, env: &'a [(&'a str, &'a Path)]) -> Self {
        NodeCmd { env, ..self }
    }

    /// Runs it and captures stdout and stderr interleaved.
    pub fn capture(&self) -> Result<Output> {
        self.capture_decided(None)
    }

    /// [`capture`](Self::capture); when `decided` says yes before the command ends, the command
    /// is sent SIGINT (ping then prints its statistics and exits) and waited for as usual.
    pub fn capture_until(&self, decided: Decider) -> Result<Output> {
        self.capture_decided(Some(decided))
    }

    /// Runs it under a new pseudo-terminal ([`crate::pty`]); the output is what the terminal showed.
    pub fn tty(&self) -> Result<Output> {
        crate::pty::run_tty(self)
    }

    /// The [`Command`] for it, with these streams, in a session of its own.
    pub(crate) fn command(&self, io: Stdio3) -> Result<Command> {
        let mut cmd = command(self.netns, self.argv, self.cwd, io, self.mounts, true)?;
        cmd.envs(self.env.iter().copied());
        Ok(cmd)
    }

    /// Spawns `cmd` in the lab's PID namespace.
    pub(crate) fn spawn(&self, cmd: Command) -> Result<Child> {
        self.pid.spawn(cmd).with_context(|| format!("node `{}`: cannot run `{}`", self.netns.name, self.argv[0]))
    }

    fn capture_decided(&self, mut decided: Option<Decider>) -> Result<Output> {
        let (mut r, w) = std::io::pipe().context("pipe")?;
        let w2 = w.try_clone()?;
        let mut child = self.spawn(self.command(Stdio3::output(Stdio::from(w), Stdio::from(w2)))?)?;
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        });
        let deadline = Instant::now() + self.timeout;
        if let Some(decided) = decided.as_mut() {
            // Short slices: the command's own exit is noticed within one.
            while child.try_wait()?.is_none() && Instant::now() < deadline {
                if decided(Duration::from_millis(20)) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as libc::pid_t), nix::sys::signal::Signal::SIGINT);
                    break;
                }
            }
        }
        let status = wait_deadline(&mut child, deadline)?;
        let timed_out = status.is_none();
        let status = match status {
            Some(s) => Some(s),
            None => {
                kill_group(child.id(), libc::SIGKILL);
                child.wait().ok()
            }
        };
        // Descendants that kept the pipe open are in the same process group.
        kill_group(child.id(), libc::SIGKILL);
        let text = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
        Ok(Output { status, text, timed_out })
    }
}

/// Asked while a command of [`NodeCmd::capture_until`] runs: waits up to the given time for
/// something that decides the command's outcome early, and says whether it did.
pub type Decider<'a> = &'a mut dyn FnMut(Duration) -> bool;

/// Shorthand for the common case: `argv` in a node, output captured, killed at `timeout`.
pub fn run_capture(netns: &NetNs, pid: &PidNs, argv: &[String], cwd: &Path, timeout: Duration) -> Result<Output> {
    NodeCmd::new(netns, pid, argv, cwd).timeout(timeout).capture()
}

pub fn kill_group(pgid: u32, sig: libc::c_int) {
    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as libc::pid_t), sig);
    }
}

/// A long-running daemon of a lab.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// Byte length of the log when this instance started (restarts append).
    pub log_start: u64,
    pub exited: Option<ExitStatus>,
}

/// A daemon dropped while running (a panic, an early return) is killed and reaped here: an
/// unreaped child of ours inside the lab's PID namespace would keep the namespace's init from
/// finishing its exit, and `PidNs::kill_all` would wait for it forever.
impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn start(name: &str, netns: &NetNs, pid: &PidNs, argv: &[String], cwd: &Path, log: &Path, mounts: &[BindMount]) -> Result<Daemon> {
        let f = log_file(log)?;
        let log_start = f.metadata().map(|m| m.len()).unwrap_or(0);
        let cmd = command(netns, argv, cwd, Stdio3::output(Stdio::from(f.try_clone()?), Stdio::from(f)), mounts, true)?;
        let child = pid.spawn(cmd).with_context(|| format!("service `{name}`: cannot start `{}`", argv.join(" ")))?;
        Ok(Daemon { name: name.to_string(), child, log: log.to_path_buf(), log_start, exited: None })
    }

    /// Has it exited? (reaps it)
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
            }
        }
        self.exited
    }

    /// Like [`Daemon::stop`], also saying what it took: `(status, had already exited, needed
    /// SIGKILL)`.
    pub fn stop_observed(&mut self, grace: Duration) -> Result<(ExitStatus, bool, bool)> {
        if let Some(st) = self.poll_exit() {
            kill_group(self.child.id(), libc::SIGKILL);
            return Ok((st, true, false));
        }
        kill_group(self.child.id(), libc::SIGTERM);
        let (st, killed) = match wait_deadline(&mut self.child, Instant::now() + grace)? {
            Some(st) => (st, false),
            None => {
                kill_group(self.child.id(), libc::SIGKILL);
                (self.child.wait()?, true)
            }
        };
        kill_group(self.child.id(), libc::SIGKILL);
        self.exited = Some(st);
        Ok((st, false, killed))
    }

    /// SIGTERM to its process group, then SIGKILL after `grace`. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.poll_exit() {
            kill_group(self.child.id(), libc::SIGKILL);
            return Ok(st);
        }
        kill_group(self.child.id(), libc::SIGTERM);
        let st = match wait_deadline(&mut self.child, Instant::now() + grace)? {
            Some(st) => st,
            None => {
                kill_group(self.child.id(), libc::SIGKILL);
                self.child.wait()?
            }
        };
        kill_group(self.child.id(), libc::SIGKILL);
        self.exited = Some(st);
        Ok(st)
    }

    /// The lines this instance logged so far.
    pub fn lines(&self) -> Vec<String> {
        read_from(&self.log, self.log_start).lines().map(str::to_string).collect()
    }

    /// The last `n` lines of its log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
}

/// The text of a file from byte `offset` on (lossy UTF-8).
pub fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut s = Vec::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut s);
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}
