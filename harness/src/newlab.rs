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

use crate::error::{EnvError, InputError};
use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

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

// ====================================================================== config syntax

/// One element of an OpenVPN config file, in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A blank or comment-only line (kept verbatim).
    Text { line: usize, raw: String },
    /// A directive: `name args...` (a leading `--` is dropped from the name, as OpenVPN does).
    /// `conn` is the index of the `<connection>` block it is in.
    Directive { line: usize, raw: String, name: String, args: Vec<String>, conn: Option<usize> },
    /// An inline file: `<tag>` line, body, `</tag>` line (`raw` holds all of them).
    Inline { line: usize, end: usize, raw: String, tag: String, body: String, conn: Option<usize> },
    /// A `<connection>` (start) or `</connection>` line.
    Connection { line: usize, raw: String, start: bool, conn: usize },
}

/// A parsed config: its items in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub items: Vec<Item>,
}

/// A config syntax error: 1-based line and message.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: usize,
    pub msg: String,
}

impl Config {
    /// Every directive (name, args, line), in order, including those in `<connection>` blocks.
    pub fn directives(&self) -> impl Iterator<Item = (&str, &[String], usize)> {
        self.items.iter().filter_map(|i| match i {
            Item::Directive { name, args, line, .. } => Some((name.as_str(), args.as_slice(), *line)),
            _ => None,
        })
    }
    /// Arguments of every occurrence of a directive.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [String]> + 'a {
        self.directives().filter(move |(n, _, _)| *n == name).map(|(_, a, _)| a)
    }
    /// The first occurrence of a directive.
    pub fn first(&self, name: &str) -> Option<&[String]> {
        self.directives().find(|(n, _, _)| *n == name).map(|(_, a, _)| a)
    }
    /// The last occurrence (OpenVPN: a later single-valued option overrides an earlier one).
    pub fn last(&self, name: &str) -> Option<&[String]> {
        self.directives().filter(|(n, _, _)| *n == name).last().map(|(_, a, _)| a)
    }
    /// The body of an inline block.
    pub fn inline(&self, tag: &str) -> Option<&str> {
        self.items.iter().find_map(|i| match i {
            Item::Inline { tag: t, body, .. } if t == tag => Some(body.as_str()),
            _ => None,
        })
    }
    /// Whether the config sets `name`, as a directive or as an inline block.
    pub fn has(&self, name: &str) -> bool {
        self.first(name).is_some() || self.inline(name).is_some()
    }
}

/// Splits one config line into words the way OpenVPN does: whitespace separates words; a word
/// starting with `"` runs to the next unescaped `"` (backslash escapes inside), one starting with
/// `'` to the next `'` (no escapes); outside quotes a backslash makes the next character literal;
/// a word starting with `#` or `;` starts a comment.
pub fn split_line(line: &str) -> Result<Vec<String>, String> {
    #[derive(PartialEq)]
    enum St {
        Between,
        Word,
        Double,
        Single,
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut st = St::Between;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match st {
            St::Between => {
                if c.is_whitespace() {
                    continue;
                }
                match c {
                    '#' | ';' => break,
                    '"' => st = St::Double,
                    '\'' => st = St::Single,
                    '\\' => {
                        cur.push(chars.next().unwrap_or('\\'));
                        st = St::Word;
                    }
                    c => {
                        cur.push(c);
                        st = St::Word;
                    }
                }
            }
            St::Word => match c {
                c if c.is_whitespace() => {
                    out.push(std::mem::take(&mut cur));
                    st = St::Between;
                }
                '\\' => cur.push(chars.next().unwrap_or('\\')),
                c => cur.push(c),
            },
            St::Double => match c {
                '"' => {
                    out.push(std::mem::take(&mut cur));
                    st = St::Between;
                }
                '\\' => cur.push(chars.next().ok_or("a backslash ends the line inside \"...\"")?),
                c => cur.push(c),
            },
            St::Single => match c {
                '\'' => {
                    out.push(std::mem::take(&mut cur));
                    st = St::Between;
                }
                c => cur.push(c),
            },
        }
    }
    match st {
        St::Word => out.push(cur),
        St::Double => return Err("no closing quotation (\")".into()),
        St::Single => return Err("no closing quotation (')".into()),
        St::Between => {}
    }
    Ok(out)
}

/// `<tag>` alone on a line -> `tag`.
fn open_tag(t: &str) -> Option<&str> {
    let tag = t.strip_prefix('<')?.strip_suffix('>')?;
    (!tag.is_empty() && !tag.starts_with('/') && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')).then_some(tag)
}

/// Parses an OpenVPN config file.
pub fn parse_config(src: &str) -> Result<Config, SyntaxError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let lines: Vec<&str> = src.lines().collect();
    let mut items = Vec::new();
    let mut conn: Option<(usize, usize)> = None; // (index, opening line)
    let mut nconn = 0;
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let lno = i + 1;
        let t = raw.trim();
        if let Some(tag) = open_tag(t) {
            if tag == "connection" {
                if let Some((_, at)) = conn {
                    return Err(SyntaxError { line: lno, msg: format!("<connection> inside the <connection> block opened at line {at}") });
                }
                conn = Some((nconn, lno));
                items.push(Item::Connection { line: lno, raw: raw.to_string(), start: true, conn: nconn });
                nconn += 1;
                i += 1;
                continue;
            }
            let close = format!("</{tag}>");
            let Some(len) = lines[i + 1..].iter().position(|l| l.trim() == close) else {
                return Err(SyntaxError { line: lno, msg: format!("inline <{tag}> has no closing {close}") });
            };
            let end = i + 1 + len;
            items.push(Item::Inline {
                line: lno,
                end: end + 1,
                raw: lines[i..=end].join("\n"),
                tag: tag.to_string(),
                body: lines[i + 1..end].join("\n"),
                conn: conn.map(|c| c.0),
            });
            i = end + 1;
            continue;
        }
        if t == "</connection>" {
            let Some((c, _)) = conn.take() else {
                return Err(SyntaxError { line: lno, msg: "</connection> without <connection>".into() });
            };
            items.push(Item::Connection { line: lno, raw: raw.to_string(), start: false, conn: c });
            i += 1;
            continue;
        }
        if t.starts_with("</") && t.ends_with('>') {
            return Err(SyntaxError { line: lno, msg: format!("{t} closes a block that was never opened") });
        }
        let words = split_line(raw).map_err(|msg| SyntaxError { line: lno, msg })?;
        match words.split_first() {
            None => items.push(Item::Text { line: lno, raw: raw.to_string() }),
            Some((name, args)) => items.push(Item::Directive {
                line: lno,
                raw: raw.to_string(),
                name: name.trim_start_matches("--").to_string(),
                args: args.to_vec(),
                conn: conn.map(|c| c.0),
            }),
        }
        i += 1;
    }
    if let Some((_, at)) = conn {
        return Err(SyntaxError { line: at, msg: "<connection> has no closing </connection>".into() });
    }
    Ok(Config { items })
}

// ====================================================================== config meaning

/// Transport protocol family of a `proto` / `remote` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        if s.starts_with("udp") {
            Some(Proto::Udp)
        } else if s.starts_with("tcp") {
            Some(Proto::Tcp)
        } else {
            None
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// `NET MASK` (the mask defaults to a host route, as in OpenVPN's `route`).
pub fn net_mask(net: &str, mask: Option<&str>) -> Option<Ipv4Net> {
    let net: Ipv4Addr = net.parse().ok()?;
    let mask: Ipv4Addr = mask.unwrap_or("255.255.255.255").parse().ok()?;
    Ipv4Net::with_netmask(net, mask).ok().map(|n| n.trunc())
}

/// What the lab needs to know from the server config.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConf {
    pub proto: Proto,
    /// As written (`udp`, `tcp-server`, `udp6`...).
    pub proto_text: String,
    pub port: u16,
    pub dev: String,
    pub tap: bool,
    /// `server NET MASK`.
    pub pool: Option<Ipv4Net>,
    /// The server's own VPN address: first host of the pool, else the `ifconfig` local address.
    pub vpn_addr: Option<Ipv4Addr>,
    pub topology: Option<String>,
    /// `push "route NET MASK ..."`.
    pub pushed_routes: Vec<Ipv4Net>,
    /// `push "route ..."` lines that do not name an IPv4 network (hostnames...).
    pub other_pushes: Vec<String>,
    /// `route NET MASK` (networks behind clients).
    pub client_routes: Vec<Ipv4Net>,
    pub client_to_client: bool,
    pub ccd: Option<String>,
    pub ccd_exclusive: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    pub dh: Option<String>,
    /// `tls-auth FILE [DIR]` (FILE is `[inline]` for an inline block).
    pub tls_auth: Option<(String, Option<String>)>,
    pub tls_crypt: Option<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// `verify-client-cert none|optional` or `client-cert-not-required`.
    pub client_cert_optional: bool,
    /// `auth-user-pass-verify` or a `plugin`: the server checks usernames/passwords.
    pub checks_passwords: bool,
}

/// `remote HOST [PORT] [PROTO]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub host: String,
    pub port: Option<u16>,
    pub proto: Option<String>,
}

/// What the lab needs to know from the client config.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConf {
    /// The first `remote` (in file order, `<connection>` blocks included).
    pub remote: Option<Remote>,
    pub remotes: usize,
    pub proto: Option<Proto>,
    pub dev: Option<String>,
    pub nobind: bool,
    pub tls_auth: Option<(String, Option<String>)>,
    pub tls_crypt: bool,
    /// `port` / `rport`: the default for a `remote` without a port.
    pub port: Option<u16>,
    pub auth_user_pass: bool,
    pub route_nopull: bool,
    /// `route NET MASK` lines of the client.
    pub routes: Vec<Ipv4Net>,
}

impl ClientConf {
    /// The protocol the client connects with.
    pub fn effective_proto(&self) -> Proto {
        self.remote.as_ref().and_then(|r| r.proto.as_deref()).and_then(Proto::parse).or(self.proto).unwrap_or(Proto::Udp)
    }
    /// The port the client connects to.
    pub fn effective_port(&self) -> u16 {
        self.remote.as_ref().and_then(|r| r.port).or(self.port).unwrap_or(1194)
    }
}

fn tls_auth_of(c: &Config) -> Option<(String, Option<String>)> {
    if let Some(a) = c.last("tls-auth") {
        return Some((a.first().cloned().unwrap_or_default(), a.get(1).cloned()));
    }
    c.inline("tls-auth").map(|_| ("[inline]".to_string(), c.last("key-direction").and_then(|a| a.first().cloned())))
}

fn file_of(c: &Config, name: &str) -> Option<String> {
    c.last(name).and_then(|a| a.first().cloned()).or_else(|| c.inline(name).map(|_| "[inline]".to_string()))
}

fn port_arg(a: Option<&[String]>) -> Result<Option<u16>, String> {
    match a.and_then(|a| a.first()) {
        None => Ok(None),
        Some(p) => p.parse().map(Some).map_err(|_| format!("`{p}` is not a port number")),
    }
}

/// Reads the server facts out of a parsed config.
pub fn server_conf(c: &Config) -> Result<ServerConf, String> {
    let serverish = c.first("server").is_some() || c.first("mode").is_some() || c.first("tls-server").is_some() || c.has("secret");
    if c.first("client").is_some() || c.first("tls-client").is_some() || (c.first("remote").is_some() && !serverish) {
        return Err("this looks like a client config (it has `client` or `remote`): did you swap --server and --client?".into());
    }
    let proto_text = c.last("proto").and_then(|a| a.first().cloned()).unwrap_or_else(|| "udp".into());
    let proto = Proto::parse(&proto_text).ok_or_else(|| format!("unknown proto `{proto_text}`"))?;
    let port = port_arg(c.last("lport"))?.or(port_arg(c.last("port"))?).unwrap_or(1194);
    let dev = c.last("dev").and_then(|a| a.first().cloned()).unwrap_or_else(|| "tun".into());
    let tap = dev.starts_with("tap") || c.last("dev-type").and_then(|a| a.first()).is_some_and(|t| t == "tap");
    let pool = match c.last("server") {
        Some(a) => Some(net_mask(a.first().map(String::as_str).unwrap_or(""), a.get(1).map(String::as_str)).ok_or_else(|| format!("`server {}` is not NETWORK NETMASK", a.join(" ")))?),
        None => None,
    };
    let vpn_addr = match pool {
        Some(p) => p.hosts().next(),
        None => c.last("ifconfig").and_then(|a| a.first()).and_then(|a| a.parse().ok()),
    };
    let mut pushed_routes = Vec::new();
    let mut other_pushes = Vec::new();
    for a in c.all("push") {
        let Some(opt) = a.first() else { continue };
        let w: Vec<&str> = opt.split_whitespace().collect();
        if w.first() != Some(&"route") {
            continue;
        }
        match w.get(1).and_then(|n| net_mask(n, w.get(2).copied())) {
            Some(n) => pushed_routes.push(n),
            None => other_pushes.push(opt.clone()),
        }
    }
    let mut client_routes = Vec::new();
    for a in c.all("route") {
        // `route NET MASK [GW]`: without a gateway (or vpn_gateway) the route goes into the tunnel.
        let gw = a.get(2).map(String::as_str);
        if gw.is_some() && gw != Some("vpn_gateway") && gw != Some("default") {
            continue;
        }
        if let Some(n) = a.first().and_then(|n| net_mask(n, a.get(1).map(String::as_str))) {
            client_routes.push(n);
        }
    }
    let verify = c.last("verify-client-cert").and_then(|a| a.first().cloned());
    Ok(ServerConf {
        proto,
        proto_text,
        port,
        dev,
        tap,
        pool,
        vpn_addr,
        topology: c.last("topology").and_then(|a| a.first().cloned()),
        pushed_routes,
        other_pushes,
        client_routes,
        client_to_client: c.first("client-to-client").is_some(),
        ccd: c.last("client-config-dir").and_then(|a| a.first().cloned()),
        ccd_exclusive: c.first("ccd-exclusive").is_some(),
        user: c.last("user").and_then(|a| a.first().cloned()),
        group: c.last("group").and_then(|a| a.first().cloned()),
        dh: file_of(c, "dh"),
        tls_auth: tls_auth_of(c),
        tls_crypt: file_of(c, "tls-crypt").or_else(|| file_of(c, "tls-crypt-v2")),
        ca: file_of(c, "ca").or_else(|| file_of(c, "pkcs12")),
        cert: file_of(c, "cert").or_else(|| file_of(c, "pkcs12")),
        key: file_of(c, "key").or_else(|| file_of(c, "pkcs12")),
        client_cert_optional: c.first("client-cert-not-required").is_some() || matches!(verify.as_deref(), Some("none") | Some("optional")),
        checks_passwords: c.first("auth-user-pass-verify").is_some() || c.first("plugin").is_some(),
    })
}

/// Reads the client facts out of a parsed config.
pub fn client_conf(c: &Config) -> Result<ClientConf, String> {
    if c.first("server").is_some() || c.first("mode").is_some_and(|a| a.first().is_some_and(|m| m == "server")) {
        return Err("this looks like a server config (it has `server` or `mode server`): did you swap --server and --client?".into());
    }
    let remotes: Vec<&[String]> = c.all("remote").collect();
    let remote = match remotes.first() {
        None => None,
        Some(a) => {
            let host = a.first().cloned().ok_or("`remote` without a host")?;
            let port = match a.get(1) {
                None => None,
                Some(p) => Some(p.parse().map_err(|_| format!("`remote {}`: `{p}` is not a port number", a.join(" ")))?),
            };
            Some(Remote { host, port, proto: a.get(2).cloned() })
        }
    };
    let proto = match c.last("proto").and_then(|a| a.first()) {
        Some(p) => Some(Proto::parse(p).ok_or_else(|| format!("unknown proto `{p}`"))?),
        None => None,
    };
    let routes = c.all("route").filter_map(|a| a.first().and_then(|n| net_mask(n, a.get(1).map(String::as_str)))).collect();
    Ok(ClientConf {
        remote,
        remotes: remotes.len(),
        proto,
        dev: c.last("dev").and_then(|a| a.first().cloned()),
        nobind: c.first("nobind").is_some(),
        tls_auth: tls_auth_of(c),
        tls_crypt: c.has("tls-crypt") || c.has("tls-crypt-v2"),
        port: port_arg(c.last("rport"))?.or(port_arg(c.last("port"))?),
        auth_user_pass: c.has("auth-user-pass"),
        route_nopull: c.first("route-nopull").is_some(),
        routes,
    })
}

// ====================================================================== the lab's addresses

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn nth(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// A LAN segment of the lab derived from a route.
#[derive(Debug, Clone)]
struct LanPlan {
    name: String,
    net: Ipv4Net,
    /// The router's (server's or client's) interface and address on it.
    ifname: String,
    router_addr: Ipv4Addr,
    /// The LAN host: node name and address.
    host: Option<(String, Ipv4Addr)>,
    /// Where the network comes from (`push "route 10.0.0.0 255.0.0.0"`).
    origin: String,
}

#[derive(Debug, Clone)]
struct Plan {
    client_wan: Ipv4Net,
    server_wan: Ipv4Net,
    server_lans: Vec<LanPlan>,
    client_lans: Vec<LanPlan>,
}

impl Plan {
    fn client_ip(&self) -> Ipv4Addr {
        nth(&self.client_wan, 2)
    }
    fn wan_client_side(&self) -> Ipv4Addr {
        nth(&self.client_wan, 1)
    }
    fn wan_server_side(&self) -> Ipv4Addr {
        nth(&self.server_wan, 1)
    }
    fn server_ip(&self) -> Ipv4Addr {
        nth(&self.server_wan, 10)
    }
}

/// Documentation (and other never-routed) ranges the WAN subnets are taken from, in order.
const WAN_CANDIDATES: [&str; 8] = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/24", "198.19.0.0/24", "100.64.0.0/24", "100.64.1.0/24", "172.31.254.0/24"];

/// LANs narrower than this are modelled; broader pushed routes (0.0.0.0/1...) are not networks.
const MIN_LAN_PREFIX: u8 = 8;

fn lan_plans(nets: &[Ipv4Net], taken: &mut Vec<Ipv4Net>, base: &str, hostbase: &str, what: &str, skipped: &mut Vec<String>) -> Vec<LanPlan> {
    let usable: Vec<Ipv4Net> = nets
        .iter()
        .copied()
        .filter(|n| {
            if n.prefix_len() < MIN_LAN_PREFIX {
                skipped.push(format!("{what} {n}: too broad to model as a LAN (not a network the lab can build)"));
                return false;
            }
            if let Some(t) = taken.iter().find(|t| overlaps(t, n)) {
                skipped.push(format!("{what} {n}: overlaps {t} (already in the lab), so no LAN was made for it"));
                return false;
            }
            taken.push(*n);
            true
        })
        .collect();
    let many = usable.len() > 1;
    usable
        .into_iter()
        .enumerate()
        .map(|(i, net)| {
            let suffix = if many { format!("{}", i + 1) } else { String::new() };
            // Hosts: all addresses of a /31 or /32, else network+1 .. broadcast-1.
            let (first, count) = if net.prefix_len() >= 31 { (0u32, 1u32 << (32 - net.prefix_len())) } else { (1, (1u32 << (32 - net.prefix_len())) - 2) };
            let router_addr = nth(&net, first);
            let host = (count >= 2).then(|| (format!("{hostbase}{suffix}"), nth(&net, first + 9.min(count - 1))));
            LanPlan { name: format!("{base}{suffix}"), net, ifname: format!("eth{}", i + 1), router_addr, host, origin: String::new() }
        })
        .collect()
}

fn plan(s: &ServerConf, c: &ClientConf, skipped: &mut Vec<String>) -> Result<Plan> {
    // The customer's networks: the lab's WANs must not collide with any of them.
    let mut customer: Vec<Ipv4Net> = Vec::new();
    customer.extend(s.pool);
    customer.extend(s.vpn_addr.map(|a| Ipv4Net::new(a, 32).unwrap()));
    customer.extend(s.pushed_routes.iter().chain(&s.client_routes).chain(&c.routes).filter(|n| n.prefix_len() >= MIN_LAN_PREFIX));
    let free: Vec<Ipv4Net> = WAN_CANDIDATES.iter().map(|n| n.parse::<Ipv4Net>().unwrap()).filter(|w| !customer.iter().any(|n| overlaps(n, w))).collect();
    let [client_wan, server_wan, ..] = free[..] else {
        anyhow::bail!("the customer's networks cover every range the lab's WAN could use ({})", WAN_CANDIDATES.join(", "));
    };
    let mut taken: Vec<Ipv4Net> = vec![client_wan, server_wan];
    taken.extend(s.pool);
    let mut server_lans = lan_plans(&s.pushed_routes, &mut taken, "lan", "lanhost", "pushed route", skipped);
    for l in &mut server_lans {
        l.origin = format!("push \"route {} {}\"", l.net.network(), l.net.netmask());
    }
    let mut client_lans = lan_plans(&s.client_routes, &mut taken, "clientlan", "clienthost", "server route", skipped);
    for l in &mut client_lans {
        l.origin = format!("route {} {}", l.net.network(), l.net.netmask());
    }
    Ok(Plan { client_wan, server_wan, server_lans, client_lans })
}

// ====================================================================== rewriting

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// What the rewrite needs to know besides the config itself.
struct Ctx<'a> {
    role: Role,
    /// Where the config came from (for the header).
    source: &'a str,
    lab_id: &'a str,
    server_wan: Ipv4Addr,
    /// Client: whether the server accepts clients without certificates.
    server_cert_optional: bool,
    /// Server: whether the client sends a username/password.
    client_sends_password: bool,
}

/// One change made to a config.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    /// `line 8`, `lines 21-25`, or `added`.
    at: String,
    /// `` `dh dh2048.pem` -> `dh none` ``, `` commented out `daemon` ``...
    what: String,
    why: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at == "added" {
            write!(f, "added {} ({})", self.what, self.why)
        } else {
            write!(f, "{}: {} ({})", self.at, self.what, self.why)
        }
    }
}

/// A rewritten config.
#[derive(Debug, Default)]
struct Rewritten {
    text: String,
    /// Every change, in file order.
    changes: Vec<Change>,
    /// Extra files for the node (name, contents).
    files: Vec<(String, String)>,
    /// `client-config-dir` is used (server).
    uses_ccd: bool,
}

const WHY_PKI: &str = "the harness generates a fresh CA, server.crt/key, client.crt/key and ta.key into every node's directory per run";
const WHY_LOG: &str = "the harness runs the daemon in the foreground and captures stdout/stderr as its log";
const WHY_SCRIPT: &str = "the customer's scripts and plugins are not in the lab; re-create what they do with lab steps or node setup";

/// The reasons of `changes`, each once, in order of first use.
fn distinct_reasons(changes: &[Change]) -> Vec<&str> {
    let mut v: Vec<&str> = Vec::new();
    for c in changes {
        if !v.contains(&c.why.as_str()) {
            v.push(&c.why);
        }
    }
    v
}

/// Quotes a word for an OpenVPN config line if it needs it.
fn quote(w: &str) -> String {
    if !w.is_empty() && !w.chars().any(|c| c.is_whitespace() || "\"'\\#;".contains(c)) {
        return w.to_string();
    }
    let mut s = String::from("\"");
    for c in w.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

fn line_of(name: &str, args: &[&str]) -> String {
    std::iter::once(name.to_string()).chain(args.iter().map(|a| quote(a))).collect::<Vec<_>>().join(" ")
}

/// What happens to one item.
enum Act {
    Keep,
    /// Replace by these lines, with the reason.
    Replace(Vec<String>, String),
    /// Comment the item out, with the reason.
    Comment(String),
}

fn rewrite(conf: &Config, ctx: &Ctx) -> Rewritten {
    let mut out = Rewritten::default();
    let mut body = String::new();
    let me = if ctx.role == Role::Server { "server" } else { "client" };
    let pki = |what: &str| -> Vec<String> {
        match what {
            "ca" | "capath" => vec!["ca ca.crt".into()],
            "cert" => vec![format!("cert {me}.crt")],
            "key" => vec![format!("key {me}.key")],
            _ => vec!["ca ca.crt".into(), format!("cert {me}.crt"), format!("key {me}.key")],
        }
    };
    let tls_mode = conf.first("client").is_some() || conf.first("tls-client").is_some() || conf.first("tls-server").is_some() || conf.first("server").is_some() || (conf.first("mode").is_some() && !conf.has("secret"));
    // The client's `remote` that stays: the first one; `<connection>` blocks without it go.
    let first_remote_line = conf.items.iter().find_map(|i| match i {
        Item::Directive { name, line, .. } if name == "remote" => Some(*line),
        _ => None,
    });
    let keep_conn = conf.items.iter().find_map(|i| match i {
        Item::Directive { name, conn, .. } if name == "remote" => Some(*conn),
        _ => None,
    });
    let mut removed_password_check = false;
    let mut seen_dco = false;
    let mut dropped_conns: Vec<usize> = Vec::new();
    // The reason of the previous line if it was commented out (consecutive ones share a marker).
    let mut last_comment: Option<String> = None;
    // Likewise for replaced lines: the reason is given once for a run of them.
    let mut last_replace: Option<String> = None;

    for item in &conf.items {
        let mut commented_now = false;
        let mut replaced_now = false;
        // `<connection>` blocks other than the one with the first remote are commented out.
        let conn_of = match item {
            Item::Directive { conn, .. } | Item::Inline { conn, .. } => *conn,
            Item::Connection { conn, .. } => Some(*conn),
            Item::Text { .. } => None,
        };
        if ctx.role == Role::Client {
            if let (Some(c), Some(keep)) = (conn_of, keep_conn) {
                if keep != Some(c) {
                    if !dropped_conns.contains(&c) {
                        dropped_conns.push(c);
                        let line = match item {
                            Item::Directive { line, .. } | Item::Inline { line, .. } | Item::Connection { line, .. } | Item::Text { line, .. } => *line,
                        };
                        out.changes.push(Change { at: format!("line {line}"), what: format!("commented out <connection> block {}", c + 1), why: "the lab has one server; the block with the first remote is kept".into() });
                        let _ = writeln!(body, "# vpnlab: commented out: another <connection> (the lab has one server)");
                    }
                    let raw = match item {
                        Item::Directive { raw, .. } | Item::Inline { raw, .. } | Item::Connection { raw, .. } | Item::Text { raw, .. } => raw,
                    };
                    for l in raw.lines() {
                        let _ = writeln!(body, "# {l}");
                    }
                    continue;
                }
            }
        }
        match item {
            Item::Text { raw, .. } | Item::Connection { raw, .. } => {
                let _ = writeln!(body, "{raw}");
            }
            Item::Inline { line, end, raw, tag, .. } => {
                let act = match tag.as_str() {
                    "ca" | "cert" | "key" | "pkcs12" => Act::Replace(pki(tag), WHY_PKI.into()),
                    "dh" => Act::Replace(vec!["dh none".into()], "OpenVPN 2.6 uses ECDHE; no DH parameters needed".into()),
                    "tls-auth" => Act::Replace(vec!["tls-auth ta.key".into()], format!("{WHY_PKI}; the direction stays that of `key-direction`")),
                    "tls-crypt" => Act::Replace(vec!["tls-crypt ta.key".into()], WHY_PKI.into()),
                    "tls-crypt-v2" => Act::Replace(vec!["tls-crypt ta.key".into()], format!("{WHY_PKI}; the lab has no tls-crypt-v2 keys, so tls-crypt (v1) stands in")),
                    "secret" => Act::Replace(vec!["secret ta.key".into()], WHY_PKI.into()),
                    "auth-user-pass" if ctx.role == Role::Client => {
                        out.files.push(("auth.txt".into(), "lab-user\nlab-password\n".into()));
                        Act::Replace(vec!["auth-user-pass auth.txt".into()], "lab credentials in auth.txt; the customer's are not copied".into())
                    }
                    "crl-verify" | "extra-certs" | "http-proxy-user-pass" => Act::Comment(format!("the customer's <{tag}> has no meaning with the lab's per-run PKI/network")),
                    _ => Act::Keep,
                };
                match act {
                    Act::Keep => {
                        let _ = writeln!(body, "{raw}");
                    }
                    Act::Replace(lines, why) => {
                        out.changes.push(Change { at: format!("lines {line}-{end}"), what: format!("inline <{tag}> -> `{}`", lines.join("`, `")), why: why.clone() });
                        if last_replace.as_deref() == Some(why.as_str()) {
                            let _ = writeln!(body, "# vpnlab: inline <{tag}> block ({} lines) replaced", end - line - 1);
                        } else {
                            let _ = writeln!(body, "# vpnlab: inline <{tag}> block ({} lines) replaced: {why}", end - line - 1);
                        }
                        last_replace = Some(why);
                        replaced_now = true;
                        for l in lines {
                            let _ = writeln!(body, "{l}");
                        }
                    }
                    Act::Comment(why) => {
                        // Inline bodies are not echoed (they may hold secrets).
                        out.changes.push(Change { at: format!("lines {line}-{end}"), what: format!("removed inline <{tag}>"), why: why.clone() });
                        let _ = writeln!(body, "# vpnlab: inline <{tag}> block ({} lines) removed: {why}", end - line - 1);
                    }
                }
            }
            Item::Directive { line, raw, name, args, .. } => {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                let arg0 = a.first().copied().unwrap_or("");
                let client = ctx.role == Role::Client;
                let act = match name.as_str() {
                    "ca" | "capath" | "cert" | "key" | "pkcs12" => Act::Replace(pki(name), WHY_PKI.into()),
                    "dh" if arg0 != "none" => Act::Replace(vec!["dh none".into()], "OpenVPN 2.6 uses ECDHE; no DH parameters needed".into()),
                    "tls-auth" => Act::Replace(vec![line_of("tls-auth", &[&["ta.key"], a.get(1..).unwrap_or(&[])].concat())], WHY_PKI.into()),
                    "tls-crypt" => Act::Replace(vec!["tls-crypt ta.key".into()], WHY_PKI.into()),
                    "tls-crypt-v2" => Act::Replace(vec!["tls-crypt ta.key".into()], format!("{WHY_PKI}; the lab has no tls-crypt-v2 keys, so tls-crypt (v1) stands in")),
                    "secret" => Act::Replace(vec![line_of("secret", &[&["ta.key"], a.get(1..).unwrap_or(&[])].concat())], WHY_PKI.into()),
                    "crl-verify" | "extra-certs" | "askpass" => Act::Comment("it names a file of the customer's PKI; the lab's PKI is generated per run".into()),
                    "daemon" | "log" | "log-append" | "status" | "writepid" | "syslog" | "inetd" => Act::Comment(WHY_LOG.into()),
                    "script-security" | "up" | "down" | "client-connect" | "client-disconnect" | "learn-address" | "route-up" | "route-pre-down" | "ipchange" | "tls-verify" | "auth-user-pass-verify" | "tls-crypt-v2-verify" | "plugin" => {
                        if matches!(name.as_str(), "auth-user-pass-verify" | "plugin") {
                            removed_password_check = true;
                        }
                        Act::Comment(WHY_SCRIPT.into())
                    }
                    "ifconfig-pool-persist" | "replay-persist" if arg0.contains('/') => {
                        let base = Path::new(arg0).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "ipp.txt".into());
                        let mut w: Vec<&str> = vec![&base];
                        w.extend(a.iter().skip(1));
                        Act::Replace(vec![line_of(name, &w)], "files the daemon writes stay in its node's directory, never on the host".into())
                    }
                    "chroot" | "cd" => Act::Comment("the daemon runs in its node's directory, which holds all its files".into()),
                    "config" => Act::Comment("included files are not copied; paste what the lab needs into this file".into()),
                    "management-hold" | "management-query-passwords" => Act::Comment("it would wait for a management client that the lab does not run".into()),
                    "user" if !matches!(arg0, "nobody" | "root") => Act::Replace(vec!["user nobody".into()], format!("user `{arg0}` need not exist on the lab machine; nobody keeps the privilege drop")),
                    "group" if !matches!(arg0, "nogroup" | "nobody" | "root") => Act::Replace(vec!["group nogroup".into()], format!("group `{arg0}` need not exist on the lab machine; nogroup keeps the privilege drop")),
                    "verb" if arg0 == "0" => Act::Replace(vec!["verb 1".into()], "at verb 0 OpenVPN does not log `Initialization Sequence Completed`, which the lab waits for".into()),
                    "disable-dco" => {
                        seen_dco = true;
                        Act::Keep
                    }
                    "client-config-dir" if !client => {
                        out.uses_ccd = true;
                        if arg0 == "ccd" {
                            Act::Keep
                        } else {
                            Act::Replace(vec!["client-config-dir ccd".into()], "the lab's ccd folder is copied into the node's directory".into())
                        }
                    }
                    "local" if !client => {
                        let new = format!("local {}", ctx.server_wan);
                        if arg0 == ctx.server_wan.to_string() {
                            Act::Keep
                        } else {
                            Act::Replace(vec![new], "the lab's server WAN address".into())
                        }
                    }
                    "local" => Act::Comment("the customer's client address does not exist in the lab".into()),
                    "remote" if client && Some(*line) == first_remote_line => {
                        let mut w: Vec<String> = vec![ctx.server_wan.to_string()];
                        w.extend(args.iter().skip(1).cloned());
                        let w: Vec<&str> = w.iter().map(String::as_str).collect();
                        Act::Replace(vec![line_of("remote", &w)], "the lab's server WAN address; port and protocol are kept".into())
                    }
                    "remote" if client => Act::Comment("the lab has one server: only the first remote is kept".into()),
                    "http-proxy" | "socks-proxy" | "http-proxy-option" | "http-proxy-user-pass" if client => Act::Comment("the lab has no proxy between client and server".into()),
                    "auth-user-pass" if client => {
                        out.files.push(("auth.txt".into(), "lab-user\nlab-password\n".into()));
                        Act::Replace(vec!["auth-user-pass auth.txt".into()], "lab credentials in auth.txt; the customer's are not copied".into())
                    }
                    "verify-x509-name" => {
                        let peer = if client { "server" } else { "client" };
                        Act::Replace(vec![format!("verify-x509-name {peer} name")], format!("the lab's {peer} certificate has CN={peer}"))
                    }
                    "block-outside-dns" | "register-dns" | "win-sys" | "ip-win32" | "tap-sleep" | "dhcp-renew" | "dhcp-release" | "dhcp-pre-release" | "service" | "show-net-up" | "allow-nonadmin" | "windows-driver" | "route-method" | "pause-exit" | "dev-node" => {
                        Act::Comment("a Windows-only option: OpenVPN on Linux refuses it (or, for dev-node, cannot open the adapter)".into())
                    }
                    "tls-remote" => Act::Comment("removed in OpenVPN 2.4 (and the lab's server certificate has CN=server)".into()),
                    "ns-cert-type" => Act::Replace(vec![line_of("remote-cert-tls", &[arg0])], "the lab's certificates carry no Netscape cert type; remote-cert-tls, its replacement, checks the EKU they have".into()),
                    "remote-cert-ku" => Act::Comment("the lab's certificates carry digitalSignature+keyAgreement (ECDSA); remote-cert-tls checks the EKU".into()),
                    _ => Act::Keep,
                };
                match act {
                    Act::Replace(lines, _) if lines.len() == 1 && split_line(&lines[0]).ok() == Some(std::iter::once(name.clone()).chain(args.iter().cloned()).collect()) => {
                        let _ = writeln!(body, "{raw}");
                    }
                    Act::Keep => {
                        let _ = writeln!(body, "{raw}");
                    }
                    Act::Replace(lines, why) => {
                        out.changes.push(Change { at: format!("line {line}"), what: format!("`{}` -> `{}`", raw.trim(), lines.join("`, `")), why: why.clone() });
                        if last_replace.as_deref() == Some(why.as_str()) {
                            let _ = writeln!(body, "# vpnlab: was `{}`", raw.trim());
                        } else {
                            let _ = writeln!(body, "# vpnlab: was `{}`: {why}", raw.trim());
                        }
                        last_replace = Some(why);
                        replaced_now = true;
                        for l in lines {
                            let _ = writeln!(body, "{l}");
                        }
                    }
                    Act::Comment(why) => {
                        out.changes.push(Change { at: format!("line {line}"), what: format!("commented out `{}`", raw.trim()), why: why.clone() });
                        if last_comment.as_deref() != Some(why.as_str()) {
                            let _ = writeln!(body, "# vpnlab: commented out: {why}");
                        }
                        let _ = writeln!(body, "# {}", raw.trim_start());
                        last_comment = Some(why);
                        commented_now = true;
                    }
                }
            }
        }
        if !replaced_now {
            last_replace = None;
        }
        if !commented_now {
            last_comment = None;
        }
    }

    // Lines the lab needs that the config does not have.
    let mut added: Vec<(String, String)> = Vec::new();
    if !seen_dco {
        added.push(("disable-dco".into(), "the lab's kernel has no data-channel-offload module".into()));
    }
    if tls_mode {
        if !conf.has("ca") && !conf.has("capath") && !conf.has("pkcs12") {
            added.push(("ca ca.crt".into(), format!("the config names no CA (an included file?); {WHY_PKI}")));
        }
        let needs_cert = ctx.role == Role::Server || !ctx.server_cert_optional;
        if needs_cert && !conf.has("cert") && !conf.has("pkcs12") {
            added.push((format!("cert {me}.crt"), format!("the config names no certificate; {WHY_PKI}")));
        }
        if needs_cert && !conf.has("key") && !conf.has("pkcs12") {
            added.push((format!("key {me}.key"), format!("the config names no key; {WHY_PKI}")));
        }
    }
    if ctx.role == Role::Server && tls_mode && !conf.has("dh") {
        added.push(("dh none".into(), "OpenVPN 2.6 refuses a TLS server without --dh (\"You must define DH file\"); none means ECDHE only".into()));
    }
    if ctx.role == Role::Server && removed_password_check && ctx.client_sends_password {
        added.push(("script-security 2".into(), "for the stand-in password check below".into()));
        added.push(("auth-user-pass-verify /bin/true via-env".into(), "a stand-in for the customer's password check, which is commented out above: it accepts the lab's credentials".into()));
    }
    if !added.is_empty() {
        let _ = writeln!(body, "\n# vpnlab: added for the lab:");
        for (l, why) in &added {
            out.changes.push(Change { at: "added".into(), what: format!("`{l}`"), why: why.clone() });
            let _ = writeln!(body, "# {why}\n{l}");
        }
    }

    let mut head = String::new();
    let _ = writeln!(head, "# vpnlab: rewritten by `vpnlab new` from {} for the lab {}.", ctx.source, ctx.lab_id);
    if out.changes.is_empty() {
        let _ = writeln!(head, "# vpnlab: nothing needed changing; every line below is the customer's.");
    } else {
        let _ = writeln!(head, "# vpnlab: every other line is the customer's, in order. Changes (each marked `# vpnlab:` where it is):");
        for c in &out.changes {
            let at = if c.at == "added" { "added at the end".to_string() } else { c.at.clone() };
            let _ = writeln!(head, "# vpnlab:   {at}: {}", c.what);
        }
        let _ = writeln!(head, "# vpnlab: why:");
        for why in distinct_reasons(&out.changes) {
            let _ = writeln!(head, "# vpnlab:   - {why}");
        }
    }
    head.push('\n');
    out.text = head + &body;
    out
}

// ====================================================================== the lab files

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A file name usable in the lab (plain, not one of the harness's own names).
fn lab_file_name(path: &Path, fallback: &str, taken: &[&str]) -> String {
    const RESERVED: [&str; 10] = ["lab.toml", "README.md", "ca.crt", "server.crt", "server.key", "client.crt", "client.key", "ta.key", "auth.txt", "ccd"];
    let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let ok = !name.is_empty() && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) && !RESERVED.contains(&name.as_str()) && !taken.contains(&name.as_str()) && name != "snapshots";
    if ok {
        name
    } else {
        fallback.to_string()
    }
}

fn check_name(name: &str) -> Result<(), EnvError> {
    let parts: Vec<&str> = name.split('/').collect();
    let ok = parts.len() <= 2 && parts.iter().all(|p| !p.is_empty() && p.len() <= 64 && !p.starts_with('.') && !p.starts_with('-') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    if ok {
        Ok(())
    } else {
        Err(EnvError {
            msg: format!("`{name}` is not a lab name"),
            hint: "use NAME (letters, digits, '-', '_', '.'; the lab becomes custom/NAME) or FAMILY/RECIPE".into(),
        })
    }
}

fn read_config(path: &Path) -> Result<(String, Config)> {
    let src = std::fs::read_to_string(path).map_err(|e| EnvError { msg: format!("cannot read {}: {e}", path.display()), hint: "give the path of the customer's OpenVPN config".into() })?;
    let conf = parse_config(&src).map_err(|e| InputError { file: path.to_path_buf(), line: e.line, col: 1, msg: e.msg, hint: "fix the OpenVPN config syntax (one directive per line, inline files as <tag>...</tag>)".into() })?;
    Ok((src, conf))
}

/// Removes a half-written lab (and the parent folders it created) unless disarmed.
struct Cleanup {
    dir: PathBuf,
    /// The topmost folder created for it (the lab folder or an ancestor).
    top: PathBuf,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.dir);
            let mut p = self.dir.parent();
            while let Some(d) = p {
                if !d.starts_with(&self.top) || std::fs::remove_dir(d).is_err() {
                    break;
                }
                p = d.parent();
            }
        }
    }
}

/// [`create`], returning what was changed and what to look out for.
pub fn create_with_report(spec: &NewLab) -> Result<Created> {
    check_name(&spec.name)?;
    let folder = if spec.name.contains('/') { spec.dir.join(&spec.name) } else { spec.dir.join("custom").join(&spec.name) };
    if folder.exists() {
        return Err(EnvError {
            msg: format!("{} already exists", folder.display()),
            hint: "choose another NAME, or remove the folder first (vpnlab new never overwrites a lab)".into(),
        }
        .into());
    }
    let id = {
        let comps: Vec<&str> = if spec.name.contains('/') { spec.name.split('/').collect() } else { vec!["custom", spec.name.as_str()] };
        comps.join("/")
    };

    let (_, sconf) = read_config(&spec.server_conf)?;
    let (_, cconf) = read_config(&spec.client_conf)?;
    let input_err = |path: &Path, msg: String| InputError { file: path.to_path_buf(), line: 1, col: 1, msg, hint: "give the customer's OpenVPN server config with --server and the client config with --client".into() };
    let s = server_conf(&sconf).map_err(|m| input_err(&spec.server_conf, m))?;
    let c = client_conf(&cconf).map_err(|m| input_err(&spec.client_conf, m))?;
    if c.remote.is_none() {
        return Err(input_err(&spec.client_conf, "the client config has no `remote`: the lab cannot tell where it connects".into()).into());
    }

    let mut warnings: Vec<String> = Vec::new();
    let p = plan(&s, &c, &mut warnings)?;
    let srv_name = lab_file_name(&spec.server_conf, "server.conf", &[]);
    let mut cli_name = lab_file_name(&spec.client_conf, "client.conf", &[srv_name.as_str()]);
    if cli_name == srv_name {
        cli_name = "lab-client.conf".into();
    }

    // Mismatches between the two configs that the lab reproduces faithfully.
    let cproto = c.effective_proto();
    if cproto != s.proto {
        warnings.push(format!("the client connects with {} but the server listens on {}: the client will not connect until one of them changes", cproto.name(), s.proto.name()));
    }
    let dnat = cproto == s.proto && c.effective_port() != s.port;
    if dnat {
        warnings.push(format!(
            "the client connects to port {} but the server listens on {}: the wan router forwards {}/{} to the server's {} (as the customer's edge presumably does); drop its nft ruleset to see the mismatch",
            c.effective_port(),
            s.port,
            s.proto.name(),
            c.effective_port(),
            s.port
        ));
    }
    match (&s.tls_auth, &c.tls_auth) {
        (Some(_), None) => warnings.push("the server uses tls-auth and the client does not: expect `TLS Error: cannot locate HMAC in incoming packet` on the server".into()),
        (None, Some(_)) => warnings.push("the client uses tls-auth and the server does not: expect TLS key negotiation to fail".into()),
        (Some((_, sd)), Some((_, cd))) if sd.is_some() && sd == cd => warnings.push(format!("server and client both use tls-auth direction {}: the HMAC check will fail (one side needs 0, the other 1)", sd.as_deref().unwrap_or(""))),
        _ => {}
    }
    if s.tls_crypt.is_some() != c.tls_crypt {
        warnings.push("tls-crypt is set on one side only: the client will not connect".into());
    }
    if let Some(d) = &c.dev {
        if d.starts_with("tap") != s.tap {
            warnings.push(format!("the client's `dev {d}` and the server's `dev {}` differ in type (tun/tap)", s.dev));
        }
    }
    if sconf.first("dev").is_none() {
        warnings.push(format!("{} has no `dev`: OpenVPN refuses to start without `dev tun` or `dev tap`", spec.server_conf.display()));
    }
    if c.dev.is_none() {
        warnings.push(format!("{} has no `dev`: OpenVPN refuses to start without `dev tun` or `dev tap`", spec.client_conf.display()));
    }
    if s.vpn_addr.is_none() {
        warnings.push("the server config has no `server NET MASK` (or `ifconfig`): the connect scenario cannot ping the server's VPN address".into());
    }
    if c.route_nopull && !p.server_lans.is_empty() {
        warnings.push("the client has `route-nopull`: the pushed routes are ignored, so the server's LAN is not reachable through the tunnel".into());
    }
    if !p.client_lans.is_empty() && s.ccd.is_none() {
        warnings.push("the server routes networks to the clients (`route`) but has no client-config-dir, so no `iroute` tells OpenVPN which client owns them: it drops that traffic".into());
    }
    if s.ccd_exclusive && s.ccd.is_some() {
        warnings.push("ccd-exclusive: only clients with a file in ccd/ may connect; the lab's client has ccd/client".into());
    }
    for o in &s.other_pushes {
        warnings.push(format!("push \"{o}\" does not name an IPv4 network: no LAN was made for it"));
    }
    if s.client_cert_optional && s.checks_passwords && !c.auth_user_pass {
        warnings.push("the server accepts clients without certificates (password check) but the client sends no auth-user-pass".into());
    }

    // Rewrite both configs.
    let srv_src = spec.server_conf.display().to_string();
    let cli_src = spec.client_conf.display().to_string();
    let sctx = Ctx { role: Role::Server, source: &srv_src, lab_id: &id, server_wan: p.server_ip(), server_cert_optional: false, client_sends_password: c.auth_user_pass };
    let cctx = Ctx { role: Role::Client, source: &cli_src, lab_id: &id, server_wan: p.server_ip(), server_cert_optional: s.client_cert_optional, client_sends_password: false };
    let srv = rewrite(&sconf, &sctx);
    let cli = rewrite(&cconf, &cctx);
    if srv.text.contains("auth-user-pass-verify /bin/true") {
        warnings.push("the server's password check (script/plugin) was replaced by `auth-user-pass-verify /bin/true via-env`, which accepts any credentials".into());
    }

    // Write the folder.
    let top = {
        let mut t = folder.clone();
        while let Some(parent) = t.parent() {
            if parent.as_os_str().is_empty() || parent.exists() {
                break;
            }
            t = parent.to_path_buf();
        }
        t
    };
    if let Some(parent) = folder.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::create_dir(&folder).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::Error::from(EnvError { msg: format!("{} already exists", folder.display()), hint: "choose another NAME, or remove the folder first".into() })
        } else {
            anyhow::Error::from(e).context(format!("creating {}", folder.display()))
        }
    })?;
    let mut guard = Cleanup { dir: folder.clone(), top, armed: true };

    let write = |rel: &str, text: &str| -> Result<()> {
        let path = folder.join(rel);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(&srv_name, &srv.text)?;
    write(&cli_name, &cli.text)?;
    let mut server_files = vec![srv_name.clone()];
    let mut client_files = vec![cli_name.clone()];
    let mut client_modes = Vec::new();
    for (name, text) in &cli.files {
        if !client_files.contains(name) {
            write(name, text)?;
            client_files.push(name.clone());
            client_modes.push((name.clone(), "600"));
        }
    }
    if srv.uses_ccd {
        let mut ccd = String::from("# ccd file of the lab's client (its certificate's CN is `client`), read by the server.\n# Put the customer's ccd entries for that client here (ifconfig-push, iroute, push ...).\n");
        for l in &p.client_lans {
            let _ = writeln!(ccd, "# from the server's `{}`: the network behind this client\niroute {} {}", l.origin, l.net.network(), l.net.netmask());
        }
        write("ccd/client", &ccd)?;
        server_files.push("ccd".into());
    }

    let lab_toml = lab_toml(spec, &folder, &s, &c, &p, &srv_name, &cli_name, &server_files, &client_files, &client_modes, srv.uses_ccd, dnat);
    write("lab.toml", &lab_toml)?;

    let lab = crate::model::load(&folder).map_err(anyhow::Error::from).with_context(|| format!("the generated lab {} does not validate (removed it)", folder.display()))?;

    let mut changes: Vec<String> = srv.changes.iter().map(|x| format!("{srv_name} {x}")).collect();
    changes.extend(cli.changes.iter().map(|x| format!("{cli_name} {x}")));
    let readme = readme(&id, &folder, &lab, spec, &s, &c, &p, &srv_name, &cli_name, &srv.changes, &cli.changes, &warnings);
    write("README.md", &readme)?;
    guard.armed = false;
    Ok(Created { dir: folder, id, changes, warnings })
}

#[allow(clippy::too_many_arguments)]
fn lab_toml(
    spec: &NewLab,
    folder: &Path,
    s: &ServerConf,
    c: &ClientConf,
    p: &Plan,
    srv_name: &str,
    cli_name: &str,
    server_files: &[String],
    client_files: &[String],
    client_modes: &[(String, &str)],
    uses_ccd: bool,
    dnat: bool,
) -> String {
    let list = |v: &[String]| format!("[{}]", v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", "));
    let mut t = String::new();
    let _ = writeln!(t, "# Generated by `vpnlab new {}` from the customer's {} and {}.", spec.name, spec.server_conf.display(), spec.client_conf.display());
    let _ = writeln!(t, "# Run it (`vpnlab run {}`), then add the symptom's steps to the `connect` scenario.", folder.display());
    let _ = writeln!(t, "[lab]");
    let _ = writeln!(t, "title  = {}", q(&format!("Customer setup from {srv_name} + {cli_name}")));
    let _ = writeln!(t, "source = {}", q(&format!("customer configs {} and {} (vpnlab new)", spec.server_conf.display(), spec.client_conf.display())));
    let _ = writeln!(t, "kernel = []\n");
    let _ = writeln!(t, "[pki]                  # generated per run into every daemon node's directory");
    let _ = writeln!(t, "servers = [\"server\"]");
    let _ = writeln!(t, "clients = [\"client\"]\n");

    // The picture.
    let _ = writeln!(t, "# client {} --- wan router --- server {} ({} {} {})", p.client_ip(), p.server_ip(), s.proto_text, s.port, s.dev);
    for l in &p.server_lans {
        let host = l.host.as_ref().map(|(n, a)| format!(", {n} {a}")).unwrap_or_default();
        let _ = writeln!(t, "#   server {}: LAN `{}` {} (server {}{host}), from {}", l.ifname, l.name, l.net, l.router_addr, l.origin);
    }
    for l in &p.client_lans {
        let host = l.host.as_ref().map(|(n, a)| format!(", {n} {a}")).unwrap_or_default();
        let _ = writeln!(t, "#   client {}: LAN `{}` {} (client {}{host}), from the server's `{}`", l.ifname, l.name, l.net, l.router_addr, l.origin);
    }
    if let Some(pool) = s.pool {
        let _ = writeln!(t, "#   VPN pool {pool}{}, server {}", s.topology.as_ref().map(|t| format!(" (topology {t})")).unwrap_or_default(), s.vpn_addr.map(|a| a.to_string()).unwrap_or_default());
    }
    t.push('\n');

    let _ = writeln!(t, "[nodes.client]");
    if !p.client_lans.is_empty() {
        let _ = writeln!(t, "sysctl = {{ \"net.ipv4.ip_forward\" = \"1\" }}   # routes for its LAN");
    }
    let _ = writeln!(t, "routes = [{}]", q(&format!("default via {}", p.wan_client_side())));
    let _ = writeln!(t, "files  = {}", list(client_files));
    if !client_modes.is_empty() {
        let m: Vec<String> = client_modes.iter().map(|(f, m)| format!("{} = {}", q(f), q(m))).collect();
        let _ = writeln!(t, "modes  = {{ {} }}", m.join(", "));
    }
    t.push('\n');
    let _ = writeln!(t, "[nodes.wan]");
    let _ = writeln!(t, "sysctl = {{ \"net.ipv4.ip_forward\" = \"1\" }}");
    if dnat {
        let proto = s.proto.name();
        let _ = writeln!(t, "# port forward: the client's remote port -> the server's port");
        let _ = writeln!(t, "nft    = \"\"\"");
        let _ = writeln!(t, "table ip nat {{");
        let _ = writeln!(t, "  chain prerouting {{");
        let _ = writeln!(t, "    type nat hook prerouting priority -100;");
        let _ = writeln!(t, "    ip daddr {} {proto} dport {} dnat to {}:{}", p.server_ip(), c.effective_port(), p.server_ip(), s.port);
        let _ = writeln!(t, "  }}");
        let _ = writeln!(t, "}}");
        let _ = writeln!(t, "\"\"\"");
    }
    t.push('\n');
    let _ = writeln!(t, "[nodes.server]");
    let _ = writeln!(t, "sysctl = {{ \"net.ipv4.ip_forward\" = \"1\" }}");
    let _ = writeln!(t, "routes = [{}]", q(&format!("default via {}", p.wan_server_side())));
    let _ = writeln!(t, "files  = {}", list(server_files));
    if uses_ccd {
        let _ = writeln!(t, "modes  = {{ \"ccd\" = \"755\" }}   # read after the daemon drops privileges");
    }
    t.push('\n');
    for l in p.server_lans.iter().chain(&p.client_lans) {
        if let Some((name, _)) = &l.host {
            let _ = writeln!(t, "[nodes.{name}]");
            let _ = writeln!(t, "routes = [{}]\n", q(&format!("default via {}", l.router_addr)));
        }
    }

    let _ = writeln!(t, "[[links]]");
    let _ = writeln!(t, "a = {}", q(&format!("client:eth0 {}/{}", p.client_ip(), p.client_wan.prefix_len())));
    let _ = writeln!(t, "b = {}\n", q(&format!("wan:eth0 {}/{}", p.wan_client_side(), p.client_wan.prefix_len())));
    let _ = writeln!(t, "[[links]]");
    let _ = writeln!(t, "a = {}", q(&format!("wan:eth1 {}/{}", p.wan_server_side(), p.server_wan.prefix_len())));
    let _ = writeln!(t, "b = {}\n", q(&format!("server:eth0 {}/{}", p.server_ip(), p.server_wan.prefix_len())));
    for (router, lans) in [("server", &p.server_lans), ("client", &p.client_lans)] {
        for l in lans {
            let mut members = vec![format!("{router}:{} {}/{}", l.ifname, l.router_addr, l.net.prefix_len())];
            if let Some((name, a)) = &l.host {
                members.push(format!("{name}:eth0 {a}/{}", l.net.prefix_len()));
            }
            let _ = writeln!(t, "[[lans]]                 # {}", l.origin);
            let _ = writeln!(t, "name    = {}", q(&l.name));
            let _ = writeln!(t, "members = {}\n", list(&members));
        }
    }

    for (svc, file) in [("server", srv_name), ("client", cli_name)] {
        let _ = writeln!(t, "[services.{svc}]");
        let _ = writeln!(t, "node    = {}", q(svc));
        let _ = writeln!(t, "run     = {}", q(&format!("openvpn --config {file}")));
        let _ = writeln!(t, "ready   = \"Initialization Sequence Completed\"");
        let _ = writeln!(t, "timeout = \"10s\"\n");
    }

    let _ = writeln!(t, "[scenarios.connect]");
    let _ = writeln!(t, "about = \"The client connects and reaches the server's VPN address and LAN address(es)\"");
    let _ = writeln!(t, "steps = [");
    if let Some(a) = s.vpn_addr {
        let _ = writeln!(t, "  {},   # the server's VPN address", q(&format!("client: ping {a} -> reachable")));
    }
    for l in &p.server_lans {
        let _ = writeln!(t, "  {},   # the server on LAN `{}` ({})", q(&format!("client: ping {} -> reachable", l.router_addr)), l.name, l.origin);
    }
    for l in &p.server_lans {
        if let Some((n, a)) = &l.host {
            let _ = writeln!(t, "  # {},   # {n}, through the server", q(&format!("client: ping {a} -> reachable")));
        }
    }
    for l in &p.client_lans {
        if let Some((n, _)) = &l.host {
            let target = s.vpn_addr.map(|a| a.to_string()).unwrap_or_else(|| p.server_ip().to_string());
            let _ = writeln!(t, "  # {},   # from the client's LAN (needs an iroute in ccd/client)", q(&format!("{n}: ping {target} -> reachable")));
        }
    }
    let _ = writeln!(t, "  # add the symptom's steps here, e.g. \"client: ping ADDR -> unreachable\", \"log server /MULTI: bad source/\", \"server: show ip route\"");
    let _ = writeln!(t, "]");
    t
}

#[allow(clippy::too_many_arguments)]
fn readme(
    id: &str,
    folder: &Path,
    lab: &crate::model::Lab,
    spec: &NewLab,
    s: &ServerConf,
    c: &ClientConf,
    p: &Plan,
    srv_name: &str,
    cli_name: &str,
    srv_changes: &[Change],
    cli_changes: &[Change],
    warnings: &[String],
) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# {id}\n");
    let _ = writeln!(r, "Generated by `vpnlab new` from the customer's `{}` (server) and `{}` (client).\n", spec.server_conf.display(), spec.client_conf.display());
    let _ = writeln!(r, "## What the configs say\n");
    let yes = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(r, "- server: `proto {}`, port {}, `dev {}`{}", s.proto_text, s.port, s.dev, s.topology.as_ref().map(|t| format!(", `topology {t}`")).unwrap_or_default());
    match (s.pool, s.vpn_addr) {
        (Some(pool), Some(a)) => {
            let _ = writeln!(r, "- VPN pool {pool}; the server is {a}");
        }
        (None, Some(a)) => {
            let _ = writeln!(r, "- no `server` pool; the server's tunnel address is {a} (`ifconfig`)");
        }
        _ => {
            let _ = writeln!(r, "- no VPN pool found");
        }
    }
    if !s.pushed_routes.is_empty() {
        let _ = writeln!(r, "- pushed routes: {}", s.pushed_routes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "));
    }
    if !s.client_routes.is_empty() {
        let _ = writeln!(r, "- server routes to clients' networks: {}", s.client_routes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "));
    }
    let _ = writeln!(
        r,
        "- client-to-client: {}; client-config-dir: {}; user/group: {}/{}; dh: {}; tls-auth: {}; tls-crypt: {}",
        yes(s.client_to_client),
        s.ccd.as_deref().unwrap_or("none"),
        s.user.as_deref().unwrap_or("-"),
        s.group.as_deref().unwrap_or("-"),
        s.dh.as_deref().unwrap_or("none given"),
        s.tls_auth.as_ref().map(|(f, d)| format!("{f}{}", d.as_ref().map(|d| format!(" {d}")).unwrap_or_default())).unwrap_or_else(|| "no".into()),
        s.tls_crypt.as_deref().unwrap_or("no"),
    );
    if let Some(rm) = &c.remote {
        let _ = writeln!(
            r,
            "- client: `remote {}{}{}` ({} remote line(s)), {} to port {}, nobind: {}, tls-auth: {}",
            rm.host,
            rm.port.map(|p| format!(" {p}")).unwrap_or_default(),
            rm.proto.as_ref().map(|p| format!(" {p}")).unwrap_or_default(),
            c.remotes,
            c.effective_proto().name(),
            c.effective_port(),
            yes(c.nobind),
            c.tls_auth.as_ref().map(|(f, d)| format!("{f}{}", d.as_ref().map(|d| format!(" {d}")).unwrap_or_default())).unwrap_or_else(|| "no".into()),
        );
    }
    let _ = writeln!(r, "\n## The lab (`vpnlab show {id}`)\n");
    let _ = writeln!(r, "The client reaches the server at {} through the wan router; the WAN subnets ({} and {}) avoid the customer's networks.\n", p.server_ip(), p.client_wan, p.server_wan);
    let _ = writeln!(r, "```\n{}```\n", crate::diagram::text(lab));
    let _ = writeln!(r, "## What was changed in the configs\n");
    let _ = writeln!(r, "Each change is also listed in the header of the rewritten file and marked `# vpnlab:` where it happens.\n");
    for (name, changes) in [(srv_name, srv_changes), (cli_name, cli_changes)] {
        let _ = writeln!(r, "`{name}`:\n");
        if changes.is_empty() {
            let _ = writeln!(r, "- nothing");
        }
        for why in distinct_reasons(changes) {
            let _ = writeln!(r, "- {why}:");
            for ch in changes.iter().filter(|c| c.why == why) {
                let at = if ch.at == "added" { "added".to_string() } else { ch.at.clone() };
                let _ = writeln!(r, "  - {at}: {}", ch.what);
            }
        }
        r.push('\n');
    }
    if !warnings.is_empty() {
        let _ = writeln!(r, "## Look out for\n");
        for w in warnings {
            let _ = writeln!(r, "- {w}");
        }
        r.push('\n');
    }
    let _ = writeln!(r, "## Next steps\n");
    let _ = writeln!(r, "1. `vpnlab run {}` runs the `connect` scenario. There is no snapshot yet: if its checks pass, the run records its transcript as the first snapshot (`snapshots/connect.snap`). Read it.", folder.display());
    let _ = writeln!(r, "2. Add the symptom's steps to `[scenarios.connect]` in `lab.toml` where the placeholder comment is (a failing ping, `log server /.../`, `show ip route`...), or one scenario per fix. LAB_FORMAT.md lists every step.");
    let _ = writeln!(r, "3. Re-run with `vpnlab run --accept {}::connect` to record the new transcript, review it, and commit the lab folder.", folder.display());
    r
}

// ====================================================================== tests

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split_line(s).unwrap()
    }

    #[test]
    fn split_line_quotes_comments_escapes() {
        assert_eq!(words("remote vpn.example.com 1194 udp"), ["remote", "vpn.example.com", "1194", "udp"]);
        assert_eq!(words("  push \"route 10.0.0.0 255.0.0.0\"  # the LAN"), ["push", "route 10.0.0.0 255.0.0.0"]);
        assert_eq!(words("ca 'C:\\keys\\ca.crt'"), ["ca", "C:\\keys\\ca.crt"]);
        assert_eq!(words("ca C:\\\\keys\\\\ca.crt"), ["ca", "C:\\keys\\ca.crt"]);
        assert_eq!(words(r#"push "dhcp-option DOMAIN \"a b\"""#), ["push", "dhcp-option DOMAIN \"a b\""]);
        assert_eq!(words("key my\\ key.pem"), ["key", "my key.pem"]);
        assert_eq!(words("remote host#1 1194 ;x"), ["remote", "host#1", "1194"]);
        assert!(words("# comment").is_empty());
        assert!(words("; comment").is_empty());
        assert!(words("   ").is_empty());
        assert!(split_line("push \"route 10.0.0.0").is_err());
        assert!(split_line("ca 'x").is_err());
    }

    #[test]
    fn quote_round_trips() {
        for w in ["plain", "a b", "x\"y", "back\\slash", "#hash", "", "route 10.0.0.0 255.0.0.0"] {
            assert_eq!(words(&line_of("d", &[w])), ["d", w], "{w}");
        }
    }

    const INLINE: &str = "\u{feff}client\r\n--dev tun\n<ca>\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n</ca>\n  <tls-auth>\n#\n-----BEGIN OpenVPN Static key V1-----\n</tls-auth>\nkey-direction 1\n<connection>\nremote a.example 1194\n</connection>\n<connection>\nremote b.example 443 tcp\n</connection>\n";

    #[test]
    fn config_inline_blocks_and_connections() {
        let c = parse_config(INLINE).unwrap();
        assert_eq!(c.first("client"), Some(&[][..]));
        assert_eq!(c.first("dev").unwrap(), ["tun"], "a leading -- is dropped");
        assert_eq!(c.inline("ca").unwrap(), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
        // The `#` line inside the block is body, not a comment.
        assert!(c.inline("tls-auth").unwrap().starts_with("#\n"));
        let lines: Vec<usize> = c.items.iter().filter_map(|i| if let Item::Inline { line, end, .. } = i { Some(line * 100 + end) } else { None }).collect();
        assert_eq!(lines, [3 * 100 + 7, 8 * 100 + 11]);
        let remotes: Vec<(String, Option<usize>)> = c.items.iter().filter_map(|i| if let Item::Directive { name, args, conn, .. } = i { (name == "remote").then(|| (args[0].clone(), *conn)) } else { None }).collect();
        assert_eq!(remotes, [("a.example".to_string(), Some(0)), ("b.example".to_string(), Some(1))]);
        let cc = client_conf(&c).unwrap();
        assert_eq!(cc.remote, Some(Remote { host: "a.example".into(), port: Some(1194), proto: None }));
        assert_eq!(cc.remotes, 2);
        assert_eq!(cc.tls_auth, Some(("[inline]".into(), Some("1".into()))));
    }

    #[test]
    fn config_syntax_errors_have_lines() {
        assert_eq!(parse_config("dev tun\n<ca>\nabc\n").unwrap_err().line, 2);
        assert_eq!(parse_config("dev tun\n</ca>\n").unwrap_err().line, 2);
        assert_eq!(parse_config("dev tun\npush \"route 1.2.3.0\n").unwrap_err().line, 2);
        assert!(parse_config("<connection>\nremote x\n").unwrap_err().msg.contains("</connection>"));
    }

    const SERVER: &str = r#"
port 443
proto tcp-server
dev tun0
server 10.20.0.0 255.255.255.0
topology subnet
push "route 192.168.10.0 255.255.255.0"
push "route 172.16.0.0 255.240.0.0 vpn_gateway"
push "route intranet.example 255.255.255.255"
push "dhcp-option DNS 192.168.10.53"
route 192.168.50.0 255.255.255.0
route 10.99.0.0 255.255.0.0 10.20.0.2
client-to-client
client-config-dir /etc/openvpn/ccd
user openvpn
group openvpn
dh /etc/openvpn/dh2048.pem
tls-auth /etc/openvpn/ta.key 0
ca /etc/openvpn/ca.crt
cert "/etc/openvpn/my server.crt"
key /etc/openvpn/server.key
"#;

    #[test]
    fn server_facts() {
        let s = server_conf(&parse_config(SERVER).unwrap()).unwrap();
        assert_eq!((s.proto, s.port, s.dev.as_str(), s.tap), (Proto::Tcp, 443, "tun0", false));
        assert_eq!(s.pool, Some("10.20.0.0/24".parse().unwrap()));
        assert_eq!(s.vpn_addr, Some("10.20.0.1".parse().unwrap()));
        assert_eq!(s.topology.as_deref(), Some("subnet"));
        assert_eq!(s.pushed_routes, ["192.168.10.0/24".parse::<Ipv4Net>().unwrap(), "172.16.0.0/12".parse().unwrap()]);
        assert_eq!(s.other_pushes, ["route intranet.example 255.255.255.255"]);
        assert_eq!(s.client_routes, ["192.168.50.0/24".parse::<Ipv4Net>().unwrap()], "a route via another gateway is not a client network");
        assert!(s.client_to_client);
        assert_eq!(s.ccd.as_deref(), Some("/etc/openvpn/ccd"));
        assert_eq!((s.user.as_deref(), s.group.as_deref()), (Some("openvpn"), Some("openvpn")));
        assert_eq!(s.tls_auth, Some(("/etc/openvpn/ta.key".into(), Some("0".into()))));
        assert_eq!(s.cert.as_deref(), Some("/etc/openvpn/my server.crt"));
        assert_eq!(s.dh.as_deref(), Some("/etc/openvpn/dh2048.pem"));
        // The defaults.
        let d = server_conf(&parse_config("server 10.8.0.0 255.255.255.0\n").unwrap()).unwrap();
        assert_eq!((d.proto, d.port, d.dev.as_str()), (Proto::Udp, 1194, "tun"));
        // Swapped files are caught.
        assert!(server_conf(&parse_config("client\nremote x 1194\n").unwrap()).unwrap_err().contains("swap"));
        assert!(client_conf(&parse_config(SERVER).unwrap()).unwrap_err().contains("swap"));
    }

    #[test]
    fn client_remote_forms() {
        let c = client_conf(&parse_config("client\nproto tcp\nport 1195\nremote vpn.acme.example\nremote 203.0.113.9 443 udp\nnobind\ntls-auth ta.key 1\n").unwrap()).unwrap();
        assert_eq!(c.remote, Some(Remote { host: "vpn.acme.example".into(), port: None, proto: None }));
        assert_eq!((c.effective_proto(), c.effective_port(), c.nobind), (Proto::Tcp, 1195, true));
        assert_eq!(c.tls_auth, Some(("ta.key".into(), Some("1".into()))));
        let c = client_conf(&parse_config("client\nremote 1.2.3.4 443 tcp-client\n").unwrap()).unwrap();
        assert_eq!((c.effective_proto(), c.effective_port()), (Proto::Tcp, 443));
        assert!(client_conf(&parse_config("client\nremote 1.2.3.4 http\n").unwrap()).is_err());
    }

    fn ctx(role: Role) -> Ctx<'static> {
        Ctx { role, source: "in.conf", lab_id: "custom/t", server_wan: "198.51.100.10".parse().unwrap(), server_cert_optional: false, client_sends_password: false }
    }

    #[test]
    fn rewrite_server() {
        let src = format!("{SERVER}daemon\nlog-append /var/log/openvpn.log\nstatus /run/openvpn.status 10\nscript-security 2\nup /etc/openvpn/up.sh\npersist-tun\nverb 4\n");
        let r = rewrite(&parse_config(&src).unwrap(), &ctx(Role::Server));
        let conf = parse_config(&r.text).unwrap();
        let d: Vec<String> = conf.directives().map(|(n, a, _)| std::iter::once(n.to_string()).chain(a.iter().cloned()).collect::<Vec<_>>().join(" ")).collect();
        for want in ["ca ca.crt", "cert server.crt", "key server.key", "dh none", "tls-auth ta.key 0", "client-config-dir ccd", "user nobody", "group nogroup", "disable-dco", "persist-tun", "verb 4", "port 443", "push route 192.168.10.0 255.255.255.0", "client-to-client"] {
            assert!(d.contains(&want.to_string()), "missing `{want}` in\n{}", r.text);
        }
        for gone in ["daemon", "log-append", "status", "script-security", "up"] {
            assert!(conf.first(gone).is_none(), "`{gone}` still set in\n{}", r.text);
        }
        assert!(r.text.contains("# up /etc/openvpn/up.sh"), "{}", r.text);
        assert!(r.text.starts_with("# vpnlab: rewritten by `vpnlab new` from in.conf"), "{}", r.text);
        assert!(r.text.contains("line 20: `cert \"/etc/openvpn/my server.crt\"` -> `cert server.crt`"), "{}", r.text);
        assert!(r.uses_ccd);
        // Untouched lines are kept verbatim, in order.
        let kept: Vec<&str> = r.text.lines().filter(|l| l.starts_with("push ")).collect();
        assert_eq!(kept.len(), 4);
    }

    #[test]
    fn rewrite_client_inline_and_remote() {
        let src = format!("{INLINE}<key>\nSECRET\n</key>\ncert /x/client.crt\nlog /tmp/x.log\n");
        let r = rewrite(&parse_config(&src).unwrap(), &ctx(Role::Client));
        assert!(!r.text.contains("MIIB") && !r.text.contains("SECRET") && !r.text.contains("Static key"), "key material copied:\n{}", r.text);
        let conf = parse_config(&r.text).unwrap();
        assert_eq!(conf.first("ca").unwrap(), ["ca.crt"]);
        assert_eq!(conf.first("key").unwrap(), ["client.key"]);
        assert_eq!(conf.first("cert").unwrap(), ["client.crt"]);
        assert_eq!(conf.first("tls-auth").unwrap(), ["ta.key"]);
        assert_eq!(conf.first("key-direction").unwrap(), ["1"]);
        assert_eq!(conf.all("remote").collect::<Vec<_>>(), [&["198.51.100.10".to_string(), "1194".to_string()][..]], "{}", r.text);
        assert!(conf.first("log").is_none());
        assert!(conf.first("disable-dco").is_some());
        // The second <connection> is commented out, so the config has one block left.
        assert_eq!(conf.items.iter().filter(|i| matches!(i, Item::Connection { start: true, .. })).count(), 1, "{}", r.text);
        // Nothing to do for a config that already fits.
        let fine = "client\nremote 198.51.100.10 1194\nca ca.crt\ncert client.crt\nkey client.key\ndisable-dco\n";
        let r = rewrite(&parse_config(fine).unwrap(), &ctx(Role::Client));
        assert!(r.changes.is_empty(), "{:?}", r.changes);
        assert!(r.text.ends_with(fine), "{}", r.text);
    }

    #[test]
    fn wan_avoids_the_customers_networks() {
        let s = server_conf(&parse_config("server 192.0.2.0 255.255.255.0\npush \"route 198.51.100.0 255.255.255.0\"\npush \"route 0.0.0.0 128.0.0.0\"\n").unwrap()).unwrap();
        let c = client_conf(&parse_config("client\nremote x 1194\n").unwrap()).unwrap();
        let mut skipped = Vec::new();
        let p = plan(&s, &c, &mut skipped).unwrap();
        assert_eq!((p.client_wan.to_string().as_str(), p.server_wan.to_string().as_str()), ("203.0.113.0/24", "198.18.0.0/24"));
        assert_eq!(p.server_lans.len(), 1);
        assert_eq!(p.server_lans[0].router_addr.to_string(), "198.51.100.1");
        assert_eq!(p.server_lans[0].host.as_ref().unwrap().1.to_string(), "198.51.100.10");
        assert!(skipped[0].contains("too broad"), "{skipped:?}");
    }

    #[test]
    fn lab_names() {
        assert!(check_name("customer-acme").is_ok());
        assert!(check_name("acme/tls-fail").is_ok());
        for bad in ["", "a/b/c", "../x", "a b", "/abs", ".hidden"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/newlab").join(name)
    }

    #[test]
    fn refuses_an_existing_folder_and_cleans_up_on_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        let labs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/openvpn/basic-server");
        let spec = NewLab { name: "x".into(), server_conf: labs.join("server.conf"), client_conf: labs.join("client.conf"), dir: tmp.path().to_path_buf() };
        std::fs::create_dir_all(tmp.path().join("custom/x")).unwrap();
        let e = create(&spec).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        // Swapped configs: an error naming the file, and nothing left behind.
        let spec = NewLab { name: "y".into(), server_conf: labs.join("client.conf"), client_conf: labs.join("server.conf"), ..spec };
        let e = format!("{:#}", create(&spec).unwrap_err());
        assert!(e.contains("client.conf") && e.contains("swap"), "{e}");
        assert!(!tmp.path().join("custom/y").exists());
    }

    /// A more complex customer setup: tcp, two pushed routes, client-to-client, ccd, inline
    /// PKI, a port forward, scripts and log files. Only checks that the lab validates.
    #[test]
    fn complex_configs_make_a_valid_lab() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = NewLab { name: "acme/complex".into(), server_conf: fixture("acme-server.conf"), client_conf: fixture("acme-client.ovpn"), dir: tmp.path().join("labs") };
        let out = create_with_report(&spec).unwrap();
        assert_eq!(out.dir, tmp.path().join("labs/acme/complex"));
        assert_eq!(out.id, "acme/complex");
        let lab = crate::model::load(&out.dir).unwrap();
        assert_eq!(lab.id, "acme/complex");
        let names: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["client", "wan", "server", "lanhost1", "lanhost2", "clienthost"]);
        assert_eq!(lab.lans.len(), 3);
        let steps: Vec<&str> = lab.scenarios[0].steps.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(steps, ["client: ping 10.66.0.1 -> reachable", "client: ping 192.168.10.1 -> reachable", "client: ping 172.20.0.1 -> reachable"]);
        assert!(lab.nodes[1].nft.as_deref().unwrap().contains("tcp dport 443 dnat to 198.51.100.10:1194"));
        let toml = std::fs::read_to_string(out.dir.join("lab.toml")).unwrap();
        assert!(toml.contains("# add the symptom's steps here"), "{toml}");
        let srv = std::fs::read_to_string(out.dir.join("acme-server.conf")).unwrap();
        let cli = std::fs::read_to_string(out.dir.join("acme-client.ovpn")).unwrap();
        assert!(!srv.contains("BEGIN") && !cli.contains("BEGIN"), "inline PKI copied");
        assert!(cli.contains("\nremote 198.51.100.10 443 tcp\n"), "{cli}");
        assert!(cli.contains("\nauth-user-pass auth.txt\n") && out.dir.join("auth.txt").is_file(), "{cli}");
        assert!(srv.contains("\nauth-user-pass-verify /bin/true via-env\n"), "{srv}");
        assert!(std::fs::read_to_string(out.dir.join("ccd/client")).unwrap().contains("iroute 192.168.77.0 255.255.255.0"));
        let readme = std::fs::read_to_string(out.dir.join("README.md")).unwrap();
        assert!(readme.contains("vpnlab run ") && readme.contains("LAN `lan1` (bridge)"), "{readme}");
        assert!(out.warnings.iter().any(|w| w.contains("forwards tcp/443")), "{:?}", out.warnings);
        assert!(out.changes.iter().any(|c| c.starts_with("acme-client.ovpn lines ") && c.contains("inline <ca>")), "{:?}", out.changes);
    }

    /// Creates the lab and runs its `connect` scenario (None: not root, outside CI).
    fn run_lab(spec: &NewLab) -> Option<crate::runner::Run> {
        if !crate::env::is_root() {
            assert!(!crate::snapshot::is_ci(), "running a generated lab needs root: run `sudo -E cargo test`");
            eprintln!("SKIPPED: running a generated lab needs root (sudo -E cargo test)");
            return None;
        }
        let dir = create(spec).unwrap();
        let lab = crate::model::load(&dir).unwrap();
        Some(crate::runner::run(&lab, "connect", &Default::default()).unwrap())
    }

    /// The configs of labs/openvpn/basic-server, turned into a lab and run for real.
    #[test]
    fn basic_server_configs_connect() {
        let tmp = tempfile::tempdir().unwrap();
        let labs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/openvpn/basic-server");
        let spec = NewLab { name: "basic".into(), server_conf: labs.join("server.conf"), client_conf: labs.join("client.conf"), dir: tmp.path().to_path_buf() };
        let Some(run) = run_lab(&spec) else { return };
        assert!(run.failure.is_none(), "{:?}\n{}", run.failure, run.transcript);
        assert!(run.transcript.contains("Initialization Sequence Completed"), "{}", run.transcript);
        assert!(run.transcript.contains("client$ ping -c2 10.8.0.1  -> reachable"), "{}", run.transcript);
    }

    /// The complex fixture also connects (tcp through the port forward, both LANs reachable).
    #[test]
    fn complex_configs_connect() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = NewLab { name: "acme".into(), server_conf: fixture("acme-server.conf"), client_conf: fixture("acme-client.ovpn"), dir: tmp.path().to_path_buf() };
        let Some(run) = run_lab(&spec) else { return };
        assert!(run.failure.is_none(), "{:?}\n{}", run.failure, run.transcript);
        assert_eq!(run.transcript.matches("-> reachable").count(), 3, "{}", run.transcript);
    }
}
