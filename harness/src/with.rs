//! `--with NAME=SPEC`: run a lab's daemons from another build than the host's.
//!
//! NAME is `openvpn`, `libreswan` (pluto and its `ipsec` tools) or `pppd`. SPEC is
//! - a path: an executable (bind-mounted over the daemon's path, e.g. `/usr/sbin/openvpn`), an
//!   install prefix (`PREFIX/sbin/openvpn`, `PREFIX/sbin/ipsec` + `PREFIX/libexec/ipsec`), or a
//!   root file system (a folder with `usr/sbin/openvpn`: its `/usr` is bind-mounted over `/usr`);
//! - `debian:SUITE` (`debian:sid`): a minimal Debian root file system of that suite with
//!   openvpn, libreswan and ppp, built once with `mmdebstrap --variant=apt` into
//!   `$XDG_CACHE_HOME/vpnlab/debian/SUITE` (default `~/.cache/vpnlab`); the service runs with that
//!   root's `/usr` bind-mounted over `/usr` (Debian is merged-/usr: binaries, libraries and the
//!   loader), in its own private mount namespace. The node's dir, `/proc`, `/sys`, `/dev/net/tun`
//!   and `/etc` stay the host's; nothing outside the service's mount namespace changes;
//! - a version (`2.7.8`, `5.2`, `2.6`): the host's own binary when it is that version, else the
//!   Debian suite that carries it (asked from the cached roots first, then from Debian's archive
//!   through apt with a private state dir under the cache).
//!
//! Resolution happens once, before anything runs; a bad SPEC is an [`EnvError`] (exit 2) that
//! says what is available.

use crate::error::EnvError;
use crate::process::BindMount;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The suites of Debian's archive vpnlab knows, in the order a version is looked up.
pub const SUITES: [&str; 4] = ["bookworm", "trixie", "sid", "bullseye"];

/// The Debian archive to fetch from: `$VPNLAB_DEBIAN_MIRROR`, else the first Debian archive in
/// the host's own apt sources (the one this machine already uses; never changed by vpnlab).
fn mirror() -> Result<String> {
    if let Some(m) = crate::config::get().debian_mirror.as_ref().filter(|m| !m.is_empty()) {
        return Ok(m.clone());
    }
    let debian_suite = |s: &str| {
        let base = s.split('-').next().unwrap_or(s);
        ["bookworm", "trixie", "sid", "bullseye", "forky", "stable", "testing", "unstable", "oldstable"].contains(&base)
            && !s.ends_with("-security")
    };
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(d) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = d.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        if f.extension().is_some_and(|e| e == "sources") {
            // deb822 stanzas: `Types: deb`, `URIs: ...`, `Suites: ...`.
            for stanza in text.split("\n\n") {
                let field = |k: &str| stanza.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()));
                let (Some(types), Some(uris), Some(suites)) = (field("Types:"), field("URIs:"), field("Suites:")) else { continue };
                if types.split_whitespace().any(|t| t == "deb") && suites.split_whitespace().any(debian_suite) {
                    if let Some(u) = uris.split_whitespace().next() {
                        return Ok(u.to_string());
                    }
                }
            }
        } else {
            for l in text.lines() {
                let w: Vec<&str> = l.split_whitespace().filter(|w| !w.starts_with('[')).collect();
                if let ["deb", url, suite, ..] = w.as_slice() {
                    if debian_suite(suite) {
                        return Ok(url.to_string());
                    }
                }
            }
        }
    }
    anyhow::bail!(
        "no Debian archive in this machine's apt sources to fetch Debian builds from: set VPNLAB_DEBIAN_MIRROR to one, or use a path SPEC"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Openvpn,
    Libreswan,
    Pppd,
}

impl Component {
    pub const ALL: [Component; 3] = [Component::Openvpn, Component::Libreswan, Component::Pppd];

    pub fn name(self) -> &'static str {
        match self {
            Component::Openvpn => "openvpn",
            Component::Libreswan => "libreswan",
            Component::Pppd => "pppd",
        }
    }

    pub fn parse(s: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The Debian package.
    pub fn package(self) -> &'static str {
        match self {
            Component::Openvpn => "openvpn",
            Component::Libreswan => "libreswan",
            Component::Pppd => "ppp",
        }
    }

    /// The daemon's name in reports (`versions::daemon_of`).
    pub fn daemon(self) -> &'static str {
        match self {
            Component::Openvpn => "openvpn",
            Component::Libreswan => "pluto",
            Component::Pppd => "pppd",
        }
    }

    pub fn of_daemon(d: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.daemon() == d)
    }

    /// What a path SPEC replaces: (path inside a prefix, the host's path). The first is the
    /// program itself.
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Component::Openvpn => &[("sbin/openvpn", "/usr/sbin/openvpn")],
            Component::Libreswan => &[
                ("libexec/ipsec/pluto", "/usr/libexec/ipsec/pluto"),
                ("sbin/ipsec", "/usr/sbin/ipsec"),
                ("libexec/ipsec", "/usr/libexec/ipsec"),
            ],
            Component::Pppd => &[("sbin/pppd", "/usr/sbin/pppd")],
        }
    }
}

/// Where the chosen build comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// The host's own (a version SPEC the host already has).
    Host,
    /// An executable bind-mounted over the daemon's path.
    Binary { path: PathBuf },
    /// An install prefix: its files bind-mounted over the host's.
    Prefix { path: PathBuf },
    /// A root file system whose `/usr` replaces `/usr` (a Debian suite from the cache, or any
    /// merged-/usr root given as a path).
    Root { path: PathBuf, suite: Option<String> },
}

/// One resolved `--with NAME=SPEC`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub component: Component,
    /// As given (`2.7.8`, `debian:sid`, `/opt/ovpn/sbin/openvpn`).
    pub spec: String,
    pub source: Source,
    /// The first line of the chosen daemon's `--version` (asked through the same mounts).
    pub version: String,
    /// `major.minor` of that version (`2.7`), for snapshot variants.
    pub minor: String,
    /// Is it the host's version (then no snapshot variant applies)?
    pub host_minor: bool,
}

impl Choice {
    /// `openvpn-2.7`: the snapshot variant suffix.
    pub fn variant(&self) -> String {
        format!("{}-{}", self.component.name(), self.minor)
    }

    /// `openvpn=2.7.8`-style label of what ran (the exact version).
    pub fn label(&self) -> String {
        format!("{}={}", self.component.name(), version_number(&self.version).unwrap_or_else(|| self.spec.clone()))
    }

    pub fn mounts(&self) -> Vec<BindMount> {
        match &self.source {
            Source::Host => Vec::new(),
            Source::Binary { path } => vec![BindMount { src: path.clone(), dst: PathBuf::from(self.component.files()[0].1) }],
            Source::Prefix { path } => {
                let mut out = Vec::new();
                for (rel, dst) in self.component.files() {
                    let src = path.join(rel);
                    // A prefix's own libexec/ipsec dir covers pluto; bind the dir, not the file.
                    if src.exists() && Path::new(dst).exists() && !(*rel == "libexec/ipsec/pluto" && path.join("libexec/ipsec").is_dir()) {
                        out.push(BindMount { src, dst: PathBuf::from(dst) });
                    }
                }
                out
            }
            Source::Root { path, .. } => vec![BindMount { src: path.join("usr"), dst: PathBuf::from("/usr") }],
        }
    }

    /// Folders the user-mode-linux guest must be shown (paths under /tmp are not visible there).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.source {
            Source::Host => vec![],
            Source::Binary { path } => path.parent().map(|p| vec![p.to_path_buf()]).unwrap_or_default(),
            Source::Prefix { path } | Source::Root { path, .. } => vec![path.clone()],
        }
    }
}

/// The builds chosen for this run (empty: the host's everywhere).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct With {
    #[serde(default)]
    pub choices: Vec<Choice>,
}

impl With {
    pub fn is_empty(&self) -> bool {
        self.choices.is_empty()
    }

    pub fn get(&self, c: Component) -> Option<&Choice> {
        self.choices.iter().find(|x| x.component == c)
    }

    /// The bind mounts for a service's command line (none for programs not chosen).
    pub fn mounts(&self, argv: &[String]) -> Vec<BindMount> {
        let Some(d) = crate::versions::daemon_of(argv) else { return Vec::new() };
        let Some(c) = Component::of_daemon(d) else { return Vec::new() };
        self.get(c).map(|x| x.mounts()).unwrap_or_default()
    }

    /// The bind mounts for a step's or setup's command (`sh -c "ipsec auto --up x"`): those of
    /// the first chosen daemon whose program (`ipsec`, `pluto`, `openvpn`, `pppd`) is a word of it.
    pub fn mounts_for_command(&self, argv: &[String]) -> Vec<BindMount> {
        if self.choices.is_empty() {
            return Vec::new();
        }
        let text = argv.join(" ");
        for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
            let c = match w {
                "ipsec" | "pluto" | "whack" => Component::Libreswan,
                "openvpn" => Component::Openvpn,
                "pppd" => Component::Pppd,
                _ => continue,
            };
            if let Some(x) = self.get(c) {
                return x.mounts();
            }
        }
        Vec::new()
    }

    /// `openvpn=2.7.8 libreswan=5.2` (empty when nothing was chosen).
    pub fn label(&self) -> String {
        self.choices.iter().map(|c| c.label()).collect::<Vec<_>>().join(" ")
    }

    /// Snapshot variant suffixes (`openvpn-2.7`) of the non-host versions among the daemons a
    /// lab runs.
    pub fn variants(&self, lab: &crate::model::Lab) -> Vec<String> {
        let used: Vec<&str> = lab.services.iter().filter_map(|s| crate::versions::daemon_of(&s.argv)).collect();
        self.choices.iter().filter(|c| !c.host_minor && used.contains(&c.component.daemon())).map(|c| c.variant()).collect()
    }
}

/// Splits `NAME=SPEC[,SPEC...]` (the comma form is for `vpnlab matrix`).
pub fn parse_arg(arg: &str) -> Result<(Component, Vec<String>), EnvError> {
    let bad = |msg: String| {
        EnvError { msg, hint: "use --with NAME=SPEC: NAME is openvpn, libreswan or pppd; SPEC is a path (binary or install prefix), a version (2.7.8) or debian:SUITE".into() }
    };
    let (name, spec) = arg.split_once('=').ok_or_else(|| bad(format!("--with `{arg}`: expected NAME=SPEC")))?;
    let c = Component::parse(name.trim()).ok_or_else(|| bad(format!("--with `{arg}`: unknown NAME `{name}`")))?;
    let specs: Vec<String> = spec.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if specs.is_empty() {
        return Err(bad(format!("--with `{arg}`: empty SPEC")));
    }
    Ok((c, specs))
}

/// Parses and resolves every `--with` of `vpnlab run` (one SPEC per NAME). Fetches what is
/// missing (progress on stderr).
pub fn resolve_all(args: &[String]) -> Result<With, EnvError> {
    let mut w = With::default();
    for a in args {
        let (c, specs) = parse_arg(a)?;
        if specs.len() != 1 {
            return Err(EnvError {
                msg: format!("--with `{a}`: one SPEC per NAME here"),
                hint: "several versions side by side: `vpnlab matrix --with NAME=A,B`".into(),
            });
        }
        if w.get(c).is_some() {
            return Err(EnvError { msg: format!("--with {} given twice", c.name()), hint: "give each NAME once".into() });
        }
        w.choices.push(resolve(c, &specs[0])?);
    }
    Ok(w)
}

/// Resolves one SPEC (see the module doc).
pub fn resolve(c: Component, spec: &str) -> Result<Choice, EnvError> {
    let env = |msg: String, hint: String| EnvError { msg, hint };
    let source = if spec.contains('/') || Path::new(spec).exists() {
        path_source(c, spec)?
    } else if let Some(suite) = spec.strip_prefix("debian:") {
        let path = debian_root(suite)
            .map_err(|e| env(format!("--with {}={spec}: {e:#}", c.name()), format!("Debian suites: {}", SUITES.join(", "))))?;
        Source::Root { path, suite: Some(suite.to_string()) }
    } else if spec.chars().next().is_some_and(|ch| ch.is_ascii_digit()) {
        version_source(c, spec)?
    } else {
        return Err(env(
            format!("--with {}={spec}: not a path, a version or debian:SUITE", c.name()),
            format!("e.g. {}=debian:sid, {}=/opt/build/sbin/{}", c.name(), c.name(), c.daemon()),
        ));
    };
    let mut choice =
        Choice { component: c, spec: spec.to_string(), source, version: String::new(), minor: String::new(), host_minor: false };
    choice.version = crate::versions::version_with(c.daemon(), &choice.mounts());
    if choice.version.starts_with("unknown") {
        return Err(env(
            format!("--with {}={spec}: the chosen {} does not run: {}", c.name(), c.daemon(), choice.version),
            "give an executable built for this machine, its install prefix, or a Debian version".into(),
        ));
    }
    choice.minor = minor(&choice.version).unwrap_or_else(|| "unknown".into());
    choice.host_minor = minor(&crate::versions::version(c.daemon())).as_deref() == Some(choice.minor.as_str());
    if let Source::Root { suite: Some(s), .. } = &choice.source {
        eprintln!("vpnlab: {}={spec}: {} (Debian {s})", c.name(), choice.version);
    } else {
        eprintln!("vpnlab: {}={spec}: {}", c.name(), choice.version);
    }
    Ok(choice)
}

fn path_source(c: Component, spec: &str) -> Result<Source, EnvError> {
    let p = std::fs::canonicalize(spec).map_err(|e| EnvError {
        msg: format!("--with {}={spec}: {e}", c.name()),
        hint: format!("give an executable `{}`, an install prefix (with {}), or a version / debian:SUITE", c.daemon(), c.files()[0].0),
    })?;
    if p.is_file() {
        use std::os::unix::fs::PermissionsExt;
        let mode = p.metadata().map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o111 == 0 {
            return Err(EnvError {
                msg: format!("--with {}={spec}: {} is not executable", c.name(), p.display()),
                hint: format!("chmod +x it, or give an install prefix (with {})", c.files()[0].0),
            });
        }
        return Ok(Source::Binary { path: p });
    }
    if p.join("usr").join(c.files()[0].0).is_file() && p.join("usr/lib").is_dir() {
        return Ok(Source::Root { path: p, suite: None });
    }
    for rel in [c.files()[0].0, &c.files()[0].0.replace("sbin/", "bin/")] {
        if p.join(rel).is_file() {
            return Ok(Source::Prefix { path: p });
        }
    }
    Err(EnvError {
        msg: format!("--with {}={spec}: {} is neither an executable nor an install prefix (no {})", c.name(), p.display(), c.files()[0].0),
        hint: "give the daemon's executable, its install prefix, a root file system (usr/...), a version or debian:SUITE".into(),
    })
}

/// `$XDG_CACHE_HOME/vpnlab` (default `$HOME/.cache/vpnlab`, `/root/.cache/vpnlab` for root).
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("vpnlab");
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("vpnlab")
}

/// The cached root file system of a Debian suite, built on first use (under an flock, so
/// concurrent vpnlab processes build it once).
pub fn debian_root(suite: &str) -> Result<PathBuf> {
    if suite.is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        anyhow::bail!("`{suite}` is not a suite name");
    }
    let base = cache_dir().join("debian");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let root = base.join(suite);
    // Complete and merged-/usr (`/lib` -> `usr/lib`): only `/usr` is bind-mounted.
    let done = |r: &Path| r.join("usr/lib").is_dir() && r.join(".vpnlab-complete").exists() && r.join("lib").is_symlink();
    if done(&root) {
        eprintln!("vpnlab: Debian {suite} root: cached ({})", root.display());
        return Ok(root);
    }
    // Held until the end of this function (closing the file releases it).
    let lock = std::fs::File::create(base.join(format!("{suite}.lock")))?;
    lock.lock().with_context(|| format!("lock {}", base.display()))?;
    if done(&root) {
        eprintln!("vpnlab: Debian {suite} root: cached ({})", root.display());
        return Ok(root);
    }
    if which("mmdebstrap").is_none() {
        anyhow::bail!("mmdebstrap is not installed (`apt-get install mmdebstrap`, or run `sudo ci/setup`)");
    }
    let tmp = base.join(format!("{suite}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&root);
    eprintln!("vpnlab: Debian {suite} root: fetching openvpn, libreswan, ppp with mmdebstrap into {} ...", root.display());
    let t0 = Instant::now();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--mode=unshare",
        "--variant=apt",
        "--quiet",
        "--aptopt=Acquire::Check-Valid-Until \"false\"",
        "--include=openvpn,libreswan,ppp,iproute2",
    ]);
    // Only /usr is bind-mounted: a suite before bookworm is not merged-/usr (its libraries and
    // loader are in /lib) and is refused below. (mmdebstrap's merged-usr hook failed for
    // bullseye in unshare mode here.)
    let out = cmd.arg(suite).arg(&tmp).arg(mirror()?).stdin(Stdio::null()).output().context("running mmdebstrap")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().filter(|l| l.starts_with("E:") || l.contains("rror")).take(4).collect();
        anyhow::bail!("mmdebstrap {suite} failed: {}", if tail.is_empty() { err.trim().to_string() } else { tail.join(" / ") });
    }
    if !tmp.join("lib").is_symlink() {
        let _ = std::fs::remove_dir_all(&tmp);
        anyhow::bail!("the Debian {suite} root is not merged-/usr (its /lib is not a link to usr/lib), so its /usr alone cannot run there; use bookworm or later, or give a path");
    }
    std::fs::write(tmp.join(".vpnlab-complete"), format!("mmdebstrap --variant=apt {suite} in {:.1}s\n", t0.elapsed().as_secs_f64()))?;
    std::fs::rename(&tmp, &root)?;
    eprintln!("vpnlab: Debian {suite} root: fetched in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(root)
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(prog)).find(|f| f.is_file()))
}

/// The installed version of `package` in a root's dpkg status.
pub fn installed_version(root: &Path, package: &str) -> Option<String> {
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).ok()?;
    for para in status.split("\n\n") {
        if para.lines().any(|l| l == format!("Package: {package}")) && para.contains("Status: install ok installed") {
            return para.lines().find_map(|l| l.strip_prefix("Version: ")).map(str::to_string);
        }
    }
    None
}

/// `2.6.14-0+deb12u2` -> `2.6.14`, `1:2.5-1` -> `2.5`.
pub fn upstream(debian_version: &str) -> &str {
    let v = debian_version.split_once(':').map(|x| x.1).unwrap_or(debian_version);
    v.rsplit_once('-').map(|x| x.0).unwrap_or(v)
}

/// Does `spec` (`2.7`, `2.7.8`) name `version` (`2.7.8`)?
fn matches_version(spec: &str, version: &str) -> bool {
    version == spec || version.strip_prefix(spec).is_some_and(|rest| rest.starts_with(['.', '~', '+', '-']))
}

/// `OpenVPN 2.7.8 x86_64...` -> `2.7.8` (the model's, used by its `[openvpn >= 2.7]` conditions).
pub use crate::model::step::version_number;

/// `major.minor` of a `--version` line.
pub fn minor(line: &str) -> Option<String> {
    let n = version_number(line)?;
    let mut it = n.split('.');
    Some(format!("{}.{}", it.next()?, it.next()?))
}

fn version_source(c: Component, spec: &str) -> Result<Source, EnvError> {
    // The host's own build, when it is that version.
    if version_number(&crate::versions::version(c.daemon())).is_some_and(|v| matches_version(spec, &v)) {
        return Ok(Source::Host);
    }
    // A cached root that has it: no network.
    for s in SUITES {
        let root = cache_dir().join("debian").join(s);
        if root.join(".vpnlab-complete").exists()
            && installed_version(&root, c.package()).is_some_and(|v| matches_version(spec, upstream(&v)))
        {
            eprintln!("vpnlab: Debian {s} root: cached ({})", root.display());
            return Ok(Source::Root { path: root, suite: Some(s.to_string()) });
        }
    }
    // Ask the archive.
    let avail = archive_versions(c.package()).map_err(|e| EnvError {
        msg: format!("--with {}={spec}: cannot ask Debian's archive: {e:#}", c.name()),
        hint: "check the network, or give a path or debian:SUITE".into(),
    })?;
    for s in SUITES {
        if let Some((_, v)) = avail.iter().find(|(suite, v)| suite == s && matches_version(spec, upstream(v))) {
            let _ = v;
            let path = debian_root(s).map_err(|e| EnvError { msg: format!("--with {}={spec}: {e:#}", c.name()), hint: String::new() })?;
            return Ok(Source::Root { path, suite: Some(s.to_string()) });
        }
    }
    let list: Vec<String> = avail.iter().map(|(s, v)| format!("{} ({s})", upstream(v))).collect();
    Err(EnvError {
        msg: format!(
            "--with {}={spec}: no such version in Debian's archive ({}) nor on this host ({})",
            c.name(),
            SUITES.join(", "),
            crate::versions::version(c.daemon())
        ),
        hint: format!("available: {}; or give a path to your own build", list.join(", ")),
    })
}

/// `(suite, debian version)` of `package` in Debian's archive, from a private apt state dir in
/// the cache (`apt-get update` there once; refreshed when older than a day).
pub fn archive_versions(package: &str) -> Result<Vec<(String, String)>> {
    let d = cache_dir().join("apt-index");
    for sub in ["lists/partial", "cache/archives/partial", "etc"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    let m = mirror()?;
    let sources: String = SUITES.iter().map(|s| format!("deb {m} {s} main\n")).collect();
    std::fs::write(d.join("etc/sources.list"), sources)?;
    if !d.join("status").exists() {
        std::fs::write(d.join("status"), "")?;
    }
    let opts = |d: &Path| -> Vec<String> {
        vec![
            format!("-oDir::State={}", d.display()),
            format!("-oDir::State::Lists={}", d.join("lists").display()),
            format!("-oDir::State::status={}", d.join("status").display()),
            format!("-oDir::Cache={}", d.join("cache").display()),
            format!("-oDir::Etc::SourceList={}", d.join("etc/sources.list").display()),
            "-oDir::Etc::SourceParts=/nonexistent".into(),
            "-oAcquire::Check-Valid-Until=false".into(),
            "-oAcquire::Languages=none".into(),
            "-oAPT::Sandbox::User=root".into(),
        ]
    };
    let stamp = d.join("updated");
    let fresh = stamp.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age.as_secs() < 86400);
    if !fresh {
        let t0 = Instant::now();
        eprintln!("vpnlab: asking Debian's archive which versions it has ({}) ...", SUITES.join(", "));
        let out =
            Command::new("apt-get").arg("-qq").args(opts(&d)).arg("update").stdin(Stdio::null()).output().context("apt-get update")?;
        if !out.status.success() {
            anyhow::bail!("apt-get update: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        std::fs::write(&stamp, "")?;
        eprintln!("vpnlab: archive index fetched in {:.1}s", t0.elapsed().as_secs_f64());
    }
    let out =
        Command::new("apt-cache").args(opts(&d)).args(["madison", package]).stdin(Stdio::null()).output().context("apt-cache madison")?;
    let mut v = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = l.split('|').map(str::trim).collect();
        if f.len() >= 3 {
            if let Some(suite) = f[2].split_whitespace().nth(1).and_then(|s| s.split('/').next()) {
                v.push((suite.to_string(), f[1].to_string()));
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(upstream("2.6.14-0+deb12u2"), "2.6.14");
        assert_eq!(upstream("1:2.5-1"), "2.5");
        assert!(matches_version("2.7", "2.7.8"));
        assert!(matches_version("2.7.8", "2.7.8"));
        assert!(!matches_version("2.7.1", "2.7.10"));
        assert_eq!(minor("OpenVPN 2.7.8 x86_64-pc-linux-gnu [SSL]").as_deref(), Some("2.7"));
        assert_eq!(minor("Libreswan 5.2 IKEv2").as_deref(), Some("5.2"));
        assert_eq!(minor("pppd version 2.4.9").as_deref(), Some("2.4"));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(parse_arg("wireguard=1.0").is_err());
        assert!(parse_arg("openvpn").is_err());
        assert_eq!(parse_arg("openvpn=2.6.14,2.7.8").unwrap().1, ["2.6.14", "2.7.8"]);
        assert!(resolve(Component::Openvpn, "/nonexistent/openvpn").is_err());
        assert!(resolve(Component::Openvpn, "latest").is_err());
    }
}
