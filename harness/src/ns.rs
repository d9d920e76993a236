//! Namespaces and their lifetimes.
//!
//! Every node is an *anonymous* network namespace, held only by a file descriptor of this
//! process and by the processes inside it: nothing is named in /run/netns, so two runs can
//! never collide and nothing outlives the run. Every process a lab starts lives in one PID
//! namespace per lab, whose init (the "holder") has PR_SET_PDEATHSIG=SIGKILL: if vpnlab dies,
//! even by SIGKILL, the kernel kills the holder and with it every daemon of the lab; the network
//! namespaces, tun devices and private mounts then go away with their last user.

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// A network namespace, alive as long as this value (or a process inside it) exists.
pub struct NetNs {
    fd: OwnedFd,
    /// The logical name (node name), for messages.
    pub name: String,
    /// The host name of the node's processes, when it is not `name` (each process gets a UTS
    /// namespace of its own with it: `process::command`).
    pub hostname: Option<String>,
    /// The thread that has entered the namespace and serves [`NetNs::run`] (started by the
    /// first call, joined when the namespace is dropped).
    worker: OnceLock<Worker>,
}

impl std::fmt::Debug for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetNs").field("fd", &self.fd).field("name", &self.name).finish()
    }
}

/// One thread inside a namespace, running the jobs sent to it one after the other.
struct Worker {
    tx: mpsc::Sender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            let thread = w.thread.take();
            drop(w); // closes the channel: the worker's loop ends
            if let Some(t) = thread {
                let _ = t.join();
            }
        }
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl NetNs {
    /// Creates `names.len()` fresh network namespaces, all on one short-lived thread.
    pub fn create_many(names: &[String]) -> Result<Vec<NetNs>> {
        let names = names.to_vec();
        std::thread::spawn(move || -> Result<Vec<NetNs>> {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                unshare(CloneFlags::CLONE_NEWNET)
                    .context("unshare(CLONE_NEWNET): creating a network namespace needs root (CAP_SYS_ADMIN)")?;
                let f = File::open("/proc/thread-self/ns/net").context("open /proc/thread-self/ns/net")?;
                out.push(NetNs { fd: f.into(), name, hostname: None, worker: OnceLock::new() });
            }
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
    }

    /// The host name its processes see: the node's `hostname`, or its name.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.name)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Runs `f` on this namespace's worker thread, which entered the namespace once (sockets
    /// it opens belong to the namespace for their whole life, whichever thread uses them later;
    /// `/proc/thread-self/net` is the namespace's). Calls from several threads are served one
    /// after the other; `f` must not call `run` on the same namespace (it would wait for itself).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let w = match self.worker.get() {
            Some(w) => w,
            None => {
                let w = self.start_worker()?;
                // Another thread may have won the race: its worker is used, ours ends here.
                let _ = self.worker.set(w);
                self.worker.get().expect("just set")
            }
        };
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = rtx.send(f());
        });
        w.tx.send(job).map_err(|_| anyhow!("the thread of node `{}` is gone", self.name))?;
        rrx.recv().map_err(|_| anyhow!("a call inside node `{}` panicked", self.name))
    }

    fn start_worker(&self) -> Result<Worker> {
        let fd = self.fd.try_clone().context("dup of the namespace fd")?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let name = self.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                if let Err(e) = setns(fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(anyhow!("setns into node `{name}`: {e}")));
                    return;
                }
                drop(fd);
                let _ = ready_tx.send(Ok(()));
                for job in rx {
                    // A panicking job drops its result sender: the caller sees the panic as an
                    // error, and the worker goes on serving.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .context("spawning a namespace thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Worker { tx, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                bail!("the thread of node `{}` died while entering it", self.name)
            }
        }
    }
}

/// A lab's PID namespace: its init ("holder") is `sleep infinity`, started with
/// PR_SET_PDEATHSIG=SIGKILL from the process-wide spawner thread, so it dies with vpnlab.
#[derive(Debug)]
pub struct PidNs {
    /// `None` for a handle on another process's lab (`PidNs::attach`): never killed by us.
    holder: Option<Child>,
    holder_pid: u32,
    fd: OwnedFd,
}

impl PidNs {
    pub fn create() -> Result<PidNs> {
        spawner(|| -> Result<PidNs> {
            let orig = File::open("/proc/thread-self/ns/pid_for_children").context("open pid_for_children")?;
            unshare(CloneFlags::CLONE_NEWPID).context("unshare(CLONE_NEWPID)")?;
            let mut cmd = Command::new("sleep");
            cmd.arg("infinity");
            cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            unsafe {
                cmd.pre_exec(|| {
                    unblock_all_signals();
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                    let _ = nix::unistd::setsid();
                    Ok(())
                });
            }
            let spawned = cmd.spawn();
            // Back to the original PID namespace for whatever this thread spawns next.
            setns(orig.as_fd(), CloneFlags::CLONE_NEWPID).context("setns back to the original PID namespace")?;
            let holder = spawned.context("starting the lab's PID-namespace holder (`sleep infinity`)")?;
            let fd = File::open(format!("/proc/{}/ns/pid", holder.id())).context("open the holder's PID namespace")?;
            live_holders().lock().unwrap_or_else(|p| p.into_inner()).push(holder.id());
            Ok(PidNs { holder_pid: holder.id(), holder: Some(holder), fd: fd.into() })
        })?
    }

    pub fn holder_pid(&self) -> u32 {
        self.holder_pid
    }

    /// A handle on the PID namespace of a lab another process keeps up (`vpnlab up`); dropping
    /// it leaves that lab alone.
    pub fn attach(holder_pid: u32) -> Result<PidNs> {
        let fd = File::open(format!("/proc/{holder_pid}/ns/pid"))
            .with_context(|| format!("the lab's PID namespace (holder {holder_pid}) is gone"))?;
        Ok(PidNs { holder: None, holder_pid, fd: fd.into() })
    }

    /// Spawns `cmd` inside this PID namespace (from the spawner thread, so that PDEATHSIG set
    /// in a pre_exec refers to a thread that lives as long as the process).
    pub fn spawn(&self, cmd: Command) -> Result<Child> {
        let fd = self.fd.as_raw_fd();
        spawner(move || -> Result<Child> {
            let mut cmd = cmd;
            let orig = File::open("/proc/thread-self/ns/pid_for_children")?;
            let target = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            setns(target, CloneFlags::CLONE_NEWPID).context("setns into the lab's PID namespace")?;
            // The child's mount-namespace set-up (see process::command) has been seen to fail
            // with a transient ENOENT while other tools change the host's mount table; retry.
            let mut r = cmd.spawn();
            for _ in 0..3 {
                match &r {
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENOENT) && crate::env::which(&cmd.get_program().to_string_lossy()).is_some() =>
                    {
                        r = cmd.spawn()
                    }
                    _ => break,
                }
            }
            setns(orig.as_fd(), CloneFlags::CLONE_NEWPID).context("setns back")?;
            Ok(r?)
        })?
    }

    /// Kills every process of the lab: SIGKILL to the holder makes the kernel kill the rest.
    pub fn kill_all(&mut self) {
        if let Some(h) = self.holder.as_mut() {
            let _ = h.kill();
            let _ = h.wait();
            live_holders().lock().unwrap_or_else(|p| p.into_inner()).retain(|p| *p != self.holder_pid);
        }
    }

    /// Is the holder still alive (can processes still be started)?
    pub fn alive(&mut self) -> bool {
        match self.holder.as_mut() {
            Some(h) => matches!(h.try_wait(), Ok(None)),
            None => Path::new(&format!("/proc/{}", self.holder_pid)).exists(),
        }
    }
}

impl Drop for PidNs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// PIDs of the holders of labs running in this process (for the signal handler).
fn live_holders() -> &'static Mutex<Vec<u32>> {
    static H: OnceLock<Mutex<Vec<u32>>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(Vec::new()))
}

/// SIGKILLs the holder of every lab of this process: the kernel then kills all their daemons.
pub fn kill_all_labs() {
    let pids = live_holders().lock().unwrap_or_else(|p| p.into_inner()).clone();
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as libc::pid_t), nix::sys::signal::Signal::SIGKILL);
    }
}

/// In a child before exec: start with no blocked signals whatever the parent blocked.
pub fn unblock_all_signals() {
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
}

/// SIGINT / SIGTERM / SIGHUP end the process cleanly: every lab's processes are killed, every
/// work dir removed (failed runs' kept dirs stay), then exit 130/143/129. Call at the very
/// start of `main`, before any other thread exists (the signals are blocked in all threads and
/// taken by one waiting thread).
/// The line to print if a signal ends the process (a run's summary so far).
static INTERRUPTED_SUMMARY: Mutex<Option<String>> = Mutex::new(None);

/// Sets the line printed (on stdout) when a signal ends the process after cleaning up.
pub fn set_interrupted_summary(line: String) {
    if let Ok(mut s) = INTERRUPTED_SUMMARY.lock() {
        *s = Some(line);
    }
}

pub fn install_signal_cleanup() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    let _ = set.thread_block();
    std::thread::Builder::new()
        .name("vpnlab-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                let sig = sig as i32;
                eprintln!("vpnlab: signal {sig}: stopping every lab and cleaning up");
                kill_all_labs();
                unname_all();
                crate::workdir::remove_all_live();
                // A run always ends with its summary, also when interrupted.
                if let Some(line) = INTERRUPTED_SUMMARY.lock().ok().and_then(|s| s.clone()) {
                    println!("{line}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
                // Not `std::process::exit`: no atexit handlers or destructors of other threads.
                unsafe { libc::_exit(crate::error::Exit::Signal(sig).code().into()) };
            }
        })
        .expect("signal thread");
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on the process-wide spawner thread and returns its result. The thread never exits,
/// so PR_SET_PDEATHSIG of children it forks fires only when the whole process dies.
pub fn spawner<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    static TX: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vpnlab-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the spawner thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = rtx.send(f());
    });
    tx.lock().map_err(|_| anyhow!("spawner lock poisoned"))?.send(job).map_err(|_| anyhow!("spawner thread gone"))?;
    match rrx.recv() {
        Ok(v) => Ok(v),
        Err(_) => bail!("spawner job panicked"),
    }
}

impl NetNs {
    /// Opens a namespace by path (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &std::path::Path, name: &str) -> Result<NetNs> {
        let f = File::open(path).with_context(|| format!("open network namespace {}", path.display()))?;
        Ok(NetNs { fd: f.into(), name: name.to_string(), hostname: None, worker: OnceLock::new() })
    }

    /// Gives the namespace a name under /run/netns (like `ip netns attach`), so that `ip netns
    /// exec NAME` works. The name is unmounted by [`unname`] (and by the signal handler).
    pub fn name_it(&self, name: &str) -> Result<PathBuf> {
        let dir = Path::new("/run/netns");
        std::fs::create_dir_all(dir)?;
        let target = dir.join(name);
        if target.exists() {
            bail!("{} already exists (a lab with that name is up: `vpnlab status`)", target.display());
        }
        File::create(&target)?;
        let src = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        if let Err(e) = nix::mount::mount(Some(src.as_str()), &target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>) {
            let _ = std::fs::remove_file(&target);
            bail!("bind-mounting the namespace on {}: {e}", target.display());
        }
        named().lock().unwrap_or_else(|p| p.into_inner()).push(target.clone());
        Ok(target)
    }
}

fn named() -> &'static Mutex<Vec<PathBuf>> {
    static N: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    N.get_or_init(|| Mutex::new(Vec::new()))
}

/// Removes a namespace name made by [`NetNs::name_it`] (or left by a dead `vpnlab up`).
pub fn unname(target: &Path) {
    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(target);
    named().lock().unwrap_or_else(|p| p.into_inner()).retain(|p| p != target);
}

fn unname_all() {
    let all = named().lock().unwrap_or_else(|p| p.into_inner()).clone();
    for p in all {
        unname(&p);
    }
}
