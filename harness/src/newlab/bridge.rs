//! A TAP bridged server (`server-bridge GW MASK POOL_START POOL_END`, `dev tap0`): the lab
//! bridges the server's tap with a LAN of its own (`taps` and `[[nodes.server.bridges]]`), the
//! bridge holds GW, and a host on that LAN is reached by the client through the bridge.

use super::plan::nth;
use super::syntax::Config;
use crate::error::InputError;
use ipnet::Ipv4Net;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

/// The bridged LAN of a `server-bridge` server.
#[derive(Debug, Clone)]
pub(super) struct BridgePlan {
    /// The server's tap (`dev tap0`).
    pub(super) dev: String,
    /// The bridge's address (server-bridge's GW) and its network.
    pub(super) gw: Ipv4Addr,
    pub(super) net: Ipv4Net,
    /// A LAN host's address: outside the client pool, not GW.
    pub(super) host: Ipv4Addr,
}

/// `None` for a routed server; the plan for `server-bridge GW MASK START END`; a located error
/// for the forms the lab cannot build (no addresses: the office's DHCP server would give them).
pub(super) fn plan_bridge(conf: &Config, file: &Path) -> Result<Option<BridgePlan>, InputError> {
    let Some((_, args, line)) = conf.directives().find(|(name, _, _)| *name == "server-bridge") else { return Ok(None) };
    let err = |msg: String, hint: &str| InputError { file: file.to_path_buf(), line, col: 1, msg, hint: hint.into() };
    let text = format!("server-bridge{}", args.iter().map(|a| format!(" {a}")).collect::<String>());
    let addr = |i: usize| args.get(i).and_then(|a| a.parse::<Ipv4Addr>().ok());
    let (Some(gw), Some(mask), Some(start), Some(end)) = (addr(0), addr(1), addr(2), addr(3)) else {
        return Err(err(
            format!("`{text}`: vpnlab new builds `server-bridge GW MASK POOL_START POOL_END` only (the addresses come from the config)"),
            "write the lab by hand (LAB_FORMAT.md: `taps` and `[[nodes.server.bridges]]`), or give the four addresses",
        ));
    };
    let net = Ipv4Net::with_netmask(gw, mask).map_err(|_| err(format!("`{text}`: {mask} is not a netmask"), "fix the netmask"))?.trunc();
    let dev = conf.last("dev").and_then(|a| a.first().cloned()).unwrap_or_default();
    if !dev.starts_with("tap") || dev.len() == 3 {
        return Err(err(
            format!("`{text}` with `dev {dev}`: the lab bridges a TAP device of a fixed name"),
            "give the server `dev tap0` (a bridged server needs a named tap; the book's bridge-start script does too)",
        ));
    }
    let (lo, hi) = (u32::from(start), u32::from(end));
    let free = |a: &Ipv4Addr| *a != gw && !(lo..=hi).contains(&u32::from(*a));
    let host = (10..).map_while(|i| net.contains(&nth(&net, i)).then(|| nth(&net, i))).find(free);
    let host = host
        .or_else(|| net.hosts().find(free))
        .ok_or_else(|| err(format!("`{text}`: the pool and GW leave no address of {net} for a LAN host"), "shrink the client pool"))?;
    Ok(Some(BridgePlan { dev, gw, net, host }))
}

impl BridgePlan {
    /// The server node's tap and bridge (after its other keys); `port` is its LAN interface.
    pub(super) fn server_toml(&self, t: &mut String, port: &str) {
        let _ = writeln!(t, "taps   = [\"{}\"]   # server-bridge: the tap OpenVPN attaches to, bridged with {port}", self.dev);
        let _ = writeln!(t, "[[nodes.server.bridges]]");
        let _ = writeln!(t, "name      = \"br0\"");
        let _ = writeln!(t, "ports     = [\"{port}\", \"{}\"]", self.dev);
        let _ = writeln!(t, "addresses = [\"{}/{}\"]   # server-bridge's GW", self.gw, self.net.prefix_len());
    }

    /// The bridged LAN and its host.
    pub(super) fn lan_toml(&self, t: &mut String, port: &str) {
        let _ = writeln!(t, "[nodes.bridgehost]\n");
        let _ = writeln!(t, "[[lans]]                 # server-bridge {} {}", self.gw, self.net.netmask());
        let _ = writeln!(t, "name    = \"bridged\"");
        let _ = writeln!(t, "members = [\"server:{port}\", \"bridgehost:eth0 {}/{}\"]\n", self.host, self.net.prefix_len());
    }
}
