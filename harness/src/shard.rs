//! `vpnlab run --shard K/N`: run only the K-th of N parts of the selected scenarios, so that N
//! CI jobs (a GitHub Actions job matrix) run the suite between them, each scenario exactly once.
//!
//! The split is deterministic and needs no coordination: the selected scenarios are numbered
//! from 0 in selection order (the command line's order; all labs: sorted by id, each lab's
//! scenarios in file order), and shard K runs those whose number modulo N is K - 1. Round robin
//! rather than contiguous blocks, so that a family of slow labs (the user-mode-linux ones sit
//! together in id order) is spread over the shards. The union of shards 1/N .. N/N is the whole
//! selection and no two shards share a scenario (a unit test checks both).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub k: usize,
    pub n: usize,
}

impl Shard {
    /// Parses `K/N` (1 <= K <= N); the message says what is expected (clap prints it, exit 2).
    pub fn parse(s: &str) -> Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard: expected K/N with 1 <= K <= N, e.g. `--shard 2/4` (the second of four parts)");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if k == 0 || n == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard { k, n })
    }

    /// Whether the scenario numbered `index` (0-based, selection order) is in this shard.
    pub fn has(&self, index: usize) -> bool {
        index % self.n == self.k - 1
    }

    /// This shard's part of `selected` (each lab with its scenarios, in selection order); labs
    /// left without a scenario are dropped.
    pub fn apply<L>(&self, selected: Vec<(L, Vec<String>)>) -> Vec<(L, Vec<String>)> {
        let mut index = 0;
        let mut out = Vec::new();
        for (lab, scenarios) in selected {
            let mine: Vec<String> = scenarios
                .into_iter()
                .filter(|_| {
                    let keep = self.has(index);
                    index += 1;
                    keep
                })
                .collect();
            if !mine.is_empty() {
                out.push((lab, mine));
            }
        }
        out
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_of_n_is_parsed_and_nonsense_is_refused_with_what_to_write() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { k: 2, n: 4 }));
        assert_eq!(Shard::parse("1/1"), Ok(Shard { k: 1, n: 1 }));
        for bad in ["0/4", "5/4", "1/0", "2", "a/b", "-1/4", "2/4/1", ""] {
            let e = Shard::parse(bad).unwrap_err();
            assert!(e.contains("K/N") && e.contains(&format!("`{bad}`")), "{e}");
        }
        assert_eq!(Shard { k: 3, n: 7 }.to_string(), "3/7");
    }

    #[test]
    fn the_shards_cover_the_selection_once_in_order_and_evenly() {
        let sel = || -> Vec<(&str, Vec<String>)> {
            vec![("a", vec!["1".into(), "2".into(), "3".into()]), ("b", vec!["1".into()]), ("c", vec!["1".into(), "2".into(), "3".into()])]
        };
        let flat = |s: Vec<(&str, Vec<String>)>| -> Vec<String> {
            s.into_iter().flat_map(|(l, ss)| ss.into_iter().map(move |x| format!("{l}::{x}"))).collect()
        };
        let all = flat(sel());
        for n in 1..=9 {
            let parts: Vec<Vec<String>> = (1..=n).map(|k| flat(Shard { k, n }.apply(sel()))).collect();
            let mut union: Vec<String> = parts.concat();
            assert_eq!(union.len(), all.len(), "no scenario in two shards (n={n}): {parts:?}");
            union.sort();
            let mut sorted = all.clone();
            sorted.sort();
            assert_eq!(union, sorted, "every scenario in some shard (n={n})");
            let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "even: {sizes:?}");
            for p in &parts {
                let pos: Vec<usize> = p.iter().map(|x| all.iter().position(|a| a == x).unwrap()).collect();
                assert!(pos.windows(2).all(|w| w[0] < w[1]), "selection order kept: {p:?}");
            }
        }
        assert_eq!(flat(Shard { k: 2, n: 3 }.apply(sel())), ["a::2", "c::1"]);
        // A lab left without scenarios is dropped (not run, nothing to check for it).
        assert_eq!(Shard { k: 2, n: 3 }.apply(sel()).iter().map(|(l, _)| *l).collect::<Vec<_>>(), ["a", "c"]);
        assert!(Shard { k: 9, n: 9 }.apply(sel()).is_empty());
    }
}
