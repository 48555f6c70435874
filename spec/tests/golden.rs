//! Golden tests: every `specs/good/*.yml` loads to its sibling `.json` (the normalized Flow, the
//! warnings and the files it read), every `specs/bad/*.yml` fails with the exact text of its
//! sibling `.err`. The files a spec names are read from its folder (subfolders hold the
//! Deployment YAMLs that specs name; they are not specs of their own here).
//! `UPDATE_GOLDEN=1 cargo test -p zeroflow-spec --test golden` rewrites the expected files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use zeroflow_spec::{FileError, FileReader, Source, load_with_files};

/// Reads what a spec names from the spec's folder, as `jc flow serve` does.
struct Dir(PathBuf);

impl FileReader for Dir {
    fn read(&self, path: &str) -> Result<String, FileError> {
        fs::read_to_string(self.0.join(path)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FileError::NotFound,
            _ => FileError::Unreadable(e.to_string()),
        })
    }
}

fn load(text: &str, path: &Path) -> Result<zeroflow_spec::Loaded, zeroflow_spec::SpecError> {
    let dir = Dir(path.parent().expect("spec folder").to_path_buf());
    load_with_files(text, &source_for(path), &dir)
}

fn specs(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/specs")
        .join(kind);
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    v.sort();
    v
}

/// The variables every golden spec is loaded with (shared with `jina_compat.py`).
pub fn source_for(path: &Path) -> Source {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/source.json");
    let text = fs::read_to_string(file).expect("source.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("source.json is JSON");
    let map = |k: &str| -> BTreeMap<String, String> {
        v[k].as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    Source {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        env: map("env"),
        context: map("context"),
        ..Default::default()
    }
}

fn check(expected_path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(expected_path, actual).expect("write golden file");
        return;
    }
    match fs::read_to_string(expected_path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{} differs.\n--- expected\n{expected}\n--- actual\n{actual}",
            expected_path.display()
        )),
        Err(_) => failures.push(format!(
            "{} is missing; actual:\n{actual}",
            expected_path.display()
        )),
    }
}

#[test]
fn good_specs_load_to_their_golden_json() {
    let mut failures = Vec::new();
    let files = specs("good");
    assert!(!files.is_empty());
    for path in files {
        let text = fs::read_to_string(&path).expect("read spec");
        match load(&text, &path) {
            Ok(loaded) => {
                let mut out = serde_json::json!({
                    "flow": loaded.flow,
                    "warnings": loaded.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                });
                if !loaded.files.is_empty() {
                    out["files"] = serde_json::json!(loaded.files);
                }
                let actual = serde_json::to_string_pretty(&out).expect("serialize") + "\n";
                check(&path.with_extension("json"), &actual, &mut failures);
            }
            Err(e) => failures.push(format!("{} should load but failed:\n{e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bad_specs_fail_with_their_golden_errors() {
    let mut failures = Vec::new();
    let files = specs("bad");
    assert!(!files.is_empty());
    for path in files {
        let text = fs::read_to_string(&path).expect("read spec");
        match load(&text, &path) {
            Ok(_) => failures.push(format!("{} should fail but loaded", path.display())),
            Err(e) => {
                assert!(
                    !e.errors.is_empty(),
                    "{}: an error without diagnostics",
                    path.display()
                );
                check(
                    &path.with_extension("err"),
                    &format!("{e}\n"),
                    &mut failures,
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
