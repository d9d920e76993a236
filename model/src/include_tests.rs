//! Tests of `include`: merging, errors located in the fragment, conflicts naming both places,
//! cycles, paths relative to the including file.

use crate::{load, InputError, Lab};
use std::path::Path;

/// Writes `files` (path relative to a temp dir, text) and loads `lab/lab.toml`.
fn with_files(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Lab, InputError>) {
    let dir = tempfile::tempdir().unwrap();
    for (p, text) in files {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let r = load(&dir.path().join("lab"));
    (dir, r)
}

const FRAG: &str = r#"# two gateways
[nodes.west]
hostname = "west"
sysctl = { "net.ipv4.ip_forward" = "1" }
setup = ["mkdir -p run"]
[nodes.east]

[[links]]
a = "west:eth1 192.1.2.45/24"
b = "east:eth1 192.1.2.23/24"

[[sanitize]]
drop_blank = true
"#;

const LAB: &str = r#"include = ["../common/west-east.toml"]
[lab]
title = "t"
[nodes.west]
setup = ["touch x"]
[[sanitize]]
delete = "^debug"
[scenarios.s]
steps = ["west: ping 192.1.2.23"]
"#;

#[test]
fn a_fragment_merges_in_before_the_labs_own_tables() {
    let (_d, lab) = with_files(&[("common/west-east.toml", FRAG), ("lab/lab.toml", LAB)]);
    let lab = lab.unwrap();
    let names: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["west", "east"]);
    assert_eq!(lab.nodes[0].hostname, "west");
    assert_eq!(lab.nodes[0].setup, ["mkdir -p run", "touch x"]);
    assert_eq!(lab.links.len(), 1);
    // Where a sysctl is written (for `vpnlab check`'s warnings): the fragment, at its own line.
    let u = &lab.sysctl_uses[0];
    assert!(u.file.ends_with("lab/../common/west-east.toml") && (u.line, u.col) == (4, 36), "{u:?}");
    // The fragment's sanitizer first (it is included at the top), then the lab's.
    assert_eq!(lab.sanitizers.iter().map(|s| s.re.as_str()).collect::<Vec<_>>(), [r"^\s*$", "^debug"]);
    // The files the lab is made of besides its own (the UML guest must see their folders).
    assert_eq!(lab.includes.len(), 1, "{:?}", lab.includes);
    assert!(lab.includes[0].ends_with("lab/../common/west-east.toml"), "{:?}", lab.includes);
}

fn err_text(files: &[(&str, &str)]) -> (String, String) {
    let (d, r) = with_files(files);
    let Err(e) = r else { panic!("expected an error") };
    let root = d.path().canonicalize().unwrap();
    let text = e.to_string().replace(&d.path().display().to_string(), "T").replace(&root.display().to_string(), "T");
    (text, e.file.display().to_string().replace(&d.path().display().to_string(), "T"))
}

#[test]
fn an_unknown_key_in_a_fragment_names_the_fragments_file_and_line() {
    let frag = FRAG.replace("[nodes.east]", "[nodes.east]\nroutez = []");
    let (text, file) = err_text(&[("common/west-east.toml", &frag), ("lab/lab.toml", LAB)]);
    assert_eq!(file, "T/lab/../common/west-east.toml");
    assert!(text.starts_with("T/lab/../common/west-east.toml:7:1: error: unknown field `routez`"), "{text}");
    // A bad value in a fragment too (validated after merging).
    let frag = FRAG.replace("192.1.2.23/24", "192.1.2.300/24");
    let (text, _) = err_text(&[("common/west-east.toml", &frag), ("lab/lab.toml", LAB)]);
    assert!(text.starts_with("T/lab/../common/west-east.toml:10:16: error: `192.1.2.300/24` is not an address"), "{text}");
    // And an error in the lab itself stays in the lab file, at its own line.
    let lab = LAB.replace("ping 192.1.2.23", "ping 192.1.2.23 -> maybe");
    let (text, _) = err_text(&[("common/west-east.toml", FRAG), ("lab/lab.toml", &lab)]);
    assert!(text.starts_with("T/lab/lab.toml:9:"), "{text}");
}

#[test]
fn a_conflict_names_both_places() {
    let lab = LAB.replace("setup = [\"touch x\"]", "hostname = \"w\"");
    let (text, _) = err_text(&[("common/west-east.toml", FRAG), ("lab/lab.toml", &lab)]);
    assert!(
        text.starts_with("T/lab/lab.toml:5:12: error: `hostname` of node `west` is set here and at T/lab/../common/west-east.toml:3:12"),
        "{text}"
    );
    let lab = LAB.replace("setup = [\"touch x\"]", "sysctl = { \"net.ipv4.ip_forward\" = \"0\" }");
    let (text, _) = err_text(&[("common/west-east.toml", FRAG), ("lab/lab.toml", &lab)]);
    assert!(
        text.contains("error: sysctl `net.ipv4.ip_forward` of node `west` is set here and at T/lab/../common/west-east.toml:4:36"),
        "{text}"
    );
    // The same address in the lab and the fragment: both places.
    let lab = format!("{LAB}[nodes.x]\n[[links]]\na = \"x:eth0 192.1.2.45/24\"\nb = \"east:eth0 192.1.2.1/24\"\n");
    let (text, _) = err_text(&[("common/west-east.toml", FRAG), ("lab/lab.toml", &lab)]);
    assert!(text.contains("lab.toml:12:") && text.contains("192.1.2.45 is already used at T/lab/../common/west-east.toml:9:"), "{text}");
    // An interface declared in both: both places.
    let lab = format!("{LAB}[[links]]\na = \"west:eth1 10.0.0.1/24\"\nb = \"east:eth5 10.0.0.2/24\"\n");
    let (text, _) = err_text(&[("common/west-east.toml", FRAG), ("lab/lab.toml", &lab)]);
    assert!(
        text.contains("lab.toml:11:6: error: node `west` already has an interface `eth1` (at T/lab/../common/west-east.toml:9:6)"),
        "{text}"
    );
}

#[test]
fn include_cycles_are_refused_and_paths_resolve_from_the_including_file() {
    // common/west-east.toml includes b.toml (next to it, not next to the lab), which includes a.toml.
    let a = format!("include = [\"b.toml\"]\n{FRAG}");
    let b = "include = [\"./west-east.toml\"]\n";
    let (text, _) = err_text(&[("common/west-east.toml", &a), ("common/b.toml", b), ("lab/lab.toml", LAB)]);
    assert!(text.starts_with("T/lab/../common/b.toml:1:13: error: include cycle: T/lab/lab.toml -> "), "{text}");
    assert!(text.contains("west-east.toml -> T/common/b.toml -> T/common/west-east.toml"), "{text}");
    // Without the cycle, the nested fragment's nodes arrive.
    let b = "[nodes.road]\n";
    let (_d, lab) = with_files(&[("common/west-east.toml", &a), ("common/b.toml", b), ("lab/lab.toml", LAB)]);
    let lab = lab.unwrap();
    assert_eq!(lab.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["road", "west", "east"]);
    // A missing fragment: the include line of the lab.
    let (text, _) = err_text(&[("lab/lab.toml", LAB)]);
    assert!(text.starts_with("T/lab/lab.toml:1:13: error: cannot read `T/lab/../common/west-east.toml`"), "{text}");
}

#[test]
fn scenarios_stay_in_the_lab_file() {
    let frag = format!("{FRAG}[scenarios.x]\nsteps = []\n");
    let (text, _) = err_text(&[("common/west-east.toml", &frag), ("lab/lab.toml", LAB)]);
    assert!(text.contains("west-east.toml:14:2: error: unknown field `scenarios`"), "{text}");
    assert!(Path::new("x").is_relative());
}
