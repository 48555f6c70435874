//! Where uploaded things live: pushed Executors and deployed project folders, as opaque blobs
//! under string keys. A local directory by default; any S3-compatible service when configured.
//! Archives are unpacked only through [`crate::archive`], which refuses paths that escape.

use bytes::Bytes;
use std::path::PathBuf;

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
}

/// A blob store. Keys look like `executors/<user>/<name>/<tag>.tar.gz`.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArtifactError>;
    async fn get(&self, key: &str) -> Result<Bytes, ArtifactError>;
    async fn delete(&self, key: &str) -> Result<(), ArtifactError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArtifactError>;
    /// For status output: `dir:/path` or `s3://bucket/prefix`.
    fn describe(&self) -> String;
}

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
        // Write then rename, so a crash never leaves a half-written artifact under the key.
        let tmp = path.with_extension("partial");
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| io(key, e))?;
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
                    if k.starts_with(prefix) && !k.ends_with(".partial") {
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
