//! Backends: where a lab runs. `native` = the host's kernel; `uml` = a user-mode-linux guest
//! (a Linux kernel as a normal process) that mounts the host's `/` read-only through hostfs and
//! runs the *same* binary inside, for labs needing kernel features the host lacks (PPP, ESP).
//!
//! The guest protocol: the host writes `job.toml` into a shared dir (its own work dir for the
//! run), boots the guest running this binary as `__vpnlab guest JOB` ([`crate::reexec`]), the guest's copy of this
//! binary runs the scenario natively inside the guest kernel (its work dir inside the shared
//! dir) and writes `result.toml`; the host then judges it exactly like a native run, so the
//! snapshot is the same whichever backend ran it.

pub mod uml;

use crate::model::{KernelFeature, Lab};
use crate::runner::{self, Options, Run};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Native,
    Uml,
}

impl Backend {
    pub fn name(self) -> &'static str {
        self.driver().name()
    }

    /// The driver that does this backend's work.
    pub fn driver(self) -> &'static dyn Driver {
        match self {
            Backend::Native => &Native,
            Backend::Uml => &Uml,
        }
    }
}

/// What a backend does (a new backend — a VM, a container runtime, a remote host — is one more
/// implementation): say which kernel features it offers, and run one scenario of a lab to a
/// [`Run`], the same result type whoever ran it (the host judges it like any other).
pub trait Driver: Sync {
    fn name(&self) -> &'static str;
    /// Does its kernel have `f`? (probed once per process)
    fn has(&self, f: KernelFeature) -> bool;
    /// Runs `scenario` of `lab`: builds, steps, tears down, and returns what was observed.
    fn run(&self, lab: &Lab, scenario: &str, opts: &Options) -> Result<Run>;
}

/// The host's own kernel: the runner in this process.
pub struct Native;

impl Driver for Native {
    fn name(&self) -> &'static str {
        "native"
    }
    fn has(&self, f: KernelFeature) -> bool {
        crate::env::kernel_has(f)
    }
    fn run(&self, lab: &Lab, scenario: &str, opts: &Options) -> Result<Run> {
        runner::run(lab, scenario, opts)
    }
}

/// A user-mode-linux guest running this same binary on the job written for it.
pub struct Uml;

impl Driver for Uml {
    fn name(&self) -> &'static str {
        "uml"
    }
    fn has(&self, f: KernelFeature) -> bool {
        uml_features().map(|fs| fs.contains(&f)).unwrap_or(false)
    }
    fn run(&self, lab: &Lab, scenario: &str, opts: &Options) -> Result<Run> {
        run_uml(lab, scenario, opts)
    }
}

/// Is the user-mode-linux backend usable on this machine?
pub fn uml_usable() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| uml::available().is_ok())
}

/// The backend `VPNLAB_BACKEND=native|uml` forces, if any (`Err` for any other value).
pub fn forced() -> Result<Option<Backend>, String> {
    match crate::config::get().backend.as_deref() {
        Some("native") => Ok(Some(Backend::Native)),
        Some("uml") => Ok(Some(Backend::Uml)),
        Some("") | None => Ok(None),
        Some(other) => Err(format!("--backend / VPNLAB_BACKEND={other}: use `native` or `uml`")),
    }
}

/// Which backend runs `lab` (any of its scenarios): see [`choose_for`].
pub fn choose(lab: &Lab) -> Result<Backend, String> {
    choose_for(lab, None, None)
}

/// Does `backend`'s kernel have `f`? (native: probed on the host; uml: probed once in a guest)
pub fn has(backend: Backend, f: KernelFeature) -> bool {
    backend.driver().has(f)
}

/// Whether `backend`'s kernel has every feature `scenario` of `lab` needs.
pub fn has_all(backend: Backend, lab: &Lab, scenario: &str) -> bool {
    lab.kernel_needs(Some(scenario)).iter().all(|f| has(backend, *f))
}

/// Which backend runs `scenario` of `lab` (or any scenario: `None`): `force` (else
/// `VPNLAB_BACKEND=native|uml`) picks one; otherwise native when the host kernel has every
/// feature the scenario needs ([`Lab::kernel_needs`]), else UML when its kernel has them all.
/// `Err` says which features are missing where, and what brings them.
pub fn choose_for(lab: &Lab, scenario: Option<&str>, force: Option<Backend>) -> Result<Backend, String> {
    let needs = lab.kernel_needs(scenario);
    let force = match force {
        Some(b) => Some(b),
        None => forced()?,
    };
    let lacking = |b: Backend| -> Vec<KernelFeature> { needs.iter().copied().filter(|f| !has(b, *f)).collect() };
    let what =
        |fs: &[KernelFeature]| -> String { fs.iter().map(|f| format!("`{}` ({})", f.name(), f.about())).collect::<Vec<_>>().join(", ") };
    let how =
        |fs: &[KernelFeature]| -> String { fs.iter().map(|f| format!("{}: {}", f.name(), f.brings())).collect::<Vec<_>>().join("; ") };
    let native_kernel = || format!("the host kernel ({})", crate::env::kernel_release());
    match force {
        Some(Backend::Native) => {
            let l = lacking(Backend::Native);
            if l.is_empty() {
                Ok(Backend::Native)
            } else {
                Err(format!("needs {}, which {} lacks (backend forced to native); {}", what(&l), native_kernel(), how(&l)))
            }
        }
        Some(Backend::Uml) => {
            uml::available().map_err(|e| format!("the uml backend was forced but user-mode-linux is not usable: {e}"))?;
            let l = lacking(Backend::Uml);
            if l.is_empty() {
                Ok(Backend::Uml)
            } else {
                Err(format!(
                    "needs {}, which the user-mode-linux kernel ({}) lacks (backend forced to uml); {}",
                    what(&l),
                    uml_release(),
                    how(&l)
                ))
            }
        }
        None => {
            let ln = lacking(Backend::Native);
            if ln.is_empty() {
                return Ok(Backend::Native);
            }
            match uml::available() {
                Ok(()) => {
                    let lu = lacking(Backend::Uml);
                    if lu.is_empty() {
                        Ok(Backend::Uml)
                    } else {
                        let mut all = ln.clone();
                        all.extend(lu.iter().copied());
                        all.sort();
                        all.dedup();
                        Err(format!(
                            "no backend on this machine has what it needs: {} lacks {}; the user-mode-linux kernel ({}) lacks {}; {}",
                            native_kernel(),
                            what(&ln),
                            uml_release(),
                            what(&lu),
                            how(&all)
                        ))
                    }
                }
                Err(e) => Err(format!(
                    "needs {}, which {} lacks, and the user-mode-linux backend is not usable: {e}; {}",
                    what(&ln),
                    native_kernel(),
                    how(&ln)
                )),
            }
        }
    }
}

/// The user-mode-linux kernel's version (its module dir's name).
pub fn uml_release() -> String {
    uml::version().unwrap_or_else(|| "not installed".into())
}

/// The features the user-mode-linux guest's kernel has: probed by booting a guest that runs
/// every [`crate::env::probe_script`] in a fresh network namespace of its own. The answer is
/// kept in `<cache>/uml-features` (see [`with::cache_dir`](crate::with::cache_dir)) under a
/// fingerprint of everything it depends on (the probe scripts, the UML kernel and its modules,
/// the installed packages): the probe boots a guest, 2-4 s per vpnlab run otherwise.
pub fn uml_features() -> Result<Vec<KernelFeature>, String> {
    static F: std::sync::OnceLock<Result<Vec<KernelFeature>, String>> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        uml::available()?;
        let script = probe_script();
        let cache = crate::with::cache_dir().join("uml-features");
        let fp = probe_fingerprint(&script);
        if let Some(found) = fp.as_deref().and_then(|fp| read_probe_cache(&cache, fp)) {
            return Ok(found);
        }
        let found = probe_uml(script).map_err(|e| format!("probing the user-mode-linux kernel: {e:#}"))?;
        if let Some(fp) = fp {
            write_probe_cache(&cache, &fp, &found);
        }
        Ok(found)
    })
    .clone()
}

/// What the probe's answer depends on, in one line; `None` when something cannot be read.
fn probe_fingerprint(script: &str) -> Option<String> {
    use std::hash::{Hash, Hasher};
    let stamp = |p: &Path| -> Option<String> {
        let m = std::fs::metadata(p).ok()?;
        let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(format!("{}@{}", m.len(), t.as_nanos()))
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (script, guest_alternatives(), modules_for_features(&[KernelFeature::Ppp, KernelFeature::Esp])).hash(&mut h);
    let dpkg = stamp(Path::new("/var/lib/dpkg/status")).unwrap_or_else(|| "-".into());
    Some(format!(
        "v1 {:016x} {} kernel={} modules={} dpkg={dpkg}",
        h.finish(),
        uml::version()?,
        stamp(Path::new(uml::UML_KERNEL))?,
        stamp(&uml::module_dir()?.join("modules.dep"))?
    ))
}

fn read_probe_cache(path: &Path, fingerprint: &str) -> Option<Vec<KernelFeature>> {
    let text = std::fs::read_to_string(path).ok()?;
    let (fp, features) = text.split_once('\n')?;
    if fp != fingerprint {
        return None;
    }
    features.split_whitespace().map(KernelFeature::parse).collect()
}

/// Best effort: a cache that cannot be written only costs the next run a probe.
fn write_probe_cache(path: &Path, fingerprint: &str, found: &[KernelFeature]) {
    let names: Vec<&str> = found.iter().map(|f| f.name()).collect();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let ok = path.parent().map(std::fs::create_dir_all).is_some_and(|r| r.is_ok())
        && std::fs::write(&tmp, format!("{fingerprint}\n{}\n", names.join(" "))).is_ok()
        && std::fs::rename(&tmp, path).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// One shell script that prints `vpnlab-feature NAME yes|no` for every feature.
fn probe_script() -> String {
    let mut script = String::new();
    for f in KernelFeature::ALL {
        let q = crate::env::probe_script(f).replace('\'', "'\\''");
        script.push_str(&format!(
            "if unshare -n sh -c '{q}' >/dev/null 2>&1; then echo 'vpnlab-feature {} yes'; else echo 'vpnlab-feature {} no'; fi\n",
            f.name(),
            f.name()
        ));
    }
    script
}

fn probe_uml(script: String) -> Result<Vec<KernelFeature>> {
    let shared = tempfile::Builder::new().prefix("vpnlab-uml-probe-").tempdir()?;
    let mut uj = uml::UmlJob::new(vec!["/bin/sh".into(), "-c".into(), script], shared.path());
    uj.alternatives = guest_alternatives();
    uj.modules = modules_for_features(&[KernelFeature::Ppp, KernelFeature::Esp]);
    uj.timeout = Duration::from_secs(60);
    let out = uml::run(&uj)?;
    let found: Vec<KernelFeature> = out
        .console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("vpnlab-feature "))
        .filter_map(|l| l.strip_suffix(" yes"))
        .filter_map(KernelFeature::parse)
        .collect();
    if !out.console.contains("vpnlab-feature ") {
        bail!(
            "the guest printed no probe results (exit {}): {}",
            out.exit_code,
            out.console.lines().rev().take(10).collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(found)
}

#[derive(Serialize, Deserialize)]
struct Job {
    lab_dir: PathBuf,
    scenario: String,
    progress: bool,
    #[serde(default)]
    pcap: bool,
    /// The daemon builds chosen with `--with` (resolved on the host; the guest sees the host's
    /// `/` read-only, so the cache and the paths are the same inside).
    #[serde(default)]
    with: crate::with::With,
    /// The `--version` lines of the lab's daemons, asked on the host (the same binaries):
    /// the guest's version conditions (`[libreswan < 5]`) need not run them again.
    #[serde(default)]
    versions: std::collections::BTreeMap<String, String>,
}

/// Inside the guest (started as [`crate::reexec::Role::Guest`]): runs the job's scenario and
/// writes its [`Run`] beside the job file.
pub(crate) fn guest_run(job_path: &Path) -> Result<()> {
    let job: Job = toml::from_str(&std::fs::read_to_string(job_path)?)?;
    let lab = crate::model::load(&job.lab_dir).map_err(|e| anyhow!("{e}"))?;
    for (daemon, line) in &job.versions {
        crate::versions::preset(daemon, line);
    }
    let opts = Options { keep: true, progress: job.progress, pcap: job.pcap, with: job.with, sink: None, work_root: None };
    let t0 = std::time::Instant::now();
    let mut live = runner::Live::start(&lab, &job.scenario, &opts)?;
    // With progress, each step's wall time in the guest (the host relays the lines).
    let label = format!("[{}::{}]", lab.id, job.scenario);
    let mut t = std::time::Instant::now();
    if job.progress {
        eprintln!("  {label} (guest: lab built and daemons ready in {:.0} ms)", t0.elapsed().as_secs_f64() * 1e3);
    }
    while live.step().is_some() {
        if job.progress {
            eprintln!("  {label} (step took {:.0} ms)", t.elapsed().as_secs_f64() * 1e3);
            t = std::time::Instant::now();
        }
    }
    // No teardown: the guest is powered off as soon as this process exits, which ends every
    // process and namespace of the lab at once. (With --pcap, tcpdump is stopped as usual.)
    let mut run = if job.pcap { live.finish() } else { live.finish_abandoned() };
    run.keep_workdir();
    std::fs::write(job_path.with_file_name("result.toml"), toml::to_string(&run)?)?;
    Ok(())
}

/// Kernel modules the guest loads for a lab.
fn modules_for(lab: &Lab) -> Vec<String> {
    modules_for_features(&lab.kernel_needs(None))
}

/// Kernel modules the guest loads for these features (others are autoloaded on demand).
fn modules_for_features(features: &[KernelFeature]) -> Vec<String> {
    let mut m: Vec<String> = ["tun", "veth", "bridge"].iter().map(|s| s.to_string()).collect();
    for f in features {
        match f {
            KernelFeature::Ppp => m.extend(["ppp_generic", "ppp_async", "ppp_deflate", "bsd_comp"].map(String::from)),
            KernelFeature::Esp => m.extend(["esp4", "xfrm_user", "xfrm4_tunnel", "tunnel4", "ip_vti"].map(String::from)),
            _ => {}
        }
    }
    m
}

/// Debian's UML kernel has no nft NAT (nft_chain_nat) and no nft ip/inet families, only the
/// legacy iptables tables: in the guest, `iptables*` are iptables-legacy (same commands, same
/// output) for every process, through the guest's own `/etc/alternatives` (as
/// `update-alternatives --set iptables /usr/sbin/iptables-legacy` would do), whatever its PATH.
pub fn guest_alternatives() -> Vec<(String, PathBuf)> {
    ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"]
        .iter()
        .map(|n| {
            let legacy = match n.split_once('-') {
                Some((cmd, op)) => format!("/usr/sbin/{cmd}-legacy-{op}"),
                None => format!("/usr/sbin/{n}-legacy"),
            };
            (n.to_string(), PathBuf::from(legacy))
        })
        .filter(|(_, t)| t.exists())
        .collect()
}

/// Runs a scenario on `backend`.
pub fn run(lab: &Lab, scenario: &str, opts: &Options, backend: Backend) -> Result<Run> {
    backend.driver().run(lab, scenario, opts)
}

/// The host's `--version` lines of the daemons `lab`'s version conditions name (asked once per
/// process, a few ms natively), for the guest.
fn daemon_versions(lab: &Lab) -> std::collections::BTreeMap<String, String> {
    let daemons: std::collections::BTreeSet<&'static str> = lab
        .scenarios
        .iter()
        .flat_map(|sc| sc.steps.iter())
        .chain(lab.prelude.iter())
        .filter_map(|st| st.when.as_ref().map(|c| c.daemon))
        .collect();
    daemons.into_iter().map(|d| (d.to_string(), crate::versions::version(d))).collect()
}

fn run_uml(lab: &Lab, scenario: &str, opts: &Options) -> Result<Run> {
    let work = opts.work_dir(&format!("{}-{scenario}-uml", lab.id))?;
    let shared = work.path().to_path_buf();
    let lab_dir = std::fs::canonicalize(&lab.dir).with_context(|| format!("lab folder {}", lab.dir.display()))?;
    let job = Job {
        lab_dir: lab_dir.clone(),
        scenario: scenario.to_string(),
        progress: opts.wants_progress(),
        pcap: opts.pcap,
        with: opts.with.clone(),
        versions: daemon_versions(lab),
    };
    let job_path = shared.join("job.toml");
    std::fs::write(&job_path, toml::to_string(&job)?)?;
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let mut argv = vec![exe];
    argv.extend(crate::reexec::Role::Guest { job: job_path.clone() }.args());
    let mut uj = uml::UmlJob::new(argv, &shared);
    // The guest's vpnlab gets this one's settings, except where it works and how it runs.
    uj.env = crate::config::get()
        .to_env()
        .into_iter()
        .filter(|(k, _)| !["VPNLAB_WORK_ROOT", "VPNLAB_BACKEND"].contains(k))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    uj.env.extend([
        ("VPNLAB_WORK_ROOT".to_string(), shared.to_string_lossy().into_owned()),
        ("VPNLAB_BACKEND".to_string(), "native".to_string()),
    ]);
    uj.alternatives = guest_alternatives();
    uj.modules = modules_for(lab);
    // The guest mounts fresh tmpfs on /tmp and /run: a lab folder there (a checkout under /tmp)
    // must be shown to it explicitly.
    uj.expose = vec![lab_dir];
    // And the folders of the fragments it includes (`include = ["../common/x.toml"]`).
    uj.expose.extend(lab.includes.iter().filter_map(|f| f.parent()).map(Path::to_path_buf));
    // A `--with` build under /tmp (a release engineer's scratch build) too.
    uj.expose.extend(opts.with.choices.iter().flat_map(|c| c.dirs()).filter(|d| d.starts_with("/tmp") || d.starts_with("/run")));
    uj.timeout = lab.deadline + Duration::from_secs(30);
    // A warm guest from the pool (one booted with this lab's modules), unless
    // `--uml-fresh` asks for a fresh guest per scenario.
    let (out, booted) = if crate::config::get().uml_fresh {
        (uml::run(&uj).context("running the lab in user-mode-linux")?, true)
    } else {
        let p = uml::pool::run(&uj, &uj.modules).context("running the lab in user-mode-linux")?;
        (p.outcome, p.booted)
    };
    if opts.wants_progress() {
        for l in out.console.lines().filter(|l| l.contains(&format!("[{}::{scenario}]", lab.id))) {
            opts.emit(l);
        }
    }
    let res_path = shared.join("result.toml");
    let res: Run = match std::fs::read_to_string(&res_path) {
        Ok(t) => toml::from_str(&t)?,
        Err(_) => {
            let tail: Vec<&str> = out.console.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("the user-mode-linux guest wrote no result (exit {}); its console ended with:\n{}", out.exit_code, tail.join("\n"));
        }
    };
    if opts.wants_progress() {
        // total = boot + the guest's vpnlab (start, build, daemons, steps) + the rest (the guest
        // process loading the lab, writing the result, power-off, host side).
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let tm = &res.timings;
        let lab_time = tm.build + tm.daemons + tm.steps + tm.teardown;
        let guest = if booted { format!("guest booted for it in {:.0} ms", ms(out.boot)) } else { "warm guest reused".to_string() };
        opts.emit(&format!(
            "  (user-mode-linux: {guest}, build {:.0} ms, daemons {:.0} ms, steps {:.0} ms, rest {:.0} ms, total {:.0} ms)",
            ms(tm.build),
            ms(tm.daemons),
            ms(tm.steps),
            ms(out.total.saturating_sub(out.boot + lab_time)),
            ms(out.total)
        ));
    }
    Ok(res.with_work(work))
}

#[cfg(test)]
mod tests {
    use super::{read_probe_cache, write_probe_cache};
    use crate::model::KernelFeature;

    #[test]
    fn the_probe_cache_answers_only_for_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/uml-features");
        assert_eq!(read_probe_cache(&path, "fp1"), None);
        write_probe_cache(&path, "fp1", &[KernelFeature::Ppp, KernelFeature::Esp]);
        assert_eq!(read_probe_cache(&path, "fp1"), Some(vec![KernelFeature::Ppp, KernelFeature::Esp]));
        assert_eq!(read_probe_cache(&path, "fp2"), None);
        write_probe_cache(&path, "fp2", &[]);
        assert_eq!(read_probe_cache(&path, "fp2"), Some(vec![]));
        assert_eq!(read_probe_cache(&path, "fp1"), None);
        // A feature name this build does not know: probe again.
        std::fs::write(&path, "fp3\nppp warp-drive\n").unwrap();
        assert_eq!(read_probe_cache(&path, "fp3"), None);
    }
}
