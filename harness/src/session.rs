//! Labs kept up between commands, for a support engineer reproducing a customer's setup:
//! `vpnlab up` starts a detached server process that builds the lab, runs its steps up to a
//! point, names the nodes' namespaces under /run/netns (so `ip netns exec` works) and waits on a
//! control socket; `step`, `status` and `down` talk to it; `exec`, `shell` and `logs` go straight
//! into the namespaces and the work dir. State lives in /run/vpnlab/<key>/.

use crate::model::{self, Lab};
use crate::ns::{self, NetNs};
use crate::runner::{Live, Options};
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the state of labs that are up lives.
pub fn state_root() -> PathBuf {
    crate::config::get().state_dir.clone().unwrap_or_else(|| PathBuf::from("/run/vpnlab"))
}

/// The key of a lab that is up: its recipe name (`missing-return-route`).
pub fn key_of(lab_id: &str) -> String {
    lab_id.rsplit('/').next().unwrap_or(lab_id).to_string()
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct State {
    pub lab_id: String,
    pub lab_dir: PathBuf,
    pub scenario: String,
    pub server_pid: u32,
    pub holder_pid: u32,
    pub work: PathBuf,
    /// (node, namespace name under /run/netns)
    pub nodes: Vec<(String, String)>,
    pub services: Vec<String>,
    pub steps_done: usize,
    pub steps_total: usize,
    pub next_step: Option<String>,
    pub failure: Option<String>,
    /// (node, host name) of nodes whose `hostname` is not their name (`exec`/`shell` use it).
    #[serde(default)]
    pub hostnames: Vec<(String, String)>,
}

/// A request on the control socket (one JSON line; the server answers with one [`Reply`] line).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Run the next step.
    Step,
    /// Tear the lab down and exit.
    Down,
}

/// The server's answer to a [`Request`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// The transcript lines of the step that ran.
    Ran { lines: Vec<String> },
    /// No step ran: the scenario has failed (why) or has no steps left.
    NotRun { failure: Option<String> },
    /// The lab is down; the server exits.
    Down,
    /// The request was not understood.
    Refused { why: String },
}

impl Reply {
    /// What `vpnlab step` prints.
    pub fn text(&self) -> String {
        match self {
            Reply::Ran { lines } => lines.join("\n"),
            Reply::NotRun { failure: Some(f) } => format!("the scenario has failed: {f}"),
            Reply::NotRun { failure: None } => "no steps left".to_string(),
            Reply::Down => "down".to_string(),
            Reply::Refused { why } => format!("refused: {why}"),
        }
    }
}

fn dir_of(key: &str) -> PathBuf {
    state_root().join(key)
}

fn read_state(key: &str) -> Result<State> {
    let p = dir_of(key).join("state.toml");
    let t = std::fs::read_to_string(&p).map_err(|_| crate::error::EnvError {
        msg: format!("lab `{key}` is not up"),
        hint: "start it with `vpnlab up LAB`; `vpnlab status` lists the labs that are up".into(),
    })?;
    Ok(toml::from_str(&t)?)
}

fn write_state(key: &str, st: &State) -> Result<()> {
    let p = dir_of(key).join("state.toml");
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, toml::to_string(st)?)?;
    std::fs::rename(tmp, p)?;
    Ok(())
}

/// Is the process running (not gone, not a zombie waiting to be reaped)?
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit(')').next().map(|r| !r.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

/// Resolves the LAB argument of session commands (an id, a path, or the key of a lab that is up).
pub fn key_for(arg: &str) -> String {
    let arg = arg.trim_end_matches('/');
    // A key is one word; `dir_of` of an absolute path would be the path itself.
    if !arg.contains('/') && !arg.is_empty() && arg != "." && arg != ".." && dir_of(arg).exists() {
        return arg.to_string();
    }
    // A lab folder's path names it as `up` did: by its canonical folder.
    let path = Path::new(arg);
    if model::lab_file(path).is_file() {
        let dir = if path.is_file() { path.parent().unwrap_or(Path::new(".")) } else { path };
        if let Ok(c) = std::fs::canonicalize(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
            return key_of(&model::lab_id(&c));
        }
    }
    key_of(&model::lab_id(path))
}

// ------------------------------------------------------------------ client side

/// `vpnlab up`: starts the server and waits until the lab is ready; returns its state. `with`:
/// `NAME=SPEC` builds of the daemons (already resolved once by the caller; the server resolves
/// them again from the cache).
pub fn up(lab: &Lab, scenario: &str, until: Option<&str>, with: &[String]) -> Result<State> {
    let key = key_of(&lab.id);
    let dir = dir_of(&key);
    if let Ok(st) = read_state(&key) {
        if alive(st.server_pid) {
            return Err(crate::error::EnvError {
                msg: format!("{} is already up", lab.id),
                hint: format!("`vpnlab down {}` first", crate::suite::cli_name(&lab.id, &lab.dir)),
            }
            .into());
        }
        cleanup_stale(&key, &st);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    let role = crate::reexec::Role::Serve {
        lab_dir: lab.dir.clone(),
        scenario: scenario.to_string(),
        until: until.unwrap_or("").to_string(),
        with: with.to_vec(),
    };
    cmd.args(role.args());
    // The server reads the same settings (`--state-dir` given to `up` included).
    cmd.envs(crate::config::get().to_env());
    cmd.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the lab server")?;
    let deadline = Instant::now() + lab.deadline + Duration::from_secs(30);
    loop {
        if let Ok(st) = read_state(&key) {
            if dir.join("control.sock").exists() {
                return Ok(st);
            }
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            bail!("the lab server exited ({status}) before the lab was up:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let state = std::fs::read_to_string(dir.join("state.toml")).unwrap_or_default();
            bail!("the lab did not come up within {:?}; server log:\n{log}\nstate:\n{state}", lab.deadline + Duration::from_secs(30));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What to print after `up`.
pub fn describe(st: &State) -> String {
    let mut s = format!("{}::{} is up: {} of {} steps run", st.lab_id, st.scenario, st.steps_done, st.steps_total);
    if let Some(f) = &st.failure {
        s.push_str(&format!(" (FAILED: {f})"));
    }
    s.push_str("\nnodes (their network namespaces, for `ip netns exec NAME CMD`):\n");
    let w = st.nodes.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (n, name) in &st.nodes {
        s.push_str(&format!("  {n:<w$}  {name}\n"));
    }
    let first = st.nodes.first().map(|(n, _)| n.as_str()).unwrap_or("NODE");
    let id = &crate::suite::cli_name(&st.lab_id, &st.lab_dir);
    s.push_str(&format!("get in:  vpnlab shell {id} {first}\n"));
    s.push_str(&format!("run:     vpnlab exec {id} {first} -- ip route\n"));
    if let Some(n) = &st.next_step {
        s.push_str(&format!("next:    vpnlab step {id}     ({n})\n"));
    }
    s.push_str(&format!("logs:    vpnlab logs {id} [{}] [-f]   (work dir {})\n", st.services.join("|"), st.work.display()));
    s.push_str(&format!("down:    vpnlab down {id}\n"));
    s
}

fn request(key: &str, req: &Request) -> Result<Reply> {
    let sock = dir_of(key).join("control.sock");
    let mut c = UnixStream::connect(&sock).with_context(|| format!("the server of `{key}` does not answer (try `vpnlab down {key}`)"))?;
    c.write_all(format!("{}\n", serde_json::to_string(req)?).as_bytes())?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut c, &mut out)?;
    serde_json::from_str(out.trim()).with_context(|| format!("the server of `{key}` answered something unreadable: {out:?}"))
}

/// `vpnlab step LAB`: runs the next step; returns its transcript lines.
pub fn step(key: &str) -> Result<String> {
    read_state(key)?;
    Ok(format!("{}\n", request(key, &Request::Step)?.text()))
}

/// `vpnlab down LAB`: full teardown (also of a lab whose server died).
pub fn down(key: &str) -> Result<()> {
    let st = read_state(key)?;
    if alive(st.server_pid) && request(key, &Request::Down).is_ok() {
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(st.server_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    cleanup_stale(key, &st);
    Ok(())
}

/// Removes what a dead server left: namespace names, processes, work dir, state.
fn cleanup_stale(key: &str, st: &State) {
    if alive(st.server_pid) {
        let _ = kill(Pid::from_raw(st.server_pid as i32), Signal::SIGKILL);
    }
    if alive(st.holder_pid) {
        let _ = kill(Pid::from_raw(st.holder_pid as i32), Signal::SIGKILL);
    }
    for (_, name) in &st.nodes {
        ns::unname(&Path::new("/run/netns").join(name));
    }
    let _ = std::fs::remove_dir_all(&st.work);
    let _ = std::fs::remove_dir_all(dir_of(key));
}

/// `vpnlab status`: the labs that are up.
pub fn status() -> Result<Vec<(String, State, bool)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(state_root()).into_iter().flatten().flatten() {
        let key = e.file_name().to_string_lossy().into_owned();
        if let Ok(st) = read_state(&key) {
            let up = alive(st.server_pid);
            out.push((key, st, up));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn node_netns(st: &State, node: &str) -> Result<NetNs> {
    let (_, name) = st.nodes.iter().find(|(n, _)| n == node).ok_or_else(|| {
        let names: Vec<&str> = st.nodes.iter().map(|(n, _)| n.as_str()).collect();
        crate::error::EnvError { msg: format!("{} has no node `{node}`", st.lab_id), hint: format!("nodes: {}", names.join(", ")) }
    })?;
    let mut ns = NetNs::open(&Path::new("/run/netns").join(name), node)?;
    ns.hostname = st.hostnames.iter().find(|(n, _)| n == node).map(|(_, h)| h.clone());
    Ok(ns)
}

/// `vpnlab exec LAB NODE -- CMD` (and `shell`): runs a command inside the node (its network
/// namespace, the lab's PID namespace, a private mount namespace with the node's /sys), on
/// this terminal; returns its exit code.
pub fn exec(key: &str, node: &str, argv: &[String], interactive: bool) -> Result<i32> {
    let st = read_state(key)?;
    let netns = node_netns(&st, node)?;
    let cwd = st.work.join("nodes").join(node);
    let mut cmd = crate::process::command(&netns, argv, &cwd, crate::process::Stdio3::inherit(), &[], !interactive)?;
    if interactive {
        cmd.env("PS1", format!("[vpnlab {} {node}] \\w# ", key));
    }
    let mut child = ns::PidNs::attach(st.holder_pid)?.spawn(cmd).with_context(|| format!("cannot run `{}` in {node}", argv.join(" ")))?;
    let status = child.wait()?;
    Ok(status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}

/// `vpnlab trace LAB NODE DEST`: where a ping from NODE to DEST goes, hop by hop.
pub fn trace(key: &str, node: &str, dest: std::net::IpAddr) -> Result<Vec<String>> {
    let st = read_state(key)?;
    let spaces: Vec<NetNs> = st.nodes.iter().map(|(n, _)| node_netns(&st, n)).collect::<Result<_>>()?;
    let src = st.nodes.iter().position(|(n, _)| n == node).ok_or_else(|| anyhow!("{} has no node `{node}`", st.lab_id))?;
    let pid = ns::PidNs::attach(st.holder_pid)?;
    let cwd = st.work.join("nodes").join(node);
    let nodes = crate::trace::TraceNode::all(&spaces.iter().collect::<Vec<_>>());
    crate::trace::Opts { nodes: &nodes, pid: &pid, cwd: &cwd, src, dest, method: None, kernel_drops: None }.ping().map(|t| t.lines)
}

/// The shell `vpnlab shell` starts.
pub fn shell_argv() -> Vec<String> {
    if crate::env::which("bash").is_some() {
        vec!["bash".into(), "--norc".into(), "--noprofile".into(), "-i".into()]
    } else {
        vec!["sh".into(), "-i".into()]
    }
}

/// `vpnlab logs LAB [SERVICE] [-f]`.
pub fn logs(key: &str, service: Option<&str>, follow: bool, out: &mut dyn Write) -> Result<()> {
    let st = read_state(key)?;
    let names: Vec<String> = match service {
        Some(s) if st.services.iter().any(|x| x == s) => vec![s.to_string()],
        Some(s) => bail!(crate::error::EnvError {
            msg: format!("{} has no service `{s}`", st.lab_id),
            hint: format!("services: {}", st.services.join(", "))
        }),
        None => st.services.clone(),
    };
    let mut offsets = vec![0u64; names.len()];
    loop {
        for (i, n) in names.iter().enumerate() {
            let p = st.work.join("logs").join(format!("{n}.log"));
            let text = crate::process::read_from(&p, offsets[i]);
            offsets[i] += text.len() as u64;
            for l in text.lines() {
                if names.len() > 1 {
                    writeln!(out, "{n}: {l}")?;
                } else {
                    writeln!(out, "{l}")?;
                }
            }
        }
        out.flush()?;
        if !follow || !alive(st.server_pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------------ server side

/// The detached server (started as [`crate::reexec::Role::Serve`]).
pub fn serve(lab_dir: &Path, scenario: &str, until: &str, with: &[String]) -> Result<()> {
    let lab = model::load(lab_dir).map_err(|e| anyhow!("{e}"))?;
    let key = key_of(&lab.id);
    let with = crate::with::resolve_all(with)?;
    let opts = Options { keep: false, progress: true, pcap: false, with, sink: None, work_root: None };
    let mut live = Live::start(&lab, scenario, &opts)?;
    // Run up to the requested step.
    let total = live.remaining().len();
    let stop_after = match until {
        "" => total,
        n if n.parse::<usize>().is_ok() => n.parse::<usize>().unwrap().min(total),
        text => {
            let pos = live
                .remaining()
                .iter()
                .position(|s| s.text.contains(text))
                .ok_or_else(|| anyhow!("no step of {scenario} contains `{text}`"))?;
            pos + 1
        }
    };
    for _ in 0..stop_after {
        if live.step().is_none() {
            break;
        }
    }
    let mut names = Vec::new();
    for (i, ns) in live.node_netns().iter().enumerate() {
        // VPNLAB_NETNS_PREFIX keeps concurrent users (tests) from colliding on names.
        let prefix = crate::config::get().netns_prefix.clone().unwrap_or_default();
        let name = format!("{prefix}{key}-{}", lab.nodes[i].name);
        ns.name_it(&name)?;
        names.push((lab.nodes[i].name.clone(), name));
    }
    let mut st = State {
        lab_id: lab.id.clone(),
        lab_dir: std::fs::canonicalize(lab_dir)?,
        scenario: scenario.to_string(),
        server_pid: std::process::id(),
        holder_pid: live.holder_pid().unwrap_or(0),
        work: live.work_path().to_path_buf(),
        nodes: names,
        services: lab.services.iter().map(|s| s.name.clone()).collect(),
        steps_done: total - live.remaining().len(),
        steps_total: total,
        next_step: live.remaining().first().map(|s| s.text.clone()),
        failure: live.failure().map(str::to_string),
        hostnames: lab.nodes.iter().filter(|n| n.hostname != n.name).map(|n| (n.name.clone(), n.hostname.clone())).collect(),
    };
    write_state(&key, &st)?;
    let sock = dir_of(&key).join("control.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        let _ = BufReader::new(&conn).read_line(&mut line);
        let answer = |conn: &mut UnixStream, r: &Reply| {
            let _ = writeln!(conn, "{}", serde_json::to_string(r).unwrap_or_default());
        };
        match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::Step) => {
                let reply = match live.step() {
                    Some(lines) => Reply::Ran { lines },
                    None => Reply::NotRun { failure: live.failure().map(str::to_string) },
                };
                st.steps_done = total - live.remaining().len();
                st.next_step = live.remaining().first().map(|s| s.text.clone());
                st.failure = live.failure().map(str::to_string);
                write_state(&key, &st)?;
                answer(&mut conn, &reply);
            }
            Ok(Request::Down) => {
                for (_, name) in &st.nodes {
                    ns::unname(&Path::new("/run/netns").join(name));
                }
                let run = live.finish();
                drop(run);
                let _ = std::fs::remove_dir_all(dir_of(&key));
                answer(&mut conn, &Reply::Down);
                return Ok(());
            }
            Err(e) => answer(&mut conn, &Reply::Refused { why: format!("{e}: {:?}", line.trim()) }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_protocol_round_trips_as_json_lines() {
        for r in [Request::Step, Request::Down] {
            let line = serde_json::to_string(&r).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        }
        assert_eq!(serde_json::to_string(&Request::Step).unwrap(), r#"{"request":"step"}"#);
        let ran = Reply::Ran { lines: vec!["client$ ping -c2 10.198.0.1  -> reachable (ttl=63)".into()] };
        assert_eq!(serde_json::from_str::<Reply>(&serde_json::to_string(&ran).unwrap()).unwrap(), ran);
        assert_eq!(Reply::NotRun { failure: None }.text(), "no steps left");
        assert_eq!(Reply::NotRun { failure: Some("x".into()) }.text(), "the scenario has failed: x");
        assert!(serde_json::from_str::<Request>("step").is_err());
    }
}
