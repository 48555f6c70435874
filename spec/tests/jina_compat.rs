//! Runs `jina_compat.py`, which loads every golden good spec with Jina 3.34 itself and compares
//! the Executors and the `needs` graph with Zeroflow's golden output. Needs the project venv
//! (`/work/main/.venv`, or the interpreter named by `ZEROFLOW_PYTHON`); without it the test
//! says that it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ZEROFLOW_PYTHON") {
        return Some(PathBuf::from(p));
    }
    // The workspace root resolved, but not the interpreter itself: a venv's `python` is a
    // symlink whose own location is how Python finds the venv.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .ok()?;
    [
        root.join(".venv/bin/python"),
        PathBuf::from("/work/main/.venv/bin/python"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

#[test]
fn golden_specs_load_the_same_in_jina() {
    let Some(py) = python() else {
        eprintln!("skipped: no Python with jina (set ZEROFLOW_PYTHON or create .venv)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jina_compat.py");
    let out = Command::new(&py)
        .arg(&script)
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "jina_compat.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
