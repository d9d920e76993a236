//! Tests of the lab model: parsing and validation errors.

use super::lab::nft_families;
use super::*;

const BASE: &str = r#"[lab]
title = "t"

[nodes.a]
[nodes.b]
routes = ["default via 10.0.0.1"]

[[links]]
a = "a:eth0 10.0.0.1/24"
b = "b:eth0 10.0.0.2/24"

[services.srv]
node = "a"
run = "openvpn --config x.conf"
ready = "Initialization Sequence Completed"

[scenarios.s]
steps = ["b: ping 10.0.0.1", "log srv /Initialization/"]
"#;

fn lab_err(src: &str) -> InputError {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lab.toml");
    parse(&file, src).unwrap_err()
}

/// (line, column) of the first occurrence of `needle` in `src`.
fn pos(src: &str, needle: &str) -> (usize, usize) {
    crate::error::line_col(src, src.find(needle).unwrap_or_else(|| panic!("{needle} not in src")))
}

#[test]
fn kernel_needs_declared_and_derived() {
    let dir = tempfile::tempdir().unwrap();
    let src = BASE
        .replace("title = \"t\"", "title = \"t\"\nkernel = [\"netem\"]")
        .replace("[nodes.a]\n", "[nodes.a]\nnft = \"table inet f { chain c { type filter hook forward priority 0; } }\"\nsysctl = { \"net.ipv4.fib_multipath_hash_seed\" = \"1\" }\n")
        .replace("[scenarios.s]", "[scenarios.t]\nsteps = [\"b: trace 10.0.0.1\", \"a: impair eth0 drop every 2\"]\n[scenarios.s]");
    let lab = parse(&dir.path().join("lab.toml"), &src).unwrap();
    use KernelFeature::*;
    assert_eq!(lab.kernel_needs(Some("s")), [NftInet, MultipathHashSeed, Netem]);
    assert_eq!(lab.kernel_needs(Some("t")), [NftInet, MultipathHashSeed, Netem, Nfqueue]);
    assert_eq!(lab.kernel_needs(None), [NftInet, MultipathHashSeed, Netem, Nfqueue]);
    assert_eq!(lab.sysctl_uses.len(), 1);
    assert_eq!((lab.sysctl_uses[0].line, lab.sysctl_uses[0].key.as_str()), (7, "net.ipv4.fib_multipath_hash_seed"));
    assert_eq!(nft_families("table ip nat {\n chain p { }\n}\ntable ip6 x {}"), [NftIpv4]);
    let e = lab_err(&BASE.replace("title = \"t\"", "title = \"t\"\nkernel = [\"nft\"]"));
    assert!(e.msg.contains("unknown kernel feature `nft`") && e.hint.contains("nft-inet, nft-ipv4"), "{e:?}");
}

#[test]
fn base_lab_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let lab = parse(&dir.path().join("lab.toml"), BASE).unwrap();
    assert_eq!(lab.nodes.len(), 2);
    assert_eq!(lab.services[0].argv, ["openvpn", "--config", "x.conf"]);
    assert_eq!(lab.owner_of("10.0.0.2".parse().unwrap()), Some(1));
    assert_eq!(lab.programs(), ["openvpn", "ping"]);
}

#[test]
fn nodes_and_services_keep_document_order() {
    let src = BASE.replace("[nodes.a]\n[nodes.b]", "[nodes.z]\n[nodes.b]\n[nodes.a]");
    let dir = tempfile::tempdir().unwrap();
    let lab = parse(&dir.path().join("lab.toml"), &src).unwrap();
    let names: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["z", "b", "a"]);
}

#[test]
fn toml_syntax_error_is_located() {
    let src = BASE.replace("title = \"t\"", "title = \"t");
    let e = lab_err(&src);
    assert_eq!(e.line, 2, "{e}");
    assert!(e.to_string().contains("lab.toml:2:"), "{e}");
}

#[test]
fn unknown_key_is_located_with_the_fix() {
    let src = BASE.replace("ready =", "redy =");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "redy"), "{e}");
    assert!(e.msg.contains("unknown field `redy`"), "{e}");
    assert!(e.hint.contains("LAB_FORMAT.md"), "{e}");
}

#[test]
fn unknown_node_in_a_link() {
    let src = BASE.replace("b = \"b:eth0", "b = \"c:eth0");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "c:eth0"), "{e}");
    assert!(e.msg.contains("unknown node `c`") && e.hint.contains("a, b"), "{e}");
}

#[test]
fn bad_cidr() {
    let src = BASE.replace("10.0.0.2/24", "10.0.0.300/24");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "10.0.0.300/24"), "{e}");
    assert!(e.msg.contains("CIDR"), "{e}");
    let src = BASE.replace("10.0.0.2/24", "10.0.0.2");
    assert!(lab_err(&src).msg.contains("prefix length"));
}

#[test]
fn duplicate_address_names_both_places() {
    let src = BASE.replace("10.0.0.2/24", "10.0.0.1/24");
    let e = lab_err(&src);
    assert_eq!(e.line, 10, "{e}");
    assert!(e.msg.contains("already used at line 9"), "{e}");
}

#[test]
fn missing_file() {
    let src = BASE.replace("[nodes.a]", "[nodes.a]\nfiles = [\"server.conf\"]");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "server.conf"), "{e}");
    assert!(e.msg.contains("does not exist"), "{e}");
}

#[test]
fn service_on_unknown_node() {
    let src = BASE.replace("node = \"a\"", "node = \"x\"");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "x\"\nrun"), "{e}");
    assert!(e.msg.contains("unknown node `x`"), "{e}");
}

#[test]
fn step_naming_a_missing_service_or_node() {
    let src = BASE.replace("log srv", "log svr");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "svr"), "{e}");
    assert!(e.msg.contains("unknown service `svr`") && e.msg.contains("srv"), "{e}");
    let src = BASE.replace("\"b: ping", "\"q: ping");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "q: ping"), "{e}");
}

#[test]
fn route_through_an_unknown_interface() {
    let src = BASE.replace("default via 10.0.0.1", "default via 10.0.0.1 dev eth9");
    let e = lab_err(&src);
    assert!(e.msg.contains("no interface `eth9`") && e.hint.contains("eth0"), "{e}");
    let src = BASE.replace("default via 10.0.0.1", "default via 10.0.0.x");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "10.0.0.x"), "{e}");
}

#[test]
fn ipv6_links_routes_rules_and_steps() {
    let src = BASE
        .replace("b = \"b:eth0 10.0.0.2/24\"", "b = \"b:eth0 10.0.0.2/24 2001:db8::2/64\"")
        .replace("a = \"a:eth0 10.0.0.1/24\"", "a = \"a:eth0 10.0.0.1/24 2001:db8::1/64\"")
        .replace(
            "routes = [\"default via 10.0.0.1\"]",
            "routes = [\"default via 10.0.0.1\", \"default via 2001:db8::1\", \"2001:db8:9::/48 via fe80::1 dev eth0 table 100\"]\nrules = [\"from 2001:db8::2 table 100\"]",
        )
        .replace("\"b: ping 10.0.0.1\"", "\"b: ping 2001:db8::1\", \"b: ip route add 2001:db8:7::/48 via 2001:db8::1\"");
    let dir = tempfile::tempdir().unwrap();
    let lab = parse(&dir.path().join("lab.toml"), &src).unwrap();
    let b = &lab.nodes[1];
    assert_eq!(b.routes.iter().map(|r| r.v6).collect::<Vec<_>>(), [false, true, true]);
    assert!(b.rules[0].v6);
    // Bad IPv6 input: one located error naming the word.
    let bad = src.replace("via fe80::1 dev eth0", "via fe80::1");
    let e = lab_err(&bad);
    assert_eq!((e.line, e.col), pos(&bad, "fe80::1"), "{e}");
    assert!(e.msg.contains("link-local"), "{e}");
    let bad = src.replace("default via 2001:db8::1", "2001:db8:5::/64 via 10.0.0.1");
    let e = lab_err(&bad);
    let (line, col) = pos(&bad, "2001:db8:5::/64 via 10.0.0.1");
    assert_eq!((e.line, e.col), (line, col + 20), "{e}");
    assert!(e.msg.contains("is an IPv4 address, but this route is IPv6"), "{e}");
    let bad = src.replace("from 2001:db8::2 table", "from 2001:db8::2 to 10.0.0.0/8 table");
    let e = lab_err(&bad);
    assert_eq!((e.line, e.col), pos(&bad, "10.0.0.0/8"), "{e}");
    let bad = src.replace("2001:db8::2/64", "2001:db8::zz/64");
    let e = lab_err(&bad);
    assert_eq!((e.line, e.col), pos(&bad, "2001:db8::zz/64"), "{e}");
    let bad = src.replace("b: ping 2001:db8::1", "b: ping -I 10.0.0.2 2001:db8::1");
    let e = lab_err(&bad);
    assert_eq!((e.line, e.col), pos(&bad, "10.0.0.2 2001"), "{e}");
    let bad = src.replace("add 2001:db8:7::/48 via 2001:db8::1", "add 2001:db8:7::/48 via 10.0.0.1");
    let e = lab_err(&bad);
    let (line, col) = pos(&bad, "2001:db8:7::/48 via 10.0.0.1");
    assert_eq!((e.line, e.col), (line, col + 20), "{e}");
}

#[test]
fn bad_durations_regexes_and_sysctls() {
    assert!(lab_err(&BASE.replace("ready = \"Initialization Sequence Completed\"", "ready = \"(\"")).msg.contains("bad regex"));
    assert!(lab_err(&BASE.replace("[nodes.a]", "[nodes.a]\nsysctl = { \"kernel.panic\" = \"1\" }")).msg.contains("host"));
    assert!(lab_err(&BASE.replace("ready = ", "timeout = \"soon\"\nready = ")).msg.contains("duration"));
}

#[test]
fn duplicate_interface_and_self_link() {
    let src = BASE.replace("b = \"b:eth0 10.0.0.2/24\"", "b = \"a:eth0 10.0.0.2/24\"");
    let e = lab_err(&src);
    assert!(e.msg.contains("already has an interface `eth0`"), "{e}");
}

#[test]
fn no_scenarios_or_nodes() {
    assert!(lab_err("[lab]\ntitle='t'\n[nodes.a]\n").msg.contains("no scenarios"));
    assert!(lab_err("[lab]\ntitle='t'\n").msg.contains("no nodes"));
}

#[test]
fn impossible_service_order_is_rejected() {
    let src = BASE.replace("steps = [\"b: ping 10.0.0.1\", \"log srv /Initialization/\"]", "steps = [\"stop srv\", \"restart srv\"]");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "restart srv"), "{e}");
    assert!(e.msg.contains("not running"), "{e}");
    let src = BASE.replace("steps = [\"b: ping 10.0.0.1\", \"log srv /Initialization/\"]", "steps = [\"start srv\"]");
    assert!(lab_err(&src).msg.contains("already running"));
    let src = BASE.replace("ready = \"Init", "autostart = false\nready = \"Init");
    let e = lab_err(&src);
    assert!(e.msg.contains("has not been started"), "{e}");
    let ok = src.replace("steps = [\"b: ping", "steps = [\"start srv\", \"b: ping");
    let dir = tempfile::tempdir().unwrap();
    assert!(parse(&dir.path().join("lab.toml"), &ok).is_ok());
}

#[test]
fn daemon_program_skips_wrappers() {
    let v = |s: &str| split_words(s).unwrap();
    assert_eq!(daemon_program(&v("openvpn --config x")), "openvpn");
    assert_eq!(daemon_program(&v("setpriv --securebits +keep_caps_locked -- /usr/sbin/openvpn --config x")), "openvpn");
    assert_eq!(daemon_program(&v("setpriv --securebits +keep_caps_locked openvpn --config x")), "openvpn");
    assert_eq!(daemon_program(&v("env A=1 pluto --nofork")), "pluto");
}

#[test]
fn split_words_quotes() {
    assert_eq!(split_words(r#"a 'b c' "d \" e" f\ g"#).unwrap(), ["a", "b c", "d \" e", "f g"]);
    assert!(split_words("a 'b").is_err());
    // POSIX (shlex): in "..." a backslash escapes only $ ` " \ and a newline; a word starting
    // with # starts a comment; a \ at the end is an error.
    assert_eq!(split_words(r#""a\b" c#d #e f"#).unwrap(), [r"a\b", "c#d"]);
    assert!(split_words("a \"b").is_err());
    assert!(split_words("a\\").is_err());
}

#[test]
fn bad_quoting_in_run_is_located() {
    let src = BASE.replace("run = \"openvpn --config x.conf\"", "run = \"openvpn --config 'x.conf\"");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "openvpn --config 'x"), "{e}");
    assert!(e.msg.contains("unclosed") && e.hint == "fix the quoting", "{e}");
}

#[test]
fn a_capture_needs_a_step_after_it_and_an_interface_of_its_node() {
    let steps = "steps = [\"b: ping 10.0.0.1\", \"log srv /Initialization/\"]";
    let src = BASE.replace(steps, "steps = [\"b: ping 10.0.0.1\", \"a: capture eth0 2 'icmp'\"]");
    let e = lab_err(&src);
    assert_eq!((e.line, e.col), pos(&src, "a: capture"), "{e}");
    assert!(e.msg.contains("no step follows"), "{e}");
    let src = BASE.replace(steps, "steps = [\"a: capture eth7 2 'icmp'\", \"b: ping 10.0.0.1\"]");
    let e = lab_err(&src);
    assert!(e.msg.contains("no interface `eth7`") && e.hint.contains("eth0"), "{e}");
    let ok =
        BASE.replace(steps, "steps = [\"a: capture eth0 4 'icmp' -> 4 packets\", \"b: capture any 1 within 1s\", \"b: ping 10.0.0.1\"]");
    let dir = tempfile::tempdir().unwrap();
    let lab = parse(&dir.path().join("lab.toml"), &ok).unwrap();
    assert!(lab.programs().contains(&"tcpdump".to_string()));
}

#[test]
fn deadline_and_step_timeout_have_defaults_and_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lab = parse(&dir.path().join("lab.toml"), BASE).unwrap();
    assert_eq!((lab.deadline, lab.step_timeout), (std::time::Duration::from_secs(60), std::time::Duration::from_secs(10)));
    let src = BASE.replace("title = \"t\"", "title = \"t\"\ndeadline = \"2m\"\nstep_timeout = \"1.5s\"");
    let lab = parse(&dir.path().join("lab.toml"), &src).unwrap();
    assert_eq!((lab.deadline, lab.step_timeout), (std::time::Duration::from_secs(120), std::time::Duration::from_millis(1500)));
    for (key, hint) in [("deadline", "60s or 2m"), ("step_timeout", "10s or 500ms")] {
        let bad = BASE.replace("title = \"t\"", &format!("title = \"t\"\n{key} = \"10\""));
        let e = lab_err(&bad);
        assert_eq!((e.line, e.msg.as_str()), (3, "`10` is not a duration"), "{e}");
        assert!(e.hint.contains(hint), "{e}");
    }
}

#[test]
fn a_relative_program_is_a_script_of_the_lab_folder() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lab.toml");
    let script = dir.path().join("bridge-start");
    std::fs::write(&script, "#!/bin/sh\ntrue\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = BASE.replace("[nodes.a]\n", "[nodes.a]\nsetup = [\"./bridge-start --up\"]\n");
    let lab = parse(&file, &src).unwrap();
    // Copied into the node's directory (its cwd), and not looked for on PATH.
    assert!(lab.nodes[0].files.iter().any(|f| f.rel == std::path::Path::new("bridge-start")), "{:?}", lab.nodes[0].files);
    assert!(!lab.programs().iter().any(|p| p.contains("bridge-start")), "{:?}", lab.programs());
    // The same for an `sh` step of that node.
    let steps = src.replace("steps = [\"b: ping", "steps = [\"a: sh ./bridge-start --down\", \"b: ping");
    assert!(parse(&file, &steps.replace("setup = [\"./bridge-start --up\"]\n", "")).unwrap().nodes[0].files.len() == 1);
    // Not executable: refused where the command names it, unless `modes` makes it executable.
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = parse(&file, &src).unwrap_err();
    assert_eq!((e.line, e.col), pos(&src, "./bridge-start"), "{e}");
    assert!(e.msg.contains("`./bridge-start` is not executable") && e.hint.contains("chmod +x bridge-start"), "{e}");
    let with_mode = src.replace("setup = [", "files = [\"bridge-start\"]\nmodes = { \"bridge-start\" = \"755\" }\nsetup = [");
    assert_eq!(parse(&file, &with_mode).unwrap().nodes[0].files.len(), 1);
    // Not in the lab folder, or outside the node's directory: located errors.
    let missing = src.replace("./bridge-start", "./bridge-stop");
    let e = parse(&file, &missing).unwrap_err();
    assert_eq!((e.line, e.col), pos(&missing, "./bridge-stop"), "{e}");
    assert!(e.msg.contains("`./bridge-stop` is not a file of the lab folder") && e.hint.contains("next to lab.toml"), "{e}");
    let e = parse(&file, &src.replace("./bridge-start", "../bridge-start")).unwrap_err();
    assert!(e.msg.contains("outside the node's directory"), "{e}");
}
