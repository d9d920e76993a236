//! Tests of taps, bridges and address spaces.

use crate::error::InputError;
use crate::{parse, Lab};

/// A server with a TAP bridged to its office LAN port, two laptops behind two home routers
/// whose home LANs reuse one subnet in spaces of their own.
const LAB: &str = r#"[lab]
title = "t"

[nodes.server]
taps   = ["tap0"]
routes = ["default via 198.51.100.1", "10.9.0.0/16 via 10.198.0.1 dev br0"]
[[nodes.server.bridges]]
name      = "br0"
ports     = ["eth1", "tap0"]
addresses = ["10.198.0.10/16"]

[nodes.fileserver]
[nodes.laptop1]
[nodes.laptop2]
[nodes.home1]
[nodes.home2]

[[lans]]
name    = "office"
members = ["server:eth1", "fileserver:eth0 10.198.0.20/16"]

[[links]]
space = "home1"
a = "laptop1:eth0 192.168.1.10/24"
b = "home1:eth1 192.168.1.1/24"

[[links]]
space = "home2"
a = "laptop2:eth0 192.168.1.10/24"
b = "home2:eth1 192.168.1.1/24"

[scenarios.s]
steps = ["fileserver: ping 10.198.0.10", "server: ip route add 10.10.0.0/16 dev br0"]
"#;

fn load(src: &str) -> Result<Lab, InputError> {
    let dir = tempfile::tempdir().unwrap();
    parse(&dir.path().join("lab.toml"), src)
}

fn err(src: &str) -> InputError {
    load(src).unwrap_err()
}

fn pos(src: &str, needle: &str) -> (usize, usize) {
    crate::error::line_col(src, src.find(needle).unwrap_or_else(|| panic!("{needle} not in src")))
}

#[test]
fn taps_bridges_and_spaces_are_first_class() {
    let lab = load(LAB).unwrap();
    let server = &lab.nodes[0];
    assert_eq!(server.taps.iter().map(|t| t.ep.ifname.as_str()).collect::<Vec<_>>(), ["tap0"]);
    assert_eq!(server.bridges.len(), 1);
    assert_eq!(server.bridges[0].ports, ["eth1", "tap0"]);
    assert_eq!(server.bridges[0].ep.addrs[0].to_string(), "10.198.0.10/16");
    // The bridge's address is the node's like any other; a reused address has no single owner.
    assert_eq!(lab.owner_of("10.198.0.10".parse().unwrap()), Some(0));
    assert_eq!(lab.owner_of("192.168.1.10".parse().unwrap()), None);
    assert_eq!(lab.links[0].space.as_deref(), Some("home1"));
    assert!(lab.endpoints().any(|e| e.ifname == "br0") && lab.endpoints().any(|e| e.ifname == "tap0"));
}

#[test]
fn a_route_via_an_undeclared_bridge_is_located() {
    let src = LAB.replace("dev br0\"]", "dev br9\"]");
    let e = err(&src);
    assert!(e.msg.contains("node `server` has no interface `br9`") && e.hint.contains("br0, eth1, tap0"), "{e}");
}

#[test]
fn bad_ports_are_located() {
    let src = LAB.replace("[\"eth1\", \"tap0\"]", "[\"eth1\", \"tap1\"]");
    let e = err(&src);
    assert_eq!((e.line, e.col), pos(&src, "tap1\"]"), "{e}");
    assert!(e.msg.contains("has no interface `tap1` to make a port of bridge `br0`") && e.hint.contains("taps = [\"tap1\"]"), "{e}");

    let src = LAB.replace("addresses = [\"10.198.0.10/16\"]", "[[nodes.server.bridges]]\nname = \"br1\"\nports = [\"tap0\"]");
    let e = err(&src);
    assert_eq!((e.line, e.col), pos(&src, "tap0\"]\n\n[nodes.file"), "{e}");
    assert!(e.msg.contains("`tap0` is already a port of bridge `br0` (line 9, column"), "{e}");

    let src = LAB.replace("\"server:eth1\"", "\"server:eth1 10.198.0.11/16\"");
    let e = err(&src);
    assert_eq!((e.line, e.col), pos(&src, "eth1\", \"tap0"), "{e}");
    assert!(e.msg.contains("`eth1` has addresses") && e.hint.contains("move its addresses to the bridge"), "{e}");

    let src = LAB.replace("[\"eth1\", \"tap0\"]", "[\"eth1\", \"br0\"]");
    assert!(err(&src).msg.contains("a bridge cannot be a port of a bridge"));

    let src = LAB.replace("name      = \"br0\"", "name      = \"br0 10.0.0.1/24\"");
    assert!(err(&src).hint.contains("addresses = ["));

    let src = LAB.replace("taps   = [\"tap0\"]", "taps   = [\"tap0\", \"eth1\"]");
    assert!(err(&src).msg.contains("node `server` already has an interface `eth1`"));
}

#[test]
fn a_duplicate_within_one_space_or_one_node_is_still_an_error() {
    // Same space: the second home LAN without its own space.
    let src = LAB.replace("space = \"home2\"\n", "").replace("space = \"home1\"\n", "");
    let e = err(&src);
    assert!(e.msg.contains("address 192.168.1.10 is already used at line 23"), "{e}");
    assert!(e.hint.contains("its own `space`"), "{e}");
    let src = LAB.replace("space = \"home2\"", "space = \"home1\"");
    assert!(err(&src).msg.contains("address 192.168.1.10 is already used"));
    // One node cannot hold one address twice, whatever the spaces.
    let src = LAB.replace("a = \"laptop2:eth0 192.168.1.10/24\"", "a = \"laptop1:eth1 192.168.1.10/24\"");
    assert!(err(&src).msg.contains("address 192.168.1.10 is already used at line 24"), "{}", err(&src));
    // A bad space name is located.
    let src = LAB.replace("space = \"home2\"", "space = \"home 2\"");
    let e = err(&src);
    assert_eq!((e.line, e.col), pos(&src, "home 2"), "{e}");
}

#[test]
fn a_bridge_cannot_join_two_spaces() {
    let src = LAB
        .replace("b = \"home2:eth1 192.168.1.1/24\"", "b = \"server:eth2\"")
        .replace("[\"eth1\", \"tap0\"]", "[\"eth2\", \"tap0\", \"eth3\"]")
        + "[[lans]]\nname = \"x\"\nspace = \"x\"\nmembers = [\"server:eth3\", \"home2:eth0 10.1.0.1/24\"]\n";
    let e = err(&src);
    assert!(e.msg.contains("bridge `br0` would join address spaces `home2`") && e.msg.contains("and `x`"), "{e}");
}

#[test]
fn a_tcp_step_to_an_address_of_two_spaces_is_refused() {
    let src = LAB
        .replace("steps = [\"fileserver: ping 10.198.0.10\"", "steps = [\"home1: tcp 192.168.1.10:80\", \"fileserver: ping 10.198.0.10\"");
    let e = err(&src);
    assert_eq!((e.line, e.col), pos(&src, "home1: tcp"), "{e}");
    assert!(e.msg.contains("192.168.1.10 is an address in 2 address spaces"), "{e}");
    let src = LAB.replace("steps = [\"fileserver: ping 10.198.0.10\"", "steps = [\"fileserver: tcp 10.198.0.10:80\"");
    load(&src).unwrap();
}

#[test]
fn a_tap_may_name_its_owner() {
    let lab = load(&LAB.replace("taps   = [\"tap0\"]", "taps   = [\"tap0 user=nobody group=65534\", \"tap1 10.9.0.1/24\"]")).unwrap();
    let t = &lab.nodes[0].taps;
    assert_eq!((t[0].user.as_deref(), t[0].group.as_deref(), t[0].ep.addrs.len()), (Some("nobody"), Some("65534"), 0));
    assert_eq!((t[1].user.as_deref(), t[1].ep.addrs[0].to_string().as_str()), (None, "10.9.0.1/24"));
    let src = LAB.replace("taps   = [\"tap0\"]", "taps   = [\"tap0 user=nobody user=root\"]");
    let e = err(&src);
    assert_eq!((e.line, e.col), pos(&src, "user=root"), "{e}");
    assert!(e.msg.contains("`user=root` is not one user or group name"), "{e}");
    // Not on a link end: there it is not an address.
    let src = LAB.replace("\"fileserver:eth0 10.198.0.20/16\"", "\"fileserver:eth0 user=x\"");
    assert!(err(&src).msg.contains("`user=x` is not an address"));
}

/// A node declared in a fragment and in the lab file keeps the taps and bridges of both.
#[test]
fn taps_and_bridges_merge_across_an_include() {
    let dir = tempfile::tempdir().unwrap();
    let frag = "[nodes.server]\ntaps = [\"tap0\"]\n[nodes.host]\n[[lans]]\nname = \"office\"\nmembers = [\"server:eth1\", \"host:eth0 10.1.0.2/24\"]\n";
    std::fs::write(dir.path().join("office.toml"), frag).unwrap();
    let lab = "include = [\"office.toml\"]\n[lab]\ntitle = \"t\"\n[nodes.server]\n[[nodes.server.bridges]]\nname = \"br0\"\nports = [\"eth1\", \"tap0\"]\naddresses = [\"10.1.0.1/24\"]\n[scenarios.s]\nsteps = [\"host: ping 10.1.0.1\"]\n";
    let lab = parse(&dir.path().join("lab.toml"), lab).unwrap_or_else(|e| panic!("{e}"));
    let server = &lab.nodes[lab.node_index("server").unwrap()];
    assert_eq!((server.taps.len(), server.bridges[0].ports.len()), (1, 2));
}
