//! Traces through a node's bridge (with and without br_netfilter's IP hooks) and to a neighbour
//! behind a TAP device that never answers ARP, each by both methods (`super::run`).

use super::run;

/// a - [r: br0 = eth0 + eth1] - b, one subnet; `{R}` more keys of r.
const BRIDGED: &str = r#"
[lab]
title = "trace through a bridge"
[nodes.a]
[nodes.r]
{R}
[[nodes.r.bridges]]
name = "br0"
ports = ["eth0", "eth1"]
addresses = ["10.0.1.1/24"]
[nodes.b]
[[links]]
a = "a:eth0 10.0.1.2/24"
b = "r:eth0"
[[links]]
a = "r:eth1"
b = "b:eth0 10.0.1.3/24"
[scenarios.s]
steps = []
"#;

/// The bridging node is transparent whether or not br_netfilter shows it bridged packets on
/// its IP hooks (where the module is loaded, `bridge-nf-call-iptables` switches it per node);
/// it is never blamed for its IP forwarding (off here).
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_through_a_bridge() {
    let expected = [
        "request a: out eth0 (10.0.1.2 -> 10.0.1.3)",
        "request b: in eth0 -> delivered",
        "reply   b: out eth0 (10.0.1.3 -> 10.0.1.2)",
        "reply   a: in eth0 -> delivered",
        "=> echo request delivered to b (10.0.1.3); reply delivered back to a",
    ];
    let mut variants = vec!["sysctl = { \"net.ipv4.ip_forward\" = \"0\" }"];
    if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        variants.push("sysctl = { \"net.ipv4.ip_forward\" = \"0\", \"net.bridge.bridge-nf-call-iptables\" = \"1\" }");
        variants.push("sysctl = { \"net.ipv4.ip_forward\" = \"0\", \"net.bridge.bridge-nf-call-iptables\" = \"0\" }");
    }
    for r in &variants {
        assert_eq!(run(&BRIDGED.replace("{R}", r), "10.0.1.3", &[]), expected, "{r}");
    }
    // IPv6 the same (br_netfilter's `bridge-nf-call-ip6tables`).
    let v6 = BRIDGED
        .replace("\"10.0.1.1/24\"]", "\"10.0.1.1/24\", \"2001:db8:1::1/64\"]")
        .replace("10.0.1.2/24\"", "10.0.1.2/24 2001:db8:1::2/64\"")
        .replace("10.0.1.3/24\"", "10.0.1.3/24 2001:db8:1::3/64\"");
    let expected6 = expected.map(|l| l.replace("10.0.1.2", "2001:db8:1::2").replace("10.0.1.3", "2001:db8:1::3"));
    for r in variants.iter().map(|r| r.replace("iptables", "ip6tables")) {
        assert_eq!(run(&v6.replace("{R}", &r), "2001:db8:1::3", &[]), expected6, "{r}");
    }
}

/// A TAP device (here one no daemon serves) whose next hop never answers ARP: the packet never
/// left the node, which is named, with the neighbour; the tunnel's daemon is not blamed.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_no_arp_reply_behind_a_tap() {
    let lab = r#"
[lab]
title = "trace to an unanswered neighbour behind a tap"
[nodes.a]
taps = ["tap0 10.9.0.1/24"]
[nodes.b]
[[links]]
a = "a:eth0 10.0.1.2/24"
b = "b:eth0 10.0.1.3/24"
[scenarios.s]
steps = []
"#;
    assert_eq!(
        run(lab, "10.9.0.2", &[]),
        [
            "request a: out tap0 (10.9.0.1 -> 10.9.0.2) -> found no neighbour: no ARP reply for 10.9.0.2 -> dropped at a",
            "=> echo request to 10.9.0.2 found no neighbour: no ARP reply for 10.9.0.2 -> never left a",
        ]
    );
}
