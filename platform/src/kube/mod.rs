//! Zeroflow on Kubernetes: the `Flow` custom resource (`flows.zeroflow.dev`) and its controller,
//! which turns each Flow into a namespace with a gateway Deployment and one Deployment plus
//! headless Service per Executor shard; and the gateway's runtime there, which learns ready
//! replicas from EndpointSlices and scales Executors through their `scale` subresource. It must
//! not decide scaling (the autoscaler does) nor parse Flow YAML by hand (the spec crate does).

pub mod controller;
pub mod crd;
pub mod names;
pub mod pod;
pub mod render;
pub mod runtime;
pub mod status;
