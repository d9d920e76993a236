//! Warm guests reused for successive jobs: [`run`] takes an idle guest (or boots one), runs the
//! job in it and gives it back; [`shutdown`] ends them all. A guest boots once with every
//! module a lab may need and runs the guest server ([`super::server`]) on its console; each job
//! is one line on the guest's console input (UML's stdin, a pipe), its end a marker line on the
//! console output, its result files in its shared dir as with a fresh guest. So a scenario pays
//! the boot and the guest's cold page cache (pluto, certutil, vpnlab itself) once per guest,
//! not once per scenario.
//!
//! There are never more guests than jobs running at once: each guest belongs to one long-lived
//! thread, which spawns it (PR_SET_PDEATHSIG fires when the spawning *thread* exits: see the
//! module docs of [`super`]) and serves one job at a time; an idle guest's thread waits in the
//! pool's list, a job takes it out and puts it back. A guest whose job timed out, whose idle
//! check failed (something of the job survived it) or that died is killed and its dirs
//! removed; its thread boots a fresh one for its next job. If vpnlab is SIGKILLed, PDEATHSIG
//! and the guest's PID namespace end every guest, and the next run sweeps their dirs.

use super::dirs::{nonce, private_dir};
use super::guest::{drain, find, tail};
use super::host::host_config;
use super::plan::Plan;
use super::server::Spec;
use super::{boot, Booted, UmlJob, UmlOutcome};
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The command (argv, environment) that starts the guest server, for a marker token.
pub(super) type ServerCmd = fn(&str) -> (Vec<String>, Vec<(String, String)>);

/// How a pooled job went: the outcome, and whether its guest was booted for it.
#[derive(Debug)]
pub struct Pooled {
    pub outcome: UmlOutcome,
    /// The guest was booted for this job (else: reused, warm).
    pub booted: bool,
}

struct Request {
    job: UmlJob,
    key: Key,
    server: ServerCmd,
    reply: Sender<Result<Pooled>>,
}

struct Worker {
    tx: Sender<Request>,
    /// What its guest was booted for (by the last job sent to it).
    key: Option<Key>,
    thread: std::thread::JoinHandle<()>,
}

/// The idle guests' threads.
static IDLE: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

/// The vpnlab guest server of this binary.
fn vpnlab_server(token: &str) -> (Vec<String>, Vec<(String, String)>) {
    let exe = std::env::current_exe().map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| "/proc/self/exe".into());
    let mut argv = vec![exe];
    argv.extend(crate::reexec::Role::GuestServer { token: token.to_string() }.args());
    (argv, Vec::new())
}

/// Runs `job` in a warm guest running this binary's guest server (booted with `boot_modules`
/// loaded, and `job.alternatives`; guests booted otherwise are not used for it): blocks until it ended. `job.timeout` counts from here
/// (a boot included); on expiry the guest is killed and this is an error.
pub fn run(job: &UmlJob, boot_modules: &[String]) -> Result<Pooled> {
    run_with(job, boot_modules, vpnlab_server)
}

pub(super) fn run_with(job: &UmlJob, boot_modules: &[String], server: ServerCmd) -> Result<Pooled> {
    let key = Key { server: server(""), alternatives: job.alternatives.clone(), mem_mb: job.mem_mb, modules: boot_modules.to_vec() };
    // A guest booted for the same (same modules: a lab sees the devices its modules add to every
    // network namespace, e.g. `ip_vti0`, exactly as in a fresh guest), else any idle one (its
    // thread boots a fresh guest), else a new one.
    let worker = {
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        let at = idle.iter().rposition(|w| w.key.as_ref() == Some(&key)).or_else(|| idle.len().checked_sub(1));
        at.map(|i| idle.remove(i))
    };
    let mut worker = match worker {
        Some(w) => w,
        None => spawn_worker()?,
    };
    worker.key = Some(key.clone());
    let (reply, answer) = channel();
    let req = Request { job: job.clone(), key, server, reply };
    if worker.tx.send(req).is_err() {
        let _ = worker.thread.join();
        bail!("a user-mode-linux guest's thread ended");
    }
    let r = answer.recv();
    // Back to the idle list even while it still checks that the guest is idle again: the
    // next job waits in its channel (a job never boots a guest because another one settles).
    IDLE.lock().unwrap_or_else(|e| e.into_inner()).push(worker);
    r.map_err(|_| anyhow!("a user-mode-linux guest's thread ended without an answer"))?
}

/// Ends every idle guest (killed: its job is done, nothing in it needs to be kept) and its
/// thread, and removes its dirs. Called at the end of `vpnlab run` and of the lab trials.
pub fn shutdown() {
    let workers = std::mem::take(&mut *IDLE.lock().unwrap_or_else(|e| e.into_inner()));
    let threads: Vec<_> = workers
        .into_iter()
        .map(|w| {
            drop(w.tx);
            w.thread
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// How many guests are waiting in the pool (with their threads).
pub fn idle_count() -> usize {
    IDLE.lock().unwrap_or_else(|e| e.into_inner()).len()
}

fn spawn_worker() -> Result<Worker> {
    let (tx, rx) = channel::<Request>();
    let thread = std::thread::Builder::new()
        .name("vpnlab-uml-guest".into())
        .spawn(move || serve_requests(rx))
        .context("starting a user-mode-linux guest's thread")?;
    Ok(Worker { tx, key: None, thread })
}

/// The guest's thread: one job at a time until the pool lets it go.
fn serve_requests(rx: Receiver<Request>) {
    let mut warm: Option<Warm> = None;
    for req in rx {
        let start = Instant::now();
        let key = req.key;
        if warm.as_ref().is_some_and(|w| w.key != key || !w.alive()) {
            warm = None;
        }
        let booted = warm.is_none();
        let deadline = start + req.job.timeout;
        let r = match warm.take() {
            Some(w) => Ok(w),
            None => Warm::boot(key, req.server, &req.job, deadline),
        };
        let mut w = match r {
            Ok(w) => w,
            Err(e) => {
                let _ = req.reply.send(Err(e));
                continue;
            }
        };
        let boot = if booted { w.ready_after } else { Duration::ZERO };
        match w.job(&req.job, start, deadline) {
            Ok((id, exit_code, console)) => {
                let outcome = UmlOutcome { exit_code, console, boot, total: start.elapsed(), fpu_shim: w.booted.fpu_shim };
                let _ = req.reply.send(Ok(Pooled { outcome, booted }));
                match w.settled(&id) {
                    Ok(()) => warm = Some(w),
                    Err(e) => eprintln!("vpnlab: user-mode-linux guest retired (killed), a fresh one runs the next job: {e:#}"),
                }
            }
            // The guest is killed (dropped) with the error.
            Err(e) => {
                let _ = req.reply.send(Err(e));
            }
        }
    }
}

/// What a guest was booted for: a job with another key gets a fresh guest.
#[derive(PartialEq, Clone)]
struct Key {
    /// The server's command (with an empty token).
    server: (Vec<String>, Vec<(String, String)>),
    alternatives: Vec<(String, std::path::PathBuf)>,
    mem_mb: u32,
    modules: Vec<String>,
}

/// A booted guest running the server.
struct Warm {
    key: Key,
    // Dropped in this order: the guest (killed) before its dirs.
    booted: Booted,
    _exchange: tempfile::TempDir,
    token: String,
    console: Vec<u8>,
    ready_after: Duration,
}

enum Stop {
    Died,
    TimedOut,
}

impl Warm {
    fn boot(key: Key, server: ServerCmd, job: &UmlJob, deadline: Instant) -> Result<Warm> {
        let t0 = Instant::now();
        let host = host_config().map_err(|e| anyhow!("UML backend unavailable: {e}"))?;
        let token = nonce();
        let (argv, env) = server(&token);
        // The server's own shared dir (the init script's cwd and exit file); jobs bring theirs.
        let exchange = private_dir()?;
        let mut sj = UmlJob::new(argv, exchange.path());
        sj.env = env;
        sj.modules = key.modules.clone();
        sj.alternatives = key.alternatives.clone();
        sj.mem_mb = key.mem_mb;
        sj.console_stdin = true;
        sj.tmpfs = job.tmpfs.clone();
        let plan = Plan::new(&sj, host)?;
        let booted = boot(&plan, host, sj.mem_mb)?;
        let mut w = Warm { key, booted, _exchange: exchange, token, console: Vec::new(), ready_after: Duration::ZERO };
        let ready = w.marker("ready");
        let fail = plan.marker("fail:");
        let found = w.wait(deadline, |c| find(c, ready.as_bytes()).map(|_| Ok(())).or_else(|| find(c, fail.as_bytes()).map(|_| Err(()))));
        match found {
            Ok(Ok(())) => {}
            Ok(Err(())) | Err(Stop::Died) => {
                let why = plan.failure(&w.console).unwrap_or_else(|| "the guest ended".into());
                bail!("UML guest setup failed: {why}\n{}", tail(plan.clean_console(&w.console).as_bytes()))
            }
            Err(Stop::TimedOut) => {
                bail!("UML guest timed out after {:?} (killed) before the command started\n{}", job.timeout, tail(&w.console))
            }
        }
        w.ready_after = t0.elapsed();
        Ok(w)
    }

    fn marker(&self, what: &str) -> String {
        format!("@@vpnlab-pool:{}:{what}", self.token)
    }

    fn alive(&self) -> bool {
        let mut p = libc::pollfd { fd: self.booted.guest.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        unsafe { libc::poll(&mut p, 1, 0) == 0 }
    }

    /// Sends the job; returns (its id, exit code, console output) once its command ended.
    fn job(&mut self, job: &UmlJob, start: Instant, deadline: Instant) -> Result<(String, i32, String)> {
        let host = host_config().map_err(|e| anyhow!("UML backend unavailable: {e}"))?;
        let plan = Plan::new(job, host)?;
        let id = nonce();
        let spec = Spec {
            id: id.clone(),
            argv: std::iter::once(plan.program().to_string_lossy().into_owned()).chain(job.argv[1..].iter().cloned()).collect(),
            env: job.env.clone(),
            cwd: plan.cwd.clone(),
            shared: plan.shared.clone(),
            reexpose: plan.reexpose.clone(),
            program_dir: plan.program_dir.clone(),
            tmpfs: job.tmpfs.clone(),
            private: self.booted.private.path().to_path_buf(),
            modules: plan.modules.clone(),
            modprobe: host.modprobe.clone(),
        };
        // What the guest printed while idle (kernel messages) is not this job's.
        drain(self.booted.guest.console.as_raw_fd(), &mut self.console)?;
        self.console.clear();
        let line = serde_json::to_string(&spec)? + "\n";
        let mut stdin = std::fs::File::from(self.booted.guest.stdin.try_clone()?);
        stdin.write_all(line.as_bytes()).context("sending the job to the UML guest")?;
        let exit = self.marker(&format!("exit:{id}:"));
        let fail = self.marker(&format!("fail:{id}:"));
        let found = self.wait(deadline, |c| {
            let rest = |at: usize, m: &str| String::from_utf8_lossy(&c[at + m.len()..]).split("@@").next().map(str::to_string);
            if let Some(at) = find(c, exit.as_bytes()) {
                if let Some(code) = rest(at, &exit).filter(|_| find(&c[at..], b"@@").is_some()) {
                    return Some(Ok((at, code)));
                }
            }
            find(c, fail.as_bytes()).filter(|at| find(&c[*at..], b"@@").is_some()).and_then(|at| rest(at, &fail)).map(Err)
        });
        let text = |c: &[u8]| String::from_utf8_lossy(c).replace("\r\n", "\n");
        match found {
            Ok(Ok((at, code))) => {
                let code: i32 = code.trim().parse().map_err(|_| anyhow!("the UML guest reported exit code {code:?}"))?;
                let mut console = text(&self.console[..at]);
                // The marker's own line break.
                if console.ends_with('\n') {
                    console.pop();
                }
                Ok((id, code, console))
            }
            Ok(Err(why)) => bail!("the UML guest could not start the job: {why}\n{}", tail(&self.console)),
            Err(Stop::TimedOut) => {
                bail!(
                    "UML guest timed out after {:?} (killed)\n{}",
                    deadline.saturating_duration_since(start),
                    tail(text(&self.console).as_bytes())
                )
            }
            Err(Stop::Died) => bail!("the UML guest ended during the job\n{}", tail(text(&self.console).as_bytes())),
        }
    }

    /// Ok once the server says the guest is idle again after job `id`.
    fn settled(&mut self, id: &str) -> Result<()> {
        let idle = self.marker(&format!("idle:{id}@@"));
        let dirty = self.marker(&format!("dirty:{id}:"));
        let r = self.wait(Instant::now() + Duration::from_secs(30), |c| {
            if find(c, idle.as_bytes()).is_some() {
                return Some(Ok(()));
            }
            let at = find(c, dirty.as_bytes())?;
            let rest = &c[at + dirty.len()..];
            let end = find(rest, b"@@")?;
            Some(Err(String::from_utf8_lossy(&rest[..end]).into_owned()))
        });
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => bail!("not idle after its job: {why}"),
            Err(Stop::TimedOut) => bail!("no idle check within 30 s"),
            Err(Stop::Died) => bail!("it ended after its job\n{}", tail(&self.console)),
        }
    }

    /// Reads the console until `found` answers (it sees the whole output since the job was
    /// sent), the guest dies or `deadline` passes (then the guest is killed).
    fn wait<T>(&mut self, deadline: Instant, found: impl Fn(&[u8]) -> Option<T>) -> Result<T, Stop> {
        loop {
            if let Some(t) = found(&self.console) {
                return Ok(t);
            }
            let now = Instant::now();
            if now >= deadline {
                self.booted.guest.kill();
                return Err(Stop::TimedOut);
            }
            let ms = deadline.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1;
            let g = &self.booted.guest;
            let mut fds = [
                libc::pollfd { fd: g.console.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: g.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                self.booted.guest.kill();
                return Err(Stop::Died);
            }
            let open = if fds[0].revents != 0 { drain(g.console.as_raw_fd(), &mut self.console).unwrap_or(false) } else { true };
            if fds[1].revents != 0 || !open {
                let _ = drain(g.console.as_raw_fd(), &mut self.console);
                return found(&self.console).ok_or(Stop::Died);
            }
        }
    }
}
