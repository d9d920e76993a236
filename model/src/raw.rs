//! What serde reads: `lab.toml`'s tables as written, with `toml::Spanned` values for messages.

use super::ppp;
use crate::pki::PkiSpec;
use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

// ---------------------------------------------------------------- raw (what serde reads)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLab {
    /// Fragments merged in before the lab's own tables (include.rs).
    #[serde(default)]
    pub(super) include: Vec<Spanned<String>>,
    pub(super) lab: RawMeta,
    #[serde(default)]
    pub(super) pki: Option<PkiSpec>,
    #[serde(default)]
    pub(super) nodes: IndexMap<String, Spanned<RawNode>>,
    #[serde(default)]
    pub(super) links: Vec<Spanned<RawLink>>,
    #[serde(default)]
    pub(super) lans: Vec<Spanned<RawLan>>,
    /// PPP-over-SSH links, expanded into services and setup commands (ppp.rs).
    #[serde(default)]
    pub(super) ppp: Vec<Spanned<ppp::RawPpp>>,
    #[serde(default)]
    pub(super) services: IndexMap<String, Spanned<RawService>>,
    #[serde(default)]
    pub(super) sanitize: Vec<Spanned<RawSanitizer>>,
    #[serde(default)]
    pub(super) scenarios: IndexMap<String, Spanned<RawScenario>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeta {
    pub(super) title: String,
    #[serde(default)]
    pub(super) source: String,
    #[serde(default)]
    pub(super) kernel: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) prelude: Vec<Spanned<String>>,
    /// Overall deadline for one scenario (default 60s).
    #[serde(default)]
    pub(super) deadline: Option<Spanned<String>>,
    /// Deadline of a command step (`sh`, `show`) and of setup commands (default 10s).
    #[serde(default)]
    pub(super) step_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    #[serde(default)]
    pub(super) sysctl: IndexMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) rules: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) files: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) modes: IndexMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) nft: Option<String>,
    #[serde(default)]
    pub(super) setup: Vec<Spanned<String>>,
    /// Persistent TAP devices of the node: `"tap0 [address/prefix ...]"` (bridge.rs).
    #[serde(default)]
    pub(super) taps: Vec<Spanned<String>>,
    /// Linux bridges of the node (bridge.rs).
    #[serde(default)]
    pub(super) bridges: Vec<Spanned<super::bridge::RawBridge>>,
    /// The node's hostname (its own UTS namespace); default: the node's name.
    #[serde(default)]
    pub(super) hostname: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLink {
    pub(super) a: Spanned<String>,
    pub(super) b: Spanned<String>,
    #[serde(default)]
    pub(super) mtu: Option<u32>,
    /// The address space of the link's addresses (bridge.rs; default: the lab's one space).
    #[serde(default)]
    pub(super) space: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLan {
    pub(super) name: Spanned<String>,
    pub(super) members: Vec<Spanned<String>>,
    /// The address space of the LAN's addresses (bridge.rs).
    #[serde(default)]
    pub(super) space: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) node: Spanned<String>,
    pub(super) run: Spanned<String>,
    #[serde(default)]
    pub(super) ready: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeout: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub(super) autostart: bool,
    /// The daemon is allowed to exit on its own (otherwise its death fails the lab).
    #[serde(default)]
    pub(super) may_exit: bool,
    /// Reduced privileges: options for util-linux `setpriv` (e.g. `"--securebits
    /// +keep_caps_locked"` or `"--reuid nobody --regid nogroup --clear-groups"`); the daemon
    /// runs as `setpriv OPTIONS -- RUN`.
    #[serde(default)]
    pub(super) setpriv: Option<Spanned<String>>,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSanitizer {
    /// A substitution: `re` -> `with`.
    #[serde(default)]
    pub(super) re: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) with: Option<String>,
    /// Deletes the command-output lines this regex matches.
    #[serde(default)]
    pub(super) delete: Option<Spanned<String>>,
    /// Deletes blank command-output lines.
    #[serde(default)]
    pub(super) drop_blank: bool,
    /// Only the output of commands matching this regex.
    #[serde(default)]
    pub(super) after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    #[serde(default)]
    pub(super) about: String,
    pub(super) steps: Vec<Spanned<String>>,
}

/// A shared fragment (`include = [...]`): what several labs can share.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFragment {
    #[serde(default)]
    pub(super) include: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) nodes: IndexMap<String, Spanned<RawNode>>,
    #[serde(default)]
    pub(super) links: Vec<Spanned<RawLink>>,
    #[serde(default)]
    pub(super) lans: Vec<Spanned<RawLan>>,
    #[serde(default)]
    pub(super) services: IndexMap<String, Spanned<RawService>>,
    #[serde(default)]
    pub(super) sanitize: Vec<Spanned<RawSanitizer>>,
}
