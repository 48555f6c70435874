//! A container's environment and command line, built as the kubelet builds them: `envFrom`, then
//! `env` in order (with `$(VAR)` expanded from the variables defined before it), then `$(VAR)` in
//! `command` and `args` from the final environment. Also the ServiceAccount kubeconfig that
//! stands in for the projected token volume. It must not start processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectFieldSelector, Pod, Secret};
use kube::Api;

use crate::Ctx;

/// Expands `$(VAR)` references with `lookup`, exactly as Kubernetes' `expansion.Expand` does:
/// `$$` is an escaped `$`, a reference to an undefined variable stays as written, and a `$`
/// that starts neither is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(next) = after.chars().next() else {
            // A trailing `$` is kept as it is.
            out.push('$');
            rest = "";
            break;
        };
        match next {
            '$' => {
                out.push('$');
                rest = &after[1..];
            }
            '(' => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    // An unterminated reference is kept; scanning resumes after `$(`.
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            c => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// An ordered environment where a later definition replaces an earlier one in place, as the
/// kubelet's map of variables does.
#[derive(Default, Debug, Clone)]
pub struct Env {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Env {
    pub fn set(&mut self, name: &str, value: String) {
        match self.index.get(name) {
            Some(&i) => self.vars[i].1 = value,
            None => {
                self.index.insert(name.to_string(), self.vars.len());
                self.vars.push((name.to_string(), value));
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.vars[i].1.as_str())
    }

    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// Everything about the pod that `fieldRef` and the base environment need.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: &'a str,
    /// The kubeconfig with the pod's ServiceAccount token, when the pod mounts one.
    pub kubeconfig: Option<&'a Path>,
}

/// A container's environment, in two parts.
pub struct ContainerEnv {
    /// What Kubernetes defines for the container (the `kubernetes` service variables, `envFrom`,
    /// `env`): the only variables `$(VAR)` may name, as in Kubernetes.
    pub defined: Env,
    /// What the process gets: what an image would bring (`PATH` to find programs, `HOME`, the
    /// locale, `HOSTNAME`), here from the node agent's own environment, the ServiceAccount's
    /// `KUBECONFIG`, then everything `defined`.
    pub full: Env,
}

pub async fn container_env(ctx: &Ctx, facts: &PodFacts<'_>, c: &Container) -> Result<ContainerEnv> {
    let pod = facts.pod;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Env::default();
    // The real API server, where the kubelet's service links would name the `kubernetes`
    // Service's cluster IP, which nothing routes here.
    env.set("KUBERNETES_SERVICE_HOST", ctx.api.host.clone());
    env.set("KUBERNETES_SERVICE_PORT", ctx.api.port.to_string());
    env.set("KUBERNETES_SERVICE_PORT_HTTPS", ctx.api.port.to_string());

    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            match api.get_opt(&r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set_from(&mut env, &prefix, &k, v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("configmap {:?} not found", r.name),
            }
        }
        if let Some(r) = &from.secret_ref {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            match api.get_opt(&r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set_from(&mut env, &prefix, &k, String::from_utf8_lossy(&v.0).into());
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("secret {:?} not found", r.name),
            }
        }
    }

    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_ref(facts, f)?
            } else if let Some(r) = &from.secret_key_ref {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
                let optional = r.optional == Some(true);
                match api.get_opt(&r.name).await? {
                    Some(s) => match s.data.unwrap_or_default().get(&r.key) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if optional => continue,
                        None => bail!("couldn't find key {} in Secret {}/{}", r.key, ns, r.name),
                    },
                    None if optional => continue,
                    None => bail!("secret {:?} not found", r.name),
                }
            } else if let Some(r) = &from.config_map_key_ref {
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
                let optional = r.optional == Some(true);
                match api.get_opt(&r.name).await? {
                    Some(cm) => match cm.data.unwrap_or_default().get(&r.key) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => {
                            bail!("couldn't find key {} in ConfigMap {}/{}", r.key, ns, r.name)
                        }
                    },
                    None if optional => continue,
                    None => bail!("configmap {:?} not found", r.name),
                }
            } else if from.resource_field_ref.is_some() {
                bail!(
                    "env {}: resourceFieldRef is not supported by the test node agent",
                    e.name
                );
            } else {
                bail!("env {}: valueFrom names no source", e.name);
            }
        } else {
            let raw = e.value.clone().unwrap_or_default();
            expand(&raw, |name| env.get(name).map(str::to_string))
        };
        env.set(&e.name, value);
    }

    let mut full = Env::default();
    for name in ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"] {
        if let Ok(v) = std::env::var(name) {
            full.set(name, v);
        }
    }
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    full.set("HOSTNAME", hostname);
    if let Some(k) = facts.kubeconfig {
        full.set("KUBECONFIG", k.display().to_string());
    }
    for (k, v) in env.vars() {
        full.set(k, v.clone());
    }
    Ok(ContainerEnv { defined: env, full })
}

/// An `envFrom` key; names with `=` cannot be environment variables and are skipped, as the
/// kubelet skips them.
fn set_from(env: &mut Env, prefix: &str, key: &str, value: String) {
    let name = format!("{prefix}{key}");
    if name.is_empty() || name.contains('=') {
        tracing::warn!(%name, "envFrom key skipped: not a valid environment variable name");
        return;
    }
    env.set(&name, value);
}

fn field_ref(facts: &PodFacts<'_>, f: &ObjectFieldSelector) -> Result<String> {
    let pod = facts.pod;
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_value = |m: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        m.as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_default()
    };
    let all = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let path = f.field_path.as_str();
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => all(&meta.labels),
        "metadata.annotations" => all(&meta.annotations),
        "spec.nodeName" => facts.node_name.to_string(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            if let Some(k) = subscript("metadata.labels") {
                map_value(&meta.labels, &k)
            } else if let Some(k) = subscript("metadata.annotations") {
                map_value(&meta.annotations, &k)
            } else {
                bail!("fieldRef {path:?} is not supported by the test node agent")
            }
        }
    })
}

/// The container's command line with `$(VAR)` expanded from its final environment. The image is
/// not run: the program (the first word of `command`) is looked up on the node agent's PATH.
pub fn command_line(c: &Container, env: &Env) -> Result<Vec<String>> {
    let lookup = |name: &str| env.get(name).map(str::to_string);
    let mut argv: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|s| expand(s, lookup))
        .collect();
    if argv.is_empty() {
        bail!(
            "container {:?} has no command: the test node agent runs no images, so it has no \
             entrypoint to take one from",
            c.name
        );
    }
    argv.extend(c.args.iter().flatten().map(|s| expand(s, lookup)));
    Ok(argv)
}

/// Finds `program` as a shell would: as a path when it has a `/`, else on `path`.
pub fn find_program(program: &str, path: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(anyhow!("exec: {program:?}: no such executable file"))
        };
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| anyhow!("exec: {program:?}: executable file not found in $PATH"))
}

/// Writes a kubeconfig for a pod's ServiceAccount: the API server with its CA, and the token
/// file the node agent keeps fresh. kube-rs (`Config::infer`) and kubectl read `tokenFile`
/// again as it changes.
pub fn write_pod_kubeconfig(ctx: &Ctx, dir: &Path, namespace: &str) -> Result<PathBuf> {
    let path = dir.join("kubeconfig");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": ctx.api.server,
            "certificate-authority-data": ctx.api.ca_data,
        }}],
        "users": [{"name": "serviceaccount", "user": {"tokenFile": dir.join("token")}}],
        "contexts": [{"name": "serviceaccount", "context": {
            "cluster": "cluster", "user": "serviceaccount", "namespace": namespace,
        }}],
        "current-context": "serviceaccount",
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "POD_IP" => Some("198.18.0.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_like_kubernetes() {
        let cases = [
            ("$(PORT)", "8080"),
            ("--bind $(POD_IP):$(PORT)", "--bind 198.18.0.2:8080"),
            ("$$(PORT)", "$(PORT)"),
            ("$$$(PORT)", "$8080"),
            ("$(MISSING)", "$(MISSING)"),
            ("$(EMPTY)x", "x"),
            ("a$", "a$"),
            ("$x", "$x"),
            ("$(PORT", "$(PORT"),
            ("$(", "$("),
            ("$()", "$()"),
            ("héllo $é $(PORT)", "héllo $é 8080"),
            ("no refs", "no refs"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, look), want, "input {input:?}");
        }
    }

    #[test]
    fn later_definitions_replace_in_place() {
        let mut env = Env::default();
        env.set("A", "1".into());
        env.set("B", "2".into());
        env.set("A", "3".into());
        assert_eq!(
            env.vars(),
            &[("A".into(), "3".into()), ("B".into(), "2".into())]
        );
    }
}
