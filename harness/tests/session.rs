//! `vpnlab up` / exec / shell (through a pty) / step / logs / status / down, with two labs up
//! at once, and nothing left afterwards.

use std::path::Path;
use std::process::{Command, Output};

fn labs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs")
}

struct Env {
    state: tempfile::TempDir,
    work: tempfile::TempDir,
    prefix: String,
}

impl Env {
    /// `tag` keeps the namespace names of tests running at the same time apart.
    fn new(tag: &str) -> Env {
        assert!(vpnlab::env::is_root(), "needs root: `sudo -E cargo test`");
        Env { state: tempfile::tempdir().unwrap(), work: tempfile::tempdir().unwrap(), prefix: format!("t{}{tag}-", std::process::id()) }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vpnlab"));
        c.args(args)
            .env("VPNLAB_STATE", self.state.path())
            .env("VPNLAB_WORK_ROOT", self.work.path())
            .env("VPNLAB_NETNS_PREFIX", &self.prefix)
            .env("VPNLAB_LABS", labs());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn netns_names(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn up_exec_shell_step_logs_down() {
    let env = Env::new("a");
    let lab = "openvpn/missing-return-route";
    let out = ok(&env.run(&["up", lab, "--until", "4"]));
    assert!(out.contains("is up: 4 of 8 steps run"), "{out}");
    let client_ns = format!("{}missing-return-route-client", env.prefix);
    assert!(out.contains(&client_ns), "{out}");
    // `ip netns exec` works on the named namespace.
    let o = Command::new("ip").args(["netns", "exec", &client_ns, "ip", "-o", "addr", "show", "tun0"]).output().unwrap();
    assert!(ok(&o).contains("10.200.0.2/24"));
    // exec: a real command in a node, with its exit code.
    let out = ok(&env.run(&["exec", lab, "gateway", "--", "ip", "route"]));
    assert!(out.contains("10.198.0.0/16 dev eth0") && !out.contains("10.200.0.0/24"), "{out}");
    assert_eq!(env.run(&["exec", lab, "client", "--", "false"]).status.code(), Some(1));
    // A second lab up at the same time.
    ok(&env.run(&["up", "openvpn/basic-server"]));
    let st = ok(&env.run(&["status"]));
    assert!(
        st.contains("missing-return-route: openvpn/missing-return-route::fix-gateway-route up (4 of 8") && st.contains("basic-server:"),
        "{st}"
    );
    // step: the next steps, one transcript line each.
    // A `show` step prints what it shows, under its line.
    let shown = ok(&env.run(&["step", lab]));
    assert_eq!(shown.lines().next(), Some("gateway$ ip route"));
    assert!(shown.lines().any(|l| l.starts_with("    10.198.0.0/16 dev eth0")), "{shown}");
    assert_eq!(ok(&env.run(&["step", lab])).trim(), "gateway# ip route add 10.200.0.0/24 via 10.198.0.10");
    assert_eq!(ok(&env.run(&["step", lab])).trim(), "client$ ping -c2 10.198.0.1  -> reachable (ttl=63)");
    // logs
    let logs = ok(&env.run(&["logs", lab, "client"]));
    assert!(logs.contains("Initialization Sequence Completed"), "{logs}");
    // shell, through a pty (script): the prompt names the node, commands run inside it.
    let mut sh = Command::new("script");
    sh.args(["-qec", &format!("{} shell {lab} lanhost", env!("CARGO_BIN_EXE_vpnlab")), "/dev/null"])
        .env("VPNLAB_STATE", env.state.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = sh.spawn().unwrap();
    use std::io::Write;
    child.stdin.as_mut().unwrap().write_all(b"echo node=$VPNLAB_NODE; ip -o -4 addr show eth0; exit 7\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("[vpnlab missing-return-route lanhost]"), "{text}");
    assert!(text.contains("node=lanhost") && text.contains("10.198.1.12/16"), "{text}");
    assert_eq!(o.status.code(), Some(7), "the shell's exit code comes back: {text}");
    // down: everything goes.
    ok(&env.run(&["down", lab]));
    ok(&env.run(&["down", "basic-server"]));
    assert_eq!(ok(&env.run(&["status"])).trim(), "no labs are up");
    assert_eq!(netns_names(&env.prefix), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(env.work.path()).unwrap().count(), 0, "work dirs removed");
    assert_eq!(env.run(&["step", lab]).status.code(), Some(2), "a lab that is down is an error");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn down_cleans_up_after_a_killed_server() {
    let env = Env::new("b");
    let lab = "openvpn/basic-server";
    ok(&env.run(&["up", lab, "--until", "1"]));
    let state = std::fs::read_to_string(env.state.path().join("basic-server/state.toml")).unwrap();
    let pid: i32 = state.lines().find_map(|l| l.strip_prefix("server_pid = ")).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Wait until it is dead (a zombie or gone): the signal is delivered asynchronously.
    let dead = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !dead() {
        assert!(std::time::Instant::now() < deadline, "the server did not die");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = ok(&env.run(&["status"]));
    assert!(st.contains("DEAD"), "{st}");
    assert!(!netns_names(&env.prefix).is_empty(), "named namespaces outlive a SIGKILLed server");
    ok(&env.run(&["down", lab]));
    assert_eq!(netns_names(&env.prefix), Vec::<String>::new());
    assert_eq!(ok(&env.run(&["status"])).trim(), "no labs are up");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_lab_given_by_path_is_found_again_by_that_path() {
    let env = Env::new("p");
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("hidden-labs/tap-bridge");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("lab.toml"),
        "[lab]\ntitle = \"t\"\n[nodes.a]\n[nodes.b]\n[[links]]\na = \"a:eth0 10.9.0.1/24\"\nb = \"b:eth0 10.9.0.2/24\"\n\
         [scenarios.s]\nsteps = [\"a: ping 10.9.0.2\", \"b: ping 10.9.0.1\"]\n",
    )
    .unwrap();
    let path = std::fs::canonicalize(&dir).unwrap().to_string_lossy().into_owned();
    let out = ok(&env.run(&["up", &path, "--until", "1"]));
    // The hints name it by the path, which every command takes back.
    assert!(out.contains(&format!("vpnlab exec {path} a -- ip route")) && out.contains(&format!("vpnlab down {path}")), "{out}");
    let o = ok(&env.run(&["exec", &path, "b", "--", "ip", "-o", "-4", "addr", "show", "eth0"]));
    assert!(o.contains("10.9.0.2/24"), "{o}");
    let trailing = format!("{path}/");
    assert_eq!(ok(&env.run(&["step", &trailing])).trim(), "b$ ping -c2 10.9.0.1  -> reachable (ttl=64)");
    ok(&env.run(&["down", &format!("{path}/lab.toml")]));
    assert_eq!(netns_names(&env.prefix), Vec::<String>::new());
    assert_eq!(env.run(&["exec", &path, "a", "--", "true"]).status.code(), Some(2), "down: not up any more");
}
