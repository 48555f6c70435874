//! `GET /v1/artifacts/sha256:<hex>`: a stored project archive, by digest, for the executor-shims
//! of a Flow running on a cluster (they run a generic image and fetch their project at start).
//!
//! A shim has no user token. It presents an artifact token instead: the HMAC-SHA256 of the digest
//! under a secret of this server (`DATA_DIR/artifact-secret`, mode 0600, made at first start; or
//! `ZEROFLOW_ARTIFACT_SECRET` when several control planes must agree). The control plane hands
//! each Flow the token of its own archive ([`Controller::artifact_token`]), so a Flow's pods can
//! read that archive and no other: a token names one digest, and nobody without the secret can
//! make one. Tokens are never logged.
//!
//! This module serves archives; it does not store them (the registry does) nor decide which
//! Flow runs where.

use super::control::Controller;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use std::path::Path;
use std::sync::OnceLock;
use zeroflow_artifacts::digest::Sha256Digest;
use zeroflow_artifacts::registry::RegistryError;

/// The route's path prefix; the digest follows.
pub const PREFIX: &str = "/v1/artifacts/";
/// The secret's file in the data folder.
pub const SECRET_FILE: &str = "artifact-secret";
/// A secret to use instead of the file (hex or any text of at least 32 bytes).
pub const SECRET_ENV: &str = "ZEROFLOW_ARTIFACT_SECRET";
/// The URL the shims reach this server at (e.g. `http://zeroflow.zeroflow-system.svc:8400`);
/// default: the API's own listen address.
pub const URL_ENV: &str = "ZEROFLOW_ARTIFACT_URL";
/// What the MAC covers besides the digest, so that a token can never be mistaken for another
/// use of the same secret.
const DOMAIN: &[u8] = b"zeroflow artifact token v1\n";

type HmacSha256 = hmac::Hmac<sha2_011::Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the artifact secret {}: {message}", path.display())]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{SECRET_ENV} is too short: use at least 32 bytes (e.g. `openssl rand -hex 32`)")]
    TooShort,
}

/// The secret artifact tokens are made with, and the URL shims fetch archives from.
pub struct ArtifactAccess {
    secret: Vec<u8>,
    base_url: OnceLock<String>,
}

impl std::fmt::Debug for ArtifactAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactAccess")
            .field("base_url", &self.base_url.get())
            .finish_non_exhaustive()
    }
}

impl ArtifactAccess {
    /// The secret from `ZEROFLOW_ARTIFACT_SECRET`, else from `data_dir/artifact-secret` (made,
    /// mode 0600, when missing); the base URL from `ZEROFLOW_ARTIFACT_URL` when set.
    pub fn open(data_dir: &Path) -> Result<ArtifactAccess, SecretError> {
        let secret = match std::env::var(SECRET_ENV) {
            Ok(s) if !s.trim().is_empty() => {
                let s = s.trim().as_bytes().to_vec();
                if s.len() < 32 {
                    return Err(SecretError::TooShort);
                }
                s
            }
            _ => secret_file(&data_dir.join(SECRET_FILE))?,
        };
        let access = ArtifactAccess {
            secret,
            base_url: OnceLock::new(),
        };
        if let Ok(url) = std::env::var(URL_ENV)
            && !url.trim().is_empty()
        {
            access.set_base_url(url.trim());
        }
        Ok(access)
    }

    /// A secret of this process only, for when the data folder cannot keep one: tokens then
    /// stop working when the server restarts.
    pub fn ephemeral() -> ArtifactAccess {
        let secret: [u8; 32] = rand::random();
        ArtifactAccess {
            secret: secret.to_vec(),
            base_url: OnceLock::new(),
        }
    }

    /// Where shims reach this server (`http://HOST:PORT`). The first call wins, so
    /// `ZEROFLOW_ARTIFACT_URL` beats the listen address the server sets as it starts.
    pub fn set_base_url(&self, url: &str) {
        let _ = self.base_url.set(url.trim_end_matches('/').to_string());
    }

    pub fn base_url(&self) -> Option<&str> {
        self.base_url.get().map(String::as_str)
    }

    fn mac(&self, digest: &Sha256Digest) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(DOMAIN);
        mac.update(digest.to_string().as_bytes());
        mac
    }

    /// The token that lets its holder read the archive with `digest` (64 hex digits).
    pub fn token(&self, digest: &Sha256Digest) -> String {
        self.mac(digest)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `token` is the token of `digest` (in constant time).
    pub fn verify(&self, digest: &Sha256Digest, token: &str) -> bool {
        match decode_hex(token.trim()) {
            Some(bytes) => self.mac(digest).verify_slice(&bytes).is_ok(),
            None => false,
        }
    }

    /// `BASE/v1/artifacts/sha256:HEX`.
    pub fn url(&self, digest: &Sha256Digest) -> String {
        format!(
            "{}{PREFIX}{digest}",
            self.base_url().unwrap_or("http://127.0.0.1:8400")
        )
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Reads the secret, or makes it (32 random bytes as hex) readable by this user only. A secret
/// that others can read is tightened, not trusted blindly: it is logged.
fn secret_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| SecretError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            let bytes: [u8; 32] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            f.write_all(hex.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(err)?;
            Ok(hex.into_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(path).map_err(err)?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the artifact secret was readable by others; setting it to 0600");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
            }
            let text = std::fs::read_to_string(path).map_err(err)?;
            let text = text.trim();
            if text.len() < 32 {
                return Err(SecretError::File {
                    path: path.to_path_buf(),
                    message: "it is shorter than 32 characters: remove it and restart to make \
                              a new one (running Flows then get new tokens when redeployed)"
                        .into(),
                });
            }
            Ok(text.as_bytes().to_vec())
        }
        Err(e) => Err(err(e)),
    }
}

impl Controller {
    /// The token a Flow's shims send (`Authorization: Bearer`, env `ZEROFLOW_ARTIFACT_TOKEN`)
    /// to fetch the project archive with `digest`, and only that one.
    pub fn artifact_token(&self, digest: &Sha256Digest) -> String {
        self.artifact_access.token(digest)
    }

    /// Where a shim fetches the project archive with `digest` (`--project-url`).
    pub fn artifact_url(&self, digest: &Sha256Digest) -> String {
        self.artifact_access.url(digest)
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

/// `Bearer <token>` (or the bare token) of the Authorization header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let h = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let t = match (h.get(..6), h.get(6..)) {
        (Some(p), Some(rest))
            if p.eq_ignore_ascii_case("bearer")
                && (rest.is_empty() || rest.starts_with(char::is_whitespace)) =>
        {
            rest.trim()
        }
        _ => h,
    };
    (!t.is_empty()).then_some(t)
}

/// Answers `GET /v1/artifacts/{digest}`.
pub async fn serve(c: &Controller, digest: &str, headers: &HeaderMap) -> Response {
    let digest: Sha256Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(token) = bearer(headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <artifact token>`: the control plane gives each \
             Flow's pods the token of their project archive (env ZEROFLOW_ARTIFACT_TOKEN)",
        );
    };
    // The same answer for a wrong token and an unknown digest would leak nothing either, but a
    // wrong token is checked first so that existence is never revealed without one.
    if !c.artifact_access.verify(&digest, token) {
        return error(
            StatusCode::UNAUTHORIZED,
            format!("the artifact token is not valid for {digest}"),
        );
    }
    let Some(registry) = &c.registry else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this server has no artifact store",
        );
    };
    match registry.project_by_digest(&digest).await {
        Ok(bytes) => {
            tracing::debug!(%digest, bytes = bytes.len(), "serving a project archive");
            let mut resp = bytes.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gzip"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
                h.insert(header::ETAG, v);
            }
            // Content-addressed: the bytes under this name never change.
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=31536000, immutable"),
            );
            resp
        }
        Err(e @ RegistryError::DigestNotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => {
            tracing::error!(%digest, error = %e, "cannot read a project archive");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the project archive {digest}: {e}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_one_digest_and_need_the_secret() {
        let dir = tempfile_dir("tokens");
        let a = ArtifactAccess::open(&dir).unwrap();
        let d1 = Sha256Digest::of(b"one");
        let d2 = Sha256Digest::of(b"two");
        let t1 = a.token(&d1);
        assert_eq!(t1.len(), 64);
        assert!(a.verify(&d1, &t1));
        assert!(a.verify(&d1, &t1.to_uppercase()));
        assert!(!a.verify(&d2, &t1), "a token opens one digest only");
        assert!(!a.verify(&d1, &t1[..62]));
        assert!(!a.verify(
            &d1,
            "not hex at all, but sixty-four characters long........!!!!"
        ));
        assert!(!a.verify(&d1, ""));
        // The same data folder gives the same tokens (restarts keep running pods working)...
        let again = ArtifactAccess::open(&dir).unwrap();
        assert_eq!(again.token(&d1), t1);
        // ... another secret gives others.
        assert!(!ArtifactAccess::ephemeral().verify(&d1, &t1));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_loose_secret_file_is_tightened_and_a_short_one_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir("loose");
        let path = dir.join(SECRET_FILE);
        std::fs::write(&path, "x".repeat(40)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        ArtifactAccess::open(&dir).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "short").unwrap();
        let e = ArtifactAccess::open(&dir).unwrap_err().to_string();
        assert!(
            e.contains("shorter than 32") && e.contains(SECRET_FILE),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn urls_and_bearer_tokens() {
        let a = ArtifactAccess::ephemeral();
        let d = Sha256Digest::of(b"x");
        a.set_base_url("http://cp.example:8400/");
        a.set_base_url("http://ignored");
        assert_eq!(
            a.url(&d),
            format!("http://cp.example:8400/v1/artifacts/{d}")
        );
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "zf-artifact-{name}-{}-{}",
            std::process::id(),
            super::super::names::new_id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
