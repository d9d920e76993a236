//! The drop locator: the kernel's own account of every packet it frees as dropped inside one
//! lab's network namespaces, with where (node, interface, function) and why (the drop reason).
//!
//! `drops.bpf.c` (compiled by `build.rs` with clang) is a `tracepoint/skb/kfree_skb` program:
//! it keeps a drop only if the network namespace of the skb's device (else of its socket) is in
//! its `netns` map, which [`Watch::start`] fills with the lab's namespaces, and sends namespace,
//! ifindex, reason, the freeing code's address and the first 128 bytes from the IP header on
//! through a ring buffer. Each lab loads its own copy (its own map and ring buffer), so labs
//! running at the same time, in one process (`-j 2`) or in several, never see each other's
//! drops. Userspace names the numbers with what the running kernel says ([`names`]): the reason
//! from the tracepoint's format file, the function from `/proc/kallsyms`, the node from the
//! namespace, the interface from the ifindex inside that namespace.
//!
//! Userspace is aya (pure Rust: it parses the object, applies the CO-RE relocations against
//! `/sys/kernel/btf/vmlinux` and loads): libbpf-rs would build libbpf and link libelf and zlib
//! into vpnlab, and libbpf-cargo would do so a second time for the build script, on a 2-core
//! machine; with aya the build needs only clang and libbpf's headers (ci/setup installs both).
//!
//! Whether this kernel can (BTF, BPF, the tracepoint, a successful load and attach) is decided
//! once per process ([`available`]); where it cannot (the user-mode-linux guest has no BTF or
//! tracing), the trace infers drops as before and negative checks wait out their silence.

use crate::ns::NetNs;
use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{HashMap as BpfHash, MapData, RingBuf};
use aya::programs::TracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod names;
pub mod packet;

pub use packet::{Packet, L4};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/drops.bpf.o"));

/// One packet the kernel dropped inside the lab.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drop {
    /// The node (index into the namespaces given to [`Watch::start`]).
    pub node: usize,
    /// The skb's interface index inside the node (its input device on the way in, output on
    /// the way out); 0 when it had none (a socket's packet).
    pub ifindex: u32,
    /// Its name, once [`name_devs`] asked the node (empty before, and without an interface).
    pub dev: String,
    /// The node's name in the lab, once the runner named it (empty before).
    pub at: String,
    /// The kernel function that freed it (`ip_error`), without compiler suffixes.
    pub function: String,
    /// The kernel's drop reason without its prefix (`IP_INNOROUTES`).
    pub reason: String,
    #[serde(skip)]
    pub packet: Option<Packet>,
}

impl Drop {
    /// `eth0, ip_error, IP_INNOROUTES` (what the trace and the facts say).
    pub fn describe(&self) -> String {
        let dev = if self.dev.is_empty() { String::new() } else { format!("{}, ", self.dev) };
        format!("{dev}{}, {}", self.function, self.reason)
    }

    /// Drops that say nothing about the packet's fate: copies a raw or packet socket refused
    /// (every ICMP packet is offered to every raw ICMP socket of the node: ping's own socket
    /// filters out the others' replies, and the original goes on), and ICMP that reached its
    /// node, where the kernel's ping-socket layer frees it for want of a ping socket
    /// (`ping_rcv`, NO_SOCKET) after a raw socket (iputils ping as root) took its copy.
    pub fn is_copy(&self) -> bool {
        let icmp = self.packet.as_ref().is_some_and(|p| matches!(p.l4, L4::Echo { reply: true, .. } | L4::IcmpError { .. }));
        matches!(self.reason.as_str(), "SOCKET_FILTER" | "SOCKET_RCVBUFF" | "PACKET_SOCK_ERROR") || icmp && self.reason == "NO_SOCKET"
    }
}

/// The record `drops.bpf.c` sends (`struct event`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Raw {
    location: u64,
    netns: u32,
    ifindex: u32,
    reason: u32,
    protocol: u16,
    captured: u16,
    head: [u8; 128],
}

fn btf() -> Result<&'static Btf> {
    static B: OnceLock<Result<Btf, String>> = OnceLock::new();
    B.get_or_init(|| Btf::from_sys_fs().map_err(|e| format!("reading /sys/kernel/btf/vmlinux: {e}"))).as_ref().map_err(|e| anyhow!("{e}"))
}

/// Whether the running kernel gives drop events (decided once per process by loading and
/// attaching the program for no namespace); `Err` says why not.
pub fn available() -> Result<(), String> {
    static A: OnceLock<Result<(), String>> = OnceLock::new();
    A.get_or_init(|| {
        names::reasons().map_err(|e| format!("{e:#}"))?;
        names::symbols().map_err(|e| format!("{e:#}"))?;
        Watch::load(&[]).map(|_| ()).map_err(|e| format!("{e:#}"))
    })
    .clone()
}

/// The drop events of one lab, from [`Watch::start`] until it is dropped (which detaches and
/// unloads the program).
pub struct Watch {
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    /// (namespace inode, node name) by node index.
    nodes: Vec<(u32, String)>,
    /// Every drop read so far, in order.
    seen: Vec<Drop>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("nodes", &self.nodes).field("seen", &self.seen.len()).finish()
    }
}

/// A position in a watch's events ([`Watch::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(usize);

impl Mark {
    /// Where the watch started.
    pub const START: Mark = Mark(0);
}

/// The inode number of a network namespace (what the kernel's `net->ns.inum` holds).
pub fn inum(ns: &NetNs) -> Result<u32> {
    let st = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(ns.raw_fd()) })
        .with_context(|| format!("stat of node `{}`'s network namespace", ns.name))?;
    u32::try_from(st.st_ino).context("namespace inode beyond 32 bits")
}

impl Watch {
    /// Starts watching drops in these namespaces (a lab's nodes, in its node order).
    pub fn start(spaces: &[&NetNs]) -> Result<Watch> {
        available().map_err(|e| anyhow!("the kernel gives no drop events here: {e}"))?;
        let nodes: Vec<(u32, String)> = spaces.iter().map(|ns| Ok((inum(ns)?, ns.name.clone()))).collect::<Result<_>>()?;
        let inums: Vec<u32> = nodes.iter().map(|n| n.0).collect();
        let (ebpf, ring) = Self::load(&inums)?;
        Ok(Watch { _ebpf: ebpf, ring, nodes, seen: Vec::new() })
    }

    fn load(inums: &[u32]) -> Result<(Ebpf, RingBuf<MapData>)> {
        let mut ebpf = EbpfLoader::new().btf(Some(btf()?)).load(OBJECT).context("loading the drop locator (eBPF)")?;
        let mut map: BpfHash<_, u32, u8> = BpfHash::try_from(ebpf.map_mut("netns").context("no netns map")?)?;
        for i in inums {
            map.insert(i, 1, 0).context("filling the drop locator's namespace map")?;
        }
        let ring = RingBuf::try_from(ebpf.take_map("events").context("no events map")?)?;
        let prog: &mut TracePoint = ebpf.program_mut("kfree_skb").context("no kfree_skb program")?.try_into()?;
        prog.load().context("loading the kfree_skb program (verifier)")?;
        prog.attach("skb", "kfree_skb").context("attaching to the skb:kfree_skb tracepoint")?;
        Ok((ebpf, ring))
    }

    /// The position after everything read so far (reads what is pending first).
    pub fn mark(&mut self) -> Mark {
        self.read();
        Mark(self.seen.len())
    }

    /// The drops read since `from` (reads what is pending first).
    pub fn since(&mut self, from: Mark) -> &[Drop] {
        self.read();
        &self.seen[from.0.min(self.seen.len())..]
    }

    /// Waits until `decided` says yes about the drops since `from`, or `slice` passes; what
    /// `decided` returned last.
    pub fn wait<T>(&mut self, from: Mark, slice: Duration, mut decided: impl FnMut(&[Drop]) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + slice;
        loop {
            self.read();
            if let Some(v) = decided(&self.seen[from.0.min(self.seen.len())..]) {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let fd = self.ring.as_raw_fd();
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let mut p = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX));
        }
    }

    fn read(&mut self) {
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<Raw>() {
                continue;
            }
            // SAFETY: Raw is plain old data of the size checked above; read_unaligned copies it.
            let raw: Raw = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Raw) };
            drop(item);
            if let Some(d) = decode(&self.nodes, &raw) {
                self.seen.push(d);
            }
        }
    }
}

/// A record as a [`Drop`] of one of `nodes` (by namespace inode), with the kernel's names.
fn decode(nodes: &[(u32, String)], raw: &Raw) -> Option<Drop> {
    let node = nodes.iter().position(|(i, _)| *i == raw.netns)?;
    let reason = names::reasons().ok().and_then(|r| r.get(&raw.reason).cloned()).unwrap_or_else(|| format!("reason {}", raw.reason));
    let function = names::symbols().ok().and_then(|s| s.function(raw.location).map(str::to_string)).unwrap_or_else(|| "?".into());
    let head = &raw.head[..usize::from(raw.captured).min(raw.head.len())];
    Some(Drop { node, ifindex: raw.ifindex, dev: String::new(), at: String::new(), function, reason, packet: Packet::parse(head) })
}

/// Names the interfaces of `drops` (their ifindex inside their node: `if_indextoname` on the
/// node's own thread); a vanished interface is shown by its index.
pub fn name_devs(drops: &mut [Drop], spaces: &[&NetNs]) {
    for d in drops.iter_mut().filter(|d| d.ifindex != 0 && d.dev.is_empty()) {
        let idx = d.ifindex;
        let named = spaces.get(d.node).and_then(|ns| ns.run(move || nix::net::if_::if_indextoname(idx)).ok()?.ok());
        d.dev = named.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("ifindex {idx}"));
    }
}

/// Fails unless `available()`: for tests that need the locator.
pub fn require() -> Result<()> {
    if let Err(e) = available() {
        bail!("no drop events on this kernel: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
