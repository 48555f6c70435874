//! YAML into a small positioned tree, resolved the way Jina's loader (PyYAML, YAML 1.1 rules
//! minus `on`/`off`) resolves plain scalars, so that a spec means here what it means to Jina.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deeper nesting than this is no Flow anyone writes; refusing it keeps every later walk over the
/// tree (all recursive) far from the stack limit.
pub(crate) const MAX_DEPTH: usize = 64;
/// Aliases can expand a small text exponentially ("billion laughs"); cap the expanded tree.
const MAX_NODES: usize = 200_000;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub v: Value,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The key as written (keys are never substituted or retyped by Jina's loader).
    pub key: String,
    pub kline: usize,
    pub kcol: usize,
    pub value: Node,
}

/// A problem met while reading the YAML itself.
#[derive(Debug, Clone)]
pub(crate) struct YamlIssue {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

pub(crate) struct Parsed {
    pub root: Option<Node>,
    pub warnings: Vec<YamlIssue>,
}

impl Node {
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.v {
            Value::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    pub(crate) fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.v {
            Value::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        match &self.v {
            Value::Map(entries) => entries,
            _ => &[],
        }
    }

    pub(crate) fn is_map(&self) -> bool {
        matches!(self.v, Value::Map(_))
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self.v, Value::Null)
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.v {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

enum Frame {
    Seq {
        node: Node,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        node: Node,
        anchor: usize,
        tag: Option<Tag>,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Parses the first and only document of `text`. A syntax error is returned as an issue with
/// the position the parser stopped at.
pub(crate) fn parse(text: &str) -> Result<Parsed, YamlIssue> {
    // yaml-rust2 is a third-party parser: a panic inside it must not take the caller down.
    match std::panic::catch_unwind(|| parse_inner(text)) {
        Ok(r) => r,
        Err(_) => Err(YamlIssue {
            line: 0,
            col: 0,
            message: "the YAML parser failed on this input".into(),
        }),
    }
}

fn parse_inner(text: &str) -> Result<Parsed, YamlIssue> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut warnings = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut count = 0usize;
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| YamlIssue {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        let (line, col) = pos(&mark);
        let finished: Option<(Node, usize)> = match ev {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => None,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlIssue {
                        line,
                        col,
                        message: "expected a single YAML document, found a second one".into(),
                    });
                }
                None
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => {
                    count += size(n);
                    let mut n = n.clone();
                    n.line = line;
                    n.col = col;
                    Some((n, 0))
                }
                None => {
                    return Err(YamlIssue {
                        line,
                        col,
                        message: "unknown alias".into(),
                    });
                }
            },
            Event::Scalar(s, style, anchor, tag) => Some((
                Node {
                    v: resolve_scalar(s, style, tag.as_ref()),
                    line,
                    col,
                },
                anchor,
            )),
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    node: Node {
                        v: Value::Null,
                        line,
                        col,
                    },
                    anchor,
                    items: vec![],
                });
                None
            }
            Event::MappingStart(anchor, tag) => {
                stack.push(Frame::Map {
                    node: Node {
                        v: Value::Null,
                        line,
                        col,
                    },
                    anchor,
                    tag,
                    entries: vec![],
                    key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    mut node,
                    anchor,
                    items,
                }) => {
                    node.v = Value::Seq(items);
                    Some((node, anchor))
                }
                _ => {
                    return Err(YamlIssue {
                        line,
                        col,
                        message: "unbalanced sequence".into(),
                    });
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    mut node,
                    anchor,
                    tag,
                    entries,
                    ..
                }) => {
                    node.v = Value::Map(build_map(entries, tag, &mut warnings));
                    Some((node, anchor))
                }
                _ => {
                    return Err(YamlIssue {
                        line,
                        col,
                        message: "unbalanced mapping".into(),
                    });
                }
            },
        };
        if stack.len() > MAX_DEPTH {
            return Err(YamlIssue {
                line,
                col,
                message: format!("nesting deeper than {MAX_DEPTH} levels"),
            });
        }
        count += 1;
        if count > MAX_NODES {
            return Err(YamlIssue {
                line,
                col,
                message: format!("more than {MAX_NODES} YAML nodes (after expanding aliases)"),
            });
        }
        if let Some((node, anchor)) = finished {
            if anchor > 0 {
                anchors.insert(anchor, node.clone());
            }
            match stack.last_mut() {
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map {
                    node: map,
                    entries,
                    key,
                    ..
                }) => match key.take() {
                    Some(k) => entries.push((k, node)),
                    None => {
                        // The parser marks a block mapping at its first `:`; its first key is
                        // where a reader looks for it.
                        if entries.is_empty() {
                            map.line = node.line;
                            map.col = node.col;
                        }
                        *key = Some(node);
                    }
                },
                None => root = Some(node),
            }
        }
    }
    Ok(Parsed { root, warnings })
}

fn pos(m: &Marker) -> (usize, usize) {
    (m.line(), m.col() + 1)
}

fn size(n: &Node) -> usize {
    match &n.v {
        Value::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|e| 1 + size(&e.value)).sum::<usize>(),
        _ => 1,
    }
}

fn build_map(
    raw: Vec<(Node, Node)>,
    tag: Option<Tag>,
    warnings: &mut Vec<YamlIssue>,
) -> Vec<Entry> {
    let mut own: Vec<Entry> = Vec::new();
    let mut merged: Vec<Entry> = Vec::new();
    for (k, v) in raw {
        let key = key_text(&k);
        // PyYAML's merge key: the merged mappings supply keys the mapping itself lacks.
        if key == "<<" {
            let sources: Vec<Node> = match v.v {
                Value::Map(_) => vec![v],
                Value::Seq(items) => items,
                _ => {
                    warnings.push(YamlIssue {
                        line: v.line,
                        col: v.col,
                        message: "`<<` merges only mappings; ignored".into(),
                    });
                    vec![]
                }
            };
            for s in sources {
                if let Value::Map(es) = s.v {
                    for e in es {
                        if !merged.iter().any(|m| m.key == e.key) {
                            merged.push(e);
                        }
                    }
                }
            }
            continue;
        }
        if let Some(i) = own.iter().position(|e| e.key == key) {
            warnings.push(YamlIssue {
                line: k.line,
                col: k.col,
                message: format!("duplicate key `{key}`: the later value is used (as Jina does)"),
            });
            own.remove(i);
        }
        own.push(Entry {
            key,
            kline: k.line,
            kcol: k.col,
            value: v,
        });
    }
    let mut out: Vec<Entry> = merged
        .into_iter()
        .filter(|m| !own.iter().any(|e| e.key == m.key))
        .collect();
    out.extend(own);
    // Jina rewrites the old tag style (`!Flow`) to `jtype: Flow` before it reads anything.
    if let Some(t) = tag
        && t.handle == "!"
        && !t.suffix.is_empty()
        && !out.iter().any(|e| e.key == "jtype")
    {
        out.insert(
            0,
            Entry {
                key: "jtype".into(),
                kline: 0,
                kcol: 0,
                value: Node {
                    v: Value::Str(t.suffix),
                    line: 0,
                    col: 0,
                },
            },
        );
    }
    out
}

fn key_text(k: &Node) -> String {
    match &k.v {
        Value::Str(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => {
            if *b {
                "True".into()
            } else {
                "False".into()
            }
        }
        Value::Int(i) => i.to_string(),
        Value::Float(f) => py_float(*f),
        Value::Seq(_) | Value::Map(_) => "<complex key>".into(),
    }
}

fn resolve_scalar(s: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(t) = tag
        && (t.handle == "!!" || t.handle == "tag:yaml.org,2002:")
    {
        match t.suffix.as_str() {
            "str" => return Value::Str(s),
            "null" => return Value::Null,
            _ => {}
        }
    }
    if style != TScalarStyle::Plain {
        return Value::Str(s);
    }
    resolve_plain(s)
}

/// PyYAML's implicit resolvers (YAML 1.1), without the `on`/`off` booleans that Jina removes.
fn resolve_plain(s: String) -> Value {
    match s.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" => return Value::Bool(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(v) = yaml11_int(&s) {
        return v;
    }
    if let Some(f) = yaml11_float(&s) {
        return Value::Float(f);
    }
    Value::Str(s)
}

fn yaml11_int(s: &str) -> Option<Value> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return None;
    }
    let digits_ok = |d: &str, radix: u32| {
        !d.is_empty()
            && d.chars().all(|c| c == '_' || c.is_digit(radix))
            && d.chars().any(|c| c != '_')
    };
    let (radix, digits) = if let Some(d) = body.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = body.strip_prefix("0x") {
        (16, d)
    } else if body.contains(':') {
        // Sexagesimal (base 60), e.g. 1:30 == 90.
        let mut parts = body.split(':');
        let first = parts.next()?;
        if !first.starts_with(|c: char| ('1'..='9').contains(&c)) || !digits_ok(first, 10) {
            return None;
        }
        let mut acc: i128 = first.replace('_', "").parse().ok()?;
        for p in parts {
            if p.is_empty() || p.len() > 2 || !p.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let v: i128 = p.parse().ok()?;
            if v > 59 {
                return None;
            }
            acc = acc.checked_mul(60)?.checked_add(v)?;
        }
        return Some(to_int_value(if neg { -acc } else { acc }, s));
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        if !body.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        (10, body)
    };
    if !digits_ok(digits, radix) {
        return None;
    }
    let clean = digits.replace('_', "");
    match i128::from_str_radix(&clean, radix) {
        Ok(v) => Some(to_int_value(if neg { -v } else { v }, s)),
        // Too big for any field here: keep the text so that the error can show it.
        Err(_) => Some(Value::Str(s.to_string())),
    }
}

fn to_int_value(v: i128, text: &str) -> Value {
    match i64::try_from(v) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::Str(text.to_string()),
    }
}

fn yaml11_float(s: &str) -> Option<f64> {
    // [-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let dot = mantissa.find('.')?;
    let (int_part, frac) = (&mantissa[..dot], &mantissa[dot + 1..]);
    if !int_part.is_empty() && !int_part.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if !int_part.chars().all(|c| c.is_ascii_digit() || c == '_')
        || !frac.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    if int_part.is_empty() && !frac.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if let Some(e) = exp {
        let digits = e.strip_prefix(['-', '+'])?;
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
    }
    s.replace('_', "").parse::<f64>().ok()
}

/// Python's `str(float)` for the values a spec holds (`1.0` stays `1.0`).
pub(crate) fn py_float(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".into() } else { "-inf".into() }
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(t: &str) -> Node {
        parse(t).unwrap().root.unwrap()
    }

    #[test]
    fn scalars_resolve_like_pyyaml() {
        let r = root(
            "a: on\nb: yes\nc: No\nd: 0x1F\ne: 017\nf: 1_000\ng: 1:30\ni: 1e3\nj: 1.5\nk: ~\nl: '1'\nm:\n",
        );
        let v = |k: &str| r.get(k).unwrap().v.clone();
        assert_eq!(v("a"), Value::Str("on".into()));
        assert_eq!(v("b"), Value::Bool(true));
        assert_eq!(v("c"), Value::Bool(false));
        assert_eq!(v("d"), Value::Int(31));
        assert_eq!(v("e"), Value::Int(15));
        assert_eq!(v("f"), Value::Int(1000));
        assert_eq!(v("g"), Value::Int(90));
        assert_eq!(v("i"), Value::Str("1e3".into()));
        assert_eq!(v("j"), Value::Float(1.5));
        assert_eq!(v("k"), Value::Null);
        assert_eq!(v("l"), Value::Str("1".into()));
        assert_eq!(v("m"), Value::Null);
    }

    #[test]
    fn positions_are_one_based() {
        let r = root("jtype: Flow\nexecutors:\n  - name: a\n");
        let e = r.entry("executors").unwrap();
        assert_eq!((e.kline, e.kcol), (2, 1));
        let item = match &e.value.v {
            Value::Seq(items) => &items[0],
            _ => panic!(),
        };
        let name = item.entry("name").unwrap();
        assert_eq!((name.kline, name.kcol), (3, 5));
        assert_eq!((name.value.line, name.value.col), (3, 11));
    }

    #[test]
    fn tags_merges_and_aliases() {
        let r = root("!Flow\nbase: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n");
        assert_eq!(r.get("jtype").unwrap().v, Value::Str("Flow".into()));
        let o = r.get("other").unwrap();
        assert_eq!(o.get("x").unwrap().v, Value::Int(1));
        assert_eq!(o.get("y").unwrap().v, Value::Int(3));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let t = "[".repeat(500) + &"]".repeat(500);
        assert!(parse(&t).is_err());
    }
}
