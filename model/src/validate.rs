//! The validator: raw tables -> [`Lab`](super::Lab), every problem one [`InputError`] at
//! `file:line:column` with a fix; names resolved to indices.

use super::lab::{Endpoint, FileSpec, KernelFeature, Lab, Lan, Link, Node, Scenario, Service, SysctlUse};
use super::lab_id;
use super::raw::RawLab;
use super::route::{parse_route, parse_rule};
use super::step::{parse_duration, parse_step, Action, Step};
use super::words::split_words;
use super::{bridge, ppp, step};
use crate::error::InputError;
use regex::Regex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Addresses declared so far, by (address space, address): where each was declared.
pub(super) type Addrs = HashMap<(Option<String>, IpAddr), usize>;

pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) src: &'a str,
    pub(super) dir: &'a Path,
    /// Which file each offset of `src` belongs to (the lab file, then its fragments).
    pub(super) sources: &'a crate::include::Sources,
}

pub(super) struct NameTable<'a> {
    pub(super) nodes: &'a [String],
    pub(super) services: &'a [String],
}

impl step::Names for NameTable<'_> {
    fn node(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == name)
    }
    fn service(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|n| n == name)
    }
    fn node_names(&self) -> String {
        self.nodes.join(", ")
    }
    fn service_names(&self) -> String {
        if self.services.is_empty() {
            "none declared".into()
        } else {
            self.services.join(", ")
        }
    }
}

impl Validator<'_> {
    pub(super) fn err(&self, offset: usize, msg: impl Into<String>, hint: impl Into<String>) -> InputError {
        self.sources.err(offset, msg, hint)
    }

    /// Offset of the first character inside a spanned string (past the opening quote).
    pub(super) fn inner(&self, s: &Spanned<String>) -> usize {
        let start = s.span().start;
        match self.src.as_bytes().get(start) {
            Some(b'"') | Some(b'\'') => {
                if self.src[start..].starts_with("\"\"\"") || self.src[start..].starts_with("'''") {
                    start + 3
                } else {
                    start + 1
                }
            }
            _ => start,
        }
    }

    /// The file offset of byte `off` of a spanned string's *decoded* value. Escapes (`\t`) and
    /// the newline TOML drops after `"""` make decoded and raw offsets differ; then the error
    /// points at the start of the string rather than somewhere wrong.
    pub(super) fn at(&self, s: &Spanned<String>, off: usize) -> usize {
        let start = self.inner(s);
        let raw = self.src.get(start..).unwrap_or("");
        if raw.starts_with(s.get_ref().as_str()) {
            start + off
        } else {
            start
        }
    }

    /// Locates the `[table.key]` header (or `key =`) of a map entry, for errors about a key.
    pub(super) fn key_offset(&self, table: &str, key: &str, fallback: usize) -> usize {
        for pat in [format!("[{table}.{key}]"), format!("[{table}.\"{key}\"]")] {
            if let Some(i) = self.src.find(&pat) {
                return i + table.len() + 2;
            }
        }
        fallback
    }

    pub(super) fn lab(&self, mut raw: RawLab) -> Result<Lab, InputError> {
        ppp::expand(self, &mut raw)?;
        let node_names: Vec<String> = raw.nodes.keys().cloned().collect();
        for (name, node) in &raw.nodes {
            check_name(name).map_err(|m| {
                self.err(self.key_offset("nodes", name, node.span().start), m, "use letters, digits and '-' (at most 15 characters)")
            })?;
        }
        if raw.nodes.is_empty() {
            return Err(self.err(0, "the lab has no nodes", "add at least one `[nodes.NAME]` table"));
        }
        let service_names: Vec<String> = raw.services.keys().cloned().collect();
        let names = NameTable { nodes: &node_names, services: &service_names };

        let mut kernel = Vec::new();
        for k in &raw.lab.kernel {
            kernel.push(match KernelFeature::parse(k.get_ref()) {
                Some(f) => f,
                None => {
                    let known: Vec<&str> = KernelFeature::ALL.iter().map(|f| f.name()).collect();
                    return Err(self.err(
                        self.inner(k),
                        format!("unknown kernel feature `{}`", k.get_ref()),
                        format!("known features: {}", known.join(", ")),
                    ));
                }
            });
        }
        let deadline = match &raw.lab.deadline {
            Some(d) => parse_duration(d.get_ref())
                .ok_or_else(|| self.err(self.inner(d), format!("`{}` is not a duration", d.get_ref()), "write it like 60s or 2m"))?,
            None => Duration::from_secs(60),
        };
        let step_timeout = match &raw.lab.step_timeout {
            Some(d) => parse_duration(d.get_ref())
                .ok_or_else(|| self.err(self.inner(d), format!("`{}` is not a duration", d.get_ref()), "write it like 10s or 500ms"))?,
            None => Duration::from_secs(10),
        };

        // Links and LANs: endpoints, interface names unique per node, addresses unique.
        let mut ifnames: HashMap<(usize, String), usize> = HashMap::new();
        let mut addrs: Addrs = HashMap::new();
        let mut spaces = bridge::Spaces::default();
        let mut links = Vec::new();
        for l in &raw.links {
            let space = self.space(&l.get_ref().space)?;
            let a = self.endpoint(&l.get_ref().a, &names, &mut ifnames, &mut addrs, &space)?;
            let b = self.endpoint(&l.get_ref().b, &names, &mut ifnames, &mut addrs, &space)?;
            spaces.of_ifs([&a, &b], &space);
            if a.node == b.node {
                return Err(self.err(
                    self.inner(&l.get_ref().b),
                    "a link joins two different nodes",
                    "use a second node, or a `[[lans]]` segment",
                ));
            }
            links.push(Link { a, b, mtu: l.get_ref().mtu, space });
        }
        let mut lans = Vec::new();
        let mut lan_names = Vec::new();
        for l in &raw.lans {
            let name = l.get_ref().name.get_ref().clone();
            check_long_name(&name).map_err(|m| self.err(self.inner(&l.get_ref().name), m, "use letters, digits and '-'"))?;
            if lan_names.contains(&name) {
                return Err(self.err(
                    self.inner(&l.get_ref().name),
                    format!("a LAN named `{name}` is declared twice"),
                    "give each [[lans]] its own name",
                ));
            }
            lan_names.push(name.clone());
            let space = self.space(&l.get_ref().space)?;
            let mut members = Vec::new();
            for m in &l.get_ref().members {
                members.push(self.endpoint(m, &names, &mut ifnames, &mut addrs, &space)?);
            }
            spaces.of_ifs(members.iter(), &space);
            lans.push(Lan { name, members, space });
        }
        // Taps and bridges inside the nodes (after the links, whose ends they may bridge).
        let mut inside = self.bridges(&raw, &mut ifnames, &mut addrs, &mut spaces)?;

        // Nodes.
        let mut nodes = Vec::new();
        let mut sysctl_uses = Vec::new();
        for (idx, (name, node)) in raw.nodes.iter().enumerate() {
            let node = node.get_ref();
            let mut sysctls = Vec::new();
            for (k, v) in &node.sysctl {
                let at = v.span().start;
                step::check_sysctl_key(k).map_err(|m| self.err(at, m, "set only net.* keys of the node"))?;
                let value = match v.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => (*b as u8).to_string(),
                    _ => return Err(self.err(at, format!("sysctl `{k}` wants a string or a number"), "write it like \"1\"")),
                };
                let (line, col) = self.sources.line_col(at);
                sysctl_uses.push(SysctlUse { key: k.clone(), line, col, file: self.sources.part(at).file.clone() });
                sysctls.push((k.clone(), value));
            }
            let has_if = |ifname: &str| ifnames.contains_key(&(idx, ifname.to_string()));
            let mut routes = Vec::new();
            for r in &node.routes {
                let route =
                    parse_route(r.get_ref()).map_err(|e| self.err(self.at(r, e.offset), e.msg, "write it as for `ip route add`"))?;
                for dev in route.devs() {
                    if !has_if(dev) {
                        return Err(self.err(
                            self.inner(r),
                            format!("node `{name}` has no interface `{dev}`"),
                            format!("interfaces of `{name}`: {}", self.ifaces_of(idx, &ifnames)),
                        ));
                    }
                }
                routes.push(route);
            }
            let mut rules = Vec::new();
            for r in &node.rules {
                let rule = parse_rule(r.get_ref()).map_err(|e| self.err(self.at(r, e.offset), e.msg, "write it as for `ip rule add`"))?;
                rules.push(rule);
            }
            let mut files = Vec::new();
            for f in &node.files {
                let rel = PathBuf::from(f.get_ref().trim_end_matches('/'));
                if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    return Err(self.err(
                        self.inner(f),
                        "a file must be a path inside the lab folder",
                        "put the file next to lab.toml and name it relative to it",
                    ));
                }
                if !self.dir.join(&rel).exists() {
                    return Err(self.err(
                        self.inner(f),
                        format!("file `{}` does not exist in {}", rel.display(), self.dir.display()),
                        "add the file to the lab folder or fix its name",
                    ));
                }
                files.push(FileSpec { rel });
            }
            let mut modes = Vec::new();
            for (p, m) in &node.modes {
                let mode = u32::from_str_radix(m.get_ref(), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| self.err(self.inner(m), format!("`{}` is not an octal mode", m.get_ref()), "write it like \"755\""))?;
                let path = PathBuf::from(p);
                if !files.iter().any(|f: &FileSpec| path.starts_with(&f.rel)) {
                    return Err(self.err(
                        self.inner(m),
                        format!("`{p}` is not one of the node's files"),
                        "list it (or its folder) in `files`",
                    ));
                }
                modes.push((path, mode));
            }
            let setup = node.setup.iter().map(|s| s.get_ref().clone()).collect();
            let hostname = match &node.hostname {
                Some(h) => {
                    super::sanitize::check_hostname(h.get_ref())
                        .map_err(|m| self.err(self.inner(h), m, "write a host name like \"west\" or \"west.example.org\""))?;
                    h.get_ref().clone()
                }
                None => name.clone(),
            };
            let (taps, bridges) = std::mem::take(&mut inside[idx]);
            nodes.push(Node {
                name: name.clone(),
                sysctls,
                routes,
                rules,
                files,
                modes,
                nft: node.nft.clone(),
                setup,
                hostname,
                taps,
                bridges,
            });
        }

        // Services.
        let mut services = Vec::new();
        for (name, svc) in &raw.services {
            check_long_name(name)
                .map_err(|m| self.err(self.key_offset("services", name, svc.span().start), m, "use letters, digits and '-'"))?;
            let svc = svc.get_ref();
            let node = names.node_idx(svc.node.get_ref()).map_err(|m| self.err(self.inner(&svc.node), m.0, m.1))?;
            let mut argv = split_words(svc.run.get_ref()).map_err(|m| self.err(self.inner(&svc.run), m, "fix the quoting"))?;
            if argv.is_empty() {
                return Err(self.err(self.inner(&svc.run), "`run` is empty", "give the daemon's command line"));
            }
            if let Some(p) = &svc.setpriv {
                let opts = split_words(p.get_ref()).map_err(|m| self.err(self.inner(p), m, "fix the quoting"))?;
                if opts.is_empty() || opts.iter().any(|o| o == "--") {
                    return Err(self.err(
                        self.inner(p),
                        "`setpriv` wants setpriv's options (without `--`)",
                        "e.g. setpriv = \"--securebits +keep_caps_locked\"",
                    ));
                }
                argv = ["setpriv".to_string()].into_iter().chain(opts).chain(["--".to_string()]).chain(argv).collect();
            }
            let ready =
                match &svc.ready {
                    Some(r) => Some(Regex::new(r.get_ref()).map_err(|e| {
                        self.err(self.inner(r), format!("bad regex: {e}"), "`ready` is a regex matched against each log line")
                    })?),
                    None => None,
                };
            let timeout = match &svc.timeout {
                Some(t) => parse_duration(t.get_ref())
                    .ok_or_else(|| self.err(self.inner(t), format!("`{}` is not a duration", t.get_ref()), "write it like 5s or 500ms"))?,
                None => Duration::from_secs(10),
            };
            let loc = self.sources.line_col(self.inner(&svc.run));
            services.push(Service {
                name: name.clone(),
                loc,
                loc_file: self.sources.part(self.inner(&svc.run)).file.clone(),
                node,
                argv,
                ready,
                timeout,
                autostart: svc.autostart,
                may_exit: svc.may_exit,
            });
        }

        let mut sanitizers = Vec::new();
        for s in &raw.sanitize {
            sanitizers.push(self.sanitizer(s)?);
        }

        let steps = |list: &[Spanned<String>]| -> Result<Vec<Step>, InputError> {
            list.iter()
                .map(|s| {
                    let at = self.inner(s);
                    let (when, rest) = step::split_condition(s.get_ref())
                        .map_err(|e| self.err(self.at(s, e.offset), e.msg, "see `Version conditions` in LAB_FORMAT.md"))?;
                    let action = parse_step(&s.get_ref()[rest..], &names)
                        .map_err(|e| self.err(self.at(s, rest + e.offset), e.msg, "see the step table in LAB_FORMAT.md"))?;
                    self.check_step(&action, at, &nodes, &services, &ifnames)?;
                    Ok(Step { action, when, text: s.get_ref().clone(), offset: at })
                })
                .collect()
        };
        let prelude = steps(&raw.lab.prelude)?;
        let mut scenarios = Vec::new();
        for (name, sc) in &raw.scenarios {
            check_long_name(name)
                .map_err(|m| self.err(self.key_offset("scenarios", name, sc.span().start), m, "use letters, digits and '-'"))?;
            let sc = sc.get_ref();
            let sc_steps = steps(&sc.steps)?;
            self.check_order(&services, prelude.iter().chain(sc_steps.iter()))?;
            scenarios.push(Scenario { name: name.clone(), about: sc.about.clone(), steps: sc_steps });
        }
        if scenarios.is_empty() {
            return Err(self.err(self.sources.parts[0].len, "the lab has no scenarios", "add `[scenarios.NAME]` with `steps = [...]`"));
        }

        self.local_programs(&raw, &mut nodes, &prelude, &scenarios)?;
        self.tcp_owners(&addrs, prelude.iter().chain(scenarios.iter().flat_map(|s| s.steps.iter())))?;
        for st in prelude.iter().chain(scenarios.iter().flat_map(|s| s.steps.iter())) {
            if let Action::Sysctl { key, .. } = &st.action {
                let (line, col) = self.sources.line_col(st.offset);
                sysctl_uses.push(SysctlUse { key: key.clone(), line, col, file: self.file.to_path_buf() });
            }
        }
        let mut includes: Vec<PathBuf> = Vec::new();
        for f in self.sources.parts.iter().map(|p| &p.file).filter(|f| f.as_path() != self.file) {
            if !includes.contains(f) {
                includes.push(f.clone());
            }
        }
        let dir = self.dir.to_path_buf();
        Ok(Lab {
            id: lab_id(&std::fs::canonicalize(&dir).unwrap_or(dir.clone())),
            dir,
            file: self.file.to_path_buf(),
            includes,
            title: raw.lab.title,
            source: raw.lab.source,
            kernel,
            sysctl_uses,
            deadline,
            step_timeout,
            pki: raw.pki,
            nodes,
            links,
            lans,
            services,
            sanitizers,
            prelude,
            scenarios,
        })
    }

    /// `line L, column C` in the same file as the error, else `FILE:L:C`.
    pub(super) fn place_of(&self, prev: usize, line: usize, col: usize) -> String {
        if self.sources.parts.len() == 1 {
            format!("line {line}, column {col}")
        } else {
            self.sources.place(prev)
        }
    }

    pub(super) fn ifaces_of(&self, node: usize, ifnames: &HashMap<(usize, String), usize>) -> String {
        let mut v: Vec<&str> = ifnames.keys().filter(|(n, _)| *n == node).map(|(_, i)| i.as_str()).collect();
        v.sort();
        if v.is_empty() {
            "none (it is on no link or LAN)".into()
        } else {
            v.join(", ")
        }
    }

    /// Services must be running for the steps that need them: replays start/stop through the
    /// prelude and a scenario's steps and rejects an impossible order.
    pub(super) fn check_order<'s>(&self, services: &[Service], steps: impl Iterator<Item = &'s Step>) -> Result<(), InputError> {
        use step::ServiceOp;
        let mut running: Vec<bool> = services.iter().map(|s| s.autostart).collect();
        let mut ever: Vec<bool> = running.clone();
        // A capture wraps the next step that is not a capture: one must follow it.
        let mut open_capture = None;
        for st in steps {
            open_capture = matches!(st.action, Action::Capture { .. }).then_some(st.offset);
            let (svc, needs_running, becomes) = match &st.action {
                Action::Service { op: ServiceOp::Start, service } => (*service, Some(false), Some(true)),
                Action::Service { op: ServiceOp::Stop, service } => (*service, Some(true), Some(false)),
                Action::Service { op: ServiceOp::Restart, service } => (*service, Some(true), Some(true)),
                Action::Log { service, .. } | Action::NoLog { service, .. } => (*service, None, None),
                _ => continue,
            };
            let name = &services[svc].name;
            match needs_running {
                Some(true) if !running[svc] => {
                    return Err(self.err(
                        st.offset,
                        format!("service `{name}` is not running at this step"),
                        format!("start it first (`start {name}`), or drop `autostart = false`"),
                    ))
                }
                Some(false) if running[svc] => {
                    return Err(self.err(
                        st.offset,
                        format!("service `{name}` is already running at this step"),
                        format!("use `restart {name}`, or set `autostart = false` on it"),
                    ))
                }
                None if !ever[svc] => {
                    return Err(self.err(
                        st.offset,
                        format!("service `{name}` has not been started before this step, so it has no log"),
                        format!("add `start {name}` before it"),
                    ))
                }
                _ => {}
            }
            if let Some(b) = becomes {
                running[svc] = b;
                ever[svc] |= b;
            }
        }
        if let Some(at) = open_capture {
            return Err(self.err(
                at,
                "a capture runs around the step after it, and no step follows this one",
                "add the step whose packets it should capture after it (e.g. a ping, a `log` wait or a command)",
            ));
        }
        Ok(())
    }

    /// Checks a step against the model beyond its syntax (interfaces of route steps exist).
    pub(super) fn check_step(
        &self,
        action: &Action,
        at: usize,
        nodes: &[Node],
        _services: &[Service],
        ifnames: &HashMap<(usize, String), usize>,
    ) -> Result<(), InputError> {
        if let Action::Impair { node, ifname, .. } | Action::Capture { node, ifname, .. } = action {
            let any = ifname == "any" && matches!(action, Action::Capture { .. });
            let daemon_made = ["tun", "tap", "ppp"].iter().any(|p| ifname.starts_with(p));
            if !any && !ifnames.contains_key(&(*node, ifname.clone())) && !daemon_made {
                return Err(self.err(
                    at,
                    format!("node `{}` has no interface `{ifname}`", nodes[*node].name),
                    format!("interfaces of `{}`: {}", nodes[*node].name, self.ifaces_of(*node, ifnames)),
                ));
            }
        }
        if let Action::RouteAdd { node, route } | Action::RouteDel { node, route } = action {
            for dev in route.devs() {
                if !ifnames.contains_key(&(*node, dev.to_string())) && !["tun", "tap", "ppp"].iter().any(|p| dev.starts_with(p)) {
                    return Err(self.err(
                        at,
                        format!("node `{}` has no interface `{dev}`", nodes[*node].name),
                        format!("interfaces of `{}`: {}", nodes[*node].name, self.ifaces_of(*node, ifnames)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses `node:ifname addr/prefix ...`; its addresses are unique within `space`.
    pub(super) fn endpoint(
        &self,
        s: &Spanned<String>,
        names: &NameTable,
        ifnames: &mut HashMap<(usize, String), usize>,
        addrs: &mut Addrs,
        space: &Option<String>,
    ) -> Result<Endpoint, InputError> {
        let at = self.inner(s);
        let text = s.get_ref();
        let mut words = text.split_whitespace();
        let head = words.next().ok_or_else(|| self.err(at, "empty endpoint", "write it as \"node:ifname 10.0.0.1/24\""))?;
        let (node_name, ifname) = head
            .split_once(':')
            .ok_or_else(|| self.err(at, format!("`{head}` is not NODE:IFNAME"), "write it as \"node:ifname 10.0.0.1/24\""))?;
        let node = names.node_idx(node_name).map_err(|m| self.err(at, m.0, m.1))?;
        self.interface(s, node_name.len() + 1, node, node_name, ifname, ifnames, addrs, space, false)
    }

    /// An interface `ifname` of `node` declared by `s` (its name at byte `name_off` of the
    /// value, its addresses after the first word): the name checked and unique in the node,
    /// the addresses parsed and unique in `space` (`owner_words`: a tap's `user=`/`group=` are
    /// not addresses).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn interface(
        &self,
        s: &Spanned<String>,
        name_off: usize,
        node: usize,
        node_name: &str,
        ifname: &str,
        ifnames: &mut HashMap<(usize, String), usize>,
        addrs: &mut Addrs,
        space: &Option<String>,
        owner_words: bool,
    ) -> Result<Endpoint, InputError> {
        let at = self.inner(s);
        let head = s.get_ref().split_whitespace().next().unwrap_or("");
        if ifname.is_empty() || ifname.len() > 15 || !ifname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(self.err(
                self.at(s, name_off),
                format!("`{ifname}` is not a valid interface name"),
                "use at most 15 letters, digits, '-', '_' or '.'",
            ));
        }
        if ifname == "lo" {
            return Err(self.err(self.at(s, name_off), "`lo` is the node's loopback", "choose another interface name"));
        }
        if let Some(prev) = ifnames.insert((node, ifname.to_string()), at) {
            // With fragments, say where the first one is (it may be in another file).
            let first = if self.sources.parts.len() > 1 { format!(" (at {})", self.sources.place(prev)) } else { String::new() };
            return Err(self.err(
                at,
                format!("node `{node_name}` already has an interface `{ifname}`{first}"),
                "give each interface of a node its own name",
            ));
        }
        let out = self.addresses(s, head.len(), node, addrs, space, owner_words)?;
        Ok(Endpoint { node, ifname: ifname.to_string(), addrs: out })
    }
}

impl NameTable<'_> {
    pub(super) fn node_idx(&self, name: &str) -> Result<usize, (String, String)> {
        self.nodes.iter().position(|n| n == name).ok_or_else(|| {
            (format!("unknown node `{name}`"), format!("declared nodes: {}; add `[nodes.{name}]` or fix the name", self.nodes.join(", ")))
        })
    }
}

/// Node names become interface-name-sized labels; others (services, scenarios, LANs) may be longer.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    check_name_len(name, 15)
}

pub(super) fn check_long_name(name: &str) -> Result<(), String> {
    check_name_len(name, 64)
}

pub(super) fn check_name_len(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty()
        || name.len() > max
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with('-')
    {
        return Err(format!("`{name}` is not a valid name (letters, digits, '-', '_'; at most {max} characters)"));
    }
    Ok(())
}
