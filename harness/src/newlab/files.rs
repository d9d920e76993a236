//! Stage 5, the lab files: the folder, `lab.toml`, the rewritten configs and README.md, validated
//! before [`create_with_report`] returns (a half-written folder is removed).

use super::bridge::{plan_bridge, BridgePlan};
use super::meaning::{client_conf, server_conf, ClientConf, ServerConf};
use super::plan::{plan, Plan};
use super::readme::readme;
use super::rewrite::{rewrite, Ctx, Role};
use super::syntax::{parse_config, Config};
use super::{Created, NewLab};
use crate::error::{EnvError, InputError};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

// ====================================================================== the lab files

/// A TOML basic string.
pub(super) fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A file name usable in the lab (plain, not one of the harness's own names).
pub(super) fn lab_file_name(path: &Path, fallback: &str, taken: &[&str]) -> String {
    const RESERVED: [&str; 10] =
        ["lab.toml", "README.md", "ca.crt", "server.crt", "server.key", "client.crt", "client.key", "ta.key", "auth.txt", "ccd"];
    let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !RESERVED.contains(&name.as_str())
        && !taken.contains(&name.as_str())
        && name != "snapshots";
    if ok {
        name
    } else {
        fallback.to_string()
    }
}

pub(super) fn check_name(name: &str) -> Result<(), EnvError> {
    let parts: Vec<&str> = name.split('/').collect();
    let ok = parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 64
                && !p.starts_with('.')
                && !p.starts_with('-')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(EnvError {
            msg: format!("`{name}` is not a lab name"),
            hint: "use NAME (letters, digits, '-', '_', '.'; the lab becomes custom/NAME) or FAMILY/RECIPE".into(),
        })
    }
}

pub(super) fn read_config(path: &Path) -> Result<(String, Config)> {
    let src = std::fs::read_to_string(path).map_err(|e| EnvError {
        msg: format!("cannot read {}: {e}", path.display()),
        hint: "give the path of the customer's OpenVPN config".into(),
    })?;
    let conf = parse_config(&src).map_err(|e| InputError {
        file: path.to_path_buf(),
        line: e.line,
        col: 1,
        msg: e.msg,
        hint: "fix the OpenVPN config syntax (one directive per line, inline files as <tag>...</tag>)".into(),
    })?;
    Ok((src, conf))
}

/// Removes a half-written lab (and the parent folders it created) unless disarmed.
pub(super) struct Cleanup {
    pub(super) dir: PathBuf,
    /// The topmost folder created for it (the lab folder or an ancestor).
    pub(super) top: PathBuf,
    pub(super) armed: bool,
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
    let input_err = |path: &Path, msg: String| InputError {
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        msg,
        hint: "give the customer's OpenVPN server config with --server and the client config with --client".into(),
    };
    // A TAP bridged server: its bridged LAN stands for the pool (bridge.rs).
    let bridge = plan_bridge(&sconf, &spec.server_conf)?;
    let mut s = server_conf(&sconf).map_err(|m| input_err(&spec.server_conf, m))?;
    if let Some(b) = &bridge {
        (s.pool, s.vpn_addr) = (Some(b.net), Some(b.gw));
    }
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
        warnings.push(format!(
            "the client connects with {} but the server listens on {}: the client will not connect until one of them changes",
            cproto.name(),
            s.proto.name()
        ));
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
        (Some(_), None) => warnings.push(
            "the server uses tls-auth and the client does not: expect `TLS Error: cannot locate HMAC in incoming packet` on the server"
                .into(),
        ),
        (None, Some(_)) => warnings.push("the client uses tls-auth and the server does not: expect TLS key negotiation to fail".into()),
        (Some((_, sd)), Some((_, cd))) if sd.is_some() && sd == cd => warnings.push(format!(
            "server and client both use tls-auth direction {}: the HMAC check will fail (one side needs 0, the other 1)",
            sd.as_deref().unwrap_or("")
        )),
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
        warnings.push(
            "the server config has no `server NET MASK` (or `ifconfig`): the connect scenario cannot ping the server's VPN address".into(),
        );
    }
    if c.route_nopull && !p.server_lans.is_empty() {
        warnings.push(
            "the client has `route-nopull`: the pushed routes are ignored, so the server's LAN is not reachable through the tunnel".into(),
        );
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
    let sctx = Ctx {
        role: Role::Server,
        source: &srv_src,
        lab_id: &id,
        server_wan: p.server_ip(),
        server_cert_optional: false,
        client_sends_password: c.auth_user_pass,
    };
    let cctx = Ctx {
        role: Role::Client,
        source: &cli_src,
        lab_id: &id,
        server_wan: p.server_ip(),
        server_cert_optional: s.client_cert_optional,
        client_sends_password: false,
    };
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
            anyhow::Error::from(EnvError {
                msg: format!("{} already exists", folder.display()),
                hint: "choose another NAME, or remove the folder first".into(),
            })
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
            let _ = writeln!(
                ccd,
                "# from the server's `{}`: the network behind this client\niroute {} {}",
                l.origin,
                l.net.network(),
                l.net.netmask()
            );
        }
        write("ccd/client", &ccd)?;
        server_files.push("ccd".into());
    }

    let files = (&server_files[..], &client_files[..], &client_modes[..]);
    let lab_toml = lab_toml(spec, &folder, &s, &c, &p, &srv_name, &cli_name, files, srv.uses_ccd, dnat, bridge.as_ref());
    write("lab.toml", &lab_toml)?;

    let lab = crate::model::load(&folder)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("the generated lab {} does not validate (removed it)", folder.display()))?;

    let mut changes: Vec<String> = srv.changes.iter().map(|x| format!("{srv_name} {x}")).collect();
    changes.extend(cli.changes.iter().map(|x| format!("{cli_name} {x}")));
    let readme = readme(&id, &folder, &lab, spec, &s, &c, &p, &srv_name, &cli_name, &srv.changes, &cli.changes, &warnings);
    write("README.md", &readme)?;
    guard.armed = false;
    Ok(Created { dir: folder, id, changes, warnings })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn lab_toml(
    spec: &NewLab,
    folder: &Path,
    s: &ServerConf,
    c: &ClientConf,
    p: &Plan,
    srv_name: &str,
    cli_name: &str,
    (server_files, client_files, client_modes): (&[String], &[String], &[(String, &str)]),
    uses_ccd: bool,
    dnat: bool,
    bridge: Option<&BridgePlan>,
) -> String {
    let bridge_port = format!("eth{}", p.server_lans.len() + 1);
    let list = |v: &[String]| format!("[{}]", v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", "));
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Generated by `vpnlab new {}` from the customer's {} and {}.",
        spec.name,
        spec.server_conf.display(),
        spec.client_conf.display()
    );
    let _ = writeln!(t, "# Run it (`vpnlab run {}`), then add the symptom's steps to the `connect` scenario.", folder.display());
    let _ = writeln!(t, "[lab]");
    let _ = writeln!(t, "title  = {}", q(&format!("Customer setup from {srv_name} + {cli_name}")));
    let _ = writeln!(
        t,
        "source = {}",
        q(&format!("customer configs {} and {} (vpnlab new)", spec.server_conf.display(), spec.client_conf.display()))
    );
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
        let _ = writeln!(
            t,
            "#   client {}: LAN `{}` {} (client {}{host}), from the server's `{}`",
            l.ifname, l.name, l.net, l.router_addr, l.origin
        );
    }
    if let Some(b) = bridge {
        let _ = writeln!(
            t,
            "#   server {bridge_port} + {}: bridge br0 {}/{} (server-bridge), LAN host bridgehost {}",
            b.dev,
            b.gw,
            b.net.prefix_len(),
            b.host
        );
    } else if let Some(pool) = s.pool {
        let _ = writeln!(
            t,
            "#   VPN pool {pool}{}, server {}",
            s.topology.as_ref().map(|t| format!(" (topology {t})")).unwrap_or_default(),
            s.vpn_addr.map(|a| a.to_string()).unwrap_or_default()
        );
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
    if let Some(b) = bridge {
        b.server_toml(&mut t, &bridge_port);
    }
    t.push('\n');
    if let Some(b) = bridge {
        b.lan_toml(&mut t, &bridge_port);
    }
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
        let _ = writeln!(
            t,
            "  {},   # the server on LAN `{}` ({})",
            q(&format!("client: ping {} -> reachable", l.router_addr)),
            l.name,
            l.origin
        );
    }
    if let Some(b) = bridge {
        let _ = writeln!(t, "  {},   # bridgehost, on the bridged LAN", q(&format!("client: ping {} -> reachable", b.host)));
    }
    for l in &p.server_lans {
        if let Some((n, a)) = &l.host {
            let _ = writeln!(t, "  # {},   # {n}, through the server", q(&format!("client: ping {a} -> reachable")));
        }
    }
    for l in &p.client_lans {
        if let Some((n, _)) = &l.host {
            let target = s.vpn_addr.map(|a| a.to_string()).unwrap_or_else(|| p.server_ip().to_string());
            let _ = writeln!(
                t,
                "  # {},   # from the client's LAN (needs an iroute in ccd/client)",
                q(&format!("{n}: ping {target} -> reachable"))
            );
        }
    }
    let _ = writeln!(t, "  # add the symptom's steps here, e.g. \"client: ping ADDR -> unreachable\", \"log server /MULTI: bad source/\", \"server: show ip route\"");
    let _ = writeln!(t, "]");
    t
}
