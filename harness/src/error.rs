//! Errors the user can act on. Bad input and a bad environment end a run with exit code 2 and
//! one message that names the file, the line and what to do; a lab that runs and fails is a
//! verdict (exit 1), not an error of this kind.
//!
//! [`InputError`] (a bad lab file) lives in the model crate; the runtime adds [`EnvError`].

use std::fmt;

pub use vpnlab_model::error::{line_col, InputError};

/// The machine cannot run a lab: not root, a daemon binary missing, a kernel feature missing.
#[derive(Debug, Clone)]
pub struct EnvError {
    pub msg: String,
    pub hint: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}\n  help: {}", self.msg, self.hint)
    }
}
impl std::error::Error for EnvError {}

/// Every way `vpnlab` ends, with its exit code ([`Exit::code`] is the one table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done and passed.
    Passed,
    /// A scenario did not pass (check-failed, drift, error, transcripts that differed between
    /// repetitions), or an error that is neither bad input nor a bad environment.
    NotPassed,
    /// Bad input or environment ([`InputError`], [`EnvError`]): nothing ran, or a requested
    /// output file could not be written.
    Unusable,
    /// Ended by this signal, after every lab was cleaned up.
    Signal(i32),
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Passed => 0,
            Exit::NotPassed => 1,
            Exit::Unusable => 2,
            Exit::Signal(sig) => (128 + sig).clamp(0, 255) as u8,
        }
    }
}

/// Every error vpnlab ends with, by what the user has to do about it; [`Error::exit`] maps each
/// kind onto [`Exit`]. Code below the CLI returns `anyhow` errors with their context chain; the
/// kind is decided once, from the typed error inside the chain ([`Error::from`]).
#[derive(Debug)]
pub enum Error {
    /// Bad input: a lab file, a spec, a name on the command line ([`InputError`] inside: the
    /// file, line, column and a fix).
    Input(anyhow::Error),
    /// The machine cannot do it: not root, a program or kernel feature missing, an unwritable
    /// output file ([`EnvError`] inside: what is missing and how to get it).
    Environment(anyhow::Error),
    /// Something failed while running.
    Failed(anyhow::Error),
}

impl Error {
    /// The exit code this error ends vpnlab with.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Input(_) | Error::Environment(_) => Exit::Unusable,
            Error::Failed(_) => Exit::NotPassed,
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        if e.downcast_ref::<InputError>().is_some() {
            Error::Input(e)
        } else if e.downcast_ref::<EnvError>().is_some() {
            Error::Environment(e)
        } else {
            Error::Failed(e)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Input(e) | Error::Environment(e) | Error::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let env = Error::from(anyhow::Error::from(EnvError { msg: "m".into(), hint: "h".into() }));
        assert!(matches!(env, Error::Environment(_)) && env.exit().code() == 2);
        let input: anyhow::Error = InputError::at(std::path::Path::new("l.toml"), "x", 0, "m", "h").into();
        let input = Error::from(input.context("loading"));
        assert!(matches!(input, Error::Input(_)), "found under context too");
        assert_eq!(input.exit().code(), 2);
        assert!(input.to_string().starts_with("loading: "), "{input}");
        let other = Error::from(anyhow::anyhow!("other"));
        assert!(matches!(other, Error::Failed(_)) && other.exit().code() == 1);
        assert_eq!([Exit::Passed.code(), Exit::Signal(2).code(), Exit::Signal(15).code()], [0, 130, 143]);
    }
}
