//! Tests that need root are ignored, with the reason, when they are built by another user:
//! libtest cannot ignore a test at run time, so the user is looked at here, at build time, and
//! `cfg(vpnlab_not_root)` turns `#[cfg_attr(vpnlab_not_root, ignore = "needs root ...")]` on.
//! A build through sudo or as another user redoes this (the variables below change); a test
//! binary built as root but run by another user fails in the test's own root check instead.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vpnlab_not_root)");
    println!("cargo::rerun-if-changed=build.rs");
    for var in ["USER", "LOGNAME", "SUDO_UID"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if effective_uid() != Some(0) {
        println!("cargo::rustc-cfg=vpnlab_not_root");
    }
}

/// The effective uid of this build, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}
