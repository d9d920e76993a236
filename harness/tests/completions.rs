//! `vpnlab completions SHELL` gives scripts the shells accept and that complete vpnlab's
//! subcommands and flags (bash is driven for real); `vpnlab --version` names vpnlab's version and
//! the daemons' own.

use std::process::{Command, Stdio};

fn vpnlab(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vpnlab")).args(args).stdin(Stdio::null()).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// What bash's completion offers for the words typed so far (the last one being completed).
fn bash_complete(script: &str, words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vpnlab.bash");
    std::fs::write(&f, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; _vpnlab vpnlab '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        f.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words[words.len() - 1],
        words[words.len() - 2]
    );
    let o = Command::new("bash").args(["--norc", "--noprofile", "-c", &prog]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let (code, script, err) = vpnlab(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(bash_complete(&script, &["vpnlab", "ru"]), ["run"]);
    let subs = bash_complete(&script, &["vpnlab", ""]);
    for s in ["run", "list", "show", "completions", "matrix", "up"] {
        assert!(subs.iter().any(|x| x == s), "{s} in {subs:?}");
    }
    assert!(!subs.iter().any(|x| x.starts_with("__")), "hidden commands are not offered: {subs:?}");
    let flags = bash_complete(&script, &["vpnlab", "run", "--"]);
    for f in ["--html", "--shard", "--junit", "--report", "--pcap"] {
        assert!(flags.iter().any(|x| x == f), "{f} in {flags:?}");
    }
    assert_eq!(bash_complete(&script, &["vpnlab", "completions", "fi"]), ["fish"]);
}

#[test]
fn zsh_and_fish_scripts_name_the_commands_and_parse_where_the_shell_is_installed() {
    for shell in ["zsh", "fish"] {
        let (code, script, err) = vpnlab(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(script.contains("completions") && script.contains("shard") && script.contains("html"), "{shell}: {script}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, &script).unwrap();
        // -n: parse only.
        if let Ok(o) = Command::new(shell).arg("-n").arg(&f).output() {
            assert!(o.status.success(), "{shell} -n: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let (code, _, err) = vpnlab(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn version_names_vpnlab_and_each_daemon() {
    let t0 = std::time::Instant::now();
    let (code, out, err) = vpnlab(&["--version"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("vpnlab {}", env!("CARGO_PKG_VERSION")));
    for d in ["openvpn", "pluto", "pppd"] {
        let l = lines.iter().find(|l| l.trim_start().starts_with(d)).unwrap_or_else(|| panic!("{d} in {out}"));
        assert!(l.split_whitespace().count() >= 2, "{l}");
    }
    // ci/setup installs openvpn: its real version line, not `unknown (...)`.
    let ovpn = lines.iter().find(|l| l.trim_start().starts_with("openvpn")).unwrap();
    if std::path::Path::new("/usr/sbin/openvpn").exists() {
        assert!(ovpn.contains("OpenVPN "), "{ovpn}");
    }
    // Each daemon has a 10 s deadline and they are asked at once.
    assert!(t0.elapsed() < std::time::Duration::from_secs(25), "{:?}", t0.elapsed());
    assert_eq!(vpnlab(&["-V"]).1, out);
}
