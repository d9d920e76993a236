//! Stage 2, config meaning: what the parsed server and client configs say ([`ServerConf`],
//! [`ClientConf`]: proto, port, VPN subnet, pushed and client-side routes, PKI files).

use super::syntax::Config;
use anyhow::Result;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

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

pub(super) fn tls_auth_of(c: &Config) -> Option<(String, Option<String>)> {
    if let Some(a) = c.last("tls-auth") {
        return Some((a.first().cloned().unwrap_or_default(), a.get(1).cloned()));
    }
    c.inline("tls-auth").map(|_| ("[inline]".to_string(), c.last("key-direction").and_then(|a| a.first().cloned())))
}

pub(super) fn file_of(c: &Config, name: &str) -> Option<String> {
    c.last(name).and_then(|a| a.first().cloned()).or_else(|| c.inline(name).map(|_| "[inline]".to_string()))
}

pub(super) fn port_arg(a: Option<&[String]>) -> Result<Option<u16>, String> {
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
        Some(a) => Some(
            net_mask(a.first().map(String::as_str).unwrap_or(""), a.get(1).map(String::as_str))
                .ok_or_else(|| format!("`server {}` is not NETWORK NETMASK", a.join(" ")))?,
        ),
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
