//! The command line's answers to bad input and a bad environment: one clear message naming
//! the file and line (or what is missing) and what to do, exit code 2, nothing left behind.

use std::path::Path;
use std::process::{Command, Output};

fn vpnlab(args: &[&str], labs: &Path, work: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpnlab")).args(args).env("VPNLAB_LABS", labs).env("VPNLAB_WORK_ROOT", work).output().unwrap()
}

fn lab_dir(root: &Path, id: &str, toml: &str) -> std::path::PathBuf {
    let d = root.join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("lab.toml"), toml).unwrap();
    d
}

const GOOD: &str = "[lab]\ntitle = \"two nodes\"\n[nodes.a]\n[nodes.b]\n[[links]]\na = \"a:eth0 10.9.0.1/24\"\nb = \"b:eth0 10.9.0.2/24\"\n[scenarios.ping]\nsteps = [\"a: ping 10.9.0.2\", \"a: ping 10.9.0.3 -> unreachable\"]\n";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_broken_lab_file_exits_2_naming_file_line_and_fix() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let d = lab_dir(labs.path(), "t/broken", &GOOD.replace("b = \"b:eth0", "b = \"c:eth0"));
    let o = vpnlab(&["run", "t/broken"], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:7:6: error: unknown node `c`", d.join("lab.toml").display())), "{err}");
    assert!(err.contains("help: declared nodes: a, b"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "one error, not a cascade: {err}");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "nothing was built");
}

#[test]
fn unknown_lab_or_scenario_exits_2() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    lab_dir(labs.path(), "t/good", GOOD);
    let o = vpnlab(&["run", "t/nope"], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("known labs: t/good"), "{}", stderr(&o));
    let o = vpnlab(&["run", "t/good::nope"], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("scenarios: ping"), "{}", stderr(&o));
}

#[test]
fn a_missing_daemon_binary_exits_2_naming_the_package() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let toml =
        GOOD.replace("[scenarios.ping]", "[services.d]\nnode = \"a\"\nrun = \"/usr/sbin/no-such-vpnd --foreground\"\n[scenarios.ping]");
    lab_dir(labs.path(), "t/nobin", &toml);
    let o = vpnlab(&["run", "t/nobin"], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("service `d` runs `/usr/sbin/no-such-vpnd`, which is not installed"), "{}", stderr(&o));
    assert!(stderr(&o).contains("lab.toml:10:8: error:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("ci/setup"), "{}", stderr(&o));
}

#[test]
fn a_lab_path_anywhere_on_disk_runs_and_passes() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let d = lab_dir(labs.path(), "t/good", GOOD);
    // First run records the snapshot (not under CI); the second compares with it.
    let o = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        .args(["run", "--accept", &d.to_string_lossy()])
        .env("VPNLAB_WORK_ROOT", work.path())
        .env_remove("CI")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let snap = std::fs::read_to_string(d.join("snapshots/ping.snap")).unwrap();
    assert!(snap.contains("a$ ping -c2 10.9.0.2  -> reachable (ttl=64)"), "{snap}");
    assert!(snap.contains("a$ ping -c2 10.9.0.3  -> unreachable (100% loss"), "{snap}");
    let o = vpnlab(&["run", &d.to_string_lossy()], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("/good::ping: passed in "), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("vpnlab: 1 passed, 0 check-failed, 0 drift, 0 error in "),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A check that fails is exit 1, with the kept work dir named.
    std::fs::write(d.join("lab.toml"), GOOD.replace("10.9.0.3 -> unreachable", "10.9.0.3 -> reachable")).unwrap();
    let o = vpnlab(&["run", &d.to_string_lossy()], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("/good::ping: check-failed in "), "{}", stderr(&o));
    assert!(stderr(&o).contains("expected reachable"), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().last().unwrap_or("").starts_with("vpnlab: 0 passed, 1 check-failed, 0 drift, 0 error in "), "{out}");
    assert!(stderr(&o).contains("work dir (daemon logs, node files) kept at"), "{}", stderr(&o));
}

#[test]
fn not_root_exits_2_with_the_fix() {
    let labs = tempfile::tempdir().unwrap();
    lab_dir(labs.path(), "t/good", GOOD);
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", env!("CARGO_BIN_EXE_vpnlab"), "run", "t/good"])
        .env("VPNLAB_LABS", labs.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs root") && stderr(&o).contains("sudo"), "{}", stderr(&o));
}

/// The corpus of broken labs under tests/bad-labs: each case's `expected` holds `LINE:COL` and
/// a piece of the message. Every one exits 2 with exactly one error at that spot, leaving no
/// work dir behind.
#[test]
fn the_bad_input_corpus_gets_one_located_error_each() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad-labs");
    let mut cases: Vec<_> = std::fs::read_dir(&corpus).unwrap().flatten().map(|e| e.path()).collect();
    cases.sort();
    assert!(cases.len() >= 12, "the corpus is there");
    for case in cases {
        let expected = std::fs::read_to_string(case.join("expected")).unwrap();
        let mut lines = expected.lines();
        let at = lines.next().unwrap();
        let msg = lines.next().unwrap();
        let work = tempfile::tempdir().unwrap();
        let o = vpnlab(&["run", "-q", &case.to_string_lossy()], &corpus, work.path());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", case.display());
        let file = case.join("lab.toml");
        assert!(err.contains(&format!("{}:{at}: error: ", file.display())), "{}: wants {at}: {err}", case.display());
        assert!(err.contains(msg), "{}: wants {msg:?}: {err}", case.display());
        assert!(err.contains("help: "), "{}: says what to do: {err}", case.display());
        assert_eq!(err.matches(&format!("{}:", file.display())).count(), 1, "{}: one error: {err}", case.display());
        assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "{}: nothing left behind", case.display());
    }
}

#[test]
fn pcap_records_every_link_readable_by_tcpdump() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let d = lab_dir(labs.path(), "t/pcap", GOOD);
    let o = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        .args(["run", "--accept", "--pcap", "--keep", &d.to_string_lossy()])
        .env("VPNLAB_WORK_ROOT", work.path())
        .env_remove("CI")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let kept: Vec<_> = std::fs::read_dir(work.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(kept.len(), 1, "--keep keeps the work dir");
    let pcap = kept[0].join("pcap/a-eth0.pcap");
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        bytes.len() > 24 && (bytes[..4] == [0xd4, 0xc3, 0xb2, 0xa1] || bytes[..4] == [0xa1, 0xb2, 0xc3, 0xd4]),
        "a pcap file with packets"
    );
    let r = Command::new("tcpdump").args(["-n", "-r"]).arg(&pcap).output().unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("10.9.0.1 > 10.9.0.2: ICMP echo request"), "{text}");
    assert!(text.contains("10.9.0.2 > 10.9.0.1: ICMP echo reply"), "{text}");
}

/// ci/host-state (what tests/labs.rs compares before and after the suite) does see a change of
/// links, addresses, routes, rules, firewall and sysctls: shown in a scratch namespace, never the host.
#[test]
fn host_state_detects_changes() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/host-state");
    let sh = format!(
        "set -e; s={}; bash $s > /tmp/hs-a.$$; ip link add vl0 type veth peer name vl1; ip addr add 10.77.0.1/24 dev vl0; ip link set vl0 up; ip route add 10.78.0.0/16 via 10.77.0.2; ip rule add from 10.77.0.1 table 7; nft add table inet vltest; echo 1 > /proc/sys/net/ipv4/ip_forward; bash $s > /tmp/hs-b.$$; diff /tmp/hs-a.$$ /tmp/hs-b.$$; rm -f /tmp/hs-a.$$ /tmp/hs-b.$$",
        script.display()
    );
    let o = Command::new("unshare").args(["--net", "bash", "-c", &sh]).output().unwrap();
    let d = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "diff finds differences: {d}{}", stderr(&o));
    for want in
        ["vl0", "10.77.0.1/24", "10.78.0.0/16 via 10.77.0.2", "from 10.77.0.1 lookup 7", "table inet vltest", "net.ipv4.ip_forward = 1"]
    {
        assert!(d.contains(want), "missing {want:?} in:\n{d}");
    }
}

/// Every lab's README ends with its current topology picture (`vpnlab show LAB --update-readme`).
#[test]
fn every_lab_readme_embeds_its_current_topology() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs");
    let labs = vpnlab::suite::discover(&root);
    assert!(labs.len() >= 20);
    for dir in labs {
        let lab = vpnlab::model::load(&dir).unwrap();
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap_or_default();
        assert!(
            readme.contains(&vpnlab::diagram::readme_block(&lab)),
            "{}: README.md lacks the current topology; run `vpnlab show {} --update-readme`",
            lab.id,
            lab.id
        );
    }
}

/// A daemon that dies mid-lab fails it with its last log lines; a hanging step is cut at its
/// deadline; a scenario has an overall deadline.
#[test]
fn daemon_death_hanging_steps_and_deadlines_fail_clearly() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = |name: &str, toml: &str| -> (Option<i32>, String) {
        let d = lab_dir(labs.path(), &format!("t/{name}"), toml);
        let o = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
            .args(["run", "-q", &d.to_string_lossy()])
            .env("VPNLAB_WORK_ROOT", work.path())
            .env("CI", "true")
            .output()
            .unwrap();
        (o.status.code(), stderr(&o))
    };
    let dies = GOOD.replace(
        "[scenarios.ping]",
        "[services.d]\nnode = \"a\"\nrun = \"sh -c 'echo up; read x < /proc/self/stat; echo going down now >&2; exit 3'\"\nready = \"up\"\n[scenarios.ping]",
    );
    let (code, err) = run("dies", &dies);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("service `d` exited unexpectedly (exit status: 3)") && err.contains("going down now"), "{err}");

    let hangs = GOOD
        .replace("title = \"two nodes\"", "title = \"hang\"\nstep_timeout = \"500ms\"")
        .replace("\"a: ping 10.9.0.2\",", "\"a: sh sleep 30\",");
    let t = std::time::Instant::now();
    let (code, err) = run("hangs", &hangs);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("sleep 30") && err.contains("timed out"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "cut at the step timeout, not after 30 s");

    let slow = GOOD.replace("title = \"two nodes\"", "title = \"deadline\"\ndeadline = \"300ms\"").replace(
        "steps = [\"a: ping 10.9.0.2\", \"a: ping 10.9.0.3 -> unreachable\"]",
        "steps = [\"a: ping 10.9.0.3 -> unreachable\", \"a: ping 10.9.0.3 -> unreachable\", \"a: ping 10.9.0.2\"]",
    );
    let (code, err) = run("deadline", &slow);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("passed its deadline of 300ms"), "{err}");
}

/// `vpnlab doctor`: every kernel feature with its native/uml answer, which labs run where, and
/// what to install; a lab needing a feature only derived from its content (a `trace` step ->
/// nft-inet) is placed accordingly. Probing never changes the host (no /dev/ppp created).
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn doctor_reports_features_labs_and_what_to_install() {
    assert!(vpnlab::env::is_root(), "needs root: sudo -E cargo test");
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    lab_dir(labs.path(), "t/plain", GOOD);
    lab_dir(labs.path(), "t/traced", &GOOD.replace("\"a: ping 10.9.0.2\",", "\"a: ping 10.9.0.2\", \"a: trace 10.9.0.2\","));
    let ppp_before = std::fs::symlink_metadata("/dev/ppp").ok().map(|m| m.file_type());
    let o = vpnlab(&["doctor"], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for f in vpnlab::model::KernelFeature::ALL {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", f.name())))
            .unwrap_or_else(|| panic!("no line for {}:\n{out}", f.name()));
        let native = if vpnlab::env::kernel_has(f) { "yes" } else { "no" };
        assert!(line.split_whitespace().any(|w| w == native), "{line} (native: {native})");
    }
    assert!(out.starts_with(&format!("host kernel: Linux {}", vpnlab::env::kernel_release())), "{out}");
    assert!(out.contains("user-mode-linux: "), "{out}");
    assert!(
        out.contains("labs that run natively") && out.contains("labs that run in user-mode-linux") && out.contains("labs that run nowhere"),
        "{out}"
    );
    assert!(out.contains("to install:"), "{out}");
    let native_has_inet = vpnlab::env::kernel_has(vpnlab::model::KernelFeature::NftInet);
    if native_has_inet {
        let section = out.split("labs that run natively").nth(1).unwrap().split("\n\n").next().unwrap();
        assert!(section.contains("t/plain (1)") && section.contains("t/traced (1)"), "{out}");
    }
    assert_eq!(std::fs::symlink_metadata("/dev/ppp").ok().map(|m| m.file_type()), ppp_before, "doctor changed /dev/ppp");
}

/// `vpnlab check` warns (file:line:col, the kernel release, the version that brings it) about a
/// sysctl the running kernel lacks, and still exits 0.
#[test]
fn check_warns_about_a_sysctl_this_kernel_lacks() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let d = lab_dir(
        labs.path(),
        "t/sysctl",
        &GOOD.replace("[nodes.a]\n", "[nodes.a]\nsysctl = { \"net.ipv4.no_such_sysctl_vpnlab\" = \"1\" }\n"),
    );
    let o = vpnlab(&["check", "t/sysctl"], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:4:", d.join("lab.toml").display())), "{err}");
    assert!(err.contains("warning: sysctl `net.ipv4.no_such_sysctl_vpnlab` does not exist on this kernel"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("t/sysctl: ok (1 scenarios)"));
}

#[test]
fn a_lab_outside_labs_is_named_by_its_path_and_its_snapshots_survive_a_copy() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let d = lab_dir(elsewhere.path(), "hidden-labs/tap-bridge", GOOD);
    let run = |args: &[&str], ci: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vpnlab"));
        c.args(args).env("VPNLAB_LABS", labs.path()).env("VPNLAB_WORK_ROOT", work.path());
        if ci {
            c.env("CI", "true");
        } else {
            c.env_remove("CI");
        }
        c.output().unwrap()
    };
    let o = run(&["run", &d.to_string_lossy()], false);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The header names the lab by its own folder, not by the folder it sits in.
    let snap = std::fs::read_to_string(d.join("snapshots/ping.snap")).unwrap();
    assert!(snap.starts_with("---\nsource: lab.toml\ndescription: \"tap-bridge::ping - two nodes\"\n---\n"), "{snap}");
    // A colleague's copy, in another folder under another name, passes the same snapshots.
    let copy = lab_dir(elsewhere.path(), "from-alice/tap-bridge-copy", GOOD);
    std::fs::create_dir_all(copy.join("snapshots")).unwrap();
    std::fs::copy(d.join("snapshots/ping.snap"), copy.join("snapshots/ping.snap")).unwrap();
    let o = run(&["run", &copy.to_string_lossy()], true);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The scenario part of the header is still compared: a snapshot of another scenario fails.
    std::fs::write(copy.join("snapshots/ping.snap"), snap.replace("::ping\n", "::pong\n")).unwrap();
    let o = run(&["run", &copy.to_string_lossy()], true);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // The hint names the lab by a path vpnlab accepts back (not `from-alice/tap-bridge-copy`).
    let canon = std::fs::canonicalize(&copy).unwrap();
    let hint = format!("run `vpnlab run {}::ping` locally", canon.display());
    assert!(stderr(&o).contains(&hint), "{}", stderr(&o));
    std::fs::copy(d.join("snapshots/ping.snap"), copy.join("snapshots/ping.snap")).unwrap();
    let o = run(&["run", &format!("{}::ping", canon.display())], true);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_script_shipped_in_the_lab_folder_runs_in_setup_and_steps() {
    use std::os::unix::fs::PermissionsExt;
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let toml = GOOD
        .replace("[nodes.a]\n", "[nodes.a]\nsetup = [\"./bridge-start br0\"]\n")
        .replace("steps = [", "steps = [\"a: show ip -o link show br0\", \"a: sh ./bridge-start br1\", \"a: sh test -f made-br1\", ");
    let d = lab_dir(labs.path(), "t/script", &toml);
    let script = d.join("bridge-start");
    // A real bridge made by the script, in the node's namespace, from the node's directory.
    std::fs::write(&script, "#!/bin/sh\nset -e\nip link add \"$1\" type bridge\ntouch \"made-$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = vpnlab(&["check", "t/script"], labs.path(), work.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_vpnlab"))
        .args(["run", "--accept", "t/script"])
        .env("VPNLAB_LABS", labs.path())
        .env("VPNLAB_WORK_ROOT", work.path())
        .env_remove("CI")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "check passes, run runs it: {}", stderr(&o));
    let snap = std::fs::read_to_string(d.join("snapshots/ping.snap")).unwrap();
    assert!(snap.contains("a$ ip -o link show br0\n") && snap.contains(": br0: <BROADCAST,MULTICAST>"), "{snap}");
    // Check and run refuse a script that is not executable alike, at the same spot.
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    for cmd in ["check", "run"] {
        let o = vpnlab(&[cmd, "t/script"], labs.path(), work.path());
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("lab.toml:4:11: error: `./bridge-start` is not executable"), "{cmd}: {}", stderr(&o));
    }
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "nothing left behind");
}

#[test]
fn new_builds_a_tap_bridged_server_and_refuses_what_it_cannot_bridge() {
    let tmp = tempfile::tempdir().unwrap();
    let (srv, cli) = (tmp.path().join("office.conf"), tmp.path().join("laptop.ovpn"));
    std::fs::write(&cli, "client\ndev tap\nremote vpn.example.com 1194\n").unwrap();
    let labs = tmp.path().join("mylabs");
    let args = ["new", "tapco", "--server", &srv.to_string_lossy(), "--client", &cli.to_string_lossy(), "--dir", &labs.to_string_lossy()];
    // Without addresses (the office's DHCP server would give them) the lab cannot be built.
    std::fs::write(&srv, "port 1194\ndev tap0\nserver-bridge\nca ca.crt\n").unwrap();
    let o = vpnlab(&args, &labs, tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let want = format!("{}:3:1: error: `server-bridge`: vpnlab new builds `server-bridge GW MASK POOL_START POOL_END` only", srv.display());
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    assert!(!labs.join("custom/tapco").exists(), "no empty lab left behind");
    // With them: tap0 and br0 in the server's node, the bridged LAN and a host on it.
    std::fs::write(&srv, "port 1194\ndev tap0\nserver-bridge 192.168.10.1 255.255.255.0 192.168.10.100 192.168.10.150\nca ca.crt\n")
        .unwrap();
    let o = vpnlab(&args, &labs, tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let toml = std::fs::read_to_string(labs.join("custom/tapco/lab.toml")).unwrap();
    for want in [
        "taps   = [\"tap0\"]",
        "ports     = [\"eth1\", \"tap0\"]",
        "addresses = [\"192.168.10.1/24\"]",
        "client: ping 192.168.10.10 -> reachable",
    ] {
        assert!(toml.contains(want), "{want}: {toml}");
    }
}
