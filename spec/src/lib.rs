//! Jina Flow and Deployment YAML with JCloud's `jcloud:` extensions: parse, substitute variables,
//! apply defaults, validate and normalize into [`model::Flow`]. Pure: no IO beyond what the caller
//! passes in, no async, no knowledge of processes, sockets or Kubernetes.

pub mod model;
pub mod when;

mod diag;
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
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
}

/// Loads a Flow YAML, or a Deployment YAML (normalized into a one-Executor Flow).
///
/// Everything Jina 3.34 loads loads here with the same graph; keys Jina does not know are
/// warnings, as are values JCloud adjusts; values Jina or JCloud would refuse are errors, all of
/// them reported at once.
pub fn load(yaml: &str, source: &Source) -> Result<Loaded, SpecError> {
    let fail = |errors: Vec<Diagnostic>| SpecError {
        source_name: source.name.clone(),
        errors,
    };
    let parsed = yaml::parse(yaml).map_err(|e| {
        fail(vec![Diagnostic {
            line: e.line,
            column: e.col,
            field: String::new(),
            message: format!("YAML syntax error: {}", e.message),
        }])
    })?;
    let mut d = diag::Diags::default();
    let Some(mut root) = parsed.root else {
        return Err(fail(vec![Diagnostic {
            line: 1,
            column: 1,
            field: String::new(),
            message: "the document is empty; expected a mapping with `jtype: Flow` or `jtype: Deployment`".into(),
        }]));
    };
    for w in parsed.warnings {
        let field = path_of(&root, w.line, w.col).unwrap_or_default();
        d.warn_at(w.line, w.col, &field, w.message);
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
        return Err(fail(d.errors));
    }
    vars::expand(&mut root, "", source, &mut d);
    let ctx = flow::Ctx {
        cap: source.max_replicas_cap.unwrap_or(DEFAULT_MAX_REPLICAS_CAP),
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
    d.errors.sort_by_key(|e| (e.line, e.column));
    d.warnings.sort_by_key(|e| (e.line, e.column));
    match flow {
        Some(flow) if d.errors.is_empty() => Ok(Loaded {
            flow,
            warnings: d.warnings,
        }),
        _ => Err(fail(d.errors)),
    }
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
