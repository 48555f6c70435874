//! Turns Hub references in a Flow (`jinaai+docker://NAME`, `jinaai+docker://USER/NAME[:TAG]`,
//! `jinaai+serverless://…`, `jinahub+docker://ID/TAG`…) into a local folder holding the pushed
//! Executor (its `config.yml` and Python modules), so the local runtime can run it as a
//! `jina executor`. Container images cannot run on this machine; pushed source folders can.

use std::path::{Path, PathBuf};
use zeroflow_spec::{Flow, Uses};

/// Finds the folder of a pushed Executor for `user`. `Ok(None)`: no such Executor.
#[async_trait::async_trait]
pub trait ExecutorResolver: Send + Sync {
    async fn resolve(&self, user: &str, uses: &Uses) -> Result<Option<PathBuf>, String>;
}

/// A Hub reference split into its parts: `[owner/]name[:tag]`, or the `ID/TAG` form the public
/// client writes for Executors it pushed (`jinahub+docker://<id>/latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub owner: Option<String>,
    pub name: String,
    pub tag: Option<String>,
}

/// Candidate readings of a reference, most likely first (`a/b` is `owner/name` or `name/tag`).
pub fn parse_reference(reference: &str) -> Vec<HubRef> {
    let (path, tag) = match reference.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t.to_string())),
        _ => (reference, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        [name] => vec![HubRef {
            owner: None,
            name: name.to_string(),
            tag,
        }],
        [a, b] => {
            let mut v = vec![HubRef {
                owner: Some(a.to_string()),
                name: b.to_string(),
                tag: tag.clone(),
            }];
            if tag.is_none() {
                v.push(HubRef {
                    owner: None,
                    name: a.to_string(),
                    tag: Some(b.to_string()),
                });
            }
            v
        }
        _ => vec![],
    }
}

/// A name or tag that is safe as one path segment.
fn safe(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Pushed Executors as plain folders: `ROOT/<user>/<name>/<tag>/config.yml`.
pub struct DirResolver {
    pub root: PathBuf,
}

impl DirResolver {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirResolver { root: root.into() }
    }

    /// The folder an Executor is (or would be) kept in; None if a part is not a safe name.
    pub fn folder(&self, user: &str, name: &str, tag: &str) -> Option<PathBuf> {
        (safe(user) && safe(name) && safe(tag)).then(|| self.root.join(user).join(name).join(tag))
    }
}

#[async_trait::async_trait]
impl ExecutorResolver for DirResolver {
    async fn resolve(&self, user: &str, uses: &Uses) -> Result<Option<PathBuf>, String> {
        let Uses::Hub { reference, .. } = uses else {
            return Ok(None);
        };
        for r in parse_reference(reference) {
            let owner = r.owner.as_deref().unwrap_or(user);
            let tag = r.tag.as_deref().unwrap_or("latest");
            if let Some(dir) = self.folder(owner, &r.name, tag)
                && dir.join("config.yml").is_file()
            {
                return Ok(Some(dir));
            }
        }
        Ok(None)
    }
}

/// Pushed Executors from the artifact registry (`POST /executors`), unpacked into its cache on
/// first use; then, for folders placed by hand, a [`DirResolver`].
pub struct RegistryResolver {
    pub registry: std::sync::Arc<zeroflow_artifacts::registry::Registry>,
    pub fallback: DirResolver,
}

#[async_trait::async_trait]
impl ExecutorResolver for RegistryResolver {
    async fn resolve(&self, user: &str, uses: &Uses) -> Result<Option<PathBuf>, String> {
        use zeroflow_artifacts::registry::RegistryError;
        let Uses::Hub { reference, .. } = uses else {
            return Ok(None);
        };
        for r in parse_reference(reference) {
            let owner = r.owner.as_deref().unwrap_or(user);
            if !(safe(owner) && safe(&r.name) && r.tag.as_deref().is_none_or(safe)) {
                continue;
            }
            match self
                .registry
                .materialize(owner, &r.name, r.tag.as_deref())
                .await
            {
                Ok(dir) => return Ok(Some(dir)),
                // Not pushed under this reading (or the name does not fit the registry's
                // rules): try the next reading, then the plain folders.
                Err(RegistryError::ExecutorNotFound(_)) | Err(RegistryError::BadName { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.fallback.resolve(user, uses).await
    }
}

/// Rewrites every Hub-referenced Executor of `flow` to run its pushed folder's `config.yml`.
/// An Executor that names a container image (`docker://`) or an Executor nobody pushed is an
/// error naming it.
pub async fn resolve_flow(
    flow: &mut Flow,
    user: &str,
    resolver: &dyn ExecutorResolver,
) -> Result<(), String> {
    for e in &mut flow.executors {
        if e.command.is_some() || e.external.is_some() {
            continue;
        }
        match &e.uses {
            Uses::Hub { scheme, reference } => match resolver.resolve(user, &e.uses).await? {
                Some(dir) => {
                    e.uses = Uses::Config {
                        path: dir.join("config.yml").to_string_lossy().into_owned(),
                    };
                    // The config's own py_modules are relative to its folder; the Flow's are
                    // resolved here for the same reason.
                    e.py_modules = e.py_modules.iter().map(|m| absolute(&dir, m)).collect();
                }
                None => {
                    return Err(format!(
                        "Executor {}: {scheme}://{reference} is not a pushed Executor of user {user}; \
                         push it first (POST /executors with its folder as a .tar.gz)",
                        e.name
                    ));
                }
            },
            Uses::Docker { image } => {
                return Err(format!(
                    "Executor {}: docker://{image} is a container image, which this server cannot run; \
                     push the Executor's folder instead and use jinaai+docker://NAME",
                    e.name
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn absolute(dir: &Path, p: &str) -> String {
    if Path::new(p).is_absolute() {
        p.to_string()
    } else {
        dir.join(p).to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        assert_eq!(
            parse_reference("echo"),
            vec![HubRef {
                owner: None,
                name: "echo".into(),
                tag: None
            }]
        );
        assert_eq!(
            parse_reference("alice/echo:v2"),
            vec![HubRef {
                owner: Some("alice".into()),
                name: "echo".into(),
                tag: Some("v2".into())
            }]
        );
        let two = parse_reference("abc123/latest");
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].name, "abc123");
        assert_eq!(two[1].tag.as_deref(), Some("latest"));
        assert!(parse_reference("a/b/c").is_empty());
    }

    #[tokio::test]
    async fn the_dir_resolver_finds_pushed_folders_and_refuses_escapes() {
        let root = std::env::temp_dir().join(format!("zf-resolver-{}", std::process::id()));
        let dir = root.join("alice/echo/latest");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.yml"), "jtype: X\n").unwrap();
        let r = DirResolver::new(&root);
        let hub = |reference: &str| Uses::Hub {
            scheme: "jinaai+docker".into(),
            reference: reference.into(),
        };
        assert_eq!(
            r.resolve("alice", &hub("echo")).await.unwrap(),
            Some(dir.clone())
        );
        assert_eq!(
            r.resolve("bob", &hub("alice/echo")).await.unwrap(),
            Some(dir.clone())
        );
        assert_eq!(
            r.resolve("alice", &hub("echo/latest")).await.unwrap(),
            Some(dir)
        );
        assert_eq!(r.resolve("bob", &hub("echo")).await.unwrap(), None);
        assert_eq!(
            r.resolve("alice", &hub("../alice/echo")).await.unwrap(),
            None
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
