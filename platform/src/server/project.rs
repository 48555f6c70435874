//! Deployed project folders (`jc flow deploy DIR`: `flow.yml`, `.env`, one folder per Executor):
//! checking an uploaded archive before anything is stored, the `.env` context the spec is loaded
//! with, checking that the files a spec names are in the project, and installing the Executors'
//! `requirements.txt` once per Flow into `<project>/.deps` (with
//! [`zeroflow_artifacts::requirements`], which the executor-shim uses on a cluster too).
//!
//! Archives are unpacked only through [`zeroflow_artifacts::archive::unpack`] (the same checks and
//! limits the registry applies); the registry then stores and materializes them.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use zeroflow_artifacts::archive::{self, ArchiveError, Limits};
use zeroflow_artifacts::requirements;
use zeroflow_spec::{Flow, Uses};

/// The folder a Flow runs from, and the `.env` values its spec is loaded with.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub context: BTreeMap<String, String>,
}

impl Project {
    pub fn at(dir: PathBuf) -> Project {
        let context = read_dotenv(&dir);
        Project { dir, context }
    }
}

/// Where installed requirements go, inside the project folder.
pub const DEPS_DIR: &str = ".deps";

/// Why an uploaded project archive was refused.
#[derive(Debug)]
pub struct Refused {
    /// Over a size or count limit (HTTP 413) rather than malformed (HTTP 400).
    pub too_large: bool,
    pub message: String,
}

impl Refused {
    pub fn from_archive(e: &ArchiveError) -> Refused {
        Refused {
            too_large: matches!(
                e,
                ArchiveError::CompressedTooLarge { .. }
                    | ArchiveError::UncompressedTooLarge { .. }
                    | ArchiveError::TooManyFiles { .. }
            ),
            message: format!("the uploaded project archive was refused: {e}"),
        }
    }
}

/// Reads `.env`: `KEY=VALUE` lines, `#` comments, optional `export ` and quotes (as `jc flow
/// serve` and the public client read it).
pub fn read_dotenv(dir: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join(".env")) else {
        return BTreeMap::new();
    };
    parse_dotenv(&text)
}

pub fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// An uploaded project unpacked into a scratch folder (removed on drop), with the bytes to store.
pub struct Staged {
    scratch: PathBuf,
    pub project: Project,
    /// What to hand to `Registry::push_project`: the upload itself, or repacked when the project
    /// sat in one top folder or had no `flow.yml` (a Deployment's folder, or a Flow file with
    /// another name: the deployed spec is added as `flow.yml`).
    pub bytes: Bytes,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

const MARKERS: [&str; 2] = ["flow.yml", "flow.yaml"];

/// Unpacks `bytes` under `scratch_parent` with `limits` and finds the project's root: the top,
/// or the single folder at the top that holds the spec. Blocking file I/O.
pub fn stage(
    bytes: Bytes,
    scratch_parent: &Path,
    limits: &Limits,
    spec: &str,
) -> Result<Staged, Refused> {
    let internal = |e: &dyn std::fmt::Display| Refused {
        too_large: false,
        message: format!("cannot unpack the uploaded project: {e}"),
    };
    std::fs::create_dir_all(scratch_parent).map_err(|e| internal(&e))?;
    let scratch = scratch_parent.join(format!("upload-{}", super::names::new_id()));
    let top = scratch.join("project");
    let staged = |root: PathBuf, bytes: Bytes| Staged {
        scratch: scratch.clone(),
        project: Project::at(root),
        bytes,
    };
    if let Err(e) = archive::unpack(&bytes, &top, limits) {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(Refused::from_archive(&e));
    }
    let has_marker = |d: &Path| MARKERS.iter().any(|m| d.join(m).is_file());
    let mut root = top.clone();
    if !has_marker(&top) {
        let entries: Vec<_> = std::fs::read_dir(&top)
            .map(|rd| rd.flatten().collect())
            .unwrap_or_default();
        if let [only] = entries.as_slice()
            && only.file_type().is_ok_and(|t| t.is_dir())
        {
            root = only.path();
        }
    }
    if root == top && has_marker(&top) {
        return Ok(staged(root, bytes));
    }
    if !has_marker(&root) {
        std::fs::write(root.join("flow.yml"), spec).map_err(|e| internal(&e))?;
    }
    match archive::pack_dir(&root) {
        Ok(b) => Ok(staged(root, b)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            Err(Refused::from_archive(&e))
        }
    }
}

/// `p` relative to `dir`, refused when it is absolute or climbs out with `..`.
fn inside(dir: &Path, p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    let mut depth: i32 = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err("it climbs out of the project folder with `..`".into());
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("it is an absolute path; name a file inside the project folder".into());
            }
        }
    }
    Ok(dir.join(path))
}

/// Reads the files a spec names (the Deployment YAMLs of a Flow's `executors:`) for
/// [`zeroflow_spec::load_with_files`], relative to the spec's folder. `confined`: only files
/// inside that folder, as for a deployed project, whose spec must not read the server's files;
/// otherwise any file, as Jina reads them on the user's own machine (`jc flow serve`).
pub struct SpecFiles {
    pub dir: PathBuf,
    pub confined: bool,
}

impl zeroflow_spec::FileReader for SpecFiles {
    fn read(&self, path: &str) -> Result<String, zeroflow_spec::FileError> {
        use zeroflow_spec::FileError;
        let full = if self.confined {
            if !self.dir.is_dir() {
                return Err(FileError::Refused(
                    "the Flow's project folder is not on this machine".into(),
                ));
            }
            let full = inside(&self.dir, path).map_err(FileError::Refused)?;
            // `inside` judges the path as written; a link in the project could still lead out.
            match (full.canonicalize(), self.dir.canonicalize()) {
                (Ok(real), Ok(root)) if !real.starts_with(&root) => {
                    return Err(FileError::Refused(
                        "it leads out of the project folder through a link".into(),
                    ));
                }
                _ => full,
            }
        } else {
            self.dir.join(path)
        };
        std::fs::read_to_string(&full).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FileError::NotFound,
            _ => FileError::Unreadable(e.to_string()),
        })
    }
}

/// The files a deployed spec names must be in its project: each Executor's `uses:` config, its
/// `py_modules`, and the `py_modules` its config lists (relative to the config's folder).
/// Errors name the Executor, the field and the file.
pub fn check_files(flow: &Flow, dir: &Path) -> Result<(), Vec<String>> {
    let mut errors = vec![];
    for e in &flow.executors {
        if e.command.is_some() || e.external.is_some() {
            continue;
        }
        let mut check = |field: &str, p: &str, base: &Path| -> Option<PathBuf> {
            match inside(base, p) {
                Err(why) => {
                    errors.push(format!("Executor {}: {field} {p:?}: {why}", e.name));
                    None
                }
                Ok(full) if !full.is_file() => {
                    let rel = full.strip_prefix(dir).unwrap_or(&full);
                    errors.push(format!(
                        "Executor {}: {field} {p:?}: {} is not in the uploaded project folder",
                        e.name,
                        rel.display()
                    ));
                    None
                }
                Ok(full) => Some(full),
            }
        };
        if let Uses::Config { path } = &e.uses
            && let Some(config) = check("uses", path, dir)
        {
            let base = config.parent().unwrap_or(dir).to_path_buf();
            for m in config_py_modules(&config) {
                check("py_modules (in its config)", &m, &base);
            }
        }
        for m in &e.py_modules {
            check("py_modules", m, dir);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `metas.py_modules` (or top-level `py_modules`) of a Jina Executor config; empty when the config
/// is not plain YAML (custom tags) or lists none.
fn config_py_modules(config: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(config) else {
        return vec![];
    };
    let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) else {
        return vec![];
    };
    let list = doc
        .get("metas")
        .and_then(|m| m.get("py_modules"))
        .or_else(|| doc.get("py_modules"));
    match list {
        Some(serde_yaml_ng::Value::Sequence(s)) => s
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(serde_yaml_ng::Value::String(s)) => vec![s.clone()],
        _ => vec![],
    }
}

pub use zeroflow_artifacts::requirements::{python_for, python_path, requirement_lines};

/// The non-empty `requirements.txt` files of the Flow's Executor folders (and the project root),
/// each with its requirement lines, in a stable order.
pub fn requirement_files(flow: &Flow, dir: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut folders = vec![dir.to_path_buf()];
    for e in &flow.executors {
        if let Uses::Config { path } = &e.uses
            && let Ok(full) = inside(dir, path)
            && let Some(parent) = full.parent()
        {
            folders.push(parent.to_path_buf());
        }
    }
    requirements::requirement_files_in(folders)
}

/// Installs every requirement of the Flow's Executors into `<dir>/.deps` with
/// `python -m pip install --target`, once: a later start with the same requirements reuses it.
/// `Ok(None)`: nothing to install. The error carries the tail of pip's output.
pub async fn install_requirements(
    flow: &Flow,
    dir: &Path,
    python: &Path,
    timeout: std::time::Duration,
) -> Result<Option<PathBuf>, String> {
    let files = requirement_files(flow, dir);
    if files.is_empty() {
        return Ok(None);
    }
    let deps = dir.join(DEPS_DIR);
    requirements::install(&files, dir, &deps, python, timeout)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(deps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_values() {
        let m = parse_dotenv("# c\nA=1\nexport B = 'two'\nC=\"three four\"\n=x\nnoequals\n");
        assert_eq!(m.get("A").map(String::as_str), Some("1"));
        assert_eq!(m.get("B").map(String::as_str), Some("two"));
        assert_eq!(m.get("C").map(String::as_str), Some("three four"));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn paths_stay_inside_the_project() {
        let d = Path::new("/p");
        assert_eq!(inside(d, "a/b.yml").unwrap(), Path::new("/p/a/b.yml"));
        assert_eq!(
            inside(d, "./a/../b.yml").unwrap(),
            Path::new("/p/./a/../b.yml")
        );
        assert!(inside(d, "../x.yml").is_err());
        assert!(inside(d, "a/../../x.yml").is_err());
        assert!(inside(d, "/etc/passwd").is_err());
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "zf-project-{name}-{}-{}",
            std::process::id(),
            super::super::names::new_id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn flow(yaml: &str) -> Flow {
        zeroflow_spec::load(yaml, &zeroflow_spec::Source::default())
            .unwrap()
            .flow
    }

    #[test]
    fn a_deployment_yaml_the_spec_names_is_read_from_inside_the_project_only() {
        let d = temp("specfiles");
        let out = temp("specfiles-outside");
        std::fs::create_dir_all(d.join("deps")).unwrap();
        let dep = "jtype: Deployment\nwith:\n  uses: Enc\n  replicas: 2\n";
        std::fs::write(d.join("deps/enc.yml"), dep).unwrap();
        std::fs::write(out.join("enc.yml"), dep).unwrap();
        std::os::unix::fs::symlink(&out, d.join("link")).unwrap();
        let load = |item: &str, files: &SpecFiles| {
            let spec = format!("jtype: Flow\nexecutors:\n  - {item}\n");
            zeroflow_spec::load_with_files(&spec, &zeroflow_spec::Source::default(), files)
        };
        let project = SpecFiles {
            dir: d.clone(),
            confined: true,
        };
        let loaded = load("deps/enc.yml", &project).unwrap();
        assert_eq!(loaded.flow.executors[0].replicas, 2);
        assert_eq!(loaded.files, ["deps/enc.yml"]);
        for (item, why) in [
            ("../enc.yml", "climbs out of the project folder"),
            ("/etc/enc.yml", "it is an absolute path"),
            (
                "link/enc.yml",
                "leads out of the project folder through a link",
            ),
        ] {
            let err = load(item, &project).unwrap_err().to_string();
            assert!(err.contains(why), "{item}: {err}");
        }
        // `jc flow serve` reads what the user's Flow names, wherever it is, as Jina does.
        let own = SpecFiles {
            dir: d.clone(),
            confined: false,
        };
        assert!(load("link/enc.yml", &own).is_ok());
        let gone = SpecFiles {
            dir: d.join("not-here"),
            confined: true,
        };
        let err = load("deps/enc.yml", &gone).unwrap_err().to_string();
        assert!(err.contains("not on this machine"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn missing_files_are_named() {
        let d = temp("files");
        std::fs::create_dir_all(d.join("executor1")).unwrap();
        std::fs::write(
            d.join("executor1/config.yml"),
            "jtype: MyExecutor\nmetas:\n  py_modules:\n    - executor.py\n",
        )
        .unwrap();
        let f = flow("jtype: Flow\nexecutors:\n  - name: e1\n    uses: executor1/config.yml\n");
        let err = check_files(&f, &d).unwrap_err().join("; ");
        assert!(err.contains("executor1/executor.py"), "{err}");
        std::fs::write(d.join("executor1/executor.py"), "").unwrap();
        check_files(&f, &d).unwrap();
        let f = flow("jtype: Flow\nexecutors:\n  - name: e2\n    uses: executor2/config.yml\n");
        let err = check_files(&f, &d).unwrap_err().join("; ");
        assert!(
            err.contains("e2") && err.contains("executor2/config.yml"),
            "{err}"
        );
        let f = flow("jtype: Flow\nexecutors:\n  - name: e3\n    uses: ../outside.yml\n");
        let err = check_files(&f, &d).unwrap_err().join("; ");
        assert!(err.contains(".."), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn requirement_files_of_executor_folders() {
        let d = temp("reqs");
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        std::fs::write(d.join("a/config.yml"), "jtype: A\n").unwrap();
        std::fs::write(d.join("b/config.yml"), "jtype: B\n").unwrap();
        std::fs::write(d.join("a/requirements.txt"), "# nothing\n\n").unwrap();
        std::fs::write(d.join("b/requirements.txt"), "six\n").unwrap();
        let f = flow(
            "jtype: Flow\nexecutors:\n  - name: a\n    uses: a/config.yml\n  - name: b\n    uses: b/config.yml\n",
        );
        let files = requirement_files(&f, &d);
        assert_eq!(files.len(), 1);
        assert!(files[0].0.ends_with("b/requirements.txt"));
        assert_eq!(files[0].1, ["six"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn comment_only_requirements_install_nothing() {
        let d = temp("noinstall");
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::write(d.join("a/config.yml"), "jtype: A\n").unwrap();
        std::fs::write(d.join("a/requirements.txt"), "# none\n").unwrap();
        let f = flow("jtype: Flow\nexecutors:\n  - name: a\n    uses: a/config.yml\n");
        let r = install_requirements(
            &f,
            &d,
            Path::new("/nonexistent/python"),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(r, None);
        assert!(!d.join(DEPS_DIR).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
