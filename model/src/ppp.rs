//! `[[ppp]]`: a PPP-over-SSH link, built the OpenVPN Cookbook's way (sshd on one node, `pppd ...
//! pty "ssh ... pppd notty ..."` on the other). It is expanded at validation time, before the
//! services are validated, into ordinary lab elements, so the runner needs nothing new:
//!
//! * setup commands on the server node that write everything the link needs into the two node
//!   directories under `<name>/`: a neutral `/etc/ppp` (`etc-ppp/options`), the sshd host key,
//!   the client key (both generated per run with `ssh-keygen`; nothing private is committed),
//!   `authorized_keys`, the client's `known_hosts` (the host key pinned) and both configs;
//! * a service `<name>-sshd` on the server (ready: `Server listening on SSH_TO port 22`) and a
//!   service `<name>-client` on the client (ready: pppd's `remote IP address REMOTE`), placed
//!   before the lab's own `[services]` so that they start first;
//! * a prelude step `log <name>-client /local  IP address LOCAL/` (so both ends of the link are
//!   checked and shown before every scenario);
//! * the `ppp` kernel feature.
//!
//! Both daemons run in the private mount namespace every vpnlab process gets: their wrapper
//! mounts a tmpfs on `/run` (pid files, pppd's tdb, sshd's privilege-separation dir `/run/sshd`)
//! and bind-mounts the lab's `etc-ppp` over `/etc/ppp`; the sshd wrapper also puts a tmpfs on
//! `/root`, so the remote login shell (root's) reads no rc files that could write into the PPP
//! stream. The remote pppd is started by sshd and inherits all of that. Nothing of the host's
//! `/etc/ppp`, `/run` or `/root` is touched.

use super::{RawLab, RawService, Validator};
use crate::error::InputError;
use indexmap::IndexMap;
use serde::Deserialize;
use std::net::Ipv4Addr;
use toml::Spanned;

/// One `[[ppp]]` table as written in lab.toml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPpp {
    /// The node running sshd (and, started by sshd, the remote pppd).
    server: Spanned<String>,
    /// The node running `pppd ... pty "ssh ..."`.
    client: Spanned<String>,
    /// The server's address the client's ssh connects to (a static address of `server`).
    ssh_to: Spanned<String>,
    /// The client's end of the PPP link.
    local: Spanned<String>,
    /// The server's end of the PPP link.
    remote: Spanned<String>,
    /// pppd's `defaultroute` on the client: default route via the link once it is up.
    #[serde(default)]
    defaultroute: Option<Spanned<bool>>,
    /// Prefix of the generated services and name of the files' folder (default `ppp`, then
    /// `ppp1`, `ppp2`... for further tables).
    #[serde(default)]
    name: Option<Spanned<String>>,
    /// Readiness deadline of the link (default 20s).
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

/// pppd options shared by both ends (written as their `/etc/ppp/options`): no compression, no
/// IPv6CP (random link-local identifiers), 1 s LCP/IPCP retransmission timers instead of 3 s.
const OPTIONS: [&str; 4] = ["noccp", "noipv6", "lcp-restart 1", "ipcp-restart 1"];

/// Appends the elements generated for every `[[ppp]]` table to `raw` (see the module docs).
pub(super) fn expand(v: &Validator, raw: &mut RawLab) -> Result<(), InputError> {
    if raw.ppp.is_empty() {
        return Ok(());
    }
    let statics = static_addresses(raw);
    let mut generated: IndexMap<String, Spanned<RawService>> = IndexMap::new();
    let mut prelude = Vec::new();
    let mut seen_names: Vec<String> = Vec::new();
    let mut listeners: Vec<(String, Ipv4Addr)> = Vec::new();
    let mut link_addrs: Vec<Ipv4Addr> = Vec::new();
    for (i, p) in raw.ppp.iter().enumerate() {
        let p = p.get_ref();
        let name = match &p.name {
            Some(n) => {
                super::check_name(n.get_ref())
                    .map_err(|m| v.err(v.inner(n), m, "use letters, digits and '-' (it names services and a folder)"))?;
                n.get_ref().clone()
            }
            None if i == 0 => "ppp".to_string(),
            None => format!("ppp{i}"),
        };
        let name_at = p.name.as_ref().map(|n| v.inner(n)).unwrap_or_else(|| v.inner(&p.server));
        if seen_names.contains(&name) {
            return Err(v.err(name_at, format!("a [[ppp]] link named `{name}` is declared twice"), "give each [[ppp]] its own `name`"));
        }
        seen_names.push(name.clone());

        let node = |s: &Spanned<String>| -> Result<String, InputError> {
            let n = s.get_ref();
            if raw.nodes.contains_key(n) {
                Ok(n.clone())
            } else {
                let declared: Vec<&str> = raw.nodes.keys().map(String::as_str).collect();
                Err(v.err(
                    v.inner(s),
                    format!("unknown node `{n}`"),
                    format!("declared nodes: {}; add `[nodes.{n}]` or fix the name", declared.join(", ")),
                ))
            }
        };
        let server = node(&p.server)?;
        let client = node(&p.client)?;
        if server == client {
            return Err(v.err(
                v.inner(&p.client),
                "a [[ppp]] link joins two different nodes",
                "`client` runs pppd + ssh, `server` runs sshd: name two nodes",
            ));
        }
        let addr = |s: &Spanned<String>| -> Result<Ipv4Addr, InputError> {
            s.get_ref().parse().map_err(|_| {
                v.err(
                    v.inner(s),
                    format!("`{}` is not an IPv4 address", s.get_ref()),
                    "write a plain address like 192.168.222.2 (no prefix length)",
                )
            })
        };
        let ssh_to = addr(&p.ssh_to)?;
        let local = addr(&p.local)?;
        let remote = addr(&p.remote)?;
        let of_server: Vec<Ipv4Addr> = statics.iter().filter(|(n, _)| *n == server).map(|(_, a)| *a).collect();
        if !of_server.contains(&ssh_to) {
            let list: Vec<String> = of_server.iter().map(|a| a.to_string()).collect();
            let list = if list.is_empty() { "none (it is on no link or LAN)".to_string() } else { list.join(", ") };
            return Err(v.err(
                v.inner(&p.ssh_to),
                format!("`{ssh_to}` is not an address of node `{server}`"),
                format!("ssh_to is the address sshd listens on, one of `{server}`'s addresses: {list}"),
            ));
        }
        if listeners.contains(&(server.clone(), ssh_to)) {
            return Err(v.err(
                v.inner(&p.ssh_to),
                format!("another [[ppp]] link already runs sshd on {server} {ssh_to}"),
                "give each link's sshd its own address of the server node",
            ));
        }
        listeners.push((server.clone(), ssh_to));
        if local == remote {
            return Err(v.err(
                v.inner(&p.remote),
                "`local` and `remote` are the same address",
                "the two ends of a PPP link need two addresses",
            ));
        }
        for (s, a) in [(&p.local, local), (&p.remote, remote)] {
            if let Some((n, _)) = statics.iter().find(|(_, x)| *x == a) {
                return Err(v.err(
                    v.inner(s),
                    format!("address {a} is already an address of node `{n}`"),
                    "give the PPP link addresses of its own",
                ));
            }
            if link_addrs.contains(&a) {
                return Err(v.err(
                    v.inner(s),
                    format!("address {a} is already used by another [[ppp]] link"),
                    "give every PPP link addresses of its own",
                ));
            }
        }
        link_addrs.extend([local, remote]);
        let defaultroute = p.defaultroute.as_ref().map(|d| *d.get_ref()).unwrap_or(false);
        if defaultroute {
            let routes = &raw.nodes[&client].get_ref().routes;
            if let Some(r) = routes.iter().find(|r| is_main_default(r.get_ref())) {
                let (line, col) = v.sources.line_col(v.inner(r));
                return Err(v.err(
                    p.defaultroute.as_ref().map(|d| d.span().start).unwrap_or(0),
                    format!(
                        "node `{client}` already has a default route (line {line}, column {col}); pppd's defaultroute does not replace one"
                    ),
                    "remove that route (route the server's address `ssh_to` explicitly), or set defaultroute = false",
                ));
            }
        }
        let timeout = p.timeout.clone().unwrap_or_else(|| Spanned::new(p.server.span(), "20s".to_string()));
        let sshd_svc = format!("{name}-sshd");
        let client_svc = format!("{name}-client");
        for (svc, at) in [(&sshd_svc, name_at), (&client_svc, name_at)] {
            if raw.services.contains_key(svc) || generated.contains_key(svc) {
                return Err(v.err(
                    at,
                    format!("[[ppp]] `{name}` generates a service `{svc}`, which is already declared"),
                    "rename the service, or give the [[ppp]] link another `name`",
                ));
            }
        }

        // Setup, all on the server node (node directories are siblings: ../CLIENT/NAME).
        let d = &name;
        let cd = format!("../{client}/{name}");
        let options = std::iter::once(format!("# /etc/ppp/options of [[ppp]] {name}, written by vpnlab and bind-mounted over /etc/ppp"))
            .chain(OPTIONS.iter().map(|s| s.to_string()))
            .map(|l| format!("'{l}'"))
            .collect::<Vec<_>>()
            .join(" ");
        // Few commands (each is a process in the node, which costs in user-mode-linux), each
        // starting with a program the requirement check should know about: the services
        // themselves start with `sh`, so `pppd --version` and `sshd -V` make the check name pppd
        // and sshd (with their packages) before anything is built.
        let setup = vec![
            format!(
                "pppd --version > /dev/null 2>&1; mkdir -p {d}/etc-ppp {cd}/etc-ppp && \
                 printf '%s\\n' {options} > {d}/etc-ppp/options && cp {d}/etc-ppp/options {cd}/etc-ppp/options && \
                 cat > {d}/sshd_config <<EOF && cat > {cd}/ssh_config <<EOF2\n\
                 # sshd of [[ppp]] {name}, written by vpnlab\n\
                 ListenAddress {ssh_to}\nPort 22\n\
                 HostKey $PWD/{d}/ssh_host_ed25519_key\n\
                 AuthorizedKeysFile $PWD/{d}/authorized_keys\n\
                 PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\nPrintLastLog no\n\
                 PidFile none\nLogLevel VERBOSE\nEOF\n\
                 # ssh of [[ppp]] {name}, written by vpnlab\n\
                 IdentityFile $PWD/{cd}/id_ed25519\nIdentitiesOnly yes\n\
                 UserKnownHostsFile $PWD/{cd}/known_hosts\nGlobalKnownHostsFile /dev/null\n\
                 StrictHostKeyChecking yes\nBatchMode yes\nEOF2"
            ),
            format!(
                "ssh-keygen -q -t ed25519 -N '' -C {name}-host -f {d}/ssh_host_ed25519_key && \
                 ssh-keygen -q -t ed25519 -N '' -C {name}-client -f {cd}/id_ed25519 && \
                 cp {cd}/id_ed25519.pub {d}/authorized_keys && \
                 echo \"{ssh_to} $(cut -d' ' -f1,2 {d}/ssh_host_ed25519_key.pub)\" > {cd}/known_hosts"
            ),
            format!("sshd -V 2> /dev/null; ssh -G -F {cd}/ssh_config root@{ssh_to} > /dev/null"),
        ];
        let at = p.server.span();
        raw.nodes.get_mut(&server).expect("checked above").get_mut().setup.extend(setup.into_iter().map(|c| Spanned::new(at.clone(), c)));

        let service = |node: &Spanned<String>, run: String, ready: String| RawService {
            node: node.clone(),
            run: Spanned::new(node.span(), run),
            ready: Some(Spanned::new(node.span(), ready)),
            timeout: Some(timeout.clone()),
            autostart: true,
            may_exit: false,
            setpriv: None,
        };
        let sshd_run = format!(
            "sh -c 'mount -t tmpfs tmpfs /run && mkdir /run/sshd && mount -t tmpfs tmpfs /root && mount --bind {d}/etc-ppp /etc/ppp && exec /usr/sbin/sshd -D -e -f {d}/sshd_config'"
        );
        let dr = if defaultroute { " defaultroute" } else { "" };
        let client_run = format!(
            "sh -c 'mount -t tmpfs tmpfs /run && mount --bind {d}/etc-ppp /etc/ppp && exec pppd nodetach noauth{dr} pty \"ssh -F {d}/ssh_config root@{ssh_to} /usr/sbin/pppd nodetach notty noauth\" {local}:{remote}'"
        );
        let esc = |a: Ipv4Addr| regex::escape(&a.to_string());
        generated.insert(
            sshd_svc,
            Spanned::new(p.server.span(), service(&p.server, sshd_run, format!("Server listening on {} port 22", esc(ssh_to)))),
        );
        generated.insert(
            client_svc.clone(),
            Spanned::new(p.client.span(), service(&p.client, client_run, format!("remote IP address {}$", esc(remote)))),
        );
        prelude.push(Spanned::new(p.client.span(), format!("log {client_svc} /local  IP address {}$/", esc(local))));
    }

    // The link's services start before the lab's own (which may need the link); the prelude
    // checks the client's end first.
    generated.extend(std::mem::take(&mut raw.services));
    raw.services = generated;
    prelude.append(&mut raw.lab.prelude);
    raw.lab.prelude = prelude;
    if !raw.lab.kernel.iter().any(|k| k.get_ref() == "ppp") {
        let at = raw.ppp[0].get_ref().server.span();
        raw.lab.kernel.push(Spanned::new(at, "ppp".to_string()));
    }
    Ok(())
}

/// (node, address) of every static address in links and LANs (malformed endpoints are skipped:
/// the validation that follows reports them).
fn static_addresses(raw: &RawLab) -> Vec<(String, Ipv4Addr)> {
    let ends =
        raw.links.iter().flat_map(|l| [&l.get_ref().a, &l.get_ref().b]).chain(raw.lans.iter().flat_map(|l| l.get_ref().members.iter()));
    let mut out = Vec::new();
    for e in ends {
        let mut words = e.get_ref().split_whitespace();
        let Some((node, _)) = words.next().and_then(|h| h.split_once(':')) else { continue };
        for w in words {
            if let Ok(net) = w.parse::<ipnet::Ipv4Net>() {
                out.push((node.to_string(), net.addr()));
            }
        }
    }
    out
}

/// Is `route` (route syntax) a default route of the main table?
fn is_main_default(route: &str) -> bool {
    let words: Vec<&str> = route.split_whitespace().collect();
    let default = matches!(words.first(), Some(&"default") | Some(&"0.0.0.0/0"));
    let table = words.windows(2).find(|w| w[0] == "table").map(|w| w[1]);
    default && matches!(table, None | Some("main") | Some("254"))
}

#[cfg(test)]
mod tests {
    use crate::error::InputError;
    use crate::step::Action;
    use crate::{parse, KernelFeature, Lab};

    const LAB: &str = r#"[lab]
title = "ppp"
prelude = ["client: ping 192.168.222.1"]

[nodes.client]
routes = ["198.51.100.10/32 via 172.30.0.1"]
[nodes.wan]
[nodes.server]

[[links]]
a = "client:eth0 172.30.0.2/24"
b = "wan:eth0 172.30.0.1/24"

[[links]]
a = "wan:eth1 198.51.100.1/24"
b = "server:eth0 198.51.100.10/24"

[[ppp]]
server = "server"
client = "client"
ssh_to = "198.51.100.10"
local  = "192.168.222.2"
remote = "192.168.222.1"
defaultroute = true

[services.vpn]
node = "client"
run = "openvpn --config c.conf"
ready = "Initialization Sequence Completed"

[scenarios.s]
steps = ["client: ping 192.168.222.1", "log ppp-client /remote IP address/", "restart ppp-client"]
"#;

    fn lab(src: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        parse(&dir.path().join("lab.toml"), src).unwrap_or_else(|e| panic!("{e}"))
    }

    fn lab_err(src: &str) -> InputError {
        let dir = tempfile::tempdir().unwrap();
        match parse(&dir.path().join("lab.toml"), src) {
            Ok(_) => panic!("the lab was accepted"),
            Err(e) => e,
        }
    }

    /// (line, column) of the first occurrence of `needle` in `src`.
    fn pos(src: &str, needle: &str) -> (usize, usize) {
        crate::error::line_col(src, src.find(needle).unwrap_or_else(|| panic!("{needle} not in src")))
    }

    #[test]
    fn expands_into_services_setup_prelude_and_kernel() {
        let lab = lab(LAB);
        let names: Vec<&str> = lab.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ppp-sshd", "ppp-client", "vpn"], "the link's services start first");
        assert_eq!(lab.kernel, [KernelFeature::Ppp]);

        let server = lab.node_index("server").unwrap();
        let client = lab.node_index("client").unwrap();
        let sshd = &lab.services[0];
        assert_eq!(sshd.node, server);
        assert_eq!(&sshd.argv[..2], ["sh", "-c"]);
        assert!(sshd.argv[2].contains("mount -t tmpfs tmpfs /run && mkdir /run/sshd"), "{:?}", sshd.argv);
        assert!(sshd.argv[2].contains("mount --bind ppp/etc-ppp /etc/ppp"), "{:?}", sshd.argv);
        assert!(sshd.argv[2].ends_with("exec /usr/sbin/sshd -D -e -f ppp/sshd_config"), "{:?}", sshd.argv);
        assert!(sshd.ready.as_ref().unwrap().is_match("Server listening on 198.51.100.10 port 22."));
        assert!(!sshd.ready.as_ref().unwrap().is_match("Server listening on 198.51.100.100 port 22."));

        let pppd = &lab.services[1];
        assert_eq!(pppd.node, client);
        assert!(pppd.argv[2].contains(
            r#"exec pppd nodetach noauth defaultroute pty "ssh -F ppp/ssh_config root@198.51.100.10 /usr/sbin/pppd nodetach notty noauth" 192.168.222.2:192.168.222.1"#
        ), "{:?}", pppd.argv);
        let ready = pppd.ready.as_ref().unwrap();
        assert!(ready.is_match("remote IP address 192.168.222.1") && !ready.is_match("remote IP address 192.168.222.10"));
        assert_eq!(pppd.timeout, std::time::Duration::from_secs(20));
        assert!(pppd.autostart && !pppd.may_exit);
        // Errors about a daemon point at the [[ppp]] table.
        assert_eq!(pppd.loc, pos(LAB, "client\"\nssh_to"));
        assert_eq!(sshd.loc, pos(LAB, "server\"\nclient"));

        // Key generation and the configs: setup commands of the server node, nothing else.
        let setup = &lab.nodes[server].setup;
        assert!(
            setup.iter().any(|c| c.starts_with("ssh-keygen -q -t ed25519 -N '' -C ppp-host -f ppp/ssh_host_ed25519_key && ")),
            "{setup:#?}"
        );
        assert!(
            setup.iter().any(|c| c.contains("ssh-keygen -q -t ed25519 -N '' -C ppp-client -f ../client/ppp/id_ed25519 && ")),
            "{setup:#?}"
        );
        assert!(
            setup.iter().any(|c| c.contains("198.51.100.10 $(cut -d' ' -f1,2 ppp/ssh_host_ed25519_key.pub)\" > ../client/ppp/known_hosts")),
            "{setup:#?}"
        );
        assert!(
            setup.iter().any(|c| c.contains("cat > ppp/sshd_config <<EOF && cat > ../client/ppp/ssh_config <<EOF2\n")
                && c.contains("\nListenAddress 198.51.100.10\n")
                && c.ends_with("\nEOF2")),
            "{setup:#?}"
        );
        assert!(setup.iter().any(|c| c.contains("'lcp-restart 1'") && c.contains("> ppp/etc-ppp/options")), "{setup:#?}");
        assert!(lab.nodes[client].setup.is_empty());
        assert_eq!(setup.len(), 3);
        let progs = lab.programs();
        for p in ["pppd", "ssh-keygen", "sshd", "openvpn"] {
            assert!(progs.iter().any(|x| x == p), "{p} not in {progs:?}");
        }

        // Both ends of the link are checked before the lab's own prelude.
        match &lab.prelude[0].action {
            Action::Log { service, pattern, .. } => {
                assert_eq!(*service, 1);
                assert!(pattern.re.is_match("local  IP address 192.168.222.2") && !pattern.re.is_match("local  IP address 192.168.222.20"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(lab.prelude.len(), 2);
    }

    #[test]
    fn no_defaultroute_by_default_and_names_for_several_links() {
        let src = LAB.replace("defaultroute = true\n", "").replace(
            "[services.vpn]",
            "[[ppp]]\nserver = \"wan\"\nclient = \"client\"\nssh_to = \"172.30.0.1\"\nlocal = \"10.9.0.2\"\nremote = \"10.9.0.1\"\n\n[services.vpn]",
        );
        let lab = lab(&src);
        let names: Vec<&str> = lab.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ppp-sshd", "ppp-client", "ppp1-sshd", "ppp1-client", "vpn"]);
        assert!(!lab.services[1].argv[2].contains("defaultroute"));
        assert!(lab.services[3].argv[2].contains("-F ppp1/ssh_config root@172.30.0.1 "));
        let src = src.replace(
            "client = \"client\"\nssh_to = \"172.30.0.1\"",
            "client = \"client\"\nname = \"dsl\"\ntimeout = \"5s\"\nssh_to = \"172.30.0.1\"",
        );
        let lab = self::lab(&src);
        assert_eq!(lab.services[3].name, "dsl-client");
        assert_eq!(lab.services[3].timeout, std::time::Duration::from_secs(5));
        // A lab that already declares the kernel feature keeps it once.
        let lab = self::lab(&LAB.replace("title = \"ppp\"", "title = \"ppp\"\nkernel = [\"ppp\"]"));
        assert_eq!(lab.kernel, [KernelFeature::Ppp]);
    }

    #[test]
    fn unknown_node_is_located() {
        let src = LAB.replace("client = \"client\"", "client = \"clinet\"");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "clinet"), "{e}");
        assert!(e.msg.contains("unknown node `clinet`") && e.hint.contains("client, wan, server"), "{e}");
        assert!(e.to_string().contains(&format!("lab.toml:{}:", e.line)), "{e}");
        let src = LAB.replace("server = \"server\"", "server = \"client\"");
        let e = lab_err(&src);
        assert!(e.msg.contains("two different nodes"), "{e}");
    }

    #[test]
    fn addresses_are_checked() {
        let src = LAB.replace("ssh_to = \"198.51.100.10\"", "ssh_to = \"198.51.100.1\"");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "198.51.100.1\"\nlocal"), "{e}");
        assert!(e.msg.contains("not an address of node `server`") && e.hint.contains("198.51.100.10"), "{e}");
        let src = LAB.replace("local  = \"192.168.222.2\"", "local  = \"192.168.222.2/24\"");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "192.168.222.2/24"), "{e}");
        assert!(e.msg.contains("not an IPv4 address"), "{e}");
        let src = LAB.replace("remote = \"192.168.222.1\"", "remote = \"192.168.222.2\"");
        assert!(lab_err(&src).msg.contains("same address"));
        let src = LAB.replace("remote = \"192.168.222.1\"", "remote = \"172.30.0.1\"");
        let e = lab_err(&src);
        assert!(e.msg.contains("already an address of node `wan`"), "{e}");
    }

    #[test]
    fn defaultroute_with_an_existing_default_route() {
        let src = LAB.replace("routes = [\"198.51.100.10/32 via 172.30.0.1\"]", "routes = [\"default via 172.30.0.1\"]");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "true"), "{e}");
        assert!(e.msg.contains("already has a default route (line 6"), "{e}");
        // A default route in another table is fine.
        lab(&LAB.replace(
            "routes = [\"198.51.100.10/32 via 172.30.0.1\"]",
            "routes = [\"198.51.100.10/32 via 172.30.0.1\", \"default via 172.30.0.1 table 100\"]",
        ));
    }

    #[test]
    fn generated_names_must_be_free_and_keys_known() {
        let src = LAB.replace("[services.vpn]", "[services.ppp-client]");
        let e = lab_err(&src);
        assert!(e.msg.contains("generates a service `ppp-client`, which is already declared"), "{e}");
        assert_eq!((e.line, e.col), pos(&src, "server\"\nclient"), "{e}");
        let src = LAB.replace("defaultroute = true", "default_route = true");
        let e = lab_err(&src);
        assert!(e.msg.contains("unknown field `default_route`") && e.hint.contains("LAB_FORMAT.md"), "{e}");
        let src = LAB.replace("defaultroute = true", "defaultroute = true\nname = \"ppp link\"");
        let e = lab_err(&src);
        assert_eq!((e.line, e.col), pos(&src, "ppp link"), "{e}");
        let src = LAB.replace("[services.vpn]", "[[ppp]]\nserver = \"server\"\nclient = \"wan\"\nssh_to = \"198.51.100.10\"\nlocal = \"10.9.0.2\"\nremote = \"10.9.0.1\"\n\n[services.vpn]");
        let e = lab_err(&src);
        assert!(e.msg.contains("already runs sshd on server 198.51.100.10"), "{e}");
    }
}
