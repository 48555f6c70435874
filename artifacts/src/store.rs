//! The blob store trait, its key rules, and the local directory store.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::s3::{S3Config, S3Store};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact {0} does not exist")]
    NotFound(String),
    #[error(
        "artifact key {0:?} is not allowed: use letters, digits, '-', '_', '.', '/' without '..'"
    )]
    BadKey(String),
    #[error("artifact store I/O failed for {key}: {message}")]
    Io { key: String, message: String },
    #[error("artifact store is misconfigured: {0}")]
    Config(String),
}

/// A blob store. Keys look like `executors/<user>/<name>/<tag>.tar.gz`.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArtifactError>;
    async fn get(&self, key: &str) -> Result<Bytes, ArtifactError>;
    /// Deleting a key that does not exist is [`ArtifactError::NotFound`] in every store.
    async fn delete(&self, key: &str) -> Result<(), ArtifactError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArtifactError>;
    /// For status output: `dir:/path` or `s3://bucket/prefix`.
    fn describe(&self) -> String;
}

/// Keys are relative, `/`-separated, and made of a small alphabet, so that the same key is a safe
/// relative path in [`DirStore`] and a plain object name in S3.
pub fn check_key(key: &str) -> Result<(), ArtifactError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ArtifactError::BadKey(key.to_string()))
    }
}

/// The store the environment asks for: [`S3Store`] when `ZEROFLOW_S3_BUCKET` is set (see
/// [`S3Config::from_env`] for the other variables), otherwise a [`DirStore`] under
/// `data_dir/artifacts`. A half-configured S3 store is an error rather than a silent fallback to
/// the local directory, where pushed Executors would vanish with the machine.
pub fn store_from_env(data_dir: &Path) -> Result<Arc<dyn ArtifactStore>, ArtifactError> {
    match S3Config::from_env()? {
        Some(config) => Ok(Arc::new(S3Store::new(config)?)),
        None => Ok(Arc::new(DirStore::new(data_dir.join("artifacts")))),
    }
}

/// Blobs as files under one directory (the embedded default).
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }
}

fn io(key: &str, e: std::io::Error) -> ArtifactError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ArtifactError::NotFound(key.to_string())
    } else {
        ArtifactError::Io {
            key: key.to_string(),
            message: e.to_string(),
        }
    }
}

const PARTIAL: &str = ".partial";

#[async_trait::async_trait]
impl ArtifactStore for DirStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArtifactError> {
        check_key(key)?;
        let path = self.root.join(key);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io(key, e))?;
        }
        // Write then rename, so a crash never leaves a half-written artifact under the key. The
        // temporary name is unique so that two concurrent puts of one key cannot interleave.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".{}-{n}{PARTIAL}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        if let Err(e) = tokio::fs::write(&tmp, &bytes).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(key, e));
        }
        tokio::fs::rename(&tmp, &path).await.map_err(|e| io(key, e))
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArtifactError> {
        check_key(key)?;
        tokio::fs::read(self.root.join(key))
            .await
            .map(Bytes::from)
            .map_err(|e| io(key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        check_key(key)?;
        tokio::fs::remove_file(self.root.join(key))
            .await
            .map_err(|e| io(key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArtifactError> {
        let mut out = vec![];
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
                continue;
            };
            while let Ok(Some(e)) = rd.next_entry().await {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    let k = rel.to_string_lossy().replace('\\', "/");
                    if k.starts_with(prefix) && !k.ends_with(PARTIAL) {
                        out.push(k);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in [
            "a",
            "executors/alice/echo/latest.tar.gz",
            "projects/u-1/flow_2.tar.gz",
            "a/.env",
        ] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/abs", "a/../b", "..", "./a", "a//b", "a/", "a b", "a\\b", "é", "a\0b", "a/./b",
        ] {
            let err = check_key(bad).unwrap_err();
            assert!(
                matches!(err, ArtifactError::BadKey(ref k) if k == bad),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn dir_store_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        assert_eq!(store.list("").await.unwrap(), Vec::<String>::new());
        store
            .put("a/b/c.bin", Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put("a/d.bin", Bytes::from_static(b"two"))
            .await
            .unwrap();
        store
            .put("z.bin", Bytes::from_static(b"three"))
            .await
            .unwrap();
        // Overwrite keeps one object and the newest bytes.
        store
            .put("a/d.bin", Bytes::from_static(b"2"))
            .await
            .unwrap();
        assert_eq!(store.get("a/d.bin").await.unwrap(), "2");
        assert_eq!(
            store.list("a/").await.unwrap(),
            vec!["a/b/c.bin".to_string(), "a/d.bin".to_string()]
        );
        assert_eq!(store.list("").await.unwrap().len(), 3);
        store.delete("a/d.bin").await.unwrap();
        assert!(matches!(
            store.get("a/d.bin").await,
            Err(ArtifactError::NotFound(_))
        ));
        assert!(matches!(
            store.delete("a/d.bin").await,
            Err(ArtifactError::NotFound(_))
        ));
        assert!(matches!(
            store.put("../escape", Bytes::new()).await,
            Err(ArtifactError::BadKey(_))
        ));
        assert!(store.describe().starts_with("dir:"));
    }
}
