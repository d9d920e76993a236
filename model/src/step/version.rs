//! A step's version condition (`[openvpn >= 2.7] client: ...`) and the version number of a
//! daemon's `--version` line it is compared with.

use super::err;
use crate::route::SyntaxError;

/// `OpenVPN 2.7.8 x86_64...` -> `2.7.8`; `pppd version 2.5.2` -> `2.5.2`.
pub fn version_number(line: &str) -> Option<String> {
    let re = regex::Regex::new(r"\b(\d+\.\d+(?:\.\d+)?)").ok()?;
    re.captures(line).map(|c| c[1].to_string())
}

/// A step's version condition: `[openvpn >= 2.7]`, `[libreswan < 5]`, `[pppd == 2.4]`.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionCond {
    /// The daemon as the report names it: `openvpn`, `pluto` (for `libreswan`), `pppd`.
    pub daemon: &'static str,
    pub op: &'static str,
    pub version: Vec<u64>,
}

impl VersionCond {
    /// Does the daemon whose `--version` first line is `line` meet the condition? Versions are
    /// compared on the components the condition gives (`2.7` matches 2.7.8 for `==`).
    pub fn holds(&self, line: &str) -> bool {
        let Some(n) = version_number(line) else { return false };
        let have: Vec<u64> = n.split('.').filter_map(|x| x.parse().ok()).take(self.version.len()).collect();
        let mut want = self.version.clone();
        want.truncate(have.len().max(1));
        let ord = have.cmp(&want);
        match self.op {
            ">=" => ord.is_ge(),
            ">" => ord.is_gt(),
            "<=" => ord.is_le(),
            "<" => ord.is_lt(),
            "==" => ord.is_eq(),
            "!=" => ord.is_ne(),
            _ => false,
        }
    }
}

/// Splits a leading `[NAME OP VERSION] ` off a step: the condition and the byte offset where
/// the step itself starts.
pub fn split_condition(text: &str) -> Result<(Option<VersionCond>, usize), SyntaxError> {
    let lead = text.len() - text.trim_start().len();
    if !text[lead..].starts_with('[') {
        return Ok((None, 0));
    }
    let close = text.find(']').ok_or_else(|| err(lead, "a version condition `[openvpn >= 2.7]` needs its `]`"))?;
    let inner = &text[lead + 1..close];
    let w: Vec<&str> = inner.split_whitespace().collect();
    let hint = "write it like [openvpn >= 2.7], [libreswan < 5.0] or [pppd == 2.4] (operators: >= > <= < == !=)";
    if w.len() != 3 {
        return Err(err(lead, format!("bad version condition `[{inner}]`: {hint}")));
    }
    let daemon = match w[0] {
        "openvpn" => "openvpn",
        "libreswan" | "pluto" => "pluto",
        "pppd" => "pppd",
        other => return Err(err(lead + 1, format!("unknown daemon `{other}` in a version condition (openvpn, libreswan, pppd)"))),
    };
    let op = [">=", ">", "<=", "<", "==", "!="]
        .into_iter()
        .find(|o| *o == w[1])
        .ok_or_else(|| err(lead, format!("bad operator `{}`: {hint}", w[1])))?;
    let version: Vec<u64> = w[2]
        .split('.')
        .map(|x| x.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| err(lead, format!("bad version `{}`: {hint}", w[2])))?;
    let rest = close + 1 + (text[close + 1..].len() - text[close + 1..].trim_start().len());
    Ok((Some(VersionCond { daemon, op, version }), rest))
}
