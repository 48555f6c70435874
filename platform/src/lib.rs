//! The platform: runtime backends that start and stop Executor replicas (the `local` backend runs
//! each replica as an executor-shim child process on this machine), and, with the platform
//! issue, the control plane. It does not duplicate the gateway or the autoscaler.

pub mod artifacts;
pub mod local;
pub mod scaling;
pub mod server;
