//! The parts of an Executor's pod that every Kubernetes rendering of a Flow shares (the Knative
//! export and the Flow controller), so that both run an Executor the same way: requests and
//! limits from the JCloud instance tier, the environment (secrets as `secretKeyRef`), storage, the
//! Executor's own command inside its container, and the shim command line that wraps it. Pure.
//! It must not choose images, object names or object kinds: each renderer does.

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvVar, EnvVarSource, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, ResourceRequirements, SecretKeySelector, Volume,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;
use zeroflow_spec::{Executor, Flow, Resources, Storage, StorageKind, Uses};

/// Where `jcloud.resources.storage` is mounted, as on JCloud.
pub const DATA_DIR: &str = "/data";
/// Where generated files (the Flow, inline Executor configs) are mounted from a ConfigMap.
pub const CONFIG_DIR: &str = "/etc/zeroflow";
/// Name of the storage volume in a pod.
pub const DATA_VOLUME: &str = "data";
/// The size of an `efs`/`ebs` claim whose YAML gives none (JCloud's default).
const DEFAULT_CLAIM_BYTES: u64 = 5_000_000_000;

/// CPU, memory and GPUs of a JCloud instance tier, as requests and limits (equal: JCloud's
/// tiers are reserved, not burstable), plus ephemeral storage when that is the Executor's.
pub fn resources(r: &Resources) -> ResourceRequirements {
    let i = &r.instance;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if i.cpu > 0.0 {
        let cpu = Quantity(format!("{}m", (i.cpu * 1000.0).round() as u64));
        requests.insert("cpu".to_string(), cpu.clone());
        limits.insert("cpu".to_string(), cpu);
    }
    if i.memory_gib > 0.0 {
        let mem = Quantity(format!("{}Mi", (i.memory_gib * 1024.0).round() as u64));
        requests.insert("memory".to_string(), mem.clone());
        limits.insert("memory".to_string(), mem);
    }
    if i.gpus > 0 {
        limits.insert("nvidia.com/gpu".to_string(), Quantity(i.gpus.to_string()));
    }
    if let Some(s) = &r.storage
        && s.kind == StorageKind::Ephemeral
        && let Some(size) = s.size
    {
        requests.insert("ephemeral-storage".to_string(), Quantity(size.to_string()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..Default::default()
    }
}

/// The environment of shard `shard` of `e`: the Flow's and the Executor's `env`, the shard's id
/// when there are several, and `env_from_secret` as references to Kubernetes Secrets. Sorted by
/// name, one entry per name (a secret wins over a plain value of the same name).
pub fn executor_env(flow: &Flow, e: &Executor, shard: u32) -> Vec<EnvVar> {
    let plain = |k: &str, v: String| EnvVar {
        name: k.to_string(),
        value: Some(v),
        ..Default::default()
    };
    let mut env: BTreeMap<&str, EnvVar> = BTreeMap::new();
    for (k, v) in flow.env.iter().chain(&e.env) {
        env.insert(k, plain(k, v.clone()));
    }
    if e.shards > 1 {
        // As locally: which shard this is, for programs that are not `jina executor`.
        env.insert(
            "ZEROFLOW_SHARD_ID",
            plain("ZEROFLOW_SHARD_ID", shard.to_string()),
        );
        env.insert(
            "ZEROFLOW_SHARDS",
            plain("ZEROFLOW_SHARDS", e.shards.to_string()),
        );
    }
    for (k, s) in &e.env_from_secret {
        env.insert(
            k,
            EnvVar {
                name: k.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: super::names::secret(&s.name),
                        key: s.key.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    env.into_values().collect()
}

/// The volume that holds `storage`, and the claim to make for it (`efs`/`ebs`) named `claim`.
/// efs is shared by every replica; ebs is one disk (the spec refuses it with autoscale).
pub fn storage_volume(s: &Storage, claim: &str) -> (Volume, Option<PersistentVolumeClaimSpec>) {
    match s.kind {
        StorageKind::Ephemeral => (
            Volume {
                name: DATA_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: s.size.map(|n| Quantity(n.to_string())),
                    ..Default::default()
                }),
                ..Default::default()
            },
            None,
        ),
        StorageKind::Efs | StorageKind::Ebs => {
            let mode = if s.kind == StorageKind::Efs {
                "ReadWriteMany"
            } else {
                "ReadWriteOnce"
            };
            let size = s.size.unwrap_or(DEFAULT_CLAIM_BYTES);
            let spec = PersistentVolumeClaimSpec {
                access_modes: Some(vec![mode.into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(size.to_string()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let volume = Volume {
                name: DATA_VOLUME.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            (volume, Some(spec))
        }
    }
}

/// The Executor's own command in its container, for shard `shard`, before the shim wraps it:
/// its `command:` as written, else `jina executor` with its `uses`. Paths stay as written,
/// relative to the container's working folder (the project folder, or the image's own). An
/// inline `uses:` mapping becomes a file in [`CONFIG_DIR`], added to `config_files` (name ->
/// text) for the renderer to mount.
pub fn executor_command(
    e: &Executor,
    shard: u32,
    config_files: &mut BTreeMap<String, String>,
) -> Vec<String> {
    if let Some(cmd) = &e.command {
        return cmd.clone();
    }
    // With storage, the workspace is on it (at DATA_DIR), so what the Executor keeps there
    // outlives its pods; a relative `workspace` goes under it.
    let workspace = match (&e.workspace, &e.jcloud.resources.storage) {
        (Some(w), Some(_)) if !w.starts_with('/') => Some(format!("{DATA_DIR}/{w}")),
        (None, Some(_)) => Some(DATA_DIR.to_string()),
        (w, _) => w.clone(),
    };
    let e = &Executor {
        workspace,
        ..e.clone()
    };
    let args = |uses: String| {
        crate::local::jina_executor_args(e, "jina", uses, shard, |p: &str| p.to_string())
    };
    match &e.uses {
        Uses::PassThrough => args("BaseExecutor".into()),
        Uses::Class { name } => args(name.clone()),
        Uses::Config { path } => args(path.clone()),
        Uses::Inline { config } => {
            // jina's --uses takes a path: the mapping goes into a ConfigMap, mounted here.
            let file = inline_config_file(&e.name);
            config_files.insert(file.clone(), config.to_string());
            args(format!("{CONFIG_DIR}/{file}"))
        }
        // Images built for Jina (`jina hub push`) hold their config.yml in the working folder,
        // which is what their own entrypoint runs.
        Uses::Docker { .. } | Uses::Hub { .. } => args("config.yml".into()),
    }
}

/// The file name of an Executor's inline `uses:` mapping in [`CONFIG_DIR`].
pub fn inline_config_file(executor: &str) -> String {
    format!("{}.uses.yml", crate::knative::dns_label(executor, 200))
}

/// `zeroflow-shim` (at `shim`) serving `e` on `host`:`port`, with `extra` flags, wrapping
/// `command`.
pub fn shim_command(
    shim: &str,
    e: &Executor,
    (host, port): (&str, u16),
    extra: Vec<String>,
    command: Vec<String>,
) -> Vec<String> {
    let mut v = vec![
        shim.to_string(),
        "--executor".into(),
        e.name.clone(),
        "--host".into(),
        host.into(),
        "--port".into(),
        port.to_string(),
        "--startup-timeout".into(),
        format!("{}s", e.jcloud.autoscale.revision_timeout.as_secs()),
    ];
    v.extend(extra);
    v.push("--".into());
    v.extend(command);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(yaml: &str) -> Flow {
        crate::server::control::load_spec_with(yaml, None)
            .expect("loads")
            .flow
    }

    #[test]
    fn instance_tiers_are_equal_requests_and_limits() {
        let f = flow(
            "jtype: Flow\nexecutors:\n- name: a\n  jcloud:\n    resources:\n      instance: C3\n      \
             storage:\n        kind: ephemeral\n        size: 1G\n",
        );
        let r = resources(&f.executors[0].jcloud.resources);
        let (req, lim) = (r.requests.unwrap(), r.limits.unwrap());
        assert_eq!(req["cpu"], lim["cpu"]);
        assert_eq!(req["memory"], lim["memory"]);
        assert!(req.contains_key("ephemeral-storage"));
        assert!(!lim.contains_key("ephemeral-storage"));
    }

    #[test]
    fn secrets_are_references_and_win_over_plain_values() {
        let f = flow(
            "jtype: Flow\nwith:\n  env:\n    TOKEN: plain\n    A: b\nexecutors:\n- name: a\n  \
             env_from_secret:\n    TOKEN:\n      name: My_Secret\n      key: token\n",
        );
        let env = executor_env(&f, &f.executors[0], 0);
        let names: Vec<_> = env.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["A", "TOKEN"]);
        let r = env[1]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("my-secret", "token"));
        assert_eq!(env[1].value, None);
    }

    #[test]
    fn commands_by_uses() {
        let f = flow(
            "jtype: Flow\nexecutors:\n- name: cmd\n  command: [prog, --port, '{port}']\n\
             - name: cls\n  uses: Enc\n  py_modules: [enc.py]\n  jcloud:\n    resources:\n      \
             storage:\n        kind: efs\n- name: inl\n  uses:\n    jtype: Enc\n",
        );
        let mut files = BTreeMap::new();
        assert_eq!(
            executor_command(&f.executors[0], 0, &mut files),
            ["prog", "--port", "{port}"]
        );
        let cls = executor_command(&f.executors[1], 0, &mut files);
        let at = |flag: &str| cls[cls.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(at("--uses"), "Enc");
        assert_eq!(
            at("--py-modules"),
            "enc.py",
            "relative to the project folder"
        );
        assert_eq!(at("--workspace"), DATA_DIR);
        let inl = executor_command(&f.executors[2], 0, &mut files);
        assert!(inl.contains(&format!("{CONFIG_DIR}/inl.uses.yml")));
        assert!(files.contains_key("inl.uses.yml"));
    }
}
