//! Jina's `JAML.escape`, done before any YAML is read: every `!Name` in the text becomes
//! `jtype: Name` (its regex `!(\w+)\b`, over the whole text: tags, values and comments alike),
//! so an old `!Flow` file means here what it means to Jina, including files that are YAML only
//! once rewritten. Keeps what it rewrote, so that lines and columns found in the rewritten text
//! can be mapped back to the file as written. Text work only: it parses no YAML.

use crate::yaml::{Node, Value};
use regex::Regex;
use std::sync::LazyLock;

static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"!(\w+)\b").expect("static regex"));

/// What `!` becomes: `!Flow` -> `jtype: Flow`.
const JTYPE: &str = "jtype: ";
/// How many characters each rewrite adds (`!` is 1, `jtype: ` is 7).
const GROWTH: usize = JTYPE.len() - 1;

/// One `!Name` that was rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rewrite {
    /// 1-based line.
    pub line: usize,
    /// 1-based column of the `!` as written.
    pub col: usize,
    /// 1-based column of `jtype: ` in the rewritten text.
    pub new_col: usize,
    pub name: String,
    /// The `!` follows a letter or digit (`Hello!World`): it cannot be a tag, so the rewrite
    /// changes a value (or breaks the line).
    pub in_word: bool,
    /// The `!` is in a comment, where the rewrite changes nothing.
    pub in_comment: bool,
}

pub(crate) struct Escaped {
    pub text: String,
    /// In text order.
    pub rewrites: Vec<Rewrite>,
}

/// Rewrites `text` as Jina does. `!!name`, YAML's own tags (`!!str`), is left alone: Jina turns
/// it into `!jtype: name` and fails, so nothing Jina loads has one, and keeping it keeps
/// standard YAML working.
pub(crate) fn escape(text: &str) -> Escaped {
    let mut out = String::with_capacity(text.len());
    let mut rewrites = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let mut last = 0;
        let mut written = 0usize;
        for m in TAG.find_iter(line) {
            let before = &line[..m.start()];
            let prev = before.chars().next_back();
            if prev == Some('!') {
                continue;
            }
            out.push_str(&line[last..m.start()]);
            out.push_str(JTYPE);
            let name = &m.as_str()[1..];
            out.push_str(name);
            last = m.end();
            let col = before.chars().count() + 1;
            rewrites.push(Rewrite {
                line: i + 1,
                col,
                new_col: col + GROWTH * written,
                name: name.to_string(),
                in_word: prev.is_some_and(|c| c.is_alphanumeric() || c == '_'),
                in_comment: comment_start(before).is_some(),
            });
            written += 1;
        }
        out.push_str(&line[last..]);
    }
    Escaped {
        text: out,
        rewrites,
    }
}

/// Where a comment starts in `before` (a `#` at the start or after a blank), if it does. Quotes
/// are not followed: a `#` inside a quoted value on the same line is rare enough to be taken
/// for a comment, which only drops a warning.
fn comment_start(before: &str) -> Option<usize> {
    let mut prev: Option<char> = None;
    for (i, c) in before.char_indices() {
        if c == '#' && prev.is_none_or(char::is_whitespace) {
            return Some(i);
        }
        prev = Some(c);
    }
    None
}

impl Escaped {
    /// The column as written for `col` on `line` of the rewritten text. A column inside an
    /// inserted `jtype: ` maps to the `!` it replaced.
    pub(crate) fn col(&self, line: usize, col: usize) -> usize {
        let mut shift = 0;
        for r in self.rewrites.iter().filter(|r| r.line == line) {
            if col < r.new_col {
                break;
            }
            if col < r.new_col + JTYPE.len() {
                return r.col;
            }
            shift += GROWTH;
        }
        col.saturating_sub(shift)
    }

    /// Puts every position in `node` back where it was written.
    pub(crate) fn restore(&self, node: &mut Node) {
        if self.rewrites.is_empty() {
            return;
        }
        node.col = self.col(node.line, node.col);
        match &mut node.v {
            Value::Seq(items) => items.iter_mut().for_each(|n| self.restore(n)),
            Value::Map(entries) => {
                for e in entries {
                    e.kcol = self.col(e.kline, e.kcol);
                    self.restore(&mut e.value);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_as_jina_does() {
        let e = escape("!Flow\nwith: {a: '!X', b: Hi!There} # note!x\nt: !!str 1\n");
        assert_eq!(
            e.text,
            "jtype: Flow\nwith: {a: 'jtype: X', b: Hijtype: There} # notejtype: x\nt: !!str 1\n"
        );
        let r: Vec<(usize, usize, usize, bool, bool)> = e
            .rewrites
            .iter()
            .map(|r| (r.line, r.col, r.new_col, r.in_word, r.in_comment))
            .collect();
        assert_eq!(
            r,
            vec![
                (1, 1, 1, false, false),
                (2, 12, 12, false, false),
                (2, 22, 28, true, false),
                (2, 36, 48, true, true),
            ]
        );
    }

    #[test]
    fn columns_map_back() {
        let e = escape("a: !X b !Y c\n");
        // `a: jtype: X b jtype: Y c`
        assert_eq!(e.col(1, 1), 1);
        assert_eq!(e.col(1, 4), 4);
        assert_eq!(e.col(1, 8), 4);
        assert_eq!(e.col(1, 11), 5);
        assert_eq!(e.col(1, 13), 7);
        assert_eq!(e.col(1, 15), 9);
        assert_eq!(e.col(1, 22), 10);
        assert_eq!(e.col(1, 24), 12);
        assert_eq!(e.col(2, 24), 24);
    }

    #[test]
    fn unicode_names_and_columns_in_characters() {
        let e = escape("é: !Ünï x\n");
        assert_eq!(e.text, "é: jtype: Ünï x\n");
        assert_eq!(e.rewrites[0].col, 4);
        assert_eq!(e.col(1, 15), 9);
    }

    proptest::proptest! {
        #[test]
        fn every_column_maps_back_to_what_was_written(line in "[a-zA-Z0-9 !#'_é]{0,40}") {
            let e = escape(&line);
            let written: Vec<char> = line.chars().collect();
            let read: Vec<char> = e.text.chars().collect();
            for c in 1..=read.len() + 1 {
                let o = e.col(1, c);
                proptest::prop_assert!(o >= 1 && o <= written.len() + 1, "{} -> {}", c, o);
                let inserted = e
                    .rewrites
                    .iter()
                    .any(|r| c >= r.new_col && c < r.new_col + JTYPE.len());
                if c <= read.len() && !inserted {
                    proptest::prop_assert_eq!(read[c - 1], written[o - 1]);
                }
            }
        }
    }
}
