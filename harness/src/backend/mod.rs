//! Backends: where a lab runs. `native` = this kernel; `uml` = a user-mode-linux guest that
//! mounts the host's `/` read-only and runs the same vpnlab binary inside (for kernels without
//! PPP or ESP).

/// Is the user-mode-linux backend usable on this machine?
pub fn uml_usable() -> bool {
    false
}
