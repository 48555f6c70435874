//! A project's Python requirements: reading `requirements.txt` files, finding the Python that
//! runs an Executor, and installing the requirements with `pip install --target` into a folder
//! that is put on `PYTHONPATH`, once per set of requirements. Shared by `jc server` (which
//! installs into the project's `.deps`) and the executor-shim (which installs into a node-wide
//! cache keyed by [`deps_key`]).
//!
//! This module runs pip and nothing else: it does not choose which Executors a project has (the
//! caller names the folders) and does not start Executors.

use std::path::{Path, PathBuf};

use crate::digest::Sha256Digest;

/// Written into the deps folder after a successful install: the requirements it installed.
const DEPS_MARKER: &str = ".zeroflow-requirements";
/// Lines of pip's output kept for the error.
const PIP_TAIL: usize = 30;

/// A `requirements.txt` and its requirement lines.
pub type RequirementFile = (PathBuf, Vec<String>);

#[derive(Debug, thiserror::Error)]
pub enum RequirementsError {
    #[error("installing the requirements ({files}) took longer than {timeout:?}")]
    Timeout {
        files: String,
        timeout: std::time::Duration,
    },
    #[error(
        "cannot run {} -m pip to install the requirements ({files}): {message}; \
         set ZEROFLOW_PYTHON to the Python that runs jina",
        python.display()
    )]
    Spawn {
        python: PathBuf,
        files: String,
        message: String,
    },
    #[error(
        "installing the requirements ({files}) failed: {} -m pip install exited with {status}. \
         Last lines of its output:\n{tail}",
        python.display()
    )]
    Failed {
        python: PathBuf,
        files: String,
        status: String,
        tail: String,
    },
    #[error("cannot record the installed requirements in {}: {message}", path.display())]
    Record { path: PathBuf, message: String },
}

/// What [`install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The folder already held exactly these requirements.
    Reused,
    /// pip ran and succeeded.
    Installed,
}

/// The requirement lines of a `requirements.txt`: comments (whole-line and trailing ` #`) and
/// blank lines dropped.
pub fn requirement_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return "";
            }
            match l.find(" #").or_else(|| l.find("\t#")) {
                Some(i) => l[..i].trim(),
                None => l,
            }
        })
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The non-empty `requirements.txt` of each folder, in a stable order (folders sorted, each
/// once).
pub fn requirement_files_in(folders: impl IntoIterator<Item = PathBuf>) -> Vec<RequirementFile> {
    let mut folders: Vec<PathBuf> = folders.into_iter().collect();
    folders.sort();
    folders.dedup();
    folders
        .into_iter()
        .filter_map(|f| {
            let file = f.join("requirements.txt");
            let lines = requirement_lines(&std::fs::read_to_string(&file).ok()?);
            (!lines.is_empty()).then_some((file, lines))
        })
        .collect()
}

/// How deep [`project_requirement_files`] looks: an Executor folder of a project sits one or two
/// levels down; deeper `requirements.txt` files belong to vendored code.
const MAX_DEPTH: usize = 3;

/// Every non-empty `requirements.txt` of an unpacked project: its root and the folders below it
/// (to [`MAX_DEPTH`] levels), skipping hidden folders (`.deps`, `.git`, virtualenvs) and Python
/// caches. For a runner that has the project but not its Flow: `jc server` installs the
/// requirements of the folders its Flow's Executors use, which in a `jc new` project are the
/// same files.
pub fn project_requirement_files(dir: &Path) -> Vec<RequirementFile> {
    let mut folders = vec![];
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        folders.push(d.clone());
        if depth == MAX_DEPTH {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if e.file_type().is_ok_and(|t| t.is_dir())
                && !name.starts_with('.')
                && name != "__pycache__"
                && name != "node_modules"
            {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    requirement_files_in(folders)
}

/// What a deps folder holds, as recorded in its marker: each file (relative to the project)
/// and its lines.
fn wanted(files: &[RequirementFile], project: &Path) -> String {
    files
        .iter()
        .map(|(f, lines)| {
            let rel = f.strip_prefix(project).unwrap_or(f);
            format!("# {}\n{}\n", rel.display(), lines.join("\n"))
        })
        .collect()
}

/// A line pip resolves against files (a path, a nested `-r`, `-e .`, `--find-links DIR`): its
/// meaning depends on the project, not only on its text.
fn names_files(line: &str) -> bool {
    line.starts_with(['-', '.', '/', '~']) || line.contains("file:")
}

/// The name of the shared folder that holds the install of `files`: the SHA-256 (hex) of the
/// requirement lines, so that every project with the same requirements shares one install. When
/// a line names files (a local path, a nested requirements file), the project's digest is part
/// of the key too: the same text in two projects may then install different things.
pub fn deps_key(
    files: &[RequirementFile],
    project: &Path,
    project_digest: &Sha256Digest,
) -> String {
    let mut text = wanted(files, project);
    if files.iter().flat_map(|(_, l)| l).any(|l| names_files(l)) {
        text = format!("# project {project_digest}\n{text}");
    }
    Sha256Digest::of(text.as_bytes()).hex()
}

/// `program` as the OS would find it: a path as is, a bare name on `PATH`.
fn which(prog: &Path) -> Option<PathBuf> {
    if prog.components().count() > 1 {
        return prog.is_file().then(|| prog.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The Python that runs `program` (an Executor's command, usually `jina`): `ZEROFLOW_PYTHON`,
/// else `program` itself when it is a Python interpreter, else the interpreter in its shebang,
/// else `python3`.
pub fn python_for(program: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("ZEROFLOW_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if program
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("python"))
    {
        return program.to_path_buf();
    }
    let fallback = PathBuf::from("python3");
    let Some(script) = which(program) else {
        return fallback;
    };
    let Ok(text) = std::fs::read(&script) else {
        return fallback;
    };
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let Some(line) = std::str::from_utf8(first)
        .ok()
        .and_then(|l| l.strip_prefix("#!"))
    else {
        return fallback;
    };
    let mut words = line.split_whitespace();
    match words.next() {
        Some(prog) if prog.ends_with("/env") => words
            .find(|w| !w.starts_with('-'))
            .map(PathBuf::from)
            .unwrap_or(fallback),
        Some(prog) => PathBuf::from(prog),
        None => fallback,
    }
}

/// `PYTHONPATH` with `deps` first, then this process's own.
pub fn python_path(deps: &Path) -> String {
    let mut parts = vec![deps.to_path_buf()];
    if let Some(p) = std::env::var_os("PYTHONPATH") {
        parts.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(parts)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| deps.to_string_lossy().into_owned())
}

/// Whether `deps` holds exactly `files` (what [`install`] would reuse without running pip).
pub fn is_installed(files: &[RequirementFile], project: &Path, deps: &Path) -> bool {
    std::fs::read_to_string(deps.join(DEPS_MARKER)).is_ok_and(|have| have == wanted(files, project))
}

/// Installs `files` (from project folder `project`, pip's working folder) into `deps` with
/// `python -m pip install --target`, unless `deps` already holds exactly them. The marker is
/// written last, so a crash or a failure leaves a folder the next call installs again. Callers
/// that share `deps` between processes hold a lock around this.
pub async fn install(
    files: &[RequirementFile],
    project: &Path,
    deps: &Path,
    python: &Path,
    timeout: std::time::Duration,
) -> Result<Installed, RequirementsError> {
    if is_installed(files, project, deps) {
        return Ok(Installed::Reused);
    }
    let marker = deps.join(DEPS_MARKER);
    let want = wanted(files, project);
    let _ = std::fs::remove_dir_all(deps);
    let mut cmd = tokio::process::Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--target",
    ])
    .arg(deps);
    for (f, _) in files {
        cmd.arg("-r").arg(f);
    }
    cmd.current_dir(project)
        .env("PIP_NO_INPUT", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let names = files
        .iter()
        .map(|(f, _)| f.strip_prefix(project).unwrap_or(f).display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            let _ = std::fs::remove_dir_all(deps);
            return Err(RequirementsError::Timeout {
                files: names,
                timeout,
            });
        }
        Ok(Err(e)) => {
            return Err(RequirementsError::Spawn {
                python: python.to_path_buf(),
                files: names,
                message: e.to_string(),
            });
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(deps);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(RequirementsError::Failed {
            python: python.to_path_buf(),
            files: names,
            status: out.status.to_string(),
            tail: lines[lines.len().saturating_sub(PIP_TAIL)..].join("\n"),
        });
    }
    std::fs::create_dir_all(deps)
        .and_then(|_| std::fs::write(&marker, &want))
        .map_err(|e| RequirementsError::Record {
            path: marker.clone(),
            message: e.to_string(),
        })?;
    Ok(Installed::Installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_lines_skip_comments_and_blanks() {
        assert!(requirement_lines("").is_empty());
        assert!(requirement_lines("# only a comment\n\n   \n  # another\n").is_empty());
        assert_eq!(
            requirement_lines("six==1.16  # pinned\n\n# x\nrequests>=2\n-r other.txt\n"),
            ["six==1.16", "requests>=2", "-r other.txt"]
        );
        // A URL fragment is not a comment.
        assert_eq!(
            requirement_lines("git+https://h/r.git#egg=x\n"),
            ["git+https://h/r.git#egg=x"]
        );
    }

    #[test]
    fn project_files_are_found_below_the_root_but_not_in_hidden_folders() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for (f, text) in [
            ("requirements.txt", "numpy\n"),
            ("executor1/requirements.txt", "six\n"),
            ("executor2/requirements.txt", "# nothing\n"),
            (".deps/x/requirements.txt", "evil\n"),
            ("a/b/c/d/requirements.txt", "too-deep\n"),
        ] {
            std::fs::create_dir_all(p.join(f).parent().unwrap()).unwrap();
            std::fs::write(p.join(f), text).unwrap();
        }
        let found: Vec<_> = project_requirement_files(p)
            .into_iter()
            .map(|(f, l)| (f.strip_prefix(p).unwrap().to_path_buf(), l))
            .collect();
        assert_eq!(
            found,
            [
                (PathBuf::from("requirements.txt"), vec!["numpy".to_string()]),
                (
                    PathBuf::from("executor1/requirements.txt"),
                    vec!["six".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn deps_keys_follow_the_requirements_and_local_paths_follow_the_project() {
        let a = Sha256Digest::of(b"project a");
        let b = Sha256Digest::of(b"project b");
        let files = |lines: &[&str]| {
            vec![(
                PathBuf::from("/p/e/requirements.txt"),
                lines.iter().map(|l| l.to_string()).collect(),
            )]
        };
        let p = Path::new("/p");
        let six = files(&["six"]);
        assert_eq!(deps_key(&six, p, &a), deps_key(&six, p, &b));
        assert_eq!(deps_key(&six, p, &a).len(), 64);
        assert_ne!(
            deps_key(&six, p, &a),
            deps_key(&files(&["six==1.17.0"]), p, &a)
        );
        // The same text in another folder of another project: the same install.
        let q = vec![(
            PathBuf::from("/q/e/requirements.txt"),
            vec!["six".to_string()],
        )];
        assert_eq!(deps_key(&six, p, &a), deps_key(&q, Path::new("/q"), &b));
        for local in ["./mylib", "-r more.txt", "-e .", "file:///x", "/abs/pkg"] {
            let f = files(&["six", local]);
            assert_ne!(deps_key(&f, p, &a), deps_key(&f, p, &b), "{local}");
        }
    }

    #[tokio::test]
    async fn a_recorded_install_is_reused_without_pip() {
        let d = tempfile::tempdir().unwrap();
        let deps = d.path().join("deps");
        let files = vec![(d.path().join("requirements.txt"), vec!["six".to_string()])];
        std::fs::create_dir_all(&deps).unwrap();
        std::fs::write(deps.join(DEPS_MARKER), wanted(&files, d.path())).unwrap();
        let python = Path::new("/nonexistent/python");
        let r = install(
            &files,
            d.path(),
            &deps,
            python,
            std::time::Duration::from_secs(5),
        );
        assert_eq!(r.await.unwrap(), Installed::Reused);
        // Other requirements: pip must run (and here it cannot, which the error says).
        let other = vec![(d.path().join("requirements.txt"), vec!["attrs".to_string()])];
        let e = install(
            &other,
            d.path(),
            &deps,
            python,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/nonexistent/python") && e.contains("ZEROFLOW_PYTHON"),
            "{e}"
        );
    }

    #[test]
    fn python_of_a_program() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("jina");
        std::fs::write(&script, "#!/opt/venv/bin/python3.11\nimport sys\n").unwrap();
        if std::env::var_os("ZEROFLOW_PYTHON").is_none() {
            assert_eq!(python_for(&script), Path::new("/opt/venv/bin/python3.11"));
            std::fs::write(&script, "#!/usr/bin/env python3\n").unwrap();
            assert_eq!(python_for(&script), Path::new("python3"));
            assert_eq!(python_for(&d.path().join("missing")), Path::new("python3"));
            assert_eq!(
                python_for(Path::new("/venv/bin/python3")),
                Path::new("/venv/bin/python3")
            );
        }
    }
}
