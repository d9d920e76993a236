//! User-mode-linux backend: run one command inside a fresh UML guest ([`run`]), or in a warm
//! guest reused for successive commands ([`pool`], what the labs use).
//!
//! Some labs need kernel features the host kernel lacks (PPP, kernel ESP). Debian's
//! `user-mode-linux` package ships a Linux kernel that runs as an ordinary host process
//! (`/usr/bin/linux.uml`, modules under `/usr/lib/uml/modules/<version>`). [`run`] boots it
//! with the host's `/` mounted read-only through hostfs, mounts [`UmlJob::shared_dir`]
//! read-write at the same path, loads the requested modules, runs [`UmlJob::argv`] as root
//! and powers the guest off again. Results and logs are exchanged through the shared dir.
//!
//! # Process hygiene
//!
//! * The kernel is started with `clone3(CLONE_NEWPID)`, so `linux.uml` is PID 1 of a PID
//!   namespace of its own: when it exits or is killed, the host kernel kills and reaps every
//!   process it created (UML runs each guest address space as a host process) before our
//!   `waitpid` returns. If the namespace cannot be created (no CAP_SYS_ADMIN) it falls back to
//!   a plain child; the process-group kill below still covers that case.
//! * The child calls `setsid()` (its own session and process group) and sets
//!   `PR_SET_PDEATHSIG(SIGKILL)`. PDEATHSIG fires when the *thread* that spawned the child
//!   exits, not the process. [`run`] spawns from the calling thread and blocks that thread
//!   until the guest has been reaped, so the signal can only fire when the whole harness dies,
//!   which is exactly what we want. Do not move the spawn to a short-lived helper thread. (A
//!   warm guest of the [`pool`] is spawned by its own thread, which lives as long as it.)
//! * On timeout, error, panic (drop guard) the whole group and the namespace init get SIGKILL
//!   and are reaped; afterwards `/proc` is scanned for anything left in the guest's session
//!   (killed, and an error if it survives). Without the namespace, the guest's other host
//!   processes die with the kernel process too (observed), but stay zombies until the host's
//!   init reaps them.
//! * `TMPDIR` (UML's memory file; on `/dev/shm` when it is a tmpfs), `HOME` and `uml_dir=`
//!   (umid directory with the mconsole socket and pid file, normally `~/.uml/<random>`)
//!   point into private temp dirs removed afterwards; `RLIMIT_CORE` is 0 (UML aborts on a
//!   guest panic and would otherwise dump a 1 GB core).
//!
//! # Host CPUs with AVX-512 / AMX
//!
//! The 6.1 UML kernel saves and restores guest FPU state with
//! `ptrace(PTRACE_{GET,SET}REGSET, NT_X86_XSTATE)` using a fixed 832-byte buffer (x87/SSE/AVX).
//! The host kernel only accepts a SETREGSET of the host's full XSAVE size, so on a host with
//! AVX-512 or AMX the first guest process dies with `userspace - ptrace set fp regs failed,
//! errno = 14` and the guest panics. Workaround: a tiny `LD_PRELOAD` shim (C source below,
//! compiled with the host `cc` once per harness process, then copied into each run's private
//! dir) transfers the full host-sized state and keeps the parts that do not fit into UML's
//! buffer per buffer address, so AVX-512 state survives context switches between guest
//! threads too (tested: `uml_avx512_state_survives_guest_thread_switches`; a variant that
//! only keeps the live state corrupts even glibc's printf in the guest). Only used when
//! CPUID says the host XSAVE area is larger than UML's buffer; [`available`] then also
//! requires a C compiler. (Not fixable with a seccomp filter forcing UML's FXSAVE fallback:
//! that loses the upper AVX/AVX-512 state on every guest thread switch.)
//!
//! # Boot time
//!
//! ~0.25 s to a trivial command on a 2-CPU host, instead of ~1.6 s: the kernel command line
//! skips the raid6/xor benchmarks and legacy pty registration, and the init script avoids
//! spawning programs (each costs 10-60 ms in the guest): one `mount -a` with a generated
//! fstab, one `modprobe -a`, and a module autoloader that answers crypto-instance requests
//! without running modprobe.

use anyhow::{anyhow, bail, Context, Result};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod dirs;
mod guest;
mod host;
mod plan;
#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod tests;

use dirs::{memory_dir, private_dir, sweep_stale_dirs};
use guest::{drain, find, tail, Guest};
use host::{fpu_shim_so, host_config};
use plan::Plan;

pub mod pool;
mod server;
pub(crate) use server::serve as serve_pool_guest;

/// The UML kernel binary (Debian package `user-mode-linux`).
pub const UML_KERNEL: &str = "/usr/bin/linux.uml";
/// Parent of the UML kernel's module trees (`<dir>/<version>/modules.dep`).
pub const UML_MODULES: &str = "/usr/lib/uml/modules";

/// Modules loaded with `esp4`/`esp6` so that ESP states with the usual algorithms
/// (`cbc(aes)`+`hmac(sha256)`, `rfc4106(gcm(aes))`) can be added. Measured without the
/// autoloader: no `xfrm_user` -> `Cannot open netlink socket: Protocol not supported`; no
/// `hmac`/`cbc` -> `Requested AUTH algorithm not found`; no `drbg` or `sha512_generic` (the
/// default stdrng is drbg_nopr_hmac_sha512), no `authenc`/`echainiv` (cbc+hmac) or `seqiv`
/// (gcm) -> `Kernel was unable to initialize cryptographic operations`; no `gcm`/`ctr`/
/// `ghash-generic` -> `Requested AEAD algorithm not found`. (`jitterentropy_rng` only seeds
/// drbg.) The autoloader fetches all of these on demand too, but two states then take ~2 s
/// instead of ~0.1 s.
pub const ESP_CRYPTO_MODULES: &[&str] = &[
    "xfrm_user",
    "xfrm_algo",
    "sha512_generic",
    "jitterentropy_rng",
    "drbg",
    "authenc",
    "authencesn",
    "echainiv",
    "seqiv",
    "cbc",
    "ctr",
    "gcm",
    "ghash-generic",
    "hmac",
];

/// A command to run inside a fresh UML guest.
#[derive(Debug, Clone)]
pub struct UmlJob {
    /// Absolute program path + args, run inside the guest as root (stdin is /dev/null,
    /// stdout/stderr go to the guest console, see [`UmlOutcome::console`]).
    pub argv: Vec<String>,
    /// Extra environment inside the guest (on top of PATH, HOME=/root, TERM=dumb).
    pub env: Vec<(String, String)>,
    /// Host dir, writable, mounted in the guest at the same path (hostfs rw).
    pub shared_dir: PathBuf,
    /// Working directory inside the guest (must exist on the host).
    pub cwd: PathBuf,
    /// Kernel modules to load before the command (`esp4`/`esp6` pull in
    /// [`ESP_CRYPTO_MODULES`]). Other modules are also autoloaded on demand.
    pub modules: Vec<String>,
    /// Guest memory in MiB (default 1024). Only touched pages cost host memory.
    pub mem_mb: u32,
    /// Overall deadline (boot + command + power-off). On expiry the guest is killed and
    /// [`run`] returns an error.
    pub timeout: Duration,
    /// Extra guest directories to cover with an empty tmpfs (e.g. `/var/lib/foo` for a daemon
    /// that insists on writing there; the host `/` is read-only in the guest). `/tmp`, `/run`,
    /// `/dev/shm` and `/var/run` are always tmpfs. Missing directories are skipped.
    pub tmpfs: Vec<PathBuf>,
    /// Host directories the guest must see although a guest tmpfs (/tmp, /run, ...) covers
    /// their path, e.g. a lab folder in a checkout under /tmp: mounted read-only on top.
    pub expose: Vec<PathBuf>,
    /// Debian alternatives to change in the guest, as (name, target): e.g. `("iptables",
    /// "/usr/sbin/iptables-legacy")`. The guest sees a copy of the host's `/etc/alternatives`
    /// with these links changed (hostfs, read-only, over `/etc/alternatives`), so the choice
    /// holds for every process in the guest whatever its PATH (`/usr/sbin/ipsec` puts
    /// `/usr/sbin` first). Names the host has no alternative for are skipped.
    pub alternatives: Vec<(String, PathBuf)>,
    /// The command's stdin is the guest console (the host writes to UML's stdin) instead of
    /// /dev/null: for the pool's guest server ([`pool`]).
    pub console_stdin: bool,
}

impl UmlJob {
    /// A job with the defaults: cwd = shared_dir, 1024 MiB, 300 s, no modules, no env.
    pub fn new(argv: Vec<String>, shared_dir: impl Into<PathBuf>) -> Self {
        let shared_dir = shared_dir.into();
        UmlJob {
            argv,
            env: Vec::new(),
            cwd: shared_dir.clone(),
            shared_dir,
            modules: Vec::new(),
            mem_mb: 1024,
            timeout: Duration::from_secs(300),
            tmpfs: Vec::new(),
            expose: Vec::new(),
            alternatives: Vec::new(),
            console_stdin: false,
        }
    }
}

/// What a finished guest run produced.
#[derive(Debug, Clone)]
pub struct UmlOutcome {
    /// Exit code of the command (128+N when killed by signal N, shell convention).
    pub exit_code: i32,
    /// Guest console output (kernel messages and the command's stdout/stderr), `\r\n`
    /// normalised to `\n`, the backend's own marker lines removed.
    pub console: String,
    /// Time from calling [`run`] until the guest init started the command.
    pub boot: Duration,
    /// Time from calling [`run`] until the guest was gone and cleaned up.
    pub total: Duration,
    /// Whether the AVX-512/AMX ptrace shim was used (see module docs).
    pub fpu_shim: bool,
}

/// Ok(()) when linux.uml and its module dir exist and modprobe is available (and a C
/// compiler when the host CPU needs the FPU shim); Err(reason naming the Debian package to
/// install) otherwise.
pub fn available() -> Result<(), String> {
    host_config().map(|_| ())
}

/// The UML kernel's version (`linux.uml --version`), when the backend is usable.
pub fn version() -> Option<String> {
    host_config().ok().map(|h| h.version.clone())
}

/// The UML kernel's module directory, when the backend is usable.
pub fn module_dir() -> Option<PathBuf> {
    host_config().ok().map(|h| Path::new(UML_MODULES).join(&h.version))
}

/// Guest paths the init script covers with its own filesystems; host paths below them are
/// invisible in the guest unless mounted through hostfs again.
const GUEST_OVERMOUNTS: &[&str] = &["/dev", "/proc", "/sys", "/tmp", "/run", "/var/run"];

/// Where the private dir (modprobe wrapper and module tree) appears in the guest.
const GUEST_PRIVATE: &str = "/run/vpnlab-uml";

/// Run `job` in a fresh guest and wait for it (blocking the calling thread, see module docs).
///
/// Returns Ok with the command's exit code whenever the command ran to completion (whatever
/// its exit code). Errors: bad job, module load failure, guest crash/panic, timeout.
pub fn run(job: &UmlJob) -> Result<UmlOutcome> {
    run_observed(job, |_, _, _| {})
}

/// [`run`], telling `started` the guest's pid (its session id), private dir and memory dir as
/// soon as it runs (the tests check afterwards that nothing of them is left).
fn run_observed(job: &UmlJob, started: impl FnOnce(libc::pid_t, &Path, &Path)) -> Result<UmlOutcome> {
    let start = Instant::now();
    let host = host_config().map_err(|e| anyhow!("UML backend unavailable: {e}"))?;
    let plan = Plan::new(job, host)?;
    sweep_stale_dirs();

    let b = boot(&plan, host, job.mem_mb)?;
    // Separate bindings, the guest last: it is dropped (killed) before the dirs go.
    let private = b.private;
    let memdir = b.memdir;
    let fpu_shim = b.fpu_shim;
    let mut guest = b.guest;
    let deadline = start + job.timeout;
    started(guest.pid, private.path(), memdir.path());

    // Event loop: console output and process exit, until the guest is gone.
    let mut console: Vec<u8> = Vec::new();
    let mut boot = None;
    let mut scanned = 0usize;
    let mut console_open = true;
    let mut exited = false;
    let mut timed_out = false;
    let mut kill_deadline: Option<Instant> = None;
    // UML 6.1 sometimes hangs after its last words ("reboot: Power down") instead of exiting
    // (seen once in a soak): the guest's work is done then, so it is killed after a grace.
    let mut powered_off: Option<Instant> = None;
    const POWER_DOWN_GRACE: Duration = Duration::from_secs(2);
    let start_marker = plan.marker("start");
    while console_open || !exited {
        let now = Instant::now();
        if !timed_out && now >= deadline {
            timed_out = true;
            guest.kill();
            kill_deadline = Some(now + Duration::from_secs(10));
        }
        if let Some(t) = powered_off {
            if !exited && kill_deadline.is_none() && now >= t + POWER_DOWN_GRACE {
                guest.kill();
                kill_deadline = Some(now + Duration::from_secs(10));
            }
        }
        if exited && kill_deadline.is_none() {
            // The namespace is gone; only a fallback (non-namespace) run can leave writers of
            // the console pipe behind. Kill them, and give the pipe a moment to report EOF.
            guest.kill();
            kill_deadline = Some(now + Duration::from_secs(5));
        }
        let mut until = kill_deadline.unwrap_or(deadline);
        if let (Some(t), None) = (powered_off, kill_deadline) {
            until = until.min(t + POWER_DOWN_GRACE);
        }
        if now >= kill_deadline.unwrap_or(deadline) && (timed_out || exited) {
            if exited {
                break;
            }
            bail!("UML guest did not die within 10 s of SIGKILL (pid {})\n{}", guest.pid, tail(&console));
        }
        let wait_ms = until.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1;
        let mut fds = [
            libc::pollfd { fd: guest.console.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: guest.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        if !console_open {
            fds[0].fd = -1;
        }
        if exited {
            fds[1].fd = -1;
        }
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll on UML console/pidfd");
        }
        if fds[0].revents != 0 {
            console_open = drain(guest.console.as_raw_fd(), &mut console)?;
            if powered_off.is_none() && find(&console[console.len().saturating_sub(4096)..], b"reboot: Power down").is_some() {
                powered_off = Some(Instant::now());
            }
            if boot.is_none() {
                let from = scanned.saturating_sub(start_marker.len());
                if find(&console[from..], start_marker.as_bytes()).is_some() {
                    boot = Some(start.elapsed());
                }
                scanned = console.len();
            }
        }
        if fds[1].revents != 0 {
            exited = true;
        }
    }
    let status = guest.reap()?;
    let leftovers = guest.kill_session();
    drop(guest);
    let console_text = plan.clean_console(&console);
    let exit_file = plan.exit_file();
    let reported = std::fs::read_to_string(&exit_file).ok();
    let _ = std::fs::remove_file(&exit_file);
    drop(memdir);
    drop(private);
    if !leftovers.is_empty() {
        bail!("UML guest processes survived SIGKILL: {leftovers:?}");
    }
    if timed_out {
        bail!(
            "UML guest timed out after {:?} (killed){}\n{}",
            job.timeout,
            if boot.is_some() { "" } else { " before the command started" },
            tail(console_text.as_bytes())
        );
    }
    if let Some(reason) = plan.failure(&console) {
        bail!("UML guest setup failed: {reason}\n{}", tail(console_text.as_bytes()));
    }
    let exit_code = match reported.as_deref().map(str::trim).map(str::parse::<i32>) {
        Some(Ok(c)) => c,
        _ => bail!("UML guest ended ({status}) without reporting the command's exit code\n{}", tail(console_text.as_bytes())),
    };
    Ok(UmlOutcome { exit_code, console: console_text, boot: boot.unwrap_or_default(), total: start.elapsed(), fpu_shim })
}

/// A booted guest and its private dirs (fields drop in this order: the guest is dead before
/// its dirs go).
struct Booted {
    guest: Guest,
    memdir: tempfile::TempDir,
    private: tempfile::TempDir,
    fpu_shim: bool,
}

/// Writes the guest's files for `plan` into a new private dir and starts the kernel (from the
/// calling thread: PDEATHSIG, see the module docs).
fn boot(plan: &Plan, host: &host::HostConfig, mem_mb: u32) -> Result<Booted> {
    // Private dirs. Declared before the guest guard so they are removed after it is dead.
    let private = private_dir()?;
    let memdir = memory_dir(private.path())?;
    let umldir = private.path().join("uml");
    std::fs::create_dir(&umldir)?;
    let init_path = plan.write_guest_files(private.path())?;

    let mut env: Vec<String> = vec![
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("HOME={}", private.path().display()),
        format!("TMPDIR={}", memdir.path().display()),
    ];
    let fpu_shim = if let Some(cc) = &host.cc {
        let so = private.path().join("fpu-shim.so");
        std::fs::write(&so, fpu_shim_so(cc)?).context("writing the FPU shim")?;
        env.push(format!("LD_PRELOAD={}", so.display()));
        true
    } else {
        false
    };
    let args: Vec<String> = vec![
        UML_KERNEL.into(),
        format!("mem={}M", mem_mb.max(64)),
        "rootfstype=hostfs".into(),
        "rootflags=/".into(),
        "ro".into(),
        format!("init={}", init_path.display()),
        "con0=fd:0,fd:1".into(),
        "con=null".into(),
        "ssl=null".into(),
        "umid=vpnlab".into(),
        format!("uml_dir={}", umldir.display()),
        "quiet".into(),
        "panic=-1".into(),
        // Boot time: 6.1's builtin raid6/xor benchmarks busy-wait ~1 s on UML's 100 Hz clock,
        // registering 256 legacy BSD ptys takes ~0.15 s. Neither is used by any lab (xor keeps
        // a default template; only md raid456/btrfs raid56 would need raid6), jfs and zswap
        // neither. SELinux only prints deprecation warnings in the guest.
        "initcall_blacklist=raid6_select_algo,calibrate_xor_blocks,init_jfs_fs,init_zswap".into(),
        "pty.legacy_count=0".into(),
        "selinux=0".into(),
        "devtmpfs.mount=1".into(),
    ];
    let guest = Guest::spawn(&args, &env, private.path())?;
    Ok(Booted { guest, memdir, private, fpu_shim })
}
