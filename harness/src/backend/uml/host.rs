//! What [`run`](super::run) needs from the host, probed once (kernel version, modules, a C
//! compiler), and the LD_PRELOAD FPU shim for hosts whose XSAVE area is larger than UML's buffer
//! (its C source is `fpu_shim.c`, included at build time).

use super::dirs::PRIVATE_PREFIX;
use super::{UML_KERNEL, UML_MODULES};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Everything [`run`] needs from the host, probed once.
#[derive(Debug)]
pub(super) struct HostConfig {
    pub(super) version: String,
    pub(super) modprobe: PathBuf,
    /// C compiler for the FPU shim, when the shim is needed.
    pub(super) cc: Option<PathBuf>,
}

pub(super) fn host_config() -> Result<&'static HostConfig, String> {
    static CFG: OnceLock<Result<HostConfig, String>> = OnceLock::new();
    CFG.get_or_init(probe_host).as_ref().map_err(|e| e.clone())
}

pub(super) fn probe_host() -> Result<HostConfig, String> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err("the UML backend is only supported on x86_64 Linux".into());
    }
    if !is_executable(Path::new(UML_KERNEL)) {
        return Err(format!("{UML_KERNEL} not found: install the Debian package `user-mode-linux`"));
    }
    let out = std::process::Command::new(UML_KERNEL)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {UML_KERNEL} --version: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() || version.contains(char::is_whitespace) {
        return Err(format!("{UML_KERNEL} --version failed ({}): reinstall the Debian package `user-mode-linux`", out.status));
    }
    let moddir = Path::new(UML_MODULES).join(&version);
    if !moddir.join("modules.dep").is_file() {
        return Err(format!(
            "{} missing: the UML kernel modules come with the Debian package `user-mode-linux` (version {version})",
            moddir.join("modules.dep").display()
        ));
    }
    let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe", "/usr/bin/modprobe", "/bin/modprobe"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_executable(p))
        .ok_or_else(|| "modprobe not found: install the Debian package `kmod`".to_string())?;
    let cc = if needs_fpu_shim() {
        Some(find_in_path(&["cc", "gcc", "clang"]).ok_or_else(|| {
            format!(
                "this CPU's XSAVE area is {} bytes (AVX-512/AMX); Debian's UML {version} cannot \
                 restore it (guest dies with `ptrace set fp regs failed, errno = 14`) unless the \
                 harness builds its ptrace shim: install the Debian package `gcc`",
                host_xsave_size()
            )
        })?)
    } else {
        None
    };
    Ok(HostConfig { version, modprobe, cc })
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

pub(super) fn find_in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    names.iter().find_map(|n| std::env::split_paths(&path).map(|d| d.join(n)).find(|p| is_executable(p)))
}

/// Size of UML 6.1's FPU buffer on x86_64: `sizeof(struct _xstate)` (legacy 512 + header 64 +
/// AVX 256).
pub(super) const UML_XSTATE_SIZE: u32 = 832;

/// Bytes of the XSAVE area for the features the host kernel enabled (XCR0).
pub(super) fn host_xsave_size() -> u32 {
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    {
        use std::arch::x86_64::__cpuid_count;
        let leaf1 = unsafe { __cpuid_count(1, 0) };
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        if !osxsave || unsafe { __cpuid_count(0, 0) }.eax < 0xd {
            return 0;
        }
        unsafe { __cpuid_count(0xd, 0) }.ebx
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

pub(super) fn needs_fpu_shim() -> bool {
    host_xsave_size() > UML_XSTATE_SIZE
}

/// LD_PRELOAD shim for linux.uml: see the module docs. UML is single-threaded where it calls
/// ptrace (all guest tasks are switched on one host thread), so no locking.
pub(super) const FPU_SHIM_C: &str = include_str!("fpu_shim.c");

/// The compiled FPU shim, built once per process in a temp dir that is removed right away.
pub(super) fn fpu_shim_so(cc: &Path) -> Result<&'static [u8]> {
    static SO: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    SO.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PRIVATE_PREFIX}{}-shim-", std::process::id()))
            .tempdir()
            .map_err(|e| format!("temp dir for the FPU shim: {e}"))?;
        let so = build_fpu_shim(cc, dir.path()).map_err(|e| format!("{e:#}"))?;
        std::fs::read(&so).map_err(|e| format!("reading {}: {e}", so.display()))
    })
    .as_deref()
    .map_err(|e| anyhow!("{e}"))
}

pub(super) fn build_fpu_shim(cc: &Path, dir: &Path) -> Result<PathBuf> {
    let src = dir.join("fpu-shim.c");
    let so = dir.join("fpu-shim.so");
    std::fs::write(&src, FPU_SHIM_C)?;
    let out = std::process::Command::new(cc)
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", cc.display()))?;
    if !out.status.success() {
        bail!("building the UML FPU shim with {} failed: {}", cc.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(so)
}
