//! Documents where the gateway must look inside them: JSON <-> docarray conversion for HTTP, and
//! the merge of parallel branches (Jina's reduce: documents matched by `id`, later fields win).
//! Everywhere else documents stay opaque bytes.

use base64::Engine as _;
use prost::Message;
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use zeroflow_proto::docarray::{
    DictOfAnyProto, DocListProto, DocProto, ListOfAnyProto, NodeProto, node_proto::Content,
    node_proto::DocarrayType,
};
use zeroflow_proto::jina::{DataContentProto, data_content_proto::Documents};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DocError {
    #[error("documents could not be decoded: {0}")]
    Decode(String),
    #[error("a document must be a JSON object, got {0}")]
    NotObject(String),
}

/// Decodes `DataRequestProto.data` into its document list (empty when absent).
pub fn decode_docs(data: &[u8]) -> Result<DocListProto, DocError> {
    if data.is_empty() {
        return Ok(DocListProto::default());
    }
    let content = DataContentProto::decode(data).map_err(|e| DocError::Decode(e.to_string()))?;
    match content.documents {
        Some(Documents::Docs(d)) => Ok(d),
        Some(Documents::DocsBytes(b)) => {
            DocListProto::decode(b.as_slice()).map_err(|e| DocError::Decode(e.to_string()))
        }
        None => Ok(DocListProto::default()),
    }
}

pub fn encode_docs(docs: DocListProto) -> Vec<u8> {
    DataContentProto {
        documents: Some(Documents::Docs(docs)),
    }
    .encode_to_vec()
}

fn empty_node() -> NodeProto {
    NodeProto {
        content: None,
        docarray_type: None,
    }
}

fn node(content: Content) -> NodeProto {
    NodeProto {
        content: Some(content),
        docarray_type: None,
    }
}

/// A JSON value as a docarray node, the way docarray maps Python values.
pub fn json_to_node(v: &Value) -> NodeProto {
    match v {
        Value::Null => empty_node(),
        Value::Bool(b) => node(Content::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => node(Content::Integer(i as i32)),
            _ => node(Content::Float(n.as_f64().unwrap_or(0.0))),
        },
        Value::String(s) => node(Content::Text(s.clone())),
        Value::Array(items) => node(Content::List(ListOfAnyProto {
            data: items.iter().map(json_to_node).collect(),
        })),
        Value::Object(m) => node(Content::Dict(DictOfAnyProto {
            data: m
                .iter()
                .map(|(k, v)| (k.clone(), json_to_node(v)))
                .collect(),
        })),
    }
}

pub fn json_to_doc(v: &Value) -> Result<DocProto, DocError> {
    let Value::Object(m) = v else {
        return Err(DocError::NotObject(short(v)));
    };
    let mut data = HashMap::with_capacity(m.len());
    for (k, v) in m {
        let mut n = json_to_node(v);
        if k == "id" && matches!(n.content, Some(Content::Text(_))) {
            n.docarray_type = Some(DocarrayType::Type("id".into()));
        }
        data.insert(k.clone(), n);
    }
    Ok(DocProto { data })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

pub fn json_to_docs(v: &Value) -> Result<DocListProto, DocError> {
    let docs = match v {
        Value::Array(items) => items.iter().map(json_to_doc).collect::<Result<_, _>>()?,
        Value::Null => vec![],
        other => vec![json_to_doc(other)?],
    };
    Ok(DocListProto { docs })
}

pub fn node_to_json(n: &NodeProto) -> Value {
    match &n.content {
        None => Value::Null,
        Some(Content::Text(s)) => Value::String(s.clone()),
        Some(Content::Integer(i)) => Value::Number((*i).into()),
        Some(Content::Float(f)) => Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(Content::Boolean(b)) => Value::Bool(*b),
        Some(Content::Blob(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(Content::Ndarray(a)) => a
            .dense
            .as_ref()
            .map(|d| ndarray_to_json(&d.buffer, &d.shape, &d.dtype))
            .unwrap_or(Value::Null),
        Some(Content::Doc(d)) => doc_to_json(d),
        Some(Content::DocArray(l)) => Value::Array(l.docs.iter().map(doc_to_json).collect()),
        Some(Content::List(l)) | Some(Content::Set(l)) | Some(Content::Tuple(l)) => {
            Value::Array(l.data.iter().map(node_to_json).collect())
        }
        Some(Content::Dict(d)) => {
            let mut keys: Vec<_> = d.data.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), node_to_json(&d.data[k])))
                    .collect(),
            )
        }
    }
}

pub fn doc_to_json(d: &DocProto) -> Value {
    let mut keys: Vec<_> = d.data.keys().collect();
    keys.sort();
    let m: Map<String, Value> = keys
        .into_iter()
        .map(|k| (k.clone(), node_to_json(&d.data[k])))
        .collect();
    Value::Object(m)
}

pub fn docs_to_json(l: &DocListProto) -> Value {
    Value::Array(l.docs.iter().map(doc_to_json).collect())
}

/// A dense ndarray as nested JSON lists (numpy's `tolist()`), for the dtypes docarray emits.
fn ndarray_to_json(buf: &[u8], shape: &[u32], dtype: &str) -> Value {
    let little = !dtype.starts_with('>');
    let kind = dtype.trim_start_matches(['<', '>', '=', '|']);
    type Conv = fn(&[u8], bool) -> Value;
    let (size, conv): (usize, Conv) = match kind {
        "f4" => (4, |b, le| {
            let a = [b[0], b[1], b[2], b[3]];
            num(if le {
                f32::from_le_bytes(a)
            } else {
                f32::from_be_bytes(a)
            } as f64)
        }),
        "f8" => (8, |b, le| {
            let a: [u8; 8] = b.try_into().unwrap_or([0; 8]);
            num(if le {
                f64::from_le_bytes(a)
            } else {
                f64::from_be_bytes(a)
            })
        }),
        "i4" => (4, |b, le| {
            let a = [b[0], b[1], b[2], b[3]];
            Value::from(if le {
                i32::from_le_bytes(a)
            } else {
                i32::from_be_bytes(a)
            })
        }),
        "i8" => (8, |b, le| {
            let a: [u8; 8] = b.try_into().unwrap_or([0; 8]);
            Value::from(if le {
                i64::from_le_bytes(a)
            } else {
                i64::from_be_bytes(a)
            })
        }),
        "u1" => (1, |b, _| Value::from(b[0])),
        "b1" => (1, |b, _| Value::Bool(b[0] != 0)),
        _ => return Value::Null,
    };
    let flat: Vec<Value> = buf.chunks_exact(size).map(|c| conv(c, little)).collect();
    // The shape comes from the Executor (or a client) as sent: one that does not hold exactly
    // the buffer's elements (or overflows) is not followed, which would build up to 2^32 lists
    // per dimension; the values are kept, flat.
    let count = shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d as usize));
    // A zero-sized dimension fits any shape to no elements, but the lists before it are still
    // built (numpy's `tolist()` of shape (N, 0) is N empty lists): every level's list count,
    // the product of the dimensions down to it, is bounded too.
    let bound = flat.len().max(1 << 20);
    let mut lists = Some(1usize);
    let bounded = shape.iter().all(|d| {
        lists = lists.and_then(|n| n.checked_mul(*d as usize));
        lists.is_some_and(|n| n <= bound)
    });
    if count != Some(flat.len()) || !bounded {
        return Value::Array(flat);
    }
    fn nest(flat: &[Value], shape: &[u32]) -> Value {
        match shape {
            [] => flat.first().cloned().unwrap_or(Value::Null),
            [_] => Value::Array(flat.to_vec()),
            [n, rest @ ..] => {
                // Checked: with a zero dimension up front, the rest may multiply past usize.
                let step = rest
                    .iter()
                    .try_fold(1usize, |a, d| a.checked_mul(*d as usize))
                    .unwrap_or(usize::MAX)
                    .max(1);
                Value::Array(
                    (0..*n as usize)
                        .map(|i| {
                            let lo = i.saturating_mul(step).min(flat.len());
                            let hi = (i + 1).saturating_mul(step).min(flat.len());
                            nest(&flat[lo..hi], rest)
                        })
                        .collect(),
                )
            }
        }
    }
    nest(&flat, shape)
}

fn num(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn doc_id(d: &DocProto) -> Option<&str> {
    match d.data.get("id").and_then(|n| n.content.as_ref()) {
        Some(Content::Text(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// Merges document lists from parallel branches: a document whose `id` was seen takes the
/// non-empty fields of the later copy; documents with new ids are appended in order.
pub fn reduce(lists: Vec<DocListProto>) -> DocListProto {
    let mut iter = lists.into_iter();
    let Some(mut out) = iter.next() else {
        return DocListProto::default();
    };
    let mut index: HashMap<String, usize> = out
        .docs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| doc_id(d).map(|id| (id.to_string(), i)))
        .collect();
    for list in iter {
        for doc in list.docs {
            match doc_id(&doc).and_then(|id| index.get(id)).copied() {
                Some(i) => {
                    for (k, v) in doc.data {
                        if v.content.is_some() {
                            out.docs[i].data.insert(k, v);
                        }
                    }
                }
                None => {
                    if let Some(id) = doc_id(&doc) {
                        index.insert(id.to_string(), out.docs.len());
                    }
                    out.docs.push(doc);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trip() {
        let v = json!([{"id": "a", "text": "hi", "n": 3, "x": 1.5, "ok": true, "none": null,
                        "l": [1, "b"], "d": {"k": "v"}}]);
        let docs = json_to_docs(&v).unwrap();
        let bytes = encode_docs(docs);
        let back = docs_to_json(&decode_docs(&bytes).unwrap());
        assert_eq!(back, v);
    }

    #[test]
    fn single_object_is_one_doc_and_scalars_are_refused() {
        assert_eq!(json_to_docs(&json!({"text": "x"})).unwrap().docs.len(), 1);
        assert!(matches!(
            json_to_docs(&json!([1])),
            Err(DocError::NotObject(_))
        ));
    }

    #[test]
    fn ndarray_becomes_nested_lists() {
        let buf: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        assert_eq!(
            ndarray_to_json(&buf, &[2, 2], "<f4"),
            json!([[1.0, 2.0], [3.0, 4.0]])
        );
        assert_eq!(
            ndarray_to_json(&buf, &[4], "<f4"),
            json!([1.0, 2.0, 3.0, 4.0])
        );
    }

    #[test]
    fn an_ndarray_whose_shape_does_not_fit_its_buffer_stays_flat() {
        let buf: Vec<u8> = [1i32, 2, 3].iter().flat_map(|i| i.to_le_bytes()).collect();
        // Far more elements than the buffer holds (and an overflowing product): no nesting.
        assert_eq!(
            ndarray_to_json(&buf, &[u32::MAX, u32::MAX, u32::MAX], "<i4"),
            json!([1, 2, 3])
        );
        assert_eq!(ndarray_to_json(&buf, &[2, 2], "<i4"), json!([1, 2, 3]));
        assert_eq!(
            ndarray_to_json(&buf[..4], &[], "<i4"),
            json!(1),
            "a 0-d array"
        );
        assert_eq!(
            ndarray_to_json(&buf, &[3, 1], "<i4"),
            json!([[1], [2], [3]])
        );
        assert_eq!(ndarray_to_json(&[], &[2, 0], "<i4"), json!([[], []]));
        assert_eq!(ndarray_to_json(&[], &[u32::MAX, 0], "<i4"), json!([]));
        assert_eq!(ndarray_to_json(&[], &[7, u32::MAX, 0], "<i4"), json!([]));
        assert_eq!(
            ndarray_to_json(&[], &[0, u32::MAX, u32::MAX, u32::MAX], "<i4"),
            json!([])
        );
    }

    #[test]
    fn reduce_merges_by_id() {
        let a = json_to_docs(&json!([{"id": "1", "text": "a"}, {"id": "2", "text": "b"}])).unwrap();
        let b = json_to_docs(&json!([{"id": "1", "tag": "x", "text": null}, {"id": "3"}])).unwrap();
        let merged = docs_to_json(&reduce(vec![a, b]));
        assert_eq!(
            merged,
            json!([{"id": "1", "text": "a", "tag": "x"}, {"id": "2", "text": "b"}, {"id": "3"}])
        );
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_panic() {
        assert!(decode_docs(&[0xff, 0xff, 0xff]).is_err());
    }
}
