//! Property tests of the lab parser (`vpnlab_model::parse`): whatever the text, it must not
//! panic, and it must return either a lab or one `InputError` that points inside the text
//! (1 <= line <= lines + 1, 1 <= col <= that line's length + 1) with a message and a hint.
//!
//! Three generators: arbitrary strings, TOML-ish strings (the characters TOML cares about, so
//! the parser gets past the first byte), and mutations of a real lab file
//! (labs/openvpn/missing-return-route/lab.toml): bytes and lines deleted, duplicated, swapped or
//! replaced, tokens inserted (`[nodes.x]`, steps, huge numbers, unicode, escapes, long strings),
//! and string values replaced, which reaches the validation of routes, steps, endpoints...
//!
//! Runs in a few seconds; PROPTEST_CASES=N scales every property to N cases. No regression file
//! is written (a failure prints the shrunk input; add it to a unit test beside the parser).

use proptest::prelude::*;
use proptest::test_runner::Config;
use std::cell::Cell;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Once;
use vpnlab_model as model;

const LAB: &str = include_str!("../../labs/openvpn/missing-return-route/lab.toml");

/// The real lab's path, so that the files it names (`basic-udp-client.conf`, ...) exist.
fn lab_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../labs/openvpn/missing-return-route/lab.toml")
}

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    Config { cases, failure_persistence: None, max_shrink_iters: 4096, ..Config::default() }
}

thread_local! {
    static IN_PARSE: Cell<bool> = const { Cell::new(false) };
}

/// Keeps the parser's panics (caught and reported by `check`) off stderr, where every shrinking
/// step would print them again; other panics go to the usual hook.
fn quiet_parser_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_PARSE.with(Cell::get) {
                prev(info)
            }
        }));
    });
}

/// What to show of a failing input: all of it when short, else the lines that differ from the
/// lab file (numbered as in the input).
fn describe(src: &str) -> String {
    if src.len() <= 600 {
        return format!("input: {src:?}");
    }
    let orig: HashSet<&str> = LAB.split('\n').collect();
    let mut out = format!("input: {} bytes; lines that differ from the lab file:", src.len());
    for (i, l) in src.split('\n').enumerate().filter(|(_, l)| !orig.contains(l)).take(20) {
        let shown: String = l.chars().take(300).collect();
        out += &format!("\n  {:>3}: {shown:?}{}", i + 1, if shown.len() < l.len() { " ..." } else { "" });
    }
    out
}

/// The property: no panic, and an error that points inside the text with a message and a hint.
fn check(src: &str) -> Result<(), TestCaseError> {
    quiet_parser_panics();
    IN_PARSE.with(|f| f.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| model::parse(&lab_path(), src)));
    IN_PARSE.with(|f| f.set(false));
    let result = match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            let msg: String = msg.chars().take(160).collect();
            return Err(TestCaseError::fail(format!("model::parse panicked: {msg}...\n{}", describe(src))));
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let lines = src.lines().count();
            let at = describe(src);
            prop_assert!(e.line >= 1 && e.line <= lines + 1, "line {} outside 1..={} in {e}\n{at}", e.line, lines + 1);
            prop_assert!(e.col >= 1, "col {} < 1 in {e}\n{at}", e.col);
            // The column is within its line (in characters, as line_col counts them).
            let line_len = src.split('\n').nth(e.line - 1).map(|l| l.chars().count()).unwrap_or(0);
            prop_assert!(e.col <= line_len + 1, "col {} past the end of line {} ({} chars) in {e}\n{at}", e.col, e.line, line_len);
            prop_assert!(!e.msg.trim().is_empty(), "empty message: {e:?}\n{at}");
            prop_assert!(!e.hint.trim().is_empty(), "empty hint: {e:?}\n{at}");
            Ok(())
        }
    }
}

/// Fragments that mean something to TOML or to the lab format, plus hostile values.
fn token() -> impl Strategy<Value = String> {
    let fixed: Vec<&'static str> = vec![
        "[nodes.x]",
        "[nodes.client]",
        "[nodes.\"a b\"]",
        "[[links]]",
        "[[lans]]",
        "[services.x]",
        "[scenarios.x]",
        "[scenarios.\"\"]",
        "[lab]",
        "[pki]",
        "\"a: ping 1.2.3.4\"",
        "\"client: ping 10.198.0.1 -> reachable\"",
        "\"client: ping 10.198.0.1 -> loss 200%\"",
        "\"gateway: ip route add 10.200.0.0/24 via 10.198.0.10 table 999999999999\"",
        "\"server: show ip route\"",
        "\"log server 'MULTI: bad source'\"",
        "\"restart client\"",
        "\"client:eth0 192.0.2.2/33\"",
        "\"nosuch:eth0 1.1.1.1/24\"",
        "a = \"client:eth0 192.0.2.2/24\"",
        "b = \"client:eth1 192.0.2.3/24\"",
        "steps = [\"client: ping 1.2.3.4\"]",
        "routes = [\"default via 300.1.1.1\"]",
        "sysctl = { \"net.ipv4.ip_forward\" = [1] }",
        "node = \"client\"",
        "run = \"\"",
        "ready = \"(\"",
        "timeout = \"-5s\"",
        "mtu = -1",
        "999999999999",
        "99999999999999999999999999",
        "-0",
        "1e999",
        "nan",
        "true",
        "=",
        "==",
        "\"",
        "'",
        "\"\"\"",
        "'''",
        "\\",
        "\\u00e9",
        "\\t",
        "\\uD800",
        "[",
        "]",
        "{",
        "}",
        "[[",
        "]]",
        ",",
        ".",
        "#",
        "\n",
        "\r\n",
        "\r",
        "\t",
        "\u{0}",
        "\u{feff}",
        "é",
        "日本語",
        "🦀",
        "\u{10ffff}",
        "e\u{301}",
        "\u{3000}",
        "\u{a0}",
        "\u{2003}",
        "\u{85}",
        "->",
        "::",
        ":",
        "/",
        "1979-05-27T07:32:00Z",
    ];
    prop_oneof![
        4 => proptest::sample::select(fixed).prop_map(str::to_string),
        1 => "\\PC{0,12}",
        1 => (proptest::sample::select(vec!["a", "é", "日", "🦀", "[", "\"", "0"]), 1000usize..20000).prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// A value for a string's content: valid-looking words, unicode, escapes, or garbage.
fn content() -> impl Strategy<Value = String> {
    let fixed: Vec<&'static str> = vec![
        "client: ping 10.198.0.1 -> reachable",
        "client: ping 10.198.0.1 -> unreachable",
        "client: ping 10.198.0.1 -> loss 101%",
        "client: ping 999999999999",
        "client: ping 10.198.0.1 -> é",
        "client:\tping é 日",
        "\\té: ping 日",
        "\\u00e9\\u00e9 日本 x",
        "\\tdefault via é 日",
        "default via 10.198.0.1 dev é\\t日",
        "10.0.0.0/8 via 1.2.3.4 table 99999999999 é",
        "from 10.0.0.0/8 lookup 日",
        "gateway: ip route add 10.200.0.0/24 via 10.198.0.10 metric é",
        "log server '日本",
        "log server 'x' after 日",
        "restart é",
        "server: sh \\\"unterminated",
        "client:eth0 192.0.2.2/24 mtu 日",
        "client:é 192.0.2.2/24",
        "client:eth0 \\u00e9/24",
        "é:eth0 192.0.2.2/24",
        "openvpn --config 'unterminated",
        "openvpn \\t--config 日 \"x",
        "(?P<",
        "\\\\p{Nope}",
        "日s",
        "5日",
        "999999999999999999999s",
        "\\tdefault\u{3000}via 日",
        "",
        " ",
    ];
    // Words of the lab syntax joined by ASCII and Unicode whitespace, with TOML escapes: decoded
    // offsets differ from source offsets, which error locations must survive.
    let words = "(\\\\t|\\\\u00e9|\\\\u3000|\u{3000}|\u{a0}|\u{2003}| |é|日|🦀|->|client|client:eth0|ping|default|via|dev|table|loss|[0-9./:%]{1,8}|[a-z]{1,6}){0,14}";
    // A valid start (so validation reaches the later words), maybe escaped, then more words.
    let starts: Vec<&'static str> = vec![
        "client: ping 10.198.0.1",
        "client:\\tping 10.198.0.1",
        "\\tclient: ping 10.198.0.1 ->",
        "gateway: ip route add 10.200.0.0/24",
        "log server 'MULTI: bad source'",
        "default via 192.0.2.1",
        "\\tdefault\\tvia 192.0.2.1",
        "\\u00e9",
        "10.198.0.0/16 dev eth0",
        "from 10.0.0.0/8",
        "client:eth0",
        "client:eth0\\t192.0.2.2/24",
        "openvpn --config basic-udp-client.conf",
    ];
    let seps: Vec<&'static str> = vec![" ", "\t", "\u{3000}", "\u{a0}", "\u{2003}", "\\t", "\\u3000", "\\u00a0"];
    let structured =
        (proptest::sample::select(starts), proptest::sample::select(seps), words).prop_map(|(a, sep, w)| format!("{a}{sep}{w}"));
    prop_oneof![
        3 => proptest::sample::select(fixed).prop_map(str::to_string),
        2 => words,
        3 => structured,
        1 => "\\PC{0,30}".prop_map(|s| s.replace('\\', "\\\\").replace('"', "\\\"")),
        1 => "\\PC{0,30}",
        1 => token(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteByte(usize),
    DuplicateByte(usize),
    ReplaceByte(usize, u8),
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    ReplaceLine(usize, String),
    InsertLine(usize, String),
    InsertToken(usize, String),
    /// Replaces the content of the N-th (mod count) one-line `"..."` string.
    ReplaceString(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<usize>();
    prop_oneof![
        2 => idx.prop_map(Mutation::DeleteByte),
        1 => idx.prop_map(Mutation::DuplicateByte),
        2 => (idx, any::<u8>()).prop_map(|(i, b)| Mutation::ReplaceByte(i, b)),
        2 => idx.prop_map(Mutation::DeleteLine),
        1 => idx.prop_map(Mutation::DuplicateLine),
        1 => (idx, idx).prop_map(|(i, j)| Mutation::SwapLines(i, j)),
        1 => (idx, token()).prop_map(|(i, t)| Mutation::ReplaceLine(i, t)),
        2 => (idx, token()).prop_map(|(i, t)| Mutation::InsertLine(i, t)),
        3 => (idx, token()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        5 => (idx, content()).prop_map(|(i, t)| Mutation::ReplaceString(i, t)),
    ]
}

fn apply(src: &str, m: &Mutation) -> String {
    let mut bytes = src.as_bytes().to_vec();
    let lossy = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let mut lines: Vec<String> = src.split('\n').map(str::to_string).collect();
    let join = |l: Vec<String>| l.join("\n");
    match m {
        Mutation::DeleteByte(i) if !bytes.is_empty() => {
            bytes.remove(i % bytes.len());
            lossy(bytes)
        }
        Mutation::DuplicateByte(i) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes.insert(i, bytes[i]);
            lossy(bytes)
        }
        Mutation::ReplaceByte(i, b) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes[i] = *b;
            lossy(bytes)
        }
        Mutation::DeleteLine(i) => {
            lines.remove(i % lines.len());
            join(lines)
        }
        Mutation::DuplicateLine(i) => {
            let i = i % lines.len();
            lines.insert(i, lines[i].clone());
            join(lines)
        }
        Mutation::SwapLines(i, j) => {
            let n = lines.len();
            lines.swap(i % n, j % n);
            join(lines)
        }
        Mutation::ReplaceLine(i, t) => {
            let n = lines.len();
            lines[i % n] = t.clone();
            join(lines)
        }
        Mutation::InsertLine(i, t) => {
            let i = i % (lines.len() + 1);
            lines.insert(i, t.clone());
            join(lines)
        }
        Mutation::InsertToken(i, t) => {
            let i = i % (bytes.len() + 1);
            bytes.splice(i..i, t.bytes());
            lossy(bytes)
        }
        Mutation::ReplaceString(k, t) => {
            let spans = string_spans(src);
            if spans.is_empty() {
                return src.to_string();
            }
            let (a, b) = spans[k % spans.len()];
            format!("{}{}{}", &src[..a], t, &src[b..])
        }
        _ => src.to_string(),
    }
}

/// Byte ranges of the contents of one-line basic strings `"..."` (escapes honoured).
fn string_spans(src: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (start, line) in line_starts(src) {
        let b = line.as_bytes();
        let mut i = 0;
        let mut open: Option<usize> = None;
        while i < b.len() {
            match (b[i], open) {
                (b'#', None) => break,
                (b'"', None) => open = Some(i + 1),
                (b'\\', Some(_)) => i += 1,
                (b'"', Some(o)) => {
                    out.push((start + o, start + i));
                    open = None;
                }
                _ => {}
            }
            i += 1;
        }
    }
    out
}

fn line_starts(src: &str) -> Vec<(usize, &str)> {
    let mut v = Vec::new();
    let mut at = 0;
    for l in src.split('\n') {
        v.push((at, l));
        at += l.len() + 1;
    }
    v
}

#[test]
fn the_unmutated_lab_parses() {
    model::parse(&lab_path(), LAB).expect("labs/openvpn/missing-return-route/lab.toml must be valid");
    assert!(string_spans(LAB).len() > 20);
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_strings_never_panic(src in "\\PC{0,300}|(?s).{0,300}") {
        check(&src)?;
    }

    #[test]
    fn tomlish_strings_never_panic(src in "([a-z._\\-]{1,8}|[\\[\\]{}=,.\"'#\\\\ \\n\\t]|[0-9]{1,15}|é|日|🦀|\u{3000}|\\\\u00e9|\\\\t){0,80}") {
        check(&src)?;
    }
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn mutated_lab_never_panics(muts in proptest::collection::vec(mutation(), 1..6)) {
        let mut src = LAB.to_string();
        for m in &muts {
            src = apply(&src, m);
        }
        check(&src)?;
    }
}
