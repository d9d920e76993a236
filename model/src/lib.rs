//! The lab model: `lab.toml` parsed (serde + toml with spans) and validated into a [`Lab`] that
//! the rest of the harness trusts. Every problem becomes one [`InputError`] that names
//! `file:line:column` and the fix; nothing is built from an invalid lab.
//!
//! This crate is the bottom layer: everything a lab file can say (topology, services, steps, the
//! impairment, PKI and PPP specs) and its validation, pure data and parsing. It depends on no
//! runtime crate (no nix, tokio, rtnetlink, rcgen); the runtime (`vpnlab`) re-exports it as
//! `vpnlab::model`.

mod bridge;
pub mod counter;
pub mod error;
pub mod impair;
mod include;
#[cfg(test)]
mod include_tests;
mod lab;
mod local;
pub mod pki;
mod ppp;
mod raw;
pub mod route;
mod sanitize;
pub mod step;
#[cfg(test)]
mod tests;
mod validate;
mod words;

use crate::error::InputError;
use std::path::{Path, PathBuf};

pub use lab::{
    daemon_program, Bridge, Endpoint, FileSpec, KernelFeature, Lab, Lan, Link, Node, Sanitizer, Scenario, Service, SysctlUse, Tap,
};
pub use local::is_local as is_local_program;
pub use words::split_words;

use raw::{RawLab, RawService};
use validate::{check_name, Validator};

// ---------------------------------------------------------------- loading

/// Finds `lab.toml` in a lab folder (or takes the file itself).
pub fn lab_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("lab.toml")
    } else {
        path.to_path_buf()
    }
}

/// The lab id: the folder's last two components (`openvpn/missing-return-route`).
pub fn lab_id(dir: &Path) -> String {
    let comps: Vec<String> = dir.components().rev().take(2).map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    comps.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// Reads and validates a lab.
pub fn load(path: &Path) -> Result<Lab, InputError> {
    let file = lab_file(path);
    let src = std::fs::read_to_string(&file).map_err(|e| InputError {
        file: file.clone(),
        line: 1,
        col: 1,
        msg: format!("cannot read the lab file: {e}"),
        hint: "give the path of a lab folder containing lab.toml, or a lab id from `vpnlab list`".into(),
    })?;
    parse(&file, &src)
}

/// Validates a lab from its text (`file` is used for messages and to find the files it names).
pub fn parse(file: &Path, src: &str) -> Result<Lab, InputError> {
    let raw: RawLab = toml::from_str(src).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let msg = e.message().trim().to_string();
        let hint = if msg.contains("unknown field") {
            "remove or rename the key; LAB_FORMAT.md lists every key"
        } else if msg.contains("missing field") {
            "add the key; LAB_FORMAT.md shows an example of every table"
        } else {
            "fix the TOML syntax at this spot"
        };
        InputError::at(file, src, offset, msg, hint)
    })?;
    let mut raw = raw;
    let mut sources = include::Sources::new(file, src);
    include::resolve(&mut sources, &mut raw)?;
    Validator { file, src: &sources.text, dir: file.parent().unwrap_or(Path::new(".")), sources: &sources }.lab(raw)
}
