//! The S3 store and the registry against a real S3-compatible server (s3rver), started per test on
//! a free loopback port with a temporary data folder. `bash scripts/setup-s3.sh` installs it; when
//! it is missing these tests fail and say so, rather than pass without testing anything.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use zeroflow_artifacts::archive;
use zeroflow_artifacts::registry::Registry;
use zeroflow_artifacts::{ArtifactError, ArtifactStore, S3Config, S3Store};

const BUCKET: &str = "zeroflow-test";

/// The crate's s3rver (`zeroflow_artifacts::testing`) with this test's bucket and a store helper.
struct S3rver(zeroflow_artifacts::testing::S3rver);

impl S3rver {
    fn start() -> S3rver {
        S3rver(zeroflow_artifacts::testing::S3rver::start(BUCKET))
    }

    fn config(&self, prefix: &str) -> S3Config {
        self.0.config(prefix)
    }

    fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(self.config(prefix)).unwrap()
    }
}

/// Incompressible bytes (xorshift), the same on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[tokio::test]
async fn put_get_list_delete() {
    let server = S3rver::start();
    let store = server.store("zf/test");
    assert!(
        store.describe().starts_with("s3://zeroflow-test/zf/test/"),
        "{}",
        store.describe()
    );
    assert_eq!(store.list("").await.unwrap(), Vec::<String>::new());

    store
        .put("a/b/c.bin", Bytes::from_static(b"one"))
        .await
        .unwrap();
    store
        .put("a/d.bin", Bytes::from_static(b"two"))
        .await
        .unwrap();
    store.put("z.bin", Bytes::new()).await.unwrap();
    assert_eq!(store.get("a/b/c.bin").await.unwrap(), "one");
    assert_eq!(store.get("z.bin").await.unwrap(), "");
    store
        .put("a/d.bin", Bytes::from_static(b"2"))
        .await
        .unwrap();
    assert_eq!(store.get("a/d.bin").await.unwrap(), "2");
    assert_eq!(store.list("a/").await.unwrap(), ["a/b/c.bin", "a/d.bin"]);
    assert_eq!(
        store.list("").await.unwrap(),
        ["a/b/c.bin", "a/d.bin", "z.bin"]
    );

    // 6 MiB, past the 5 MiB where clients usually switch to multipart, byte for byte.
    let big = noise(6 * 1024 * 1024);
    store
        .put("big.bin", Bytes::from(big.clone()))
        .await
        .unwrap();
    let back = store.get("big.bin").await.unwrap();
    assert!(
        back.len() == big.len() && back[..] == big[..],
        "6 MiB object differs"
    );

    store.delete("a/d.bin").await.unwrap();
    assert!(matches!(
        store.get("a/d.bin").await,
        Err(ArtifactError::NotFound(ref k)) if k == "a/d.bin"
    ));
    assert!(matches!(
        store.delete("a/d.bin").await,
        Err(ArtifactError::NotFound(_))
    ));
    assert!(matches!(
        store.put("../x", Bytes::new()).await,
        Err(ArtifactError::BadKey(_))
    ));

    // Prefixes keep two stores in one bucket apart.
    let other = server.store("");
    other
        .put("mine.bin", Bytes::from_static(b"m"))
        .await
        .unwrap();
    assert_eq!(
        store.list("").await.unwrap(),
        ["a/b/c.bin", "big.bin", "z.bin"]
    );
    let all = other.list("").await.unwrap();
    assert!(
        all.contains(&"mine.bin".to_string()) && all.contains(&"zf/test/big.bin".to_string()),
        "{all:?}"
    );
}

#[tokio::test]
async fn errors_name_the_cause() {
    let server = S3rver::start();
    // s3rver checks the access key but not SigV4 signatures, so a wrong key id is what it can
    // refuse.
    let mut config = server.config("");
    config.access_key = "WRONG".into();
    let err = S3Store::new(config)
        .unwrap()
        .put("k", Bytes::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("InvalidAccessKeyId"), "{err}");

    let mut config = server.config("");
    config.bucket = "no-such-bucket".into();
    let err = S3Store::new(config).unwrap().get("k").await.unwrap_err();
    assert!(
        matches!(&err, ArtifactError::Io { message, .. } if message.contains("NoSuchBucket")),
        "a missing bucket is not a missing key: {err}"
    );

    // Nothing listens there any more: a connection error, quickly.
    let config = server.config("");
    drop(server);
    let store = S3Store::new(config).unwrap();
    let started = std::time::Instant::now();
    let err = store.get("k").await.unwrap_err().to_string();
    assert!(
        err.contains("for k:") && err.contains("Connection refused"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
}

#[tokio::test]
async fn registry_through_s3() {
    let server = S3rver::start();
    let store: Arc<dyn ArtifactStore> = Arc::new(server.store("registry"));
    let cache = tempfile::tempdir().unwrap();
    let reg = Registry::new(store.clone(), cache.path());

    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("config.yml"), "jtype: Echo\n").unwrap();
    std::fs::write(src.path().join("executor.py"), "VERSION = 1\n").unwrap();
    // Incompressible data, so the archive itself is several MiB.
    let blob = noise(3 * 1024 * 1024);
    std::fs::write(src.path().join("model.bin"), &blob).unwrap();
    let rec = reg
        .push(
            "alice",
            "Echo",
            Some("v1"),
            zeroflow_artifacts::registry::Visibility::Private,
            archive::pack_dir(src.path()).unwrap(),
        )
        .await
        .unwrap();
    assert!(rec.size > 3_000_000, "{}", rec.size);
    assert_eq!(
        store.list("executors/").await.unwrap(),
        [
            "executors/alice/Echo/v1.json",
            "executors/alice/Echo/v1.tar.gz"
        ]
    );
    assert_eq!(reg.list("alice").await.unwrap(), [rec]);

    let dir = reg.materialize("alice", "Echo", Some("v1")).await.unwrap();
    assert_eq!(std::fs::read(dir.join("model.bin")).unwrap(), blob);
    assert_eq!(
        std::fs::read_to_string(dir.join("executor.py")).unwrap(),
        "VERSION = 1\n"
    );

    // Projects too.
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("flow.yml"), "jtype: Flow\n").unwrap();
    std::fs::write(project.path().join(".env"), "A=1\n").unwrap();
    reg.push_project(
        "alice",
        "flow-1",
        archive::pack_dir(project.path()).unwrap(),
    )
    .await
    .unwrap();
    let pdir = reg.materialize_project("alice", "flow-1").await.unwrap();
    assert_eq!(std::fs::read_to_string(pdir.join(".env")).unwrap(), "A=1\n");
    // ... and found by digest (the index entry is an empty object).
    let digest = reg
        .project_digest("alice", "flow-1")
        .await
        .unwrap()
        .unwrap();
    let bytes = reg.project_by_digest(&digest).await.unwrap();
    assert_eq!(zeroflow_artifacts::digest::Sha256Digest::of(&bytes), digest);
}
