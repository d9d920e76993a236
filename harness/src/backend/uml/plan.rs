//! The validated job ([`Plan`]) and the files the guest boots with: init script, fstab, modprobe
//! wrapper and module tree, the guest's own alternatives dir.

use super::dirs::{canonical_dir, nonce, write_executable};
use super::host::HostConfig;
use super::{UmlJob, ESP_CRYPTO_MODULES, GUEST_OVERMOUNTS, GUEST_PRIVATE, UML_MODULES};

/// Where the guest sees a program whose own folder it covers (see [`Plan::program_dir`]).
pub(super) const GUEST_PROGRAM_DIR: &str = "/run/vpnlab-uml-program";
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The validated job, ready to be turned into an init script.
pub(super) struct Plan<'a> {
    pub(super) job: &'a UmlJob,
    pub(super) host: &'a HostConfig,
    pub(super) nonce: String,
    pub(super) shared: PathBuf,
    pub(super) cwd: PathBuf,
    /// Host dirs hidden by guest mounts that must be visible again (read-only).
    pub(super) reexpose: Vec<PathBuf>,
    /// A program whose folder is itself a guest tmpfs (a binary straight in `/tmp`): that
    /// folder, shown at [`GUEST_PROGRAM_DIR`] instead (showing it at its own path would hide the
    /// guest's tmpfs, and with it the job's shared dir below).
    pub(super) program_dir: Option<PathBuf>,
    pub(super) modules: Vec<String>,
}

impl<'a> Plan<'a> {
    pub(super) fn new(job: &'a UmlJob, host: &'a HostConfig) -> Result<Self> {
        if job.argv.is_empty() || !job.argv[0].starts_with('/') {
            bail!("UmlJob.argv must start with an absolute program path, got {:?}", job.argv);
        }
        for (k, _) in &job.env {
            let ok =
                !k.is_empty() && !k.starts_with(|c: char| c.is_ascii_digit()) && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                bail!("invalid environment variable name {k:?}");
            }
        }
        let shared = canonical_dir(&job.shared_dir, "shared_dir")?;
        let cwd = canonical_dir(&job.cwd, "cwd")?;
        for p in [&shared, &cwd] {
            if p.to_string_lossy().contains([',', '\n', '\'']) || p == Path::new("/") {
                bail!("unsupported path for the UML guest: {}", p.display());
            }
            if p.starts_with("/proc") || p.starts_with("/sys") {
                bail!("{} cannot be shared with the UML guest", p.display());
            }
        }
        let mut covers: Vec<PathBuf> = GUEST_OVERMOUNTS.iter().map(PathBuf::from).collect();
        covers.extend(job.tmpfs.iter().cloned());
        let mut reexpose: Vec<PathBuf> = Vec::new();
        let mut prog_dir = Path::new(&job.argv[0]).parent().and_then(|d| d.canonicalize().ok());
        let mut program_dir = None;
        // The guest's own tmpfs mount points: a folder shown at one of these would hide it.
        let tmpfs_roots: Vec<PathBuf> = covers.iter().cloned().chain(["/dev/shm", "/dev/pts"].map(PathBuf::from)).collect();
        if let Some(d) = prog_dir.take_if(|d| tmpfs_roots.contains(d)) {
            if d.to_string_lossy().contains([',', '\n', '\'']) {
                bail!("unsupported program folder for the UML guest: {}", d.display());
            }
            program_dir = Some(d);
        }
        let extra: Vec<PathBuf> = job.expose.iter().filter_map(|d| d.canonicalize().ok()).collect();
        if let Some(d) = extra.iter().find(|d| tmpfs_roots.contains(d)) {
            bail!(
                "{} cannot be shown to the user-mode-linux guest: the guest has a {} of its own, which it would hide; move the files into a folder of their own",
                d.display(),
                d.display()
            );
        }
        for d in [Some(cwd.clone()), prog_dir].into_iter().flatten().chain(extra) {
            if d.starts_with(&shared) || reexpose.iter().any(|r| d.starts_with(r)) {
                continue;
            }
            if covers.iter().any(|c| d.starts_with(c)) && !d.to_string_lossy().contains([',', '\n', '\'']) {
                reexpose.push(d);
            }
        }
        let mut modules: Vec<String> = Vec::new();
        let mut add = |m: &str| {
            if !modules.iter().any(|x| x == m) {
                modules.push(m.to_string());
            }
        };
        for m in &job.modules {
            if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
                bail!("invalid module name {m:?}");
            }
            if matches!(m.as_str(), "esp4" | "esp6" | "esp4_offload" | "esp6_offload") {
                ESP_CRYPTO_MODULES.iter().for_each(|c| add(c));
            }
            add(m);
        }
        // Parents before children: a folder shown later is not hidden by an earlier one.
        reexpose.sort_by_key(|d| d.components().count());
        Ok(Plan { job, host, nonce: nonce(), shared, cwd, reexpose, program_dir, modules })
    }

    /// The job's program as the guest finds it.
    pub(super) fn program(&self) -> PathBuf {
        match &self.program_dir {
            Some(_) => Path::new(GUEST_PROGRAM_DIR).join(Path::new(&self.job.argv[0]).file_name().unwrap_or_default()),
            None => PathBuf::from(&self.job.argv[0]),
        }
    }

    pub(super) fn marker(&self, what: &str) -> String {
        format!("@@vpnlab-uml:{}:{what}", self.nonce)
    }

    pub(super) fn exit_file(&self) -> PathBuf {
        self.shared.join(format!(".vpnlab-uml-{}.exit", self.nonce))
    }

    /// Write the guest's init script, fstab, modprobe wrapper and module tree into `private`
    /// (mounted read-only at [`GUEST_PRIVATE`] in the guest); returns the init script path.
    ///
    /// Every program the guest runs costs 10-60 ms (dynamic linking over hostfs, UML's
    /// process switch), so the init is shell builtins plus one `mount -a` for all mounts,
    /// `mkdir`, `ip` and one `modprobe -a`.
    pub(super) fn write_guest_files(&self, private: &Path) -> Result<PathBuf> {
        let modroot = private.join("modroot/lib/modules");
        std::fs::create_dir_all(&modroot)?;
        std::os::unix::fs::symlink(Path::new(UML_MODULES).join(&self.host.version), modroot.join(&self.host.version))?;
        write_executable(&private.join("modprobe"), &self.modprobe_wrapper())?;
        if !self.job.alternatives.is_empty() {
            write_alternatives(&private.join("alternatives"), Path::new(HOST_ALTERNATIVES), &self.job.alternatives)?;
        }
        std::fs::write(private.join("fstab"), self.fstab(private))?;
        let init = private.join("init");
        write_executable(&init, &self.init_script(private))?;
        Ok(init)
    }

    /// `/proc/sys/kernel/modprobe` for the guest. The crypto API asks for every algorithm
    /// instance it builds (`crypto-cbc(aes)`, `crypto-cbc(aes)-all`, ... 18 requests for two
    /// ESP states); a modprobe run costs ~60 ms in the guest, so names that no module
    /// provides (per modules.alias) are answered by the shell alone.
    pub(super) fn modprobe_wrapper(&self) -> String {
        let mut w = String::from("#!/bin/sh\n# vpnlab UML guest: kernel module autoloader\nfor n; do :; done\n");
        let aliases = std::fs::read_to_string(Path::new(UML_MODULES).join(&self.host.version).join("modules.alias")).unwrap_or_default();
        let mut crypto: Vec<&str> = aliases
            .lines()
            .filter_map(|l| l.strip_prefix("alias "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|a| a.starts_with("crypto-"))
            .collect();
        crypto.sort_unstable();
        crypto.dedup();
        // Globs in a crypto alias: let modprobe decide for every crypto name.
        if !crypto.is_empty() && !crypto.iter().any(|a| a.contains(['*', '?', '[', '\''])) {
            let pats: Vec<String> = crypto.iter().map(|a| format!("'{a}'")).collect();
            w.push_str(&format!("case $n in crypto-*) case $n in {}) ;; *) exit 1;; esac;; esac\n", pats.join("|")));
        }
        w.push_str(&format!("exec {} -d {GUEST_PRIVATE}/modroot \"$@\"\n", sh_quote(&self.host.modprobe.to_string_lossy())));
        w
    }

    pub(super) fn fstab(&self, private: &Path) -> String {
        let mut t = String::new();
        let mut add = |src: &str, dir: &Path, fs: &str, opts: &str| {
            t.push_str(&format!("{src} {} {fs} {opts} 0 0\n", fstab_escape(dir)));
        };
        add("proc", Path::new("/proc"), "proc", "rw,nosuid,nodev,noexec");
        add("sysfs", Path::new("/sys"), "sysfs", "rw,nosuid,nodev,noexec");
        add("devpts", Path::new("/dev/pts"), "devpts", "rw,nosuid,noexec,gid=5,mode=0620,ptmxmode=0666,X-mount.mkdir");
        add("tmpfs", Path::new("/dev/shm"), "tmpfs", "rw,nosuid,nodev,mode=1777,X-mount.mkdir");
        add("tmpfs", Path::new("/tmp"), "tmpfs", "rw,nosuid,nodev,mode=1777");
        add("tmpfs", Path::new("/run"), "tmpfs", "rw,nosuid,nodev,mode=0755");
        if !Path::new("/var/run").is_symlink() && Path::new("/var/run").is_dir() {
            add("tmpfs", Path::new("/var/run"), "tmpfs", "rw,nosuid,nodev,mode=0755");
        }
        for d in &self.job.tmpfs {
            if d.is_dir() {
                add("tmpfs", d, "tmpfs", "rw,mode=0755");
            }
        }
        // hostfs: the mount data is the host path (no commas: validated in Plan::new). The shared
        // dir last: a folder shown read-only that holds it must not hide it.
        for d in &self.reexpose {
            add("none", d, "hostfs", &format!("ro,{},X-mount.mkdir", fstab_escape(d)));
        }
        if let Some(d) = &self.program_dir {
            add("none", Path::new(GUEST_PROGRAM_DIR), "hostfs", &format!("ro,{},X-mount.mkdir", fstab_escape(d)));
        }
        add("none", &self.shared, "hostfs", &format!("rw,{},X-mount.mkdir", fstab_escape(&self.shared)));
        add("none", Path::new(GUEST_PRIVATE), "hostfs", &format!("ro,{},X-mount.mkdir", fstab_escape(private)));
        if !self.job.alternatives.is_empty() && Path::new(HOST_ALTERNATIVES).is_dir() {
            let alt = private.join("alternatives");
            add("none", Path::new(HOST_ALTERNATIVES), "hostfs", &format!("ro,{}", fstab_escape(&alt)));
        }
        t
    }

    pub(super) fn init_script(&self, private: &Path) -> String {
        let q = |p: &Path| sh_quote(&p.to_string_lossy());
        let mut s = String::new();
        let mut line = |l: &str| {
            s.push_str(l);
            s.push('\n');
        };
        line("#!/bin/sh");
        line("# vpnlab UML guest init (generated by harness/src/backend/uml.rs)");
        line("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH");
        line(&format!("M={}", sh_quote(&format!("@@vpnlab-uml:{}", self.nonce))));
        // Power off without returning: init exiting would panic the guest. sysrq-o powers off
        // from a kernel worker right away; `sleep infinity` just keeps init alive meanwhile.
        line("off() { sync; echo o > /proc/sysrq-trigger || poweroff -f; exec sleep infinity; }");
        line("fail() { echo \"$M:fail:$*@@\"; off; }");
        // The fstab is read completely before /tmp (where it lives) is covered.
        line(&format!("mount -a -T {} || fail mount -a", q(&private.join("fstab"))));
        line("mkdir -p /run/lock /run/netns /dev/net");
        line("ip link set lo up || fail loopback");
        line(&format!("echo {GUEST_PRIVATE}/modprobe > /proc/sys/kernel/modprobe || fail modprobe wrapper"));
        if !self.modules.is_empty() {
            let mods = self.modules.join(" ");
            line(&format!("{} -d {GUEST_PRIVATE}/modroot -a {mods} || fail modprobe {mods}", q(&self.host.modprobe)));
        }
        // Nodes for drivers not loaded yet (devtmpfs creates them on load); opening one
        // autoloads the driver through the wrapper.
        line("[ -e /dev/net/tun ] || mknod -m 0666 /dev/net/tun c 10 200");
        line("[ -e /dev/ppp ] || mknod -m 0600 /dev/ppp c 108 0");
        line("HOME=/root; TERM=dumb; export HOME TERM");
        for (k, v) in &self.job.env {
            line(&format!("{k}={}; export {k}", sh_quote(v)));
        }
        line(&format!("cd {} || fail cd {}", q(&self.cwd), q(&self.cwd)));
        line("echo \"$M:start@@\"");
        let mut argv: Vec<String> = self.job.argv.iter().map(|a| sh_quote(a)).collect();
        argv[0] = sh_quote(&self.program().to_string_lossy());
        line(&format!("{}{}", argv.join(" "), if self.job.console_stdin { "" } else { " </dev/null" }));
        line("rc=$?");
        line(&format!("echo $rc > {} || fail writing exit code", q(&self.exit_file())));
        line("echo \"$M:exit:$rc@@\"");
        line("off");
        s
    }

    /// The guest's own failure report, if any.
    pub(super) fn failure(&self, console: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(console);
        let m = self.marker("fail:");
        let at = text.find(&m)?;
        let rest = &text[at + m.len()..];
        Some(rest.split("@@").next().unwrap_or(rest).trim().to_string())
    }

    pub(super) fn clean_console(&self, console: &[u8]) -> String {
        let text = String::from_utf8_lossy(console).replace("\r\n", "\n");
        let m = format!("@@vpnlab-uml:{}:", self.nonce);
        let mut out = String::with_capacity(text.len());
        for l in text.split_inclusive('\n') {
            if let Some(i) = l.find(&m) {
                // Keep what precedes a marker (output without a trailing newline).
                out.push_str(&l[..i]);
                if i > 0 && !out.ends_with('\n') {
                    out.push('\n');
                }
            } else {
                out.push_str(l);
            }
        }
        out
    }
}

pub(super) const HOST_ALTERNATIVES: &str = "/etc/alternatives";

/// A copy of the alternatives dir `host` (its symlinks) in `dir`, with the links named in
/// `changes` pointing at their new targets (only names `host` has).
pub(super) fn write_alternatives(dir: &Path, host: &Path, changes: &[(String, PathBuf)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let Ok(entries) = std::fs::read_dir(host) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name();
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        let target = changes.iter().find(|(n, _)| std::ffi::OsStr::new(n) == name).map(|(_, t)| t.clone()).unwrap_or(target);
        std::os::unix::fs::symlink(&target, dir.join(&name)).with_context(|| format!("alternative {}", name.to_string_lossy()))?;
    }
    Ok(())
}

/// fstab fields are whitespace separated; octal escapes as in getmntent(3).
pub(super) fn fstab_escape(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
