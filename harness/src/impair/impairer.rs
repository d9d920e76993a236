//! [`Impairer`]: a running impairment — the iptables NFQUEUE rule in the node, the worker
//! thread, stop/drop; and running a command in a node by its namespace fds.

use super::engine::{Engine, Shared, Stats};
use super::netlink::open_sockets;
use super::{dup_mark, Family, Impairment, Proto, MARK_MASK};
use crate::ns::{NetNs, PidNs};
use crate::process::run_capture;
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- the impairer

/// A running impairment (see the module docs). Stops (rule removed, thread joined) with
/// [`Impairer::stop`] or on drop.
pub struct Impairer {
    pub(super) node: String,
    pub(super) ifname: String,
    pub(super) imp: Impairment,
    pub(super) proto: Option<Proto>,
    pub(super) family: Family,
    pub(super) queue: u16,
    pub(super) cwd: PathBuf,
    pub(super) shared: Arc<Shared>,
    pub(super) worker: Option<JoinHandle<()>>,
    pub(super) wake: Option<OwnedFd>,
    /// For removing the rule on drop (no `&NetNs`/`&PidNs` then).
    pub(super) netns_fd: OwnedFd,
    pub(super) pidns_fd: Option<OwnedFd>,
}

/// The iptables command line of the rule, with `op` = `-I` or `-D`.
#[cfg(test)]
pub(super) fn rule_argv(op: &str, ifname: &str, proto: Option<Proto>, queue: u16) -> Vec<String> {
    rule_argv_family(op, ifname, proto, Family::Ipv4, queue)
}

/// The same for a family: `ip6tables` for IPv6 (ICMP is `ipv6-icmp` there).
pub(super) fn rule_argv_family(op: &str, ifname: &str, proto: Option<Proto>, family: Family, queue: u16) -> Vec<String> {
    let program = if family == Family::Ipv6 { "ip6tables" } else { "iptables" };
    let mut v: Vec<String> = [program, "-w", "5", "-t", "mangle", op, "POSTROUTING", "-o", ifname].iter().map(|s| s.to_string()).collect();
    match proto {
        Some(Proto::Fragments) => v.push("-f".to_string()),
        Some(Proto::Icmp) if family == Family::Ipv6 => v.extend(["-p".to_string(), "ipv6-icmp".to_string()]),
        Some(p) => v.extend(["-p".to_string(), p.name().to_string()]),
        None => {}
    }
    v.extend(["-m", "mark", "!", "--mark"].iter().map(|s| s.to_string()));
    v.push(format!("0x{:x}/0x{:x}", dup_mark(queue) & MARK_MASK, MARK_MASK));
    v.extend(["-j", "NFQUEUE", "--queue-num"].iter().map(|s| s.to_string()));
    v.push(queue.to_string());
    v.push("--queue-bypass".into());
    v
}

impl Impairer {
    /// Binds NFQUEUE queue `queue` in the node, starts the worker, then inserts the rule for
    /// packets leaving `ifname` (optionally only `proto`). `queue` numbers are per network
    /// namespace: two impairments of one node need different numbers.
    pub fn start(
        netns: &NetNs,
        pid: &PidNs,
        cwd: &Path,
        ifname: &str,
        imp: Impairment,
        proto: Option<Proto>,
        queue: u16,
    ) -> Result<Impairer> {
        Impairer::start_family(netns, pid, cwd, ifname, imp, proto, Family::Ipv4, queue)
    }

    /// [`Impairer::start`] for a family: with [`Family::Ipv6`] the rule is ip6tables' and
    /// duplicates go out of an IPv6 raw socket.
    #[allow(clippy::too_many_arguments)]
    pub fn start_family(
        netns: &NetNs,
        pid: &PidNs,
        cwd: &Path,
        ifname: &str,
        imp: Impairment,
        proto: Option<Proto>,
        family: Family,
        queue: u16,
    ) -> Result<Impairer> {
        let node = netns.name.clone();
        imp.validate().map_err(|m| anyhow!("node `{node}`: impair {ifname}: {m}"))?;
        if family == Family::Ipv6 && proto == Some(Proto::Fragments) {
            bail!("node `{node}`: impair {ifname}: `fragments` selects IPv4 fragments only");
        }
        let duplicate = matches!(imp, Impairment::Duplicate { .. });
        let name = ifname.to_string();
        let v6 = family == Family::Ipv6;
        let socks = netns
            .run(move || -> Result<_> {
                let mut s = open_sockets(&name, queue, duplicate && !v6)?;
                if duplicate && v6 {
                    s.raw = Some(super::v6::raw_socket(&name, queue)?);
                }
                Ok(s)
            })?
            .with_context(|| format!("node `{node}`: impair {ifname}"))?;
        let netns_fd = netns.as_fd().try_clone_to_owned().context("duplicating the node's namespace fd")?;
        let pidns_fd = File::open(format!("/proc/{}/ns/pid", pid.holder_pid())).ok().map(OwnedFd::from);
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).context("eventfd")?;
        let wake = OwnedFd::from(wake);
        let wake_worker = wake.try_clone()?;
        let shared = Arc::new(Shared::default());
        let engine = Engine {
            imp: imp.clone(),
            queue,
            nl: socks.nl,
            raw: socks.raw,
            count: 0,
            held: Vec::new(),
            delayed: VecDeque::new(),
            out: Vec::new(),
            shared: shared.clone(),
        };
        let worker = std::thread::Builder::new()
            .name(format!("impair-{node}-{ifname}"))
            .spawn(move || engine.run(wake_worker))
            .context("spawning the impairment thread")?;
        let mut me = Impairer {
            node: node.clone(),
            ifname: ifname.to_string(),
            imp,
            proto,
            family,
            queue,
            cwd: cwd.to_path_buf(),
            shared,
            worker: Some(worker),
            wake: Some(wake),
            netns_fd,
            pidns_fd,
        };
        let argv = rule_argv_family("-I", ifname, proto, family, queue);
        let out = run_capture(netns, pid, &argv, cwd, Duration::from_secs(10));
        match out {
            Ok(o) if o.success() => Ok(me),
            other => {
                me.finish();
                match other {
                    Ok(o) => bail!("node `{node}`: `{}` failed ({}): {}", argv.join(" "), o.describe_status(), o.text.trim()),
                    Err(e) => Err(e.context(format!("node `{node}`: `{}`", argv.join(" ")))),
                }
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Err if the worker met a problem (a copy that could not be sent, a refused verdict, a
    /// socket overrun) or ended before being stopped.
    pub fn check(&self) -> Result<()> {
        if let Some(e) = self.shared.error.lock().ok().and_then(|e| e.clone()) {
            bail!("node `{}`: impair {} {}: {e}", self.node, self.ifname, self.imp);
        }
        if self.worker.as_ref().map(|w| w.is_finished()).unwrap_or(false) {
            bail!("node `{}`: impair {} {}: the impairment thread ended", self.node, self.ifname, self.imp);
        }
        Ok(())
    }

    pub fn impairment(&self) -> &Impairment {
        &self.imp
    }
    pub fn proto(&self) -> Option<Proto> {
        self.proto
    }
    pub fn family(&self) -> Family {
        self.family
    }
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The iptables command that installed the rule (for a transcript).
    pub fn command(&self) -> String {
        rule_argv_family("-I", &self.ifname, self.proto, self.family, self.queue).join(" ")
    }

    /// Removes the rule (through `run_capture`, like `start`), releases every held packet,
    /// joins the worker, and returns the final counters.
    pub fn stop(mut self, netns: &NetNs, pid: &PidNs) -> Result<Stats> {
        let argv = rule_argv_family("-D", &self.ifname, self.proto, self.family, self.queue);
        let removed = run_capture(netns, pid, &argv, &self.cwd, Duration::from_secs(10));
        self.finish();
        let stats = self.stats();
        match removed {
            Ok(o) if o.success() => Ok(stats),
            Ok(o) => bail!("node `{}`: `{}` failed ({}): {}", self.node, argv.join(" "), o.describe_status(), o.text.trim()),
            Err(e) => Err(e.context(format!("node `{}`: `{}`", self.node, argv.join(" ")))),
        }
    }

    /// Signals the worker and joins it (after the rule is gone).
    pub(super) fn finish(&mut self) {
        if let Some(wake) = self.wake.take() {
            let _ = nix::unistd::write(&wake, &1u64.to_ne_bytes());
            if let Some(w) = self.worker.take() {
                if w.join().is_err() {
                    self.shared.note("the impairment thread panicked".into());
                }
            }
        }
    }
}

impl Drop for Impairer {
    fn drop(&mut self) {
        if self.wake.is_none() {
            return;
        }
        // No `&NetNs`/`&PidNs` here: run the same iptables command with the namespace fds kept
        // at start (in the lab's PID namespace if it is still alive).
        let argv = rule_argv_family("-D", &self.ifname, self.proto, self.family, self.queue);
        let net = self.netns_fd.as_raw_fd();
        let pidns = self.pidns_fd.as_ref().map(|f| f.as_raw_fd());
        let ok = run_in_fds(net, pidns, &argv, Duration::from_secs(10)).or_else(|_| run_in_fds(net, None, &argv, Duration::from_secs(10)));
        if !matches!(ok, Ok(true)) {
            eprintln!("vpnlab: node `{}`: could not remove the impairment rule of {}", self.node, self.ifname);
        }
        self.finish();
    }
}

/// Runs `argv` in the network namespace `net` (and PID namespace `pidns`), output discarded;
/// Ok(success).
pub(super) fn run_in_fds(net: RawFd, pidns: Option<RawFd>, argv: &[String], timeout: Duration) -> Result<bool> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(net, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::setsid();
            Ok(())
        });
    }
    let mut child = crate::ns::spawner(move || -> Result<std::process::Child> {
        let mut cmd = cmd;
        match pidns {
            None => Ok(cmd.spawn()?),
            Some(p) => {
                let orig = File::open("/proc/thread-self/ns/pid_for_children")?;
                let target = unsafe { std::os::fd::BorrowedFd::borrow_raw(p) };
                nix::sched::setns(target, nix::sched::CloneFlags::CLONE_NEWPID)?;
                let r = cmd.spawn();
                nix::sched::setns(orig.as_fd(), nix::sched::CloneFlags::CLONE_NEWPID)?;
                Ok(r?)
            }
        }
    })??;
    match crate::process::wait_deadline(&mut child, Instant::now() + timeout)? {
        Some(st) => Ok(st.success()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Ok(false)
        }
    }
}
