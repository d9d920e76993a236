//! One libtest-mimic trial per lab scenario, named `family/recipe::scenario`. Filters,
//! `--list`, `--test-threads` and `--ignored` work as with the built-in harness.
//!
//! A lab whose programs are not installed is ignored with the reason and the package to
//! install, except with CI=true, where it fails: a CI that silently skips labs is worse than a
//! red one. Not being root likewise ignores every trial with the fix (fails it with CI=true).
//!
//! A failed trial's message starts with the scenario's outcome (see `suite::Outcome`):
//! `check-failed: ...`, `drift: ...` or `error: ...`.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::path::Path;
use vpnlab::{env, model, runner, snapshot, suite};

fn main() {
    vpnlab::reexec::main_if_requested();
    snapshot::quiet_insta();
    vpnlab::ns::install_signal_cleanup();
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("labs");
    vpnlab::workdir::sweep();
    // VPNLAB_WITH="openvpn=2.7.8,libreswan=debian:sid": run the labs against other daemon builds
    // (`vpnlab run --with`), resolved (and fetched into the cache) once, here, before any trial.
    let with = match std::env::var("VPNLAB_WITH") {
        Ok(v) if !v.trim().is_empty() => {
            let args: Vec<String> = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            match vpnlab::with::resolve_all(&args) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("VPNLAB_WITH={v}: {e}");
                    std::process::exit(2);
                }
            }
        }
        _ => vpnlab::with::With::default(),
    };
    let with = std::sync::Arc::new(with);
    let mut trials = Vec::new();
    for dir in suite::discover(&root) {
        let id = model::lab_id(&dir);
        let lab = match model::load(&dir) {
            Ok(lab) => lab,
            Err(e) => {
                let msg = e.to_string();
                trials.push(Trial::test(format!("{id}::lab.toml"), move || Err(Failed::from(msg))));
                continue;
            }
        };
        let lab = std::sync::Arc::new(lab);
        // One lab family also runs against a non-default daemon build (OpenVPN from Debian sid,
        // fetched once into ~/.cache/vpnlab): `family/recipe::scenario@openvpn=debian:sid`.
        if with.is_empty() && VERSIONED.contains(&id.as_str()) {
            for sc in &lab.scenarios {
                let lab = lab.clone();
                let name = sc.name.clone();
                trials.push(Trial::ignorable_test(format!("{id}::{name}@{VERSIONED_WITH}"), move || {
                    let w = match versioned_with() {
                        Ok(w) => w,
                        Err(e) if snapshot::is_ci() => {
                            return Err(format!("{VERSIONED_WITH}: {e} (CI=true: a lab that cannot run is a failure)").into())
                        }
                        Err(e) => return Ok(Completion::ignored_with(format!("{VERSIONED_WITH}: {e}"))),
                    };
                    run_one(&lab, &name, w)
                }));
            }
        }
        for sc in &lab.scenarios {
            let lab = lab.clone();
            let name = sc.name.clone();
            let with = with.clone();
            trials.push(Trial::ignorable_test(format!("{id}::{name}"), move || run_one(&lab, &name, &with)));
        }
        // The same scenarios in the user-mode-linux guest (whatever the host kernel has): the
        // same snapshot whichever backend runs them, with the guest's iptables-legacy firewall.
        for (uml_lab, scenario) in UML_TRIALS {
            if *uml_lab == id {
                let lab = lab.clone();
                trials.push(Trial::ignorable_test(format!("uml:{id}::{scenario}"), move || run_uml(&lab, scenario)));
            }
        }
    }
    // The host is never touched: its network state (links, addresses, routes of all tables,
    // rules, nft ruleset, iptables, the sysctls labs set) is the same after the suite as before.
    let before = host_state();
    let conclusion = libtest_mimic::run(&args, trials);
    // The warm user-mode-linux guests the UML trials shared: ended, their dirs removed.
    vpnlab::backend::uml::pool::shutdown();
    if let (Some(before), Some(after)) = (before, host_state()) {
        if before != after {
            eprintln!("the host's network state changed during the lab suite (labs must never touch the host):");
            let diff = similar::TextDiff::from_lines(&before, &after);
            eprint!("{}", diff.unified_diff().context_radius(1).header("host before the suite", "host after the suite"));
            std::process::exit(101);
        }
        eprintln!("host network state unchanged by the labs (ci/host-state before == after)");
    }
    conclusion.exit();
}

/// `ci/host-state`, without the fallback devices a tunnel module adds to every namespace (the
/// host's too) when it is first loaded (`tunl0`, `sit0`, ...): that is the kernel's doing, not a
/// lab's. `None` where the script cannot run (not root).
fn host_state() -> Option<String> {
    if !env::is_root() || std::env::var_os("VPNLAB_SKIP_HOST_CHECK").is_some() {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/host-state");
    let out = std::process::Command::new("bash").arg(script).output().ok()?;
    if !out.status.success() {
        return None;
    }
    const FALLBACK: [&str; 9] = ["tunl0", "sit0", "gre0", "gretap0", "erspan0", "ip6tnl0", "ip6gre0", "ip_vti0", "ip6_vti0"];
    let text = String::from_utf8_lossy(&out.stdout);
    let mut keep = true;
    let mut lines = Vec::new();
    for l in text.lines() {
        // A link block starts with "N: name..." and runs until the next one.
        if let Some(name) = l.split(": ").nth(1).filter(|_| l.chars().next().is_some_and(|c| c.is_ascii_digit())) {
            let name = name.split('@').next().unwrap_or(name);
            keep = !FALLBACK.contains(&name);
        } else if l.starts_with("==") {
            keep = true;
        }
        let mentions_fallback = FALLBACK.iter().any(|f| l.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').any(|w| w == *f));
        if keep && !mentions_fallback {
            lines.push(l.to_string());
        }
    }
    Some(lines.join("\n") + "\n")
}

/// Scenarios also run with the UML backend forced: OpenVPN labs with a firewall, and the trace
/// (NFLOG observation points there: the guest kernel has no nftables inet family; nor drop
/// events, so a trace's drop line is inferred and compared with `<scenario>@uml.snap`).
const UML_TRIALS: &[(&str, &str)] = &[
    ("openvpn/missing-return-route", "where-it-dies"),
    ("openvpn/ipv6-return-route", "where-it-dies"),
    ("openvpn/client-to-client", "enable-forwarding"),
    ("openvpn/client-to-client", "forward-firewall"),
    ("openvpn/client-to-client", "client-to-client"),
    ("openvpn/redirect-gateway", "remove-def1"),
    ("openvpn/tls-negotiation-failed", "open-the-port"),
];

/// `None` as root; else the trial's result: ignored with the reason (shown by the test output),
/// or failed under CI.
fn not_root() -> Option<Result<Completion, Failed>> {
    let Err(why) = env::require_root() else { return None };
    Some(if snapshot::is_ci() {
        Err(format!("{} (CI=true: a lab that cannot run is a failure, not a skip)", why.msg).into())
    } else {
        Ok(Completion::ignored_with(format!("needs root: {}", why.hint)))
    })
}

/// `None` when the UML backend can run here; else the trial's result (ignored, or failed
/// under CI).
fn uml_unusable() -> Option<Result<Completion, Failed>> {
    if let Some(r) = not_root() {
        return Some(r);
    }
    let Err(why) = vpnlab::backend::uml::available() else { return None };
    Some(if snapshot::is_ci() {
        Err(format!("user-mode-linux is not usable: {why} (CI=true: a lab that cannot run is a failure, not a skip)").into())
    } else {
        Ok(Completion::ignored_with(why))
    })
}

fn run_uml(lab: &model::Lab, scenario: &str) -> Result<Completion, Failed> {
    if let Some(r) = uml_unusable() {
        return r;
    }
    run_on(lab, scenario, &vpnlab::with::With::default(), Some(vpnlab::backend::Backend::Uml))
}

/// The labs `cargo test` also runs against [`VERSIONED_WITH`].
const VERSIONED: [&str; 2] = ["openvpn/basic-server", "openvpn/redirect-gateway"];
const VERSIONED_WITH: &str = "openvpn=debian:sid";

/// [`VERSIONED_WITH`], resolved (fetched) once, by the first trial that needs it.
fn versioned_with() -> Result<&'static vpnlab::with::With, String> {
    static W: std::sync::OnceLock<Result<vpnlab::with::With, String>> = std::sync::OnceLock::new();
    W.get_or_init(|| {
        if !env::is_root() {
            return Err("not root".into());
        }
        vpnlab::with::resolve_all(&[VERSIONED_WITH.to_string()]).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| e.clone())
}

fn run_one(lab: &model::Lab, scenario: &str, with: &vpnlab::with::With) -> Result<Completion, Failed> {
    run_on(lab, scenario, with, None)
}

fn run_on(
    lab: &model::Lab,
    scenario: &str,
    with: &vpnlab::with::With,
    backend: Option<vpnlab::backend::Backend>,
) -> Result<Completion, Failed> {
    if let Some(r) = not_root() {
        return r;
    }
    if let Some(why) = env::unmet(lab) {
        if snapshot::is_ci() {
            return Err(format!("{why} (CI=true: a lab that cannot run is a failure, not a skip)").into());
        }
        return Ok(Completion::ignored_with(why));
    }
    // VPNLAB_PROGRESS=1 prints every step; VPNLAB_PCAP=1 records every link (kept with failed runs).
    let opts = runner::Options {
        keep: false,
        progress: std::env::var_os("VPNLAB_PROGRESS").is_some(),
        pcap: std::env::var_os("VPNLAB_PCAP").is_some(),
        with: with.clone(),
        sink: None,
        work_root: None,
    };
    // The first line of a failure names the outcome: `check-failed: step 3 `...`: observed ...,
    // expected ...`, `drift: ...` or `error: ...`; the transcript, diff and kept work dir follow.
    let out = suite::run_checked_on(lab, scenario, &opts, false, backend);
    if out.passed() {
        if !out.report.is_empty() {
            eprintln!("{}", out.report);
        }
        Ok(Completion::Completed)
    } else {
        Err(out.failure_message().into())
    }
}
