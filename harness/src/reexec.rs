//! vpnlab starting itself. The user-mode-linux guest runs its job with this same binary, and
//! `vpnlab up` leaves a server process behind: both are this binary started with a first
//! argument of its own, [`ARG`], followed by a [`Role`]. [`main_if_requested`], called first
//! in `main` of every binary that runs labs (the CLI and the lab trials of `cargo test`, which
//! the guest may be running), serves the role and exits; it returns at once otherwise. The
//! settings travel as environment variables ([`crate::config::Config::to_env`]).

use std::path::PathBuf;

/// The first argument that marks an internal start (never a lab name or a subcommand).
pub const ARG: &str = "__vpnlab";

/// What an internal start of vpnlab is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Inside a user-mode-linux guest: run the job file's scenario, write its result beside it.
    Guest { job: PathBuf },
    /// A warm user-mode-linux guest's server: runs the jobs written to its console (one a
    /// line) until told to quit; `token` marks its answers (`backend::uml::pool`).
    GuestServer { token: String },
    /// The server of a lab kept up by `vpnlab up` (`until`: the step to stop before; empty: all).
    Serve { lab_dir: PathBuf, scenario: String, until: String, with: Vec<String> },
}

impl Role {
    /// The arguments (after the program) that start this role.
    pub fn args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let mut v = vec![ARG.to_string()];
        match self {
            Role::Guest { job } => v.extend(["guest".to_string(), path(job)]),
            Role::GuestServer { token } => v.extend(["guest-server".to_string(), token.clone()]),
            Role::Serve { lab_dir, scenario, until, with } => {
                v.extend(["serve".to_string(), path(lab_dir), scenario.clone(), until.clone()]);
                v.extend(with.iter().cloned());
            }
        }
        v
    }

    /// The role these arguments (after the program) start: `None` when they are not an
    /// internal start, `Some(Err)` when they are one but malformed.
    pub fn parse(args: &[String]) -> Option<Result<Role, String>> {
        if args.first().map(String::as_str) != Some(ARG) {
            return None;
        }
        Some(match &args[1..] {
            [g, job] if g == "guest" => Ok(Role::Guest { job: job.into() }),
            [g, token] if g == "guest-server" => Ok(Role::GuestServer { token: token.clone() }),
            [s, lab_dir, scenario, until, with @ ..] if s == "serve" => {
                Ok(Role::Serve { lab_dir: lab_dir.into(), scenario: scenario.clone(), until: until.clone(), with: with.to_vec() })
            }
            other => Err(format!("{ARG}: unknown internal start {other:?}")),
        })
    }
}

/// Serves an internal start and exits (the guest: 0, or 3 when the job could not run; the
/// server: 0, or 2); returns when this process was started normally.
pub fn main_if_requested() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = match Role::parse(&args) {
        None => return,
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            eprintln!("vpnlab: {e}");
            std::process::exit(2);
        }
    };
    let code = match role {
        Role::Guest { job } => match crate::backend::guest_run(&job) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vpnlab guest: {e:#}");
                3
            }
        },
        Role::GuestServer { token } => match crate::backend::uml::serve_pool_guest(&token) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vpnlab guest server: {e:#}");
                3
            }
        },
        Role::Serve { lab_dir, scenario, until, with } => {
            // The server owns a lab: SIGTERM/SIGINT clean it up like any command that does.
            crate::ns::install_signal_cleanup();
            match crate::session::serve(&lab_dir, &scenario, &until, &with) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("vpnlab server: {e:#}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_arguments() {
        let roles = [
            Role::Guest { job: "/tmp/w/job.toml".into() },
            Role::GuestServer { token: "ab12".into() },
            Role::Serve { lab_dir: "/l/x".into(), scenario: "s".into(), until: String::new(), with: vec!["openvpn=2.7.8".into()] },
        ];
        for r in roles {
            assert_eq!(Role::parse(&r.args()), Some(Ok(r.clone())));
        }
        assert_eq!(Role::parse(&["run".to_string()]), None);
        assert!(matches!(Role::parse(&[ARG.to_string(), "fly".to_string()]), Some(Err(_))));
    }
}
