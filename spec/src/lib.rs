//! Jina Flow and Deployment YAML with JCloud's `jcloud:` extensions: parse, substitute variables,
//! apply defaults, validate and normalize into [`model::Flow`], as Jina 3.34 loads them. Pure: no
//! IO of its own (the files a spec names are read through the caller's [`FileReader`]), no
//! async, no knowledge of processes, sockets or Kubernetes.

pub mod model;
pub mod when;

mod diag;
mod escape;
mod flow;
mod jcloud;
mod keys;
mod vars;
mod yaml;

pub use model::*;

use std::collections::BTreeMap;
use std::fmt;

/// Where a spec came from and the variables it may reference.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Shown in diagnostics, e.g. `flow.yml`.
    pub name: String,
    /// `${{ ENV.X }}`, `$X`, `${X}`: the process environment (passed in: this crate does no IO).
    pub env: BTreeMap<String, String>,
    /// `${{ context.X }}` / `${{ X }}`: values from the project's `.env` file.
    pub context: BTreeMap<String, String>,
    /// The most replicas `jcloud.autoscale.max` may ask for; None = JCloud's cap,
    /// [`DEFAULT_MAX_REPLICAS_CAP`].
    pub max_replicas_cap: Option<u32>,
}

/// JCloud refuses `jcloud.autoscale.max` above 5.
pub const DEFAULT_MAX_REPLICAS_CAP: u32 = 5;

/// One error or warning, pointing at the YAML.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// 1-based line and column of the offending node (0 when not known).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `executors[0].jcloud.autoscale.min`.
    pub field: String,
    pub message: String,
    /// The file `line` and `column` are in when it is not the spec itself: a Deployment YAML
    /// that the Flow names, as the Flow names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if self.field.is_empty() {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "line {}, column {}: {}: {}",
                self.line, self.column, self.field, self.message
            )
        }
    }
}

/// A spec that cannot be loaded; every problem found is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub source_name: String,
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.source_name, d)?;
        }
        Ok(())
    }
}

/// A loaded spec with the warnings met on the way (unknown keys, values JCloud adjusts).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub flow: Flow,
    pub warnings: Vec<Diagnostic>,
    /// The files the spec named and the loader read (Deployment YAMLs in `executors:`), as
    /// given to [`FileReader::read`]: what else, besides the spec, the result depends on.
    pub files: Vec<String>,
}

/// How the loader reads the files a spec names (a Flow's `executors:` item can be the path of a
/// Deployment YAML). The caller decides what may be read: this crate does no IO of its own.
pub trait FileReader {
    /// The text of the file at `path`, a path relative to the spec's folder (as Jina resolves
    /// it: the Flow's folder) or absolute, with `/` between its parts.
    fn read(&self, path: &str) -> Result<String, FileError>;

    /// Whether a file is at `path`, by the same rules as [`FileReader::read`].
    fn exists(&self, path: &str) -> bool {
        self.read(path).is_ok()
    }
}

/// Why a file the spec names could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("no such file")]
    NotFound,
    /// The caller does not let a spec read this file; the text says why.
    #[error("{0}")]
    Refused(String),
    #[error("cannot read it: {0}")]
    Unreadable(String),
}

/// For a spec given without its folder: every file it names is refused.
pub struct NoFiles;

impl FileReader for NoFiles {
    fn read(&self, _path: &str) -> Result<String, FileError> {
        Err(FileError::Refused(
            "the spec was given without its folder, so the files it names cannot be read".into(),
        ))
    }
}

/// Loads a Flow YAML, or a Deployment YAML (normalized into a one-Executor Flow), with no files
/// around it: [`load_with_files`] with [`NoFiles`].
pub fn load(yaml: &str, source: &Source) -> Result<Loaded, SpecError> {
    load_with_files(yaml, source, &NoFiles)
}

/// Loads a Flow YAML, or a Deployment YAML (normalized into a one-Executor Flow), reading the
/// Deployment YAMLs a Flow names through `files`.
///
/// Everything Jina 3.34 loads loads here with the same graph; keys Jina does not know are
/// warnings, as are values JCloud adjusts; values Jina or JCloud would refuse are errors, all of
/// them reported at once.
pub fn load_with_files(
    yaml: &str,
    source: &Source,
    files: &dyn FileReader,
) -> Result<Loaded, SpecError> {
    let fail = |errors: Vec<Diagnostic>| SpecError {
        source_name: source.name.clone(),
        errors,
    };
    let mut d = diag::Diags::default();
    let Some(root) = read_tree(yaml, source, &mut d, false) else {
        return Err(fail(d.errors));
    };
    let ctx = flow::Ctx {
        cap: source.max_replicas_cap.unwrap_or(DEFAULT_MAX_REPLICAS_CAP),
        source,
        files,
        read: Default::default(),
    };
    let flow = match root.get("jtype") {
        Some(j) if j.as_str() == Some("Flow") => Some(flow::load_flow(&root, &ctx, &mut d)),
        Some(j) if j.as_str() == Some("Deployment") => {
            Some(flow::load_deployment(&root, &ctx, &mut d))
        }
        Some(j) => {
            d.bad(j, "jtype", "Flow or Deployment");
            None
        }
        None => {
            d.error(&root, "jtype", "missing; allowed: `jtype: Flow` or `jtype: Deployment` (or the `!Flow` tag), as Jina requires");
            None
        }
    };
    let order = |e: &Diagnostic| (e.file.clone(), e.line, e.column);
    d.errors.sort_by_key(order);
    d.warnings.sort_by_key(order);
    match flow {
        Some(flow) if d.errors.is_empty() => Ok(Loaded {
            flow,
            warnings: d.warnings,
            files: ctx.read.into_inner(),
        }),
        _ => Err(fail(d.errors)),
    }
}

/// A spec's text as the substituted tree Jina would build from it: the `!Name` rewrite, the
/// YAML, the variables. None, with the errors in `d`, when there is no mapping to load. `named`:
/// the text is a Deployment YAML a Flow names, which Jina reads without the context (.env).
pub(crate) fn read_tree(
    text: &str,
    source: &Source,
    d: &mut diag::Diags,
    named: bool,
) -> Option<yaml::Node> {
    let escaped = escape::escape(text);
    let parsed = match yaml::parse(&escaped.text) {
        Ok(p) => p,
        Err(e) => {
            let mut message = format!("YAML syntax error: {}", e.message);
            let near = escaped
                .rewrites
                .iter()
                .find(|r| r.line == e.line || r.line + 1 == e.line);
            if let Some(r) = near {
                message.push_str(&format!(
                    " (Jina rewrites `!{}` on line {} to `jtype: {}` before it reads the YAML, and so does Zeroflow; the line is read as rewritten)",
                    r.name, r.line, r.name
                ));
            }
            d.error_at(e.line, escaped.col(e.line, e.col), "", message);
            return None;
        }
    };
    let Some(mut root) = parsed.root else {
        d.error_at(
            1,
            1,
            "",
            "the document is empty; expected a mapping with `jtype: Flow` or `jtype: Deployment`",
        );
        return None;
    };
    escaped.restore(&mut root);
    for w in parsed.warnings {
        let col = escaped.col(w.line, w.col);
        let field = path_of(&root, w.line, col).unwrap_or_default();
        let mut message = w.message;
        if let Some(r) = escaped
            .rewrites
            .iter()
            .find(|r| r.line == w.line && r.col == col)
        {
            message.push_str(&format!(" (`!{0}` is read as `jtype: {0}`)", r.name));
        }
        d.warn_at(w.line, col, &field, message);
    }
    for r in escaped
        .rewrites
        .iter()
        .filter(|r| r.in_word && !r.in_comment)
    {
        d.warn_at(
            r.line,
            r.col,
            "",
            format!(
                "Jina rewrites `!{0}` to `jtype: {0}` wherever it is in the file, inside values too, and so does Zeroflow: this value now holds `jtype: {0}`; put a space after the `!` to keep it as written",
                r.name
            ),
        );
    }
    if !root.is_map() {
        d.error(
            &root,
            "",
            format!(
                "got {}, allowed: a mapping with `jtype: Flow` or `jtype: Deployment`",
                diag::describe(&root)
            ),
        );
        return None;
    }
    if named {
        vars::warn_context(&root, "", source, d);
    }
    vars::expand(&mut root, "", source, d);
    Some(root)
}

/// The dotted path of the mapping key written at `line`:`col`, if there is one.
fn path_of(root: &yaml::Node, line: usize, col: usize) -> Option<String> {
    fn walk(n: &yaml::Node, path: &str, line: usize, col: usize) -> Option<String> {
        match &n.v {
            yaml::Value::Map(entries) => entries.iter().find_map(|e| {
                let p = diag::join_key(path, &e.key);
                if e.kline == line && e.kcol == col {
                    Some(p)
                } else {
                    walk(&e.value, &p, line, col)
                }
            }),
            yaml::Value::Seq(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, it)| walk(it, &diag::join_index(path, i), line, col)),
            _ => None,
        }
    }
    walk(root, "", line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str =
        "jtype: Flow\nexecutors:\n  - name: a\n    jcloud:\n      autoscale:\n        max: 8\n";

    #[test]
    fn the_replica_cap_is_a_setting() {
        let err = load(
            SPEC,
            &Source {
                name: "f.yml".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("an integer from 1 to 5"), "{err}");
        let src = Source {
            max_replicas_cap: Some(10),
            ..Default::default()
        };
        let flow = load(SPEC, &src).unwrap().flow;
        assert_eq!(flow.executors[0].jcloud.autoscale.max, 8);
    }

    #[test]
    fn errors_name_source_line_column_and_field() {
        let err = load(
            "jtype: Flow\nexecutors:\n  - name: a\n    replicas: 0\n",
            &Source {
                name: "f.yml".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yml: line 4, column 15: executors[0].replicas: got 0, allowed: an integer >= 1"
        );
    }
}
