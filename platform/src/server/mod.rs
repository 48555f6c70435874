//! `jc server`: the control plane and every Flow's data path in one process. The REST API
//! ([`api`], jcloud-compatible) writes the [`store`] and asks the [`control`]ler to bring each
//! Flow to what was asked; the controller runs Flows on the local runtime ([`flows`]), resolving
//! pushed Executors ([`resolver`]) and running [`jobs`] beside them. Nothing here parses YAML
//! beyond the spec crate, nor decides scaling beyond the autoscaler crate.

pub mod api;
pub mod artifact_route;
pub mod control;
pub mod flows;
pub mod jobs;
pub mod kube_backend;
pub mod names;
pub mod openapi;
pub mod project;
pub mod resolver;
pub mod router;
pub mod sealing;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zeroflow_autoscaler::AutoscalerConfig;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds `state.db`, `flows/<id>/` and `executors/<user>/<name>/<tag>/`.
    pub data_dir: PathBuf,
    /// Where the API and the gateways listen.
    pub host: String,
    /// The host put in endpoint URLs (the listen host, or 127.0.0.1 for 0.0.0.0).
    pub public_host: String,
    pub autoscaler: AutoscalerConfig,
    pub startup_timeout: Duration,
    pub drain_timeout: Duration,
    /// What an uploaded archive (a pushed Executor or a deployed project) may weigh.
    /// `ZEROFLOW_MAX_ARCHIVE_BYTES` sets the compressed size (default 100 MiB).
    pub archive_limits: zeroflow_artifacts::archive::Limits,
    /// Run Flows on a Kubernetes cluster instead of this machine.
    pub kubernetes: Option<kube_backend::KubeOptions>,
    /// The key secrets are sealed with in `state.db` (the binary reads `ZEROFLOW_SECRET_KEY`);
    /// None: `DATA_DIR/secret.key`, made at first start.
    pub secret_key: Option<sealing::SecretKey>,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf, host: &str) -> Self {
        let public_host = match host {
            "0.0.0.0" | "" => "127.0.0.1".to_string(),
            "::" => "[::1]".to_string(),
            h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
            h => h.to_string(),
        };
        ServerConfig {
            data_dir,
            host: host.to_string(),
            public_host,
            autoscaler: AutoscalerConfig::default(),
            startup_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
            archive_limits: archive_limits_from_env(),
            kubernetes: None,
            secret_key: None,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("state.db")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("the artifact store: {0}")]
    Artifacts(String),
    #[error("{0}")]
    DataDir(String),
    #[error("the API server failed: {0}")]
    Serve(String),
    #[error(transparent)]
    Kubernetes(#[from] kube_backend::KubeError),
    #[error(transparent)]
    SecretKey(#[from] sealing::KeyError),
}

/// [`Limits`](zeroflow_artifacts::archive::Limits) with `ZEROFLOW_MAX_ARCHIVE_BYTES` (when set
/// to a number) as the compressed size limit.
pub fn archive_limits_from_env() -> zeroflow_artifacts::archive::Limits {
    zeroflow_artifacts::archive::Limits::from_env()
}

/// The default data directory: `$ZEROFLOW_DATA_DIR`, else `~/.zeroflow`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ZEROFLOW_DATA_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".zeroflow")
}

/// Creates user `user` if missing and returns a new token for it. `key` as
/// [`ServerConfig::secret_key`]: opening the store may seal the secrets of an older one.
pub fn create_token(
    data_dir: &std::path::Path,
    user: &str,
    key: Option<sealing::SecretKey>,
) -> Result<String, ServerError> {
    let s = open_store(data_dir, &data_dir.join("state.db"), key)?;
    Ok(s.create_token(user)?)
}

/// The store, with the configured key or the data folder's key file.
fn open_store(
    data_dir: &std::path::Path,
    db: &std::path::Path,
    key: Option<sealing::SecretKey>,
) -> Result<store::Store, ServerError> {
    let key = match key {
        Some(k) => k,
        None => sealing::SecretKey::load_or_create(data_dir)?,
    };
    Ok(store::Store::open(db, &key)?)
}

/// Opens the store, restores every Flow, and serves the API on `listener` until `shutdown`;
/// then stops every Flow (the store keeps them for the next start).
pub async fn run(
    cfg: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_with(cfg, listener, shutdown, |_| axum::Router::new()).await
}

/// [`run`], serving `pages(controller)` beside the API (the dashboard), made before any Flow
/// is restored; the API answers the paths those routes do not.
pub async fn run_with(
    cfg: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    pages: impl FnOnce(&Arc<control::Controller>) -> axum::Router,
) -> Result<(), ServerError> {
    let mut cfg = cfg;
    // Absolute, so Executors (which run in their project folders) find what the paths name.
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        ServerError::DataDir(format!(
            "cannot create the data folder {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    cfg.data_dir = std::fs::canonicalize(&cfg.data_dir).map_err(|e| {
        ServerError::DataDir(format!(
            "cannot resolve the data folder {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let store = open_store(&cfg.data_dir, &cfg.db_path(), cfg.secret_key.clone())?;
    jobs::fail_orphans(&store);
    let artifacts = zeroflow_artifacts::store_from_env(&cfg.data_dir)
        .map_err(|e| ServerError::Artifacts(e.to_string()))?;
    let registry = Arc::new(
        zeroflow_artifacts::registry::Registry::new(artifacts, cfg.data_dir.join("cache"))
            .with_limits(cfg.archive_limits),
    );
    let resolver = Arc::new(resolver::RegistryResolver {
        registry: registry.clone(),
        fallback: resolver::DirResolver::new(cfg.data_dir.join("executors")),
    });
    let backend = match &cfg.kubernetes {
        None => control::Backend::Local,
        Some(opts) => {
            let client = kube_backend::client().await?;
            tracing::info!(
                advertise = %opts.advertise_url,
                "running Flows on Kubernetes"
            );
            control::Backend::Kubernetes(Arc::new(kube_backend::KubeBackend::new(
                client,
                opts.clone(),
            )))
        }
    };
    let ctrl = control::Controller::new(store, cfg, resolver, Some(registry), backend);
    if let Some(k) = &ctrl.cfg.kubernetes {
        // Pods do not reach the listen address: they fetch archives from the advertised one.
        ctrl.artifact_access.set_base_url(&k.advertise_url);
    }
    if let Ok(addr) = listener.local_addr() {
        let base = format!("http://{}:{}", ctrl.cfg.public_host, addr.port());
        ctrl.artifact_access.set_base_url(&base);
    }
    let pages = pages(&ctrl);
    let n = ctrl.restore()?;
    if n > 0 {
        tracing::info!("restarting {n} Flow(s) from the store");
    }
    let app = pages.merge(api::router(ctrl.clone()));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServerError::Serve(e.to_string()));
    ctrl.shutdown().await;
    served
}
