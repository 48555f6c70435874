//! The Flow graph as the gateway walks it: Executors in topological order, each with its shards
//! (each shard a set of replicas), and the walk itself: a request goes to every Executor whose
//! needs are done, parallel branches are merged where they meet, errors stop the walk.

use crate::docs;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared, join_all};
use prost_types::Timestamp;
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use tonic::Status;
use zeroflow_activator::{CallOptions, ReplicaSet};
use zeroflow_proto::jina::{DataRequestProto, HeaderProto, RouteProto};
use zeroflow_spec::when::Condition;
use zeroflow_spec::{Flow, Polling};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Executor {executor} needs {need}, which is not an Executor of this Flow")]
    UnknownNeed { executor: String, need: String },
    #[error("the Flow's `needs` form a cycle through {0}")]
    Cycle(String),
    #[error("Executor {0} has no shard to call")]
    NoShards(String),
    #[error("Executor {executor}: invalid `when` condition: {why}")]
    Condition { executor: String, why: String },
}

pub struct Node {
    pub name: String,
    /// Indices of the nodes this one needs; empty means it starts from the gateway.
    pub needs: Vec<usize>,
    pub shards: Vec<Arc<ReplicaSet>>,
    pub polling: Polling,
    pub timeout: Option<Duration>,
    pub no_reduce: bool,
    pub floating: bool,
    /// `when:`: only the documents it holds for are sent to this Executor.
    pub when: Option<Condition>,
    next_shard: AtomicUsize,
    /// Set once endpoint discovery was started after a first answer (see `call_shards`).
    discovery_started: std::sync::atomic::AtomicBool,
}

pub struct Graph {
    /// Topologically sorted.
    pub nodes: Vec<Node>,
    /// Nodes whose results make the response: those nothing else needs, floating ones excepted.
    ends: Vec<usize>,
    floating: Vec<usize>,
    /// Each Executor needs only the one before it (the common case): walked in a plain loop,
    /// without the shared futures a DAG needs.
    chain: bool,
}

type Outcome = Result<Arc<DataRequestProto>, Status>;

impl Graph {
    /// `shards[executor]` holds one replica set per shard.
    pub fn new(
        flow: &Flow,
        mut shards: HashMap<String, Vec<Arc<ReplicaSet>>>,
        default_timeout: Option<Duration>,
    ) -> Result<Graph, GraphError> {
        let names: HashMap<&str, usize> = flow
            .executors
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(flow.executors.len());
        for e in &flow.executors {
            let mut d = vec![];
            for n in &e.needs {
                if n == "gateway" {
                    continue;
                }
                match names.get(n.as_str()) {
                    Some(i) => d.push(*i),
                    None => {
                        return Err(GraphError::UnknownNeed {
                            executor: e.name.clone(),
                            need: n.clone(),
                        });
                    }
                }
            }
            deps.push(d);
        }
        // Kahn's algorithm keeps declaration order among ready nodes.
        let n = flow.executors.len();
        let mut order = Vec::with_capacity(n);
        let mut placed = vec![false; n];
        while order.len() < n {
            let next = (0..n).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
            match next {
                Some(i) => {
                    placed[i] = true;
                    order.push(i);
                }
                None => {
                    let stuck = (0..n).find(|&i| !placed[i]).unwrap_or(0);
                    return Err(GraphError::Cycle(flow.executors[stuck].name.clone()));
                }
            }
        }
        let pos: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
        let mut nodes = Vec::with_capacity(n);
        for &i in &order {
            let e = &flow.executors[i];
            let sets = shards.remove(&e.name).unwrap_or_default();
            if sets.is_empty() {
                return Err(GraphError::NoShards(e.name.clone()));
            }
            nodes.push(Node {
                name: e.name.clone(),
                needs: deps[i].iter().map(|d| pos[d]).collect(),
                shards: sets,
                polling: e.polling,
                timeout: e.timeout_send.or(default_timeout),
                no_reduce: e.no_reduce,
                floating: e.floating,
                when: e
                    .when
                    .as_ref()
                    .map(Condition::parse)
                    .transpose()
                    .map_err(|why| GraphError::Condition {
                        executor: e.name.clone(),
                        why,
                    })?,
                next_shard: AtomicUsize::new(0),
                discovery_started: std::sync::atomic::AtomicBool::new(false),
            });
        }
        // As in jina, the response comes from the last non-floating Executor as declared; other
        // leaves ("hanging" Executors) and floating ones still run but nobody waits for them.
        let needed: Vec<bool> = (0..n)
            .map(|i| nodes.iter().any(|m| m.needs.contains(&i)))
            .collect();
        let last = order
            .iter()
            .rev()
            .find(|&&i| !flow.executors[i].floating)
            .map(|i| pos[i]);
        let ends: Vec<usize> = last.into_iter().collect();
        let floating: Vec<usize> = (0..n)
            .filter(|&i| !needed[i] && !ends.contains(&i))
            .collect();
        let chain = floating.is_empty()
            && nodes.iter().enumerate().all(|(i, n)| {
                if i == 0 {
                    n.needs.is_empty()
                } else {
                    n.needs == [i - 1]
                }
            })
            && ends == [n.saturating_sub(1)];
        Ok(Graph {
            nodes,
            ends,
            floating,
            chain,
        })
    }

    /// Walks one request through the graph and returns the response for the client.
    pub async fn run(
        self: &Arc<Self>,
        mut req: DataRequestProto,
    ) -> Result<DataRequestProto, Status> {
        let header = req.header.get_or_insert_with(HeaderProto::default);
        if header.request_id.is_empty() {
            header.request_id = uuid::Uuid::new_v4().simple().to_string();
        }
        let target = match header.target_executor.as_deref() {
            Some(t) if !t.is_empty() => Some(Regex::new(&format!("^(?:{t})")).map_err(|e| {
                Status::invalid_argument(format!("target_executor {t:?} is not a valid regex: {e}"))
            })?),
            _ => None,
        };
        // Executors see target_executor present and empty, as jina's gateway sends it.
        header.target_executor = Some(String::new());
        let endpoint = header.exec_endpoint.clone().unwrap_or_else(|| "/".into());
        req.routes.insert(
            0,
            RouteProto {
                executor: "gateway".into(),
                start_time: Some(now()),
                ..Default::default()
            },
        );
        let ctx = Arc::new(Ctx { target, endpoint });
        if self.chain {
            let mut cur: Arc<DataRequestProto> = Arc::new(req);
            for idx in 0..self.nodes.len() {
                cur = self.exec_node(idx, vec![Ok(cur)], &ctx).await?;
                if cur.is_error() {
                    break;
                }
            }
            let mut resp = Arc::try_unwrap(cur).unwrap_or_else(|a| (*a).clone());
            if let Some(r) = resp.routes.first_mut()
                && r.executor == "gateway"
            {
                r.end_time = Some(now());
            }
            return Ok(resp);
        }
        let start: Shared<BoxFuture<'static, Outcome>> =
            futures::future::ready(Ok(Arc::new(req))).boxed().shared();
        let mut outs: Vec<Shared<BoxFuture<'static, Outcome>>> =
            Vec::with_capacity(self.nodes.len());
        for idx in 0..self.nodes.len() {
            let inputs: Vec<_> = if self.nodes[idx].needs.is_empty() {
                vec![start.clone()]
            } else {
                self.nodes[idx]
                    .needs
                    .iter()
                    .map(|&d| outs[d].clone())
                    .collect()
            };
            let graph = self.clone();
            let ctx = ctx.clone();
            outs.push(
                async move {
                    let inputs = join_all(inputs).await;
                    graph.exec_node(idx, inputs, &ctx).await
                }
                .boxed()
                .shared(),
            );
        }
        for &f in &self.floating {
            // Floating Executors are fire-and-forget: the response never waits for them.
            let fut = outs[f].clone();
            tokio::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::warn!(error = %e.message(), "floating Executor failed");
                }
            });
        }
        let ends: Vec<_> = if self.ends.is_empty() {
            vec![start.clone()]
        } else {
            self.ends.iter().map(|&e| outs[e].clone()).collect()
        };
        let results = join_all(ends).await;
        let mut resp = merge_outcomes(results, false)?;
        if let Some(r) = resp.routes.first_mut()
            && r.executor == "gateway"
        {
            r.end_time = Some(now());
        }
        Ok(resp)
    }

    async fn exec_node(&self, idx: usize, inputs: Vec<Outcome>, ctx: &Ctx) -> Outcome {
        let node = &self.nodes[idx];
        // An earlier error (transport or Executor exception) passes straight through.
        let mut reqs = Vec::with_capacity(inputs.len());
        for i in inputs {
            let r = i?;
            if r.is_error() {
                return Ok(r);
            }
            reqs.push(r);
        }
        if !self.selected(node, ctx) {
            return Ok(if reqs.len() == 1 {
                reqs.pop().expect("one")
            } else {
                Arc::new(merge_requests(
                    reqs.iter().map(|r| r.as_ref().clone()).collect(),
                )?)
            });
        }
        let opts = CallOptions {
            timeout: node.timeout,
        };
        let routes_before;
        let started = now();
        let resp = if node.no_reduce && reqs.len() > 1 {
            routes_before = reqs.iter().map(|r| r.routes.len()).max().unwrap_or(0);
            let mut list: Vec<DataRequestProto> = reqs.iter().map(|r| r.as_ref().clone()).collect();
            if let Some(cond) = &node.when {
                for r in &mut list {
                    keep_matching(r, cond, &node.name)?;
                }
            }
            node.shards[0].process_list(list, opts).await?
        } else {
            let mut req = if reqs.len() == 1 {
                Arc::try_unwrap(reqs.pop().expect("one")).unwrap_or_else(|a| (*a).clone())
            } else {
                merge_requests(reqs.iter().map(|r| r.as_ref().clone()).collect())?
            };
            if let Some(cond) = &node.when {
                keep_matching(&mut req, cond, &node.name)?;
            }
            routes_before = req.routes.len();
            self.call_shards(node, req, opts).await?
        };
        let mut resp = resp;
        stamp_route(&mut resp, routes_before, &node.name, started);
        Ok(Arc::new(resp))
    }

    fn selected(&self, node: &Node, ctx: &Ctx) -> bool {
        if let Some(t) = &ctx.target
            && !t.is_match(&node.name)
        {
            return false;
        }
        if ctx.endpoint == "/" || ctx.endpoint == zeroflow_proto::DRY_RUN_ENDPOINT {
            return true;
        }
        // An Executor that reported its endpoints and has neither this one nor a default
        // handler would pass the request through unchanged; skipping it saves the hop.
        node.shards[0]
            .any_endpoint(|e| e == ctx.endpoint || e == zeroflow_proto::DEFAULT_ENDPOINT)
            .unwrap_or(true)
    }

    async fn call_shards(
        &self,
        node: &Node,
        req: DataRequestProto,
        opts: CallOptions,
    ) -> Result<DataRequestProto, Status> {
        if node.shards.len() == 1 || node.polling == Polling::Any {
            let i = node.next_shard.fetch_add(1, Ordering::Relaxed) % node.shards.len();
            let answer = node.shards[i].process(req, opts).await;
            if answer.is_ok() {
                discover_once_warm(node, &node.shards[i]);
            }
            return answer;
        }
        let calls = node.shards.iter().map(|s| s.process(req.clone(), opts));
        let results: Vec<Outcome> = join_all(calls)
            .await
            .into_iter()
            .map(|r| r.map(Arc::new))
            .collect();
        merge_outcomes(results, false)
    }
}

/// Learns the endpoints of an Executor whose endpoints were not learnt at start (one that runs
/// elsewhere, or was cold), in the background, right after its first answer: it is warm then, so
/// asking wakes nothing. Until then every request is sent to it, which is what an Executor
/// without the endpoint does anyway (it passes the request through).
fn discover_once_warm(node: &Node, set: &Arc<ReplicaSet>) {
    // One relaxed load per call once settled.
    if node.discovery_started.load(Ordering::Relaxed) {
        return;
    }
    if set.any_endpoint(|_| true).is_some() || node.discovery_started.swap(true, Ordering::Relaxed)
    {
        node.discovery_started.store(true, Ordering::Relaxed);
        return;
    }
    let set = set.clone();
    tokio::spawn(async move {
        if let Err(e) = set.discover().await {
            tracing::debug!(executor = %set.executor(), error = %e.message(), "endpoint discovery failed");
        }
    });
}

struct Ctx {
    target: Option<Regex>,
    endpoint: String,
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// Gives the route the Executor appended the deployment's name and the gateway's timestamps.
fn stamp_route(resp: &mut DataRequestProto, before: usize, name: &str, started: Timestamp) {
    let end = now();
    if resp.routes.len() > before {
        let r = resp.routes.last_mut().expect("non-empty");
        r.executor = name.to_string();
        r.start_time = Some(started);
        r.end_time = Some(end);
    } else {
        resp.routes.push(RouteProto {
            executor: name.to_string(),
            start_time: Some(started),
            end_time: Some(end),
            status: None,
        });
    }
}

fn merge_outcomes(results: Vec<Outcome>, _no_reduce: bool) -> Result<DataRequestProto, Status> {
    let mut reqs = Vec::with_capacity(results.len());
    for r in results {
        let r = r?;
        if r.is_error() {
            return Ok(r.as_ref().clone());
        }
        reqs.push(r);
    }
    if reqs.len() == 1 {
        let r = reqs.pop().expect("one");
        return Ok(Arc::try_unwrap(r).unwrap_or_else(|a| (*a).clone()));
    }
    merge_requests(reqs.iter().map(|r| r.as_ref().clone()).collect())
}

/// Drops the documents `cond` does not hold for, as jina's gateway does before it sends a
/// request to an Executor with a `when:` condition.
fn keep_matching(
    req: &mut DataRequestProto,
    cond: &Condition,
    executor: &str,
) -> Result<(), Status> {
    let list = docs::decode_docs(&req.data).map_err(|e| {
        Status::invalid_argument(format!(
            "the documents cannot be read to apply Executor {executor}'s `when` condition: {e}"
        ))
    })?;
    let before = list.docs.len();
    let docs: Vec<_> = list
        .docs
        .into_iter()
        .filter(|d| cond.matches(&docs::doc_to_json(d)))
        .collect();
    if docs.len() != before {
        req.data = docs::encode_docs(zeroflow_proto::docarray::DocListProto { docs }).into();
    }
    Ok(())
}

/// Jina's merge of parallel branches: documents reduced by id, routes joined without repeats,
/// parameters' `__results__` combined.
pub fn merge_requests(mut reqs: Vec<DataRequestProto>) -> Result<DataRequestProto, Status> {
    if reqs.len() <= 1 {
        return Ok(reqs.pop().unwrap_or_default());
    }
    let lists = reqs
        .iter()
        .map(|r| docs::decode_docs(&r.data))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::internal(format!("cannot merge branches: {e}")))?;
    let mut rest = reqs.split_off(1);
    let mut out = reqs.pop().expect("first");
    out.data = docs::encode_docs(docs::reduce(lists)).into();
    for r in rest.drain(..) {
        for route in r.routes {
            if !out.routes.iter().any(|x| x.executor == route.executor) {
                out.routes.push(route);
            }
        }
        if let Some(p) = r.parameters {
            let params = out.parameters.get_or_insert_with(Default::default);
            for (k, v) in p.fields {
                if k == "__results__" {
                    merge_results(params, v);
                } else {
                    params.fields.entry(k).or_insert(v);
                }
            }
        }
    }
    Ok(out)
}

fn merge_results(params: &mut prost_types::Struct, v: prost_types::Value) {
    use prost_types::value::Kind;
    let Some(Kind::StructValue(add)) = v.kind else {
        return;
    };
    let entry = params
        .fields
        .entry("__results__".into())
        .or_insert_with(|| prost_types::Value {
            kind: Some(Kind::StructValue(Default::default())),
        });
    if let Some(Kind::StructValue(s)) = &mut entry.kind {
        s.fields.extend(add.fields);
    }
}
