//! Interfaces inside a node that the lab file declares (`taps`, `[[nodes.X.bridges]]`): a
//! persistent TAP device per tap (made with the TUN driver's own ioctls, as `openvpn --mktun`
//! and `ip tuntap add` do: rtnetlink cannot create one), so a daemon attaches to it with
//! `dev tap0` and leaves it in place when it stops; then each bridge (rtnetlink) with its ports.
//! Nothing here outlives the node: the kernel deletes a namespace's tun devices and bridges with
//! the namespace.

use super::{nl_err, NsHandle, Topology};
use crate::model::Lab;
use anyhow::{anyhow, bail, Result};
use futures::future::try_join_all;
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec};
use std::os::fd::AsRawFd;

// <linux/if_tun.h>: _IOW('T', 202/203/204/206, int); IFF_TAP, IFF_NO_PI.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Every port's STP path cost (the kernel's for a 10 Mb/s or unknown-speed link; STP is off, so
/// it only shows in `bridge link show`).
const PORT_COST: u32 = 100;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the union's first member).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The uid and gid a tap's `user=`/`group=` name (or number) on this machine.
fn owner(t: &crate::model::Tap) -> Result<(Option<u32>, Option<u32>)> {
    use nix::unistd::{Group, User};
    let uid = match &t.user {
        None => None,
        Some(u) => Some(match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => User::from_name(u).ok().flatten().map(|u| u.uid.as_raw()).ok_or_else(|| anyhow!("no user `{u}` on this machine"))?,
        }),
    };
    let gid = match &t.group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                Group::from_name(g).ok().flatten().map(|g| g.gid.as_raw()).ok_or_else(|| anyhow!("no group `{g}` on this machine"))?
            }
        }),
    };
    Ok((uid, gid))
}

/// A persistent TAP device `name` in the calling thread's network namespace, owned by `uid` /
/// `gid` if given (a process of that user or group attaches without CAP_NET_ADMIN).
fn make_tap(name: &str, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: both ioctls read a valid, initialised `struct ifreq` / int; the fd is open.
    unsafe {
        if libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &req as *const IfReq) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (req, id) in [(TUNSETOWNER, uid), (TUNSETGROUP, gid)] {
            if let Some(id) = id {
                if libc::ioctl(tun.as_raw_fd(), req as _, id as libc::c_ulong) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        if libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Topology {
    /// The nodes' taps (blocking ioctls, each on its node's thread), then their bridges with
    /// their ports (rtnetlink; links up later, with the addresses).
    pub(super) fn inside(&self, lab: &Lab) -> Result<()> {
        for (node, h) in lab.nodes.iter().zip(&self.nodes) {
            for t in &node.taps {
                let name = t.ep.ifname.clone();
                let (uid, gid) = owner(t).map_err(|e| anyhow!("node `{}`: tap `{name}`: {e}", node.name))?;
                h.ns.run(move || make_tap(&name, uid, gid))?
                    .map_err(|e| anyhow!("node `{}`: creating tap `{}` (/dev/net/tun): {e}", node.name, t.ep.ifname))?;
            }
        }
        self.rt.block_on(try_join_all(lab.nodes.iter().zip(&self.nodes).map(|(node, h)| bridges(node, h))))?;
        Ok(())
    }
}

async fn bridges(node: &crate::model::Node, h: &NsHandle) -> Result<()> {
    for b in &node.bridges {
        let name = &b.ep.ifname;
        h.nl.link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| anyhow!("node `{}`: creating bridge `{name}`: {}", node.name, nl_err(&e)))?;
        let br = h.index(name).await?;
        for p in &b.ports {
            let idx = h.index(p).await?;
            h.nl.link()
                .set(LinkUnspec::new_with_index(idx).controller(br).up().build())
                .execute()
                .await
                .map_err(|e| anyhow!("node `{}`: making `{p}` a port of bridge `{name}`: {}", node.name, nl_err(&e)))?;
            // A fixed path cost: the kernel derives it from the link speed, which a veth reports
            // as 10 Gb/s natively and not at all in user-mode-linux (cost 2 vs 100), so
            // `bridge link show` would differ between backends.
            h.nl.link()
                .set_port(LinkBridgePort::new(idx).cost(PORT_COST).build())
                .execute()
                .await
                .map_err(|e| anyhow!("node `{}`: path cost of `{p}` in bridge `{name}`: {}", node.name, nl_err(&e)))?;
        }
        if b.ports.is_empty() && b.ep.addrs.is_empty() {
            bail!("node `{}`: bridge `{name}` has neither ports nor addresses", node.name);
        }
    }
    Ok(())
}

/// Whether an interface has a carrier once the lab is built: a tap gets one only when a daemon
/// attaches to it, and so does a bridge whose ports are all taps. IPv6 cannot make such an
/// interface's addresses usable (no link-local address without a carrier), so the build does
/// not wait for them ([`Topology::wait_ipv6_ready`]).
pub(super) fn has_carrier_at_build(lab: &Lab, e: &crate::model::Endpoint) -> bool {
    let node = &lab.nodes[e.node];
    let tap = |name: &str| node.taps.iter().any(|t| t.ep.ifname == name);
    if tap(&e.ifname) {
        return false;
    }
    match node.bridges.iter().find(|b| b.ep.ifname == e.ifname) {
        Some(b) => b.ports.iter().any(|p| !tap(p)),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Taps (persistent, with addresses of both families) and bridges reach the kernel; the
    /// build does not wait for the IPv6 addresses of interfaces without a carrier.
    #[test]
    #[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
    fn taps_and_bridges_reach_the_kernel() {
        assert!(crate::env::is_root(), "building namespaces needs root: sudo -E cargo test");
        let src = "[lab]\ntitle='t'\n[nodes.a]\ntaps=['tap0 10.9.0.1/24 user=nobody 2001:db8:9::1/64', 'tap1 group=0']\n[[nodes.a.bridges]]\nname='br0'\nports=['eth0', 'tap1']\naddresses=['10.0.1.1/24', '2001:db8:1::1/64']\n[[nodes.a.bridges]]\nname='br1'\naddresses=['2001:db8:2::1/64']\n[nodes.b]\n[[links]]\na='a:eth0'\nb='b:eth0 10.0.1.2/24 2001:db8:1::2/64'\n[scenarios.s]\nsteps=[]\n";
        let dir = tempfile::tempdir().unwrap();
        let lab = crate::model::parse(&dir.path().join("lab.toml"), src).unwrap_or_else(|e| panic!("{e:?}"));
        let pid = crate::ns::PidNs::create().unwrap();
        let started = std::time::Instant::now();
        let topo = Topology::build(&lab).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "waited for carrier-less IPv6: {:?}", started.elapsed());
        let sh = |node: usize, args: &str| {
            let argv: Vec<String> = args.split(' ').map(String::from).collect();
            let out =
                crate::process::run_capture(&topo.nodes[node].ns, &pid, &argv, dir.path(), std::time::Duration::from_secs(10)).unwrap();
            assert!(out.success(), "{args}: {}", out.text);
            out.text
        };
        let tap0 = sh(0, "ip -d -o addr show dev tap0");
        assert!(tap0.contains("10.9.0.1/24") && tap0.contains("2001:db8:9::1/64"), "{tap0}");
        let link = sh(0, "ip -d -o link show dev tap0");
        assert!(link.contains("tun type tap") && link.contains("persist on") && link.contains("user nobody"), "{link}");
        assert!(sh(0, "ip -d -o link show dev tap1").contains("group root"));
        let ports = sh(0, "bridge link show");
        assert_eq!(ports.matches("cost 100").count(), 2, "{ports}");
        let ports = sh(0, "ip -o link show master br0");
        assert!(ports.contains(" eth0@") && ports.contains(" tap1:"), "{ports}");
        assert!(sh(0, "ip -o addr show dev br0").contains("10.0.1.1/24"));
        // Through the bridge: b reaches the bridge's address (its IPv6 one too: eth0 has a carrier).
        sh(1, "ping -c 1 -W 5 10.0.1.1");
        sh(1, "ping -c 1 -W 5 2001:db8:1::1");
    }
}
