//! The kernel's per-namespace counters by their `nstat` names: `/proc/net/snmp` and
//! `/proc/net/netstat` (`Ip` + `Forwarding` -> `IpForwarding`, `IpExt` + `InNoRoutes` ->
//! `IpExtInNoRoutes`), `/proc/net/snmp6` and `/proc/net/xfrm_stat` (names as they are). Read
//! through `/proc/thread-self/net` on a thread inside the node's namespace.

use crate::ns::NetNs;
use anyhow::Result;
use std::collections::BTreeMap;

const FILES: [&str; 4] = ["snmp", "netstat", "snmp6", "xfrm_stat"];

/// Every counter of the namespace, by its nstat name.
pub fn read(ns: &NetNs) -> Result<BTreeMap<String, i64>> {
    read_with(ns, "")
}

/// Every counter of the namespace; the snmp/netstat ones named `{group}{sep}{name}` (`sep` = ""
/// gives nstat's `IpExtInNoRoutes`, "." gives `IpExt.InNoRoutes`).
pub fn read_with(ns: &NetNs, sep: &'static str) -> Result<BTreeMap<String, i64>> {
    let texts = ns.run(|| FILES.map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default()))?;
    Ok(parse_with(&texts, sep))
}

/// Parses the four files' texts (in [`FILES`] order), nstat names.
pub fn parse(texts: &[String; 4]) -> BTreeMap<String, i64> {
    parse_with(texts, "")
}

fn parse_with(texts: &[String; 4], sep: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for t in &texts[..2] {
        let lines: Vec<&str> = t.lines().collect();
        for pair in lines.chunks(2) {
            if let [names, values] = pair {
                let (Some((p1, n)), Some((p2, v))) = (names.split_once(':'), values.split_once(':')) else { continue };
                if p1 != p2 {
                    continue;
                }
                for (k, val) in n.split_whitespace().zip(v.split_whitespace()) {
                    if let Ok(x) = val.parse::<i64>() {
                        m.insert(format!("{p1}{sep}{k}"), x);
                    }
                }
            }
        }
    }
    for t in &texts[2..] {
        for l in t.lines() {
            let mut w = l.split_whitespace();
            if let (Some(k), Some(v)) = (w.next(), w.next()) {
                if let Ok(x) = v.parse::<i64>() {
                    m.insert(k.to_string(), x);
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nstat_names_from_the_proc_files() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nIcmp: InMsgs\nIcmp: 3\n".to_string();
        let netstat = "IpExt: InNoRoutes InTruncatedPkts\nIpExt: 4 0\n".to_string();
        let snmp6 = "Ip6InReceives                   \t7\n".to_string();
        let xfrm = "XfrmInError             \t0\nXfrmInNoStates          \t2\n".to_string();
        let m = parse(&[snmp, netstat, snmp6, xfrm]);
        assert_eq!(m["IpForwarding"], 1);
        assert_eq!(m["IcmpInMsgs"], 3);
        assert_eq!(m["IpExtInNoRoutes"], 4);
        assert_eq!(m["Ip6InReceives"], 7);
        assert_eq!(m["XfrmInNoStates"], 2);
    }
}
