//! Steps about a service: `start|stop|restart SERVICE`, and the `log`/`nolog SERVICE PATTERN`
//! checks with their pattern (`/regex/` or `'literal'`), duration and scope.

use super::{err, parse_duration, Action, LinePattern, Names, ServiceOp};
use crate::route::{words, SyntaxError};
use regex::Regex;
use std::time::Duration;

/// Which log lines a `log`/`nolog` check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LogScope {
    /// Since the service's last start.
    SinceStart,
    /// Since the last step that changed something began (or the service's start, if later).
    SinceChange,
    /// Since the previous step began.
    SincePrevious,
}

/// Parses a `/regex/` or `'literal'` starting at `rest` (offset `base`), returning the pattern
/// and what follows it.
fn pattern(rest: &str, base: usize) -> Result<(LinePattern, &str, usize), SyntaxError> {
    let trimmed = rest.trim_start();
    let lead = rest.len() - trimmed.len();
    let (delim, literal) = match trimmed.chars().next() {
        Some('/') => ('/', false),
        Some('\'') => ('\'', true),
        _ => return Err(err(base + lead, "expected a pattern: /regex/ or 'literal text'")),
    };
    let body = &trimmed[1..];
    let end = body.rfind(delim).ok_or_else(|| err(base + lead, format!("the pattern is not closed with {delim}")))?;
    let text = &body[..end];
    let src = if literal { regex::escape(text) } else { text.to_string() };
    let re = Regex::new(&src).map_err(|e| err(base + lead + 1, format!("bad regex: {e}")))?;
    let after = &body[end + 1..];
    Ok((LinePattern { re, text: text.to_string() }, after, base + lead + 1 + end + 1))
}

pub(super) fn service_action(
    verb: &str,
    verb_at: usize,
    body: &str,
    w: &[(usize, &str)],
    expect: Option<(usize, &str)>,
    names: &dyn Names,
) -> Result<Action, SyntaxError> {
    if let Some((o, _)) = expect {
        return Err(err(o, format!("`{verb}` takes no `-> ...` expectation")));
    }
    let service = |idx: usize| -> Result<usize, SyntaxError> {
        let (o, s) =
            *w.get(idx).ok_or_else(|| err(verb_at, format!("`{verb}` wants a service name (services: {})", names.service_names())))?;
        names.service(s).ok_or_else(|| err(o, format!("unknown service `{s}` (services: {})", names.service_names())))
    };
    match verb {
        "start" | "stop" | "restart" => {
            let op = match verb {
                "start" => ServiceOp::Start,
                "stop" => ServiceOp::Stop,
                _ => ServiceOp::Restart,
            };
            if let Some((o, _)) = w.get(2) {
                return Err(err(*o, format!("`{verb} SERVICE` takes nothing more")));
            }
            Ok(Action::Service { op, service: service(1)? })
        }
        "log" | "nolog" => {
            let svc = service(1)?;
            let (so, s) = w[1];
            let pat_at = so + s.len();
            let (pattern, after, after_at) = pattern(&body[pat_at..], pat_at)?;
            let opts = words(after);
            let mut within = Duration::from_secs(5);
            let mut watch = None;
            let mut scope = LogScope::SinceChange;
            let mut i = 0;
            while i < opts.len() {
                let (o, word) = opts[i];
                let o = o + after_at;
                match (verb, word) {
                    ("log", "within") | ("nolog", "for") => {
                        let (vo, v) = *opts.get(i + 1).ok_or_else(|| err(o, format!("`{word}` wants a duration like 5s")))?;
                        let d = parse_duration(v).ok_or_else(|| err(vo + after_at, format!("`{v}` is not a duration like 5s")))?;
                        if verb == "log" {
                            within = d;
                        } else {
                            watch = Some(d);
                        }
                        i += 1;
                    }
                    (_, "after") => scope = LogScope::SincePrevious,
                    (_, "since") if opts.get(i + 1).map(|w| w.1) == Some("start") => {
                        scope = LogScope::SinceStart;
                        i += 1;
                    }
                    _ => {
                        let known = if verb == "log" { "within DURATION, after, since start" } else { "for DURATION, after, since start" };
                        return Err(err(o, format!("`{word}` is not understood here ({known})")));
                    }
                }
                i += 1;
            }
            Ok(if verb == "log" {
                Action::Log { service: svc, pattern, within, scope }
            } else {
                Action::NoLog { service: svc, pattern, watch, scope }
            })
        }
        _ => Err(err(
            verb_at,
            format!("`{verb}`: a step is `NODE: ACTION` (nodes: {}) or start|stop|restart|log|nolog SERVICE", names.node_names()),
        )),
    }
}
