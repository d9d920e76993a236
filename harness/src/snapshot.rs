//! Snapshots: each scenario's sanitized transcript is compared with
//! `labs/<family>/<recipe>/snapshots/<scenario>.snap`, an insta snapshot file. A mismatch fails
//! with a unified diff. Outside CI the new transcript is also recorded as `<scenario>.snap.new`
//! through insta itself, so `cargo insta review` accepts it; with CI=true nothing is written.

use crate::model::Lab;
use std::path::{Path, PathBuf};

pub fn path(lab: &Lab, scenario: &str) -> PathBuf {
    lab.dir.join("snapshots").join(format!("{scenario}.snap"))
}

/// `snapshots/<scenario>@<variant>.snap` (insta's snapshot-suffix naming): the transcript of a
/// scenario under another daemon minor version (`basic@openvpn-2.7.snap`).
pub fn variant_path(lab: &Lab, scenario: &str, variant: &str) -> PathBuf {
    lab.dir.join("snapshots").join(format!("{scenario}@{variant}.snap"))
}

/// The snapshot a run is compared with: the first existing variant for the daemon versions that
/// ran (`variants`, e.g. `["openvpn-2.7"]`), else `<scenario>.snap`. Returns the path and the
/// variant (`None` for the base).
pub fn choose(lab: &Lab, scenario: &str, variants: &[String]) -> (PathBuf, Option<String>) {
    for v in variants {
        let p = variant_path(lab, scenario, v);
        if p.exists() {
            return (p, Some(v.clone()));
        }
    }
    (path(lab, scenario), None)
}

/// Call at the start of `main`, before any thread starts: our own message carries the diff, so
/// insta's console output (and its "run `cargo insta test`" advice) is turned off unless the
/// user asked for it with INSTA_OUTPUT.
pub fn quiet_insta() {
    if std::env::var_os("INSTA_OUTPUT").is_none() {
        std::env::set_var("INSTA_OUTPUT", "none");
    }
}

/// Is this a CI run (never write snapshots, never skip labs)?
pub fn is_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok(v) if !v.is_empty() && v != "0" && v != "false")
}

/// The stored snapshot's contents, if there is one.
pub fn stored(path: &Path) -> Result<Option<String>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let snap = insta::Snapshot::from_file(path).map_err(|e| format!("{}: cannot read the snapshot: {e}", path.display()))?;
    match snap.contents() {
        insta::internals::SnapshotContents::Text(t) => Ok(Some(t.to_string())),
        _ => Err(format!("{}: not a text snapshot", path.display())),
    }
}

/// Outcome of a comparison.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Match,
    /// No snapshot yet.
    Missing,
    /// The unified diff (expected -> actual).
    Mismatch(String),
}

/// The transcript's first line names the lab (`# openvpn/basic-server::connected`): the id of a
/// lab outside the labs folder comes from the folders it sits in, so a lab copied elsewhere
/// would fail every snapshot. Only the scenario part of that line is compared.
fn same_header<'a>(expected: &'a str, actual: &str) -> std::borrow::Cow<'a, str> {
    let scenario_of =
        |t: &str| t.lines().next().and_then(|l| l.strip_prefix("# ")).and_then(|l| l.rsplit_once("::")).map(|(_, s)| s.to_string());
    match (scenario_of(expected), scenario_of(actual), actual.lines().next()) {
        (Some(e), Some(a), Some(first)) if e == a => {
            let rest = expected.split_once('\n').map(|(_, r)| r).unwrap_or("");
            std::borrow::Cow::Owned(format!("{first}\n{rest}"))
        }
        _ => std::borrow::Cow::Borrowed(expected),
    }
}

pub fn compare(expected: Option<&str>, actual: &str) -> Verdict {
    let expected = expected.map(|e| same_header(e, actual));
    match expected.as_deref() {
        None => Verdict::Missing,
        Some(e) if e.trim_end() == actual.trim_end() => Verdict::Match,
        Some(e) => {
            let e = format!("{}\n", e.trim_end());
            let a = format!("{}\n", actual.trim_end());
            let diff = similar::TextDiff::from_lines(&e, &a)
                .unified_diff()
                .context_radius(3)
                .header("snapshot (expected)", "this run (actual)")
                .to_string();
            Verdict::Mismatch(diff)
        }
    }
}

/// Compares and, outside CI, records a `.snap.new` for review. Returns an error message with
/// the diff and how to accept it when the transcript does not match.
pub fn check(lab: &Lab, scenario: &str, actual: &str) -> Result<(), String> {
    check_variant(lab, scenario, &path(lab, scenario), None, actual)
}

/// [`check`] against the snapshot at `p` (see [`choose`]); on a mismatch the `.snap.new` is
/// recorded as `variant` (`Some("openvpn-2.7")`: `<scenario>@openvpn-2.7.snap.new`), so
/// `cargo insta review` writes the variant of the version that ran.
pub fn check_variant(lab: &Lab, scenario: &str, p: &Path, variant: Option<&str>, actual: &str) -> Result<(), String> {
    let p = p.to_path_buf();
    let verdict = compare(stored(&p)?.as_deref(), actual);
    if verdict == Verdict::Match {
        return Ok(());
    }
    let recorded = if is_ci() { None } else { record_pending(lab, scenario, variant, actual) };
    let name = crate::suite::cli_name(&lab.id, &lab.dir);
    let how = match &recorded {
        Some(newp) => format!(
            "the new transcript is in {}; accept it with `cargo insta review` or `vpnlab run --accept {}::{scenario}`",
            newp.display(),
            name
        ),
        None => {
            format!("CI=true: nothing was written; run `vpnlab run {}::{scenario}` locally and accept with `cargo insta review`", name)
        }
    };
    Err(match verdict {
        Verdict::Missing => format!("{}::{scenario}: no snapshot yet at {}\n--- transcript ---\n{actual}\n{how}", lab.id, p.display()),
        Verdict::Mismatch(diff) => format!("{}::{scenario}: transcript differs from {}\n{diff}\n{how}", lab.id, p.display()),
        Verdict::Match => unreachable!(),
    })
}

/// Lets insta write `<scenario>.snap.new` (it knows the format `cargo insta review` reads).
fn record_pending(lab: &Lab, scenario: &str, variant: Option<&str>, actual: &str) -> Option<PathBuf> {
    let dir = lab.dir.join("snapshots");
    std::fs::create_dir_all(&dir).ok()?;
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(std::fs::canonicalize(&dir).ok()?);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_input_file(&lab.file);
    settings.set_omit_expression(true);
    if let Some(v) = variant {
        settings.set_snapshot_suffix(v);
    }
    settings.set_description(format!("{}::{scenario} - {}", description_id(lab), lab.title));
    let actual = actual.to_string();
    let name = scenario.to_string();
    // insta reports a mismatch by panicking; keep that panic quiet (the caller prints the diff).
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        settings.bind(|| insta::assert_snapshot!(name, actual));
    }));
    std::panic::set_hook(prev_hook);
    let newp = match variant {
        Some(v) => dir.join(format!("{scenario}@{v}.snap.new")),
        None => dir.join(format!("{scenario}.snap.new")),
    };
    newp.exists().then_some(newp)
}

/// The lab's name in a snapshot's header: its id under the labs folder (`openvpn/basic-server`),
/// else its own folder's name, so that a lab copied into another folder writes the same header.
fn description_id(lab: &Lab) -> String {
    if crate::suite::cli_name(&lab.id, &lab.dir) == lab.id {
        return lab.id.clone();
    }
    lab.id.rsplit('/').next().unwrap_or(&lab.id).to_string()
}

/// Writes the snapshot (`vpnlab run --accept`, or a new lab's first run).
pub fn accept(lab: &Lab, scenario: &str, actual: &str) -> std::io::Result<PathBuf> {
    accept_variant(lab, scenario, None, actual)
}

/// Writes `<scenario>@<variant>.snap` (or the base snapshot for `None`).
pub fn accept_variant(lab: &Lab, scenario: &str, variant: Option<&str>, actual: &str) -> std::io::Result<PathBuf> {
    let p = match variant {
        Some(v) => variant_path(lab, scenario, v),
        None => path(lab, scenario),
    };
    std::fs::create_dir_all(p.parent().unwrap())?;
    let header = format!(
        "---\nsource: {}\ndescription: \"{}::{scenario} - {}\"\n---\n",
        "lab.toml",
        description_id(lab),
        lab.title.replace('"', "'")
    );
    std::fs::write(&p, format!("{header}{}\n", actual.trim_end()))?;
    let _ = std::fs::remove_file(p.with_extension("snap.new"));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_shows_a_unified_diff() {
        assert_eq!(compare(Some("a\nb\n"), "a\nb"), Verdict::Match);
        assert_eq!(compare(None, "a"), Verdict::Missing);
        match compare(Some("a\nreachable\nc\n"), "a\nunreachable\nc\n") {
            Verdict::Mismatch(d) => {
                assert!(d.contains("-reachable"), "{d}");
                assert!(d.contains("+unreachable"), "{d}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn accepted_snapshot_reads_back_through_insta() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lab.toml"), "").unwrap();
        let lab = crate::model::parse(&dir.path().join("lab.toml"), "[lab]\ntitle='t'\n[nodes.a]\n[scenarios.s]\nsteps=[]\n").unwrap();
        let p = accept(&lab, "s", "line one\nline two\n").unwrap();
        assert_eq!(stored(&p).unwrap().as_deref(), Some("line one\nline two"));
        assert!(check(&lab, "s", "line one\nline two\n").is_ok());
        let err = check(&lab, "s", "line one\nline 2\n").unwrap_err();
        assert!(err.contains("-line two") && err.contains("+line 2"), "{err}");
    }
}
