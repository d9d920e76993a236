//! `--with NAME=SPEC` (root, real openvpn): a binary that is not on PATH runs, a Debian version
//! is fetched once and then found in the cache, a bad SPEC exits 2 saying what is available.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn labs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs")
}

fn vpnlab(args: &[&str]) -> Output {
    assert!(vpnlab::env::is_root(), "these tests need root: run `sudo -E cargo test`");
    Command::new(env!("CARGO_BIN_EXE_vpnlab")).args(args).env("VPNLAB_LABS", labs()).env_remove("CI").output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_binary_that_is_not_on_path_runs() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-openvpn");
    std::fs::copy("/usr/sbin/openvpn", &real).unwrap();
    let marker = dir.path().join("marker");
    let wrapper = dir.path().join("openvpn");
    std::fs::write(&wrapper, format!("#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n", marker.display(), real.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = format!("openvpn={}", wrapper.display());
    let report = dir.path().join("r.json");
    let o = vpnlab(&["run", "-q", "openvpn/basic-server::connected", "--with", &spec, "--report", report.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ran = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(ran.lines().any(|l| l == "--config server.conf"), "the server ran the wrapper: {ran}");
    assert!(ran.lines().any(|l| l == "--config client.conf"), "the client ran the wrapper: {ran}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(r["scenarios"][0]["versions"]["openvpn"].as_str().unwrap().starts_with("OpenVPN 2."), "{r}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_debian_version_is_fetched_once_then_cached() {
    // The first run may fetch (network to Debian's archive); the second fetches nothing.
    let first = vpnlab(&["run", "-q", "openvpn/basic-server::connected", "--with", "openvpn=debian:sid"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let second = vpnlab(&["run", "-q", "openvpn/basic-server::connected", "--with", "openvpn=debian:sid"]);
    let t = text(&second);
    assert_eq!(second.status.code(), Some(0), "{t}");
    assert!(t.contains("Debian sid root: cached"), "{t}");
    assert!(!t.contains("fetching") && !t.contains("fetched in"), "{t}");
    assert!(t.contains("with openvpn=2.7"), "the progress line names the version that ran: {t}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn bad_specs_exit_2_with_what_is_available() {
    let o = vpnlab(&["run", "openvpn/basic-server", "--with", "openvpn=/nonexistent/openvpn"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("/nonexistent/openvpn"), "{}", text(&o));
    let o = vpnlab(&["run", "openvpn/basic-server", "--with", "wireguard=1.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("openvpn, libreswan or pppd"), "{}", text(&o));
    let d = tempfile::tempdir().unwrap();
    let o = vpnlab(&["run", "openvpn/basic-server", "--with", &format!("openvpn={}", d.path().display())]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("neither an executable nor an install prefix"), "{}", text(&o));
    let o = vpnlab(&["run", "openvpn/basic-server", "--with", "openvpn=9.9.9"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("no such version") && t.contains("available:") && t.contains("(sid)"), "{t}");
    assert!(t.lines().filter(|l| !l.starts_with("vpnlab: ")).count() <= 2, "one error: {t}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn a_lab_kept_up_runs_the_chosen_build() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let wrapper = dir.path().join("openvpn");
    // The wrapper is mounted over /usr/sbin/openvpn in the daemons' mount namespaces: it must
    // exec a copy of the real one, not /usr/sbin/openvpn (itself).
    let real = dir.path().join("real-openvpn");
    std::fs::copy("/usr/sbin/openvpn", &real).unwrap();
    std::fs::write(&wrapper, format!("#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n", marker.display(), real.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = format!("openvpn={}", wrapper.display());
    let up = vpnlab(&["up", "openvpn/ccd-permissions", "--until", "1", "--with", &spec]);
    let down = vpnlab(&["down", "openvpn/ccd-permissions"]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    assert_eq!(down.status.code(), Some(0), "{}", text(&down));
    let ran = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(ran.contains("--config"), "the kept-up lab's daemons ran the chosen build: {ran}");
    // A bad SPEC is refused before anything is built.
    let o = vpnlab(&["up", "openvpn/ccd-permissions", "--with", "openvpn=/nonexistent/openvpn"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
