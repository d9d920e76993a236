//! Stage 1, config syntax: OpenVPN's own line syntax ([`parse_config`], [`split_line`]) into
//! [`Config`] items, in file order.

use anyhow::Result;

// ====================================================================== config syntax

/// One element of an OpenVPN config file, in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A blank or comment-only line (kept verbatim).
    Text { line: usize, raw: String },
    /// A directive: `name args...` (a leading `--` is dropped from the name, as OpenVPN does).
    /// `conn` is the index of the `<connection>` block it is in.
    Directive { line: usize, raw: String, name: String, args: Vec<String>, conn: Option<usize> },
    /// An inline file: `<tag>` line, body, `</tag>` line (`raw` holds all of them).
    Inline { line: usize, end: usize, raw: String, tag: String, body: String, conn: Option<usize> },
    /// A `<connection>` (start) or `</connection>` line.
    Connection { line: usize, raw: String, start: bool, conn: usize },
}

/// A parsed config: its items in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub items: Vec<Item>,
}

/// A config syntax error: 1-based line and message.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: usize,
    pub msg: String,
}

impl Config {
    /// Every directive (name, args, line), in order, including those in `<connection>` blocks.
    pub fn directives(&self) -> impl Iterator<Item = (&str, &[String], usize)> {
        self.items.iter().filter_map(|i| match i {
            Item::Directive { name, args, line, .. } => Some((name.as_str(), args.as_slice(), *line)),
            _ => None,
        })
    }
    /// Arguments of every occurrence of a directive.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [String]> + 'a {
        self.directives().filter(move |(n, _, _)| *n == name).map(|(_, a, _)| a)
    }
    /// The first occurrence of a directive.
    pub fn first(&self, name: &str) -> Option<&[String]> {
        self.directives().find(|(n, _, _)| *n == name).map(|(_, a, _)| a)
    }
    /// The last occurrence (OpenVPN: a later single-valued option overrides an earlier one).
    pub fn last(&self, name: &str) -> Option<&[String]> {
        self.directives().filter(|(n, _, _)| *n == name).last().map(|(_, a, _)| a)
    }
    /// The body of an inline block.
    pub fn inline(&self, tag: &str) -> Option<&str> {
        self.items.iter().find_map(|i| match i {
            Item::Inline { tag: t, body, .. } if t == tag => Some(body.as_str()),
            _ => None,
        })
    }
    /// Whether the config sets `name`, as a directive or as an inline block.
    pub fn has(&self, name: &str) -> bool {
        self.first(name).is_some() || self.inline(name).is_some()
    }
}

/// Splits one config line into words the way OpenVPN does: whitespace separates words; a word
/// starting with `"` runs to the next unescaped `"` (backslash escapes inside), one starting with
/// `'` to the next `'` (no escapes); outside quotes a backslash makes the next character literal;
/// a word starting with `#` or `;` starts a comment.
pub fn split_line(line: &str) -> Result<Vec<String>, String> {
    #[derive(PartialEq)]
    enum St {
        Between,
        Word,
        Double,
        Single,
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut st = St::Between;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match st {
            St::Between => {
                if c.is_whitespace() {
                    continue;
                }
                match c {
                    '#' | ';' => break,
                    '"' => st = St::Double,
                    '\'' => st = St::Single,
                    '\\' => {
                        cur.push(chars.next().unwrap_or('\\'));
                        st = St::Word;
                    }
                    c => {
                        cur.push(c);
                        st = St::Word;
                    }
                }
            }
            St::Word => match c {
                c if c.is_whitespace() => {
                    out.push(std::mem::take(&mut cur));
                    st = St::Between;
                }
                '\\' => cur.push(chars.next().unwrap_or('\\')),
                c => cur.push(c),
            },
            St::Double => match c {
                '"' => {
                    out.push(std::mem::take(&mut cur));
                    st = St::Between;
                }
                '\\' => cur.push(chars.next().ok_or("a backslash ends the line inside \"...\"")?),
                c => cur.push(c),
            },
            St::Single => match c {
                '\'' => {
                    out.push(std::mem::take(&mut cur));
                    st = St::Between;
                }
                c => cur.push(c),
            },
        }
    }
    match st {
        St::Word => out.push(cur),
        St::Double => return Err("no closing quotation (\")".into()),
        St::Single => return Err("no closing quotation (')".into()),
        St::Between => {}
    }
    Ok(out)
}

/// `<tag>` alone on a line -> `tag`.
pub(super) fn open_tag(t: &str) -> Option<&str> {
    let tag = t.strip_prefix('<')?.strip_suffix('>')?;
    (!tag.is_empty() && !tag.starts_with('/') && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')).then_some(tag)
}

/// Parses an OpenVPN config file.
pub fn parse_config(src: &str) -> Result<Config, SyntaxError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let lines: Vec<&str> = src.lines().collect();
    let mut items = Vec::new();
    let mut conn: Option<(usize, usize)> = None; // (index, opening line)
    let mut nconn = 0;
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let lno = i + 1;
        let t = raw.trim();
        if let Some(tag) = open_tag(t) {
            if tag == "connection" {
                if let Some((_, at)) = conn {
                    return Err(SyntaxError { line: lno, msg: format!("<connection> inside the <connection> block opened at line {at}") });
                }
                conn = Some((nconn, lno));
                items.push(Item::Connection { line: lno, raw: raw.to_string(), start: true, conn: nconn });
                nconn += 1;
                i += 1;
                continue;
            }
            let close = format!("</{tag}>");
            let Some(len) = lines[i + 1..].iter().position(|l| l.trim() == close) else {
                return Err(SyntaxError { line: lno, msg: format!("inline <{tag}> has no closing {close}") });
            };
            let end = i + 1 + len;
            items.push(Item::Inline {
                line: lno,
                end: end + 1,
                raw: lines[i..=end].join("\n"),
                tag: tag.to_string(),
                body: lines[i + 1..end].join("\n"),
                conn: conn.map(|c| c.0),
            });
            i = end + 1;
            continue;
        }
        if t == "</connection>" {
            let Some((c, _)) = conn.take() else {
                return Err(SyntaxError { line: lno, msg: "</connection> without <connection>".into() });
            };
            items.push(Item::Connection { line: lno, raw: raw.to_string(), start: false, conn: c });
            i += 1;
            continue;
        }
        if t.starts_with("</") && t.ends_with('>') {
            return Err(SyntaxError { line: lno, msg: format!("{t} closes a block that was never opened") });
        }
        let words = split_line(raw).map_err(|msg| SyntaxError { line: lno, msg })?;
        match words.split_first() {
            None => items.push(Item::Text { line: lno, raw: raw.to_string() }),
            Some((name, args)) => items.push(Item::Directive {
                line: lno,
                raw: raw.to_string(),
                name: name.trim_start_matches("--").to_string(),
                args: args.to_vec(),
                conn: conn.map(|c| c.0),
            }),
        }
        i += 1;
    }
    if let Some((_, at)) = conn {
        return Err(SyntaxError { line: at, msg: "<connection> has no closing </connection>".into() });
    }
    Ok(Config { items })
}
