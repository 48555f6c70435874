//! Secret values at rest: the key that seals `jc secret` data in `state.db`, and the sealing
//! itself. XChaCha20-Poly1305 with a fresh random 192-bit nonce per value (random nonces of that
//! size never repeat in practice, so no counter has to survive restarts), and the secret's Flow
//! and name as associated data, so that a sealed value copied onto another secret's row does not
//! open. The key is 32 random bytes: given by the server's config (the binary reads
//! `ZEROFLOW_SECRET_KEY`), else the file `DATA_DIR/secret.key`, made with mode 0600 on first
//! start. This module must not log a value or a key, nor read the environment.

use base64::Engine;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::{Path, PathBuf};

/// The key file's name in the data folder.
pub const KEY_FILE: &str = "secret.key";
/// The environment variable the `jc server` binary reads a key from (base64 of 32 bytes).
pub const KEY_ENV: &str = "ZEROFLOW_SECRET_KEY";
/// Bytes in a key.
pub const KEY_LEN: usize = 32;
/// The first byte of a sealed value: the format, so that another one can follow.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{KEY_ENV} is not base64 ({0}); set it to 32 random bytes in base64, e.g. `head -c 32 /dev/urandom | base64`"
    )]
    NotBase64(String),
    #[error(
        "{KEY_ENV} decodes to {0} bytes; a key is exactly {KEY_LEN} bytes (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    EnvWrongSize(usize),
    #[error("the secret key {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error(
        "the secret key {} can be read by others (mode {mode:03o}); it must be readable by this user only: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error(
        "the secret key {} is {size} bytes, not {KEY_LEN}: restore it from your backup (a new key cannot open the secrets already stored)",
        path.display()
    )]
    WrongSize { path: PathBuf, size: u64 },
    #[error("no random bytes from the system for a key or nonce: {0}")]
    Random(String),
    #[error("a value of {0} bytes is too large to seal")]
    TooLarge(usize),
}

/// Why a sealed value does not open. Says nothing about the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("it is not a sealed value this jc knows (format {0})")]
    Format(u8),
    #[error("it is {0} bytes, too short to be a sealed value")]
    Truncated(usize),
    #[error("the key does not open it (another key sealed it, or the row was altered)")]
    Mismatch,
}

/// The key secrets are sealed with. Its `Debug` shows no byte of it.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        SecretKey(bytes)
    }

    /// A key as `ZEROFLOW_SECRET_KEY` holds it: base64 (standard or URL-safe, padding optional)
    /// of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<SecretKey, KeyError> {
        let text = text.trim();
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let mut first_err = None;
        for e in engines {
            match e.decode(text) {
                Ok(bytes) => {
                    let n = bytes.len();
                    return <[u8; KEY_LEN]>::try_from(bytes)
                        .map(SecretKey)
                        .map_err(|_| KeyError::EnvWrongSize(n));
                }
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        Err(KeyError::NotBase64(
            first_err.map(|e| e.to_string()).unwrap_or_default(),
        ))
    }

    /// A new random key (what a first start writes to the key file).
    pub fn generate() -> Result<SecretKey, KeyError> {
        let key =
            chacha20poly1305::Key::try_generate().map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey(key.into()))
    }

    /// The key in `data_dir/secret.key`, made (32 random bytes, mode 0600) when missing. A file
    /// that others can read, or of the wrong size, is refused, not repaired: a key that leaked
    /// must be replaced by its owner, and a truncated one cannot be guessed back.
    pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, KeyError> {
        let path = data_dir.join(KEY_FILE);
        if let Some(key) = read_key_file(&path)? {
            return Ok(key);
        }
        let key = SecretKey::generate()?;
        write_new_key_file(&path, &key.0)?;
        // Another process may have won the race to create it: read what is there.
        read_key_file(&path)?.ok_or_else(|| KeyError::File {
            path: path.clone(),
            message: "it vanished just after it was made".into(),
        })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// `plain` sealed with a fresh nonce, bound to `context` (which must be given again to open).
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let nonce = XNonce::try_generate().map_err(|e| KeyError::Random(e.to_string()))?;
        let sealed = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            // Encryption fails only for messages of gigabytes; secrets are API request bodies.
            .map_err(|_| KeyError::TooLarge(plain.len()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// What [`seal`](Self::seal) sealed with this key and `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let (&format, rest) = sealed.split_first().ok_or(OpenError::Truncated(0))?;
        if format != FORMAT_V1 {
            return Err(OpenError::Format(format));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Truncated(sealed.len()));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::Truncated(sealed.len()))?;
        self.cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map_err(|_| OpenError::Mismatch)
    }
}

/// The key in `path`; None when there is no such file.
fn read_key_file(path: &Path) -> Result<Option<SecretKey>, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| KeyError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !meta.is_file() || meta.len() != KEY_LEN as u64 {
        return Err(KeyError::WrongSize {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(err)?;
    let size = bytes.len() as u64;
    <[u8; KEY_LEN]>::try_from(bytes)
        .map(|k| Some(SecretKey(k)))
        .map_err(|_| KeyError::WrongSize {
            path: path.to_path_buf(),
            size,
        })
}

/// Writes the key under a temporary name and links it into place, so that no process ever reads
/// a half-written key, and two first starts keep one key (the link fails for the second).
fn write_new_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |p: &Path, e: std::io::Error| KeyError::File {
        path: p.to_path_buf(),
        message: e.to_string(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(key).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(&tmp, e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The link is durable only once the folder is.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            tracing::info!(path = %path.display(), "made a new secret key; back it up with the data folder");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "zeroflow-sealing-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sealed_values_open_with_their_key_and_context_only() {
        let k = SecretKey::generate().unwrap();
        let a = k.seal(b"flow\0db", b"hunter2").unwrap();
        let b = k.seal(b"flow\0db", b"hunter2").unwrap();
        // A fresh nonce each time: equal values do not give equal rows.
        assert_ne!(a, b);
        assert!(!a.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open(b"flow\0db", &a).unwrap(), b"hunter2");
        assert_eq!(k.open(b"flow\0other", &a), Err(OpenError::Mismatch));
        let other = SecretKey::generate().unwrap();
        assert_eq!(other.open(b"flow\0db", &a), Err(OpenError::Mismatch));
        let mut flipped = a.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(k.open(b"flow\0db", &flipped), Err(OpenError::Mismatch));
        assert_eq!(k.open(b"", &a[..10]), Err(OpenError::Truncated(10)));
        assert_eq!(k.open(b"", b"{\"K\":1}"), Err(OpenError::Format(b'{')));
    }

    #[test]
    fn the_key_file_is_made_once_with_mode_0600() {
        let d = tmp("make");
        let k1 = SecretKey::load_or_create(&d).unwrap();
        let path = d.join(KEY_FILE);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let k2 = SecretKey::load_or_create(&d).unwrap();
        assert_eq!(k1.0, k2.0, "a second start reads the same key");
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_loose_or_wrong_sized_key_file_is_refused_and_left_alone() {
        let d = tmp("loose");
        let path = d.join(KEY_FILE);
        SecretKey::load_or_create(&d).unwrap();
        let before = std::fs::read(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = SecretKey::load_or_create(&d).unwrap_err();
        assert!(
            matches!(e, KeyError::LoosePermissions { mode: 0o640, .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("chmod 600") && msg.contains(KEY_FILE) && msg.contains("640"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "not replaced");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640,
            "not silently tightened"
        );

        std::fs::write(&path, b"short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = SecretKey::load_or_create(&d).unwrap_err();
        assert!(matches!(e, KeyError::WrongSize { size: 5, .. }), "{e}");
        assert!(e.to_string().contains("backup"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn keys_from_the_environment_are_base64_of_32_bytes() {
        let k =
            SecretKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
                .unwrap();
        assert_eq!(k.0, [7u8; 32]);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfbu8; 32]);
        assert_eq!(
            SecretKey::from_base64(&format!(" {url}\n")).unwrap().0,
            [0xfb; 32]
        );
        assert!(matches!(
            SecretKey::from_base64("c2hvcnQ="),
            Err(KeyError::EnvWrongSize(5))
        ));
        let e = SecretKey::from_base64("not base64!").unwrap_err();
        assert!(matches!(e, KeyError::NotBase64(_)), "{e}");
        assert!(e.to_string().contains(KEY_ENV), "{e}");
        assert_eq!(format!("{k:?}"), "SecretKey(..)");
    }
}
