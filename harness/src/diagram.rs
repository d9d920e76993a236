//! Pictures of a lab's topology: a terminal diagram, Graphviz dot and Mermaid, all derived from
//! the validated model (`vpnlab show LAB [--format text|dot|mermaid]`).

use crate::model::{Endpoint, Lab};
use std::fmt::Write as _;

fn ep(lab: &Lab, e: &Endpoint) -> String {
    let addrs: Vec<String> = e.addrs.iter().map(|a| a.to_string()).collect();
    if addrs.is_empty() {
        format!("{}:{}", lab.nodes[e.node].name, e.ifname)
    } else {
        format!("{}:{} {}", lab.nodes[e.node].name, e.ifname, addrs.join(","))
    }
}

/// A plain-text diagram for the terminal.
pub fn text(lab: &Lab) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} - {}", lab.id, lab.title);
    if !lab.source.is_empty() {
        let _ = writeln!(s, "source: {}", lab.source);
    }
    let _ = writeln!(s, "\nlinks (veth pairs)");
    let width = lab.links.iter().map(|l| ep(lab, &l.a).len()).max().unwrap_or(0);
    for l in &lab.links {
        let _ = writeln!(s, "  {:<width$} ─────── {}", ep(lab, &l.a), ep(lab, &l.b));
    }
    for lan in &lab.lans {
        let _ = writeln!(s, "\nLAN `{}` (bridge)", lan.name);
        for (i, m) in lan.members.iter().enumerate() {
            let corner = if i + 1 == lan.members.len() { "└──" } else { "├──" };
            let _ = writeln!(s, "  {corner} {}", ep(lab, m));
        }
    }
    let _ = writeln!(s, "\nnodes");
    let nw = lab.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
    for (i, n) in lab.nodes.iter().enumerate() {
        let mut facts = Vec::new();
        for (k, v) in &n.sysctls {
            facts.push(format!("{k}={v}"));
        }
        for r in &n.routes {
            facts.push(format!("route {}", r.text));
        }
        for r in &n.rules {
            facts.push(format!("rule {}", r.text));
        }
        if n.nft.is_some() {
            facts.push("nft ruleset".into());
        }
        for svc in lab.services.iter().filter(|s| s.node == i) {
            facts.push(format!("runs `{}`: {}", svc.name, svc.argv.join(" ")));
        }
        if facts.is_empty() {
            let _ = writeln!(s, "  {:<nw$}", n.name);
        } else {
            let _ = writeln!(s, "  {:<nw$}  {}", n.name, facts[0]);
            for f in &facts[1..] {
                let _ = writeln!(s, "  {:<nw$}  {f}", "");
            }
        }
    }
    let _ = writeln!(s, "\nscenarios");
    for sc in &lab.scenarios {
        let _ = writeln!(s, "  {}::{}{}", lab.id, sc.name, if sc.about.is_empty() { String::new() } else { format!(" - {}", sc.about) });
    }
    s
}

fn node_label(lab: &Lab, i: usize, sep: &str) -> String {
    let mut parts = vec![lab.nodes[i].name.clone()];
    for svc in lab.services.iter().filter(|s| s.node == i) {
        parts.push(format!("[{}]", crate::model::daemon_program(&svc.argv)));
    }
    parts.join(sep)
}

/// Graphviz dot (`vpnlab show LAB --format dot | dot -Tsvg`).
pub fn dot(lab: &Lab) -> String {
    let mut s = format!("graph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=monospace];\n", lab.id);
    for i in 0..lab.nodes.len() {
        let _ = writeln!(s, "  \"{}\" [label=\"{}\"];", lab.nodes[i].name, node_label(lab, i, "\\n"));
    }
    for l in &lab.links {
        let _ = writeln!(s, "  \"{}\" -- \"{}\" [taillabel=\"{}\", headlabel=\"{}\", fontsize=9];", lab.nodes[l.a.node].name, lab.nodes[l.b.node].name, tail(&l.a), tail(&l.b));
    }
    for lan in &lab.lans {
        let _ = writeln!(s, "  \"lan:{}\" [shape=ellipse, label=\"LAN {}\"];", lan.name, lan.name);
        for m in &lan.members {
            let _ = writeln!(s, "  \"lan:{}\" -- \"{}\" [headlabel=\"{}\", fontsize=9];", lan.name, lab.nodes[m.node].name, tail(m));
        }
    }
    s.push_str("}\n");
    s
}

fn tail(e: &Endpoint) -> String {
    let a: Vec<String> = e.addrs.iter().map(|a| a.to_string()).collect();
    format!("{} {}", e.ifname, a.join(","))
}

/// Mermaid (for READMEs: GitHub renders ```mermaid blocks).
pub fn mermaid(lab: &Lab) -> String {
    let mut s = String::from("graph LR\n");
    for i in 0..lab.nodes.len() {
        let _ = writeln!(s, "  {}[\"{}\"]", lab.nodes[i].name, node_label(lab, i, "<br/>"));
    }
    for l in &lab.links {
        let _ = writeln!(s, "  {} ---|\"{} ↔ {}\"| {}", lab.nodes[l.a.node].name, tail(&l.a), tail(&l.b), lab.nodes[l.b.node].name);
    }
    for lan in &lab.lans {
        let _ = writeln!(s, "  lan_{}((LAN {}))", lan.name.replace('-', "_"), lan.name);
        for m in &lan.members {
            let _ = writeln!(s, "  lan_{} ---|\"{}\"| {}", lan.name.replace('-', "_"), tail(m), lab.nodes[m.node].name);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        crate::model::parse(
            &dir.path().join("lab.toml"),
            "[lab]\ntitle='t'\n[nodes.a]\nroutes=['default via 10.0.0.2']\n[nodes.b]\n[nodes.c]\n[[links]]\na='a:eth0 10.0.0.1/24'\nb='b:eth0 10.0.0.2/24'\n[[lans]]\nname='lan'\nmembers=['b:eth1 10.1.0.1/24','c:eth0 10.1.0.2/24']\n[services.vpn]\nnode='b'\nrun='openvpn --config s.conf'\n[scenarios.s]\nsteps=[]\n",
        )
        .unwrap()
    }

    #[test]
    fn text_diagram_shows_links_lans_routes_and_services() {
        let t = text(&lab());
        assert!(t.contains("a:eth0 10.0.0.1/24 ─────── b:eth0 10.0.0.2/24"), "{t}");
        assert!(t.contains("├── b:eth1 10.1.0.1/24") && t.contains("└── c:eth0 10.1.0.2/24"), "{t}");
        assert!(t.contains("route default via 10.0.0.2") && t.contains("runs `vpn`: openvpn --config s.conf"), "{t}");
    }

    #[test]
    fn dot_and_mermaid_name_every_node_and_edge() {
        let d = dot(&lab());
        assert!(d.starts_with("graph ") && d.contains("\"a\" -- \"b\"") && d.contains("\"lan:lan\" -- \"c\""), "{d}");
        let m = mermaid(&lab());
        assert!(m.contains("b[\"b<br/>[openvpn]\"]") && m.contains("lan_lan ---|\"eth0 10.1.0.2/24\"| c"), "{m}");
    }
}
