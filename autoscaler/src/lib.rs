//! Scaling decisions: Knative KPA semantics for concurrency and rps, HPA-style for cpu and memory (filled by the scale-to-zero issue).
