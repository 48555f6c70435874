//! The control plane: REST API, store, artifacts, reconciler and runtime backends (filled by the platform issue).
