//! A run's work directory: `$TMPDIR/vpnlab-XXXXXX/` with `nodes/<node>/` (each node's files,
//! PKI and cwd) and `logs/<service>.log`. It is held with an flock while the run lives; the next
//! vpnlab process removes work dirs whose lock nobody holds (a run killed by SIGKILL), except
//! those marked as kept. Only directories vpnlab itself made (prefix + lock file) are touched.
//!
//! A work dir gets its final `vpnlab-` name only once its lock is held (it is made under a
//! staging name, locked, then renamed), so a sweep by a run starting at the same moment can
//! never take a live directory for a dead one.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const PREFIX: &str = "vpnlab-";
/// Work dirs being created (not locked yet): `.vpnlab-staging-<creator pid>-XXXXXX`, swept once
/// their creator is gone.
const STAGING: &str = ".vpnlab-staging-";
const LOCK: &str = ".vpnlab-lock";
const KEPT: &str = "KEPT";

pub struct WorkDir {
    /// `None` once kept.
    dir: Option<PathBuf>,
    _lock: File,
}

/// Work dirs of this process that are still in use (for the signal handler).
fn live() -> &'static std::sync::Mutex<Vec<PathBuf>> {
    static L: std::sync::OnceLock<std::sync::Mutex<Vec<PathBuf>>> = std::sync::OnceLock::new();
    L.get_or_init(|| std::sync::Mutex::new(Vec::new()))
}

/// Removes every live work dir of this process (after its labs were killed).
pub fn remove_all_live() {
    for p in live().lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        let _ = std::fs::remove_dir_all(p);
    }
}

fn unregister(p: &Path) {
    live().lock().unwrap_or_else(|p| p.into_inner()).retain(|x| x != p);
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            unregister(&d);
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

fn base() -> PathBuf {
    crate::config::get().work_root.clone().unwrap_or_else(std::env::temp_dir)
}

impl WorkDir {
    /// A work dir under `$VPNLAB_WORK_ROOT` (default: the temp dir).
    pub fn new(label: &str) -> Result<WorkDir> {
        WorkDir::new_in(&base(), label)
    }

    /// A work dir under `base`.
    pub fn new_in(base: &Path, label: &str) -> Result<WorkDir> {
        std::fs::create_dir_all(base).ok();
        let slug: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let staging = tempfile::Builder::new()
            .prefix(&format!("{STAGING}{}-", std::process::id()))
            .tempdir_in(base)
            .context("create the work dir")?;
        // Daemons that drop privileges (user nobody) must still reach their files.
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))?;
        let lock = File::create(staging.path().join(LOCK))?;
        lock.lock()?;
        for sub in ["nodes", "logs"] {
            std::fs::create_dir(staging.path().join(sub))?;
            std::fs::set_permissions(staging.path().join(sub), std::fs::Permissions::from_mode(0o755))?;
        }
        let random = staging.path().file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap_or("x").to_string();
        let dir = base.join(format!("{PREFIX}{slug}-{random}"));
        std::fs::rename(staging.path(), &dir).context("name the work dir")?;
        let _ = staging.keep(); // renamed away: nothing left for its Drop
        live().lock().unwrap_or_else(|p| p.into_inner()).push(dir.clone());
        Ok(WorkDir { dir: Some(dir), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_deref().expect("work dir")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.path().join("nodes").join(node)
    }

    pub fn log(&self, service: &str) -> PathBuf {
        self.path().join("logs").join(format!("{service}.log"))
    }

    /// Keeps the directory after the run (for debugging) and returns its path.
    pub fn keep(mut self) -> PathBuf {
        let dir = self.dir.take().expect("work dir");
        unregister(&dir);
        let _ = std::fs::write(dir.join(KEPT), "kept for debugging; delete when done\n");
        let _ = std::fs::remove_file(dir.join(LOCK));
        dir
    }
}

/// Removes work dirs left by runs that died without cleaning up (their lock is free), under
/// `$VPNLAB_WORK_ROOT` (default: the temp dir).
pub fn sweep() -> usize {
    sweep_in(&base())
}

/// [`sweep`] under `base`.
pub fn sweep_in(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else { return 0 };
    let mut n = 0;
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        // A staging dir belongs to the process named in it: a dead creator's is removed at once
        // (it may not even have its lock file yet); a live one's is left alone.
        if let Some(rest) = name.strip_prefix(STAGING) {
            let creator = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let dead = creator.map(|pid| !Path::new(&format!("/proc/{pid}")).exists()).unwrap_or(false);
            if dead && p.is_dir() && std::fs::remove_dir_all(&p).is_ok() {
                n += 1;
            }
            continue;
        }
        if !name.starts_with(PREFIX) || !p.is_dir() || p.join(KEPT).exists() {
            continue;
        }
        let Ok(lock) = File::open(p.join(LOCK)) else { continue };
        if lock.try_lock().is_ok() && std::fs::remove_dir_all(&p).is_ok() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_spares_live_and_kept_dirs_and_removes_dead_ones() {
        let root = tempfile::tempdir().unwrap();
        let live = WorkDir::new_in(root.path(), "live").unwrap();
        let kept = WorkDir::new_in(root.path(), "kept").unwrap().keep();
        let dead = root.path().join("vpnlab-dead-123");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK), "").unwrap();
        let foreign = root.path().join("vpnlab-not-ours");
        std::fs::create_dir(&foreign).unwrap(); // no lock file: not made by vpnlab, never touched
                                                // A dir being created by a live process (staging name, no lock yet) is left alone...
        let staging = root.path().join(format!("{STAGING}{}-abc123", std::process::id()));
        std::fs::create_dir(&staging).unwrap();
        assert_eq!(sweep_in(root.path()), 1);
        assert!(live.path().exists() && kept.exists() && foreign.exists() && !dead.exists() && staging.exists());
        assert!(live.path().file_name().unwrap().to_string_lossy().starts_with("vpnlab-live-"), "final name once locked");
        // ...and one whose creator died (here: a pid that cannot exist) is swept.
        let orphan = root.path().join(format!("{STAGING}4194305-def456"));
        std::fs::create_dir(&orphan).unwrap();
        assert_eq!(sweep_in(root.path()), 1);
        assert!(!orphan.exists() && staging.exists());
        drop(live);
    }
}
