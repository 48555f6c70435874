//! The contract between Zeroflow's processes: what the executor shim, the activator, the
//! autoscaler and the runtimes (local and Kubernetes) say to each other, each defined once here
//! so that both sides print and parse it with the same code. Today: the shim's ready line. The
//! stat message, the proxied-request header and the parent-death-signal helper belong here too.
//! This crate holds formats only: it must not do I/O, start processes, or depend on any other
//! Zeroflow crate (they all depend on it).

mod ready;

pub use ready::{ReadyLine, ReadyLineError};
