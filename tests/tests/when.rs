//! `when:` conditions: Zeroflow keeps the same documents as docarray's `filter_docs` (what jina's
//! gateway applies), and a Flow with a condition filters what the real `jina.Client` gets back.

use zeroflow_gateway::docs;
use zeroflow_spec::when::Condition;
use zeroflow_tests::*;

#[test]
fn conditions_keep_the_documents_docarray_keeps() {
    let path = workspace_root().join("tests/python/when_cases.json");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("cases")).expect("json");
    let expected = run_python("check_when.py", &[path.to_str().expect("utf8")]);
    let expected: Vec<Vec<String>> = expected
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON list of ids"))
        .collect();
    let conditions = cases["conditions"].as_array().expect("conditions");
    assert_eq!(expected.len(), conditions.len());
    // The gateway sees documents as protobuf and evaluates their JSON form: go the same way.
    let docs: Vec<_> = cases["docs"]
        .as_array()
        .expect("docs")
        .iter()
        .map(|d| docs::doc_to_json(&docs::json_to_doc(d).expect("a document")))
        .collect();
    let mut wrong = vec![];
    for (cond, want) in conditions.iter().zip(&expected) {
        let c = Condition::parse(cond).unwrap_or_else(|e| panic!("{cond}: {e}"));
        let got: Vec<String> = docs
            .iter()
            .filter(|d| c.matches(d))
            .map(|d| d["id"].as_str().expect("id").to_string())
            .collect();
        // "!id": Python raised on that document (jina fails the request); Zeroflow drops it.
        let want: Vec<String> = want
            .iter()
            .filter(|w| !w.starts_with('!'))
            .cloned()
            .collect();
        if got != want {
            wrong.push(format!("{cond}: docarray keeps {want:?}, Zeroflow {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_flow_with_conditions_sends_each_branch_only_its_documents() {
    let dir = temp_dir("when-flow");
    // Also the gateway on a multi-threaded runtime (`--threads`; one thread is the default that
    // every other end-to-end test runs).
    let served = serve_flow_with(
        &dir,
        r#"
jtype: Flow
executors:
  - name: tagger
    command: zeroflow-test-executor --append=-t
  - name: cats
    command: zeroflow-test-executor --append=-cat
    when:
      text:
        $regex: ^cat
  - name: dogs
    command: zeroflow-test-executor --append=-dog
    needs: tagger
    when:
      text:
        $regex: ^dog
  - name: join
    command: zeroflow-test-executor
    needs: [cats, dogs]
"#,
        &["--threads", "2"],
    );
    let grpc = served.grpc.clone().expect("grpc endpoint printed");
    run_python("check_client.py", &["when_flow", "--grpc", &grpc]);
    served.stop();
}
