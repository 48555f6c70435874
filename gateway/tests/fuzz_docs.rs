//! The gateway looks inside documents only to turn them into JSON (HTTP answers), to read JSON
//! bodies, and to merge branches. Those inputs come from clients and from Executors as sent:
//! arbitrary bytes and arbitrary document trees must give a value or an error, never a panic,
//! and never work out of proportion to their size.

use proptest::prelude::*;
use prost::Message;
use zeroflow_gateway::docs::{decode_docs, docs_to_json, json_to_docs, reduce};
use zeroflow_proto::docarray::{
    DenseNdArrayProto, DocListProto, DocProto, ListOfAnyProto, NdArrayProto, NodeProto,
    node_proto::Content,
};
use zeroflow_proto::jina::{DataContentProto, data_content_proto::Documents};

fn ndarray() -> impl Strategy<Value = NodeProto> {
    let dtype = prop::sample::select(vec![
        "<f4", ">f4", "<f8", "<i4", ">i8", "|u1", "|b1", "<c16", "",
    ]);
    // Shapes from plausible to hostile: zero, huge and overflowing dimensions.
    let dim = prop_oneof![0u32..5, Just(u32::MAX), any::<u32>()];
    (
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(dim, 0..5),
        dtype,
    )
        .prop_map(|(buffer, shape, dtype)| NodeProto {
            content: Some(Content::Ndarray(NdArrayProto {
                dense: Some(DenseNdArrayProto {
                    buffer,
                    shape,
                    dtype: dtype.into(),
                }),
                parameters: None,
            })),
            docarray_type: None,
        })
}

fn node() -> impl Strategy<Value = NodeProto> {
    let leaf = prop_oneof![
        any::<String>().prop_map(Content::Text),
        any::<i32>().prop_map(Content::Integer),
        any::<f64>().prop_map(Content::Float),
        any::<bool>().prop_map(Content::Boolean),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Content::Blob),
    ]
    .prop_map(|c| NodeProto {
        content: Some(c),
        docarray_type: None,
    });
    prop_oneof![leaf, ndarray()].prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(|data| NodeProto {
            content: Some(Content::List(ListOfAnyProto { data })),
            docarray_type: None,
        })
    })
}

fn docs() -> impl Strategy<Value = DocListProto> {
    let doc = prop::collection::hash_map(
        prop_oneof![Just("id".to_string()), "[a-z]{1,3}"],
        node(),
        0..4,
    )
    .prop_map(|data| DocProto { data });
    prop::collection::vec(doc, 0..4).prop_map(|docs| DocListProto { docs })
}

fn wire(d: DocListProto) -> Vec<u8> {
    DataContentProto {
        documents: Some(Documents::Docs(d)),
    }
    .encode_to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_decode_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(d) = decode_docs(&bytes) {
            let _ = docs_to_json(&d);
        }
    }

    #[test]
    fn any_document_tree_becomes_json_and_back(a in docs(), b in docs()) {
        let json = docs_to_json(&decode_docs(&wire(a.clone())).expect("what we encode decodes"));
        // The JSON an HTTP client gets is JSON the gateway takes back.
        let again = json_to_docs(&json).expect("the gateway's own JSON is accepted");
        prop_assert_eq!(again.docs.len(), a.docs.len());
        // Merging branches keeps every id once.
        let merged = reduce(vec![a.clone(), b.clone()]);
        prop_assert!(merged.docs.len() <= a.docs.len() + b.docs.len());
        let _ = docs_to_json(&merged);
    }
}
