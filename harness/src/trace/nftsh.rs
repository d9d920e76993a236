//! One `nft -j -i` per node for the whole trace: the table loaded, the sets read as often as
//! needed and the table deleted through the same process, instead of an `nft` process per node
//! for each of these (each spawn into a node costs a fork, the node's namespaces and the exec:
//! a few ms, taken one after another on the lab's spawner thread).
//!
//! In interactive mode with a pipe for input, nft 1.0.6 reads one command (or several joined by
//! `;`) per line, runs each line as one transaction (as `nft -f` does a file), prints a listing
//! as one line of JSON, flushed, and prints nothing for a command that succeeds; an error goes
//! to stderr (the same pipe here) as lines that are not JSON, and nft ends at the end of its
//! input (its exit status says nothing about the commands: the lines do). Every exchange ends
//! with `list sets inet`, whose line of JSON marks where the answer ends.

use super::{TraceNode, NFT_TIMEOUT, TABLE};
use crate::ns::PidNs;
use crate::process::Stdio3;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// A running `nft -j -i` in one node.
pub(super) struct NftShell {
    node: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its stdout and stderr, line by line (a thread reads the pipe until nft ends).
    lines: mpsc::Receiver<String>,
}

impl NftShell {
    pub(super) fn start(n: &TraceNode, pid: &PidNs, cwd: &Path) -> Result<NftShell> {
        let (r, w) = std::io::pipe().context("pipe")?;
        let w2 = w.try_clone()?;
        let argv = ["nft", "-j", "-i"].map(String::from);
        let mut cmd = crate::process::command(
            n.netns,
            &argv,
            cwd,
            Stdio3 { stdin: Stdio::piped(), stdout: Stdio::from(w), stderr: Stdio::from(w2) },
            &[],
            true,
        )?;
        // Interactive nft keeps a history in $HOME/.nft.history (read at start, written at exit):
        // none here (no file can be made under /dev/null), so the host's home is never written.
        cmd.env("HOME", "/dev/null");
        let mut child = pid.spawn(cmd).with_context(|| format!("node `{}`: cannot run `nft -j -i`", n.name))?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(NftShell { node: n.name.to_string(), child, stdin, lines })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let s = self.stdin.as_mut().ok_or_else(|| anyhow!("node `{}`: nft's input is closed", self.node))?;
        writeln!(s, "{line}").and_then(|()| s.flush()).with_context(|| format!("node `{}`: writing to nft", self.node))
    }

    /// Runs `cmds` (one line each), then `list sets inet`: its JSON. Any other line nft prints
    /// meanwhile is an error (`what` names the step).
    pub(super) fn list_after(&mut self, cmds: &[&str], what: &str) -> Result<String> {
        for c in cmds {
            self.send(c)?;
        }
        self.send("list sets inet")?;
        let deadline = Instant::now() + NFT_TIMEOUT;
        let mut other = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.starts_with("{\"nftables\"") && other.is_empty() => return Ok(l),
                Ok(l) if l.starts_with("{\"nftables\"") => bail!("node `{}`: {what} failed:\n{}", self.node, other.join("\n")),
                Ok(l) => other.push(l),
                Err(_) => bail!("node `{}`: {what}: nft gave no listing within {NFT_TIMEOUT:?}\n{}", self.node, other.join("\n")),
            }
        }
    }

    /// Deletes the trace table and ends nft (the end of its input), waiting for it.
    pub(super) fn finish(mut self) -> Result<()> {
        self.send(&format!("delete table inet {TABLE}"))?;
        drop(self.stdin.take());
        let deadline = Instant::now() + NFT_TIMEOUT;
        let status = crate::process::wait_deadline(&mut self.child, deadline)?;
        // The reader sees the pipe's end once nft is gone: whatever it printed is an error.
        let mut said = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            said.push(l);
        }
        match status {
            None => bail!("node `{}`: removing the trace table: nft did not end within {NFT_TIMEOUT:?}", self.node),
            Some(_) if !said.is_empty() => bail!("node `{}`: removing the trace table failed:\n{}", self.node, said.join("\n")),
            Some(_) => Ok(()),
        }
    }
}

impl Drop for NftShell {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            crate::process::kill_group(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// `f` on every shell at once (one thread each); the results in node order.
pub(super) fn each<T: Send>(shells: &mut [NftShell], f: impl Fn(&mut NftShell) -> Result<T> + Sync) -> Result<Vec<T>> {
    std::thread::scope(|s| {
        let f = &f;
        let hs: Vec<_> = shells.iter_mut().map(|sh| s.spawn(move || f(sh))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("trace thread panicked")))).collect()
    })
}

/// The ruleset on one line (nft -i reads a line at a time): statements joined by `; `.
pub(super) fn one_line(ruleset: &str) -> String {
    let mut s = String::new();
    for l in ruleset.lines().map(str::trim).filter(|l| !l.is_empty()) {
        s.push_str(l);
        s.push_str(if l.ends_with('{') || l.ends_with(';') { " " } else { "; " });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::NetNs;

    #[test]
    fn one_line_joins_statements() {
        let r = "add table inet t\ntable inet t {\n  set s { typeof ip ttl; counter; }\n  chain c {\n    type filter hook input priority 0; policy accept;\n    ip ttl 1 add @s { ip ttl }\n  }\n}\n";
        assert_eq!(
            one_line(r),
            "add table inet t; table inet t { set s { typeof ip ttl; counter; }; chain c { type filter hook input priority 0; policy accept; ip ttl 1 add @s { ip ttl }; }; }; "
        );
    }

    /// A real `nft -j -i` in a namespace: loaded and listed, an error reported (not taken for a
    /// listing), removal seen to fail when there is nothing to remove, nothing left running, and
    /// no history written to the host's home.
    #[test]
    #[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
    fn a_shell_loads_lists_reports_errors_and_removes() {
        assert!(crate::env::is_root(), "needs root");
        let pid = PidNs::create().unwrap();
        let spaces = NetNs::create_many(&["n".to_string()]).unwrap();
        let node = TraceNode { name: "n", netns: &spaces[0] };
        let dir = tempfile::tempdir().unwrap();
        let table = format!("table inet {TABLE} {{\n  set s {{ typeof ip ttl; flags dynamic; counter; }}\n}}\n");
        let mut sh = NftShell::start(&node, &pid, dir.path()).unwrap();
        let listed = sh.list_after(&[&one_line(&table)], "loading").unwrap();
        assert!(listed.contains("\"name\": \"s\""), "{listed}");
        let e = sh.list_after(&["add rule inet nosuch c accept"], "adding a rule").unwrap_err();
        assert!(format!("{e:#}").contains("adding a rule failed") && format!("{e:#}").contains("Error"), "{e:#}");
        // Still usable after an error; the table goes.
        assert!(sh.list_after(&[], "reading").unwrap().contains("\"name\": \"s\""));
        let nft_pid = sh.child.id();
        sh.finish().unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{nft_pid}")).exists(), "nft still running");
        if let Some(home) = std::env::var_os("HOME") {
            let h = std::path::Path::new(&home).join(".nft.history");
            let text = std::fs::read_to_string(&h).unwrap_or_default();
            assert!(!text.contains("typeof\\040ip\\040ttl;\\040flags"), "{} has the trace's commands", h.display());
        }
        let mut sh = NftShell::start(&node, &pid, dir.path()).unwrap();
        assert!(!sh.list_after(&[], "reading").unwrap().contains(TABLE));
        let e = sh.finish().unwrap_err();
        assert!(format!("{e:#}").contains("removing the trace table failed"), "{e:#}");
    }
}
