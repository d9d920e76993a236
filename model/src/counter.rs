//! The `NODE: counter NAME [-> OP N]` step: one of the kernel's per-namespace counters, by its
//! `nstat` name (`IpExtInNoRoutes`, `TcpExtIPReversePathFilter`, `Ip6InNoRoutes`,
//! `XfrmInNoStates`), optionally compared with a number. The counters are read from the node's
//! `/proc/net/{snmp,netstat,snmp6,xfrm_stat}` (see `crate::counters`).

use super::route::SyntaxError;

/// How a counter is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    pub fn holds(self, value: i64, n: i64) -> bool {
        match self {
            CmpOp::Eq => value == n,
            CmpOp::Gt => value > n,
            CmpOp::Ge => value >= n,
            CmpOp::Lt => value < n,
            CmpOp::Le => value <= n,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }
}

/// `counter NAME [-> OP N]`: the name (at `name_at`) and the expectation (at its offset).
pub fn parse(args: &[(usize, &str)], verb_at: usize, expect: Option<(usize, &str)>) -> Result<(String, Option<(CmpOp, i64)>), SyntaxError> {
    let err = |offset: usize, msg: String| SyntaxError { offset, msg };
    let (o, name) =
        *args.first().ok_or_else(|| err(verb_at, "counter NAME (an nstat name like IpExtInNoRoutes or XfrmInNoStates)".into()))?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric()) || !name.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
        return Err(err(o, format!("`{name}` is not a counter name like IpExtInNoRoutes or XfrmInNoStates")));
    }
    if let Some((o2, _)) = args.get(1) {
        return Err(err(*o2, "counter NAME takes nothing more (an expectation goes after `->`)".into()));
    }
    let expect = match expect {
        None => None,
        Some((eo, e)) => {
            let e = e.trim();
            let (op, rest) = [(">=", CmpOp::Ge), ("<=", CmpOp::Le), ("=", CmpOp::Eq), (">", CmpOp::Gt), ("<", CmpOp::Lt)]
                .iter()
                .find_map(|(p, op)| e.strip_prefix(p).map(|r| (*op, r)))
                .ok_or_else(|| err(eo, format!("`{e}`: a counter expects `= N`, `> N`, `>= N`, `< N` or `<= N`")))?;
            let n: i64 = rest.trim().parse().map_err(|_| err(eo, format!("`{e}`: `{}` is not a number", rest.trim())))?;
            Some((op, n))
        }
    };
    Ok((name.to_string(), expect))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_comparisons() {
        assert_eq!(parse(&[(8, "IpExtInNoRoutes")], 0, None).unwrap(), ("IpExtInNoRoutes".into(), None));
        assert_eq!(parse(&[(8, "XfrmInNoStates")], 0, Some((30, "> 0"))).unwrap().1, Some((CmpOp::Gt, 0)));
        assert_eq!(parse(&[(8, "X")], 0, Some((30, ">=2"))).unwrap().1, Some((CmpOp::Ge, 2)));
        assert_eq!(parse(&[(8, "X")], 0, Some((30, "= 0"))).unwrap().1, Some((CmpOp::Eq, 0)));
        assert_eq!(parse(&[(8, "ip.forward")], 0, None).unwrap_err().offset, 8);
        assert_eq!(parse(&[(8, "X")], 0, Some((30, "lots"))).unwrap_err().offset, 30);
        assert!(parse(&[], 3, None).is_err());
        assert!(CmpOp::Gt.holds(1, 0) && !CmpOp::Gt.holds(0, 0) && CmpOp::Le.holds(0, 0));
    }
}
