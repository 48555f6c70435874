//! NodePorts, as kube-proxy's userspace mode served them: for every Service of type NodePort or
//! LoadBalancer, a listener on the node's address at each `nodePort` that forwards each TCP
//! connection to a ready endpoint of the Service (from its EndpointSlices), round robin. A
//! listener closes when its Service or port goes. It must not route cluster IPs (nothing here
//! sends traffic to them) nor UDP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use crate::Ctx;

/// One forwarded port: the Service and the name of its port (EndpointSlices name ports so).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    namespace: String,
    service: String,
    port_name: String,
    node_port: u16,
}

pub async fn run(ctx: Arc<Ctx>) {
    let (slices, writer) = reflector::store::<EndpointSlice>();
    let slice_api: Api<EndpointSlice> = Api::all(ctx.client.clone());
    tokio::spawn(
        reflector::reflector(
            writer,
            watcher::watcher(slice_api, watcher::Config::default()),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| async {}),
    );
    let (services, writer) = reflector::store::<Service>();
    let svc_api: Api<Service> = Api::all(ctx.client.clone());
    let mut events = reflector::reflector(
        writer,
        watcher::watcher(svc_api, watcher::Config::default()),
    )
    .default_backoff()
    .boxed();
    let mut listeners: HashMap<Key, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some(ev) = events.next().await {
        if let Err(e) = ev {
            tracing::warn!(error = %e, "service watch failed; retrying");
            continue;
        }
        let wanted = wanted(&services);
        listeners.retain(|k, task| {
            let keep = wanted.contains(k);
            if !keep {
                tracing::info!(service = %format!("{}/{}", k.namespace, k.service), node_port = k.node_port, "closing NodePort");
                task.abort();
            }
            keep
        });
        for k in wanted {
            listeners
                .entry(k.clone())
                .or_insert_with(|| tokio::spawn(listen(ctx.node_ip.into(), k, slices.clone())));
        }
    }
}

fn wanted(services: &Store<Service>) -> Vec<Key> {
    let mut out = vec![];
    for svc in services.state() {
        let Some(spec) = &svc.spec else { continue };
        if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
            continue;
        }
        for p in spec.ports.iter().flatten() {
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
                out.push(Key {
                    namespace: svc.namespace().unwrap_or_default(),
                    service: svc.name_any(),
                    port_name: p.name.clone().unwrap_or_default(),
                    node_port: np,
                });
            }
        }
    }
    out
}

async fn listen(ip: IpAddr, key: Key, slices: Store<EndpointSlice>) {
    let addr = SocketAddr::new(ip, key.node_port);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                // The port may still be held by the listener of a Service just replaced.
                tracing::warn!(%addr, error = %e, "NodePort not bound yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(service = %format!("{}/{}", key.namespace, key.service), %addr, "NodePort open");
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let backends = ready_endpoints(&slices, &key);
        if backends.is_empty() {
            // As kube-proxy rejects a connection to a Service with no ready endpoint.
            tracing::debug!(service = %key.service, "no ready endpoint; connection refused");
            continue;
        }
        let to = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        tokio::spawn(async move {
            let mut conn = conn;
            match tokio::net::TcpStream::connect(to).await {
                Ok(mut up) => {
                    let _ = conn.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                }
                Err(e) => tracing::debug!(%to, error = %e, "endpoint refused the connection"),
            }
        });
    }
}

/// The ready endpoints of the Service's port, in a stable order.
fn ready_endpoints(slices: &Store<EndpointSlice>, key: &Key) -> Vec<SocketAddr> {
    let mut out = vec![];
    for s in slices.state() {
        if s.namespace().as_deref() != Some(key.namespace.as_str())
            || s.labels().get("kubernetes.io/service-name") != Some(&key.service)
        {
            continue;
        }
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == key.port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            // A missing `ready` means ready.
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    out.sort();
    out
}
