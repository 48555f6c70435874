//! Packing a project folder as `.tar.gz` for upload (`jc flow deploy DIR`, `jc executor push`).
//! Caches, virtualenvs and VCS folders are left out: they are large, machine-specific, and the
//! server installs its own dependencies.

use std::io::Write;
use std::path::Path;

/// Folder names never uploaded.
const SKIP_DIRS: [&str; 7] = [
    ".git",
    "__pycache__",
    ".venv",
    "venv",
    "node_modules",
    "target",
    ".mypy_cache",
];

fn skipped(name: &str, is_dir: bool) -> bool {
    if is_dir {
        SKIP_DIRS.contains(&name) || (name.starts_with('.') && name != ".env")
    } else {
        name.ends_with(".pyc") || name == ".DS_Store"
    }
}

/// The folder as a gzip'd tar with paths relative to it, in sorted order (so the same folder packs
/// to the same bytes, give or take mtimes). Symlinks are stored as the files they point to, since
/// the server refuses links that could point outside the archive.
pub fn pack_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(enc);
    tar.follow_symlinks(true);
    tar.mode(tar::HeaderMode::Deterministic);
    add(&mut tar, dir, Path::new(""))?;
    let mut enc = tar.into_inner()?;
    enc.flush()?;
    enc.finish()
}

fn add<W: Write>(tar: &mut tar::Builder<W>, root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name_s = name.to_string_lossy();
        let path = e.path();
        // metadata() follows links; a dangling link is skipped rather than failing the upload.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if skipped(&name_s, meta.is_dir()) {
            continue;
        }
        let rel_child = rel.join(&name);
        if meta.is_dir() {
            tar.append_dir(&rel_child, &path)?;
            add(tar, root, &rel_child)?;
        } else if meta.is_file() {
            tar.append_path_with_name(&path, &rel_child)?;
        }
    }
    Ok(())
}

/// Whether a deploy folder holds more than its YAML (and `.env`): then the Flow uses local files
/// (Executor folders, `py_modules`, scripts) and the folder must travel with the spec.
pub fn has_project_files(dir: &Path, spec_file: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    let spec_name = spec_file.file_name();
    rd.flatten().any(|e| {
        let name = e.file_name();
        let is_dir = e.path().is_dir();
        let n = name.to_string_lossy();
        // .gitignore and the like say nothing about the Flow needing its folder.
        let hidden_file = !is_dir && n.starts_with('.');
        Some(name.as_os_str()) != spec_name
            && !hidden_file
            && !skipped(&n, is_dir)
            && !n.ends_with(".md")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("jc-archive-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn packs_relative_paths_and_skips_caches() {
        let d = tmp("pack");
        std::fs::create_dir_all(d.join("executor1/__pycache__")).unwrap();
        std::fs::write(d.join("flow.yml"), "jtype: Flow\n").unwrap();
        std::fs::write(d.join(".env"), "A=1\n").unwrap();
        std::fs::write(d.join("executor1/executor.py"), "x = 1\n").unwrap();
        std::fs::write(
            d.join("executor1/__pycache__/executor.cpython-311.pyc"),
            "b",
        )
        .unwrap();
        let bytes = pack_dir(&d).unwrap();
        let mut names = vec![];
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().to_string();
            if p == "executor1/executor.py" {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert_eq!(s, "x = 1\n");
            }
            names.push(p);
        }
        assert_eq!(
            names,
            [".env", "executor1", "executor1/executor.py", "flow.yml"]
        );
        assert!(has_project_files(&d, &d.join("flow.yml")));
        std::fs::remove_dir_all(d.join("executor1")).unwrap();
        assert!(
            !has_project_files(&d, &d.join("flow.yml")),
            "flow.yml and .env alone"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
