//! Lab-authoring features on real namespaces, through the CLI: `tty` steps (a real program that
//! prints differently on a terminal), node host names (the host's untouched), line-deleting
//! sanitizers scoped to a command, a shared fragment, and `show` output in a live run.

mod common;
use common::cli::{lab, vpnlab};

const FRAGMENT: &str = "[nodes.a]\nhostname = \"west\"\n[nodes.b]\n[[links]]\na = \"a:eth0 10.9.0.1/24\"\nb = \"b:eth0 10.9.0.2/24\"\n\
[[sanitize]]\ndelete = \"^total \"\nafter = \"^ls -l\"\n[[sanitize]]\ndrop_blank = true\n";

const LAB: &str = r#"include = ["../common/two.toml"]
[lab]
title = "authoring"
[scenarios.s]
steps = [
  "a: show tty",
  "a: tty tty",
  "a: show ls /",
  "a: show ls -C /",
  "a: tty ls /",
  "a: show hostname",
  "b: show hostname",
  "a: show printf 'x\\n\\n y\\n'",
  "a: show ls -l /",
  "a: show sh -c 'echo total 1'",
]
"#;

/// The output lines under each transcript line `line` (in order of appearance).
fn blocks<'a>(transcript: &'a str, line: &str) -> Vec<Vec<&'a str>> {
    let lines: Vec<&str> = transcript.lines().collect();
    let found: Vec<Vec<&str>> = (0..lines.len())
        .filter(|&i| lines[i] == line)
        .map(|i| lines[i + 1..].iter().take_while(|l| l.starts_with("    ")).map(|l| l.trim()).collect())
        .collect();
    assert!(!found.is_empty(), "no `{line}` in:\n{transcript}");
    found
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn tty_hostname_sanitizers_fragment_and_live_show() {
    let labs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let common = labs.path().join("t/common");
    std::fs::create_dir_all(&common).unwrap();
    std::fs::write(common.join("two.toml"), FRAGMENT).unwrap();
    let dir = lab(labs.path(), "t/authoring", LAB);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    // Without -q: the live run's progress lines, which must carry the show output too.
    let out = vpnlab(&["run", "--accept", "t/authoring"], labs.path(), work.path());
    assert_eq!(out.code, Some(0), "{}", out.text);
    let live: String = out.text.lines().filter_map(|l| l.split_once("] ").map(|(_, r)| format!("{r}\n"))).collect();
    let snap = std::fs::read_to_string(dir.join("snapshots/s.snap")).unwrap();
    for t in [&live, &snap] {
        // `tty` says there is no terminal under `show`, names one under `tty`.
        let tty = blocks(t, "a$ tty");
        assert_eq!(tty[0], ["not a tty", "(exit 1)"], "{t}");
        assert!(tty[1].len() == 1 && tty[1][0].starts_with("/dev/pts/"), "{t}");
        // ls lays out columns on a terminal (or with -C); one name per line into a pipe.
        let ls = blocks(t, "a$ ls /");
        assert!(ls[0].len() > 5 && ls[0].iter().all(|l| !l.contains(' ')), "{t}");
        assert!(ls[1].len() < ls[0].len() && ls[1][0].contains("  "), "{t}");
        assert_eq!(ls[1], blocks(t, "a$ ls -C /")[0], "{t}");
        // Host names: the node's own, by default the node's name.
        assert_eq!(blocks(t, "a$ hostname")[0], ["west"], "{t}");
        assert_eq!(blocks(t, "b$ hostname")[0], ["b"], "{t}");
        // drop_blank in all command output; `delete` only after `ls -l`.
        assert_eq!(blocks(t, "a$ printf 'x\\n\\n y\\n'")[0], ["x", "y"], "{t}");
        assert!(!blocks(t, "a$ ls -l /")[0].iter().any(|l| l.starts_with("total ")), "{t}");
        assert_eq!(blocks(t, "a$ sh -c 'echo total 1'")[0], ["total 1"], "{t}");
    }
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(), host, "the host's name is never changed");
}
