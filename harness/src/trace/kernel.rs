//! The kernel's own word on a drop (the drop locator, `crate::drops`): where the walker ends a
//! packet at a node, a drop event of that packet at that node names the interface, the kernel
//! function and the drop reason instead of the inference (`ip route get`, sysctls, SNMP
//! counters); a firewall drop keeps its chains beside it. Without events (user-mode-linux, or
//! none of the probe's packets was freed as dropped) the inference stays.

use super::ruleset::Kind;
use super::walk::Walker;
use crate::drops::{Drop, L4};

/// How a `why` that the kernel said starts (`dropped()` turns it into `was dropped at NODE: ...`).
pub(super) const KERNEL: &str = "kernel: ";

/// Which of the probe's packets (to or from `dest`) a dropped packet is, if any.
pub(super) fn kind_of(d: &Drop, dest: std::net::IpAddr) -> Option<Kind> {
    let p = d.packet.as_ref()?;
    let (echo, err) = match &p.l4 {
        L4::Echo { reply, .. } => (Some((*reply, p.src, p.dst)), false),
        L4::IcmpError { quoted: Some(q), .. } => match q.l4 {
            L4::Echo { reply, .. } => (Some((reply, q.src, q.dst)), true),
            _ => (None, true),
        },
        _ => (None, false),
    };
    let (reply, src, dst) = echo?;
    let about = if reply { src == dest } else { dst == dest };
    about.then_some(match (err, reply) {
        (false, false) => Kind::Req,
        (false, true) => Kind::Rep,
        (true, false) => Kind::ErrReq,
        (true, true) => Kind::ErrRep,
    })
}

impl Walker<'_, '_> {
    /// Whether a dropped packet is the probe's packet of this kind.
    fn is_kind(&self, d: &Drop, k: Kind) -> bool {
        kind_of(d, self.dest) == Some(k)
    }

    /// The first drop of the probe's `k` packet at `node` that means it was lost (not a copy).
    pub(super) fn kernel_drop(&self, node: usize, k: Kind) -> Option<&Drop> {
        self.drops.iter().find(|d| d.node == node && !d.is_copy() && self.is_kind(d, k))
    }

    /// The node where the kernel dropped the probe's `k` packet: `node` itself first, else any.
    pub(super) fn kernel_drop_node(&self, node: usize, k: Kind) -> Option<usize> {
        if self.kernel_drop(node, k).is_some() {
            return Some(node);
        }
        self.drops.iter().find(|d| !d.is_copy() && self.is_kind(d, k)).map(|d| d.node)
    }

    /// The kernel's `why` for a drop of the `k` packet at `node`, else `infer`'s. A firewall's
    /// `was dropped in HOOK (firewall: CHAINS)` stays beside the kernel's words.
    pub(super) fn kernel_why(&self, node: usize, k: Kind, infer: impl FnOnce(&Self) -> String) -> String {
        let Some(d) = self.kernel_drop(node, k) else { return infer(self) };
        let said = d.describe();
        if d.reason == "NETFILTER_DROP" {
            let fw = infer(self);
            if let Some(rest) = fw.strip_prefix("was dropped in ") {
                let (hook, chains) = rest.split_once(" (").map(|(h, c)| (h, c.trim_end_matches(')'))).unwrap_or((rest, ""));
                let chains = if chains.is_empty() { String::new() } else { format!(", {chains}") };
                return format!("{KERNEL}{said} (in {hook}{chains})");
            }
        }
        format!("{KERNEL}{said}")
    }
}
