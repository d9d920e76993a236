//! vpnlab's settings, read in one place: the options every command takes, each with the
//! environment variable that sets it too (clap's `env =`), e.g. `--backend uml` or
//! `VPNLAB_BACKEND=uml`. The CLI parses them with its arguments and hands them over with
//! [`set`]; a program that uses the library without the CLI (the lab trials of `cargo test`, the
//! user-mode-linux guest) gets them from the environment alone, parsed by the same definitions.
//! (The lab trials of `cargo test`, which have no options, read their own: `VPNLAB_WITH`,
//! `VPNLAB_PCAP`, `VPNLAB_PROGRESS`, `VPNLAB_SKIP_HOST_CHECK`, in tests/labs.rs.)

use clap::{Args, Parser};
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Args, Debug, Clone, Default)]
pub struct Config {
    /// The labs folder [default: ./labs, else the repository's]
    #[arg(long, global = true, env = "VPNLAB_LABS", value_name = "DIR")]
    pub labs_dir: Option<PathBuf>,
    /// Run every lab on this backend (`native` or `uml`) instead of choosing per scenario
    #[arg(long, global = true, env = "VPNLAB_BACKEND", value_name = "BACKEND")]
    pub backend: Option<String>,
    /// Where work dirs are made [default: the temp dir]
    #[arg(long, global = true, env = "VPNLAB_WORK_ROOT", value_name = "DIR")]
    pub work_root: Option<PathBuf>,
    /// Where the labs kept up by `vpnlab up` keep their state [default: /run/vpnlab]
    #[arg(long, global = true, env = "VPNLAB_STATE", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The Debian archive `--with NAME=VERSION` fetches from [default: the first Debian archive
    /// in this machine's apt sources]
    #[arg(long, global = true, env = "VPNLAB_DEBIAN_MIRROR", value_name = "URL")]
    pub debian_mirror: Option<String>,
    /// Graphviz's `dot` for pictures (`none`: the built-in layout) [default: dot]
    #[arg(long, global = true, env = "VPNLAB_DOT", value_name = "PROGRAM")]
    pub dot: Option<String>,
    /// Print the trace's observation points and raw counts on stderr
    #[arg(long, global = true, env = "VPNLAB_TRACE_DEBUG")]
    pub trace_debug: bool,
    /// Boot a fresh user-mode-linux guest for every scenario instead of reusing warm guests
    /// (to rule out anything carried over from the scenario before)
    #[arg(long, global = true, env = "VPNLAB_UML_FRESH", value_parser = clap::builder::BoolishValueParser::new())]
    pub uml_fresh: bool,
    /// A prefix for the namespace names of `vpnlab up` (keeps concurrent tests apart)
    #[arg(long, global = true, env = "VPNLAB_NETNS_PREFIX", value_name = "PREFIX", hide = true)]
    pub netns_prefix: Option<String>,
}

impl Config {
    /// The settings as the environment variables that give them: for the vpnlab processes
    /// vpnlab starts (the `vpnlab up` server, the user-mode-linux guest), which read them with
    /// [`get`] like any other.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        [
            ("VPNLAB_LABS", path(&self.labs_dir)),
            ("VPNLAB_BACKEND", self.backend.clone()),
            ("VPNLAB_WORK_ROOT", path(&self.work_root)),
            ("VPNLAB_STATE", path(&self.state_dir)),
            ("VPNLAB_DEBIAN_MIRROR", self.debian_mirror.clone()),
            ("VPNLAB_DOT", self.dot.clone()),
            ("VPNLAB_TRACE_DEBUG", self.trace_debug.then(|| "1".to_string())),
            ("VPNLAB_UML_FRESH", self.uml_fresh.then(|| "1".to_string())),
            ("VPNLAB_NETNS_PREFIX", self.netns_prefix.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The CLI's parsed settings (call once, before anything reads them; later calls are ignored).
pub fn set(c: Config) {
    let _ = CONFIG.set(c);
}

/// The settings: those the CLI [`set`], else the environment's.
pub fn get() -> &'static Config {
    CONFIG.get_or_init(from_env)
}

/// The environment's settings, through the same definitions as the CLI's options.
fn from_env() -> Config {
    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct EnvOnly {
        #[command(flatten)]
        c: Config,
    }
    match EnvOnly::try_parse_from(std::iter::empty::<String>()) {
        Ok(e) => e.c,
        Err(e) => {
            eprintln!("vpnlab: ignoring the environment's settings: {e}");
            Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_variables_are_the_same_settings() {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            c: Config,
        }
        let t = T::try_parse_from(["vpnlab", "--backend", "uml", "--work-root", "/w", "--trace-debug"]).unwrap();
        assert_eq!(t.c.backend.as_deref(), Some("uml"));
        assert_eq!(t.c.work_root, Some(PathBuf::from("/w")));
        assert!(t.c.trace_debug);
        let env = t.c.to_env();
        assert!(env.contains(&("VPNLAB_BACKEND", "uml".to_string())) && env.contains(&("VPNLAB_TRACE_DEBUG", "1".to_string())), "{env:?}");
        let cmd = <T as clap::CommandFactory>::command();
        let envs: Vec<String> = cmd.get_arguments().filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned())).collect();
        for v in [
            "VPNLAB_LABS",
            "VPNLAB_BACKEND",
            "VPNLAB_WORK_ROOT",
            "VPNLAB_STATE",
            "VPNLAB_DEBIAN_MIRROR",
            "VPNLAB_DOT",
            "VPNLAB_TRACE_DEBUG",
            "VPNLAB_UML_FRESH",
        ] {
            assert!(envs.iter().any(|e| e == v), "{v} missing from {envs:?}");
        }
    }
}
