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
use rtnetlink::{LinkBridge, LinkUnspec};
use std::os::fd::AsRawFd;

// <linux/if_tun.h>: _IOW('T', 202, int) and _IOW('T', 203, int); IFF_TAP, IFF_NO_PI.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the union's first member).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A persistent TAP device `name` in the calling thread's network namespace.
fn make_tap(name: &str) -> std::io::Result<()> {
    let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: both ioctls read a valid, initialised `struct ifreq` / int; the fd is open.
    unsafe {
        if libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &req as *const IfReq) < 0 {
            return Err(std::io::Error::last_os_error());
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
                let name = t.ifname.clone();
                h.ns.run(move || make_tap(&name))?
                    .map_err(|e| anyhow!("node `{}`: creating tap `{}` (/dev/net/tun): {e}", node.name, t.ifname))?;
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
        }
        if b.ports.is_empty() && b.ep.addrs.is_empty() {
            bail!("node `{}`: bridge `{name}` has neither ports nor addresses", node.name);
        }
    }
    Ok(())
}
