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

#[cfg(test)]
mod tests {
    const BASE: &str = "[lab]\ntitle = \"t\"\n[nodes.a]\n[scenarios.s]\nsteps = [\"a: show ls\"]\n";

    fn parse(extra: &str) -> Result<crate::Lab, crate::InputError> {
        let dir = tempfile::tempdir().unwrap();
        crate::parse(&dir.path().join("lab.toml"), &format!("{BASE}{extra}"))
    }

    #[test]
    fn sanitizer_kinds_in_the_order_written() {
        let lab = parse(
            "[[sanitize]]\nre = \"a\"\nwith = \"b\"\n[[sanitize]]\ndelete = \"^x\"\nafter = \"^ls\"\n[[sanitize]]\ndrop_blank = true\n",
        )
        .unwrap();
        let s = &lab.sanitizers;
        assert_eq!((s[0].re.as_str(), s[0].with.as_str(), s[0].delete, s[0].after.is_none()), ("a", "b", false, true));
        assert_eq!((s[1].re.as_str(), s[1].delete, s[1].after.as_ref().map(|a| a.as_str())), ("^x", true, Some("^ls")));
        assert_eq!((s[2].re.as_str(), s[2].delete), (r"^\s*$", true));
    }

    #[test]
    fn a_sanitizer_is_exactly_one_rule_and_errors_are_located() {
        let e = parse("[[sanitize]]\nre = \"a\"\n").unwrap_err();
        assert_eq!((e.line, e.col), (7, 7), "{e}");
        assert!(e.msg.contains("`re` without `with`"), "{e}");
        let e = parse("[[sanitize]]\ndelete = \"a\"\ndrop_blank = true\n").unwrap_err();
        assert!(e.msg.contains("a sanitizer is one of"), "{e}");
        assert_eq!(e.line, 6, "{e}"); // its [[sanitize]] header
        let e = parse("[[sanitize]]\ndrop_blank = true\nafter = \"(\"\n").unwrap_err();
        assert_eq!((e.line, e.col), (8, 10), "{e}");
        assert!(e.msg.starts_with("bad regex"), "{e}");
    }

    #[test]
    fn hostnames_default_to_the_node_name_and_are_checked() {
        assert_eq!(parse("").unwrap().nodes[0].hostname, "a");
        let dir = tempfile::tempdir().unwrap();
        let lab = crate::parse(&dir.path().join("lab.toml"), &BASE.replace("[nodes.a]", "[nodes.a]\nhostname = \"west.example\""));
        assert_eq!(lab.unwrap().nodes[0].hostname, "west.example");
        let e = crate::parse(&dir.path().join("lab.toml"), &BASE.replace("[nodes.a]", "[nodes.a]\nhostname = \"we st\"")).unwrap_err();
        assert_eq!((e.line, e.col), (4, 13), "{e}");
        assert!(e.msg.contains("is not a host name"), "{e}");
    }
}
