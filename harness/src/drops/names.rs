//! Names for what the kernel reports as numbers, asked of the running kernel (never a table of
//! our own): the drop reason from the `skb:kfree_skb` tracepoint's format file (its
//! `__print_symbolic` list is the kernel's `enum skb_drop_reason` without the prefix), the
//! function from `/proc/kallsyms`.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::sync::OnceLock;

const FORMATS: [&str; 2] = ["/sys/kernel/tracing/events/skb/kfree_skb/format", "/sys/kernel/debug/tracing/events/skb/kfree_skb/format"];

/// Reason number -> name (`IP_INNOROUTES`), read once per process.
pub fn reasons() -> Result<&'static HashMap<u32, String>> {
    static R: OnceLock<Result<HashMap<u32, String>, String>> = OnceLock::new();
    R.get_or_init(|| {
        let text = FORMATS
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .ok_or_else(|| format!("no kfree_skb tracepoint format (tried {}): is tracefs mounted?", FORMATS.join(", ")))?;
        parse_reasons(&text).map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The `{ 2, "NOT_SPECIFIED" }` pairs of the `reason` field's `__print_symbolic`.
pub fn parse_reasons(format: &str) -> Result<HashMap<u32, String>> {
    let start = format.find("__print_symbolic(REC->reason").context("the kfree_skb format names no reasons")?;
    let re = regex::Regex::new(r#"\{\s*(\d+)\s*,\s*"([A-Z0-9_]+)"\s*\}"#).expect("valid regex");
    let map: HashMap<u32, String> =
        re.captures_iter(&format[start..]).filter_map(|c| Some((c[1].parse().ok()?, c[2].to_string()))).collect();
    if map.is_empty() {
        bail!("the kfree_skb format's reason list is empty");
    }
    Ok(map)
}

/// The kernel's text symbols, sorted by address.
pub struct Symbols(Vec<(u64, String)>);

/// The symbols as of the modules loaded now: read once, and again when `/proc/modules` changed
/// (a lab's first nft ruleset loads nf_tables after a drop was first named, say).
pub fn symbols() -> Result<std::sync::Arc<Symbols>> {
    static S: std::sync::Mutex<Option<(String, std::sync::Arc<Symbols>)>> = std::sync::Mutex::new(None);
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let mut cached = S.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((m, s)) = cached.as_ref() {
        if *m == modules {
            return Ok(s.clone());
        }
    }
    let text = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    let s = std::sync::Arc::new(Symbols::parse(&text));
    if s.0.is_empty() {
        bail!("/proc/kallsyms shows no addresses (kernel.kptr_restrict, or not root)");
    }
    *cached = Some((modules, s.clone()));
    Ok(s)
}

impl Symbols {
    pub fn parse(text: &str) -> Symbols {
        let mut v: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let addr = u64::from_str_radix(w.next()?, 16).ok()?;
                let kind = w.next()?;
                let name = w.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string()))
            })
            .collect();
        v.sort();
        Symbols(v)
    }

    /// The function holding `addr`, without the compiler's suffixes (`.cold`, `.isra.0`,
    /// `.constprop.0`), so the name does not depend on how this kernel was optimised.
    pub fn function(&self, addr: u64) -> Option<&str> {
        let i = self.0.partition_point(|(a, _)| *a <= addr);
        let name = &self.0.get(i.checked_sub(1)?)?.1;
        Some(name.split('.').next().unwrap_or(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_a_format_file() {
        let f = r#"print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 88, "IP_INNOROUTES" })"#;
        let r = parse_reasons(f).unwrap();
        assert_eq!(r[&88], "IP_INNOROUTES");
        assert_eq!(r.len(), 2);
        assert!(parse_reasons("print fmt: \"x\"").is_err());
    }

    #[test]
    fn function_of_an_address() {
        let s = Symbols::parse("ffffffff81000000 T _stext\nffffffff81244703 t ip_route_input_slow.cold\nffffffff81300000 D data\n");
        assert_eq!(s.function(0xffffffff81244710), Some("ip_route_input_slow"));
        assert_eq!(s.function(0xffffffff81000001), Some("_stext"));
        assert_eq!(s.function(0x10), None);
    }

    #[test]
    fn this_kernel_names_its_reasons() {
        // Where the tracepoint exists (the drop locator's kernels), NOT_SPECIFIED is among them.
        if FORMATS.iter().any(|p| std::path::Path::new(p).exists()) {
            assert!(reasons().unwrap().values().any(|n| n == "NOT_SPECIFIED"));
        }
    }
}
