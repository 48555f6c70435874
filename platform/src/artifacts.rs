//! Moved to the `zeroflow-artifacts` crate (stores, safe unpacking, the Executor registry);
//! re-exported so that `zeroflow_platform::artifacts::...` paths keep working.
pub use zeroflow_artifacts::*;
