//! The lab model: `lab.toml` parsed (serde + toml with spans) and validated into a [`Lab`] that
//! the rest of the harness trusts. Every problem becomes one [`InputError`] that names
//! `file:line:column` and the fix; nothing is built from an invalid lab.

pub mod counter;
mod ppp;
pub mod route;
pub mod step;

use crate::error::InputError;
use crate::pki::PkiSpec;
use indexmap::IndexMap;
use ipnet::IpNet;
use regex::Regex;
use route::{parse_route, parse_rule, Route, Rule};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use step::{parse_duration, parse_step, Action, Step};
use toml::Spanned;

// ---------------------------------------------------------------- raw (what serde reads)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    lab: RawMeta,
    #[serde(default)]
    pki: Option<PkiSpec>,
    #[serde(default)]
    nodes: IndexMap<String, Spanned<RawNode>>,
    #[serde(default)]
    links: Vec<Spanned<RawLink>>,
    #[serde(default)]
    lans: Vec<Spanned<RawLan>>,
    /// PPP-over-SSH links, expanded into services and setup commands (ppp.rs).
    #[serde(default)]
    ppp: Vec<Spanned<ppp::RawPpp>>,
    #[serde(default)]
    services: IndexMap<String, Spanned<RawService>>,
    #[serde(default)]
    sanitize: Vec<RawSanitizer>,
    #[serde(default)]
    scenarios: IndexMap<String, Spanned<RawScenario>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    title: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    kernel: Vec<Spanned<String>>,
    #[serde(default)]
    prelude: Vec<Spanned<String>>,
    /// Overall deadline for one scenario (default 60s).
    #[serde(default)]
    deadline: Option<Spanned<String>>,
    /// Deadline of a command step (`sh`, `show`) and of setup commands (default 10s).
    #[serde(default)]
    step_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    #[serde(default)]
    sysctl: IndexMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<String>>,
    #[serde(default)]
    modes: IndexMap<String, Spanned<String>>,
    #[serde(default)]
    nft: Option<String>,
    #[serde(default)]
    setup: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    a: Spanned<String>,
    b: Spanned<String>,
    #[serde(default)]
    mtu: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLan {
    name: Spanned<String>,
    members: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    node: Spanned<String>,
    run: Spanned<String>,
    #[serde(default)]
    ready: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default = "yes")]
    autostart: bool,
    /// The daemon is allowed to exit on its own (otherwise its death fails the lab).
    #[serde(default)]
    may_exit: bool,
    /// Reduced privileges: options for util-linux `setpriv` (e.g. `"--securebits
    /// +keep_caps_locked"` or `"--reuid nobody --regid nogroup --clear-groups"`); the daemon
    /// runs as `setpriv OPTIONS -- RUN`.
    #[serde(default)]
    setpriv: Option<Spanned<String>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSanitizer {
    re: Spanned<String>,
    with: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    about: String,
    steps: Vec<Spanned<String>>,
}

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
}

#[derive(Debug, Clone)]
pub struct Lan {
    pub name: String,
    pub members: Vec<Endpoint>,
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
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// Line and column of its `run` in the lab file (for errors about the daemon).
    pub loc: (usize, usize),
    pub node: usize,
    pub argv: Vec<String>,
    pub ready: Option<Regex>,
    pub timeout: Duration,
    pub autostart: bool,
    pub may_exit: bool,
}

#[derive(Debug, Clone)]
pub struct Sanitizer {
    pub re: Regex,
    pub with: String,
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
    /// nft's `inet` family (tables `inet ...`; the trace step's counting sets).
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
}

/// A validated lab. Indices (`node`, `service`) point into `nodes` / `services`.
#[derive(Debug, Clone)]
pub struct Lab {
    /// `family/recipe`, from the folder's last two components.
    pub id: String,
    pub dir: PathBuf,
    pub file: PathBuf,
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
    /// Every endpoint of the lab (links and LAN members).
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.links.iter().flat_map(|l| [&l.a, &l.b]).chain(self.lans.iter().flat_map(|l| l.members.iter()))
    }
    /// The node that owns an address statically, if any.
    pub fn owner_of(&self, addr: IpAddr) -> Option<usize> {
        self.endpoints().find(|e| e.addrs.iter().any(|a| a.addr() == addr)).map(|e| e.node)
    }
    /// Every kernel feature the lab needs (for one scenario, or for any of them): the declared
    /// ones plus those its content shows: nft rulesets' table families, sysctls newer than
    /// Linux 5.15, `trace` steps (nft inet sets), `impair` steps (NFQUEUE), `netem` in commands.
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
                Action::Trace { .. } => out.push(KernelFeature::NftInet),
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
                Action::Impair { .. } => out.push("iptables".into()),
                Action::Trace { .. } => out.extend(["nft".to_string(), "ping".to_string()]),
                Action::Sh { cmd, .. } | Action::Show { cmd, .. } => out.extend(first_program(cmd)),
                _ => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The nft families of the tables an nft ruleset declares (those with a kernel feature).
fn nft_families(rules: &str) -> Vec<KernelFeature> {
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
fn first_program(cmd: &str) -> Option<String> {
    cmd.split_whitespace()
        .find(|w| !w.contains('=') && *w != "sudo" && *w != "exec")
        .filter(|w| w.chars().all(|c| c.is_ascii_alphanumeric() || "._-/+".contains(c)))
        .map(|w| w.to_string())
}

/// Splits a command line into words, honouring '...' and "..." quoting and backslashes.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                have = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unclosed '".into()),
                    }
                }
            }
            '"' => {
                have = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.push(chars.next().ok_or("trailing \\")?),
                        Some(c) => cur.push(c),
                        None => return Err("unclosed \"".into()),
                    }
                }
            }
            '\\' => {
                have = true;
                cur.push(chars.next().ok_or("trailing \\")?);
            }
            c if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                have = true;
                cur.push(c);
            }
        }
    }
    if have {
        out.push(cur);
    }
    Ok(out)
}

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
    Validator { file, src, dir: file.parent().unwrap_or(Path::new(".")) }.lab(raw)
}

struct Validator<'a> {
    file: &'a Path,
    src: &'a str,
    dir: &'a Path,
}

struct NameTable<'a> {
    nodes: &'a [String],
    services: &'a [String],
}

impl step::Names for NameTable<'_> {
    fn node(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == name)
    }
    fn service(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|n| n == name)
    }
    fn node_names(&self) -> String {
        self.nodes.join(", ")
    }
    fn service_names(&self) -> String {
        if self.services.is_empty() {
            "none declared".into()
        } else {
            self.services.join(", ")
        }
    }
}

impl Validator<'_> {
    fn err(&self, offset: usize, msg: impl Into<String>, hint: impl Into<String>) -> InputError {
        InputError::at(self.file, self.src, offset, msg, hint)
    }

    /// Offset of the first character inside a spanned string (past the opening quote).
    fn inner(&self, s: &Spanned<String>) -> usize {
        let start = s.span().start;
        match self.src.as_bytes().get(start) {
            Some(b'"') | Some(b'\'') => {
                if self.src[start..].starts_with("\"\"\"") || self.src[start..].starts_with("'''") {
                    start + 3
                } else {
                    start + 1
                }
            }
            _ => start,
        }
    }

    /// The file offset of byte `off` of a spanned string's *decoded* value. Escapes (`\t`) and
    /// the newline TOML drops after `"""` make decoded and raw offsets differ; then the error
    /// points at the start of the string rather than somewhere wrong.
    fn at(&self, s: &Spanned<String>, off: usize) -> usize {
        let start = self.inner(s);
        let raw = self.src.get(start..).unwrap_or("");
        if raw.starts_with(s.get_ref().as_str()) {
            start + off
        } else {
            start
        }
    }

    /// Locates the `[table.key]` header (or `key =`) of a map entry, for errors about a key.
    fn key_offset(&self, table: &str, key: &str, fallback: usize) -> usize {
        for pat in [format!("[{table}.{key}]"), format!("[{table}.\"{key}\"]")] {
            if let Some(i) = self.src.find(&pat) {
                return i + table.len() + 2;
            }
        }
        fallback
    }

    fn lab(&self, mut raw: RawLab) -> Result<Lab, InputError> {
        ppp::expand(self, &mut raw)?;
        let node_names: Vec<String> = raw.nodes.keys().cloned().collect();
        for (name, node) in &raw.nodes {
            check_name(name).map_err(|m| self.err(self.key_offset("nodes", name, node.span().start), m, "use letters, digits and '-' (at most 15 characters)"))?;
        }
        if raw.nodes.is_empty() {
            return Err(self.err(0, "the lab has no nodes", "add at least one `[nodes.NAME]` table"));
        }
        let service_names: Vec<String> = raw.services.keys().cloned().collect();
        let names = NameTable { nodes: &node_names, services: &service_names };

        let mut kernel = Vec::new();
        for k in &raw.lab.kernel {
            kernel.push(match KernelFeature::parse(k.get_ref()) {
                Some(f) => f,
                None => {
                    let known: Vec<&str> = KernelFeature::ALL.iter().map(|f| f.name()).collect();
                    return Err(self.err(self.inner(k), format!("unknown kernel feature `{}`", k.get_ref()), format!("known features: {}", known.join(", "))));
                }
            });
        }
        let deadline = match &raw.lab.deadline {
            Some(d) => parse_duration(d.get_ref()).ok_or_else(|| self.err(self.inner(d), format!("`{}` is not a duration", d.get_ref()), "write it like 60s or 2m"))?,
            None => Duration::from_secs(60),
        };
        let step_timeout = match &raw.lab.step_timeout {
            Some(d) => parse_duration(d.get_ref()).ok_or_else(|| self.err(self.inner(d), format!("`{}` is not a duration", d.get_ref()), "write it like 10s or 500ms"))?,
            None => Duration::from_secs(10),
        };

        // Links and LANs: endpoints, interface names unique per node, addresses unique.
        let mut ifnames: HashMap<(usize, String), usize> = HashMap::new();
        let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
        let mut links = Vec::new();
        for l in &raw.links {
            let a = self.endpoint(&l.get_ref().a, &names, &mut ifnames, &mut addrs)?;
            let b = self.endpoint(&l.get_ref().b, &names, &mut ifnames, &mut addrs)?;
            if a.node == b.node {
                return Err(self.err(self.inner(&l.get_ref().b), "a link joins two different nodes", "use a second node, or a `[[lans]]` segment"));
            }
            links.push(Link { a, b, mtu: l.get_ref().mtu });
        }
        let mut lans = Vec::new();
        let mut lan_names = Vec::new();
        for l in &raw.lans {
            let name = l.get_ref().name.get_ref().clone();
            check_long_name(&name).map_err(|m| self.err(self.inner(&l.get_ref().name), m, "use letters, digits and '-'"))?;
            if lan_names.contains(&name) {
                return Err(self.err(self.inner(&l.get_ref().name), format!("a LAN named `{name}` is declared twice"), "give each [[lans]] its own name"));
            }
            lan_names.push(name.clone());
            let mut members = Vec::new();
            for m in &l.get_ref().members {
                members.push(self.endpoint(m, &names, &mut ifnames, &mut addrs)?);
            }
            lans.push(Lan { name, members });
        }

        // Nodes.
        let mut nodes = Vec::new();
        let mut sysctl_uses = Vec::new();
        for (idx, (name, node)) in raw.nodes.iter().enumerate() {
            let node = node.get_ref();
            let mut sysctls = Vec::new();
            for (k, v) in &node.sysctl {
                let at = v.span().start;
                step::check_sysctl_key(k).map_err(|m| self.err(at, m, "set only net.* keys of the node"))?;
                let value = match v.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => (*b as u8).to_string(),
                    _ => return Err(self.err(at, format!("sysctl `{k}` wants a string or a number"), "write it like \"1\"")),
                };
                let (line, col) = crate::error::line_col(self.src, at);
                sysctl_uses.push(SysctlUse { key: k.clone(), line, col });
                sysctls.push((k.clone(), value));
            }
            let has_if = |ifname: &str| ifnames.contains_key(&(idx, ifname.to_string()));
            let mut routes = Vec::new();
            for r in &node.routes {
                let route = parse_route(r.get_ref()).map_err(|e| self.err(self.at(r, e.offset), e.msg, "write it as for `ip route add`"))?;
                for dev in route.devs() {
                    if !has_if(dev) {
                        return Err(self.err(self.inner(r), format!("node `{name}` has no interface `{dev}`"), format!("interfaces of `{name}`: {}", self.ifaces_of(idx, &ifnames))));
                    }
                }
                routes.push(route);
            }
            let mut rules = Vec::new();
            for r in &node.rules {
                let rule = parse_rule(r.get_ref()).map_err(|e| self.err(self.at(r, e.offset), e.msg, "write it as for `ip rule add`"))?;
                rules.push(rule);
            }
            let mut files = Vec::new();
            for f in &node.files {
                let rel = PathBuf::from(f.get_ref().trim_end_matches('/'));
                if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    return Err(self.err(self.inner(f), "a file must be a path inside the lab folder", "put the file next to lab.toml and name it relative to it"));
                }
                if !self.dir.join(&rel).exists() {
                    return Err(self.err(
                        self.inner(f),
                        format!("file `{}` does not exist in {}", rel.display(), self.dir.display()),
                        "add the file to the lab folder or fix its name",
                    ));
                }
                files.push(FileSpec { rel });
            }
            let mut modes = Vec::new();
            for (p, m) in &node.modes {
                let mode = u32::from_str_radix(m.get_ref(), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| self.err(self.inner(m), format!("`{}` is not an octal mode", m.get_ref()), "write it like \"755\""))?;
                let path = PathBuf::from(p);
                if !files.iter().any(|f: &FileSpec| path.starts_with(&f.rel)) {
                    return Err(self.err(self.inner(m), format!("`{p}` is not one of the node's files"), "list it (or its folder) in `files`"));
                }
                modes.push((path, mode));
            }
            let setup = node.setup.iter().map(|s| s.get_ref().clone()).collect();
            nodes.push(Node { name: name.clone(), sysctls, routes, rules, files, modes, nft: node.nft.clone(), setup });
        }

        // Services.
        let mut services = Vec::new();
        for (name, svc) in &raw.services {
            check_long_name(name).map_err(|m| self.err(self.key_offset("services", name, svc.span().start), m, "use letters, digits and '-'"))?;
            let svc = svc.get_ref();
            let node = names.node_idx(svc.node.get_ref()).map_err(|m| self.err(self.inner(&svc.node), m.0, m.1))?;
            let mut argv = split_words(svc.run.get_ref()).map_err(|m| self.err(self.inner(&svc.run), m, "fix the quoting"))?;
            if argv.is_empty() {
                return Err(self.err(self.inner(&svc.run), "`run` is empty", "give the daemon's command line"));
            }
            if let Some(p) = &svc.setpriv {
                let opts = split_words(p.get_ref()).map_err(|m| self.err(self.inner(p), m, "fix the quoting"))?;
                if opts.is_empty() || opts.iter().any(|o| o == "--") {
                    return Err(self.err(self.inner(p), "`setpriv` wants setpriv's options (without `--`)", "e.g. setpriv = \"--securebits +keep_caps_locked\""));
                }
                argv = ["setpriv".to_string()].into_iter().chain(opts).chain(["--".to_string()]).chain(argv).collect();
            }
            let ready = match &svc.ready {
                Some(r) => Some(Regex::new(r.get_ref()).map_err(|e| self.err(self.inner(r), format!("bad regex: {e}"), "`ready` is a regex matched against each log line"))?),
                None => None,
            };
            let timeout = match &svc.timeout {
                Some(t) => parse_duration(t.get_ref()).ok_or_else(|| self.err(self.inner(t), format!("`{}` is not a duration", t.get_ref()), "write it like 5s or 500ms"))?,
                None => Duration::from_secs(10),
            };
            let loc = crate::error::line_col(self.src, self.inner(&svc.run));
            services.push(Service { name: name.clone(), loc, node, argv, ready, timeout, autostart: svc.autostart, may_exit: svc.may_exit });
        }

        let mut sanitizers = Vec::new();
        for s in &raw.sanitize {
            let re = Regex::new(s.re.get_ref()).map_err(|e| self.err(self.inner(&s.re), format!("bad regex: {e}"), "a sanitizer is a regex and its replacement"))?;
            sanitizers.push(Sanitizer { re, with: s.with.clone() });
        }

        let steps = |list: &[Spanned<String>]| -> Result<Vec<Step>, InputError> {
            list.iter()
                .map(|s| {
                    let at = self.inner(s);
                    let (when, rest) = step::split_condition(s.get_ref()).map_err(|e| self.err(self.at(s, e.offset), e.msg, "see `Version conditions` in LAB_FORMAT.md"))?;
                    let action = parse_step(&s.get_ref()[rest..], &names).map_err(|e| self.err(self.at(s, rest + e.offset), e.msg, "see the step table in LAB_FORMAT.md"))?;
                    self.check_step(&action, at, &nodes, &services, &ifnames)?;
                    Ok(Step { action, when, text: s.get_ref().clone(), offset: at })
                })
                .collect()
        };
        let prelude = steps(&raw.lab.prelude)?;
        let mut scenarios = Vec::new();
        for (name, sc) in &raw.scenarios {
            check_long_name(name).map_err(|m| self.err(self.key_offset("scenarios", name, sc.span().start), m, "use letters, digits and '-'"))?;
            let sc = sc.get_ref();
            let sc_steps = steps(&sc.steps)?;
            self.check_order(&services, prelude.iter().chain(sc_steps.iter()))?;
            scenarios.push(Scenario { name: name.clone(), about: sc.about.clone(), steps: sc_steps });
        }
        if scenarios.is_empty() {
            return Err(self.err(self.src.len(), "the lab has no scenarios", "add `[scenarios.NAME]` with `steps = [...]`"));
        }

        for st in prelude.iter().chain(scenarios.iter().flat_map(|s| s.steps.iter())) {
            if let Action::Sysctl { key, .. } = &st.action {
                let (line, col) = crate::error::line_col(self.src, st.offset);
                sysctl_uses.push(SysctlUse { key: key.clone(), line, col });
            }
        }
        let dir = self.dir.to_path_buf();
        Ok(Lab {
            id: lab_id(&std::fs::canonicalize(&dir).unwrap_or(dir.clone())),
            dir,
            file: self.file.to_path_buf(),
            title: raw.lab.title,
            source: raw.lab.source,
            kernel,
            sysctl_uses,
            deadline,
            step_timeout,
            pki: raw.pki,
            nodes,
            links,
            lans,
            services,
            sanitizers,
            prelude,
            scenarios,
        })
    }

    fn ifaces_of(&self, node: usize, ifnames: &HashMap<(usize, String), usize>) -> String {
        let mut v: Vec<&str> = ifnames.keys().filter(|(n, _)| *n == node).map(|(_, i)| i.as_str()).collect();
        v.sort();
        if v.is_empty() {
            "none (it is on no link or LAN)".into()
        } else {
            v.join(", ")
        }
    }

    /// Services must be running for the steps that need them: replays start/stop through the
    /// prelude and a scenario's steps and rejects an impossible order.
    fn check_order<'s>(&self, services: &[Service], steps: impl Iterator<Item = &'s Step>) -> Result<(), InputError> {
        use step::ServiceOp;
        let mut running: Vec<bool> = services.iter().map(|s| s.autostart).collect();
        let mut ever: Vec<bool> = running.clone();
        for st in steps {
            let (svc, needs_running, becomes) = match &st.action {
                Action::Service { op: ServiceOp::Start, service } => (*service, Some(false), Some(true)),
                Action::Service { op: ServiceOp::Stop, service } => (*service, Some(true), Some(false)),
                Action::Service { op: ServiceOp::Restart, service } => (*service, Some(true), Some(true)),
                Action::Log { service, .. } | Action::NoLog { service, .. } => (*service, None, None),
                _ => continue,
            };
            let name = &services[svc].name;
            match needs_running {
                Some(true) if !running[svc] => {
                    return Err(self.err(st.offset, format!("service `{name}` is not running at this step"), format!("start it first (`start {name}`), or drop `autostart = false`")))
                }
                Some(false) if running[svc] => {
                    return Err(self.err(st.offset, format!("service `{name}` is already running at this step"), format!("use `restart {name}`, or set `autostart = false` on it")))
                }
                None if !ever[svc] => {
                    return Err(self.err(st.offset, format!("service `{name}` has not been started before this step, so it has no log"), format!("add `start {name}` before it")))
                }
                _ => {}
            }
            if let Some(b) = becomes {
                running[svc] = b;
                ever[svc] |= b;
            }
        }
        Ok(())
    }

    /// Checks a step against the model beyond its syntax (interfaces of route steps exist).
    fn check_step(&self, action: &Action, at: usize, nodes: &[Node], _services: &[Service], ifnames: &HashMap<(usize, String), usize>) -> Result<(), InputError> {
        if let Action::Impair { node, ifname, .. } = action {
            if !ifnames.contains_key(&(*node, ifname.clone())) && !ifname.starts_with("tun") && !ifname.starts_with("ppp") {
                return Err(self.err(
                    at,
                    format!("node `{}` has no interface `{ifname}`", nodes[*node].name),
                    format!("interfaces of `{}`: {}", nodes[*node].name, self.ifaces_of(*node, ifnames)),
                ));
            }
        }
        if let Action::RouteAdd { node, route } | Action::RouteDel { node, route } = action {
            for dev in route.devs() {
                if !ifnames.contains_key(&(*node, dev.to_string())) && !dev.starts_with("tun") && !dev.starts_with("ppp") {
                    return Err(self.err(
                        at,
                        format!("node `{}` has no interface `{dev}`", nodes[*node].name),
                        format!("interfaces of `{}`: {}", nodes[*node].name, self.ifaces_of(*node, ifnames)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses `node:ifname addr/prefix ...`.
    fn endpoint(
        &self,
        s: &Spanned<String>,
        names: &NameTable,
        ifnames: &mut HashMap<(usize, String), usize>,
        addrs: &mut HashMap<IpAddr, usize>,
    ) -> Result<Endpoint, InputError> {
        let at = self.inner(s);
        let text = s.get_ref();
        let mut words = text.split_whitespace();
        let head = words.next().ok_or_else(|| self.err(at, "empty endpoint", "write it as \"node:ifname 10.0.0.1/24\""))?;
        let (node_name, ifname) = head.split_once(':').ok_or_else(|| self.err(at, format!("`{head}` is not NODE:IFNAME"), "write it as \"node:ifname 10.0.0.1/24\""))?;
        let node = names.node_idx(node_name).map_err(|m| self.err(at, m.0, m.1))?;
        if ifname.is_empty() || ifname.len() > 15 || !ifname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(self.err(self.at(s, node_name.len() + 1), format!("`{ifname}` is not a valid interface name"), "use at most 15 letters, digits, '-', '_' or '.'"));
        }
        if ifname == "lo" {
            return Err(self.err(self.at(s, node_name.len() + 1), "`lo` is the node's loopback", "choose another interface name"));
        }
        if ifnames.insert((node, ifname.to_string()), at).is_some() {
            return Err(self.err(at, format!("node `{node_name}` already has an interface `{ifname}`"), "give each interface of a node its own name"));
        }
        let mut out = Vec::new();
        let mut pos = at + head.len();
        for w in words {
            let off = text[pos - at..].find(w).map(|i| pos + i).unwrap_or(pos);
            pos = off + w.len();
            let net: IpNet = w.parse().map_err(|_| self.err(self.at(s, off - at), format!("`{w}` is not an address with a prefix length (CIDR)"), "write it like 10.198.0.10/16"))?;
            if net.addr() == net.network() && net.prefix_len() < net.max_prefix_len() - 1 {
                return Err(self.err(self.at(s, off - at), format!("`{w}` is the network address of its subnet, not a host address"), "pick a host address inside the subnet"));
            }
            if let Some(prev) = addrs.insert(net.addr(), self.at(s, off - at)) {
                let (line, col) = crate::error::line_col(self.src, prev);
                return Err(self.err(self.at(s, off - at), format!("address {} is already used at line {line}, column {col}", net.addr()), "give every interface its own address"));
            }
            out.push(net);
        }
        Ok(Endpoint { node, ifname: ifname.to_string(), addrs: out })
    }
}

impl NameTable<'_> {
    fn node_idx(&self, name: &str) -> Result<usize, (String, String)> {
        self.nodes
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| (format!("unknown node `{name}`"), format!("declared nodes: {}; add `[nodes.{name}]` or fix the name", self.nodes.join(", "))))
    }
}

/// Node names become interface-name-sized labels; others (services, scenarios, LANs) may be longer.
fn check_name(name: &str) -> Result<(), String> {
    check_name_len(name, 15)
}

fn check_long_name(name: &str) -> Result<(), String> {
    check_name_len(name, 64)
}

fn check_name_len(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || name.starts_with('-') {
        return Err(format!("`{name}` is not a valid name (letters, digits, '-', '_'; at most {max} characters)"));
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"[lab]
title = "t"

[nodes.a]
[nodes.b]
routes = ["default via 10.0.0.1"]

[[links]]
a = "a:eth0 10.0.0.1/24"
b = "b:eth0 10.0.0.2/24"

[services.srv]
node = "a"
run = "openvpn --config x.conf"
ready = "Initialization Sequence Completed"

[scenarios.s]
steps = ["b: ping 10.0.0.1", "log srv /Initialization/"]
"#;

    fn lab_err(src: &str) -> InputError {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lab.toml");
        parse(&file, src).unwrap_err()
    }

    /// (line, column) of the first occurrence of `needle` in `src`.
    fn pos(src: &str, needle: &str) -> (usize, usize) {
        crate::error::line_col(src, src.find(needle).unwrap_or_else(|| panic!("{needle} not in src")))
    }

    #[test]
    fn kernel_needs_declared_and_derived() {
        let dir = tempfile::tempdir().unwrap();
        let src = BASE
            .replace("title = \"t\"", "title = \"t\"\nkernel = [\"netem\"]")
            .replace("[nodes.a]\n", "[nodes.a]\nnft = \"table inet f { chain c { type filter hook forward priority 0; } }\"\nsysctl = { \"net.ipv4.fib_multipath_hash_seed\" = \"1\" }\n")
            .replace("[scenarios.s]", "[scenarios.t]\nsteps = [\"b: trace 10.0.0.1\", \"a: impair eth0 drop every 2\"]\n[scenarios.s]");
        let lab = parse(&dir.path().join("lab.toml"), &src).unwrap();
        use KernelFeature::*;
        assert_eq!(lab.kernel_needs(Some("s")), [NftInet, MultipathHashSeed, Netem]);
        assert_eq!(lab.kernel_needs(Some("t")), [NftInet, MultipathHashSeed, Netem, Nfqueue]);
        assert_eq!(lab.kernel_needs(None), [NftInet, MultipathHashSeed, Netem, Nfqueue]);
        assert_eq!(lab.sysctl_uses.len(), 1);
        assert_eq!((lab.sysctl_uses[0].line, lab.sysctl_uses[0].key.as_str()), (7, "net.ipv4.fib_multipath_hash_seed"));
        assert_eq!(nft_families("table ip nat {\n chain p { }\n}\ntable ip6 x {}"), [NftIpv4]);
        let e = lab_err(&BASE.replace("title = \"t\"", "title = \"t\"\nkernel = [\"nft\"]"));
        assert!(e.msg.contains("unknown kernel feature `nft`") && e.hint.contains("nft-inet, nft-ipv4"), "{e:?}");
    }

    #[test]
    fn base_lab_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let lab = parse(&dir.path().join("lab.toml"), BASE).unwrap();
        assert_eq!(lab.nodes.len(), 2);
        assert_eq!(lab.services[0].argv, ["openvpn", "--config", "x.conf"]);
        assert_eq!(lab.owner_of("10.0.0.2".parse().unwrap()), Some(1));
        assert_eq!(lab.programs(), ["openvpn", "ping"]);
    }

    #[test]
    fn nodes_and_services_keep_document_order() {
        let src = BASE.replace("[nodes.a]\n[nodes.b]", "[nodes.z]\n[nodes.b]\n[nodes.a]");
        let dir = tempfile::tempdir().unwrap();
        let lab = parse(&dir.path().join("lab.toml"), &src).unwrap();
        let names: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["z", "b", "a"]);
    }

    #[test]
    fn toml_syntax_error_is_located() {
        let src = BASE.replace("title = \"t\"", "title = \"t");
        let e = lab_err(&src);
        assert_eq!(e.line, 2, "{e}");
        assert!(e.to_string().contains("lab.toml:2:"), "{e}");
    }

    #[test]
    fn unknown_key_is_located_with_the_fix() {
        let src = BASE.replace("ready =", "redy =");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "redy"), "{e}");
        assert!(e.msg.contains("unknown field `redy`"), "{e}");
        assert!(e.hint.contains("LAB_FORMAT.md"), "{e}");
    }

    #[test]
    fn unknown_node_in_a_link() {
        let src = BASE.replace("b = \"b:eth0", "b = \"c:eth0");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "c:eth0"), "{e}");
        assert!(e.msg.contains("unknown node `c`") && e.hint.contains("a, b"), "{e}");
    }

    #[test]
    fn bad_cidr() {
        let src = BASE.replace("10.0.0.2/24", "10.0.0.300/24");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "10.0.0.300/24"), "{e}");
        assert!(e.msg.contains("CIDR"), "{e}");
        let src = BASE.replace("10.0.0.2/24", "10.0.0.2");
        assert!(lab_err(&src).msg.contains("prefix length"));
    }

    #[test]
    fn duplicate_address_names_both_places() {
        let src = BASE.replace("10.0.0.2/24", "10.0.0.1/24");
        let e = lab_err(&src);
        assert_eq!(e.line, 10, "{e}");
        assert!(e.msg.contains("already used at line 9"), "{e}");
    }

    #[test]
    fn missing_file() {
        let src = BASE.replace("[nodes.a]", "[nodes.a]\nfiles = [\"server.conf\"]");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "server.conf"), "{e}");
        assert!(e.msg.contains("does not exist"), "{e}");
    }

    #[test]
    fn service_on_unknown_node() {
        let src = BASE.replace("node = \"a\"", "node = \"x\"");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "x\"\nrun"), "{e}");
        assert!(e.msg.contains("unknown node `x`"), "{e}");
    }

    #[test]
    fn step_naming_a_missing_service_or_node() {
        let src = BASE.replace("log srv", "log svr");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "svr"), "{e}");
        assert!(e.msg.contains("unknown service `svr`") && e.msg.contains("srv"), "{e}");
        let src = BASE.replace("\"b: ping", "\"q: ping");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "q: ping"), "{e}");
    }

    #[test]
    fn route_through_an_unknown_interface() {
        let src = BASE.replace("default via 10.0.0.1", "default via 10.0.0.1 dev eth9");
        let e = lab_err(&src);
        assert!(e.msg.contains("no interface `eth9`") && e.hint.contains("eth0"), "{e}");
        let src = BASE.replace("default via 10.0.0.1", "default via 10.0.0.x");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "10.0.0.x"), "{e}");
    }

    #[test]
    fn bad_durations_regexes_and_sysctls() {
        assert!(lab_err(&BASE.replace("ready = \"Initialization Sequence Completed\"", "ready = \"(\"")).msg.contains("bad regex"));
        assert!(lab_err(&BASE.replace("[nodes.a]", "[nodes.a]\nsysctl = { \"kernel.panic\" = \"1\" }")).msg.contains("host"));
        assert!(lab_err(&BASE.replace("ready = ", "timeout = \"soon\"\nready = ")).msg.contains("duration"));
    }

    #[test]
    fn duplicate_interface_and_self_link() {
        let src = BASE.replace("b = \"b:eth0 10.0.0.2/24\"", "b = \"a:eth0 10.0.0.2/24\"");
        let e = lab_err(&src);
        assert!(e.msg.contains("already has an interface `eth0`"), "{e}");
    }

    #[test]
    fn no_scenarios_or_nodes() {
        assert!(lab_err("[lab]\ntitle='t'\n[nodes.a]\n").msg.contains("no scenarios"));
        assert!(lab_err("[lab]\ntitle='t'\n").msg.contains("no nodes"));
    }

    #[test]
    fn impossible_service_order_is_rejected() {
        let src = BASE.replace("steps = [\"b: ping 10.0.0.1\", \"log srv /Initialization/\"]", "steps = [\"stop srv\", \"restart srv\"]");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "restart srv"), "{e}");
        assert!(e.msg.contains("not running"), "{e}");
        let src = BASE.replace("steps = [\"b: ping 10.0.0.1\", \"log srv /Initialization/\"]", "steps = [\"start srv\"]");
        assert!(lab_err(&src).msg.contains("already running"));
        let src = BASE.replace("ready = \"Init", "autostart = false\nready = \"Init");
        let e = lab_err(&src);
        assert!(e.msg.contains("has not been started"), "{e}");
        let ok = src.replace("steps = [\"b: ping", "steps = [\"start srv\", \"b: ping");
        let dir = tempfile::tempdir().unwrap();
        assert!(parse(&dir.path().join("lab.toml"), &ok).is_ok());
    }

    #[test]
    fn daemon_program_skips_wrappers() {
        let v = |s: &str| split_words(s).unwrap();
        assert_eq!(daemon_program(&v("openvpn --config x")), "openvpn");
        assert_eq!(daemon_program(&v("setpriv --securebits +keep_caps_locked -- /usr/sbin/openvpn --config x")), "openvpn");
        assert_eq!(daemon_program(&v("setpriv --securebits +keep_caps_locked openvpn --config x")), "openvpn");
        assert_eq!(daemon_program(&v("env A=1 pluto --nofork")), "pluto");
    }

    #[test]
    fn split_words_quotes() {
        assert_eq!(split_words(r#"a 'b c' "d \" e" f\ g"#).unwrap(), ["a", "b c", "d \" e", "f g"]);
        assert!(split_words("a 'b").is_err());
    }
}
