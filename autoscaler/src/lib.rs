//! Zeroflow's autoscaler: decides how many replicas each Executor should have. Its one job is the
//! scaling decision as a function of (metric windows, config, previous state, now) → (desired
//! replicas, new state), with Knative's KPA semantics for `concurrency` and `rps` and HPA-style
//! semantics for `cpu` and `memory`, plus the small loop that feeds it stats and pokes and hands
//! changes to a [`Scaler`]. It must not read the clock itself (time is passed in; only [`run`]
//! asks tokio for `now`, so tests drive it with paused time), and it must not start or stop
//! anything: the runtime behind [`Scaler`] does that.

pub mod config;
pub mod decider;
pub mod hpa;
pub mod kpa;
pub mod scaling;
pub mod window;

pub use config::AutoscalerConfig;
pub use decider::{Autoscaler, ReadyCountError, ResourceSample, Scaler, run};
pub use scaling::{Decision, NoDecision, ScalingSpec};
pub use window::Window;

/// Everything that can go wrong in this crate: bad server configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{key} = {value}: must be {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{key}: cannot parse {value:?} as {expected}")]
    Parse {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("{key}: not supported: {why}")]
    UnsupportedKey { key: String, why: &'static str },
    #[error("unknown autoscaler setting {key:?}")]
    UnknownKey { key: String },
}
