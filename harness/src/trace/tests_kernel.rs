//! The trace with the kernel's drop events (`crate::drops`): a drop names the interface, the
//! function and the reason; a firewall drop keeps its chains; where the kernel frees nothing
//! (a reply that found no route is never built) the inference stays. Both observation methods
//! still explain alike (`run_with`).

use super::{chain, run_with, B_ROUTE, FORWARDING};

fn run(lab: &str, dest: &str) -> Vec<String> {
    crate::drops::require().unwrap();
    run_with(lab, dest, &[], true)
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn kernel_names_a_firewall_drop() {
    let r = format!(
        "{FORWARDING}\nnft = \"\"\"\ntable inet f {{\n  chain fw {{ type filter hook forward priority 0; policy drop; }}\n}}\n\"\"\""
    );
    assert_eq!(
        run(&chain(&r, B_ROUTE, ""), "10.0.2.2"),
        [
            "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
            "request r: in eth0 -> routed out eth1 -> was dropped at r: eth0, nft_do_chain, NETFILTER_DROP (in forward, firewall: inet f fw, policy drop)",
            "=> echo request to 10.0.2.2 reached r; it was dropped at r: eth0, nft_do_chain, NETFILTER_DROP (in forward, firewall: inet f fw, policy drop)",
        ]
    );
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn kernel_names_a_routing_drop() {
    let r = "sysctl = { \"net.ipv4.ip_forward\" = \"0\" }";
    assert_eq!(
        run(&chain(r, B_ROUTE, ""), "10.0.2.2"),
        [
            "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
            "request r: in eth0 -> was dropped at r: eth0, ip_error, IP_INADDRERRORS",
            "=> echo request to 10.0.2.2 reached r; it was dropped at r: eth0, ip_error, IP_INADDRERRORS",
        ]
    );
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn no_kernel_drop_keeps_the_inference() {
    // b's reply finds no route: it is never built, so the kernel frees nothing.
    assert_eq!(
        run(&chain(FORWARDING, "", ""), "10.0.2.2"),
        [
            "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
            "request r: in eth0 -> forwarded out eth1",
            "request b: in eth0 -> delivered",
            "reply   b: to 10.0.1.2: found no route (Network is unreachable) -> dropped at b",
            "=> echo request reached b (10.0.2.2); its reply to 10.0.1.2 found no route (Network is unreachable) -> dropped at b",
        ]
    );
}
