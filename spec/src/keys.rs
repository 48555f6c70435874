//! The keys Jina 3.34's argument parsers know. A key in these lists that Zeroflow does not use
//! loads silently (Jina accepts it); a key in none of them gets an "unknown key" warning.

pub(crate) const FLOW_TOP: &[&str] = &["jtype", "version", "with", "executors", "deployments", "gateway", "jcloud"];
pub(crate) const DEPLOYMENT_TOP: &[&str] = &["jtype", "with", "needs", "jcloud", "version"];
/// An item of `executors:` that is itself a `jtype: Deployment`.
pub(crate) const INLINE_DEPLOYMENT: &[&str] = &["jtype", "with", "jcloud", "needs", "version"];
/// Keys Jina's Flow loader takes on an `executors:` item besides the Deployment arguments, and
/// Zeroflow's own `command` (Jina drops it with a warning).
pub(crate) const EXECUTOR_EXTRA: &[&str] = &["needs", "method", "jcloud", "copy_flow", "command"];
/// Keys of the Flow's `with:` that are not arguments of any parser.
pub(crate) const WITH_EXTRA: &[&str] = &["args", "kwargs"];

/// `jina flow` arguments.
pub(crate) const FLOW_ARGS: &[&str] = &[
    "env", "help", "inspect", "log_config", "name", "quiet", "quiet_error", "reload",
    "suppress_root_logging", "uses", "version", "version_full", "workspace", "workspace_id",
];

/// `jina gateway` arguments (with their aliases).
pub(crate) const GATEWAY_ARGS: &[&str] = &[
    "compression", "cors", "deployments_addresses", "deployments_disable_reduce",
    "deployments_metadata", "deployments_no_reduce", "description", "docker_kwargs", "entrypoint",
    "env", "env_from_secret", "expose_endpoints", "expose_graphql_endpoint", "extra_search_paths",
    "floating", "graph_conditions", "graph_description", "grpc_channel_options",
    "grpc_server_options", "help", "host", "host_in", "image_pull_secrets", "k8s_namespace",
    "log_config", "metrics", "metrics_exporter_host", "metrics_exporter_port", "monitoring", "name",
    "no_crud_endpoints", "no_debug_endpoints", "noblock_on_start", "peer_ports", "pod_role", "port",
    "port_expose", "port_in", "port_monitoring", "ports", "prefetch", "protocol", "protocols",
    "provider", "provider_endpoint", "proxy", "py_modules", "quiet", "quiet_error", "reload",
    "replica_id", "replicas", "retries", "runtime_cls", "shard_id", "ssl_certfile", "ssl_keyfile",
    "stateful", "timeout_ctrl", "timeout_ready", "timeout_send", "title", "traces_exporter_host",
    "traces_exporter_port", "tracing", "uses", "uses_with", "uvicorn_kwargs", "version",
    "version_full", "workspace", "workspace_id",
];

/// `jina executor` / Deployment arguments (with their aliases).
pub(crate) const DEPLOYMENT_ARGS: &[&str] = &[
    "allow_concurrent", "compression", "connection_list", "cors", "deployment_role", "description",
    "disable_auto_volume", "disable_reduce", "docker_kwargs", "entrypoint", "env", "env_from_secret",
    "exit_on_exceptions", "external", "extra_search_paths", "floating", "force", "force_network_mode",
    "force_update", "gpus", "grpc_channel_options", "grpc_metadata", "grpc_server_options", "help",
    "host", "host_in", "image_pull_secrets", "install_requirements", "k8s_namespace", "log_config",
    "metrics", "metrics_exporter_host", "metrics_exporter_port", "monitoring", "name", "native",
    "no_reduce", "noblock_on_start", "output_array_type", "peer_ports", "pod_role", "polling", "port",
    "port_monitoring", "ports", "prefer_platform", "protocol", "protocols", "provider",
    "provider_endpoint", "py_modules", "quiet", "quiet_error", "raft_configuration", "reload",
    "replica_id", "replicas", "retries", "runtime_cls", "shard_id", "shards", "ssl_certfile",
    "ssl_keyfile", "stateful", "timeout_ctrl", "timeout_ready", "timeout_send", "title", "tls",
    "traces_exporter_host", "traces_exporter_port", "tracing", "uses", "uses_after",
    "uses_after_address", "uses_before", "uses_before_address", "uses_dynamic_batching",
    "uses_metas", "uses_requests", "uses_with", "uvicorn_kwargs", "version", "version_full",
    "volumes", "when", "workspace", "workspace_id",
];

/// Client arguments, which a Flow's `with:` also takes.
pub(crate) const CLIENT_ARGS: &[&str] = &[
    "asyncio", "grpc_channel_options", "host", "host_in", "log_config", "metrics",
    "metrics_exporter_host", "metrics_exporter_port", "port", "prefetch", "protocol", "proxy",
    "reuse_session", "suppress_root_logging", "tls", "traces_exporter_host", "traces_exporter_port",
    "tracing",
];

/// Executor arguments of the Flow's `with:` that Jina hands down to every Executor that does not
/// set them itself, among those Zeroflow uses.
pub(crate) const INHERITED: &[&str] = &["replicas", "shards", "polling", "timeout_send", "retries", "env_from_secret"];

/// Arguments that change what an Executor computes but that Zeroflow does not run.
pub(crate) const UNSUPPORTED_EXECUTOR: &[&str] = &["uses_before", "uses_after", "uses_before_address", "uses_after_address"];
