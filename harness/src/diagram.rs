//! Pictures of a lab's topology: a terminal diagram, Graphviz dot and Mermaid, all derived from
//! the validated model (`vpnlab show LAB [--format text|dot|mermaid]`), and SVG for the HTML
//! report (Graphviz's rendering of the dot when `dot` is installed, else a built-in layout).

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
        let _ = writeln!(s, "  {:<width$} ─────── {}{}", ep(lab, &l.a), ep(lab, &l.b), space(&l.space, "  (space ", ")"));
    }
    for lan in &lab.lans {
        let _ = writeln!(s, "\nLAN `{}` (bridge{})", lan.name, space(&lan.space, ", space ", ""));
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
        facts.extend(inside(lab, i));
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

/// ` (space home1)`-like words for a link or LAN in an address space of its own.
fn space(sp: &Option<String>, before: &str, after: &str) -> String {
    sp.as_ref().map(|s| format!("{before}{s}{after}")).unwrap_or_default()
}

/// A node's taps and bridges, one line each: `tap tap0`, `bridge br0 10.198.0.10/16 (ports eth1, tap0)`.
fn inside(lab: &Lab, i: usize) -> Vec<String> {
    let n = &lab.nodes[i];
    let owner = |t: &crate::model::Tap| {
        let w: Vec<String> =
            [("user", &t.user), ("group", &t.group)].iter().filter_map(|(k, v)| v.as_ref().map(|v| format!(" {k}={v}"))).collect();
        w.concat()
    };
    let taps = n.taps.iter().map(|t| format!("tap {}{}", tail(&t.ep).trim_end(), owner(t)));
    taps.chain(n.bridges.iter().map(|b| format!("bridge {} (ports {})", tail(&b.ep).trim_end(), b.ports.join(", ")))).collect()
}

/// Whether an endpoint is a node's own tap or bridge (drawn inside its box, not as a link).
fn is_inside(lab: &Lab, e: &Endpoint) -> bool {
    let n = &lab.nodes[e.node];
    n.taps.iter().any(|t| t.ep.ifname == e.ifname) || n.bridges.iter().any(|b| b.ep.ifname == e.ifname)
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
        let label: Vec<String> = [node_label(lab, i, "\\n")].into_iter().chain(inside(lab, i)).collect();
        let _ = writeln!(s, "  \"{}\" [label=\"{}\"];", lab.nodes[i].name, label.join("\\n"));
    }
    for l in &lab.links {
        let _ = writeln!(
            s,
            "  \"{}\" -- \"{}\" [taillabel=\"{}\", headlabel=\"{}\", fontsize=9{}];",
            lab.nodes[l.a.node].name,
            lab.nodes[l.b.node].name,
            tail(&l.a),
            tail(&l.b),
            space(&l.space, ", label=\"space ", "\"")
        );
    }
    for lan in &lab.lans {
        let _ = writeln!(s, "  \"lan:{}\" [shape=ellipse, label=\"LAN {}{}\"];", lan.name, lan.name, space(&lan.space, "\\nspace ", ""));
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
        let label: Vec<String> = [node_label(lab, i, "<br/>")].into_iter().chain(inside(lab, i)).collect();
        let _ = writeln!(s, "  {}[\"{}\"]", lab.nodes[i].name, label.join("<br/>"));
    }
    for l in &lab.links {
        let (a, b, sp) = (tail(&l.a), tail(&l.b), space(&l.space, " (space ", ")"));
        let _ = writeln!(s, "  {} ---|\"{a} ↔ {b}{sp}\"| {}", lab.nodes[l.a.node].name, lab.nodes[l.b.node].name);
    }
    for lan in &lab.lans {
        let _ = writeln!(s, "  lan_{}((LAN {}{}))", lan.name.replace('-', "_"), lan.name, space(&lan.space, ", space ", ""));
        for m in &lan.members {
            let _ = writeln!(s, "  lan_{} ---|\"{}\"| {}", lan.name.replace('-', "_"), tail(m), lab.nodes[m.node].name);
        }
    }
    s
}

/// An SVG picture of the topology and what drew it: Graphviz (`dot -Tsvg`, 10 s deadline) when
/// it is installed, else [`builtin_svg`]. `VPNLAB_DOT` names another `dot` (`none`: never).
pub fn svg(lab: &Lab) -> (String, &'static str) {
    let prog = crate::config::get().dot.clone().unwrap_or_else(|| "dot".into());
    match (prog != "none").then(|| graphviz_svg(&prog, &svg_dot(lab))).flatten() {
        Some(svg) => (svg, "Graphviz dot"),
        None => (builtin_svg(lab), "the built-in layout (no Graphviz `dot` found)"),
    }
}

/// `dot -Tsvg` of `src`, from `<svg` on (no XML prolog, doctype or comments before it); `None`
/// when dot is missing, fails or takes longer than 10 s.
fn graphviz_svg(prog: &str, src: &str) -> Option<String> {
    use std::io::{Read, Seek, Write};
    // Files rather than pipes: nothing can fill up while we wait with a deadline.
    let mut input = tempfile::tempfile().ok()?;
    input.write_all(src.as_bytes()).ok()?;
    input.rewind().ok()?;
    let mut output = tempfile::tempfile().ok()?;
    let mut child = std::process::Command::new(prog)
        .arg("-Tsvg")
        .stdin(input)
        .stdout(output.try_clone().ok()?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    match crate::process::wait_deadline(&mut child, deadline) {
        Ok(Some(st)) if st.success() => {}
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    }
    let mut svg = String::new();
    output.rewind().ok()?;
    output.read_to_string(&mut svg).ok()?;
    let at = svg.find("<svg")?;
    Some(svg[at..].trim_end().to_string())
}

/// A node's box in the pictures of the HTML report: its name, its daemons, then each interface
/// with its addresses (`eth0 10.0.0.1/24`), so that links need only the interface names.
fn box_lines(lab: &Lab, i: usize) -> Vec<String> {
    let mut out: Vec<String> = node_label(lab, i, "\n").split('\n').map(str::to_string).collect();
    out.extend(lab.endpoints().filter(|e| e.node == i && !is_inside(lab, e)).map(|e| tail(e).trim_end().to_string()));
    out.extend(inside(lab, i));
    out
}

/// The dot that [`svg`] renders: interfaces and addresses inside the boxes, links labelled with
/// their two interface names in the middle (dot makes room for middle labels; head and tail
/// labels overlap the boxes in a left-to-right layout).
fn svg_dot(lab: &Lab) -> String {
    let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut s = format!(
        "graph \"{}\" {{\n  rankdir=LR; nodesep=0.3; ranksep=0.6;\n  node [shape=box, fontname=monospace, fontsize=11];\n  edge [fontname=monospace, fontsize=9, fontcolor=\"#444444\"];\n",
        q(&lab.id)
    );
    for i in 0..lab.nodes.len() {
        let lines = box_lines(lab, i);
        // The name and daemons centred, the interfaces left-aligned (`\l`).
        let head: Vec<String> = lines.iter().enumerate().filter(|(k, l)| *k == 0 || l.starts_with('[')).map(|(_, l)| q(l)).collect();
        let ifs: String =
            lines.iter().enumerate().filter(|(k, l)| *k != 0 && !l.starts_with('[')).map(|(_, l)| format!("{}\\l", q(l))).collect();
        let _ = writeln!(s, "  \"{}\" [label=\"{}\\n{ifs}\"];", q(&lab.nodes[i].name), head.join("\\n"));
    }
    for l in &lab.links {
        let (a, b) = (&lab.nodes[l.a.node].name, &lab.nodes[l.b.node].name);
        let _ = writeln!(s, "  \"{}\" -- \"{}\" [label=\"{} - {}\"];", q(a), q(b), q(&l.a.ifname), q(&l.b.ifname));
    }
    for lan in &lab.lans {
        let _ = writeln!(s, "  \"lan:{}\" [shape=ellipse, label=\"LAN {}\"];", q(&lan.name), q(&lan.name));
        for m in &lan.members {
            let _ = writeln!(s, "  \"lan:{}\" -- \"{}\" [label=\"{}\"];", q(&lan.name), q(&lab.nodes[m.node].name), q(&m.ifname));
        }
    }
    s.push_str("}\n");
    s
}

/// XML text and attribute escaping for the built-in SVG.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A layered drawing without Graphviz: nodes and LANs in columns by their distance (in hops) from
/// the first node, like dot's `rankdir=LR`; boxes with the interfaces and addresses, links as
/// straight lines labelled with their interface names, LANs as ellipses.
pub fn builtin_svg(lab: &Lab) -> String {
    let n = lab.nodes.len();
    // Vertices: nodes, then LANs; edges: (from, to, label).
    let mut edges: Vec<(usize, usize, String)> =
        lab.links.iter().map(|l| (l.a.node, l.b.node, format!("{} - {}", l.a.ifname, l.b.ifname))).collect();
    for (i, lan) in lab.lans.iter().enumerate() {
        edges.extend(lan.members.iter().map(|m| (n + i, m.node, m.ifname.clone())));
    }
    let total = n + lab.lans.len();
    let mut level = vec![usize::MAX; total];
    for start in 0..total {
        if level[start] != usize::MAX {
            continue;
        }
        level[start] = 0;
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for (a, b, _) in &edges {
                let w = if *a == v {
                    *b
                } else if *b == v {
                    *a
                } else {
                    continue;
                };
                if level[w] == usize::MAX {
                    level[w] = level[v] + 1;
                    queue.push_back(w);
                }
            }
        }
    }
    let label = |v: usize| -> Vec<String> {
        if v < n {
            box_lines(lab, v)
        } else {
            vec![format!("LAN {}", lab.lans[v - n].name)]
        }
    };
    let labels: Vec<Vec<String>> = (0..total).map(label).collect();
    let (char_w, line_h, gap_x, gap_y, pad) = (7.3, 15.0, 110.0, 30.0, 12.0);
    let box_w = labels.iter().flatten().map(|l| l.chars().count()).max().unwrap_or(4) as f64 * char_w + 20.0;
    let box_h = |v: usize| labels[v].len() as f64 * line_h + 12.0;
    let cols = level.iter().max().map_or(1, |m| m + 1);
    let mut col_y = vec![pad; cols];
    let mut pos = vec![(0.0, 0.0); total];
    for v in 0..total {
        let c = level[v];
        pos[v] = (pad + c as f64 * (box_w + gap_x), col_y[c]);
        col_y[c] += box_h(v) + gap_y;
    }
    let width = pad * 2.0 + cols as f64 * box_w + cols.saturating_sub(1) as f64 * gap_x;
    let height = col_y.iter().copied().fold(0.0, f64::max) - gap_y + pad;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"topology builtin\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"monospace\" font-size=\"12\">\n<title>{}</title>\n",
        esc(&lab.id)
    );
    let center = |v: usize| (pos[v].0 + box_w / 2.0, pos[v].1 + box_h(v) / 2.0);
    for (a, b, l) in &edges {
        let ((x1, y1), (x2, y2)) = (center(*a), center(*b));
        let _ = writeln!(s, "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"#555\" stroke-width=\"1.5\"/>");
        let (mx, my) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0 - 4.0);
        let _ = writeln!(
            s,
            "<text x=\"{mx:.1}\" y=\"{my:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#444\" stroke=\"#fff\" stroke-width=\"3\" paint-order=\"stroke\">{}</text>",
            esc(l)
        );
    }
    for (v, lines) in labels.iter().enumerate() {
        let (x, y) = pos[v];
        let h = box_h(v);
        if v < n {
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{box_w:.1}\" height=\"{h:.1}\" rx=\"4\" fill=\"#eef3fb\" stroke=\"#335\"/>"
            );
        } else {
            let (cx, cy) = center(v);
            let _ = writeln!(
                s,
                "<ellipse cx=\"{cx:.1}\" cy=\"{cy:.1}\" rx=\"{:.1}\" ry=\"{:.1}\" fill=\"#f4f0e6\" stroke=\"#553\"/>",
                box_w / 2.0,
                h / 2.0
            );
        }
        for (i, l) in lines.iter().enumerate() {
            // The name (and daemons) centred, the interfaces left-aligned.
            let (tx, anchor) = if i == 0 || l.starts_with('[') || v >= n { (x + box_w / 2.0, "middle") } else { (x + 10.0, "start") };
            let _ = writeln!(
                s,
                "<text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
                y + 6.0 + line_h * (i as f64 + 0.8),
                esc(l)
            );
        }
    }
    s.push_str("</svg>");
    s
}

const BEGIN: &str = "<!-- topology: generated by `vpnlab show LAB --format mermaid`; a test keeps it current -->";
const END: &str = "<!-- /topology -->";

/// The topology section every lab README ends with.
pub fn readme_block(lab: &Lab) -> String {
    format!("{BEGIN}\n## Topology\n\n```mermaid\n{}```\n{END}\n", mermaid(lab))
}

/// Replaces (or appends) the topology section of the lab's README.md; returns whether it changed.
pub fn update_readme(lab: &Lab) -> std::io::Result<bool> {
    let path = lab.dir.join("README.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| format!("# {}\n", lab.id));
    let body = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &old[..a], &old[b + END.len()..].trim_start_matches('\n')),
        _ => old.clone(),
    };
    let new = format!("{}\n\n{}", body.trim_end_matches('\n'), readme_block(lab));
    if new != old {
        std::fs::write(&path, &new)?;
    }
    Ok(new != old)
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

    #[test]
    fn the_builtin_svg_is_well_formed_with_every_node_lan_and_address() {
        let svg = builtin_svg(&lab());
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
        for want in
            ["a", "b", "[openvpn]", "c", "LAN lan", "eth0 10.0.0.1/24", "eth1 10.1.0.1/24", "eth0 10.1.0.2/24", "eth0 - eth0", "eth1"]
        {
            assert!(texts.contains(&want), "{want} in {texts:?}");
        }
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("rect")).count(), 3);
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("ellipse")).count(), 1);
        // a-b, lan-b, lan-c
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("line")).count(), 3);
        assert_eq!(esc("<a href='x'>&\""), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
    }

    #[test]
    fn taps_bridges_and_spaces_are_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let lab = crate::model::parse(
            &dir.path().join("lab.toml"),
            "[lab]\ntitle='t'\n[nodes.s]\ntaps=['tap0']\n[[nodes.s.bridges]]\nname='br0'\nports=['eth1','tap0']\naddresses=['10.1.0.1/24']\n[nodes.h]\n[nodes.l]\n[[links]]\nspace='home1'\na='l:eth0 192.168.1.10/24'\nb='s:eth0 192.168.1.1/24'\n[[lans]]\nname='office'\nmembers=['s:eth1','h:eth0 10.1.0.2/24']\n[scenarios.s]\nsteps=[]\n",
        )
        .unwrap();
        let t = text(&lab);
        assert!(t.contains("tap tap0") && t.contains("bridge br0 10.1.0.1/24 (ports eth1, tap0)") && t.contains("(space home1)"), "{t}");
        let m = mermaid(&lab);
        assert!(m.contains("s[\"s<br/>tap tap0<br/>bridge br0 10.1.0.1/24 (ports eth1, tap0)\"]") && m.contains("(space home1)"), "{m}");
        assert!(dot(&lab).contains("bridge br0 10.1.0.1/24 (ports eth1, tap0)"));
        let svg = builtin_svg(&lab);
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"bridge br0 10.1.0.1/24 (ports eth1, tap0)") && !texts.contains(&"br0 10.1.0.1/24"), "{texts:?}");
    }

    #[test]
    fn graphviz_renders_the_dot_when_installed() {
        if std::process::Command::new("dot").arg("-V").output().is_err() {
            assert!(graphviz_svg("dot", "graph{}").is_none());
            return;
        }
        let svg = graphviz_svg("dot", &svg_dot(&lab())).expect("dot renders its own input");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains(">LAN lan<") && svg.contains(">eth0 10.0.0.1/24<") && svg.contains(">eth0 &#45; eth0<"), "{svg}");
        assert!(graphviz_svg("dot", "this is not dot").is_none());
        assert!(graphviz_svg("/nonexistent/dot", "graph{}").is_none());
    }
}
