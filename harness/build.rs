//! Tests that need root are ignored, with the reason, when they are built by another user:
//! libtest cannot ignore a test at run time, so the user is looked at here, at build time, and
//! `cfg(vpnlab_not_root)` turns `#[cfg_attr(vpnlab_not_root, ignore = "needs root ...")]` on.
//! A build through sudo or as another user redoes this (the variables below change); a test
//! binary built as root but run by another user fails in the test's own root check instead.
//!
//! It also compiles the drop locator's eBPF program (`src/drops/drops.bpf.c`) with clang into
//! `$OUT_DIR/drops.bpf.o`, which `drops/mod.rs` includes (`include_bytes!`) and loads at run time.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vpnlab_not_root)");
    println!("cargo::rerun-if-changed=build.rs");
    for var in ["USER", "LOGNAME", "SUDO_UID"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if effective_uid() != Some(0) {
        println!("cargo::rustc-cfg=vpnlab_not_root");
    }
    compile_bpf();
}

/// `clang -target bpf` on the drop locator (CO-RE: it needs libbpf's headers and the kernel's
/// UAPI headers, no vmlinux.h). A missing clang or header is one message: run ci/setup.
fn compile_bpf() {
    let src = "src/drops/drops.bpf.c";
    println!("cargo::rerun-if-changed={src}");
    println!("cargo::rerun-if-env-changed=CLANG");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("drops.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // linux/types.h includes asm/types.h, which Debian and Ubuntu keep under the multiarch
    // directory, which clang does not search for `-target bpf`.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let (multiarch, target_arch) = match arch.as_str() {
        "x86_64" => ("x86_64-linux-gnu", "x86"),
        "aarch64" => ("aarch64-linux-gnu", "arm64"),
        other => (other, other),
    };
    let run = std::process::Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{target_arch}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .output();
    let fix = "run ci/setup (as root) to install clang, libbpf-dev and linux-libc-dev, or set CLANG to a clang that targets bpf";
    match run {
        Err(e) => panic!("\n\nvpnlab build: cannot run `{clang}` to compile {src} ({e}): {fix}\n"),
        Ok(o) if !o.status.success() => {
            panic!("\n\nvpnlab build: `{clang}` failed to compile {src}: {fix}\n{}\n", String::from_utf8_lossy(&o.stderr).trim())
        }
        Ok(_) => {}
    }
}

/// The effective uid of this build, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}
