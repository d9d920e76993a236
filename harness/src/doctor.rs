//! `vpnlab doctor`: what this machine offers the labs — the host kernel's features, the
//! user-mode-linux backend and its kernel's features, which labs (scenarios) run natively,
//! which in UML, which nowhere, and what to install.

use crate::backend::{self, Backend};
use crate::model::{KernelFeature, Lab};

/// Where one scenario runs by default, and why not elsewhere.
pub struct Placement {
    pub scenario: String,
    pub native: Vec<KernelFeature>,
    pub uml: Option<Vec<KernelFeature>>,
}

impl Placement {
    /// The backend a plain `vpnlab run` picks (`None`: nowhere on this machine).
    pub fn default_backend(&self) -> Option<Backend> {
        if self.native.is_empty() {
            Some(Backend::Native)
        } else if self.uml.as_ref().is_some_and(|l| l.is_empty()) {
            Some(Backend::Uml)
        } else {
            None
        }
    }
}

/// For each scenario: the needed features each backend lacks (`uml: None` = not usable).
pub fn placements(lab: &Lab) -> Vec<Placement> {
    let uml_ok = backend::uml_usable();
    lab.scenarios
        .iter()
        .map(|s| {
            let needs = lab.kernel_needs(Some(&s.name));
            let lacking = |b: Backend| needs.iter().copied().filter(|f| !backend::has(b, *f)).collect::<Vec<_>>();
            Placement { scenario: s.name.clone(), native: lacking(Backend::Native), uml: uml_ok.then(|| lacking(Backend::Uml)) }
        })
        .collect()
}

fn names(fs: &[KernelFeature]) -> String {
    fs.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The whole report for these labs.
pub fn report(labs: &[Lab]) -> String {
    let mut o = String::new();
    let uml = crate::backend::uml::available();
    o.push_str(&format!("host kernel: Linux {} (native backend)\n", crate::env::kernel_release()));
    match &uml {
        Ok(()) => o.push_str(&format!(
            "user-mode-linux: usable, kernel {} (/usr/bin/linux.uml), modules {}\n",
            backend::uml_release(),
            crate::backend::uml::module_dir().map(|d| d.display().to_string()).unwrap_or_default()
        )),
        Err(e) => o.push_str(&format!("user-mode-linux: not usable: {e}\n")),
    }
    let uml_features = backend::uml_features();
    if let (Ok(()), Err(e)) = (&uml, &uml_features) {
        o.push_str(&format!("  (its kernel could not be probed: {e})\n"));
    }
    o.push_str("\nkernel features (probed in scratch network namespaces; `kernel = [...]` in lab.toml):\n");
    o.push_str(&format!("  {:<20} {:<40} {:<7} {}\n", "feature", "what", "native", "uml"));
    for f in KernelFeature::ALL {
        let u = match &uml_features {
            Ok(fs) => yes(fs.contains(&f)),
            Err(_) => "-",
        };
        o.push_str(&format!("  {:<20} {:<40} {:<7} {}\n", f.name(), f.about(), yes(backend::has(Backend::Native, f)), u));
    }

    let (mut native, mut in_uml, mut nowhere, mut notes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut wanted: Vec<KernelFeature> = Vec::new();
    for lab in labs {
        let ps = placements(lab);
        let n = ps.len();
        let count = |b: Option<Backend>| ps.iter().filter(|p| p.default_backend() == b).count();
        let (cn, cu, cx) = (count(Some(Backend::Native)), count(Some(Backend::Uml)), count(None));
        let label = |c: usize| if c == n { format!("{} ({n})", lab.id) } else { format!("{} ({c} of {n})", lab.id) };
        if cn > 0 {
            native.push(label(cn));
        }
        if cu > 0 {
            in_uml.push(label(cu));
        }
        if cx > 0 {
            nowhere.push(label(cx));
        }
        for p in &ps {
            match p.default_backend() {
                Some(Backend::Native) => {
                    if let Some(l) = p.uml.as_ref().filter(|l| !l.is_empty()) {
                        notes.push(format!("{}::{} runs natively only (the uml kernel lacks {})", lab.id, p.scenario, names(l)));
                    }
                }
                Some(Backend::Uml) => {}
                None => {
                    let mut l = p.native.clone();
                    l.extend(p.uml.clone().unwrap_or_default());
                    l.sort();
                    l.dedup();
                    notes.push(format!(
                        "{}::{} runs nowhere here: native lacks {}{}",
                        lab.id,
                        p.scenario,
                        names(&p.native),
                        match &p.uml {
                            Some(u) => format!(", uml lacks {}", names(u)),
                            None => ", uml not usable".into(),
                        }
                    ));
                    wanted.extend(p.native.iter().copied());
                }
            }
        }
    }
    let list = |title: &str, v: &[String], o: &mut String| {
        o.push_str(&format!("\n{title}: {}\n", v.len()));
        for l in v {
            o.push_str(&format!("  {l}\n"));
        }
    };
    list("labs that run natively (scenarios)", &native, &mut o);
    list("labs that run in user-mode-linux", &in_uml, &mut o);
    list("labs that run nowhere on this machine", &nowhere, &mut o);
    if !notes.is_empty() {
        o.push_str("\nnotes:\n");
        for n in &notes {
            o.push_str(&format!("  {n}\n"));
        }
    }

    let mut install: Vec<String> = Vec::new();
    let mut progs: Vec<(String, &'static str)> = labs.iter().flat_map(crate::env::missing_programs).collect();
    progs.sort();
    progs.dedup();
    for (p, pkg) in progs {
        install.push(format!("`{p}`: install {pkg}"));
    }
    if let Err(e) = &uml {
        if !in_uml.is_empty() || labs.iter().any(|l| placements(l).iter().any(|p| !p.native.is_empty())) {
            install.push(format!("user-mode-linux backend: {e}"));
        }
    }
    wanted.sort();
    wanted.dedup();
    for f in wanted {
        install.push(format!("kernel feature `{}`: {}", f.name(), f.brings()));
    }
    o.push_str("\nto install:");
    if install.is_empty() {
        o.push_str(" nothing: every lab can run on this machine\n");
    } else {
        o.push('\n');
        for i in install {
            o.push_str(&format!("  {i}\n"));
        }
    }
    o
}
