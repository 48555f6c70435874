//! Variable substitution and the retyping of strings, as Jina's `expand_dict` does them: every
//! string value (quoted or not, at any depth) has its variables replaced and is then re-read by
//! `parse_arg`, so `'2'` is the integer 2 and `''` is null to Jina, and so here.

use crate::Source;
use crate::diag::{Diags, join_index, join_key};
use crate::yaml::{Node, Value};
use regex::Regex;
use std::sync::LazyLock;

static VAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\$\{\{\s*(?:(?:ENV|env)\.([A-Za-z0-9_]+)|(?:(?:CONTEXT|context)\.)?([A-Za-z0-9_]+))\s*\}\}|\$\{([A-Za-z0-9_]+)\}|\$([A-Za-z0-9_]+)",
    )
    .expect("static regex")
});

/// A variable reference left in a string because nothing defines it.
pub(crate) struct Unresolved {
    pub text: String,
    pub name: String,
    pub from_context: bool,
}

/// The variable references in `s` (after substitution these are the unresolved ones).
pub(crate) fn unresolved(s: &str) -> Vec<Unresolved> {
    VAR.captures_iter(s)
        .map(|c| {
            let text = c.get(0).map_or("", |m| m.as_str()).to_string();
            let (name, from_context) = if let Some(m) = c.get(1) {
                (m.as_str(), false)
            } else if let Some(m) = c.get(2) {
                (m.as_str(), true)
            } else {
                (c.get(3).or(c.get(4)).map_or("", |m| m.as_str()), false)
            };
            Unresolved {
                text,
                name: name.to_string(),
                from_context,
            }
        })
        .collect()
}

fn substitute_str(s: &str, src: &Source) -> String {
    VAR.replace_all(s, |c: &regex::Captures| {
        let found = if let Some(m) = c.get(1) {
            src.env.get(m.as_str())
        } else if let Some(m) = c.get(2) {
            src.context.get(m.as_str())
        } else {
            c.get(3).or(c.get(4)).and_then(|m| src.env.get(m.as_str()))
        };
        match found {
            Some(v) => v.clone(),
            None => c.get(0).map_or("", |m| m.as_str()).to_string(),
        }
    })
    .into_owned()
}

/// Substitutes and retypes every string value under `node`. Unresolved `${{ ... }}` references
/// are warned about (the `$X` form is not: a lone `$` is common in values such as regexes).
pub(crate) fn expand(node: &mut Node, path: &str, src: &Source, diags: &mut Diags) {
    match &mut node.v {
        Value::Str(s) => {
            if s.contains('$') {
                let new = substitute_str(s, src);
                for u in unresolved(&new) {
                    if u.text.starts_with("${{") {
                        diags.warn_at(
                            node.line,
                            node.col,
                            path,
                            unresolved_note(&u) + "; the text is kept as it is",
                        );
                    }
                }
                *s = new;
            }
            let v = parse_arg(s, node.line, node.col);
            node.v = v;
        }
        Value::Seq(items) => {
            for (i, it) in items.iter_mut().enumerate() {
                expand(it, &join_index(path, i), src, diags);
            }
        }
        Value::Map(entries) => {
            for e in entries.iter_mut() {
                let p = join_key(path, &e.key);
                expand(&mut e.value, &p, src, diags);
            }
        }
        _ => {}
    }
}

/// Warns about each `${{ context.X }}` / `${{ X }}` under `node` that the context defines: Jina
/// loads a Deployment YAML that a Flow names without the context, so it leaves them as written.
pub(crate) fn warn_context(node: &Node, path: &str, src: &Source, diags: &mut Diags) {
    match &node.v {
        Value::Str(s) => {
            for c in VAR.captures_iter(s) {
                if let Some(m) = c.get(2)
                    && src.context.contains_key(m.as_str())
                {
                    let text = c.get(0).map_or("", |m| m.as_str());
                    diags.warn_at(node.line, node.col, path, format!("Jina loads a Deployment YAML that a Flow names without the context (.env), so it leaves `{text}` as written; Zeroflow substitutes it"));
                }
            }
        }
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                warn_context(it, &join_index(path, i), src, diags);
            }
        }
        Value::Map(entries) => {
            for e in entries {
                warn_context(&e.value, &join_key(path, &e.key), src, diags);
            }
        }
        _ => {}
    }
}

pub(crate) fn unresolved_note(u: &Unresolved) -> String {
    if u.from_context {
        format!(
            "`{}` is not defined: `{}` is not in the context (.env)",
            u.text, u.name
        )
    } else {
        format!(
            "`{}` is not defined: `{}` is not in the environment",
            u.text, u.name
        )
    }
}

/// Jina's `parse_arg`: how a string value is read once its variables are substituted.
pub(crate) fn parse_arg(v: &str, line: usize, col: usize) -> Value {
    let b = v.as_bytes();
    if b.len() >= 2
        && matches!(b[0], b'\'' | b'"')
        && matches!(b[b.len() - 1], b'\'' | b'"')
        && !v[1..v.len() - 1].contains('\n')
    {
        return Value::Str(v[1..v.len() - 1].to_string());
    }
    if v.starts_with('[') && v.ends_with(']') {
        let tmp = v.replace(['[', ']'], "");
        let tmp = tmp.trim();
        if tmp.is_empty() {
            return Value::Seq(vec![]);
        }
        return Value::Seq(
            tmp.split(',')
                .map(|p| Node {
                    v: parse_arg(p.trim(), line, col),
                    line,
                    col,
                })
                .collect(),
        );
    }
    if let Some(i) = py_int(v) {
        return i;
    }
    if let Some(f) = py_float(v) {
        return Value::Float(f);
    }
    if v.is_empty() {
        return Value::Null;
    }
    match v.to_ascii_lowercase().as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::Str(v.to_string()),
    }
}

/// Python allows `_` only between digits in numeric literals given to `int()`/`float()`.
fn strip_underscores(s: &str) -> Option<String> {
    let b = s.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'_' {
            let ok =
                i > 0 && i + 1 < b.len() && b[i - 1].is_ascii_digit() && b[i + 1].is_ascii_digit();
            if !ok {
                return None;
            }
        }
    }
    Some(s.replace('_', ""))
}

fn py_int(v: &str) -> Option<Value> {
    let t = v.trim();
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    if body.is_empty() || !body.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    let clean = strip_underscores(t)?;
    match clean.parse::<i64>() {
        Ok(i) => Some(Value::Int(i)),
        Err(_) => Some(Value::Str(v.to_string())),
    }
}

fn py_float(v: &str) -> Option<f64> {
    let t = v.trim();
    if t.is_empty() {
        return None;
    }
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return t.to_ascii_lowercase().parse::<f64>().ok();
    }
    if !body
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-' | '_'))
    {
        return None;
    }
    strip_underscores(t)?.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_arg_matches_jina() {
        assert_eq!(parse_arg("2", 0, 0), Value::Int(2));
        assert_eq!(parse_arg("'2'", 0, 0), Value::Str("2".into()));
        assert_eq!(parse_arg("1.0", 0, 0), Value::Float(1.0));
        assert_eq!(parse_arg("1e3", 0, 0), Value::Float(1000.0));
        assert_eq!(parse_arg("", 0, 0), Value::Null);
        assert_eq!(parse_arg("TRUE", 0, 0), Value::Bool(true));
        assert_eq!(parse_arg("yes", 0, 0), Value::Str("yes".into()));
        assert_eq!(parse_arg("1_000", 0, 0), Value::Int(1000));
        assert_eq!(parse_arg("_1", 0, 0), Value::Str("_1".into()));
        match parse_arg("[grpc, http]", 0, 0) {
            Value::Seq(items) => assert_eq!(items.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn substitution_forms() {
        let mut src = Source::default();
        src.env.insert("A".into(), "1".into());
        src.context.insert("B".into(), "two".into());
        assert_eq!(
            substitute_str("$A ${A} ${{ ENV.A }} ${{ env.A }}", &src),
            "1 1 1 1"
        );
        assert_eq!(
            substitute_str("${{ B }}-${{ context.B }}-${{ CONTEXT.B }}", &src),
            "two-two-two"
        );
        assert_eq!(
            substitute_str("${{ ENV.NOPE }} $NOPE", &src),
            "${{ ENV.NOPE }} $NOPE"
        );
    }
}
