//! Where uploaded Executors and deployed project folders live, and unpacking them safely.
//!
//! [`ArtifactStore`] keeps opaque blobs under string keys: [`DirStore`] (a local directory, the
//! embedded default) or [`S3Store`] (any S3-compatible service); [`store_from_env`] picks one.
//! [`archive`] packs a folder into a `.tar.gz` and unpacks untrusted archives without letting an
//! entry escape its folder or exhaust the disk. [`registry`] names things inside the store
//! (`executors/<user>/<name>/<tag>.tar.gz`, `projects/<user>/<flow_id>.tar.gz`), validates what is
//! pushed, and materializes it into a local cache folder that an Executor process can run from.
//! [`digest`] names archives by content (`sha256:HEX`); [`requirements`] installs a project's
//! `requirements.txt` with pip, for `jc server` and the executor-shim alike.
//!
//! This crate must not know about Flows or HTTP, and the only process it runs is pip: the control
//! plane and the shim call it, and every archive a user sends is unpacked only through
//! [`archive::unpack`].

pub mod archive;
pub mod digest;
pub mod registry;
pub mod requirements;
mod s3;
mod store;
#[doc(hidden)]
pub mod testing;

pub use s3::{S3Config, S3Store};
pub use store::{ArtifactError, ArtifactStore, DirStore, check_key, store_from_env};
