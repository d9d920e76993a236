//! Building a scenario's nodes before its services start: node directories with their files
//! and PKI, nft rulesets and setup commands, packet captures; and running commands in a node.

use super::Lab_;
use crate::process::{read_from, wait_until, Daemon, NodeCmd};
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

impl Lab_<'_> {
    /// Node directories with their files and PKI, then nft rulesets and setup commands.
    pub(super) fn prepare(&mut self) -> Result<()> {
        for (i, node) in self.lab.nodes.iter().enumerate() {
            let dir = self.node_dir(i);
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            for f in &node.files {
                copy_tree(&self.lab.dir.join(&f.rel), &dir.join(&f.rel))
                    .with_context(|| format!("copy {} to node `{}`", f.rel.display(), node.name))?;
            }
            for (p, mode) in &node.modes {
                std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(*mode))?;
            }
        }
        if let Some(spec) = &self.lab.pki {
            let pki = self.work.path().join("pki");
            std::fs::create_dir_all(&pki)?;
            crate::pki::generate(spec, &pki)?;
            // Certificates go to the nodes that run daemons.
            let mut daemon_nodes: Vec<usize> = self.lab.services.iter().map(|s| s.node).collect();
            daemon_nodes.sort_unstable();
            daemon_nodes.dedup();
            for i in daemon_nodes {
                for e in std::fs::read_dir(&pki)? {
                    let e = e?;
                    std::fs::copy(e.path(), self.node_dir(i).join(e.file_name()))?;
                }
            }
        }
        for (i, node) in self.lab.nodes.iter().enumerate() {
            if let Some(rules) = &node.nft {
                let f = self.node_dir(i).join(".vpnlab-ruleset.nft");
                std::fs::write(&f, rules)?;
                self.exec_ok(i, &["nft".into(), "-f".into(), f.to_string_lossy().into_owned()])?;
            }
            for cmd in &node.setup {
                let out = self.exec_sh(i, cmd).with_context(|| format!("setup of node `{}`: {cmd}", node.name))?;
                self.check_ok(i, cmd, &out).with_context(|| format!("setup of node `{}`: {cmd}", node.name))?;
            }
        }
        Ok(())
    }

    /// One tcpdump per link (on its `a` end), per LAN (on its bridge) and per tap and bridge of a
    /// node, ready when it says it is listening.
    pub(super) fn start_captures(&mut self) -> Result<()> {
        let dir = self.work.path().join("pcap");
        std::fs::create_dir_all(&dir)?;
        let mut targets: Vec<(&crate::ns::NetNs, String, String)> = Vec::new();
        for l in &self.lab.links {
            let n = &self.lab.nodes[l.a.node].name;
            targets.push((&self.topo.nodes[l.a.node].ns, l.a.ifname.clone(), format!("{n}-{}", l.a.ifname)));
        }
        for (i, lan) in self.lab.lans.iter().enumerate() {
            targets.push((&self.topo.lans[i].ns, "br0".into(), format!("lan-{}", lan.name)));
        }
        // The nodes' own taps and bridges (what crosses a tap is what its daemon carries).
        for (i, n) in self.lab.nodes.iter().enumerate() {
            for e in n.taps.iter().map(|t| &t.ep).chain(n.bridges.iter().map(|b| &b.ep)) {
                targets.push((&self.topo.nodes[i].ns, e.ifname.clone(), format!("{}-{}", n.name, e.ifname)));
            }
        }
        for (ns, ifname, file) in targets {
            let pcap = dir.join(format!("{file}.pcap"));
            let argv: Vec<String> =
                ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0", "-i", &ifname, "-w", &pcap.to_string_lossy()]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            let log = dir.join(format!("{file}.log"));
            let mut d = Daemon::start(&format!("tcpdump-{file}"), ns, &self.pid, &argv, &dir, &log, &[])?;
            let ready = wait_until(Instant::now() + Duration::from_secs(5), || {
                if read_from(&log, 0).contains("listening on") {
                    return Some(Ok(()));
                }
                d.poll_exit().map(|st| Err(anyhow!("tcpdump on {file} exited ({st}): {}", read_from(&log, 0).trim())))
            });
            match ready {
                Some(r) => r?,
                None => bail!("tcpdump on {file} did not start listening within 5s"),
            }
            self.captures.push(d);
        }
        Ok(())
    }

    pub(super) fn exec(&self, node: usize, argv: &[String]) -> Result<crate::process::Output> {
        // A command that uses a daemon's own tools (`ipsec auto ...`, `ipsec initnss`) runs them
        // from the same build as the daemon (`--with`): whack must speak pluto's version.
        let mounts = self.opts.with.mounts_for_command(argv);
        let dir = self.node_dir(node);
        NodeCmd::new(&self.topo.nodes[node].ns, &self.pid, argv, &dir).timeout(self.lab.step_timeout).mounts(&mounts).capture()
    }

    /// `sh -c cmd` in a node, without the `sh` process when the shell would only split the
    /// command into words (see [`super::shell`]).
    pub(super) fn exec_sh(&self, node: usize, cmd: &str) -> Result<crate::process::Output> {
        self.exec_sh_on(node, cmd, false)
    }

    /// [`Self::exec_sh`], with `tty` under a pseudo-terminal (the `tty` step, [`crate::pty`]).
    pub(super) fn exec_sh_on(&self, node: usize, cmd: &str, tty: bool) -> Result<crate::process::Output> {
        let dir = self.node_dir(node);
        let ns = &self.topo.nodes[node].ns;
        let Some(argv) = super::shell::direct_argv(cmd, &dir, std::env::var("PATH").ok().as_deref()) else {
            let argv = ["/bin/sh".to_string(), "-c".into(), cmd.to_string()];
            if tty {
                let mounts = self.opts.with.mounts_for_command(&argv);
                return NodeCmd::new(ns, &self.pid, &argv, &dir).timeout(self.lab.step_timeout).mounts(&mounts).tty();
            }
            return self.exec(node, &argv);
        };
        let mounts = self.opts.with.mounts_for_command(&argv);
        let env = [("PWD", dir.as_path())];
        let cmd = NodeCmd::new(ns, &self.pid, &argv, &dir).timeout(self.lab.step_timeout).mounts(&mounts).env(&env);
        let mut out = if tty { cmd.tty() } else { cmd.capture() }?;
        // What dash does when its command is killed by signal N: it says so on stderr (not for
        // SIGINT and SIGPIPE) and exits with 128+N.
        if let (Some(st), false) = (out.status, out.timed_out) {
            if let Some(sig) = st.signal() {
                if sig != libc::SIGINT && sig != libc::SIGPIPE {
                    let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) }.to_string_lossy().into_owned();
                    out.text.push_str(&format!("{name}{}\n", if st.core_dumped() { " (core dumped)" } else { "" }));
                }
                out.status = Some(std::process::ExitStatus::from_raw((128 + sig) << 8));
            }
        }
        Ok(out)
    }

    pub(super) fn exec_ok(&self, node: usize, argv: &[String]) -> Result<()> {
        let out = self.exec(node, argv)?;
        self.check_ok(node, &argv.join(" "), &out)
    }

    fn check_ok(&self, node: usize, what: &str, out: &crate::process::Output) -> Result<()> {
        if !out.success() {
            let hint = if out.timed_out { format!(" (cut at the step timeout of {:?})", self.lab.step_timeout) } else { String::new() };
            bail!("`{what}` in node `{}`: {}{hint}\n{}", self.lab.nodes[node].name, out.describe_status(), out.text.trim_end());
        }
        Ok(())
    }
}

/// Copies a file or a directory tree, keeping modes.
pub(super) fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(src)?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        std::fs::set_permissions(dst, meta.permissions())?;
    } else {
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(src, dst)?;
    }
    Ok(())
}
