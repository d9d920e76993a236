//! The versions of the VPN daemons a lab runs (for the JSON report): the first line of
//! `openvpn --version`, `pluto --version`, `pppd --version`. Asked once per process and program.

use crate::model::{self, Lab};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The daemons whose version the report records, by the name the report uses.
pub const DAEMONS: [&str; 3] = ["openvpn", "pluto", "pppd"];

/// The report's name for the daemon a service's command line starts (`ipsec pluto ...` is
/// pluto), or `None` for programs whose version the report does not record (sshd, scripts).
pub fn daemon_of(argv: &[String]) -> Option<&'static str> {
    if argv.is_empty() {
        return None;
    }
    match model::daemon_program(argv).as_str() {
        "openvpn" => Some("openvpn"),
        "ipsec" | "pluto" => Some("pluto"),
        "pppd" => Some("pppd"),
        _ => None,
    }
}

/// Versions of the daemons `lab`'s services use: daemon name -> first line of its `--version`
/// (or why it could not be read).
pub fn of_lab(lab: &Lab) -> BTreeMap<String, String> {
    of_lab_with(lab, &crate::with::With::default())
}

/// Like [`of_lab`], for the builds chosen with `--with` (the version of the binary that ran,
/// not the host's).
pub fn of_lab_with(lab: &Lab, with: &crate::with::With) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in &lab.services {
        if let Some(d) = daemon_of(&s.argv) {
            if !out.contains_key(d) {
                let chosen = crate::with::Component::of_daemon(d).and_then(|c| with.get(c));
                out.insert(d.to_string(), chosen.map(|c| c.version.clone()).unwrap_or_else(|| version(d)));
            }
        }
    }
    out
}

/// The first line of the daemon's `--version` when run with `mounts` (a `--with` build), in a
/// private mount namespace of its own; not cached.
pub fn version_with(daemon: &str, mounts: &[crate::process::BindMount]) -> String {
    if mounts.is_empty() {
        return version(daemon);
    }
    ask_with(daemon, mounts)
}

/// The first line of the daemon's `--version`, cached for the life of the process.
pub fn version(daemon: &str) -> String {
    if let Some(v) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get(daemon) {
        return v.clone();
    }
    let v = ask(daemon);
    CACHE.lock().unwrap_or_else(|p| p.into_inner()).insert(daemon.to_string(), v.clone());
    v
}

/// Takes `line` as the daemon's `--version` answer for the rest of the process (the UML guest:
/// the host asked the same binary, which the guest sees through hostfs; asking again in the
/// guest costs one cold exec of the daemon, 0.2-1 s there).
pub fn preset(daemon: &str, line: &str) {
    CACHE.lock().unwrap_or_else(|p| p.into_inner()).entry(daemon.to_string()).or_insert_with(|| line.to_string());
}

static CACHE: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn ask(daemon: &str) -> String {
    ask_with(daemon, &[])
}

fn ask_with(daemon: &str, mounts: &[crate::process::BindMount]) -> String {
    debug_assert!(DAEMONS.contains(&daemon));
    let tries: Vec<Vec<&str>> = match daemon {
        "pluto" => vec![vec!["/usr/libexec/ipsec/pluto", "--version"], vec!["ipsec", "pluto", "--version"]],
        other => vec![vec![other, "--version"]],
    };
    let mut why = String::new();
    for argv in tries {
        // `openvpn --version` exits 1; pppd prints to stderr: take the first non-empty line of
        // stdout, else of stderr, whatever the status.
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null());
        if !mounts.is_empty() {
            let binds: Vec<(std::ffi::CString, std::ffi::CString)> = mounts
                .iter()
                .filter_map(|m| {
                    Some((
                        std::ffi::CString::new(m.src.to_string_lossy().as_bytes()).ok()?,
                        std::ffi::CString::new(m.dst.to_string_lossy().as_bytes()).ok()?,
                    ))
                })
                .collect();
            let root = std::ffi::CString::new("/").unwrap();
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                    check(libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?;
                    for (src, dst) in &binds {
                        check(libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
                    }
                    Ok(())
                });
            }
        }
        // A build that never answers (a wrapper that execs itself, a hung binary) must not hang
        // the run: a deadline, then SIGKILL.
        match run_with_deadline(cmd, std::time::Duration::from_secs(10)) {
            Ok(Some((out, err))) => {
                let pick = |b: &[u8]| String::from_utf8_lossy(b).lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string);
                if let Some(line) = pick(&out).or_else(|| pick(&err)) {
                    return line;
                }
                why = format!("`{}` printed nothing", argv.join(" "));
            }
            Ok(None) => why = format!("`{}` did not finish within 10s", argv.join(" ")),
            Err(e) => why = format!("`{}`: {e}", argv.join(" ")),
        }
    }
    format!("unknown ({why})")
}

/// Runs `cmd` with its output captured; `None` (and the process killed) past `limit`.
fn run_with_deadline(mut cmd: Command, limit: std::time::Duration) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // `--version` prints a few lines: the pipes never fill before it exits.
    match crate::process::wait_deadline(&mut child, std::time::Instant::now() + limit).map_err(std::io::Error::other)? {
        Some(_) => {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            if let Some(mut o) = child.stdout.take() {
                o.read_to_end(&mut out)?;
            }
            if let Some(mut e) = child.stderr.take() {
                e.read_to_end(&mut err)?;
            }
            Ok(Some((out, err)))
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_are_named_as_in_the_report() {
        let v = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(daemon_of(&v("openvpn --config x")), Some("openvpn"));
        assert_eq!(daemon_of(&v("ipsec pluto --nofork")), Some("pluto"));
        assert_eq!(daemon_of(&v("/usr/sbin/pppd pty x")), Some("pppd"));
        assert_eq!(daemon_of(&v("sh -c 'exit 1'")), None);
        assert_eq!(daemon_of(&[]), None);
    }

    #[test]
    fn versions_are_one_line_and_cached() {
        assert!(!ask("pppd").contains('\n'));
        let v = version("openvpn");
        assert_eq!(version("openvpn"), v, "cached");
    }
}
