//! Turns Hub references in a Flow (`jinaai+docker://NAME`, `jinaai+docker://USER/NAME[:TAG]`,
//! `jinaai+serverless://…`, `jinahub+docker://ID/TAG`…) into a local folder holding the pushed
//! Executor (its `config.yml` and Python modules), so the local runtime can run it as a
//! `jina executor`. Container images cannot run on this machine; pushed source folders can.
//! A user reaches their own pushed Executors and other users' public ones; another user's
//! private Executor resolves exactly as one that does not exist.

use std::path::{Path, PathBuf};
use zeroflow_spec::{Flow, Uses};

/// Finds the folder of a pushed Executor for `user`. `Ok(None)`: no such Executor that `user`
/// may use (missing, or another user's private one).
#[async_trait::async_trait]
pub trait ExecutorResolver: Send + Sync {
    async fn resolve(&self, user: &str, uses: &Uses) -> Result<Option<PathBuf>, String>;
}

/// Why a Flow's Executors do not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Nothing `user` may use has that name. The same answer whether it was never pushed or is
    /// another user's private Executor, so that private names do not leak.
    #[error(
        "Executor {executor}: {uses} does not exist or is private to its owner; push it with \
         `jc executor push` (POST /executors), or ask its owner to push it with --public"
    )]
    Unavailable { executor: String, uses: String },
    #[error(
        "Executor {executor}: docker://{image} is a container image, which this server cannot run; \
         push the Executor's folder instead and use jinaai+docker://NAME"
    )]
    ContainerImage { executor: String, image: String },
    /// The registry failed (storage, a damaged archive): not the user's reference.
    #[error("Executor {executor}: {message}")]
    Registry { executor: String, message: String },
}

impl From<ResolveError> for super::control::SpecRejected {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Unavailable { .. } => Self::NoSuchExecutor(e.to_string()),
            _ => Self::Unrunnable(e.to_string()),
        }
    }
}

/// For callers that report a Flow's start failure as text.
impl From<ResolveError> for String {
    fn from(e: ResolveError) -> String {
        e.to_string()
    }
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

/// Pushed Executors as plain folders: `ROOT/<user>/<name>/<tag>/config.yml`, placed by hand.
/// They have no record to say they are public, so each is its owner's only.
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
            if owner != user {
                continue;
            }
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
                .materialize_as(user, owner, &r.name, r.tag.as_deref())
                .await
            {
                Ok(dir) => return Ok(Some(dir)),
                // Not pushed under this reading, private to another user, or a name that does
                // not fit the registry's rules: try the next reading, then the plain folders.
                Err(RegistryError::ExecutorNotFound(_))
                | Err(RegistryError::ExecutorUnavailable(_))
                | Err(RegistryError::BadName { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.fallback.resolve(user, uses).await
    }
}

/// Rewrites every Hub-referenced Executor of `flow` to run its pushed folder's `config.yml`.
/// An Executor that names a container image (`docker://`), or a pushed Executor that `user`
/// may not use or nobody pushed, is an error naming it.
pub async fn resolve_flow(
    flow: &mut Flow,
    user: &str,
    resolver: &dyn ExecutorResolver,
) -> Result<(), ResolveError> {
    for e in &mut flow.executors {
        if e.command.is_some() || e.external.is_some() {
            continue;
        }
        match &e.uses {
            Uses::Hub { scheme, reference } => {
                match resolver.resolve(user, &e.uses).await.map_err(|message| {
                    ResolveError::Registry {
                        executor: e.name.clone(),
                        message,
                    }
                })? {
                    Some(dir) => {
                        e.uses = Uses::Config {
                            path: dir.join("config.yml").to_string_lossy().into_owned(),
                        };
                        // The config's own py_modules are relative to its folder; the Flow's are
                        // resolved here for the same reason.
                        e.py_modules = e.py_modules.iter().map(|m| absolute(&dir, m)).collect();
                    }
                    None => {
                        return Err(ResolveError::Unavailable {
                            executor: e.name.clone(),
                            uses: format!("{scheme}://{reference}"),
                        });
                    }
                }
            }
            Uses::Docker { image } => {
                return Err(ResolveError::ContainerImage {
                    executor: e.name.clone(),
                    image: image.clone(),
                });
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
        // A folder placed by hand is its owner's only.
        assert_eq!(r.resolve("bob", &hub("alice/echo")).await.unwrap(), None);
        assert_eq!(
            r.resolve("alice", &hub("alice/echo")).await.unwrap(),
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

    #[tokio::test]
    async fn another_users_private_executor_resolves_as_a_missing_one() {
        use zeroflow_artifacts::registry::{Registry, Visibility};
        let root = std::env::temp_dir().join(format!(
            "zf-resolver-reg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let src = root.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("config.yml"), "jtype: X\n").unwrap();
        let store = std::sync::Arc::new(zeroflow_artifacts::DirStore::new(root.join("store")));
        let registry = std::sync::Arc::new(Registry::new(store, root.join("cache")));
        let pack = || zeroflow_artifacts::archive::pack_dir(&src).unwrap();
        registry
            .push("alice", "mine", None, Visibility::Private, pack())
            .await
            .unwrap();
        registry
            .push("alice", "shared", Some("v1"), Visibility::Public, pack())
            .await
            .unwrap();
        let r = RegistryResolver {
            registry,
            fallback: DirResolver::new(root.join("executors")),
        };
        let flow = |uses: &str| {
            super::super::control::load_spec(&format!(
                "jtype: Flow\nexecutors:\n  - name: e\n    uses: {uses}\n"
            ))
            .unwrap()
            .flow
        };
        let resolve = |user: &'static str, uses: &'static str| {
            let r = &r;
            async move {
                let mut f = flow(uses);
                resolve_flow(&mut f, user, r).await.map(|()| f)
            }
        };
        // The owner, by full and short name; anyone, the public one.
        for (user, uses) in [
            ("alice", "jinaai+docker://alice/mine"),
            ("alice", "jinaai+serverless://mine"),
            ("bob", "jinaai+docker://alice/shared:v1"),
            ("bob", "jinaai+serverless://alice/shared:v1"),
        ] {
            let f = resolve(user, uses)
                .await
                .unwrap_or_else(|e| panic!("{user} {uses}: {e}"));
            assert!(
                matches!(&f.executors[0].uses, Uses::Config { path } if path.ends_with("config.yml")),
                "{user} {uses}"
            );
        }
        // Bob, alice's private one and one nobody pushed: the same error but for the name.
        let private = resolve("bob", "jinaai+docker://alice/mine")
            .await
            .unwrap_err();
        let missing = resolve("bob", "jinaai+docker://alice/nothing")
            .await
            .unwrap_err();
        assert!(
            matches!(private, ResolveError::Unavailable { .. }),
            "{private}"
        );
        assert_eq!(
            missing.to_string().replace("nothing", "mine"),
            private.to_string()
        );
        let text = private.to_string();
        assert!(
            text.contains("Executor e: jinaai+docker://alice/mine")
                && text.contains("does not exist or is private"),
            "{text}"
        );
        assert!(matches!(
            super::super::control::SpecRejected::from(private),
            super::super::control::SpecRejected::NoSuchExecutor(_)
        ));
        // Bob's short name is bob's own, never alice's.
        assert!(resolve("bob", "jinaai+docker://mine").await.is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
