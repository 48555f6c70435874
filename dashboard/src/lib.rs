//! The web dashboard of `jc server` (at `/` on its API port) and `jc flow serve` (on a port of
//! its own): every Flow with its phase and endpoints, and per Executor its replicas over the
//! last hour, calls per second and p50/p99, cold starts with where the time went, the
//! autoscaler's decisions with their reasons, and its replicas' output as it comes, live over
//! Server-Sent Events. It reads only the `Runtime` trait, the autoscaler's decision feed and the
//! control plane's records; it must not start, stop or scale anything itself (the page's actions
//! call the REST API, as `jc` does).

pub mod assets;
pub mod hub;
pub mod ring;
pub mod routes;

pub use hub::{Hub, Limits};
pub use routes::{LocalFlow, for_local, for_server, serve_local};
