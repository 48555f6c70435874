//! Collecting diagnostics, naming fields and values in them, and typed reads of YAML nodes that
//! report what was found and what is allowed instead of failing on the first problem.

use crate::Diagnostic;
use crate::keys::LEGACY;
use crate::vars::{unresolved, unresolved_note};
use crate::yaml::{Entry, Node, Value, py_float};

#[derive(Default)]
pub(crate) struct Diags {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Diags {
    pub(crate) fn error_at(
        &mut self,
        line: usize,
        column: usize,
        field: &str,
        message: impl Into<String>,
    ) {
        self.errors.push(Diagnostic {
            line,
            column,
            field: field.to_string(),
            message: message.into(),
            file: None,
        });
    }

    pub(crate) fn warn_at(
        &mut self,
        line: usize,
        column: usize,
        field: &str,
        message: impl Into<String>,
    ) {
        self.warnings.push(Diagnostic {
            line,
            column,
            field: field.to_string(),
            message: message.into(),
            file: None,
        });
    }

    /// Takes in what was found in another file (`Some`) or another text placed in this one.
    pub(crate) fn absorb(&mut self, other: Diags, file: Option<&str>) {
        let tag = |mut d: Diagnostic| {
            if let Some(f) = file {
                d.file.get_or_insert_with(|| f.to_string());
            }
            d
        };
        self.errors.extend(other.errors.into_iter().map(tag));
        self.warnings.extend(other.warnings.into_iter().map(tag));
    }

    pub(crate) fn error(&mut self, n: &Node, field: &str, message: impl Into<String>) {
        self.error_at(n.line, n.col, field, message);
    }

    pub(crate) fn warn(&mut self, n: &Node, field: &str, message: impl Into<String>) {
        self.warn_at(n.line, n.col, field, message);
    }

    /// "got X, allowed: Y", plus why a string is there if it is an unresolved variable.
    pub(crate) fn bad(&mut self, n: &Node, field: &str, allowed: &str) {
        self.error(n, field, got_allowed(n, allowed));
    }

    /// Warns about every key of `map` not in `known` (used or knowingly ignored), with the
    /// closest known key when one is close.
    pub(crate) fn unknown_keys(&mut self, map: &Node, path: &str, known: &[&[&str]], what: &str) {
        for e in map.entries() {
            if known.iter().any(|set| set.contains(&e.key.as_str())) {
                continue;
            }
            let msg = unknown_key(&e.key, what, known.iter().flat_map(|s| s.iter().copied()));
            self.warn_at(e.kline, e.kcol, &join_key(path, &e.key), msg);
        }
    }
}

/// Why a key is ignored: Jina's migration tip for an argument of Jina 1 or 2, else the closest
/// known key when one is close.
pub(crate) fn unknown_key<'a>(
    key: &str,
    what: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> String {
    if let Some((_, tip)) = LEGACY.iter().find(|(k, _)| *k == key) {
        let mut msg = format!(
            "`{key}` in {what} is a Jina 1/2 argument that Jina 3 ignores, as does Zeroflow"
        );
        if !tip.is_empty() {
            msg.push_str("; ");
            msg.push_str(tip);
        }
        return msg;
    }
    let mut msg = format!("unknown key `{key}` in {what} is ignored (Jina drops unknown keys too)");
    if let Some(s) = suggest(key, candidates) {
        msg.push_str(&format!("; did you mean `{s}`?"));
    }
    msg
}

pub(crate) fn got_allowed(n: &Node, allowed: &str) -> String {
    let mut msg = format!("got {}, allowed: {allowed}", describe(n));
    if let Value::Str(s) = &n.v {
        for u in unresolved(s) {
            msg.push_str(&format!(" ({})", unresolved_note(&u)));
        }
    }
    msg
}

pub(crate) fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", serde_json::Value::String(key.to_string())),
    }
}

pub(crate) fn join_index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A short rendering of a value for messages.
pub(crate) fn describe(n: &Node) -> String {
    match &n.v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => py_float(*f),
        Value::Str(s) => {
            let shown: String = if s.chars().count() > 80 {
                s.chars().take(77).collect::<String>() + "..."
            } else {
                s.clone()
            };
            serde_json::Value::String(shown).to_string()
        }
        Value::Seq(items) => format!("a list of {}", items.len()),
        Value::Map(_) => "a mapping".into(),
    }
}

/// The closest candidate by edit distance, when it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    // No key anyone means is this long; skipping keeps hostile input cheap.
    if key.len() > 64 {
        return None;
    }
    let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    let nk = norm(key);
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        // `min_available` for `minAvailable`: the same word in another case style.
        let d = if norm(c) == nk {
            0
        } else {
            levenshtein(&key.to_ascii_lowercase(), &c.to_ascii_lowercase())
        };
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = match key.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    (d <= limit).then_some(c)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment), so
/// that `mni` is one edit from `min`.
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut m = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        m[i * w] = i;
    }
    for (j, cell) in m.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (m[(i - 1) * w + j] + 1)
                .min(m[i * w + j - 1] + 1)
                .min(m[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(m[(i - 2) * w + j - 2] + 1);
            }
            m[i * w + j] = v;
        }
    }
    m[a.len() * w + b.len()]
}

/// Typed reads. Each returns None after recording an error when the value cannot be taken.
pub(crate) struct Reader<'d> {
    pub d: &'d mut Diags,
}

impl Reader<'_> {
    pub(crate) fn int(
        &mut self,
        n: &Node,
        field: &str,
        min: i64,
        max: i64,
        allowed: &str,
    ) -> Option<i64> {
        match n.v {
            Value::Int(i) if (min..=max).contains(&i) => Some(i),
            _ => {
                self.d.bad(n, field, allowed);
                None
            }
        }
    }

    pub(crate) fn u32(
        &mut self,
        n: &Node,
        field: &str,
        min: u32,
        max: u32,
        allowed: &str,
    ) -> Option<u32> {
        self.int(n, field, i64::from(min), i64::from(max), allowed)
            .and_then(|i| u32::try_from(i).ok())
    }

    pub(crate) fn bool(&mut self, n: &Node, field: &str) -> Option<bool> {
        match n.v {
            Value::Bool(b) => Some(b),
            _ => {
                self.d.bad(n, field, "true or false");
                None
            }
        }
    }

    pub(crate) fn port(&mut self, n: &Node, field: &str) -> Option<u16> {
        self.int(n, field, 0, 65535, "a port number from 0 to 65535")
            .and_then(|i| u16::try_from(i).ok())
    }

    /// A string; numbers are taken as their text, as Python's `str()` would give it.
    pub(crate) fn text(&mut self, n: &Node, field: &str, allowed: &str) -> Option<String> {
        match &n.v {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(py_float(*f)),
            _ => {
                self.d.bad(n, field, allowed);
                None
            }
        }
    }

    /// A strict string: no other scalar is taken for it.
    pub(crate) fn string(&mut self, n: &Node, field: &str, allowed: &str) -> Option<String> {
        match &n.v {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.d.bad(n, field, allowed);
                None
            }
        }
    }

    pub(crate) fn map<'n>(
        &mut self,
        n: &'n Node,
        field: &str,
        allowed: &str,
    ) -> Option<&'n [Entry]> {
        match &n.v {
            Value::Map(e) => Some(e),
            _ => {
                self.d.bad(n, field, allowed);
                None
            }
        }
    }
}

/// A scalar as the string an environment variable or label would hold.
pub(crate) fn scalar_text(n: &Node) -> Option<String> {
    match &n.v {
        Value::Null => Some(String::new()),
        Value::Bool(b) => Some(if *b { "True".into() } else { "False".into() }),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(py_float(*f)),
        Value::Str(s) => Some(s.clone()),
        Value::Seq(_) | Value::Map(_) => None,
    }
}

/// The node as JSON, for values kept opaque (`uses_with`, `when`, inline `uses`).
pub(crate) fn to_json(n: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &n.v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = [
            "replicas",
            "shards",
            "minAvailable",
            "maxUnavailable",
            "uses",
        ];
        assert_eq!(suggest("replica", keys.iter().copied()), Some("replicas"));
        assert_eq!(
            suggest("min_available", keys.iter().copied()),
            Some("minAvailable")
        );
        assert_eq!(suggest("totally_else", keys.iter().copied()), None);
        assert_eq!(suggest("use", keys.iter().copied()), Some("uses"));
        assert_eq!(suggest("mni", ["min", "max"].into_iter()), Some("min"));
    }
}
