//! A real Kubernetes cluster for end-to-end tests: `scripts/test-cluster.sh up` in a temporary
//! folder (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and the test node
//! agent `zeroflow-test-node` in the kubelet's place), `down` when dropped. It must not start or
//! stop the components itself: the script is the one way in and out, for tests and for checks
//! outside the test suite alike.
//!
//! Needs the Kubernetes binaries (`bash scripts/setup-kube.sh`) and the workspace's binaries
//! (`cargo build --workspace --bins`, for `zeroflow-test-node`). Pods run as local processes: a
//! container's program is looked up on [`node_path`] (target/debug, then the venv's bin, then
//! the system PATH); Pod addresses are 198.18.N.x and NodePorts listen on [`TestCluster::node_ip`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::workspace_root;

/// How long `up` may take: about 15 s on an idle machine, much more on a busy 2-core CI box.
const UP_DEADLINE: Duration = Duration::from_secs(180);

/// The PATH the node agent (and so every Pod's process) gets: the workspace's binaries first
/// (`zeroflow-shim`, `jc`, the agent itself), then the Python venv's bin (`jina`, `python`),
/// then the system PATH.
pub fn node_path() -> String {
    let bin_dir = crate::bin("zeroflow-test-node")
        .parent()
        .expect("target/<profile>")
        .to_path_buf();
    let mut parts = vec![bin_dir.display().to_string()];
    let venv = std::env::var_os("ZEROFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    if let Some(venv_bin) = venv.parent().filter(|d| d.exists()) {
        parts.push(venv_bin.display().to_string());
    }
    parts.push(std::env::var("PATH").unwrap_or_default());
    parts.join(":")
}

/// Runs the test cluster's kubectl (`kube_bin_dir()/kubectl`, not the system's) with
/// `kubeconfig`; returns stdout and stderr together, and panics with them if it fails, since a
/// test cannot go on past a failed kubectl.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(crate::apiserver::kube_bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl {}: {text}", args.join(" "));
    text
}

/// A running test cluster. Dropping it runs `scripts/test-cluster.sh down`; the folder (with
/// every component's log) is removed unless the test is failing, so a failure can be read.
pub struct TestCluster {
    dir: PathBuf,
    client: kube::Client,
    env: HashMap<String, String>,
}

fn script() -> PathBuf {
    workspace_root().join("scripts/test-cluster.sh")
}

impl TestCluster {
    /// Starts a cluster in a fresh temporary folder and waits until it is usable: API server
    /// healthy, node Ready, the default ServiceAccount made. Must run inside a tokio runtime.
    pub async fn up() -> Result<TestCluster> {
        // kube uses rustls, and the workspace enables more than one provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("zeroflow-cluster-")
            .tempdir()
            .context("temp dir for the test cluster")?
            .keep();
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(script())
            .arg("up")
            .arg(&dir)
            .env("PATH", node_path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(UP_DEADLINE, cmd.output()).await {
            Ok(out) => out.context("running scripts/test-cluster.sh up")?,
            Err(_) => {
                down(&dir);
                bail!(
                    "scripts/test-cluster.sh up did not finish within {UP_DEADLINE:?}; logs in {}",
                    dir.display()
                );
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        print!("{stdout}");
        if !out.status.success() {
            bail!(
                "scripts/test-cluster.sh up failed ({}); logs in {}:\n{stdout}\n{stderr}",
                out.status,
                dir.display()
            );
        }
        let env: HashMap<String, String> = std::fs::read_to_string(dir.join("cluster.env"))
            .context("reading cluster.env")?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let kubeconfig = kube::config::Kubeconfig::read_from(dir.join("kubeconfig"))
            .context("reading the cluster's kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .context("the cluster's kubeconfig")?;
        let client = kube::Client::try_from(config).context("API client")?;
        Ok(TestCluster { dir, client, env })
    }

    /// A client with the admin identity (`system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig (`DIR/kubeconfig`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The cluster's folder: logs (`*.log`, container logs under `node/logs/`), PKI, pids.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Node's address: NodePorts listen here (kube-proxy style).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.value("NODE_IP")
            .and_then(|v| v.parse().ok())
            .expect("cluster.env has NODE_IP")
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn api_url(&self) -> String {
        self.value("API_URL").expect("cluster.env has API_URL")
    }

    /// The CA certificate (PEM) that signed the API server's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// A value of `DIR/cluster.env` (SLOT, NODE_NAME, NODE_IP, POD_SUBNET, API_PORT, ...).
    pub fn value(&self, key: &str) -> Option<String> {
        self.env.get(key).cloned()
    }

    /// A client that authenticates with `token` (say, from the TokenRequest API) instead of
    /// the admin certificate, so RBAC applies to it.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig_path())?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        kube::Client::try_from(config).map_err(|e| anyhow!("API client with a token: {e}"))
    }
}

fn down(dir: &Path) {
    match std::process::Command::new("bash")
        .arg(script())
        .arg("down")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                eprintln!(
                    "scripts/test-cluster.sh down {} failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Err(e) => eprintln!("running scripts/test-cluster.sh down: {e}"),
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        down(&self.dir);
        if std::thread::panicking() {
            eprintln!("test cluster logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The field managers that own `spec.replicas` of a Deployment (the autoscaler's field: the
/// controller's applies must never hold it for an Executor).
pub fn replicas_owners(d: &k8s_openapi::api::apps::v1::Deployment) -> Vec<String> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect()
}
