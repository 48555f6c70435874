//! The platform: runtime backends that start and stop Executor replicas (the `local` backend runs
//! each replica as an executor-shim child process on this machine), the control plane (REST API,
//! store, artifacts), and the Knative export. It does not duplicate the gateway or the autoscaler.

pub mod artifacts;
pub mod knative;
pub mod kube;
pub mod local;
pub mod runtime;
pub mod scaling;
pub mod server;
