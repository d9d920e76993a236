//! The `impair IFNAME SPEC` step's spec: what to do to every Nth packet leaving an interface
//! (`drop every 10`, `reorder every 10 hold 3`, `duplicate every 5`, `delay 50ms`) and which
//! packets (`udp`, `tcp`, `icmp`, `fragments`). The runtime's `vpnlab::impair` carries it out.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Impairment {
    /// Drop every Nth packet (N >= 2).
    DropEvery(u32),
    /// Hold back every Nth packet (N >= 2) and release it after `hold` (>= 1) later packets
    /// have been accepted (or after [`HOLD_TIMEOUT`]).
    Reorder { every: u32, hold: u32 },
    /// Send every Nth packet (N >= 1) twice.
    Duplicate { every: u32 },
    /// Delay every packet by this long (keeping order; 0 < delay <= 10s).
    Delay(Duration),
}

/// Which packets the rule selects (default: all IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
    Icmp,
    /// Only non-first IPv4 fragments (iptables `-f`), e.g. the tails of a fragmented tunnel
    /// packet. Seen only where nothing in the node uses conntrack (which reassembles).
    Fragments,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Icmp => "icmp",
            Proto::Fragments => "fragments",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The canonical step text: `drop every 10`, `reorder every 10 hold 3`, `duplicate every 5`,
/// `delay 50ms`.
impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Impairment::DropEvery(n) => write!(f, "drop every {n}"),
            Impairment::Reorder { every, hold } => write!(f, "reorder every {every} hold {hold}"),
            Impairment::Duplicate { every } => write!(f, "duplicate every {every}"),
            Impairment::Delay(d) => {
                if d.subsec_nanos() % 1_000_000 == 0 {
                    write!(f, "delay {}ms", d.as_millis())
                } else {
                    write!(f, "delay {d:?}")
                }
            }
        }
    }
}

/// The longest a reordered packet is held when fewer than `hold` packets follow it.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest `delay` accepted.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

impl Impairment {
    /// Checks the numbers (what [`parse`] enforces), for impairments built in code.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Impairment::DropEvery(n) if n < 2 => Err(format!("drop every {n}: N must be at least 2")),
            Impairment::Reorder { every, .. } if every < 2 => Err(format!("reorder every {every}: N must be at least 2")),
            Impairment::Reorder { hold: 0, .. } => Err("reorder: hold must be at least 1".into()),
            Impairment::Duplicate { every: 0 } => Err("duplicate every 0: N must be at least 1".into()),
            Impairment::Delay(d) if d.is_zero() || d > MAX_DELAY => {
                Err(format!("delay {d:?}: must be more than 0 and at most {MAX_DELAY:?}"))
            }
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------- parsing

use crate::route::words;

const USAGE: &str = "expected an impairment: `drop every N`, `reorder every N hold M`, `duplicate every N` or `delay 50ms`";

/// Parses the step's text after `impair IFNAME`: "drop every 10", "reorder every 10 hold 3",
/// "duplicate every 5", "delay 50ms"; an optional trailing "udp" / "tcp" / "icmp" or
/// "proto udp" selects the protocol (default: all IPv4). Errors are (byte offset within `s`,
/// message); a missing word is reported at `s.len()`.
pub fn parse(s: &str) -> Result<(Impairment, Option<Proto>), (usize, String)> {
    let w = words(s);
    let end = s.len();
    let mut i = 0;
    let next = |i: &mut usize| -> Option<(usize, &str)> {
        let r = w.get(*i).copied();
        *i += 1;
        r
    };
    let keyword = |i: &mut usize, kw: &str, after: &str| -> Result<(), (usize, String)> {
        match w.get(*i).copied() {
            Some((_, word)) if word == kw => {
                *i += 1;
                Ok(())
            }
            Some((o, word)) => Err((o, format!("expected `{kw}` after `{after}`, got `{word}`"))),
            None => Err((end, format!("expected `{kw}` after `{after}`"))),
        }
    };
    let number = |i: &mut usize, after: &str, min: u32| -> Result<u32, (usize, String)> {
        match w.get(*i).copied() {
            Some((o, word)) => {
                *i += 1;
                let n: u32 = word.parse().map_err(|_| (o, format!("expected a number of packets after `{after}`, got `{word}`")))?;
                if n < min {
                    return Err((o, format!("`{after} {n}`: the number must be at least {min}")));
                }
                Ok(n)
            }
            None => Err((end, format!("expected a number of packets after `{after}`"))),
        }
    };
    // `fragments` may also come first: `impair eth0 fragments reorder every 10 hold 3`.
    let leading_fragments = matches!(w.first(), Some((_, "fragments")));
    if leading_fragments {
        i += 1;
    }
    let (o0, kind) = next(&mut i).ok_or((end, USAGE.to_string()))?;
    let imp = match kind {
        "drop" => {
            keyword(&mut i, "every", "drop")?;
            Impairment::DropEvery(number(&mut i, "every", 2)?)
        }
        "reorder" => {
            keyword(&mut i, "every", "reorder")?;
            let every = number(&mut i, "every", 2)?;
            keyword(&mut i, "hold", &format!("every {every}"))?;
            let hold = number(&mut i, "hold", 1)?;
            Impairment::Reorder { every, hold }
        }
        "duplicate" => {
            keyword(&mut i, "every", "duplicate")?;
            Impairment::Duplicate { every: number(&mut i, "every", 1)? }
        }
        "delay" => {
            let (o, word) = next(&mut i).ok_or((end, "expected a duration after `delay`, like `50ms`".to_string()))?;
            let d = crate::step::parse_duration(word).ok_or((o, format!("`{word}` is not a duration: write it like `50ms` or `1.5s`")))?;
            if d.is_zero() || d > MAX_DELAY {
                return Err((o, format!("a delay must be more than 0 and at most {}s", MAX_DELAY.as_secs())));
            }
            Impairment::Delay(d)
        }
        other => return Err((o0, format!("unknown impairment `{other}`: {USAGE}"))),
    };
    let proto_of = |o: usize, word: &str| -> Result<Proto, (usize, String)> {
        match word {
            "udp" => Ok(Proto::Udp),
            "tcp" => Ok(Proto::Tcp),
            "icmp" => Ok(Proto::Icmp),
            "fragments" => Ok(Proto::Fragments),
            _ => Err((o, format!("unknown protocol `{word}`: udp, tcp or icmp"))),
        }
    };
    let proto = match next(&mut i) {
        None => None,
        Some((_, "proto")) => {
            let (o, word) = next(&mut i).ok_or((end, "expected a protocol after `proto`: udp, tcp or icmp".to_string()))?;
            Some(proto_of(o, word)?)
        }
        Some((o, word @ ("udp" | "tcp" | "icmp" | "fragments"))) if !leading_fragments => Some(proto_of(o, word)?),
        Some((o, word)) => {
            return Err((o, format!("unexpected `{word}`: only a protocol (`udp`, `tcp`, `icmp` or `proto udp`) may follow `{imp}`")))
        }
    };
    if let Some((o, word)) = next(&mut i) {
        return Err((o, format!("unexpected `{word}` after the protocol")));
    }
    Ok((imp, if leading_fragments { Some(Proto::Fragments) } else { proto }))
}

/// Which IP version an impairment queues: `ipv4` (the default) or `ipv6` (an ip6tables rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

/// The step's spec with its family: a leading `ipv6` (or `ipv4`) word, then what [`parse`]
/// reads: `ipv6 drop every 10 udp`. `fragments` is IPv4's (iptables `-f`). Errors as [`parse`].
pub fn parse_spec(s: &str) -> Result<(Impairment, Option<Proto>, Family), (usize, String)> {
    let lead = s.len() - s.trim_start().len();
    let (family, skip) = match s.split_whitespace().next() {
        Some(w @ "ipv6") => (Family::Ipv6, lead + w.len()),
        Some(w @ "ipv4") => (Family::Ipv4, lead + w.len()),
        _ => (Family::Ipv4, 0),
    };
    let (imp, proto) = parse(&s[skip..]).map_err(|(o, m)| (skip + o, m))?;
    if family == Family::Ipv6 && proto == Some(Proto::Fragments) {
        let o = s.rfind("fragments").unwrap_or(0);
        return Err((o, "`fragments` selects IPv4 fragments (iptables -f); with `ipv6` use udp, tcp or icmp".into()));
    }
    Ok((imp, proto, family))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_family() {
        assert_eq!(parse_spec("drop every 10"), Ok((Impairment::DropEvery(10), None, Family::Ipv4)));
        assert_eq!(parse_spec(" ipv6 drop every 10 icmp"), Ok((Impairment::DropEvery(10), Some(Proto::Icmp), Family::Ipv6)));
        assert_eq!(parse_spec("ipv4 delay 5ms"), Ok((Impairment::Delay(Duration::from_millis(5)), None, Family::Ipv4)));
        assert_eq!(parse_spec("ipv6 drop every 1").unwrap_err().0, 16);
        assert_eq!(parse_spec("ipv6 ipv6 drop every 2").unwrap_err().0, 5);
        let (o, m) = parse_spec("ipv6 reorder every 10 hold 3 fragments").unwrap_err();
        assert_eq!(o, 29);
        assert!(m.contains("IPv4 fragments"), "{m}");
    }

    #[test]
    fn parses_every_impairment() {
        assert_eq!(parse("drop every 10"), Ok((Impairment::DropEvery(10), None)));
        assert_eq!(parse("reorder every 10 hold 3"), Ok((Impairment::Reorder { every: 10, hold: 3 }, None)));
        assert_eq!(parse("duplicate every 5 udp"), Ok((Impairment::Duplicate { every: 5 }, Some(Proto::Udp))));
        assert_eq!(parse("  delay 50ms proto tcp "), Ok((Impairment::Delay(Duration::from_millis(50)), Some(Proto::Tcp))));
        assert_eq!(parse("delay 1.5s icmp"), Ok((Impairment::Delay(Duration::from_millis(1500)), Some(Proto::Icmp))));
        assert_eq!(parse("fragments reorder every 10 hold 3"), Ok((Impairment::Reorder { every: 10, hold: 3 }, Some(Proto::Fragments))));
        assert_eq!(parse("reorder every 10 hold 3 fragments"), Ok((Impairment::Reorder { every: 10, hold: 3 }, Some(Proto::Fragments))));
        assert_eq!(parse("duplicate every 1"), Ok((Impairment::Duplicate { every: 1 }, None)));
    }

    #[test]
    fn displays_the_canonical_text() {
        for s in ["drop every 10", "reorder every 10 hold 3", "duplicate every 5", "delay 50ms", "delay 2000ms"] {
            assert_eq!(parse(s).unwrap().0.to_string(), s);
        }
        assert_eq!(Proto::Udp.to_string(), "udp");
    }

    #[test]
    fn parse_errors_point_at_the_word() {
        let at = |s: &str| parse(s).unwrap_err();
        assert_eq!(at("").0, 0);
        assert_eq!(at("   ").0, 3);
        let (o, m) = at("loss every 3");
        assert_eq!(o, 0);
        assert!(m.contains("unknown impairment `loss`"), "{m}");
        let (o, m) = at("drop 10");
        assert_eq!(o, 5);
        assert!(m.contains("expected `every`"), "{m}");
        let (o, m) = at("drop every");
        assert_eq!(o, 10);
        assert!(m.contains("number"), "{m}");
        let (o, m) = at("drop every 1");
        assert_eq!(o, 11);
        assert!(m.contains("at least 2"), "{m}");
        let (o, m) = at("drop every ten");
        assert_eq!(o, 11);
        assert!(m.contains("`ten`"), "{m}");
        let (o, m) = at("reorder every 10 keep 3");
        assert_eq!(o, 17);
        assert!(m.contains("expected `hold`"), "{m}");
        assert_eq!(at("reorder every 10 hold 0").0, 22);
        assert_eq!(at("reorder every 10").0, 16);
        assert_eq!(at("duplicate every 0").0, 16);
        let (o, m) = at("delay 50");
        assert_eq!(o, 6);
        assert!(m.contains("not a duration"), "{m}");
        assert_eq!(at("delay 0ms").0, 6);
        assert_eq!(at("delay 11s").0, 6);
        assert_eq!(at("delay").0, 5);
        let (o, m) = at("drop every 10 sctp");
        assert_eq!(o, 14);
        assert!(m.contains("unexpected `sctp`"), "{m}");
        let (o, m) = at("drop every 10 proto sctp");
        assert_eq!(o, 20);
        assert!(m.contains("unknown protocol"), "{m}");
        assert_eq!(at("drop every 10 proto").0, 19);
        assert_eq!(at("drop every 10 udp tcp").0, 18);
    }
}
