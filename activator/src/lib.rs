//! The activator's building blocks: the breaker that bounds concurrency and queueing (shared with
//! the executor-shim), the time-weighted concurrency meter, and the stat message both report to
//! the autoscaler. It never spawns anything.

pub mod breaker;
pub mod h2call;
pub mod latency;
pub mod metrics;
pub mod replicas;
pub mod stats;

pub use breaker::{Breaker, BreakerError, Permit};
pub use latency::{LatencyHistogram, LatencySnapshot};
pub use metrics::ActivatorMetrics;
pub use replicas::{CallOptions, PROXIED_HEADER, Replica, ReplicaSet, ThrottleSettings};
pub use stats::{ConcurrencyMeter, Stat};
