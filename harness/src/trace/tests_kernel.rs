//! The trace with the kernel's drop events (`crate::drops`): a drop names the interface, the
//! function and the reason; a firewall drop keeps its chains; where the kernel frees nothing
//! (a reply that found no route is never built) the inference stays. Both observation methods
//! still explain alike (`run_with`), and so does the trace's own ping, whose points are read
//! once when the drop events and the sets account for every packet (`account.rs`).

use super::{chain, run_with, B_ROUTE, FORWARDING, NO_ROUTE_BACK};
use crate::trace::observe::READINGS;

/// The lines, and how many readings the trace's own ping took.
fn run(lab: &str, dest: &str) -> (Vec<String>, usize) {
    crate::drops::require().unwrap();
    let lines = run_with(lab, dest, &[], true);
    (lines, READINGS.get())
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn kernel_names_a_firewall_drop() {
    let r = format!(
        "{FORWARDING}\nnft = \"\"\"\ntable inet f {{\n  chain fw {{ type filter hook forward priority 0; policy drop; }}\n}}\n\"\"\""
    );
    let (lines, readings) = run(&chain(&r, B_ROUTE, ""), "10.0.2.2");
    assert_eq!(
        lines,
        [
            "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
            "request r: in eth0 -> routed out eth1 -> was dropped at r: eth0, nft_do_chain, NETFILTER_DROP (in forward, firewall: inet f fw, policy drop)",
            "=> echo request to 10.0.2.2 reached r; it was dropped at r: eth0, nft_do_chain, NETFILTER_DROP (in forward, firewall: inet f fw, policy drop)",
        ]
    );
    assert_eq!(readings, 1, "both requests dropped, no error sent: one reading");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn kernel_names_a_routing_drop() {
    let r = "sysctl = { \"net.ipv4.ip_forward\" = \"0\" }";
    let (lines, readings) = run(&chain(r, B_ROUTE, ""), "10.0.2.2");
    assert_eq!(
        lines,
        [
            "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
            "request r: in eth0 -> was dropped at r: eth0, ip_error, IP_INADDRERRORS",
            "=> echo request to 10.0.2.2 reached r; it was dropped at r: eth0, ip_error, IP_INADDRERRORS",
        ]
    );
    // r sent a an ICMP error about each request: counted out of r and into a before the end.
    assert_eq!(readings, 1, "both requests dropped, both errors delivered: one reading");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn no_kernel_drop_keeps_the_inference() {
    // b's reply finds no route: it is never built, so the kernel frees nothing.
    let (lines, readings) = run(&chain(FORWARDING, "", ""), "10.0.2.2");
    assert!(readings >= 3, "no drop accounts for the probes: the readings settle ({readings} readings)");
    assert_eq!(lines, NO_ROUTE_BACK);
}
