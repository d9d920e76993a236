//! The `NODE: capture IF N ['FILTER'] [within D] [-> N packets|none]` step: a real
//! `tcpdump -ni IF -c N FILTER` in the node, started before the next step and collected after
//! it (the capture wraps the first step after it that is not a capture itself; several captures
//! in a row wrap the same step). It ends when N packets were seen or `within` (default 5s) after
//! the wrapped step, whichever comes first; its decoded, sanitized lines go into the transcript.

use super::{err, parse_duration, Action};
use crate::route::SyntaxError;
use std::time::Duration;

/// The longest `within` a capture may wait after its step.
const MAX_WITHIN: Duration = Duration::from_secs(60);

/// `capture IF N ['FILTER'] [within D] [-> N packets|none]`; `rest` starts at `rest_at`.
pub(super) fn parse(node: usize, verb_at: usize, rest: &str, rest_at: usize, expect: Option<(usize, &str)>) -> Result<Action, SyntaxError> {
    let usage = "capture IF N ['FILTER'] [within DURATION] [-> N packets|none], e.g. capture eth0 4 'udp port 500'";
    let mut pos = 0;
    let next_word = |pos: &mut usize| -> Option<(usize, String)> {
        let s = &rest[*pos..];
        let lead = s.len() - s.trim_start().len();
        let s = s.trim_start();
        if s.is_empty() {
            return None;
        }
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        let at = *pos + lead;
        *pos = at + end;
        Some((rest_at + at, s[..end].to_string()))
    };
    let (io, ifname) = next_word(&mut pos).ok_or_else(|| err(verb_at, usage))?;
    let ifname_ok = ifname == "any"
        || (ifname.len() <= 15 && ifname.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !ifname.starts_with('\''));
    if !ifname_ok {
        return Err(err(io, format!("`{ifname}` is not an interface name ({usage})")));
    }
    let (co, c) = next_word(&mut pos).ok_or_else(|| err(io, format!("the packet count is missing ({usage})")))?;
    let count: u32 = c.parse().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| err(co, "the packet count must be 1..100"))?;
    let mut filter = None;
    let after = &rest[pos..];
    let lead = after.len() - after.trim_start().len();
    if after.trim_start().starts_with('\'') {
        let fo = pos + lead;
        let close = rest[fo + 1..].find('\'').ok_or_else(|| err(rest_at + fo, "the filter's closing `'` is missing"))?;
        let f = rest[fo + 1..fo + 1 + close].trim();
        if f.is_empty() {
            return Err(err(rest_at + fo, "the filter is empty: leave it out to capture every packet"));
        }
        filter = Some(f.to_string());
        pos = fo + 1 + close + 1;
    }
    let mut within = Duration::from_secs(5);
    while let Some((o, w)) = next_word(&mut pos) {
        match w.as_str() {
            "within" => {
                let (vo, v) = next_word(&mut pos).ok_or_else(|| err(o, "`within` wants a duration like 5s"))?;
                within = parse_duration(&v)
                    .filter(|d| !d.is_zero() && *d <= MAX_WITHIN)
                    .ok_or_else(|| err(vo, format!("`{v}` is not a duration from 1ms to 60s")))?;
            }
            _ => return Err(err(o, format!("`{w}` is not understood: quote the filter ('udp port 500'); {usage}"))),
        }
    }
    let expect = match expect {
        None => None,
        Some((_, "none")) => Some(0),
        Some((o, e)) => {
            let n = e.strip_suffix("packets").or_else(|| e.strip_suffix("packet")).and_then(|n| n.trim().parse::<u32>().ok());
            match n {
                Some(n) if n <= count => Some(n),
                Some(n) => return Err(err(o, format!("`{e}`: tcpdump stops after {count} packets, so it cannot see {n}"))),
                None => return Err(err(o, format!("`{e}`: a capture expects `N packets` or `none`"))),
            }
        }
    };
    Ok(Action::Capture { node, ifname, count, filter, within, expect })
}

/// The command as the transcript shows it: `tcpdump -ni eth0 -c 4 'udp port 500'`.
pub fn shown(ifname: &str, count: u32, filter: Option<&str>) -> String {
    match filter {
        Some(f) => format!("tcpdump -ni {ifname} -c {count} '{f}'"),
        None => format!("tcpdump -ni {ifname} -c {count}"),
    }
}
