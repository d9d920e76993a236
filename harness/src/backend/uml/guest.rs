//! A running UML kernel ([`Guest`]): spawned with `clone3(CLONE_NEWPID)`, its console read,
//! killed and reaped on drop, its session checked for leftovers.

use anyhow::{Context, Result};
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A running UML kernel: pid, pidfd, console pipe. Killed and reaped on drop.
pub(super) struct Guest {
    pub(super) pid: libc::pid_t,
    pub(super) pidfd: OwnedFd,
    pub(super) console: OwnedFd,
    /// Write end of UML's stdin, kept open so the console never sees EOF (a hangup).
    pub(super) stdin: OwnedFd,
    pub(super) reaped: bool,
}

#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
}
pub(super) fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(super) fn cstring(s: impl AsRef<OsStr>) -> Result<CString> {
    CString::new(s.as_ref().as_bytes()).context("NUL byte in an argument")
}

impl Guest {
    pub(super) fn spawn(args: &[String], env: &[String], cwd: &Path) -> Result<Guest> {
        // Everything the child needs is prepared here: after clone it may only make raw
        // syscalls (other threads may hold locks in this process).
        let c_args: Vec<CString> = args.iter().map(cstring).collect::<Result<_>>()?;
        let c_env: Vec<CString> = env.iter().map(cstring).collect::<Result<_>>()?;
        let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = c_env.iter().map(|c| c.as_ptr()).collect();
        envp.push(std::ptr::null());
        let c_cwd = cstring(cwd)?;
        let (console_r, console_w) = pipe_cloexec()?;
        let (stdin_r, stdin_w) = pipe_cloexec()?;
        let (err_r, err_w) = pipe_cloexec()?;
        let (life_r, life_w) = pipe_cloexec()?;
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };

        let mut pidfd: RawFd = -1;
        let mut pid: libc::c_long = -1;
        for flags in [libc::CLONE_PIDFD | libc::CLONE_NEWPID, libc::CLONE_PIDFD] {
            let mut ca = CloneArgs {
                flags: flags as u64,
                pidfd: &mut pidfd as *mut RawFd as u64,
                exit_signal: libc::SIGCHLD as u64,
                ..Default::default()
            };
            pid = unsafe { libc::syscall(libc::SYS_clone3, &mut ca as *mut CloneArgs, std::mem::size_of::<CloneArgs>()) };
            if pid == 0 {
                // Child. Only async-signal-safe calls until execve.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                    libc::setsid();
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                    // The spawning thread may have died before PDEATHSIG was armed: then the
                    // lifeline pipe has no writer left.
                    libc::close(life_w.as_raw_fd());
                    let mut p = libc::pollfd { fd: life_r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                    if libc::poll(&mut p, 1, 0) != 0 {
                        libc::_exit(126);
                    }
                    libc::dup2(stdin_r.as_raw_fd(), 0);
                    libc::dup2(console_w.as_raw_fd(), 1);
                    libc::dup2(console_w.as_raw_fd(), 2);
                    // Nothing else the harness has open is inherited.
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                    libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                    libc::chdir(c_cwd.as_ptr());
                    libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
                    let e = *libc::__errno_location();
                    libc::write(err_w.as_raw_fd(), &e as *const i32 as *const libc::c_void, 4);
                    libc::_exit(127);
                }
            }
            if pid > 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EINVAL) | Some(libc::EUSERS)) {
                return Err(e).context("clone3 for linux.uml");
            }
        }
        if pid <= 0 {
            return Err(std::io::Error::last_os_error()).context("clone3 for linux.uml");
        }
        let pid = pid as libc::pid_t;
        drop((console_w, stdin_r, err_w, life_r));
        let guest = Guest { pid, pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) }, console: console_r, stdin: stdin_w, reaped: false };
        // EOF on the error pipe = execve succeeded.
        let mut buf = [0u8; 4];
        let mut f = std::fs::File::from(err_r);
        let n = loop {
            match f.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.context("reading linux.uml exec status")?,
            }
        };
        drop(life_w);
        if n == 4 {
            let e = std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf));
            return Err(e).with_context(|| format!("execve {}", args[0]));
        }
        unsafe {
            let fl = libc::fcntl(guest.console.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(guest.console.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(guest)
    }

    /// SIGKILL the namespace init and the whole process group (session leader = pid).
    pub(super) fn kill(&self) {
        if !self.reaped {
            unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), libc::SIGKILL, 0, 0);
                libc::kill(-self.pid, libc::SIGKILL);
            }
        }
    }

    pub(super) fn reap(&mut self) -> Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        loop {
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.reaped = true;
                return Err(e).context("waitpid linux.uml");
            }
        }
        self.reaped = true;
        Ok(std::process::ExitStatus::from_raw(status))
    }

    /// Kill whatever is still in the guest's session (nothing when it ran in its own PID
    /// namespace) and wait up to 5 s for it to die. Returns the processes that survived
    /// SIGKILL. Dead ones may linger as zombies for a moment: without the namespace they are
    /// reparented to the host's init, which reaps them.
    pub(super) fn kill_session(&self) -> Vec<(i32, String)> {
        let alive = || -> Vec<(i32, String)> { session_members(self.pid).into_iter().filter(|m| m.2 != 'Z').map(|m| (m.0, m.1)).collect() };
        let mut left = alive();
        if left.is_empty() {
            return left;
        }
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let until = Instant::now() + Duration::from_secs(5);
        let mut pause = Duration::from_millis(1);
        while !left.is_empty() && Instant::now() < until {
            for (p, _) in &left {
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
            left = alive();
        }
        left
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.reap();
            let _ = self.kill_session();
        }
    }
}

/// (pid, comm, state) of every process whose session id is `sid` (zombies included).
pub(super) fn session_members(sid: libc::pid_t) -> Vec<(i32, String, char)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp session ...
        let Some(close) = stat.rfind(')') else { continue };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid) {
            let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
            out.push((pid, comm, state));
        }
    }
    out
}

/// Read what is available; Ok(false) on EOF.
pub(super) fn drain(fd: RawFd, buf: &mut Vec<u8>) -> Result<bool> {
    let mut chunk = [0u8; 16384];
    loop {
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr() as *mut libc::c_void, chunk.len()) };
        if n > 0 {
            buf.extend_from_slice(&chunk[..n as usize]);
            continue;
        }
        if n == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => return Ok(true),
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e).context("reading the UML console"),
        }
    }
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn tail(console: &[u8]) -> String {
    let text = String::from_utf8_lossy(console);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!("--- last console lines ---\n{}", lines[from..].join("\n"))
}
