//! Stage 4, rewriting: each config copied into the lab line for line, changing only what cannot
//! work in a lab, every change listed and marked.

use super::syntax::{split_line, Config, Item};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

// ====================================================================== rewriting

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Server,
    Client,
}

/// What the rewrite needs to know besides the config itself.
pub(super) struct Ctx<'a> {
    pub(super) role: Role,
    /// Where the config came from (for the header).
    pub(super) source: &'a str,
    pub(super) lab_id: &'a str,
    pub(super) server_wan: Ipv4Addr,
    /// Client: whether the server accepts clients without certificates.
    pub(super) server_cert_optional: bool,
    /// Server: whether the client sends a username/password.
    pub(super) client_sends_password: bool,
}

/// One change made to a config.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Change {
    /// `line 8`, `lines 21-25`, or `added`.
    pub(super) at: String,
    /// `` `dh dh2048.pem` -> `dh none` ``, `` commented out `daemon` ``...
    pub(super) what: String,
    pub(super) why: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at == "added" {
            write!(f, "added {} ({})", self.what, self.why)
        } else {
            write!(f, "{}: {} ({})", self.at, self.what, self.why)
        }
    }
}

/// A rewritten config.
#[derive(Debug, Default)]
pub(super) struct Rewritten {
    pub(super) text: String,
    /// Every change, in file order.
    pub(super) changes: Vec<Change>,
    /// Extra files for the node (name, contents).
    pub(super) files: Vec<(String, String)>,
    /// `client-config-dir` is used (server).
    pub(super) uses_ccd: bool,
}

pub(super) const WHY_PKI: &str =
    "the harness generates a fresh CA, server.crt/key, client.crt/key and ta.key into every node's directory per run";
pub(super) const WHY_LOG: &str = "the harness runs the daemon in the foreground and captures stdout/stderr as its log";
pub(super) const WHY_SCRIPT: &str =
    "the customer's scripts and plugins are not in the lab; re-create what they do with lab steps or node setup";

/// The reasons of `changes`, each once, in order of first use.
pub(super) fn distinct_reasons(changes: &[Change]) -> Vec<&str> {
    let mut v: Vec<&str> = Vec::new();
    for c in changes {
        if !v.contains(&c.why.as_str()) {
            v.push(&c.why);
        }
    }
    v
}

/// Quotes a word for an OpenVPN config line if it needs it.
pub(super) fn quote(w: &str) -> String {
    if !w.is_empty() && !w.chars().any(|c| c.is_whitespace() || "\"'\\#;".contains(c)) {
        return w.to_string();
    }
    let mut s = String::from("\"");
    for c in w.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

pub(super) fn line_of(name: &str, args: &[&str]) -> String {
    std::iter::once(name.to_string()).chain(args.iter().map(|a| quote(a))).collect::<Vec<_>>().join(" ")
}

/// What happens to one item.
pub(super) enum Act {
    Keep,
    /// Replace by these lines, with the reason.
    Replace(Vec<String>, String),
    /// Comment the item out, with the reason.
    Comment(String),
}

pub(super) fn rewrite(conf: &Config, ctx: &Ctx) -> Rewritten {
    let mut out = Rewritten::default();
    let mut body = String::new();
    let me = if ctx.role == Role::Server { "server" } else { "client" };
    let pki = |what: &str| -> Vec<String> {
        match what {
            "ca" | "capath" => vec!["ca ca.crt".into()],
            "cert" => vec![format!("cert {me}.crt")],
            "key" => vec![format!("key {me}.key")],
            _ => vec!["ca ca.crt".into(), format!("cert {me}.crt"), format!("key {me}.key")],
        }
    };
    let tls_mode = conf.first("client").is_some()
        || conf.first("tls-client").is_some()
        || conf.first("tls-server").is_some()
        || conf.first("server").is_some()
        || (conf.first("mode").is_some() && !conf.has("secret"));
    // The client's `remote` that stays: the first one; `<connection>` blocks without it go.
    let first_remote_line = conf.items.iter().find_map(|i| match i {
        Item::Directive { name, line, .. } if name == "remote" => Some(*line),
        _ => None,
    });
    let keep_conn = conf.items.iter().find_map(|i| match i {
        Item::Directive { name, conn, .. } if name == "remote" => Some(*conn),
        _ => None,
    });
    let mut removed_password_check = false;
    let mut seen_dco = false;
    let mut dropped_conns: Vec<usize> = Vec::new();
    // The reason of the previous line if it was commented out (consecutive ones share a marker).
    let mut last_comment: Option<String> = None;
    // Likewise for replaced lines: the reason is given once for a run of them.
    let mut last_replace: Option<String> = None;

    for item in &conf.items {
        let mut commented_now = false;
        let mut replaced_now = false;
        // `<connection>` blocks other than the one with the first remote are commented out.
        let conn_of = match item {
            Item::Directive { conn, .. } | Item::Inline { conn, .. } => *conn,
            Item::Connection { conn, .. } => Some(*conn),
            Item::Text { .. } => None,
        };
        if ctx.role == Role::Client {
            if let (Some(c), Some(keep)) = (conn_of, keep_conn) {
                if keep != Some(c) {
                    if !dropped_conns.contains(&c) {
                        dropped_conns.push(c);
                        let line = match item {
                            Item::Directive { line, .. }
                            | Item::Inline { line, .. }
                            | Item::Connection { line, .. }
                            | Item::Text { line, .. } => *line,
                        };
                        out.changes.push(Change {
                            at: format!("line {line}"),
                            what: format!("commented out <connection> block {}", c + 1),
                            why: "the lab has one server; the block with the first remote is kept".into(),
                        });
                        let _ = writeln!(body, "# vpnlab: commented out: another <connection> (the lab has one server)");
                    }
                    let raw = match item {
                        Item::Directive { raw, .. } | Item::Inline { raw, .. } | Item::Connection { raw, .. } | Item::Text { raw, .. } => {
                            raw
                        }
                    };
                    for l in raw.lines() {
                        let _ = writeln!(body, "# {l}");
                    }
                    continue;
                }
            }
        }
        match item {
            Item::Text { raw, .. } | Item::Connection { raw, .. } => {
                let _ = writeln!(body, "{raw}");
            }
            Item::Inline { line, end, raw, tag, .. } => {
                let act = match tag.as_str() {
                    "ca" | "cert" | "key" | "pkcs12" => Act::Replace(pki(tag), WHY_PKI.into()),
                    "dh" => Act::Replace(vec!["dh none".into()], "OpenVPN 2.6 uses ECDHE; no DH parameters needed".into()),
                    "tls-auth" => {
                        Act::Replace(vec!["tls-auth ta.key".into()], format!("{WHY_PKI}; the direction stays that of `key-direction`"))
                    }
                    "tls-crypt" => Act::Replace(vec!["tls-crypt ta.key".into()], WHY_PKI.into()),
                    "tls-crypt-v2" => Act::Replace(
                        vec!["tls-crypt ta.key".into()],
                        format!("{WHY_PKI}; the lab has no tls-crypt-v2 keys, so tls-crypt (v1) stands in"),
                    ),
                    "secret" => Act::Replace(vec!["secret ta.key".into()], WHY_PKI.into()),
                    "auth-user-pass" if ctx.role == Role::Client => {
                        out.files.push(("auth.txt".into(), "lab-user\nlab-password\n".into()));
                        Act::Replace(
                            vec!["auth-user-pass auth.txt".into()],
                            "lab credentials in auth.txt; the customer's are not copied".into(),
                        )
                    }
                    "crl-verify" | "extra-certs" | "http-proxy-user-pass" => {
                        Act::Comment(format!("the customer's <{tag}> has no meaning with the lab's per-run PKI/network"))
                    }
                    _ => Act::Keep,
                };
                match act {
                    Act::Keep => {
                        let _ = writeln!(body, "{raw}");
                    }
                    Act::Replace(lines, why) => {
                        out.changes.push(Change {
                            at: format!("lines {line}-{end}"),
                            what: format!("inline <{tag}> -> `{}`", lines.join("`, `")),
                            why: why.clone(),
                        });
                        if last_replace.as_deref() == Some(why.as_str()) {
                            let _ = writeln!(body, "# vpnlab: inline <{tag}> block ({} lines) replaced", end - line - 1);
                        } else {
                            let _ = writeln!(body, "# vpnlab: inline <{tag}> block ({} lines) replaced: {why}", end - line - 1);
                        }
                        last_replace = Some(why);
                        replaced_now = true;
                        for l in lines {
                            let _ = writeln!(body, "{l}");
                        }
                    }
                    Act::Comment(why) => {
                        // Inline bodies are not echoed (they may hold secrets).
                        out.changes.push(Change {
                            at: format!("lines {line}-{end}"),
                            what: format!("removed inline <{tag}>"),
                            why: why.clone(),
                        });
                        let _ = writeln!(body, "# vpnlab: inline <{tag}> block ({} lines) removed: {why}", end - line - 1);
                    }
                }
            }
            Item::Directive { line, raw, name, args, .. } => {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                let arg0 = a.first().copied().unwrap_or("");
                let client = ctx.role == Role::Client;
                let act = match name.as_str() {
                    "ca" | "capath" | "cert" | "key" | "pkcs12" => Act::Replace(pki(name), WHY_PKI.into()),
                    "dh" if arg0 != "none" => {
                        Act::Replace(vec!["dh none".into()], "OpenVPN 2.6 uses ECDHE; no DH parameters needed".into())
                    }
                    "tls-auth" => {
                        Act::Replace(vec![line_of("tls-auth", &[&["ta.key"], a.get(1..).unwrap_or(&[])].concat())], WHY_PKI.into())
                    }
                    "tls-crypt" => Act::Replace(vec!["tls-crypt ta.key".into()], WHY_PKI.into()),
                    "tls-crypt-v2" => Act::Replace(
                        vec!["tls-crypt ta.key".into()],
                        format!("{WHY_PKI}; the lab has no tls-crypt-v2 keys, so tls-crypt (v1) stands in"),
                    ),
                    "secret" => Act::Replace(vec![line_of("secret", &[&["ta.key"], a.get(1..).unwrap_or(&[])].concat())], WHY_PKI.into()),
                    "crl-verify" | "extra-certs" | "askpass" => {
                        Act::Comment("it names a file of the customer's PKI; the lab's PKI is generated per run".into())
                    }
                    "daemon" | "log" | "log-append" | "status" | "writepid" | "syslog" | "inetd" => Act::Comment(WHY_LOG.into()),
                    "script-security"
                    | "up"
                    | "down"
                    | "client-connect"
                    | "client-disconnect"
                    | "learn-address"
                    | "route-up"
                    | "route-pre-down"
                    | "ipchange"
                    | "tls-verify"
                    | "auth-user-pass-verify"
                    | "tls-crypt-v2-verify"
                    | "plugin" => {
                        if matches!(name.as_str(), "auth-user-pass-verify" | "plugin") {
                            removed_password_check = true;
                        }
                        Act::Comment(WHY_SCRIPT.into())
                    }
                    "ifconfig-pool-persist" | "replay-persist" if arg0.contains('/') => {
                        let base =
                            Path::new(arg0).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "ipp.txt".into());
                        let mut w: Vec<&str> = vec![&base];
                        w.extend(a.iter().skip(1));
                        Act::Replace(
                            vec![line_of(name, &w)],
                            "files the daemon writes stay in its node's directory, never on the host".into(),
                        )
                    }
                    "chroot" | "cd" => Act::Comment("the daemon runs in its node's directory, which holds all its files".into()),
                    "config" => Act::Comment("included files are not copied; paste what the lab needs into this file".into()),
                    "management-hold" | "management-query-passwords" => {
                        Act::Comment("it would wait for a management client that the lab does not run".into())
                    }
                    "user" if !matches!(arg0, "nobody" | "root") => Act::Replace(
                        vec!["user nobody".into()],
                        format!("user `{arg0}` need not exist on the lab machine; nobody keeps the privilege drop"),
                    ),
                    "group" if !matches!(arg0, "nogroup" | "nobody" | "root") => Act::Replace(
                        vec!["group nogroup".into()],
                        format!("group `{arg0}` need not exist on the lab machine; nogroup keeps the privilege drop"),
                    ),
                    "verb" if arg0 == "0" => Act::Replace(
                        vec!["verb 1".into()],
                        "at verb 0 OpenVPN does not log `Initialization Sequence Completed`, which the lab waits for".into(),
                    ),
                    "disable-dco" => {
                        seen_dco = true;
                        Act::Keep
                    }
                    "client-config-dir" if !client => {
                        out.uses_ccd = true;
                        if arg0 == "ccd" {
                            Act::Keep
                        } else {
                            Act::Replace(
                                vec!["client-config-dir ccd".into()],
                                "the lab's ccd folder is copied into the node's directory".into(),
                            )
                        }
                    }
                    "local" if !client => {
                        let new = format!("local {}", ctx.server_wan);
                        if arg0 == ctx.server_wan.to_string() {
                            Act::Keep
                        } else {
                            Act::Replace(vec![new], "the lab's server WAN address".into())
                        }
                    }
                    "local" => Act::Comment("the customer's client address does not exist in the lab".into()),
                    "remote" if client && Some(*line) == first_remote_line => {
                        let mut w: Vec<String> = vec![ctx.server_wan.to_string()];
                        w.extend(args.iter().skip(1).cloned());
                        let w: Vec<&str> = w.iter().map(String::as_str).collect();
                        Act::Replace(vec![line_of("remote", &w)], "the lab's server WAN address; port and protocol are kept".into())
                    }
                    "remote" if client => Act::Comment("the lab has one server: only the first remote is kept".into()),
                    "http-proxy" | "socks-proxy" | "http-proxy-option" | "http-proxy-user-pass" if client => {
                        Act::Comment("the lab has no proxy between client and server".into())
                    }
                    "auth-user-pass" if client => {
                        out.files.push(("auth.txt".into(), "lab-user\nlab-password\n".into()));
                        Act::Replace(
                            vec!["auth-user-pass auth.txt".into()],
                            "lab credentials in auth.txt; the customer's are not copied".into(),
                        )
                    }
                    "verify-x509-name" => {
                        let peer = if client { "server" } else { "client" };
                        Act::Replace(vec![format!("verify-x509-name {peer} name")], format!("the lab's {peer} certificate has CN={peer}"))
                    }
                    "block-outside-dns" | "register-dns" | "win-sys" | "ip-win32" | "tap-sleep" | "dhcp-renew" | "dhcp-release"
                    | "dhcp-pre-release" | "service" | "show-net-up" | "allow-nonadmin" | "windows-driver" | "route-method"
                    | "pause-exit" | "dev-node" => Act::Comment(
                        "a Windows-only option: OpenVPN on Linux refuses it (or, for dev-node, cannot open the adapter)".into(),
                    ),
                    "tls-remote" => Act::Comment("removed in OpenVPN 2.4 (and the lab's server certificate has CN=server)".into()),
                    "ns-cert-type" => Act::Replace(
                        vec![line_of("remote-cert-tls", &[arg0])],
                        "the lab's certificates carry no Netscape cert type; remote-cert-tls, its replacement, checks the EKU they have"
                            .into(),
                    ),
                    "remote-cert-ku" => Act::Comment(
                        "the lab's certificates carry digitalSignature+keyAgreement (ECDSA); remote-cert-tls checks the EKU".into(),
                    ),
                    _ => Act::Keep,
                };
                match act {
                    Act::Replace(lines, _)
                        if lines.len() == 1
                            && split_line(&lines[0]).ok() == Some(std::iter::once(name.clone()).chain(args.iter().cloned()).collect()) =>
                    {
                        let _ = writeln!(body, "{raw}");
                    }
                    Act::Keep => {
                        let _ = writeln!(body, "{raw}");
                    }
                    Act::Replace(lines, why) => {
                        out.changes.push(Change {
                            at: format!("line {line}"),
                            what: format!("`{}` -> `{}`", raw.trim(), lines.join("`, `")),
                            why: why.clone(),
                        });
                        if last_replace.as_deref() == Some(why.as_str()) {
                            let _ = writeln!(body, "# vpnlab: was `{}`", raw.trim());
                        } else {
                            let _ = writeln!(body, "# vpnlab: was `{}`: {why}", raw.trim());
                        }
                        last_replace = Some(why);
                        replaced_now = true;
                        for l in lines {
                            let _ = writeln!(body, "{l}");
                        }
                    }
                    Act::Comment(why) => {
                        out.changes.push(Change {
                            at: format!("line {line}"),
                            what: format!("commented out `{}`", raw.trim()),
                            why: why.clone(),
                        });
                        if last_comment.as_deref() != Some(why.as_str()) {
                            let _ = writeln!(body, "# vpnlab: commented out: {why}");
                        }
                        let _ = writeln!(body, "# {}", raw.trim_start());
                        last_comment = Some(why);
                        commented_now = true;
                    }
                }
            }
        }
        if !replaced_now {
            last_replace = None;
        }
        if !commented_now {
            last_comment = None;
        }
    }

    // Lines the lab needs that the config does not have.
    let mut added: Vec<(String, String)> = Vec::new();
    if !seen_dco {
        added.push(("disable-dco".into(), "the lab's kernel has no data-channel-offload module".into()));
    }
    if tls_mode {
        if !conf.has("ca") && !conf.has("capath") && !conf.has("pkcs12") {
            added.push(("ca ca.crt".into(), format!("the config names no CA (an included file?); {WHY_PKI}")));
        }
        let needs_cert = ctx.role == Role::Server || !ctx.server_cert_optional;
        if needs_cert && !conf.has("cert") && !conf.has("pkcs12") {
            added.push((format!("cert {me}.crt"), format!("the config names no certificate; {WHY_PKI}")));
        }
        if needs_cert && !conf.has("key") && !conf.has("pkcs12") {
            added.push((format!("key {me}.key"), format!("the config names no key; {WHY_PKI}")));
        }
    }
    if ctx.role == Role::Server && tls_mode && !conf.has("dh") {
        added.push((
            "dh none".into(),
            "OpenVPN 2.6 refuses a TLS server without --dh (\"You must define DH file\"); none means ECDHE only".into(),
        ));
    }
    if ctx.role == Role::Server && removed_password_check && ctx.client_sends_password {
        added.push(("script-security 2".into(), "for the stand-in password check below".into()));
        added.push((
            "auth-user-pass-verify /bin/true via-env".into(),
            "a stand-in for the customer's password check, which is commented out above: it accepts the lab's credentials".into(),
        ));
    }
    if !added.is_empty() {
        let _ = writeln!(body, "\n# vpnlab: added for the lab:");
        for (l, why) in &added {
            out.changes.push(Change { at: "added".into(), what: format!("`{l}`"), why: why.clone() });
            let _ = writeln!(body, "# {why}\n{l}");
        }
    }

    let mut head = String::new();
    let _ = writeln!(head, "# vpnlab: rewritten by `vpnlab new` from {} for the lab {}.", ctx.source, ctx.lab_id);
    if out.changes.is_empty() {
        let _ = writeln!(head, "# vpnlab: nothing needed changing; every line below is the customer's.");
    } else {
        let _ = writeln!(head, "# vpnlab: every other line is the customer's, in order. Changes (each marked `# vpnlab:` where it is):");
        for c in &out.changes {
            let at = if c.at == "added" { "added at the end".to_string() } else { c.at.clone() };
            let _ = writeln!(head, "# vpnlab:   {at}: {}", c.what);
        }
        let _ = writeln!(head, "# vpnlab: why:");
        for why in distinct_reasons(&out.changes) {
            let _ = writeln!(head, "# vpnlab:   - {why}");
        }
    }
    head.push('\n');
    out.text = head + &body;
    out
}
