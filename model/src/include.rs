//! Shared fragments: `include = ["../common/west-east.toml"]` at the top of a lab file merges
//! the nodes, links, LANs, services and sanitizers of another file into the lab, before the
//! lab's own (a fragment may include fragments too; paths resolve from the including file).
//!
//! Errors stay located in the file that has the problem: every fragment's text is appended to
//! one source text (its spans parsed in place, behind blank padding, so no span is rewritten),
//! and [`Part`]s map an offset of that text back to its file and line.

use crate::error::{line_col, InputError};
use crate::raw::{RawFragment, RawLab, RawLan, RawLink, RawNode, RawSanitizer, RawService};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One file's text inside the combined source.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) file: PathBuf,
}

/// The lab file's text followed by its fragments', and where each one is.
pub(crate) struct Sources {
    pub(crate) text: String,
    pub(crate) parts: Vec<Part>,
}

impl Sources {
    pub(crate) fn new(file: &Path, src: &str) -> Sources {
        Sources { text: src.to_string(), parts: vec![Part { start: 0, len: src.len(), file: file.to_path_buf() }] }
    }

    pub(crate) fn part(&self, offset: usize) -> &Part {
        self.parts.iter().rev().find(|p| p.start <= offset).unwrap_or(&self.parts[0])
    }

    /// An error at an offset of the combined text, located in its own file.
    pub(crate) fn err(&self, offset: usize, msg: impl Into<String>, hint: impl Into<String>) -> InputError {
        let p = self.part(offset);
        InputError::at(&p.file, &self.text[p.start..p.start + p.len], offset - p.start, msg, hint)
    }

    /// `file:line:column` of an offset (for messages naming a second place).
    pub(crate) fn place(&self, offset: usize) -> String {
        let p = self.part(offset);
        let (line, col) = line_col(&self.text[p.start..p.start + p.len], offset - p.start);
        format!("{}:{line}:{col}", p.file.display())
    }

    /// Line and column of an offset inside its own file.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let p = self.part(offset);
        line_col(&self.text[p.start..p.start + p.len], offset - p.start)
    }
}

/// The parts of a lab or fragment that a fragment can add to.
struct Target<'r> {
    nodes: &'r mut IndexMap<String, Spanned<RawNode>>,
    links: &'r mut Vec<Spanned<RawLink>>,
    lans: &'r mut Vec<Spanned<RawLan>>,
    services: &'r mut IndexMap<String, Spanned<RawService>>,
    sanitize: &'r mut Vec<Spanned<RawSanitizer>>,
}

impl RawFragment {
    /// Where [`merge`] puts items: this fragment's lists.
    fn target(&mut self) -> Target<'_> {
        Target {
            nodes: &mut self.nodes,
            links: &mut self.links,
            lans: &mut self.lans,
            services: &mut self.services,
            sanitize: &mut self.sanitize,
        }
    }
}

/// Resolves the lab's `include`s (depth first, in the order written) into `raw`.
pub(crate) fn resolve(src: &mut Sources, raw: &mut RawLab) -> Result<(), InputError> {
    let includes = std::mem::take(&mut raw.include);
    let file = src.parts[0].file.clone();
    let mut stack = vec![canonical(&file)];
    let into = Target {
        nodes: &mut raw.nodes,
        links: &mut raw.links,
        lans: &mut raw.lans,
        services: &mut raw.services,
        sanitize: &mut raw.sanitize,
    };
    include_all(src, &file, includes, into, &mut stack)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn include_all(
    src: &mut Sources,
    from: &Path,
    includes: Vec<Spanned<String>>,
    into: Target,
    stack: &mut Vec<PathBuf>,
) -> Result<(), InputError> {
    // Every fragment's items come first, in the order of the includes, then the file's own.
    let mut merged = RawFragment::default();
    for inc in includes {
        let frag = load(src, from, &inc, stack)?;
        let m = merged.target();
        merge(src, frag, m)?;
    }
    let own = RawFragment {
        include: Vec::new(),
        nodes: std::mem::take(into.nodes),
        links: std::mem::take(into.links),
        lans: std::mem::take(into.lans),
        services: std::mem::take(into.services),
        sanitize: std::mem::take(into.sanitize),
    };
    let m = merged.target();
    merge(src, own, m)?;
    *into.nodes = merged.nodes;
    *into.links = merged.links;
    *into.lans = merged.lans;
    *into.services = merged.services;
    *into.sanitize = merged.sanitize;
    Ok(())
}

/// Reads one fragment (and what it includes) into the combined text.
fn load(src: &mut Sources, from: &Path, inc: &Spanned<String>, stack: &mut Vec<PathBuf>) -> Result<RawFragment, InputError> {
    let at = inc.span().start + 1;
    let path = from.parent().unwrap_or(Path::new(".")).join(inc.get_ref());
    let canon = canonical(&path);
    if stack.contains(&canon) {
        let chain: Vec<String> = stack.iter().chain([&canon]).map(|p| p.display().to_string()).collect();
        return Err(src.err(
            at,
            format!("include cycle: {}", chain.join(" -> ")),
            "a fragment must not include itself, directly or through others",
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| src.err(at, format!("cannot read `{}`: {e}", path.display()), "the path is relative to the file that includes it"))?;
    // Parsed behind padding as long as the text so far, so that its spans are offsets of the
    // combined text (spaces are TOML whitespace).
    let start = src.text.len() + 1;
    src.text.push('\n');
    src.text.push_str(&text);
    src.parts.push(Part { start, len: text.len(), file: path.clone() });
    let padded = format!("{}{text}", " ".repeat(start));
    let mut frag: RawFragment = toml::from_str(&padded).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(start).max(start);
        let msg = e.message().trim().to_string();
        let hint = if msg.contains("unknown field") {
            "a fragment holds nodes, links, lans, services, sanitize and include; scenarios and [lab] stay in the lab file"
        } else {
            "fix the TOML at this spot"
        };
        src.err(offset, msg, hint)
    })?;
    stack.push(canon);
    let includes = std::mem::take(&mut frag.include);
    let into = Target {
        nodes: &mut frag.nodes,
        links: &mut frag.links,
        lans: &mut frag.lans,
        services: &mut frag.services,
        sanitize: &mut frag.sanitize,
    };
    include_all(src, &path, includes, into, stack)?;
    stack.pop();
    Ok(frag)
}

/// Adds `later` after what `into` holds. A node declared in both is merged (lists, taps and bridges appended,
/// `sysctl`/`modes` keys and `nft`/`hostname` must not be set twice); a service or LAN declared
/// twice is an error naming both places.
fn merge(src: &Sources, later: RawFragment, into: Target) -> Result<(), InputError> {
    for (name, node) in later.nodes {
        let Some(first) = into.nodes.get_mut(&name) else {
            into.nodes.insert(name, node);
            continue;
        };
        let node_at = first.span().start;
        let both = |at: usize, first: usize, what: &str| {
            src.err(
                at,
                format!("{what} of node `{name}` is set here and at {}", src.place(first)),
                "set it in one place: the lab file or the fragment",
            )
        };
        let at = node.span().start;
        let n = node.into_inner();
        let f = first.get_mut();
        for (k, v) in n.sysctl {
            if let Some(prev) = f.sysctl.get(&k) {
                return Err(both(v.span().start, prev.span().start, &format!("sysctl `{k}`")));
            }
            f.sysctl.insert(k, v);
        }
        for (k, v) in n.modes {
            if let Some(prev) = f.modes.get(&k) {
                return Err(both(v.span().start, prev.span().start, &format!("the mode of `{k}`")));
            }
            f.modes.insert(k, v);
        }
        if n.nft.is_some() {
            if f.nft.is_some() {
                return Err(both(at, node_at, "`nft`"));
            }
            f.nft = n.nft;
        }
        if let Some(h) = n.hostname {
            if let Some(prev) = &f.hostname {
                return Err(both(h.span().start, prev.span().start, "`hostname`"));
            }
            f.hostname = Some(h);
        }
        f.routes.extend(n.routes);
        f.rules.extend(n.rules);
        f.files.extend(n.files);
        f.setup.extend(n.setup);
        f.taps.extend(n.taps);
        f.bridges.extend(n.bridges);
    }
    for (name, svc) in later.services {
        if let Some(first) = into.services.get(&name) {
            return Err(src.err(
                svc.get_ref().node.span().start,
                format!("service `{name}` is declared here and at {}", src.place(first.get_ref().node.span().start)),
                "declare it in one place, or give one of them another name",
            ));
        }
        into.services.insert(name, svc);
    }
    for lan in later.lans {
        if let Some(first) = into.lans.iter().find(|l| l.get_ref().name.get_ref() == lan.get_ref().name.get_ref()) {
            return Err(src.err(
                lan.get_ref().name.span().start,
                format!("LAN `{}` is declared here and at {}", lan.get_ref().name.get_ref(), src.place(first.get_ref().name.span().start)),
                "declare it in one place, or give one of them another name",
            ));
        }
        into.lans.push(lan);
    }
    into.links.extend(later.links);
    into.sanitize.extend(later.sanitize);
    Ok(())
}
