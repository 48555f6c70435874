//! Blobs in any S3-compatible service (AWS S3, MinIO, s3rver, moto) through aws-sdk-s3.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use std::time::Duration;

use crate::store::{ArtifactError, ArtifactStore, check_key};

/// Where the S3 store is and how to sign in. Built by hand (no aws-config): the platform names its
/// own variables, and a static key pair is all that S3-compatible services take.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible service; `None` is AWS S3 itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Prepended to every key, without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

// By hand, so that the secret key never reaches a log line.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl S3Config {
    /// Region used when `AWS_REGION` is unset: S3-compatible servers accept any region, and
    /// us-east-1 is the one AWS S3 treats as the default.
    pub const DEFAULT_REGION: &'static str = "us-east-1";

    /// `Ok(None)` when `ZEROFLOW_S3_BUCKET` is unset or empty (use the directory store);
    /// otherwise reads `ZEROFLOW_S3_ENDPOINT`, `ZEROFLOW_S3_PREFIX`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (both keys required).
    pub fn from_env() -> Result<Option<S3Config>, ArtifactError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`S3Config::from_env`] over any variable lookup, so tests need not touch the process
    /// environment.
    pub fn from_lookup(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<S3Config>, ArtifactError> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(bucket) = get("ZEROFLOW_S3_BUCKET") else {
            return Ok(None);
        };
        let required = |name: &str| {
            get(name).ok_or_else(|| {
                ArtifactError::Config(format!(
                    "ZEROFLOW_S3_BUCKET={bucket} selects the S3 store, which needs {name}"
                ))
            })
        };
        let config = S3Config {
            endpoint: get("ZEROFLOW_S3_ENDPOINT"),
            prefix: get("ZEROFLOW_S3_PREFIX").unwrap_or_default(),
            region: get("AWS_REGION").unwrap_or_else(|| Self::DEFAULT_REGION.to_string()),
            access_key: required("AWS_ACCESS_KEY_ID")?,
            secret_key: required("AWS_SECRET_ACCESS_KEY")?,
            bucket,
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// Checks what aws-sdk-s3 would otherwise reject late or misread: the endpoint's scheme, a
    /// bucket name that could not be one path segment, a prefix that is not a valid key.
    pub fn validate(&self) -> Result<(), ArtifactError> {
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(ArtifactError::Config(format!(
                "ZEROFLOW_S3_ENDPOINT={e:?} must start with http:// or https://"
            )));
        }
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
        if !bucket_ok {
            return Err(ArtifactError::Config(format!(
                "ZEROFLOW_S3_BUCKET={:?} is not a bucket name: 3 to 63 lowercase letters, digits, '-' or '.'",
                self.bucket
            )));
        }
        let prefix = self.prefix.trim_matches('/');
        if !prefix.is_empty() && check_key(prefix).is_err() {
            return Err(ArtifactError::Config(format!(
                "ZEROFLOW_S3_PREFIX={:?} is not allowed: use letters, digits, '-', '_', '.', '/' without '..'",
                self.prefix
            )));
        }
        if self.region.is_empty() {
            return Err(ArtifactError::Config("AWS_REGION is empty".into()));
        }
        Ok(())
    }
}

/// Blobs as objects in one bucket, under an optional key prefix.
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
    endpoint: Option<String>,
}

impl S3Store {
    pub fn new(config: S3Config) -> Result<Self, ArtifactError> {
        config.validate()?;
        install_crypto_provider();
        let credentials = Credentials::new(
            &config.access_key,
            &config.secret_key,
            None,
            None,
            "zeroflow-env",
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            // Path-style (`host/bucket/key`): S3-compatible servers on an IP or localhost have no
            // per-bucket DNS names.
            .force_path_style(true)
            // Recent SDKs add CRC checksums (aws-chunked trailers) to every upload; several
            // S3-compatible servers reject or mangle those. Send them only where S3 requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // A wrong endpoint should fail in seconds, not hang a deploy; transfers themselves
            // have no deadline because archives may be large.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let prefix = config.prefix.trim_matches('/');
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            endpoint: config.endpoint,
        })
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// kube pulls in rustls with ring and aws-sdk-s3 with aws-lc-rs; with two providers compiled in,
/// rustls has no process default and panics at the first TLS client built without an explicit
/// provider. aws-sdk-s3 passes its own, but other clients in the same binary may not, so the first
/// S3 store installs aws-lc-rs as the default. Failing means a default already exists: keep it.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A missing object is [`ArtifactError::NotFound`], as in [`crate::DirStore`]; anything else
/// (a missing bucket, bad credentials, a refused connection) is I/O with the SDK's whole error
/// chain, which names the cause.
fn s3_error<E>(key: &str, err: SdkError<E, HttpResponse>) -> ArtifactError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let missing = match code.as_deref() {
        Some("NoSuchKey") | Some("NotFound") => true,
        // HEAD answers have no body, so no code: a bare 404 is the object.
        None => status == Some(404),
        _ => false,
    };
    if missing {
        ArtifactError::NotFound(key.to_string())
    } else {
        ArtifactError::Io {
            key: key.to_string(),
            message: format!("S3 {}", DisplayErrorContext(&err)),
        }
    }
}

#[async_trait::async_trait]
impl ArtifactStore for S3Store {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArtifactError> {
        check_key(key)?;
        // One PutObject: S3 takes up to 5 GiB that way, and archives are capped far below that
        // (archive::Limits), so multipart would only add round trips.
        let len = bytes.len() as i64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .content_length(len)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| s3_error(key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArtifactError> {
        check_key(key)?;
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .send()
            .await
            .map_err(|e| s3_error(key, e))?;
        let body = resp.body.collect().await.map_err(|e| ArtifactError::Io {
            key: key.to_string(),
            message: format!("S3 body read failed: {}", DisplayErrorContext(&e)),
        })?;
        Ok(body.into_bytes())
    }

    async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        check_key(key)?;
        // S3 answers 204 for a key that never existed; ask first so that both stores agree.
        self.client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .send()
            .await
            .map_err(|e| s3_error(key, e))?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .send()
            .await
            .map_err(|e| s3_error(key, e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArtifactError> {
        let mut out = vec![];
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.object(prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error(prefix, e))?;
            for object in page.contents() {
                if let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    out.push(key.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn describe(&self) -> String {
        let at = self
            .endpoint
            .as_deref()
            .map(|e| format!(" at {e}"))
            .unwrap_or_default();
        format!("s3://{}/{}{at}", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn config_from_env() {
        assert_eq!(S3Config::from_lookup(lookup(&[])).unwrap(), None);
        assert_eq!(
            S3Config::from_lookup(lookup(&[("ZEROFLOW_S3_BUCKET", " ")])).unwrap(),
            None
        );
        let c = S3Config::from_lookup(lookup(&[
            ("ZEROFLOW_S3_BUCKET", "zf-art"),
            ("ZEROFLOW_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("ZEROFLOW_S3_PREFIX", "/team/a/"),
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region, "us-east-1");
        assert!(!format!("{c:?}").contains("SK"), "Debug leaks the secret");
        let store = S3Store::new(c).unwrap();
        assert_eq!(store.object("x/y"), "team/a/x/y");
        assert_eq!(
            store.describe(),
            "s3://zf-art/team/a/ at http://127.0.0.1:9000"
        );
    }

    #[test]
    fn config_errors_name_the_variable() {
        let err = S3Config::from_lookup(lookup(&[
            ("ZEROFLOW_S3_BUCKET", "zf-art"),
            ("AWS_ACCESS_KEY_ID", "AK"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        let base = [("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")];
        for (var, value) in [
            ("ZEROFLOW_S3_ENDPOINT", "127.0.0.1:9000"),
            ("ZEROFLOW_S3_BUCKET", "Has_Upper"),
            ("ZEROFLOW_S3_PREFIX", "a/../b"),
        ] {
            let mut vars = base.to_vec();
            vars.push((var, value));
            if var != "ZEROFLOW_S3_BUCKET" {
                vars.push(("ZEROFLOW_S3_BUCKET", "zf-art"));
            }
            let err = S3Config::from_lookup(lookup(&vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var) && err.contains(value), "{err}");
        }
    }
}
