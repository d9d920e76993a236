//! The word splitter for command lines in the lab file ([`split_words`]).
//!
//! The `shlex` crate (POSIX shell word splitting, as Python's `shlex.split`) rather than a
//! hand-written splitter: '...' and "..." quoting, backslashes, `#` comments, like a shell.

/// Splits a command line into words as a POSIX shell would (no expansions): '...' is literal,
/// in "..." a backslash escapes only `$`, `` ` ``, `"`, `\` and a newline, outside quotes it
/// escapes any character; a word starting with `#` starts a comment.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut lexer = shlex::Shlex::new(s);
    let words: Vec<String> = lexer.by_ref().collect();
    if lexer.had_error {
        return Err("an unclosed ' or \" quote, or a \\ at the end".into());
    }
    Ok(words)
}
