//! The Node object: registers it (addresses, capacity, the logs server's port), keeps its Lease
//! in `kube-node-lease` renewed and its status fresh, so the node lifecycle controller keeps it
//! Ready. It must not touch pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::Ctx;

const MANAGER: &str = "zeroflow-test-node";
/// The kubelet's defaults: a Lease renewed every 10 s that lasts 40 s.
const LEASE_SECONDS: i32 = 40;
const RENEW_EVERY: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// Creates or updates the Node and its status.
pub async fn register(ctx: &Ctx, kubelet_port: u16) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": ctx.node_name,
            "labels": {
                "kubernetes.io/hostname": ctx.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "zeroflow.dev/test-node": "true",
            },
        },
        "spec": { "podCIDR": ctx.ips.subnet(), "podCIDRs": [ctx.ips.subnet()] },
    });
    nodes
        .patch(
            &ctx.node_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .with_context(|| format!("registering Node {}", ctx.node_name))?;
    update_status(ctx, kubelet_port).await?;
    renew_lease(ctx).await?;
    tracing::info!(node = %ctx.node_name, ip = %ctx.node_ip, kubelet_port, "node registered");
    Ok(())
}

/// Renews the Lease every 10 s and the status every minute, for as long as the agent runs.
pub async fn heartbeat(ctx: Arc<Ctx>, kubelet_port: u16) {
    let mut lease = tokio::time::interval(RENEW_EVERY);
    let mut status = tokio::time::interval(STATUS_EVERY);
    lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = lease.tick() => if let Err(e) = renew_lease(&ctx).await {
                tracing::warn!(error = %format!("{e:#}"), "renewing the node lease");
            },
            _ = status.tick() => if let Err(e) = update_status(&ctx, kubelet_port).await {
                tracing::warn!(error = %format!("{e:#}"), "updating the node status");
            },
        }
    }
}

async fn update_status(ctx: &Ctx, kubelet_port: u16) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    let resources: BTreeMap<&str, &str> = [
        ("cpu", "8"),
        ("memory", "16Gi"),
        ("pods", "110"),
        ("ephemeral-storage", "100Gi"),
    ]
    .into();
    let version = "v1.36.3";
    let status = json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": ctx.node_ip.to_string()}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "zeroflow test node agent is posting ready status"),
            ],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "", "osImage": "zeroflow test node (processes, no containers)",
                "containerRuntimeVersion": "zeroflow-test-node://0",
                "kubeletVersion": version, "kubeProxyVersion": version,
                "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
            },
        }
    });
    nodes
        .patch_status(
            &ctx.node_name,
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .context("patching the node status")?;
    Ok(())
}

async fn renew_lease(ctx: &Ctx) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": ctx.node_name },
        "spec": {
            "holderIdentity": ctx.node_name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": MicroTime(Timestamp::now()),
        },
    });
    leases
        .patch(
            &ctx.node_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .context("renewing the node lease")?;
    Ok(())
}
