//! The validated model: [`Lab`] and what it holds (nodes, links, LANs, services, scenarios),
//! indices instead of names; the kernel features and programs a lab needs.

use super::route::{Route, Rule};
use super::step::{Action, Step};
use crate::pki::PkiSpec;
use ipnet::IpNet;
use regex::Regex;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------- validated model

/// An interface of a node with its addresses.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub node: usize,
    pub ifname: String,
    pub addrs: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct Link {
    pub a: Endpoint,
    pub b: Endpoint,
    pub mtu: Option<u32>,
    /// Its address space (`space = "home1"`): `None` is the lab's default space.
    pub space: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Lan {
    pub name: String,
    pub members: Vec<Endpoint>,
    /// Its address space, as for [`Link::space`].
    pub space: Option<String>,
}

/// A persistent TAP device inside a node (`taps = ["tap0 user=nobody 10.9.0.1/24"]`): its
/// addresses on `ep`; `user`/`group` (names or numbers) may attach to it without CAP_NET_ADMIN.
#[derive(Debug, Clone)]
pub struct Tap {
    pub ep: Endpoint,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// A Linux bridge inside a node (`[[nodes.X.bridges]]`): its own addresses on `ep`, and its
/// ports (interfaces of the same node: link/LAN ends or taps).
#[derive(Debug, Clone)]
pub struct Bridge {
    pub ep: Endpoint,
    pub ports: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Path relative to the lab folder (and to the node's directory).
    pub rel: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub sysctls: Vec<(String, String)>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub files: Vec<FileSpec>,
    pub modes: Vec<(PathBuf, u32)>,
    pub nft: Option<String>,
    pub setup: Vec<String>,
    /// Persistent TAP devices (`taps = ["tap0"]`), made before the services start.
    pub taps: Vec<Tap>,
    /// Bridges (`[[nodes.X.bridges]]`), made after the links and taps, before addresses.
    pub bridges: Vec<Bridge>,
    /// What `hostname` says in the node (every process of it has a UTS namespace of its own).
    pub hostname: String,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// Line and column of its `run` in the lab file (for errors about the daemon).
    pub loc: (usize, usize),
    /// The file of `loc` (the lab file, or a fragment it includes).
    pub loc_file: PathBuf,
    pub node: usize,
    pub argv: Vec<String>,
    pub ready: Option<Regex>,
    pub timeout: Duration,
    pub autostart: bool,
    pub may_exit: bool,
}

/// One `[[sanitize]]` rule, applied in the order written: a substitution (`re` -> `with`), or
/// with `delete` a rule that removes the command-output lines `re` matches (`drop_blank` is
/// `delete` with `^\s*$`); with `after`, only to the output of commands matching it.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    pub re: Regex,
    pub with: String,
    /// Deletes the lines `re` matches (command output only) instead of substituting.
    pub delete: bool,
    /// Applies only to the output of `show`/`sh` commands whose text matches this.
    pub after: Option<Regex>,
}

impl Sanitizer {
    /// A substitution that applies everywhere.
    pub fn replace(re: Regex, with: &str) -> Sanitizer {
        Sanitizer { re, with: with.to_string(), delete: false, after: None }
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub about: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelFeature {
    Ppp,
    Esp,
    /// nft's `inet` family (tables `inet ...`).
    NftInet,
    /// nft's `ip` family (tables `ip ...`).
    NftIpv4,
    /// The sysctl `net.ipv4.fib_multipath_hash_seed` (Linux 6.11+).
    MultipathHashSeed,
    /// The `netem` qdisc.
    Netem,
    /// iptables `-j NFQUEUE` with a netlink queue (the `impair` step).
    Nfqueue,
}

impl KernelFeature {
    pub const ALL: [KernelFeature; 7] = [
        KernelFeature::Ppp,
        KernelFeature::Esp,
        KernelFeature::NftInet,
        KernelFeature::NftIpv4,
        KernelFeature::MultipathHashSeed,
        KernelFeature::Netem,
        KernelFeature::Nfqueue,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KernelFeature::Ppp => "ppp",
            KernelFeature::Esp => "esp",
            KernelFeature::NftInet => "nft-inet",
            KernelFeature::NftIpv4 => "nft-ipv4",
            KernelFeature::MultipathHashSeed => "multipath-hash-seed",
            KernelFeature::Netem => "netem",
            KernelFeature::Nfqueue => "nfqueue",
        }
    }

    pub fn parse(name: &str) -> Option<KernelFeature> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// What it is, in a few words.
    pub fn about(self) -> &'static str {
        match self {
            KernelFeature::Ppp => "PPP (/dev/ppp)",
            KernelFeature::Esp => "kernel IPsec ESP (xfrm)",
            KernelFeature::NftInet => "nftables inet family",
            KernelFeature::NftIpv4 => "nftables ip family",
            KernelFeature::MultipathHashSeed => "sysctl net.ipv4.fib_multipath_hash_seed",
            KernelFeature::Netem => "netem qdisc",
            KernelFeature::Nfqueue => "iptables NFQUEUE",
        }
    }

    /// The kernel option (and module or package) that brings it.
    pub fn brings(self) -> &'static str {
        match self {
            KernelFeature::Ppp => "CONFIG_PPP and CONFIG_PPP_ASYNC (modules ppp_generic, ppp_async), or the user-mode-linux backend (apt install user-mode-linux kmod)",
            KernelFeature::Esp => "CONFIG_INET_ESP and CONFIG_XFRM_USER (modules esp4, xfrm_user), or the user-mode-linux backend (apt install user-mode-linux kmod)",
            KernelFeature::NftInet => "CONFIG_NF_TABLES_INET (Debian's user-mode-linux kernel is built without it: run natively on a stock distribution kernel)",
            KernelFeature::NftIpv4 => "CONFIG_NF_TABLES_IPV4 (Debian's user-mode-linux kernel is built without it: run natively on a stock distribution kernel)",
            KernelFeature::MultipathHashSeed => "Linux 6.11 or later (Debian 12 ships 6.1, Ubuntu 24.04 GA 6.8: use a backports/HWE kernel)",
            KernelFeature::Netem => "CONFIG_NET_SCH_NETEM (module sch_netem; on Ubuntu in linux-modules-extra-$(uname -r))",
            KernelFeature::Nfqueue => "CONFIG_NETFILTER_NETLINK_QUEUE and CONFIG_NETFILTER_XT_TARGET_NFQUEUE (modules nfnetlink_queue, xt_NFQUEUE)",
        }
    }

    /// The feature a `net.*` sysctl needs, for keys that Linux 5.15 lacks.
    pub fn of_sysctl(key: &str) -> Option<(KernelFeature, &'static str)> {
        match key {
            "net.ipv4.fib_multipath_hash_seed" => Some((KernelFeature::MultipathHashSeed, "6.11")),
            _ => None,
        }
    }
}

/// Where a lab writes a `net.*` sysctl (a node's `sysctl` table or a `sysctl` step).
#[derive(Debug, Clone)]
pub struct SysctlUse {
    pub key: String,
    pub line: usize,
    pub col: usize,
    /// The file of `line` (the lab file, or a fragment it includes).
    pub file: PathBuf,
}

/// A validated lab. Indices (`node`, `service`) point into `nodes` / `services`.
#[derive(Debug, Clone)]
pub struct Lab {
    /// `family/recipe`, from the folder's last two components.
    pub id: String,
    pub dir: PathBuf,
    pub file: PathBuf,
    /// The fragments `include`d (directly or not), in the order read: the files besides `file`
    /// the lab is made of (the UML guest must see their folders too).
    pub includes: Vec<PathBuf>,
    pub title: String,
    pub source: String,
    /// Kernel features declared in `kernel = [...]` (see [`Lab::kernel_needs`] for all).
    pub kernel: Vec<KernelFeature>,
    /// Every `net.*` sysctl the lab writes, with its place in the file.
    pub sysctl_uses: Vec<SysctlUse>,
    pub deadline: Duration,
    pub step_timeout: Duration,
    pub pki: Option<PkiSpec>,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    pub lans: Vec<Lan>,
    pub services: Vec<Service>,
    pub sanitizers: Vec<Sanitizer>,
    pub prelude: Vec<Step>,
    pub scenarios: Vec<Scenario>,
}

impl Lab {
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
    pub fn scenario(&self, name: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.name == name)
    }
    /// Every endpoint of the lab (links and LAN members, then the nodes' taps and bridges).
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.links
            .iter()
            .flat_map(|l| [&l.a, &l.b])
            .chain(self.lans.iter().flat_map(|l| l.members.iter()))
            .chain(self.nodes.iter().flat_map(|n| n.taps.iter().map(|t| &t.ep).chain(n.bridges.iter().map(|b| &b.ep))))
    }
    /// The node that owns an address statically, if exactly one does (an address reused in
    /// two address spaces has no single owner).
    pub fn owner_of(&self, addr: IpAddr) -> Option<usize> {
        let mut owners = self.endpoints().filter(|e| e.addrs.iter().any(|a| a.addr() == addr)).map(|e| e.node);
        let first = owners.next()?;
        owners.all(|n| n == first).then_some(first)
    }
    /// Every kernel feature the lab needs (for one scenario, or for any of them): the declared
    /// ones plus those its content shows: nft rulesets' table families, sysctls newer than
    /// Linux 5.15, `impair` steps (NFQUEUE), `netem` in commands.
    pub fn kernel_needs(&self, scenario: Option<&str>) -> Vec<KernelFeature> {
        let mut out = self.kernel.clone();
        for n in &self.nodes {
            if let Some(rules) = &n.nft {
                out.extend(nft_families(rules));
            }
            if n.setup.iter().any(|c| c.contains("netem")) {
                out.push(KernelFeature::Netem);
            }
        }
        out.extend(self.sysctl_uses.iter().filter_map(|u| KernelFeature::of_sysctl(&u.key)).map(|(f, _)| f));
        let steps: Vec<&Step> = match scenario {
            Some(name) => self.prelude.iter().chain(self.scenario(name).into_iter().flat_map(|s| s.steps.iter())).collect(),
            None => self.prelude.iter().chain(self.scenarios.iter().flat_map(|s| s.steps.iter())).collect(),
        };
        for st in steps {
            match &st.action {
                Action::Impair { spec: Some(_), .. } => out.push(KernelFeature::Nfqueue),
                Action::Sh { cmd, .. } | Action::Show { cmd, .. } if cmd.contains("netem") => out.push(KernelFeature::Netem),
                _ => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Programs the lab runs (services, setup commands, steps), for the requirement check.
    pub fn programs(&self) -> Vec<String> {
        let mut out: Vec<String> = self.services.iter().map(|s| s.argv[0].clone()).collect();
        for n in &self.nodes {
            if n.nft.is_some() {
                out.push("nft".into());
            }
            out.extend(n.setup.iter().filter_map(|c| first_program(c)));
        }
        for step in self.prelude.iter().chain(self.scenarios.iter().flat_map(|s| s.steps.iter())) {
            match &step.action {
                Action::Ping { .. } => out.push("ping".into()),
                Action::Impair { spec: Some((_, _, crate::impair::Family::Ipv6)), .. } => out.push("ip6tables".into()),
                Action::Impair { .. } => out.push("iptables".into()),
                Action::Capture { .. } => out.push("tcpdump".into()),
                Action::Trace { .. } => out.extend(["nft".to_string(), "ping".to_string()]),
                Action::Sh { cmd, .. } | Action::Show { cmd, .. } => out.extend(first_program(cmd)),
                _ => {}
            }
        }
        // A relative program is a file of the lab folder, checked when the lab is validated.
        out.retain(|p| !crate::local::is_local(p));
        out.sort();
        out.dedup();
        out
    }
}

/// The nft families of the tables an nft ruleset declares (those with a kernel feature).
pub(super) fn nft_families(rules: &str) -> Vec<KernelFeature> {
    let mut out = Vec::new();
    let words: Vec<&str> = rules.split(|c: char| c.is_whitespace() || c == '{' || c == ';').filter(|w| !w.is_empty()).collect();
    for w in words.windows(2) {
        if w[0] == "table" {
            match w[1] {
                "inet" => out.push(KernelFeature::NftInet),
                "ip" => out.push(KernelFeature::NftIpv4),
                _ => {}
            }
        }
    }
    out
}

/// The daemon a service command line really runs: `setpriv ... openvpn ...` -> `openvpn`
/// (the first word naming a known daemon, else the program itself).
pub fn daemon_program(argv: &[String]) -> String {
    const DAEMONS: [&str; 8] = ["openvpn", "pppd", "pluto", "ipsec", "sshd", "ssh", "tcpdump", "python3"];
    let base = |s: &str| Path::new(s).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    argv.iter().map(|a| base(a)).find(|b| DAEMONS.contains(&b.as_str())).unwrap_or_else(|| base(&argv[0]))
}

/// The program a shell command line starts with (skipping `VAR=x` assignments and `sudo`).
pub(super) fn first_program(cmd: &str) -> Option<String> {
    cmd.split_whitespace()
        .find(|w| !w.contains('=') && *w != "sudo" && *w != "exec")
        .filter(|w| w.chars().all(|c| c.is_ascii_alphanumeric() || "._-/+".contains(c)))
        .map(|w| w.to_string())
}
