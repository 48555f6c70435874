//! A real Kubernetes API server for integration tests that need no nodes: Kubernetes' own
//! `kube-apiserver` (built by `scripts/setup-kube.sh`) on a private etcd, so that rendered
//! manifests are checked by the real schema validation, admission and server-side apply. It starts
//! in seconds; tests that need Pods to run use the whole test cluster (`crate::cluster`).
//!
//! What it is not: no controller manager, scheduler or node, so nothing reconciles what is
//! applied (a Deployment stays a Deployment). Namespaces must exist before objects go into them.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::AuthInfo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::time::Instant;

/// How long the server may take to answer `/healthz`: the test machines are busy 2-core boxes,
/// where a cold start under a parallel `cargo test` can take tens of seconds.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long a registered CRD may take to become `Established` and served.
const CRD_DEADLINE: Duration = Duration::from_secs(60);
/// The field manager of every server-side apply made here.
pub const FIELD_MANAGER: &str = "zeroflow";

/// The Kubernetes release the test binaries are built from (`scripts/setup-kube.sh`).
pub const KUBE_VERSION: &str = "v1.36.3";

/// Where `scripts/setup-kube.sh` keeps the Kubernetes binaries: a cache outside the checkout,
/// keyed by version.
pub fn kube_bin_dir() -> PathBuf {
    let version = std::env::var("KUBE_VERSION").unwrap_or_else(|_| KUBE_VERSION.to_string());
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("zeroflow/kube").join(version).join("bin")
}

/// The `kube-apiserver` binary that `scripts/setup-kube.sh` builds.
pub fn binary_path() -> PathBuf {
    kube_bin_dir().join("kube-apiserver")
}

/// A running etcd plus `kube-apiserver` on free loopback ports, with its own CA and an
/// admin client certificate. Dropping it kills both process groups and removes its files.
pub struct ApiServer {
    etcd: Child,
    server: Child,
    url: String,
    kubeconfig: PathBuf,
    client: kube::Client,
    // Last: it must outlive the processes, whose data and logs it holds (fields drop in order,
    // after `Drop::drop` has killed them).
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts etcd and the server and waits until `/readyz` answers ok (up to 120 s).
    /// Must run inside a tokio runtime (`#[tokio::test]`).
    pub async fn start() -> Result<ApiServer> {
        // kube uses rustls. When the build enables both of rustls' providers (aws-sdk-s3 brings
        // aws-lc-rs; kube with default features, elsewhere in the workspace, brings ring),
        // rustls has no default and panics at the first TLS client. Another test may have
        // installed one already: that is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

        let bin = binary_path();
        if !bin.exists() {
            bail!(
                "{} is missing: run `bash scripts/setup-kube.sh` (scripts/test.sh does)",
                bin.display()
            );
        }
        let etcd_bin = which("etcd")
            .ok_or_else(|| anyhow!("etcd is not on PATH: run `bash scripts/setup-kube.sh`"))?;

        let dir = tempfile::Builder::new()
            .prefix("zeroflow-apiserver-")
            .tempdir()
            .context("temp dir for etcd and the API server")?;
        let d = dir.path();
        let certs = Certs::write(d)?;

        let (etcd_client, etcd_peer, api_port) = (free_port()?, free_port()?, free_port()?);
        let url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = d.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &url, &certs)?;
        let client = kube::Client::try_from(client_config(&url, &certs)?).context("kube client")?;

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = spawn(
            Command::new(etcd_bin)
                .arg("--name=zeroflow")
                .arg(format!("--data-dir={}", d.join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=zeroflow={peer_url}"))
                .arg("--log-level=warn")
                .arg("--logger=zap"),
            &d.join("etcd.log"),
        )?;
        // The server retries etcd on its own, so both start at once; /healthz covers etcd too.
        let server = spawn(
            Command::new(&bin)
                .current_dir(d)
                .arg(format!("--etcd-servers={etcd_url}"))
                .arg("--bind-address=127.0.0.1")
                // Without it the server derives its address from the default route, which a
                // test network namespace does not have.
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--secure-port={api_port}"))
                .arg(format!("--tls-cert-file={}", certs.serving_cert.display()))
                .arg(format!(
                    "--tls-private-key-file={}",
                    certs.serving_key.display()
                ))
                .arg(format!("--client-ca-file={}", certs.ca.display()))
                .arg(format!("--cert-dir={}", d.join("certs").display()))
                .arg(format!("--service-account-issuer={url}"))
                .arg(format!(
                    "--service-account-key-file={}",
                    certs.sa_pub.display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    certs.sa_key.display()
                ))
                // Only data in etcd: nothing routes to these addresses.
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--authorization-mode=Node,RBAC")
                .arg("--enable-priority-and-fairness=false"),
            &d.join("apiserver.log"),
        );
        let server = match server {
            Ok(s) => s,
            Err(e) => {
                kill_group(&mut etcd);
                return Err(e);
            }
        };

        let mut me = ApiServer {
            etcd,
            server,
            url,
            kubeconfig,
            client,
            dir,
        };
        me.wait_healthy().await?;
        Ok(me)
    }

    /// A client authenticated as an admin (`O=system:masters`), from an explicit config (never
    /// the user's kubeconfig). Cheap: clones share one connection pool.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig for this server (admin client certificate, its CA), e.g. for
    /// `kubectl --kubeconfig PATH apply -f FILE`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The temporary folder with the certificates, etcd's data and the two processes' logs
    /// (`etcd.log`, `apiserver.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server with Knative's Service CRD (`../shared/data/knative/service-crd.yaml`)
    /// registered, and its `serving.knative.dev/v1` Service resource.
    pub async fn with_knative_services() -> Result<(ApiServer, ApiResource)> {
        let server = ApiServer::start().await?;
        let crd = server
            .register_crd(crate::workspace_root().join("../shared/data/knative/service-crd.yaml"))
            .await?;
        let ksvc = api_resource(&crd, "v1")?;
        Ok((server, ksvc))
    }

    /// Creates or updates the CustomResourceDefinition in the YAML file `yaml_path` (one
    /// document), and waits until it is `Established` and its resources are served.
    pub async fn register_crd(
        &self,
        yaml_path: impl AsRef<Path>,
    ) -> Result<CustomResourceDefinition> {
        let path = yaml_path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the CRD {}", path.display()))?;
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("parsing the CRD {}", path.display()))?;
        let name = crd
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("the CRD in {} has no metadata.name", path.display()))?;
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).validation_strict(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying the CRD {name}"))?;

        let end = Instant::now() + CRD_DEADLINE;
        let mut backoff = Backoff::new();
        let established = loop {
            let got = api
                .get(&name)
                .await
                .with_context(|| format!("reading {name}"))?;
            let conditions = got
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .cloned()
                .unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
            {
                break got;
            }
            if Instant::now() >= end {
                bail!(
                    "CRD {name} not Established after {CRD_DEADLINE:?}; conditions: {conditions:?}"
                );
            }
            backoff.wait().await;
        };

        // Established means the CRD is accepted; also wait until a list of every served version
        // answers, so that the first apply of a resource cannot meet a 404.
        for ar in api_resources(&established) {
            let dynamic: Api<DynamicObject> = Api::all_with(self.client(), &ar);
            let mut backoff = Backoff::new();
            loop {
                match dynamic.list(&Default::default()).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() >= end => {
                        return Err(e).with_context(|| {
                            format!(
                                "{}/{} not served after {CRD_DEADLINE:?}",
                                ar.api_version, ar.plural
                            )
                        });
                    }
                    Err(_) => backoff.wait().await,
                }
            }
        }
        Ok(established)
    }

    /// Server-side apply of `object` (field manager "zeroflow", `fieldValidation=Strict`) into `namespace` (None for a cluster-scoped resource). Returns the
    /// object as the server stored it (with defaults, without anything the schema prunes).
    /// Unknown or duplicate fields, wrongly typed values and schema violations are errors that
    /// name the field (the server's message is kept whole), never silently dropped. The object needs `metadata.name`; `apiVersion` and `kind` are
    /// taken from `api_resource` when missing.
    pub async fn apply_strict(
        &self,
        api_resource: &ApiResource,
        namespace: Option<&str>,
        mut object: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let name = object
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| anyhow!("apply_strict: the object has no metadata.name"))?
            .to_string();
        let map = object
            .as_object_mut()
            .ok_or_else(|| anyhow!("apply_strict: the object is not a JSON object"))?;
        map.entry("apiVersion")
            .or_insert_with(|| api_resource.api_version.clone().into());
        map.entry("kind")
            .or_insert_with(|| api_resource.kind.clone().into());

        if let Some(ns) = namespace {
            self.ensure_namespace(ns).await?;
        }
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(self.client(), ns, api_resource),
            None => Api::all_with(self.client(), api_resource),
        };
        // Strict: the server's default is Warn, which only sends a warning header (that kube
        // does not surface) for duplicate fields and keeps the last one. (A field not in the
        // schema or of the wrong type fails server-side apply even without Strict.)
        let params = PatchParams::apply(FIELD_MANAGER).validation_strict();
        let stored = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|e| match e {
                // Keep the server's message whole: it names the field that was refused.
                // SSA reports a field of the wrong type or not in the schema as code 500 with
                // no reason ("failed to create typed patch object"), schema violations as 422.
                kube::Error::Api(status) => anyhow!(
                    "server refused {} {name} (code {}{}): {}",
                    api_resource.kind,
                    status.code,
                    if status.reason.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", status.reason)
                    },
                    status.message
                ),
                other => anyhow::Error::new(other),
            })?;
        serde_json::to_value(stored).context("serializing the stored object")
    }

    /// Creates the namespace `ns` unless it exists (the server's NamespaceLifecycle admission
    /// refuses objects in a namespace that does not).
    pub async fn ensure_namespace(&self, ns: &str) -> Result<()> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client());
        let object = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
        });
        api.patch(
            ns,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("creating the namespace {ns}"))?;
        Ok(())
    }

    /// Polls `/readyz` until it answers "ok": ready means the post-start hooks have run (the
    /// default namespaces and RBAC roles exist), so the first request of a test is served.
    async fn wait_healthy(&mut self) -> Result<()> {
        let end = Instant::now() + START_DEADLINE;
        let mut backoff = Backoff::new();
        loop {
            for (what, child, log) in [
                ("etcd", &mut self.etcd, "etcd.log"),
                ("kube-apiserver", &mut self.server, "apiserver.log"),
            ] {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{what} exited with {status} before the server was healthy; {log}:\n{}",
                        tail(&self.dir.path().join(log))
                    );
                }
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            let last = match self.client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => format!("answered {body:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= end {
                bail!(
                    "kube-apiserver not ready after {START_DEADLINE:?} (last: {last}); \
                     apiserver.log:\n{}\netcd.log:\n{}",
                    tail(&self.dir.path().join("apiserver.log")),
                    tail(&self.dir.path().join("etcd.log"))
                );
            }
            backoff.wait().await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The server first, so that it does not log etcd's disappearance as an error.
        kill_group(&mut self.server);
        kill_group(&mut self.etcd);
    }
}

/// The `ApiResource` of every served version of a CRD, for `Api::<DynamicObject>` and
/// [`ApiServer::apply_strict`].
pub fn api_resources(crd: &CustomResourceDefinition) -> Vec<ApiResource> {
    crd.spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| ApiResource {
            group: crd.spec.group.clone(),
            version: v.name.clone(),
            api_version: format!("{}/{}", crd.spec.group, v.name),
            kind: crd.spec.names.kind.clone(),
            plural: crd.spec.names.plural.clone(),
        })
        .collect()
}

/// The `ApiResource` of one version of a CRD; errors if the CRD does not serve it.
pub fn api_resource(crd: &CustomResourceDefinition, version: &str) -> Result<ApiResource> {
    api_resources(crd)
        .into_iter()
        .find(|ar| ar.version == version)
        .ok_or_else(|| {
            anyhow!(
                "CRD {} serves no version {version}",
                crd.metadata.name.as_deref().unwrap_or("?")
            )
        })
}

/// File paths of the test PKI: one CA signs the serving certificate and the admin client
/// certificate.
struct Certs {
    ca: PathBuf,
    ca_der: Vec<u8>,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// Signs ServiceAccount tokens; `sa_pub` verifies them.
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Certs {
    fn write(dir: &Path) -> Result<Certs> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "zeroflow test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        // The client connects to 127.0.0.1; rustls checks the IP address SAN.
        let mut serving = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        // An admin: RBAC lets the group system:masters do anything.
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, "zeroflow-admin");
        client
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &ca)?;

        let certs = Certs {
            ca: dir.join("ca.crt"),
            ca_der: ca.der().to_vec(),
            serving_cert: dir.join("serving.crt"),
            serving_key: dir.join("serving.key"),
            client_cert: dir.join("admin.crt"),
            client_key: dir.join("admin.key"),
            sa_key: dir.join("service-account.key"),
            sa_pub: dir.join("service-account.pub"),
        };
        let sa_key = KeyPair::generate()?;
        for (path, pem) in [
            (&certs.ca, ca.pem()),
            (&certs.serving_cert, serving_cert.pem()),
            (&certs.serving_key, serving_key.serialize_pem()),
            (&certs.client_cert, client_cert.pem()),
            (&certs.client_key, client_key.serialize_pem()),
            (&certs.sa_key, sa_key.serialize_pem()),
            (&certs.sa_pub, sa_key.public_key_pem()),
        ] {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(certs)
    }
}

fn client_config(url: &str, certs: &Certs) -> Result<kube::Config> {
    let mut config = kube::Config::new(url.parse().context("server url")?);
    config.root_cert = Some(vec![certs.ca_der.clone()]);
    config.auth_info = AuthInfo {
        client_certificate: Some(certs.client_cert.display().to_string()),
        client_key: Some(certs.client_key.display().to_string()),
        ..AuthInfo::default()
    };
    Ok(config)
}

fn write_kubeconfig(path: &Path, url: &str, certs: &Certs) -> Result<()> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "zeroflow-test", "cluster": {
            "server": url,
            "certificate-authority": certs.ca,
        }}],
        "users": [{"name": "zeroflow-admin", "user": {
            "client-certificate": certs.client_cert,
            "client-key": certs.client_key,
        }}],
        "contexts": [{"name": "zeroflow-test", "context": {
            "cluster": "zeroflow-test",
            "user": "zeroflow-admin",
            "namespace": "default",
        }}],
        "current-context": "zeroflow-test",
    });
    std::fs::write(path, serde_yaml_ng::to_string(&kubeconfig)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Spawns `cmd` in its own process group (so that Drop can kill everything it starts), with
/// stdout and stderr to `log`.
fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

fn kill_group(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// A loopback port that is free now. The listener is dropped before the server binds it; on
/// loopback with the kernel's random ephemeral ports a collision is very unlikely.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polling intervals: fast at first, at most 500 ms.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(20))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(500));
    }
}
