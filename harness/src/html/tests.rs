use super::*;
use crate::runner::FailedStep;
use crate::suite::Tally;

fn entry(id: &str, outcome: Outcome) -> ScenarioReport {
    crate::report::test_entry(id, outcome)
}

fn marks(m: &[(Mark, String)]) -> Vec<String> {
    m.iter()
        .map(|(k, l)| {
            format!(
                "{}{l}",
                match k {
                    Mark::Same => ' ',
                    Mark::Added => '+',
                    Mark::Removed => '-',
                }
            )
        })
        .collect()
}

#[test]
fn the_merged_transcript_puts_the_snapshots_lines_back_in_place() {
    let snapshot = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
    let run = "a\nB\nc\nd\ne\nf\ng\nh\nj\nk\n";
    let diff = match crate::snapshot::compare(Some(snapshot), run) {
        crate::snapshot::Verdict::Mismatch(d) => d,
        v => panic!("{v:?}"),
    };
    let m = merge(run, &diff).unwrap_or_else(|| panic!("{diff}"));
    assert_eq!(marks(&m), [" a", "-b", "+B", " c", " d", " e", " f", " g", " h", "-i", " j", "+k"], "{diff}");
    // Only deletions at the end, only additions at the start.
    for (s, r) in [("a\nb\n", "a\n"), ("b\n", "a\nb\n"), ("x\n", "y\n")] {
        let crate::snapshot::Verdict::Mismatch(d) = crate::snapshot::compare(Some(s), r) else { panic!() };
        let m = merge(r, &d).unwrap_or_else(|| panic!("{d}"));
        let kept: Vec<&str> = m.iter().filter(|(k, _)| *k != Mark::Removed).map(|(_, l)| l.as_str()).collect();
        assert_eq!(kept, r.lines().collect::<Vec<_>>(), "{d}");
        let old: Vec<&str> = m.iter().filter(|(k, _)| *k != Mark::Added).map(|(_, l)| l.as_str()).collect();
        assert_eq!(old, s.lines().collect::<Vec<_>>(), "{d}");
    }
    // A diff of another transcript is not merged.
    assert_eq!(merge("z\nz\nz\n", &diff), None);
}

#[test]
fn everything_a_daemon_printed_is_escaped_and_nothing_is_loaded_from_outside() {
    let mut r = Report::new(std::time::SystemTime::now(), 1);
    let mut cf = entry("a/b::c", Outcome::CheckFailed);
    cf.failed_step = Some(FailedStep {
        index: Some(2),
        step: "client: ping 10.0.0.1 -> reachable".into(),
        observed: "<script>alert(1)</script>".into(),
        expected: "reachable".into(),
    });
    cf.pcaps = vec!["/tmp/w/pcap/client-eth0.pcap".into()];
    r.push(cf, &Tally { check_failed: 1, ..Default::default() });
    let mut e = entry("a/b::e", Outcome::Error);
    e.error = Some("nft said </pre><img src=http://x/y>".into());
    r.push(e, &Tally { error: 1, ..Default::default() });
    let details = BTreeMap::from([(
        "a/b::c".to_string(),
        Details {
            transcript: "client$ echo \"<b>&amp;</b>\"\n".into(),
            logs: vec![("vpn".into(), "line with <iframe src=//evil>\n".into())],
            ..Default::default()
        },
    )]);
    let page = render(&r, &details, &Topologies::default());
    for bad in ["<script", "<img", "<iframe", "<b>"] {
        assert!(!page.contains(bad), "{bad} in\n{page}");
    }
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(page.contains("&lt;b&gt;&amp;amp;&lt;/b&gt;"), "{page}");
    assert!(page.contains("default-src 'none'"), "a CSP forbids loading anything");
    assert!(!page.contains("src=\"") && !page.contains("href=\"http") && !page.contains("url("), "{page}");
    assert!(page.contains("<details class=\"log\"><summary>vpn.log (1 line)</summary>"), "{page}");
    assert!(page.contains("/tmp/w/pcap/client-eth0.pcap"), "{page}");
    assert!(page.contains("step 3 `client: ping 10.0.0.1 -&gt; reachable`"), "{page}");
}
