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

/// How a run that ended in `err` exits: [`Exit::Unusable`] for bad input or environment,
/// [`Exit::NotPassed`] for anything else.
pub fn exit_code(err: &anyhow::Error) -> Exit {
    if err.downcast_ref::<InputError>().is_some() || err.downcast_ref::<EnvError>().is_some() {
        Exit::Unusable
    } else {
        Exit::NotPassed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let env: anyhow::Error = EnvError { msg: "m".into(), hint: "h".into() }.into();
        assert_eq!(exit_code(&env).code(), 2);
        let input: anyhow::Error = InputError::at(std::path::Path::new("l.toml"), "x", 0, "m", "h").into();
        assert_eq!(exit_code(&input.context("loading")).code(), 2, "found under context too");
        assert_eq!(exit_code(&anyhow::anyhow!("other")).code(), 1);
        assert_eq!([Exit::Passed.code(), Exit::Signal(2).code(), Exit::Signal(15).code()], [0, 130, 143]);
    }
}
