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

/// Exit code for an error: 2 for bad input or environment, 1 for anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<InputError>().is_some() || err.downcast_ref::<EnvError>().is_some() {
        2
    } else {
        1
    }
}
