//! What a lab needs from the machine: root, daemon binaries (with the Debian package that
//! provides each), kernel features. Checked before anything is built.

use crate::error::EnvError;
use crate::model::{KernelFeature, Lab};
use std::path::{Path, PathBuf};

/// The Debian/Ubuntu package that provides a program the labs use.
pub fn package_of(program: &str) -> &'static str {
    match Path::new(program).file_name().and_then(|s| s.to_str()).unwrap_or(program) {
        "openvpn" => "openvpn",
        "ping" => "iputils-ping",
        "ip" | "tc" | "ss" | "bridge" => "iproute2",
        "nft" => "nftables",
        "iptables" | "iptables-save" | "iptables-restore" | "ip6tables" => "iptables",
        "pppd" => "ppp",
        "sshd" => "openssh-server",
        "ssh" | "ssh-keygen" => "openssh-client",
        "pluto" | "ipsec" | "certutil" => "libreswan (and libnss3-tools for certutil)",
        "setpriv" | "unshare" | "nsenter" => "util-linux",
        "tcpdump" => "tcpdump",
        "openssl" => "openssl",
        "linux.uml" => "user-mode-linux",
        "modprobe" => "kmod",
        "python3" => "python3",
        _ => "the package that provides it",
    }
}

/// Finds a program in PATH (or checks an absolute path).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join(program)).find(|p| p.is_file())
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn require_root() -> Result<(), EnvError> {
    if is_root() {
        Ok(())
    } else {
        Err(EnvError {
            msg: "vpnlab builds network namespaces and starts daemons, which needs root".into(),
            hint: "run it as root: `sudo -E cargo test` or `sudo vpnlab run`".into(),
        })
    }
}

/// Binaries the lab needs that are not installed, as (program, package).
pub fn missing_programs(lab: &Lab) -> Vec<(String, &'static str)> {
    let mut progs = lab.programs();
    progs.push("sleep".into()); // the PID-namespace holder
    progs.into_iter().filter(|p| which(p).is_none()).map(|p| {
        let pkg = package_of(&p);
        (p, pkg)
    }).collect()
}

/// Does the running kernel offer this feature? (probed once per process)
pub fn kernel_has(f: KernelFeature) -> bool {
    use std::sync::OnceLock;
    static PPP: OnceLock<bool> = OnceLock::new();
    static ESP: OnceLock<bool> = OnceLock::new();
    match f {
        KernelFeature::Ppp => *PPP.get_or_init(|| std::fs::OpenOptions::new().read(true).write(true).open("/dev/ppp").is_ok()),
        KernelFeature::Esp => *ESP.get_or_init(probe_esp),
    }
}

/// Tries to add an ESP xfrm state in a scratch network namespace.
fn probe_esp() -> bool {
    let Ok(ns) = crate::ns::NetNs::create_many(&["esp-probe".to_string()]) else { return false };
    let Ok(pid) = crate::ns::PidNs::create() else { return false };
    let argv: Vec<String> = "ip xfrm state add src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x100 aead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128"
        .split(' ')
        .map(String::from)
        .collect();
    crate::process::run_capture(&ns[0], &pid, &argv, Path::new("/"), std::time::Duration::from_secs(5)).map(|o| o.success()).unwrap_or(false)
}

/// Can this lab run here? A service whose daemon is not installed is reported at its `run`
/// line in the lab file; other missing programs and kernel features as an environment error.
pub fn check_runnable(lab: &Lab) -> Result<(), anyhow::Error> {
    for s in &lab.services {
        let prog = &s.argv[0];
        if which(prog).is_none() {
            return Err(crate::error::InputError {
                file: lab.file.clone(),
                line: s.loc.0,
                col: s.loc.1,
                msg: format!("service `{}` runs `{prog}`, which is not installed", s.name),
                hint: format!("install {} (`sudo ci/setup` installs every package the labs use), or fix the path", package_of(prog)),
            }
            .into());
        }
    }
    if let Some(why) = unmet(lab) {
        return Err(EnvError { msg: format!("{} cannot run here: {why}", lab.id), hint: "run `sudo ci/setup` to install what the labs need".into() }.into());
    }
    Ok(())
}

/// Why a lab cannot run here, if it cannot: missing binaries or kernel features.
pub fn unmet(lab: &Lab) -> Option<String> {
    let missing = missing_programs(lab);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|(p, pkg)| format!("`{p}` (install {pkg})")).collect();
        return Some(format!("missing programs: {}; `ci/setup` installs all of them", list.join(", ")));
    }
    crate::backend::choose(lab).err()
}
