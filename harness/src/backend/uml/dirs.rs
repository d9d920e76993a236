//! The private and memory temp dirs of a run, and sweeping those of dead runs.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub(super) fn canonical_dir(p: &Path, what: &str) -> Result<PathBuf> {
    if !p.is_absolute() {
        bail!("UmlJob.{what} must be absolute: {}", p.display());
    }
    let c = p.canonicalize().with_context(|| format!("UmlJob.{what} {}", p.display()))?;
    if !c.is_dir() {
        bail!("UmlJob.{what} is not a directory: {}", c.display());
    }
    Ok(c)
}

pub(super) fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    format!("{:x}{:x}{:x}", std::process::id(), t, N.fetch_add(1, Ordering::Relaxed))
}

/// Private dir for the init script, shim and umid dir. The guest kernel execs the init script
/// before anything is mounted, so it must not live below /dev (devtmpfs is mounted there).
pub(super) fn private_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{PRIVATE_PREFIX}{}-", std::process::id()))
        .tempdir_in(private_base())
        .context("creating the UML private dir")
}

pub(super) fn private_base() -> PathBuf {
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
pub(super) const PRIVATE_PREFIX: &str = "vpnlab-uml-";
pub(super) const MEMORY_PREFIX: &str = "vpnlab-uml-mem-";

pub(super) fn sweep_stale_dirs() {
    for (dir, prefix) in [(private_base(), PRIVATE_PREFIX), (PathBuf::from("/dev/shm"), MEMORY_PREFIX)] {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
            if pid <= 0 || !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let gone = unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// TMPDIR for UML's memory file: /dev/shm when it is a writable tmpfs (UML warns and is
/// slower on disk), else a subdir of the private dir.
pub(super) fn memory_dir(private: &Path) -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = nix::sys::statfs::statfs(shm).map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC).unwrap_or(false);
    if on_tmpfs {
        let prefix = format!("{MEMORY_PREFIX}{}-", std::process::id());
        if let Ok(d) = tempfile::Builder::new().prefix(&prefix).tempdir_in(shm) {
            return Ok(d);
        }
    }
    tempfile::Builder::new().prefix("mem-").tempdir_in(private).context("creating the UML memory dir")
}

pub(super) fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
