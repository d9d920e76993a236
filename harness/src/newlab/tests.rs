//! Tests of `vpnlab new`: config syntax and meaning, address plans, rewriting, whole labs.

use super::files::check_name;
use super::plan::plan;
use super::rewrite::{line_of, rewrite, Ctx, Role};
use super::*;
use ipnet::Ipv4Net;
use std::path::Path;

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
    let lines: Vec<usize> =
        c.items.iter().filter_map(|i| if let Item::Inline { line, end, .. } = i { Some(line * 100 + end) } else { None }).collect();
    assert_eq!(lines, [3 * 100 + 7, 8 * 100 + 11]);
    let remotes: Vec<(String, Option<usize>)> = c
        .items
        .iter()
        .filter_map(|i| {
            if let Item::Directive { name, args, conn, .. } = i {
                (name == "remote").then(|| (args[0].clone(), *conn))
            } else {
                None
            }
        })
        .collect();
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
    let c = client_conf(
        &parse_config("client\nproto tcp\nport 1195\nremote vpn.acme.example\nremote 203.0.113.9 443 udp\nnobind\ntls-auth ta.key 1\n")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c.remote, Some(Remote { host: "vpn.acme.example".into(), port: None, proto: None }));
    assert_eq!((c.effective_proto(), c.effective_port(), c.nobind), (Proto::Tcp, 1195, true));
    assert_eq!(c.tls_auth, Some(("ta.key".into(), Some("1".into()))));
    let c = client_conf(&parse_config("client\nremote 1.2.3.4 443 tcp-client\n").unwrap()).unwrap();
    assert_eq!((c.effective_proto(), c.effective_port()), (Proto::Tcp, 443));
    assert!(client_conf(&parse_config("client\nremote 1.2.3.4 http\n").unwrap()).is_err());
}

fn ctx(role: Role) -> Ctx<'static> {
    Ctx {
        role,
        source: "in.conf",
        lab_id: "custom/t",
        server_wan: "198.51.100.10".parse().unwrap(),
        server_cert_optional: false,
        client_sends_password: false,
    }
}

#[test]
fn rewrite_server() {
    let src = format!("{SERVER}daemon\nlog-append /var/log/openvpn.log\nstatus /run/openvpn.status 10\nscript-security 2\nup /etc/openvpn/up.sh\npersist-tun\nverb 4\n");
    let r = rewrite(&parse_config(&src).unwrap(), &ctx(Role::Server));
    let conf = parse_config(&r.text).unwrap();
    let d: Vec<String> =
        conf.directives().map(|(n, a, _)| std::iter::once(n.to_string()).chain(a.iter().cloned()).collect::<Vec<_>>().join(" ")).collect();
    for want in [
        "ca ca.crt",
        "cert server.crt",
        "key server.key",
        "dh none",
        "tls-auth ta.key 0",
        "client-config-dir ccd",
        "user nobody",
        "group nogroup",
        "disable-dco",
        "persist-tun",
        "verb 4",
        "port 443",
        "push route 192.168.10.0 255.255.255.0",
        "client-to-client",
    ] {
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
    let s = server_conf(
        &parse_config("server 192.0.2.0 255.255.255.0\npush \"route 198.51.100.0 255.255.255.0\"\npush \"route 0.0.0.0 128.0.0.0\"\n")
            .unwrap(),
    )
    .unwrap();
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
    let spec = NewLab {
        name: "x".into(),
        server_conf: labs.join("server.conf"),
        client_conf: labs.join("client.conf"),
        dir: tmp.path().to_path_buf(),
    };
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
    let spec = NewLab {
        name: "acme/complex".into(),
        server_conf: fixture("acme-server.conf"),
        client_conf: fixture("acme-client.ovpn"),
        dir: tmp.path().join("labs"),
    };
    let out = create_with_report(&spec).unwrap();
    assert_eq!(out.dir, tmp.path().join("labs/acme/complex"));
    assert_eq!(out.id, "acme/complex");
    let lab = crate::model::load(&out.dir).unwrap();
    assert_eq!(lab.id, "acme/complex");
    let names: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["client", "wan", "server", "lanhost1", "lanhost2", "clienthost"]);
    assert_eq!(lab.lans.len(), 3);
    let steps: Vec<&str> = lab.scenarios[0].steps.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(
        steps,
        ["client: ping 10.66.0.1 -> reachable", "client: ping 192.168.10.1 -> reachable", "client: ping 172.20.0.1 -> reachable"]
    );
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

/// Creates the lab and runs its `connect` scenario.
fn run_lab(spec: &NewLab) -> crate::runner::Run {
    assert!(crate::env::is_root(), "running a generated lab needs root: sudo -E cargo test");
    let dir = create(spec).unwrap();
    let lab = crate::model::load(&dir).unwrap();
    crate::runner::run(&lab, "connect", &Default::default()).unwrap()
}

/// The configs of labs/openvpn/basic-server, turned into a lab and run for real.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn basic_server_configs_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let labs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/openvpn/basic-server");
    let spec = NewLab {
        name: "basic".into(),
        server_conf: labs.join("server.conf"),
        client_conf: labs.join("client.conf"),
        dir: tmp.path().to_path_buf(),
    };
    let run = run_lab(&spec);
    assert!(run.failure.is_none(), "{:?}\n{}", run.failure, run.transcript);
    assert!(run.transcript.contains("Initialization Sequence Completed"), "{}", run.transcript);
    assert!(run.transcript.contains("client$ ping -c2 10.8.0.1  -> reachable"), "{}", run.transcript);
}

/// The complex fixture also connects (tcp through the port forward, both LANs reachable).
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn complex_configs_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = NewLab {
        name: "acme".into(),
        server_conf: fixture("acme-server.conf"),
        client_conf: fixture("acme-client.ovpn"),
        dir: tmp.path().to_path_buf(),
    };
    let run = run_lab(&spec);
    assert!(run.failure.is_none(), "{:?}\n{}", run.failure, run.transcript);
    assert_eq!(run.transcript.matches("-> reachable").count(), 3, "{}", run.transcript);
}
