//! Running the `vpnlab` binary on labs written by a test (verdicts, the HTML report).
#![allow(dead_code)] // each test binary uses part of it

use super::copy_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const GOOD: &str = "[lab]\ntitle = \"two nodes\"\n[nodes.a]\n[nodes.b]\n[[links]]\na = \"a:eth0 10.9.0.1/24\"\nb = \"b:eth0 10.9.0.2/24\"\n[scenarios.ping]\nsteps = [\"a: ping 10.9.0.2\", \"a: show echo verdicts-test-line\"]\n";

/// A scenario that cannot be built: nft refuses the ruleset (an error, not a verdict).
pub const UNBUILDABLE: &str = "[lab]\ntitle = \"cannot be built\"\n[nodes.a]\nnft = \"this is not a ruleset\"\n[nodes.b]\n[[links]]\na = \"a:eth0 10.9.0.1/24\"\nb = \"b:eth0 10.9.0.2/24\"\n[scenarios.ping]\nsteps = [\"a: ping 10.9.0.2\"]\n";

pub struct Out {
    pub code: Option<i32>,
    /// stdout and stderr as one stream, in the order written.
    pub text: String,
}

impl Out {
    pub fn last_line(&self) -> &str {
        self.text.lines().last().unwrap_or("")
    }
}

/// Runs `vpnlab ARGS` with the labs under `labs`, a private work root, outside CI.
pub fn vpnlab(args: &[&str], labs: &Path, work: &Path) -> Out {
    assert!(vpnlab::env::is_root(), "these tests need root: run `sudo -E cargo test`");
    let log = tempfile::tempfile().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        .args(args)
        .env("VPNLAB_LABS", labs)
        .env("VPNLAB_WORK_ROOT", work)
        .env_remove("CI")
        .env_remove("VPNLAB_BACKEND")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log.try_clone().unwrap())
        .status()
        .unwrap();
    let mut log = log;
    let mut text = String::new();
    std::io::Seek::rewind(&mut log).unwrap();
    std::io::Read::read_to_string(&mut log, &mut text).unwrap();
    Out { code: status.code(), text }
}

pub fn lab(root: &Path, id: &str, toml: &str) -> PathBuf {
    let d = root.join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("lab.toml"), toml).unwrap();
    d
}

/// Records the snapshots of t/good and t/drift, then edits t/drift's so that it drifts.
pub fn mixed_labs() -> tempfile::TempDir {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    lab(labs.path(), "t/good", GOOD);
    let drift = lab(labs.path(), "t/drift", GOOD);
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/daemon-exits-at-start"), &labs.path().join("t/dies"));
    lab(labs.path(), "t/unbuildable", UNBUILDABLE);
    let out = vpnlab(&["run", "-q", "--accept", "t/good", "t/drift"], labs.path(), work.path());
    assert_eq!(out.code, Some(0), "{}", out.text);
    let snap = drift.join("snapshots/ping.snap");
    let text = std::fs::read_to_string(&snap).unwrap();
    std::fs::write(&snap, text.replace("    verdicts-test-line\n", "    verdicts-test-line, edited\n")).unwrap();
    labs
}
