//! An Executor's `when:` condition, as Jina's gateway applies it (the gateway evaluates it; the
//! spec checks it at load): the documents sent to that
//! Executor are only those the condition holds for. The query language is docarray's
//! (`docarray.utils.filter.filter_docs`): `{field: {$op: value}}` with `__` for nested fields,
//! `$and` / `$or` / `$not`, and the operators `$eq $neq $lt $lte $gt $gte $in $nin $regex $size
//! $exists`. It is parsed with docarray's rules and evaluated on each document's JSON form, with
//! Python's comparison semantics where JSON allows them.

use regex::Regex;
use serde_json::Value;
use std::cmp::Ordering;

/// A parsed condition.
#[derive(Debug, Clone)]
pub struct Condition(Option<Tree>);

#[derive(Debug, Clone)]
enum Tree {
    Node {
        any: bool,
        negate: bool,
        children: Vec<Tree>,
    },
    Leaf {
        path: String,
        op: Op,
        value: Value,
        regex: Option<Regex>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Nin,
    Regex,
    Size,
    Exists,
}

fn op(name: &str) -> Option<Op> {
    Some(match name {
        "$eq" => Op::Eq,
        "$neq" => Op::Neq,
        "$lt" => Op::Lt,
        "$lte" => Op::Lte,
        "$gt" => Op::Gt,
        "$gte" => Op::Gte,
        "$in" => Op::In,
        "$nin" => Op::Nin,
        "$regex" => Op::Regex,
        "$size" => Op::Size,
        "$exists" => Op::Exists,
        _ => return None,
    })
}

const OPERATORS: &str = "$eq, $neq, $lt, $lte, $gt, $gte, $in, $nin, $regex, $size, $exists, and \
                         $and, $or, $not to combine them";

fn logical(key: &str) -> Option<Tree> {
    let (any, negate) = match key {
        "$and" => (false, false),
        "$or" => (true, false),
        "$not" => (false, true),
        _ => return None,
    };
    Some(Tree::Node {
        any,
        negate,
        children: vec![],
    })
}

impl Condition {
    /// Parses a `when:` value; the error says what is wrong and what is allowed.
    pub fn parse(v: &Value) -> Result<Self, String> {
        parse(v, None).map(Condition)
    }

    /// Whether the condition holds for a document (its JSON form).
    pub fn matches(&self, doc: &Value) -> bool {
        self.0.as_ref().is_none_or(|t| t.eval(doc))
    }
}

/// docarray's `_parse_lookups`, rule for rule, so that the same YAML builds the same tree
/// (including how a list or several keys are combined).
fn parse(data: &Value, mut root: Option<Tree>) -> Result<Option<Tree>, String> {
    match data {
        Value::Object(map) => {
            for (key, value) in map {
                if matches!(root, Some(Tree::Leaf { .. })) {
                    let leaf = root.take().expect("a leaf");
                    root = Some(Tree::Node {
                        any: false,
                        negate: false,
                        children: vec![leaf],
                    });
                }
                let node = if let Some(n) = logical(key) {
                    parse(value, Some(n))?
                } else if key.starts_with('$') {
                    return Err(format!(
                        "operator {key:?} is not supported; the operators are {OPERATORS}"
                    ));
                } else {
                    let items = match value {
                        Value::Object(m) if !m.is_empty() => m,
                        _ => {
                            return Err(format!(
                                "field {key:?} must map to {{<operator>: <value>}}, got {value}"
                            ));
                        }
                    };
                    if items.len() == 1 {
                        let (name, val) = items.iter().next().expect("one");
                        if let Some(n) = logical(name) {
                            parse(val, Some(n))?
                        } else if let Some(op) = op(name) {
                            Some(leaf(key, op, val)?)
                        } else {
                            return Err(format!(
                                "operator {name:?} (on {key:?}) is not supported; the operators are {OPERATORS}"
                            ));
                        }
                    } else {
                        let mut children = vec![];
                        for (name, val) in items {
                            let mut one = serde_json::Map::new();
                            one.insert(name.clone(), val.clone());
                            let mut outer = serde_json::Map::new();
                            outer.insert(key.clone(), Value::Object(one));
                            if let Some(c) = parse(&Value::Object(outer), None)? {
                                children.push(c);
                            }
                        }
                        Some(Tree::Node {
                            any: false,
                            negate: false,
                            children,
                        })
                    }
                };
                root = attach(root, node);
            }
            Ok(root)
        }
        Value::Array(items) => {
            for d in items {
                let node = parse(d, None)?;
                root = attach(root, node);
            }
            Ok(root)
        }
        other => Err(format!(
            "a condition is a mapping or a list of them, got {other}"
        )),
    }
}

/// A child joins a node; with no root it becomes the root; a leaf root takes no children
/// (docarray drops them too).
fn attach(root: Option<Tree>, node: Option<Tree>) -> Option<Tree> {
    match (root, node) {
        (
            Some(Tree::Node {
                any,
                negate,
                mut children,
            }),
            Some(n),
        ) => {
            children.push(n);
            Some(Tree::Node {
                any,
                negate,
                children,
            })
        }
        (Some(r), _) => Some(r),
        (None, n) => n,
    }
}

fn leaf(path: &str, op: Op, value: &Value) -> Result<Tree, String> {
    let regex = match (op, value) {
        (Op::Regex, Value::String(p)) => {
            Some(Regex::new(p).map_err(|e| format!("$regex {p:?} on {path:?} is not valid: {e}"))?)
        }
        (Op::Regex, other) => {
            return Err(format!(
                "$regex on {path:?} needs a string pattern, got {other}"
            ));
        }
        (Op::Exists, v) if !v.is_boolean() => {
            return Err(format!("$exists on {path:?} takes true or false, got {v}"));
        }
        _ => None,
    };
    Ok(Tree::Leaf {
        path: path.to_string(),
        op,
        value: value.clone(),
        regex,
    })
}

impl Tree {
    fn eval(&self, doc: &Value) -> bool {
        match self {
            Tree::Node {
                any,
                negate,
                children,
            } => {
                let r = if *any {
                    children.iter().any(|c| c.eval(doc))
                } else {
                    children.iter().all(|c| c.eval(doc))
                };
                r != *negate
            }
            Tree::Leaf {
                path,
                op,
                value,
                regex,
            } => lookup(path, *op, value, regex.as_ref(), doc),
        }
    }
}

/// docarray's `dunder_get`: `a__b__0` walks into objects by key and into lists by index.
fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = doc;
    for part in path.split("__") {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// `{field}` as a value means that field of the same document.
fn placeholder<'a>(value: &'a Value, doc: &'a Value) -> Option<&'a Value> {
    let s = value.as_str()?.strip_prefix('{')?;
    let name = s.strip_suffix('}')?.trim();
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then(|| doc.get(name).unwrap_or(&Value::Null))
}

fn lookup(path: &str, op: Op, value: &Value, regex: Option<&Regex>, doc: &Value) -> bool {
    let value = placeholder(value, doc).unwrap_or(value);
    let found = get(doc, path);
    if op == Op::Exists {
        return found.is_some() == value.as_bool().unwrap_or(true);
    }
    let Some(field) = found else {
        return false;
    };
    // Python's `iff_not_none`: a None field fails every comparison but equality.
    let not_none = !field.is_null();
    match op {
        Op::Eq => py_eq(field, value),
        Op::Neq => !py_eq(field, value),
        Op::In => py_in(field, value) == Some(true),
        Op::Nin => py_in(field, value) == Some(false),
        Op::Lt => not_none && py_cmp(field, value) == Some(Ordering::Less),
        Op::Lte => {
            not_none && matches!(py_cmp(field, value), Some(Ordering::Less | Ordering::Equal))
        }
        Op::Gt => not_none && py_cmp(field, value) == Some(Ordering::Greater),
        Op::Gte => {
            not_none
                && matches!(
                    py_cmp(field, value),
                    Some(Ordering::Greater | Ordering::Equal)
                )
        }
        Op::Regex => match (field, regex) {
            (Value::String(s), Some(r)) => r.is_match(s),
            _ => false,
        },
        Op::Size => {
            let len = match field {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                Value::Object(m) => m.len(),
                _ => return false,
            };
            value.as_f64() == Some(len as f64)
        }
        Op::Exists => unreachable!("handled above"),
    }
}

/// Python's `field in value`: a list's items, a mapping's keys, a substring of a string; None
/// where Python would raise (a number is not a container).
fn py_in(field: &Value, value: &Value) -> Option<bool> {
    match value {
        Value::Array(a) => Some(a.iter().any(|v| py_eq(field, v))),
        Value::Object(m) => Some(field.as_str().is_some_and(|k| m.contains_key(k))),
        Value::String(s) => field.as_str().map(|f| s.contains(f)),
        _ => None,
    }
}

/// Python `==` on JSON values: numbers by value (5 == 5.0), and True == 1.
fn py_eq(a: &Value, b: &Value) -> bool {
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (a, b) {
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
            }
            _ => a == b,
        },
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Python ordering where it is defined (numbers, strings, lists of those); None where Python
/// would raise, which jina reports as an error and Zeroflow as "does not match".
fn py_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return x.partial_cmp(&y);
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                match py_cmp(p, q)? {
                    Ordering::Equal => continue,
                    o => return Some(o),
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(cond: Value, doc: Value) -> bool {
        Condition::parse(&cond).expect("valid").matches(&doc)
    }

    #[test]
    fn operators_on_fields_and_nested_fields() {
        let doc = json!({"id": "a", "text": "hello world", "tags": {"key": 5, "list": [1, 2, 3], "name": "x"}});
        assert!(m(json!({"tags__key": {"$eq": 5}}), doc.clone()));
        assert!(m(json!({"tags__key": {"$eq": 5.0}}), doc.clone()));
        assert!(!m(json!({"tags__key": {"$neq": 5}}), doc.clone()));
        assert!(m(json!({"tags__key": {"$gt": 4, "$lte": 5}}), doc.clone()));
        assert!(!m(json!({"tags__key": {"$lt": 5}}), doc.clone()));
        assert!(m(json!({"tags__key": {"$in": [1, 5]}}), doc.clone()));
        assert!(m(json!({"tags__key": {"$nin": [1, 2]}}), doc.clone()));
        assert!(m(json!({"text": {"$regex": "^hel+o"}}), doc.clone()));
        assert!(m(json!({"tags__list": {"$size": 3}}), doc.clone()));
        assert!(m(json!({"tags__list__1": {"$eq": 2}}), doc.clone()));
        assert!(m(json!({"tags__missing": {"$exists": false}}), doc.clone()));
        assert!(!m(json!({"tags__missing": {"$eq": 1}}), doc.clone()));
        // `{field}` compares with another field of the same document.
        let doc = json!({"text": "x", "tags": {"name": "x"}});
        assert!(m(json!({"tags__name": {"$eq": "{text}"}}), doc.clone()));
        assert!(!m(json!({"tags__name": {"$eq": "{id}"}}), doc));
    }

    #[test]
    fn logical_operators_and_lists() {
        let doc = json!({"text": "a", "tags": {"k": 1}});
        assert!(m(
            json!({"$or": [{"text": {"$eq": "b"}}, {"tags__k": {"$eq": 1}}]}),
            doc.clone()
        ));
        assert!(!m(
            json!({"$and": [{"text": {"$eq": "b"}}, {"tags__k": {"$eq": 1}}]}),
            doc.clone()
        ));
        assert!(m(json!({"$not": {"text": {"$eq": "b"}}}), doc.clone()));
        assert!(!m(
            json!({"text": {"$eq": "a"}, "tags__k": {"$eq": 2}}),
            doc.clone()
        ));
        assert!(m(json!({}), doc.clone()), "an empty condition holds");
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("$and".to_string()),
            Just("$or".to_string()),
            Just("$not".to_string()),
            Just("$eq".to_string()),
            Just("$regex".to_string()),
            Just("$size".to_string()),
            Just("$exists".to_string()),
            Just("$in".to_string()),
            Just("$lt".to_string()),
            "[a-z_]{0,8}",
            "\\$[a-z]{1,5}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z{}()^$.*]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any condition and any document: an answer or an error, never a panic.
        #[test]
        fn never_panics(cond in json(), doc in json()) {
            if let Ok(c) = Condition::parse(&cond) {
                let _ = c.matches(&doc);
            }
        }
    }

    #[test]
    fn bad_conditions_say_what_is_allowed() {
        let e = Condition::parse(&json!({"text": {"$like": "a"}})).unwrap_err();
        assert!(e.contains("\"$like\"") && e.contains("$regex"), "{e}");
        let e = Condition::parse(&json!({"text": "a"})).unwrap_err();
        assert!(e.contains("must map to"), "{e}");
        let e = Condition::parse(&json!({"text": {"$regex": "("}})).unwrap_err();
        assert!(e.contains("not valid"), "{e}");
        let e = Condition::parse(&json!({"$xor": []})).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = Condition::parse(&json!(5)).unwrap_err();
        assert!(e.contains("mapping or a list"), "{e}");
    }
}
