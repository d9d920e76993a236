//! User-mode-linux backend: run one command inside a fresh UML guest.
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
//!   which is exactly what we want. Do not move the spawn to a short-lived helper thread.
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
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// Everything [`run`] needs from the host, probed once.
#[derive(Debug)]
struct HostConfig {
    version: String,
    modprobe: PathBuf,
    /// C compiler for the FPU shim, when the shim is needed.
    cc: Option<PathBuf>,
}

fn host_config() -> Result<&'static HostConfig, String> {
    static CFG: OnceLock<Result<HostConfig, String>> = OnceLock::new();
    CFG.get_or_init(probe_host).as_ref().map_err(|e| e.clone())
}

fn probe_host() -> Result<HostConfig, String> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err("the UML backend is only supported on x86_64 Linux".into());
    }
    if !is_executable(Path::new(UML_KERNEL)) {
        return Err(format!(
            "{UML_KERNEL} not found: install the Debian package `user-mode-linux`"
        ));
    }
    let out = std::process::Command::new(UML_KERNEL)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {UML_KERNEL} --version: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() || version.contains(char::is_whitespace) {
        return Err(format!(
            "{UML_KERNEL} --version failed ({}): reinstall the Debian package `user-mode-linux`",
            out.status
        ));
    }
    let moddir = Path::new(UML_MODULES).join(&version);
    if !moddir.join("modules.dep").is_file() {
        return Err(format!(
            "{} missing: the UML kernel modules come with the Debian package `user-mode-linux` (version {version})",
            moddir.join("modules.dep").display()
        ));
    }
    let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe", "/usr/bin/modprobe", "/bin/modprobe"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_executable(p))
        .ok_or_else(|| "modprobe not found: install the Debian package `kmod`".to_string())?;
    let cc = if needs_fpu_shim() {
        Some(find_in_path(&["cc", "gcc", "clang"]).ok_or_else(|| {
            format!(
                "this CPU's XSAVE area is {} bytes (AVX-512/AMX); Debian's UML {version} cannot \
                 restore it (guest dies with `ptrace set fp regs failed, errno = 14`) unless the \
                 harness builds its ptrace shim: install the Debian package `gcc`",
                host_xsave_size()
            )
        })?)
    } else {
        None
    };
    Ok(HostConfig { version, modprobe, cc })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn find_in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    names.iter().find_map(|n| {
        std::env::split_paths(&path).map(|d| d.join(n)).find(|p| is_executable(p))
    })
}

/// Size of UML 6.1's FPU buffer on x86_64: `sizeof(struct _xstate)` (legacy 512 + header 64 +
/// AVX 256).
const UML_XSTATE_SIZE: u32 = 832;

/// Bytes of the XSAVE area for the features the host kernel enabled (XCR0).
fn host_xsave_size() -> u32 {
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    {
        use std::arch::x86_64::__cpuid_count;
        let leaf1 = unsafe { __cpuid_count(1, 0) };
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        if !osxsave || unsafe { __cpuid_count(0, 0) }.eax < 0xd {
            return 0;
        }
        unsafe { __cpuid_count(0xd, 0) }.ebx
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

fn needs_fpu_shim() -> bool {
    host_xsave_size() > UML_XSTATE_SIZE
}

/// LD_PRELOAD shim for linux.uml: see the module docs. UML is single-threaded where it calls
/// ptrace (all guest tasks are switched on one host thread), so no locking.
const FPU_SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/uio.h>

#define REQ_GETREGSET 0x4204
#define REQ_SETREGSET 0x4205
#define NT_XSTATE 0x202
#define HDR_OFF 512            /* xstate header: xstate_bv at +0, xcomp_bv at +8 */
#define CALLER_BITS 0x7ULL     /* x87 | SSE | AVX: what fits into UML's 832 bytes */

typedef long (*ptrace_fn)(int, pid_t, void *, void *);
static ptrace_fn real_ptrace;
static size_t full;            /* host xstate size, learnt from the first GETREGSET */

/* One host-sized buffer per UML buffer address (= per guest task). Allocated with mmap,
   not malloc: UML maps guest memory right behind its brk. */
struct ent { void *key; unsigned char *buf; struct ent *next; };
#define NB 1024
static struct ent *tab[NB];

static struct ent *lookup(void *key) {
    unsigned h = (unsigned)(((uintptr_t)key >> 4) % NB);
    for (struct ent *e = tab[h]; e; e = e->next) if (e->key == key) return e;
    void *m = mmap(0, sizeof(struct ent) + 64 + full, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 0;
    struct ent *e = m;
    e->buf = (unsigned char *)m + 64;
    e->key = key; e->next = tab[h]; tab[h] = e;
    return e;
}

long ptrace(int req, ...) {
    __builtin_va_list ap;
    __builtin_va_start(ap, req);
    pid_t pid = __builtin_va_arg(ap, pid_t);
    void *addr = __builtin_va_arg(ap, void *);
    void *data = __builtin_va_arg(ap, void *);
    __builtin_va_end(ap);
    if (!real_ptrace) real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
    if ((req == REQ_GETREGSET || req == REQ_SETREGSET) && (uintptr_t)addr == NT_XSTATE && data) {
        struct iovec *uiov = data;
        if (!full) {
            static unsigned char probe[1 << 16];
            struct iovec iov = { probe, sizeof probe };
            if (real_ptrace(REQ_GETREGSET, pid, addr, &iov) == 0) full = iov.iov_len;
        }
        size_t n = uiov->iov_len;
        if (full && n < full && n >= HDR_OFF + 16) {
            struct ent *e = lookup(uiov->iov_base);
            if (!e) { errno = ENOMEM; return -1; }
            struct iovec iov = { e->buf, full };
            if (req == REQ_GETREGSET) {
                long r = real_ptrace(req, pid, addr, &iov);
                if (r < 0) return r;
                memcpy(uiov->iov_base, e->buf, n);
                return r;
            }
            /* Take what UML holds from its buffer, keep the rest from the last GET into the
               same buffer (a fresh buffer leaves those components in their init state). */
            uint64_t bv_saved, bv_caller, bv, zero = 0;
            memcpy(&bv_saved, e->buf + HDR_OFF, 8);
            memcpy(e->buf, uiov->iov_base, n);
            memcpy(&bv_caller, e->buf + HDR_OFF, 8);
            bv = (bv_caller & CALLER_BITS) | (bv_saved & ~CALLER_BITS);
            memcpy(e->buf + HDR_OFF, &bv, 8);
            memcpy(e->buf + HDR_OFF + 8, &zero, 8);
            return real_ptrace(req, pid, addr, &iov);
        }
    }
    return real_ptrace(req, pid, addr, data);
}
"#;

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
    let start = Instant::now();
    let host = host_config().map_err(|e| anyhow!("UML backend unavailable: {e}"))?;
    let plan = Plan::new(job, host)?;
    sweep_stale_dirs();

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
        format!("mem={}M", job.mem_mb.max(64)),
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
    let deadline = start + job.timeout;
    let mut guest = Guest::spawn(&args, &env, private.path())?;
    #[cfg(test)]
    tests::LAST_RUN.with(|l| {
        *l.borrow_mut() = Some((guest.pid, private.path().to_owned(), memdir.path().to_owned()))
    });

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
            bail!(
                "UML guest did not die within 10 s of SIGKILL (pid {})\n{}",
                guest.pid,
                tail(&console)
            );
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
        _ => bail!(
            "UML guest ended ({status}) without reporting the command's exit code\n{}",
            tail(console_text.as_bytes())
        ),
    };
    Ok(UmlOutcome {
        exit_code,
        console: console_text,
        boot: boot.unwrap_or_default(),
        total: start.elapsed(),
        fpu_shim,
    })
}

/// The validated job, ready to be turned into an init script.
struct Plan<'a> {
    job: &'a UmlJob,
    host: &'a HostConfig,
    nonce: String,
    shared: PathBuf,
    cwd: PathBuf,
    /// Host dirs hidden by guest mounts that must be visible again (read-only).
    reexpose: Vec<PathBuf>,
    modules: Vec<String>,
}

impl<'a> Plan<'a> {
    fn new(job: &'a UmlJob, host: &'a HostConfig) -> Result<Self> {
        if job.argv.is_empty() || !job.argv[0].starts_with('/') {
            bail!("UmlJob.argv must start with an absolute program path, got {:?}", job.argv);
        }
        for (k, _) in &job.env {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                bail!("invalid environment variable name {k:?}");
            }
        }
        let shared = canonical_dir(&job.shared_dir, "shared_dir")?;
        let cwd = canonical_dir(&job.cwd, "cwd")?;
        for p in [&shared, &cwd] {
            if p.to_string_lossy().contains([',', '\n', '\'']) || p == Path::new("/") {
                bail!("unsupported path for the UML guest: {}", p.display());
            }
            if p.starts_with("/proc") || p.starts_with("/sys") {
                bail!("{} cannot be shared with the UML guest", p.display());
            }
        }
        let mut covers: Vec<PathBuf> = GUEST_OVERMOUNTS.iter().map(PathBuf::from).collect();
        covers.extend(job.tmpfs.iter().cloned());
        let mut reexpose: Vec<PathBuf> = Vec::new();
        let prog_dir = Path::new(&job.argv[0]).parent().and_then(|d| d.canonicalize().ok());
        let extra: Vec<PathBuf> = job.expose.iter().filter_map(|d| d.canonicalize().ok()).collect();
        for d in [Some(cwd.clone()), prog_dir].into_iter().flatten().chain(extra) {
            if d.starts_with(&shared) || reexpose.iter().any(|r| d.starts_with(r)) {
                continue;
            }
            if covers.iter().any(|c| d.starts_with(c)) && !d.to_string_lossy().contains([',', '\n', '\'']) {
                reexpose.push(d);
            }
        }
        let mut modules: Vec<String> = Vec::new();
        let mut add = |m: &str| {
            if !modules.iter().any(|x| x == m) {
                modules.push(m.to_string());
            }
        };
        for m in &job.modules {
            if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
                bail!("invalid module name {m:?}");
            }
            if matches!(m.as_str(), "esp4" | "esp6" | "esp4_offload" | "esp6_offload") {
                ESP_CRYPTO_MODULES.iter().for_each(|c| add(c));
            }
            add(m);
        }
        Ok(Plan { job, host, nonce: nonce(), shared, cwd, reexpose, modules })
    }

    fn marker(&self, what: &str) -> String {
        format!("@@vpnlab-uml:{}:{what}", self.nonce)
    }

    fn exit_file(&self) -> PathBuf {
        self.shared.join(format!(".vpnlab-uml-{}.exit", self.nonce))
    }

    /// Write the guest's init script, fstab, modprobe wrapper and module tree into `private`
    /// (mounted read-only at [`GUEST_PRIVATE`] in the guest); returns the init script path.
    ///
    /// Every program the guest runs costs 10-60 ms (dynamic linking over hostfs, UML's
    /// process switch), so the init is shell builtins plus one `mount -a` for all mounts,
    /// `mkdir`, `ip` and one `modprobe -a`.
    fn write_guest_files(&self, private: &Path) -> Result<PathBuf> {
        let modroot = private.join("modroot/lib/modules");
        std::fs::create_dir_all(&modroot)?;
        std::os::unix::fs::symlink(
            Path::new(UML_MODULES).join(&self.host.version),
            modroot.join(&self.host.version),
        )?;
        write_executable(&private.join("modprobe"), &self.modprobe_wrapper())?;
        if !self.job.alternatives.is_empty() {
            write_alternatives(&private.join("alternatives"), Path::new(HOST_ALTERNATIVES), &self.job.alternatives)?;
        }
        std::fs::write(private.join("fstab"), self.fstab(private))?;
        let init = private.join("init");
        write_executable(&init, &self.init_script(private))?;
        Ok(init)
    }

    /// `/proc/sys/kernel/modprobe` for the guest. The crypto API asks for every algorithm
    /// instance it builds (`crypto-cbc(aes)`, `crypto-cbc(aes)-all`, ... 18 requests for two
    /// ESP states); a modprobe run costs ~60 ms in the guest, so names that no module
    /// provides (per modules.alias) are answered by the shell alone.
    fn modprobe_wrapper(&self) -> String {
        let mut w = String::from("#!/bin/sh\n# vpnlab UML guest: kernel module autoloader\nfor n; do :; done\n");
        let aliases = std::fs::read_to_string(Path::new(UML_MODULES).join(&self.host.version).join("modules.alias"))
            .unwrap_or_default();
        let mut crypto: Vec<&str> = aliases
            .lines()
            .filter_map(|l| l.strip_prefix("alias "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|a| a.starts_with("crypto-"))
            .collect();
        crypto.sort_unstable();
        crypto.dedup();
        // Globs in a crypto alias: let modprobe decide for every crypto name.
        if !crypto.is_empty() && !crypto.iter().any(|a| a.contains(['*', '?', '[', '\''])) {
            let pats: Vec<String> = crypto.iter().map(|a| format!("'{a}'")).collect();
            w.push_str(&format!("case $n in crypto-*) case $n in {}) ;; *) exit 1;; esac;; esac\n", pats.join("|")));
        }
        w.push_str(&format!(
            "exec {} -d {GUEST_PRIVATE}/modroot \"$@\"\n",
            sh_quote(&self.host.modprobe.to_string_lossy())
        ));
        w
    }

    fn fstab(&self, private: &Path) -> String {
        let mut t = String::new();
        let mut add = |src: &str, dir: &Path, fs: &str, opts: &str| {
            t.push_str(&format!("{src} {} {fs} {opts} 0 0\n", fstab_escape(dir)));
        };
        add("proc", Path::new("/proc"), "proc", "rw,nosuid,nodev,noexec");
        add("sysfs", Path::new("/sys"), "sysfs", "rw,nosuid,nodev,noexec");
        add("devpts", Path::new("/dev/pts"), "devpts", "rw,nosuid,noexec,gid=5,mode=0620,ptmxmode=0666,X-mount.mkdir");
        add("tmpfs", Path::new("/dev/shm"), "tmpfs", "rw,nosuid,nodev,mode=1777,X-mount.mkdir");
        add("tmpfs", Path::new("/tmp"), "tmpfs", "rw,nosuid,nodev,mode=1777");
        add("tmpfs", Path::new("/run"), "tmpfs", "rw,nosuid,nodev,mode=0755");
        if !Path::new("/var/run").is_symlink() && Path::new("/var/run").is_dir() {
            add("tmpfs", Path::new("/var/run"), "tmpfs", "rw,nosuid,nodev,mode=0755");
        }
        for d in &self.job.tmpfs {
            if d.is_dir() {
                add("tmpfs", d, "tmpfs", "rw,mode=0755");
            }
        }
        // hostfs: the mount data is the host path (no commas: validated in Plan::new).
        add("none", &self.shared, "hostfs", &format!("rw,{},X-mount.mkdir", fstab_escape(&self.shared)));
        for d in &self.reexpose {
            add("none", d, "hostfs", &format!("ro,{},X-mount.mkdir", fstab_escape(d)));
        }
        add("none", Path::new(GUEST_PRIVATE), "hostfs", &format!("ro,{},X-mount.mkdir", fstab_escape(private)));
        if !self.job.alternatives.is_empty() && Path::new(HOST_ALTERNATIVES).is_dir() {
            let alt = private.join("alternatives");
            add("none", Path::new(HOST_ALTERNATIVES), "hostfs", &format!("ro,{}", fstab_escape(&alt)));
        }
        t
    }

    fn init_script(&self, private: &Path) -> String {
        let q = |p: &Path| sh_quote(&p.to_string_lossy());
        let mut s = String::new();
        let mut line = |l: &str| {
            s.push_str(l);
            s.push('\n');
        };
        line("#!/bin/sh");
        line("# vpnlab UML guest init (generated by harness/src/backend/uml.rs)");
        line("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH");
        line(&format!("M={}", sh_quote(&format!("@@vpnlab-uml:{}", self.nonce))));
        // Power off without returning: init exiting would panic the guest. sysrq-o powers off
        // from a kernel worker right away; `sleep infinity` just keeps init alive meanwhile.
        line("off() { sync; echo o > /proc/sysrq-trigger || poweroff -f; exec sleep infinity; }");
        line("fail() { echo \"$M:fail:$*@@\"; off; }");
        // The fstab is read completely before /tmp (where it lives) is covered.
        line(&format!("mount -a -T {} || fail mount -a", q(&private.join("fstab"))));
        line("mkdir -p /run/lock /run/netns /dev/net");
        line("ip link set lo up || fail loopback");
        line(&format!("echo {GUEST_PRIVATE}/modprobe > /proc/sys/kernel/modprobe || fail modprobe wrapper"));
        if !self.modules.is_empty() {
            let mods = self.modules.join(" ");
            line(&format!(
                "{} -d {GUEST_PRIVATE}/modroot -a {mods} || fail modprobe {mods}",
                q(&self.host.modprobe)
            ));
        }
        // Nodes for drivers not loaded yet (devtmpfs creates them on load); opening one
        // autoloads the driver through the wrapper.
        line("[ -e /dev/net/tun ] || mknod -m 0666 /dev/net/tun c 10 200");
        line("[ -e /dev/ppp ] || mknod -m 0600 /dev/ppp c 108 0");
        line("HOME=/root; TERM=dumb; export HOME TERM");
        for (k, v) in &self.job.env {
            line(&format!("{k}={}; export {k}", sh_quote(v)));
        }
        line(&format!("cd {} || fail cd {}", q(&self.cwd), q(&self.cwd)));
        line("echo \"$M:start@@\"");
        let argv: Vec<String> = self.job.argv.iter().map(|a| sh_quote(a)).collect();
        line(&format!("{} </dev/null", argv.join(" ")));
        line("rc=$?");
        line(&format!("echo $rc > {} || fail writing exit code", q(&self.exit_file())));
        line("echo \"$M:exit:$rc@@\"");
        line("off");
        s
    }

    /// The guest's own failure report, if any.
    fn failure(&self, console: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(console);
        let m = self.marker("fail:");
        let at = text.find(&m)?;
        let rest = &text[at + m.len()..];
        Some(rest.split("@@").next().unwrap_or(rest).trim().to_string())
    }

    fn clean_console(&self, console: &[u8]) -> String {
        let text = String::from_utf8_lossy(console).replace("\r\n", "\n");
        let m = format!("@@vpnlab-uml:{}:", self.nonce);
        let mut out = String::with_capacity(text.len());
        for l in text.split_inclusive('\n') {
            if let Some(i) = l.find(&m) {
                // Keep what precedes a marker (output without a trailing newline).
                out.push_str(&l[..i]);
                if i > 0 && !out.ends_with('\n') {
                    out.push('\n');
                }
            } else {
                out.push_str(l);
            }
        }
        out
    }
}

/// A running UML kernel: pid, pidfd, console pipe. Killed and reaped on drop.
struct Guest {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    console: OwnedFd,
    /// Write end of UML's stdin, kept open so the console never sees EOF (a hangup).
    _stdin: OwnedFd,
    reaped: bool,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

const HOST_ALTERNATIVES: &str = "/etc/alternatives";

/// A copy of the alternatives dir `host` (its symlinks) in `dir`, with the links named in
/// `changes` pointing at their new targets (only names `host` has).
fn write_alternatives(dir: &Path, host: &Path, changes: &[(String, PathBuf)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let Ok(entries) = std::fs::read_dir(host) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name();
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        let target = changes.iter().find(|(n, _)| std::ffi::OsStr::new(n) == name).map(|(_, t)| t.clone()).unwrap_or(target);
        std::os::unix::fs::symlink(&target, dir.join(&name)).with_context(|| format!("alternative {}", name.to_string_lossy()))?;
    }
    Ok(())
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(s: impl AsRef<OsStr>) -> Result<CString> {
    CString::new(s.as_ref().as_bytes()).context("NUL byte in an argument")
}

impl Guest {
    fn spawn(args: &[String], env: &[String], cwd: &Path) -> Result<Guest> {
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
            pid = unsafe {
                libc::syscall(libc::SYS_clone3, &mut ca as *mut CloneArgs, std::mem::size_of::<CloneArgs>())
            };
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
        let guest = Guest {
            pid,
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
            console: console_r,
            _stdin: stdin_w,
            reaped: false,
        };
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
    fn kill(&self) {
        if !self.reaped {
            unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), libc::SIGKILL, 0, 0);
                libc::kill(-self.pid, libc::SIGKILL);
            }
        }
    }

    fn reap(&mut self) -> Result<std::process::ExitStatus> {
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
    fn kill_session(&self) -> Vec<(i32, String)> {
        let alive = || -> Vec<(i32, String)> {
            session_members(self.pid).into_iter().filter(|m| m.2 != 'Z').map(|m| (m.0, m.1)).collect()
        };
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
fn session_members(sid: libc::pid_t) -> Vec<(i32, String, char)> {
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
fn drain(fd: RawFd, buf: &mut Vec<u8>) -> Result<bool> {
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn tail(console: &[u8]) -> String {
    let text = String::from_utf8_lossy(console);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!("--- last console lines ---\n{}", lines[from..].join("\n"))
}

/// fstab fields are whitespace separated; octal escapes as in getmntent(3).
fn fstab_escape(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn canonical_dir(p: &Path, what: &str) -> Result<PathBuf> {
    if !p.is_absolute() {
        bail!("UmlJob.{what} must be absolute: {}", p.display());
    }
    let c = p.canonicalize().with_context(|| format!("UmlJob.{what} {}", p.display()))?;
    if !c.is_dir() {
        bail!("UmlJob.{what} is not a directory: {}", c.display());
    }
    Ok(c)
}

fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    format!("{:x}{:x}{:x}", std::process::id(), t, N.fetch_add(1, Ordering::Relaxed))
}

/// Private dir for the init script, shim and umid dir. The guest kernel execs the init script
/// before anything is mounted, so it must not live below /dev (devtmpfs is mounted there).
fn private_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{PRIVATE_PREFIX}{}-", std::process::id()))
        .tempdir_in(private_base())
        .context("creating the UML private dir")
}

fn private_base() -> PathBuf {
    let base = std::env::temp_dir();
    if base.starts_with("/dev") || !base.is_dir() {
        PathBuf::from("/tmp")
    } else {
        base
    }
}

/// Temp dirs are named `vpnlab-uml-<pid>-*` (`vpnlab-uml-mem-<pid>-*` on /dev/shm). A
/// harness killed with SIGKILL cannot remove its own (the guest dies with it, see the module
/// docs, but destructors do not run), so each run removes those of processes that are gone.
const PRIVATE_PREFIX: &str = "vpnlab-uml-";
const MEMORY_PREFIX: &str = "vpnlab-uml-mem-";

fn sweep_stale_dirs() {
    for (dir, prefix) in [(private_base(), PRIVATE_PREFIX), (PathBuf::from("/dev/shm"), MEMORY_PREFIX)] {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
            if pid <= 0 || !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// TMPDIR for UML's memory file: /dev/shm when it is a writable tmpfs (UML warns and is
/// slower on disk), else a subdir of the private dir.
fn memory_dir(private: &Path) -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = nix::sys::statfs::statfs(shm)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    if on_tmpfs {
        let prefix = format!("{MEMORY_PREFIX}{}-", std::process::id());
        if let Ok(d) = tempfile::Builder::new().prefix(&prefix).tempdir_in(shm) {
            return Ok(d);
        }
    }
    tempfile::Builder::new().prefix("mem-").tempdir_in(private).context("creating the UML memory dir")
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The compiled FPU shim, built once per process in a temp dir that is removed right away.
fn fpu_shim_so(cc: &Path) -> Result<&'static [u8]> {
    static SO: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    SO.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PRIVATE_PREFIX}{}-shim-", std::process::id()))
            .tempdir()
            .map_err(|e| format!("temp dir for the FPU shim: {e}"))?;
        let so = build_fpu_shim(cc, dir.path()).map_err(|e| format!("{e:#}"))?;
        std::fs::read(&so).map_err(|e| format!("reading {}: {e}", so.display()))
    })
    .as_deref()
    .map_err(|e| anyhow!("{e}"))
}

fn build_fpu_shim(cc: &Path, dir: &Path) -> Result<PathBuf> {
    let src = dir.join("fpu-shim.c");
    let so = dir.join("fpu-shim.so");
    std::fs::write(&src, FPU_SHIM_C)?;
    let out = std::process::Command::new(cc)
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", cc.display()))?;
    if !out.status.success() {
        bail!(
            "building the UML FPU shim with {} failed: {}",
            cc.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(so)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Guests are serialised: each may use up to a GB and a CPU, and the leak checks below
    /// look for any linux.uml process.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn skip() -> bool {
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
        pub(super) static LAST_RUN: std::cell::RefCell<Option<(i32, PathBuf, PathBuf)>> =
            const { std::cell::RefCell::new(None) };
    }

    fn home_uml() -> Vec<std::ffi::OsString> {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        std::fs::read_dir(home.join(".uml"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
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
        eprintln!(
            "UML: exit {} boot {:?} total {:?} shim {}\n{}",
            out.exit_code, out.boot, out.total, out.fpu_shim, out.console
        );
        assert_clean(&home);
        out
    }

    #[test]
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
        write_alternatives(&dir, host.path(), &[("iptables".into(), "/usr/sbin/iptables-legacy".into()), ("absent".into(), "/x".into())]).unwrap();
        assert_eq!(std::fs::read_link(dir.join("iptables")).unwrap(), Path::new("/usr/sbin/iptables-legacy"));
        assert_eq!(std::fs::read_link(dir.join("editor")).unwrap(), Path::new("/usr/bin/vim.basic"));
        assert!(!dir.join("absent").exists() && !dir.join("absent").is_symlink());
    }

    #[test]
    fn uml_ppp_device_opens() {
        let _g = lock();
        if skip() {
            return;
        }
        let shared = tempfile::tempdir().unwrap();
        let mut job = sh(
            "exec 3<>/dev/ppp && echo ppp-open-ok; exec 3>&-; grep -E '^ppp_(generic|async) ' /proc/modules",
            shared.path(),
        );
        job.modules = vec!["ppp_generic".into(), "ppp_async".into()];
        let out = run_ok(&job);
        assert_eq!(out.exit_code, 0, "{}", out.console);
        assert!(out.console.contains("ppp-open-ok"));
        assert!(out.console.contains("ppp_async "));
    }

    #[test]
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
    fn uml_program_and_cwd_outside_the_shared_dir() {
        let _g = lock();
        if skip() {
            return;
        }
        // Both below /tmp, which is a fresh tmpfs in the guest: they are re-exposed read-only.
        let shared = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let prog = bin.path().join("prog.sh");
        write_executable(&prog, "#!/bin/sh\necho \"prog ran in $(pwd) args $*\"\ntouch x 2>/dev/null || echo cwd-read-only\necho out > \"$1/out.txt\"\n").unwrap();
        let mut job = UmlJob::new(
            vec![prog.to_string_lossy().into(), shared.path().canonicalize().unwrap().to_string_lossy().into()],
            shared.path(),
        );
        job.cwd = bin.path().to_path_buf();
        job.timeout = Duration::from_secs(120);
        let out = run_ok(&job);
        assert_eq!(out.exit_code, 0, "{}", out.console);
        assert!(out.console.contains(&format!("prog ran in {}", bin.path().canonicalize().unwrap().display())), "{}", out.console);
        assert!(out.console.contains("cwd-read-only"), "{}", out.console);
        assert!(!bin.path().join("x").exists());
        assert_eq!(std::fs::read_to_string(shared.path().join("out.txt")).unwrap(), "out\n");
    }

    /// Helper for `uml_guest_dies_with_its_harness`: only does something when re-invoked by
    /// that test (a separate process that the test SIGKILLs while the guest runs).
    #[test]
    fn uml_helper_long_running_guest() {
        let Some(shared) = std::env::var_os("VPNLAB_UML_TEST_HELPER") else { return };
        let mut job = sh("touch started; exec sleep 1000", Path::new(&shared));
        job.timeout = Duration::from_secs(600);
        let _ = run(&job);
    }

    #[test]
    fn uml_guest_dies_with_its_harness() {
        let _g = lock();
        if skip() {
            return;
        }
        let shared = tempfile::tempdir().unwrap();
        let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "backend::uml::tests::uml_helper_long_running_guest", "--nocapture", "--test-threads=1"])
            .env("VPNLAB_UML_TEST_HELPER", shared.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait (bounded) for the guest command to start.
        let until = Instant::now() + Duration::from_secs(60);
        while !shared.path().join("started").exists() {
            assert!(Instant::now() < until, "guest did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The UML kernel is the helper's child with exe linux.uml; its session holds the rest.
        let helper_pid = helper.id() as i32;
        let kernel = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = st.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)?.parse::<i32>().ok());
                ppid == Some(helper_pid)
                    && std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() == Some(Path::new(UML_KERNEL))
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
                    std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()).filter(move |e| {
                        e.file_name().unwrap().to_string_lossy().starts_with(&prefix)
                    })
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
        let st = std::process::Command::new(cc)
            .args(["-O2", "-mavx512f", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap();
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
}

