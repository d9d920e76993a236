//! A problem in a lab file: [`InputError`], located at `file:line:column` with the fix. The
//! runtime (`vpnlab::error`) adds its own errors and the exit-code table; bad input is exit 2.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem in a lab file (or a file it names), located at `file:line:column`.
#[derive(Debug, Clone)]
pub struct InputError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub msg: String,
    pub hint: String,
}

impl InputError {
    /// Builds an error at a byte offset of `src` (the text of `file`).
    pub fn at(file: &Path, src: &str, offset: usize, msg: impl Into<String>, hint: impl Into<String>) -> Self {
        let (line, col) = line_col(src, offset);
        InputError { file: file.to_path_buf(), line, col, msg: msg.into(), hint: hint.into() }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: error: {}", self.file.display(), self.line, self.col, self.msg)?;
        if !self.hint.is_empty() {
            write!(f, "\n  help: {}", self.hint)?;
        }
        Ok(())
    }
}
impl std::error::Error for InputError {}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 8), (2, 3));
    }

    #[test]
    fn offsets_inside_a_character_do_not_panic() {
        assert_eq!(line_col("a\n\u{3000}b", 3), (2, 1));
    }

    #[test]
    fn display_names_file_line_and_fix() {
        let e = InputError::at(Path::new("labs/x/lab.toml"), "x\ny", 2, "unknown node `y`", "declare it");
        assert_eq!(e.to_string(), "labs/x/lab.toml:2:1: error: unknown node `y`\n  help: declare it");
    }
}
