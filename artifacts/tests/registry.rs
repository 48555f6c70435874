//! The registry over a real directory store: push, list, materialize, projects, and what a push
//! must refuse.

use bytes::Bytes;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use zeroflow_artifacts::archive::{self, ArchiveError, Limits};
use zeroflow_artifacts::registry::{Registry, RegistryError, Visibility};
use zeroflow_artifacts::{ArtifactStore, DirStore};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn executor_folder(version: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "config.yml",
        "jtype: Echo\npy_modules:\n  - executor.py\n",
    );
    write(
        d.path(),
        "executor.py",
        &format!("from jina import Executor\nclass Echo(Executor):\n    VERSION = '{version}'\n"),
    );
    write(d.path(), "requirements.txt", "");
    d
}

/// The layout `jc new` creates.
fn project_folder() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "flow.yml",
        "jtype: Flow\nexecutors:\n  - name: executor1\n    uses: executor1/config.yml\n",
    );
    write(d.path(), ".env", "TOKEN=abc\n");
    write(d.path(), "executor1/config.yml", "jtype: MyExecutor\n");
    write(
        d.path(),
        "executor1/executor.py",
        "from jina import Executor\n",
    );
    write(d.path(), "executor1/requirements.txt", "\n");
    d
}

fn registry(tmp: &Path) -> Registry {
    let store: Arc<dyn ArtifactStore> = Arc::new(DirStore::new(tmp.join("store")));
    Registry::new(store, tmp.join("cache"))
}

#[tokio::test]
async fn push_list_materialize() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());
    let src = executor_folder("1");
    let rec = reg
        .push(
            "alice",
            "Echo",
            None,
            Visibility::Private,
            archive::pack_dir(src.path()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (rec.tag.as_str(), rec.key.as_str()),
        ("latest", "executors/alice/Echo/latest.tar.gz")
    );
    assert!(rec.has_executor_py && rec.has_requirements);
    assert_eq!(rec.sha256.len(), 64);
    reg.push(
        "alice",
        "Echo",
        Some("v2"),
        Visibility::Private,
        archive::pack_dir(src.path()).unwrap(),
    )
    .await
    .unwrap();
    reg.push(
        "bob",
        "Other",
        None,
        Visibility::Private,
        archive::pack_dir(src.path()).unwrap(),
    )
    .await
    .unwrap();

    let listed = reg.list("alice").await.unwrap();
    let tags: Vec<_> = listed.iter().map(|r| r.tag.as_str()).collect();
    assert_eq!(tags, ["latest", "v2"]);
    assert_eq!(listed[0], rec);
    assert!(reg.list("carol").await.unwrap().is_empty());

    let dir = reg.materialize("alice", "Echo", None).await.unwrap();
    assert_eq!(dir, tmp.path().join("cache/executors/alice/Echo/latest"));
    assert!(
        fs::read_to_string(dir.join("executor.py"))
            .unwrap()
            .contains("VERSION = '1'")
    );
    // The second call reuses the folder: a file added to it survives.
    write(&dir, "sentinel", "x");
    assert_eq!(
        reg.materialize("alice", "Echo", Some("latest"))
            .await
            .unwrap(),
        dir
    );
    assert!(dir.join("sentinel").exists());

    // A re-push of the tag replaces the cached folder, not serves it stale.
    let src2 = executor_folder("2");
    reg.push(
        "alice",
        "Echo",
        None,
        Visibility::Private,
        archive::pack_dir(src2.path()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reg.materialize("alice", "Echo", None).await.unwrap(), dir);
    assert!(!dir.join("sentinel").exists());
    assert!(
        fs::read_to_string(dir.join("executor.py"))
            .unwrap()
            .contains("VERSION = '2'")
    );
    // No scratch folders are left beside it.
    let leftovers: Vec<_> = fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut leftovers = leftovers;
    leftovers.sort();
    assert_eq!(leftovers, ["latest", "latest.sha256"]);
}

#[tokio::test]
async fn concurrent_first_materialize_unpacks_once() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Arc::new(registry(tmp.path()));
    let src = executor_folder("1");
    reg.push(
        "alice",
        "Echo",
        None,
        Visibility::Private,
        archive::pack_dir(src.path()).unwrap(),
    )
    .await
    .unwrap();
    let calls = (0..8).map(|_| {
        let reg = reg.clone();
        tokio::spawn(async move { reg.materialize("alice", "Echo", None).await.unwrap() })
    });
    let dirs = futures_join(calls).await;
    assert!(dirs.windows(2).all(|w| w[0] == w[1]));
    assert!(dirs[0].join("config.yml").is_file());
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = vec![];
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn push_accepts_a_single_top_folder() {
    // `tar -czf echo.tgz echo/` puts everything under `echo/`.
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());
    let outer = tempfile::tempdir().unwrap();
    let src = executor_folder("1");
    fs::rename(src.path(), outer.path().join("echo")).unwrap();
    let rec = reg
        .push(
            "alice",
            "Echo",
            None,
            Visibility::Private,
            archive::pack_dir(outer.path()).unwrap(),
        )
        .await
        .unwrap();
    let mut files = rec.files.clone();
    files.sort();
    assert_eq!(files, ["config.yml", "executor.py", "requirements.txt"]);
    let dir = reg.materialize("alice", "Echo", None).await.unwrap();
    assert!(dir.join("config.yml").is_file());
}

#[tokio::test]
async fn a_private_executor_is_its_owners_and_a_public_one_everyones() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());
    let src = executor_folder("1");
    let pack = || archive::pack_dir(src.path()).unwrap();
    let private = reg
        .push("alice", "Secret", None, Visibility::Private, pack())
        .await
        .unwrap();
    assert_eq!(private.visibility, Visibility::Private);
    let public = reg
        .push("alice", "Shared", Some("v1"), Visibility::Public, pack())
        .await
        .unwrap();
    assert_eq!(public.visibility, Visibility::Public);

    // The owner uses both; another user the public one only.
    assert!(reg.materialize("alice", "Secret", None).await.is_ok());
    assert!(
        reg.materialize_as("alice", "alice", "Shared", Some("v1"))
            .await
            .is_ok()
    );
    let dir = reg
        .materialize_as("bob", "alice", "Shared", Some("v1"))
        .await
        .unwrap();
    assert!(dir.join("config.yml").is_file());

    // A private Executor and a missing one look the same to bob: nothing tells them apart.
    let private_err = reg
        .materialize_as("bob", "alice", "Secret", None)
        .await
        .unwrap_err();
    let missing_err = reg
        .materialize_as("bob", "alice", "Ghost", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&private_err, RegistryError::ExecutorUnavailable(r) if r == "alice/Secret:latest"),
        "{private_err}"
    );
    assert!(
        matches!(&missing_err, RegistryError::ExecutorUnavailable(_)),
        "{missing_err}"
    );
    assert_eq!(
        private_err.to_string(),
        "Executor alice/Secret:latest does not exist or is private to its owner"
    );
    assert_eq!(
        missing_err.to_string().replace("Ghost", "Secret"),
        private_err.to_string()
    );
    // Even after the owner has it in the cache, bob does not get the folder.
    assert!(
        reg.materialize_as("bob", "alice", "Secret", None)
            .await
            .is_err()
    );

    // A re-push sets the visibility anew: public now, private again after.
    reg.push("alice", "Secret", None, Visibility::Public, pack())
        .await
        .unwrap();
    assert!(
        reg.materialize_as("bob", "alice", "Secret", None)
            .await
            .is_ok()
    );
    reg.push("alice", "Secret", None, Visibility::Private, pack())
        .await
        .unwrap();
    assert!(
        reg.materialize_as("bob", "alice", "Secret", None)
            .await
            .is_err()
    );

    // A record from before visibilities (no field) is private.
    let rkey = "executors/alice/Shared/v1.json";
    let mut rec: serde_json::Value =
        serde_json::from_slice(&reg.store().get(rkey).await.unwrap()).unwrap();
    rec.as_object_mut().unwrap().remove("visibility");
    reg.store()
        .put(rkey, Bytes::from(serde_json::to_vec(&rec).unwrap()))
        .await
        .unwrap();
    assert!(
        reg.materialize_as("bob", "alice", "Shared", Some("v1"))
            .await
            .is_err()
    );
    let listed = reg.list("alice").await.unwrap();
    assert!(listed.iter().all(|r| r.visibility == Visibility::Private));
}

#[tokio::test]
async fn push_refusals_name_the_problem_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());

    // No config.yml.
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "executor.py", "");
    write(d.path(), "README.md", "");
    let err = reg
        .push(
            "alice",
            "Echo",
            None,
            Visibility::Private,
            archive::pack_dir(d.path()).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::MissingFile { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("config.yml") && text.contains("README.md, executor.py"),
        "{text}"
    );

    // A hostile archive.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..12].copy_from_slice(b"../evil.yml\0");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    b.append(&h, &b"x"[..]).unwrap();
    let evil = Bytes::from(b.into_inner().unwrap().finish().unwrap());
    let err = reg
        .push("alice", "Echo", None, Visibility::Private, evil)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RegistryError::Archive {
                source: ArchiveError::UnsafePath { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("../evil.yml"), "{err}");

    // Over the limit.
    let small = registry(tmp.path()).with_limits(Limits {
        max_files: 2,
        ..Limits::default()
    });
    let src = executor_folder("1");
    let err = small
        .push(
            "alice",
            "Echo",
            None,
            Visibility::Private,
            archive::pack_dir(src.path()).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 2 entries"), "{err}");

    // Bad names.
    let ok = archive::pack_dir(src.path()).unwrap();
    for (user, name, tag, what) in [
        ("alice", "../x", None, "Executor name"),
        ("a/b", "Echo", None, "user"),
        ("alice", "Echo", Some("v1/../../x"), "tag"),
    ] {
        let err = reg
            .push(user, name, tag, Visibility::Private, ok.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RegistryError::BadName { what: w, .. } if *w == what),
            "{err}"
        );
    }

    assert!(reg.store().list("").await.unwrap().is_empty());
    // Push scratch folders are cleaned up.
    let scratch = tmp.path().join("cache/tmp");
    assert_eq!(fs::read_dir(scratch).unwrap().count(), 0);

    let err = reg
        .materialize("alice", "Nope", Some("v9"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Executor alice/Nope:v9 does not exist: push it first"
    );
}

#[tokio::test]
async fn materialize_checks_what_the_store_holds() {
    // Someone with write access to the bucket swaps in a hostile archive: unpacking it is refused
    // just like a push would be.
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());
    let src = executor_folder("1");
    let rec = reg
        .push(
            "alice",
            "Echo",
            None,
            Visibility::Private,
            archive::pack_dir(src.path()).unwrap(),
        )
        .await
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("link").unwrap();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_link_name("/etc").unwrap();
    h.set_size(0);
    h.set_cksum();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    b.append(&h, std::io::empty()).unwrap();
    let evil = b.into_inner().unwrap().finish().unwrap();
    reg.store().put(&rec.key, Bytes::from(evil)).await.unwrap();
    let err = reg.materialize("alice", "Echo", None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("stored archive") && text.contains("symlink"),
        "{text}"
    );
}

#[tokio::test]
async fn projects() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());
    let src = project_folder();
    let rec = reg
        .push_project(
            "alice",
            "myflow-1a2b",
            archive::pack_dir(src.path()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rec.key, "projects/alice/myflow-1a2b.tar.gz");
    assert_eq!(rec.flow_file, "flow.yml");
    assert_eq!(rec.executors, ["executor1"]);
    let dir = reg
        .materialize_project("alice", "myflow-1a2b")
        .await
        .unwrap();
    assert_eq!(dir, tmp.path().join("cache/projects/alice/myflow-1a2b"));
    assert_eq!(fs::read_to_string(dir.join(".env")).unwrap(), "TOKEN=abc\n");
    assert!(dir.join("executor1/executor.py").is_file());

    // An Executor folder is not a project.
    let exec = executor_folder("1");
    let err = reg
        .push_project("alice", "f2", archive::pack_dir(exec.path()).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("flow.yml"), "{err}");
    let err = reg.materialize_project("alice", "f2").await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ProjectNotFound { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn projects_by_digest() {
    use zeroflow_artifacts::digest::Sha256Digest;
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());
    let src = project_folder();
    let bytes = archive::pack_dir(src.path()).unwrap();
    let digest = Sha256Digest::of(&bytes);
    let rec = reg
        .push_project("alice", "f1", bytes.clone())
        .await
        .unwrap();
    assert_eq!(rec.sha256, digest.hex());
    assert_eq!(reg.project_by_digest(&digest).await.unwrap(), bytes);
    assert_eq!(
        reg.project_digest("alice", "f1").await.unwrap(),
        Some(digest)
    );
    assert_eq!(reg.project_digest("alice", "nope").await.unwrap(), None);

    // The same bytes for another Flow: removing the first Flow's archive leaves the second's.
    reg.push_project("bob", "f2", bytes.clone()).await.unwrap();
    reg.store()
        .delete(&Registry::project_key("alice", "f1"))
        .await
        .unwrap();
    assert_eq!(reg.project_by_digest(&digest).await.unwrap(), bytes);

    // Re-pushed with other content: the old digest is gone, and its stale hint with it.
    write(src.path(), "executor1/executor.py", "# changed\n");
    let newer = archive::pack_dir(src.path()).unwrap();
    reg.push_project("bob", "f2", newer.clone()).await.unwrap();
    let err = reg.project_by_digest(&digest).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestNotFound(d) if d == digest),
        "{err}"
    );
    assert!(err.to_string().contains(&digest.to_string()), "{err}");
    let hints = reg
        .store()
        .list(&format!("digests/sha256/{}/", digest.hex()))
        .await
        .unwrap();
    assert!(hints.is_empty(), "{hints:?}");
    assert_eq!(
        reg.project_by_digest(&Sha256Digest::of(&newer))
            .await
            .unwrap(),
        newer
    );

    // A project pushed before the index existed is indexed when its digest is asked for.
    let key = Registry::project_key("bob", "f2");
    let hint = format!("digests/sha256/{}/{key}", Sha256Digest::of(&newer).hex());
    reg.store().delete(&hint).await.unwrap();
    assert!(
        reg.project_by_digest(&Sha256Digest::of(&newer))
            .await
            .is_err()
    );
    reg.project_digest("bob", "f2").await.unwrap();
    assert_eq!(
        reg.project_by_digest(&Sha256Digest::of(&newer))
            .await
            .unwrap(),
        newer
    );
}
