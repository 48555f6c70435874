//! Names inside the artifact store, what a push must contain, and the local cache Executors run
//! from.
//!
//! Layout in the store (each archive next to a small JSON record of what was validated):
//! - `executors/<user>/<name>/<tag>.tar.gz` and `.json`: a pushed Executor folder (`config.yml` at
//!   its root; `executor.py` and `requirements.txt` are optional);
//! - `projects/<user>/<flow_id>.tar.gz` and `.json`: a deployed project folder as `jc new` lays it
//!   out (`flow.yml`, `.env`, one folder per Executor);
//! - `digests/sha256/<hex>/projects/<user>/<flow_id>.tar.gz`: an empty object saying which stored
//!   project archive had that digest when it was pushed, so that an archive can be served by
//!   content (to executor-shims on a cluster). Entries are hints: a reader checks the archive's
//!   digest, and drops entries whose archive changed or went away.
//!
//! A pushed Executor is private to the user who pushed it unless it was pushed public
//! ([`Visibility`], kept in its record): [`Registry::materialize_as`] gives another user the same
//! answer for a private Executor as for one that does not exist, so names do not leak.
//!
//! Materializing unpacks into `cache_dir/executors/<user>/<name>/<tag>/` or
//! `cache_dir/projects/<user>/<flow_id>/` once per content: the record's SHA-256 is kept beside the
//! folder, so a second call costs one small read of the record, and a re-pushed tag is unpacked
//! afresh rather than served stale.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::archive::{self, ArchiveError, Limits};
use crate::digest::Sha256Digest;
use crate::store::{ArtifactError, ArtifactStore};

pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what} {value:?} is not allowed: {rule}")]
    BadName {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("the pushed {what} was refused: {source}")]
    Archive {
        what: &'static str,
        #[source]
        source: ArchiveError,
    },
    #[error("the pushed {what} has no {file} at its root (it has: {found})")]
    MissingFile {
        what: &'static str,
        file: &'static str,
        found: String,
    },
    #[error("Executor {0} does not exist: push it first")]
    ExecutorNotFound(String),
    /// Another user's Executor that is private, or that does not exist: one answer for both.
    #[error("Executor {0} does not exist or is private to its owner")]
    ExecutorUnavailable(String),
    #[error("no project folder was deployed for Flow {flow_id} of user {user}")]
    ProjectNotFound { user: String, flow_id: String },
    #[error("no stored project archive has digest {0} (its Flow was updated or removed)")]
    DigestNotFound(Sha256Digest),
    #[error(transparent)]
    Store(#[from] ArtifactError),
    #[error("artifact record {key} is unreadable: {message}")]
    BadRecord { key: String, message: String },
    #[error("cache folder {path}: {message}")]
    Cache { path: PathBuf, message: String },
}

/// Who may use a pushed Executor besides its owner: nobody (the default, and what a record from
/// before visibilities reads as), or every user of the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    #[default]
    Private,
    Public,
}

/// What a push stored, as returned by [`Registry::push`] and [`Registry::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    pub user: String,
    pub name: String,
    pub tag: String,
    /// Set by each push of this tag.
    #[serde(default)]
    pub visibility: Visibility,
    /// The archive's key in the store.
    pub key: String,
    /// Bytes of the stored archive.
    pub size: u64,
    /// Hex SHA-256 of the stored archive.
    pub sha256: String,
    /// Files in the folder, relative, in archive order.
    pub files: Vec<String>,
    pub has_executor_py: bool,
    pub has_requirements: bool,
}

/// What [`Registry::push_project`] stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub user: String,
    pub flow_id: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// `flow.yml` (or `flow.yaml`), relative to the project root.
    pub flow_file: String,
    /// Folders holding a `config.yml`: the project's own Executors.
    pub executors: Vec<String>,
    pub files: Vec<String>,
}

/// A hub Executor named in a Flow's `uses:`. `user` is `None` for `jinahub://NAME` and
/// `jinaai+docker://NAME`: the Flow's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorRef {
    pub user: Option<String>,
    pub name: String,
    pub tag: String,
}

impl std::fmt::Display for ExecutorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(u) => write!(f, "{u}/{}:{}", self.name, self.tag),
            None => write!(f, "{}:{}", self.name, self.tag),
        }
    }
}

const NAME_RULE: &str = "1 to 64 letters, digits, '_' or '-', starting with a letter or digit";
const TAG_RULE: &str = "1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit";

fn name_ok(s: &str, max: usize, extra: &[char]) -> bool {
    let mut chars = s.chars();
    s.len() <= max
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-') || extra.contains(&c))
}

/// Executor names, users and Flow ids: `[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}`.
pub fn valid_name(s: &str) -> bool {
    name_ok(s, 64, &[])
}

/// Tags, as Docker allows them: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}`.
pub fn valid_tag(s: &str) -> bool {
    name_ok(s, 128, &['.'])
}

fn check_name(what: &'static str, value: &str) -> Result<(), RegistryError> {
    if valid_name(value) {
        Ok(())
    } else {
        Err(RegistryError::BadName {
            what,
            value: value.to_string(),
            rule: NAME_RULE,
        })
    }
}

fn check_tag(tag: Option<&str>) -> Result<String, RegistryError> {
    let tag = tag
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_TAG);
    if valid_tag(tag) {
        Ok(tag.to_string())
    } else {
        Err(RegistryError::BadName {
            what: "tag",
            value: tag.to_string(),
            rule: TAG_RULE,
        })
    }
}

/// Reads a hub reference from a Flow's `uses:`. Accepts what Jina's hubble accepts, plus a bare
/// name for the Flow owner's own Executors:
/// - `jinaai://`, `jinaai+docker://`, `jinaai+serverless://`, `jinaai+sandbox://` followed by
///   `USER/NAME[:TAG]` or `NAME[:TAG]`;
/// - `jinahub://`, `jinahub+docker://`, `jinahub+serverless://`, `jinahub+sandbox://` followed by
///   `NAME[:SECRET][/TAG]` (the secret of the old hub is ignored).
///
/// `None` for anything else, including names or tags that break [`valid_name`] / [`valid_tag`].
pub fn parse_uses(s: &str) -> Option<ExecutorRef> {
    let (scheme, rest) = s.trim().split_once("://")?;
    let (user, name, tag) = match scheme {
        "jinaai" | "jinaai+docker" | "jinaai+serverless" | "jinaai+sandbox" => {
            // As hubble reads it: the URL's host is the user, its path `NAME[:TAG]`.
            let (user, path) = match rest.split_once('/') {
                Some((u, p)) => (Some(u), p.trim_matches('/')),
                None => (None, rest),
            };
            match path.split_once(':') {
                Some((n, t)) => (user, n, Some(t)),
                None => (user, path, None),
            }
        }
        "jinahub" | "jinahub+docker" | "jinahub+serverless" | "jinahub+sandbox" => {
            let (netloc, path) = rest.split_once('/').unwrap_or((rest, ""));
            let name = netloc.split(':').next().unwrap_or_default();
            let tag = path.trim_matches('/');
            (None, name, (!tag.is_empty()).then_some(tag))
        }
        _ => return None,
    };
    let tag = tag.unwrap_or(DEFAULT_TAG);
    if !valid_name(name) || !valid_tag(tag) || user.is_some_and(|u| !valid_name(u)) {
        return None;
    }
    Some(ExecutorRef {
        user: user.map(str::to_string),
        name: name.to_string(),
        tag: tag.to_string(),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What validation found in a pushed archive.
struct Checked {
    /// The archive to store: the upload itself, or repacked when its content sat in one folder.
    bytes: Bytes,
    files: Vec<String>,
}

/// The kind of folder a push carries: what it is called in errors and which file marks its root.
#[derive(Clone, Copy)]
struct Kind {
    what: &'static str,
    markers: &'static [&'static str],
}

const EXECUTOR: Kind = Kind {
    what: "Executor",
    markers: &["config.yml"],
};
const PROJECT: Kind = Kind {
    what: "project",
    markers: &["flow.yml", "flow.yaml"],
};

fn cache_err(path: &Path, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Unpacks into a scratch folder under `scratch_parent` and finds the folder's root: the top, or
/// the single folder at the top when the archive was made with `tar -czf x.tgz myexecutor/`
/// (then the content is repacked so that the stored archive always has the marker at its root).
fn check_archive(
    kind: Kind,
    bytes: Bytes,
    scratch_parent: &Path,
    limits: &Limits,
) -> Result<Checked, RegistryError> {
    fs::create_dir_all(scratch_parent).map_err(|e| cache_err(scratch_parent, e))?;
    let scratch = tempfile::Builder::new()
        .prefix(".push-")
        .tempdir_in(scratch_parent)
        .map_err(|e| cache_err(scratch_parent, e))?;
    let refused = |source| RegistryError::Archive {
        what: kind.what,
        source,
    };
    let files = archive::unpack(&bytes, scratch.path(), limits).map_err(refused)?;
    let has_marker = |dir: &Path| kind.markers.iter().any(|m| dir.join(m).is_file());
    if has_marker(scratch.path()) {
        let files = files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        return Ok(Checked { bytes, files });
    }
    let top: Vec<_> = fs::read_dir(scratch.path())
        .map_err(|e| cache_err(scratch.path(), e))?
        .flatten()
        .collect();
    if let [only] = top.as_slice()
        && only.file_type().is_ok_and(|t| t.is_dir())
        && has_marker(&only.path())
    {
        let inner = only.path();
        let bytes = archive::pack_dir(&inner).map_err(refused)?;
        let prefix = PathBuf::from(only.file_name());
        let files = files
            .iter()
            .filter_map(|f| f.strip_prefix(&prefix).ok())
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        return Ok(Checked { bytes, files });
    }
    let mut found: Vec<String> = top
        .iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let found = if found.is_empty() {
        "nothing".to_string()
    } else {
        found.join(", ")
    };
    Err(RegistryError::MissingFile {
        what: kind.what,
        file: kind.markers[0],
        found,
    })
}

/// Only the fields materialize needs; the rest of a record may grow freely.
#[derive(Deserialize)]
struct DigestOnly {
    sha256: String,
    #[serde(default)]
    visibility: Visibility,
}

/// Pushes and pulls Executor and project folders through an [`ArtifactStore`], with a local cache.
pub struct Registry {
    store: Arc<dyn ArtifactStore>,
    cache_dir: PathBuf,
    limits: Limits,
    /// One lock per cache folder, so that two first requests for one Executor unpack it once.
    locks: parking_lot::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Registry {
    pub fn new(store: Arc<dyn ArtifactStore>, cache_dir: impl Into<PathBuf>) -> Self {
        Registry {
            store,
            cache_dir: cache_dir.into(),
            limits: Limits::default(),
            locks: Default::default(),
        }
    }

    /// Size and file-count limits for pushed archives (default: [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn store(&self) -> &Arc<dyn ArtifactStore> {
        &self.store
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The store key of an Executor archive. Names must be valid (see [`valid_name`]).
    pub fn executor_key(user: &str, name: &str, tag: &str) -> String {
        format!("executors/{user}/{name}/{tag}.tar.gz")
    }

    /// The store key of a project archive.
    pub fn project_key(user: &str, flow_id: &str) -> String {
        format!("projects/{user}/{flow_id}.tar.gz")
    }

    /// Validates and stores an Executor folder packed as `.tar.gz`: it must unpack safely within
    /// the limits and have `config.yml` at its root (or inside its single top folder). `tag`
    /// defaults to `latest`; pushing an existing tag replaces it, visibility included.
    pub async fn push(
        &self,
        user: &str,
        name: &str,
        tag: Option<&str>,
        visibility: Visibility,
        archive: Bytes,
    ) -> Result<ExecutorRecord, RegistryError> {
        check_name("user", user)?;
        check_name("Executor name", name)?;
        let tag = check_tag(tag)?;
        let checked = self.check(EXECUTOR, archive).await?;
        let has = |f: &str| checked.files.iter().any(|x| x == f);
        let key = Self::executor_key(user, name, &tag);
        let record = ExecutorRecord {
            user: user.to_string(),
            name: name.to_string(),
            tag,
            visibility,
            size: checked.bytes.len() as u64,
            sha256: sha256_hex(&checked.bytes),
            has_executor_py: has("executor.py"),
            has_requirements: has("requirements.txt"),
            files: checked.files,
            key: key.clone(),
        };
        self.store_with_record(&key, checked.bytes, &record).await?;
        Ok(record)
    }

    /// The Executors `user` has pushed, sorted by name and tag.
    pub async fn list(&self, user: &str) -> Result<Vec<ExecutorRecord>, RegistryError> {
        check_name("user", user)?;
        let keys = self.store.list(&format!("executors/{user}/")).await?;
        let mut out = vec![];
        for key in keys.iter().filter(|k| k.ends_with(".json")) {
            match self.store.get(key).await {
                Ok(bytes) => out.push(parse_record::<ExecutorRecord>(key, &bytes)?),
                // Deleted between list and get: it is gone, not an error.
                Err(ArtifactError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by(|a, b| (&a.name, &a.tag).cmp(&(&b.name, &b.tag)));
        Ok(out)
    }

    /// A local folder holding `user`'s own Executor's files, unpacked on first use and reused
    /// while the stored archive is unchanged.
    pub async fn materialize(
        &self,
        user: &str,
        name: &str,
        tag: Option<&str>,
    ) -> Result<PathBuf, RegistryError> {
        self.materialize_as(user, user, name, tag).await
    }

    /// [`materialize`](Self::materialize) for `viewer`, who may use `owner`'s Executor if it is
    /// theirs or public. For another user, a private Executor and a missing one give the same
    /// [`RegistryError::ExecutorUnavailable`].
    pub async fn materialize_as(
        &self,
        viewer: &str,
        owner: &str,
        name: &str,
        tag: Option<&str>,
    ) -> Result<PathBuf, RegistryError> {
        check_name("user", owner)?;
        check_name("Executor name", name)?;
        let tag = check_tag(tag)?;
        let key = Self::executor_key(owner, name, &tag);
        let target = self
            .cache_dir
            .join("executors")
            .join(owner)
            .join(name)
            .join(&tag);
        let reference = format!("{owner}/{name}:{tag}");
        let own = viewer == owner;
        let not_found = || match own {
            true => RegistryError::ExecutorNotFound(reference.clone()),
            false => RegistryError::ExecutorUnavailable(reference.clone()),
        };
        let visible = |v: Visibility| own || v == Visibility::Public;
        self.materialize_key(&key, target, not_found, visible).await
    }

    /// Validates and stores a project folder (`flow.yml` at its root) for a deployed Flow.
    pub async fn push_project(
        &self,
        user: &str,
        flow_id: &str,
        archive: Bytes,
    ) -> Result<ProjectRecord, RegistryError> {
        check_name("user", user)?;
        check_name("Flow id", flow_id)?;
        let checked = self.check(PROJECT, archive).await?;
        let flow_file = PROJECT
            .markers
            .iter()
            .find(|m| checked.files.iter().any(|f| f == *m))
            .map(|m| m.to_string())
            .unwrap_or_default();
        let mut executors: Vec<String> = checked
            .files
            .iter()
            .filter_map(|f| f.strip_suffix("/config.yml"))
            .map(str::to_string)
            .collect();
        executors.sort();
        let key = Self::project_key(user, flow_id);
        let record = ProjectRecord {
            user: user.to_string(),
            flow_id: flow_id.to_string(),
            size: checked.bytes.len() as u64,
            sha256: sha256_hex(&checked.bytes),
            flow_file,
            executors,
            files: checked.files,
            key: key.clone(),
        };
        self.store_with_record(&key, checked.bytes, &record).await?;
        self.index_digest(&record.sha256, &key).await?;
        Ok(record)
    }

    /// The digest of Flow `flow_id`'s stored project archive; None when it has none. Also makes
    /// sure the archive can be found by that digest (archives pushed before the digest index
    /// existed get their entry here).
    pub async fn project_digest(
        &self,
        user: &str,
        flow_id: &str,
    ) -> Result<Option<Sha256Digest>, RegistryError> {
        check_name("user", user)?;
        check_name("Flow id", flow_id)?;
        let key = Self::project_key(user, flow_id);
        let rkey = record_key(&key);
        let record = match self.store.get(&rkey).await {
            Ok(r) => r,
            Err(ArtifactError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let hex = parse_record::<DigestOnly>(&rkey, &record)?.sha256;
        let digest = Sha256Digest::from_hex(&hex).map_err(|e| RegistryError::BadRecord {
            key: rkey.clone(),
            message: e.to_string(),
        })?;
        let entry = digest_index_key(&digest.hex(), &key);
        if matches!(
            self.store.get(&entry).await,
            Err(ArtifactError::NotFound(_))
        ) {
            self.index_digest(&digest.hex(), &key).await?;
        }
        Ok(Some(digest))
    }

    /// The stored project archive whose bytes have `digest`, checked against it.
    pub async fn project_by_digest(&self, digest: &Sha256Digest) -> Result<Bytes, RegistryError> {
        let prefix = format!("{DIGEST_INDEX}/{}/", digest.hex());
        for entry in self.store.list(&prefix).await? {
            let Some(key) = entry.strip_prefix(&prefix) else {
                continue;
            };
            match self.store.get(key).await {
                Ok(bytes) if Sha256Digest::of(&bytes) == *digest => return Ok(bytes),
                // Re-pushed with other content, or removed: the hint is stale.
                Ok(_) | Err(ArtifactError::NotFound(_)) => {
                    let _ = self.store.delete(&entry).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::DigestNotFound(*digest))
    }

    async fn index_digest(&self, hex: &str, key: &str) -> Result<(), RegistryError> {
        self.store
            .put(&digest_index_key(hex, key), Bytes::new())
            .await?;
        Ok(())
    }

    /// A local folder holding the Flow's project files, unpacked on first use.
    pub async fn materialize_project(
        &self,
        user: &str,
        flow_id: &str,
    ) -> Result<PathBuf, RegistryError> {
        check_name("user", user)?;
        check_name("Flow id", flow_id)?;
        let key = Self::project_key(user, flow_id);
        let target = self.cache_dir.join("projects").join(user).join(flow_id);
        let not_found = || RegistryError::ProjectNotFound {
            user: user.to_string(),
            flow_id: flow_id.to_string(),
        };
        self.materialize_key(&key, target, not_found, |_| true)
            .await
    }

    async fn check(&self, kind: Kind, archive: Bytes) -> Result<Checked, RegistryError> {
        let scratch = self.cache_dir.join("tmp");
        let limits = self.limits;
        // Unpacking is blocking file I/O, and may take seconds for a large archive.
        tokio::task::spawn_blocking(move || check_archive(kind, archive, &scratch, &limits))
            .await
            .map_err(|e| cache_err(&self.cache_dir, e))?
    }

    /// The archive first, then its record: materialize and list go by the record, so a reader
    /// never finds a record whose archive is missing.
    async fn store_with_record(
        &self,
        key: &str,
        bytes: Bytes,
        record: &impl Serialize,
    ) -> Result<(), RegistryError> {
        let json = serde_json::to_vec_pretty(record).map_err(|e| RegistryError::BadRecord {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        self.store.put(key, bytes).await?;
        self.store.put(&record_key(key), Bytes::from(json)).await?;
        Ok(())
    }

    /// Unpacks `key` into `target` if the record's visibility passes `visible` (else, as for a
    /// missing archive, `not_found()`).
    async fn materialize_key(
        &self,
        key: &str,
        target: PathBuf,
        not_found: impl Fn() -> RegistryError,
        visible: impl Fn(Visibility) -> bool,
    ) -> Result<PathBuf, RegistryError> {
        let lock = self.locks.lock().entry(target.clone()).or_default().clone();
        let _guard = lock.lock().await;
        let missing = |e| match e {
            ArtifactError::NotFound(_) => not_found(),
            e => RegistryError::Store(e),
        };
        let rkey = record_key(key);
        let record = self.store.get(&rkey).await.map_err(missing)?;
        let record = parse_record::<DigestOnly>(&rkey, &record)?;
        if !visible(record.visibility) {
            return Err(not_found());
        }
        let want = record.sha256;
        let marker = digest_marker(&target);
        if target.is_dir() && fs::read_to_string(&marker).is_ok_and(|have| have.trim() == want) {
            return Ok(target);
        }
        let bytes = self.store.get(key).await.map_err(missing)?;
        let limits = self.limits;
        let dest = target.clone();
        tokio::task::spawn_blocking(move || replace_dir(&bytes, &dest, &limits))
            .await
            .map_err(|e| cache_err(&target, e))??;
        Ok(target)
    }
}

/// Where the digest index lives in the store.
const DIGEST_INDEX: &str = "digests/sha256";

fn digest_index_key(hex: &str, archive_key: &str) -> String {
    format!("{DIGEST_INDEX}/{hex}/{archive_key}")
}

fn record_key(archive_key: &str) -> String {
    let stem = archive_key.strip_suffix(".tar.gz").unwrap_or(archive_key);
    format!("{stem}.json")
}

fn parse_record<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::BadRecord {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// `<target>.sha256`, beside the folder rather than in it, so the Executor's files are exactly the
/// archive's.
fn digest_marker(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Unpacks into a fresh sibling folder, then swaps it in, so that `target` is always either the
/// old complete tree or the new complete tree, never half of one. The marker records the digest of
/// the bytes actually unpacked (not the record's), so a push racing this call leaves a mismatch
/// that the next call repairs.
fn replace_dir(bytes: &[u8], target: &Path, limits: &Limits) -> Result<(), RegistryError> {
    let parent = target
        .parent()
        .ok_or_else(|| cache_err(target, "has no parent folder"))?;
    fs::create_dir_all(parent).map_err(|e| cache_err(parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(parent)
        .map_err(|e| cache_err(parent, e))?;
    let tree = staging.path().join("tree");
    // The archive passed validation when it was pushed, but the store is not trusted: a bucket
    // shared with others, or edited by hand, gets the same checks.
    archive::unpack(bytes, &tree, limits).map_err(|source| RegistryError::Archive {
        what: "stored archive",
        source,
    })?;
    let marker = digest_marker(target);
    // Marker first: if anything below fails, the next call sees no marker and starts over.
    match fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cache_err(&marker, e)),
    }
    if target.exists() {
        // The old tree moves into the staging folder, which is deleted when it drops.
        fs::rename(target, staging.path().join("old")).map_err(|e| cache_err(target, e))?;
    }
    fs::rename(&tree, target).map_err(|e| cache_err(target, e))?;
    fs::write(&marker, sha256_hex(bytes)).map_err(|e| cache_err(&marker, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        for ok in ["a", "Echo", "my-exec_2", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "a.b",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            "..",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_tag("v1.2.3") && valid_tag("latest") && valid_tag(&"t".repeat(128)));
        assert!(!valid_tag(".hidden") && !valid_tag("a:b") && !valid_tag(&"t".repeat(129)));
        assert_eq!(check_tag(None).unwrap(), "latest");
        assert_eq!(check_tag(Some(" ")).unwrap(), "latest");
        let err = check_tag(Some("../x")).unwrap_err().to_string();
        assert!(err.contains("tag") && err.contains("../x"), "{err}");
    }

    fn r(user: Option<&str>, name: &str, tag: &str) -> Option<ExecutorRef> {
        Some(ExecutorRef {
            user: user.map(str::to_string),
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    #[test]
    fn uses_references() {
        let cases = [
            ("jinaai+docker://Echo", r(None, "Echo", "latest")),
            (
                "jinaai+docker://alice/Echo",
                r(Some("alice"), "Echo", "latest"),
            ),
            (
                "jinaai+docker://alice/Echo:v2",
                r(Some("alice"), "Echo", "v2"),
            ),
            (
                "jinaai+serverless://alice/Echo:v2",
                r(Some("alice"), "Echo", "v2"),
            ),
            ("jinaai://alice/Echo", r(Some("alice"), "Echo", "latest")),
            (
                "jinaai+sandbox://alice/Echo:1.0",
                r(Some("alice"), "Echo", "1.0"),
            ),
            ("  jinaai+docker://Echo:v1  ", r(None, "Echo", "v1")),
            ("jinahub://Echo", r(None, "Echo", "latest")),
            ("jinahub+docker://Echo/v0.1", r(None, "Echo", "v0.1")),
            ("jinahub+docker://Echo:s3cret/v0.1", r(None, "Echo", "v0.1")),
            ("jinahub+serverless://Echo", r(None, "Echo", "latest")),
            ("docker://alpine", None),
            ("Echo", None),
            ("config.yml", None),
            ("jinaai+docker://", None),
            ("jinaai+docker://alice/", None),
            (
                "jinaai+docker://alice/Echo/",
                r(Some("alice"), "Echo", "latest"),
            ),
            ("jinaai+docker://../x", None),
            ("jinaai+docker://alice/Echo:a:b", None),
            ("jinaai+docker://a/b/c", None),
            ("jinahub://", None),
            ("http://alice/Echo", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_uses(s), want, "{s}");
        }
        assert_eq!(
            parse_uses("jinaai+docker://alice/Echo:v2")
                .unwrap()
                .to_string(),
            "alice/Echo:v2"
        );
    }

    #[test]
    fn record_keys() {
        assert_eq!(
            record_key(&Registry::executor_key("u", "n", "v1.0")),
            "executors/u/n/v1.0.json"
        );
        assert_eq!(
            record_key(&Registry::project_key("u", "f")),
            "projects/u/f.json"
        );
    }
}
