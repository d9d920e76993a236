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
    progs
        .into_iter()
        .filter(|p| which(p).is_none())
        .map(|p| {
            let pkg = package_of(&p);
            (p, pkg)
        })
        .collect()
}

/// Does the running kernel offer this feature? (probed once per process, in a scratch network
/// namespace: the host's own namespaces are never changed)
pub fn kernel_has(f: KernelFeature) -> bool {
    use std::sync::OnceLock;
    static PROBED: [OnceLock<bool>; KernelFeature::ALL.len()] = [const { OnceLock::new() }; KernelFeature::ALL.len()];
    let i = KernelFeature::ALL.iter().position(|x| *x == f).expect("every feature is in ALL");
    *PROBED[i].get_or_init(|| probe_native(f))
}

/// The shell command that succeeds where the kernel has `f`, run as root in a fresh network
/// namespace (natively, and in the user-mode-linux guest by `backend::uml_features`).
pub fn probe_script(f: KernelFeature) -> &'static str {
    match f {
        // `test -c` first: `<>` would create a missing /dev/ppp as a plain file.
        KernelFeature::Ppp => "test -c /dev/ppp && exec 3<>/dev/ppp",
        KernelFeature::Esp => "ip xfrm state add src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x100 aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128",
        KernelFeature::NftInet => "nft add table inet vpnlab_probe && nft add chain inet vpnlab_probe c '{ type filter hook forward priority 0; }'",
        KernelFeature::NftIpv4 => "nft add table ip vpnlab_probe && nft add chain ip vpnlab_probe c '{ type filter hook forward priority 0; }'",
        KernelFeature::MultipathHashSeed => "test -e /proc/sys/net/ipv4/fib_multipath_hash_seed",
        KernelFeature::Netem => "ip link set lo up && tc qdisc add dev lo root netem delay 1ms",
        KernelFeature::Nfqueue => "iptables -A OUTPUT -o lo -j NFQUEUE --queue-num 4242",
    }
}

/// Runs [`probe_script`] in a scratch network namespace (and PID namespace) of its own. PPP is
/// probed by opening `/dev/ppp` without creating anything (`/dev` is the host's).
fn probe_native(f: KernelFeature) -> bool {
    if f == KernelFeature::Ppp {
        let p = Path::new("/dev/ppp");
        use std::os::unix::fs::FileTypeExt;
        return std::fs::metadata(p).is_ok_and(|m| m.file_type().is_char_device())
            && std::fs::OpenOptions::new().read(true).write(true).open(p).is_ok();
    }
    let Ok(ns) = crate::ns::NetNs::create_many(&["probe".to_string()]) else { return false };
    let Ok(pid) = crate::ns::PidNs::create() else { return false };
    let argv: Vec<String> = vec!["/bin/sh".into(), "-c".into(), probe_script(f).into()];
    crate::process::run_capture(&ns[0], &pid, &argv, Path::new("/"), std::time::Duration::from_secs(5))
        .map(|o| o.success())
        .unwrap_or(false)
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// `net.*` sysctls the lab writes that the running kernel does not have, as warnings naming
/// `file:line:col` and the kernel that brings the key (when known).
pub fn missing_sysctls(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    for u in &lab.sysctl_uses {
        let path = Path::new("/proc/sys").join(u.key.replace('.', "/"));
        if path.exists() {
            continue;
        }
        let needs = match crate::model::KernelFeature::of_sysctl(&u.key) {
            Some((f, version)) => {
                format!("it exists from Linux {version} (kernel feature `{}`, which vpnlab adds to the lab's needs)", f.name())
            }
            None => "the key may be misspelled or need a kernel module or a newer kernel".to_string(),
        };
        out.push(format!(
            "{}:{}:{}: warning: sysctl `{}` does not exist on this kernel ({}): {needs}",
            u.file.display(),
            u.line,
            u.col,
            u.key,
            kernel_release()
        ));
    }
    out
}

/// Can this lab run here? A service whose daemon is not installed is reported at its `run`
/// line in the lab file; other missing programs and kernel features as an environment error.
pub fn check_runnable(lab: &Lab) -> Result<(), anyhow::Error> {
    for s in &lab.services {
        let prog = &s.argv[0];
        // A relative program (`./mydaemon`) is a file of the lab folder, checked by the model.
        if !crate::model::is_local_program(prog) && which(prog).is_none() {
            return Err(crate::error::InputError {
                file: s.loc_file.clone(),
                line: s.loc.0,
                col: s.loc.1,
                msg: format!("service `{}` runs `{prog}`, which is not installed", s.name),
                hint: format!("install {} (`sudo ci/setup` installs every package the labs use), or fix the path", package_of(prog)),
            }
            .into());
        }
    }
    if let Some(why) = unmet(lab) {
        return Err(EnvError {
            msg: format!("{} cannot run here: {why}", lab.id),
            hint: "run `sudo ci/setup` to install what the labs need".into(),
        }
        .into());
    }
    Ok(())
}

/// Why a lab cannot run here, if it cannot: missing binaries, or a `VPNLAB_BACKEND` that names
/// no backend. (Kernel features missing on every backend make each scenario that needs them
/// an `error` outcome naming the feature, see `backend::choose_for`.)
pub fn unmet(lab: &Lab) -> Option<String> {
    let missing = missing_programs(lab);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|(p, pkg)| format!("`{p}` (install {pkg})")).collect();
        return Some(format!("missing programs: {}; `ci/setup` installs all of them", list.join(", ")));
    }
    crate::backend::forced().err()
}
