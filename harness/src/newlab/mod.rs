//! `vpnlab new NAME --server server.conf --client client.conf [--dir labs]`: turns a customer's
//! OpenVPN server and client configs into a lab skeleton that builds and connects.
//!
//! The configs are parsed with OpenVPN's own line syntax ([`parse_config`]: one directive per
//! line, `#`/`;` comments, `"..."`/`'...'` quoting, backslash escapes, inline `<tag>` blocks,
//! `<connection>` blocks), then
//!
//! - the topology is derived from them: `client --- wan --- server`, one LAN behind the server
//!   per `push "route NET MASK"` (the server on its first host address plus a LAN host), one LAN
//!   behind the client per server-side `route NET MASK`, WAN subnets taken from the documentation
//!   ranges that collide with none of the customer's networks;
//! - both configs are rewritten into the lab folder line for line, changing only what cannot work
//!   in a lab (certificate paths -> the per-run PKI, `dh none`, `disable-dco`, `remote` -> the
//!   lab's server, no daemon/log files, no customer scripts...). Every change is listed in a
//!   header comment and marked where it happens;
//! - `lab.toml` gets one scenario `connect` (the client reaches the server's VPN address and LAN
//!   addresses) and a README.md with the `vpnlab show` summary and what to do next.
//!
//! The lab is validated with [`crate::model::load`] before [`create`] returns; on any failure the
//! half-written folder is removed.

use anyhow::Result;
use std::path::PathBuf;
mod bridge;
mod files;
mod meaning;
mod plan;
mod readme;
mod rewrite;
mod syntax;
#[cfg(test)]
mod tests;

pub use files::create_with_report;
pub use meaning::{client_conf, net_mask, server_conf, ClientConf, Proto, Remote, ServerConf};
pub use syntax::{parse_config, split_line, Config, Item, SyntaxError};

/// What `vpnlab new` was asked to create.
#[derive(Debug, Clone)]
pub struct NewLab {
    /// `customer-acme` (lab id `custom/customer-acme`) or `family/recipe`.
    pub name: String,
    pub server_conf: PathBuf,
    pub client_conf: PathBuf,
    /// The labs root (e.g. `labs/`): the lab goes to `dir/custom/NAME`, or `dir/NAME` when NAME
    /// contains a `/`.
    pub dir: PathBuf,
}

/// What [`create_with_report`] wrote, for the CLI to print.
#[derive(Debug, Clone)]
pub struct Created {
    /// The lab folder.
    pub dir: PathBuf,
    /// The lab id (`custom/NAME`).
    pub id: String,
    /// Every change made to the two configs (`server.conf line 7: ...`).
    pub changes: Vec<String>,
    /// Things that may keep the lab from connecting, or were left out of it.
    pub warnings: Vec<String>,
}

/// Writes lab.toml, the two configs (rewritten where needed) and README.md; returns the lab
/// folder. Fails (with a clear message) if the folder exists, if a config cannot be parsed,
/// or if the generated lab does not validate (the folder is then removed).
pub fn create(spec: &NewLab) -> Result<PathBuf> {
    create_with_report(spec).map(|c| c.dir)
}
