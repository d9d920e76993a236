//! Validation of the lab-authoring tables: `[[sanitize]]` rules and node host names.

use super::lab::Sanitizer;
use super::raw::RawSanitizer;
use super::validate::Validator;
use crate::error::InputError;
use regex::Regex;
use toml::Spanned;

impl Validator<'_> {
    /// One `[[sanitize]]` table: exactly one of `re` (with `with`), `delete`, `drop_blank`.
    pub(super) fn sanitizer(&self, s: &Spanned<RawSanitizer>) -> Result<Sanitizer, InputError> {
        let at = s.span().start;
        let r = s.get_ref();
        let regex = |x: &Spanned<String>, what: &str| {
            Regex::new(x.get_ref()).map_err(|e| self.err(self.inner(x), format!("bad regex: {e}"), format!("`{what}` is a regex")))
        };
        let after = r.after.as_ref().map(|a| regex(a, "after")).transpose()?;
        let (re, with, delete) = match (&r.re, &r.with, &r.delete, r.drop_blank) {
            (Some(re), Some(with), None, false) => (regex(re, "re")?, with.clone(), false),
            (Some(re), None, None, false) => {
                return Err(self.err(
                    self.inner(re),
                    "`re` without `with`",
                    "add `with = \"...\"` (the replacement), or write `delete = ...` to delete the lines",
                ))
            }
            (None, None, Some(d), false) => (regex(d, "delete")?, String::new(), true),
            (None, None, None, true) => (Regex::new(r"^\s*$").expect("blank-line regex"), String::new(), true),
            _ => {
                return Err(self.err(
                    at,
                    "a sanitizer is one of: `re` + `with` (substitute), `delete` (delete matching lines), `drop_blank = true`",
                    "split it into one [[sanitize]] table per rule (they apply in the order written)",
                ))
            }
        };
        Ok(Sanitizer { re, with, delete, after })
    }
}
/// A host name the kernel takes (at most 64 bytes) made of DNS labels.
pub(super) fn check_hostname(h: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.is_empty() || h.len() > 64 || !h.split('.').all(label_ok) {
        return Err(format!("`{h}` is not a host name (letters, digits, '-' and dots; at most 64 characters)"));
    }
    Ok(())
}
