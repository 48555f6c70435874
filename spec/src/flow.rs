//! From the substituted YAML tree to the normalized [`Flow`]: Jina's loader rules (naming,
//! `needs`, argument inheritance, Deployment YAML) and Zeroflow's validation.

use crate::diag::{
    Diags, Reader, describe, join_index, join_key, scalar_text, suggest, to_json, unknown_key,
};
use crate::jcloud;
use crate::keys::*;
use crate::model::*;
use crate::vars::{unresolved, unresolved_note};
use crate::yaml::{Entry, Node, Value};
use crate::{FileError, FileReader, Source};
use regex::Regex;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

const GATEWAY: &str = "gateway";
const HUB_SCHEMES: &[&str] = &[
    "jinaai",
    "jinaai+docker",
    "jinaai+serverless",
    "jinaai+sandbox",
    "jinahub",
    "jinahub+docker",
    "jinahub+sandbox",
    "jinahub+serverless",
];
const USES_ALLOWED: &str = "a class name, a YAML path (.yml/.yaml), an inline mapping, null, or a docker://, jinaai://, jinaai+docker://, jinaai+serverless://, jinahub://, jinahub+docker://, jinahub+sandbox:// reference";

static CLASS_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$").expect("static regex")
});

/// Jina's `is_yaml_filepath`: what `Deployment.load_config` takes for a file (the `.` before
/// `ya?ml` is unescaped in Jina too).
static YAML_PATH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[/\w\-_.]+.ya?ml$").expect("static regex"));

pub(crate) struct Ctx<'a> {
    pub cap: u32,
    /// The spec's variables, for the Deployment YAMLs it names.
    pub source: &'a Source,
    pub files: &'a dyn FileReader,
    /// The files read so far, in the order read.
    pub read: RefCell<Vec<String>>,
}

/// Python's `str.isidentifier()`, which Jina requires of Executor names.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_alphabetic() => chars.all(|c| c == '_' || c.is_alphanumeric()),
        _ => false,
    }
}

fn empty_map() -> Node {
    Node {
        v: Value::Map(vec![]),
        line: 0,
        col: 0,
    }
}

/// Looks a key up under any of its aliases (`port`/`ports`, `protocol`/`protocols`, ...).
fn get_any<'n>(n: &'n Node, keys: &[&str]) -> Option<(&'n Node, String)> {
    keys.iter()
        .find_map(|k| n.get(k).map(|v| (v, (*k).to_string())))
}

/// Reads a mapping of arguments the way Jina's argparse reads them: `-` and `_` are the same,
/// an exact option name is taken, and so is an unambiguous prefix of one of the `primary`
/// parser's options (argparse abbreviations: Jina reads `polli: ALL` as `polling: ALL`). A
/// prefix of several options makes Jina exit, so it is an error here. Anything else is dropped
/// with a warning, as Jina drops it. Returns the mapping with full option names as keys.
fn resolve_args(
    map: &Node,
    path: &str,
    primary: &[&str],
    fallbacks: &[&[&str]],
    extra: &[&str],
    what: &str,
    d: &mut Diags,
) -> Node {
    let Value::Map(entries) = &map.v else {
        return map.clone();
    };
    let known = |k: &str| {
        extra.contains(&k) || primary.contains(&k) || fallbacks.iter().any(|f| f.contains(&k))
    };
    let prefixed = |set: &[&str], k: &str| -> Vec<String> {
        set.iter()
            .filter(|o| o.starts_with(k))
            .map(|o| (*o).to_string())
            .collect()
    };
    let mut out: Vec<Entry> = Vec::new();
    for e in entries {
        let field = join_key(path, &e.key);
        if known(&e.key) {
            out.push(e.clone());
            continue;
        }
        let norm = e.key.replace('-', "_");
        let argparse_like =
            !norm.is_empty() && norm.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if argparse_like && known(&norm) {
            d.warn_at(
                e.kline,
                e.kcol,
                &field,
                format!("Jina reads `{}` as `{norm}`; write `{norm}`", e.key),
            );
            out.push(Entry {
                key: norm,
                ..e.clone()
            });
            continue;
        }
        let mut ambiguous: Vec<String> = Vec::new();
        if argparse_like {
            let m = prefixed(primary, &norm);
            if m.len() == 1 {
                d.warn_at(
                    e.kline,
                    e.kcol,
                    &field,
                    format!(
                        "Jina reads `{}` as `{}` (argparse accepts abbreviations); write `{}`",
                        e.key, m[0], m[0]
                    ),
                );
                out.push(Entry {
                    key: m[0].clone(),
                    ..e.clone()
                });
                continue;
            }
            ambiguous = if m.len() > 1 {
                m
            } else {
                fallbacks
                    .iter()
                    .map(|f| prefixed(f, &norm))
                    .find(|m| m.len() > 1)
                    .unwrap_or_default()
            };
        }
        if !ambiguous.is_empty() {
            d.error_at(e.kline, e.kcol, &field, format!("`{}` is an ambiguous abbreviation that makes Jina reject the spec: it could be {}; allowed: a full argument name", e.key, ambiguous.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")));
            continue;
        }
        let all = extra
            .iter()
            .chain(primary.iter())
            .chain(fallbacks.iter().flat_map(|f| f.iter()))
            .copied();
        let msg = unknown_key(&e.key, what, all);
        d.warn_at(e.kline, e.kcol, &field, msg);
    }
    // An abbreviation does not override the same argument written in full.
    let mut dedup: Vec<Entry> = Vec::new();
    for e in out {
        if let Some(i) = dedup.iter().position(|x| x.key == e.key) {
            let keep_new = entries
                .iter()
                .any(|x| x.key == e.key && x.kline == e.kline && x.kcol == e.kcol);
            if keep_new {
                dedup[i] = e;
            }
        } else {
            dedup.push(e);
        }
    }
    Node {
        v: Value::Map(dedup),
        line: map.line,
        col: map.col,
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway

struct GatewayIn<'a> {
    with: &'a Node,
    with_path: String,
    section: Option<&'a Node>,
}

impl GatewayIn<'_> {
    /// The gateway section's value wins over `with:`'s, as `Flow.config_gateway` does.
    fn get(&self, keys: &[&str]) -> Option<(&Node, String)> {
        if let Some(s) = self.section
            && let Some((n, k)) = get_any(s, keys)
        {
            return Some((n, join_key(GATEWAY, &k)));
        }
        get_any(self.with, keys).map(|(n, k)| (n, join_key(&self.with_path, &k)))
    }
}

fn protocol_of(n: &Node, field: &str, d: &mut Diags) -> Option<Protocol> {
    match n.as_str().map(str::to_ascii_lowercase).as_deref() {
        Some("grpc") => Some(Protocol::Grpc),
        Some("http") => Some(Protocol::Http),
        Some("websocket") => Some(Protocol::Websocket),
        _ => {
            d.bad(n, field, "one of grpc, http, websocket (any case)");
            None
        }
    }
}

fn listeners(
    proto: Option<(&Node, String)>,
    port: Option<(&Node, String)>,
    d: &mut Diags,
) -> Vec<Listener> {
    let mut protocols = Vec::new();
    let mut ok = true;
    if let Some((n, field)) = &proto {
        match &n.v {
            Value::Null => {}
            Value::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    match protocol_of(it, &join_index(field, i), d) {
                        Some(p) => protocols.push(p),
                        None => ok = false,
                    }
                }
            }
            _ => match protocol_of(n, field, d) {
                Some(p) => protocols.push(p),
                None => ok = false,
            },
        }
    }
    if protocols.is_empty() && ok {
        protocols.push(Protocol::Grpc);
    }
    let mut ports = Vec::new();
    if let Some((n, field)) = &port {
        match &n.v {
            Value::Null => {}
            Value::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    match (Reader { d }).port(it, &join_index(field, i)) {
                        Some(p) => ports.push(p),
                        None => ok = false,
                    }
                }
            }
            _ => match (Reader { d }).port(n, field) {
                Some(p) => ports.push(p),
                None => ok = false,
            },
        }
    }
    if !ok {
        return vec![];
    }
    if ports.is_empty() {
        return protocols
            .into_iter()
            .map(|protocol| Listener {
                protocol,
                port: None,
            })
            .collect();
    }
    if ports.len() == protocols.len() {
        return protocols
            .into_iter()
            .zip(ports)
            .map(|(protocol, p)| Listener {
                protocol,
                port: Some(p),
            })
            .collect();
    }
    let (n, field) = port
        .as_ref()
        .map_or((None, String::new()), |(n, f)| (Some(*n), f.clone()));
    let (line, col) = n.map_or((0, 0), |n| (n.line, n.col));
    if ports.len() == 1 {
        // Jina starts a multi-protocol gateway given one port on random ports for all of them.
        d.warn_at(line, col, &field, format!("one port for {} protocols: Jina ignores it and picks a free port for each protocol, and so does Zeroflow; give one port per protocol", protocols.len()));
        return protocols
            .into_iter()
            .map(|protocol| Listener {
                protocol,
                port: None,
            })
            .collect();
    }
    d.error_at(
        line,
        col,
        &field,
        format!(
            "got {} ports for {} protocols, allowed: one port per protocol, paired by position",
            ports.len(),
            protocols.len()
        ),
    );
    vec![]
}

fn gateway(g: &GatewayIn, jc: Option<&Node>, d: &mut Diags) -> Gateway {
    let mut port = g.get(&["port", "ports", "port_expose", "port_in"]);
    if let Some((n, f)) = &port
        && let Some(old) = OLD_PORT_NAMES.iter().find(|k| f.ends_with(*k))
    {
        let unresolved = n.as_str().map(unresolved).unwrap_or_default();
        if let Some(u) = unresolved.first() {
            // Jina 3 only warns about such a port as it loads the Flow; it is what old Jina 2
            // Flows wrote (`port_expose: $JINA_PORT`) for a port the platform chooses anyway.
            d.warn(
                n,
                f,
                format!(
                    "{}; `{old}` is Jina 2's name for `port`: the gateway gets a free port",
                    unresolved_note(u)
                ),
            );
            port = None;
        } else {
            d.warn(n, f, format!("`{old}` is Jina 2's name for the gateway's `port`, which Jina 3 still reads: write `port`"));
        }
    }
    let listeners = listeners(g.get(&["protocol", "protocols"]), port, d);
    let mut prefetch = 1000;
    if let Some((n, f)) = g.get(&["prefetch"])
        && let Some(v) = (Reader { d }).u32(n, &f, 0, u32::MAX, "an integer >= 0 (0 = unlimited)")
    {
        prefetch = v;
    }
    let timeout_send = g
        .get(&["timeout_send"])
        .and_then(|(n, f)| timeout_ms(n, &f, d));
    let host = g
        .get(&["host", "host_in"])
        .and_then(|(n, f)| host_of(n, &f, d));
    let cors = g
        .get(&["cors"])
        .and_then(|(n, f)| (Reader { d }).bool(n, &f))
        .unwrap_or(false);
    let title = g.get(&["title"]).and_then(|(n, f)| opt_text(n, &f, d));
    let description = g
        .get(&["description"])
        .and_then(|(n, f)| opt_text(n, &f, d));
    let j = jcloud::gateway(jc, GATEWAY, d);
    if let Some(s) = g.section
        && let Some(u) = s.get("uses")
        && !u.is_null()
    {
        d.warn(
            u,
            "gateway.uses",
            "a custom gateway is not supported: Zeroflow serves the Flow with its own gateway",
        );
    }
    Gateway {
        listeners,
        prefetch,
        timeout_send,
        idle_timeout: j.idle_timeout,
        expose: j.expose,
        host,
        cors,
        title,
        description,
        resources: j.resources,
        labels: j.labels,
        traces: j.traces,
    }
}

fn opt_text(n: &Node, f: &str, d: &mut Diags) -> Option<String> {
    if n.is_null() {
        return None;
    }
    (Reader { d }).text(n, f, "a string")
}

fn host_of(n: &Node, f: &str, d: &mut Diags) -> Option<String> {
    match &n.v {
        Value::Null => None,
        Value::Seq(items) => {
            if items.len() > 1 {
                d.warn(n, f, "several hosts given: Zeroflow uses the first");
            }
            items
                .first()
                .and_then(|h| (Reader { d }).text(h, &join_index(f, 0), "a host name or address"))
        }
        _ => (Reader { d }).text(n, f, "a host name or address"),
    }
}

/// `timeout_send` in milliseconds; Jina reads -1 (or any value <= 0) as "no timeout".
fn timeout_ms(n: &Node, f: &str, d: &mut Diags) -> Option<Duration> {
    if n.is_null() {
        return None;
    }
    let v = (Reader { d }).int(
        n,
        f,
        i64::MIN,
        i64::MAX,
        "an integer of milliseconds (-1 = no timeout)",
    )?;
    (v > 0).then(|| Duration::from_millis(v.unsigned_abs()))
}

// ---------------------------------------------------------------------------------------------
// Executors

/// One Executor's arguments: its own mapping, then what the Flow's `with:` hands down.
struct Args<'a> {
    own: &'a Node,
    path: String,
    inherited: &'a [Entry],
    with_path: String,
}

impl Args<'_> {
    fn get(&self, keys: &[&str]) -> Option<(&Node, String)> {
        if let Some((n, k)) = get_any(self.own, keys) {
            return Some((n, join_key(&self.path, &k)));
        }
        self.inherited
            .iter()
            .find(|e| keys.contains(&e.key.as_str()))
            .map(|e| (&e.value, join_key(&self.with_path, &e.key)))
    }
}

fn uses_of(n: Option<&Node>, field: &str, d: &mut Diags) -> Uses {
    let Some(n) = n else { return Uses::PassThrough };
    match &n.v {
        Value::Null => Uses::PassThrough,
        Value::Map(_) => Uses::Inline { config: to_json(n) },
        Value::Str(s) => {
            let s = s.trim();
            if let Some((scheme, rest)) = s.split_once("://") {
                if rest.is_empty() {
                    d.bad(
                        n,
                        field,
                        "a reference after the scheme, e.g. jinaai+docker://user/Executor",
                    );
                    return Uses::PassThrough;
                }
                if scheme == "docker" {
                    return Uses::Docker {
                        image: rest.to_string(),
                    };
                }
                if HUB_SCHEMES.contains(&scheme) {
                    return Uses::Hub {
                        scheme: scheme.to_string(),
                        reference: rest.to_string(),
                    };
                }
                d.bad(n, field, USES_ALLOWED);
                return Uses::PassThrough;
            }
            let lower = s.to_ascii_lowercase();
            if lower.ends_with(".yml") || lower.ends_with(".yaml") || lower.ends_with(".jaml") {
                return Uses::Config {
                    path: s.to_string(),
                };
            }
            if s.starts_with('{')
                && let Ok(v @ serde_json::Value::Object(_)) =
                    serde_json::from_str::<serde_json::Value>(s)
            {
                return Uses::Inline { config: v };
            }
            if (s.starts_with('!') || s.starts_with("jtype:"))
                && let Ok(p) = crate::yaml::parse(s)
                && let Some(root) = p.root
                && root.is_map()
            {
                return Uses::Inline {
                    config: to_json(&root),
                };
            }
            if CLASS_NAME.is_match(s) {
                return Uses::Class {
                    name: s.to_string(),
                };
            }
            d.bad(n, field, USES_ALLOWED);
            Uses::PassThrough
        }
        _ => {
            d.bad(n, field, USES_ALLOWED);
            Uses::PassThrough
        }
    }
}

fn json_map(a: &Args, key: &str, d: &mut Diags) -> serde_json::Map<String, serde_json::Value> {
    let Some((n, f)) = a.get(&[key]) else {
        return Default::default();
    };
    match &n.v {
        Value::Null => Default::default(),
        Value::Map(_) => match to_json(n) {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        },
        Value::Str(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                d.bad(n, &f, "a mapping (or a JSON object as a string)");
                Default::default()
            }
        },
        _ => {
            d.bad(n, &f, "a mapping (or a JSON object as a string)");
            Default::default()
        }
    }
}

fn string_list(n: &Node, f: &str, d: &mut Diags) -> Vec<String> {
    match &n.v {
        Value::Null => vec![],
        Value::Str(s) => vec![s.clone()],
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| (Reader { d }).string(it, &join_index(f, i), "a string"))
            .collect(),
        _ => {
            d.bad(n, f, "a string or a list of strings");
            vec![]
        }
    }
}

fn env_map(n: &Node, f: &str, d: &mut Diags) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if n.is_null() {
        return out;
    }
    let Some(entries) = (Reader { d }).map(n, f, "a mapping of variable names to values") else {
        return out;
    };
    for e in entries {
        match scalar_text(&e.value) {
            Some(v) if !matches!(e.value.v, Value::Seq(_) | Value::Map(_)) => {
                out.insert(e.key.clone(), v);
            }
            _ => d.bad(
                &e.value,
                &join_key(f, &e.key),
                "a string, number or boolean",
            ),
        }
    }
    out
}

fn secrets(n: &Node, f: &str, d: &mut Diags) -> BTreeMap<String, SecretRef> {
    let mut out = BTreeMap::new();
    if n.is_null() {
        return out;
    }
    let allowed = "a mapping of variable names to {name: <secret>, key: <key>}";
    let Some(entries) = (Reader { d }).map(n, f, allowed) else {
        return out;
    };
    for e in entries {
        let ef = join_key(f, &e.key);
        if (Reader { d })
            .map(&e.value, &ef, "{name: <secret>, key: <key>}")
            .is_none()
        {
            continue;
        }
        d.unknown_keys(&e.value, &ef, &[&["name", "key"]], "`env_from_secret`");
        let mut part = |k: &str| match e.value.get(k) {
            Some(v) => (Reader { d }).text(v, &join_key(&ef, k), "a non-empty string"),
            None => {
                d.error(
                    &e.value,
                    &ef,
                    format!("missing `{k}`; allowed: {{name: <secret>, key: <key>}}"),
                );
                None
            }
        };
        let name = part("name");
        let key = part("key");
        if let (Some(name), Some(key)) = (name, key) {
            out.insert(e.key.clone(), SecretRef { name, key });
        }
    }
    out
}

fn polling(a: &Args, d: &mut Diags) -> Polling {
    let Some((n, f)) = a.get(&["polling"]) else {
        return Polling::Any;
    };
    let one =
        |n: &Node, f: &str, d: &mut Diags| match n.as_str().map(str::to_ascii_uppercase).as_deref()
        {
            Some("ANY") => Some(Polling::Any),
            Some("ALL") => Some(Polling::All),
            _ => {
                d.bad(
                    n,
                    f,
                    "ANY or ALL (any case), or a mapping of endpoints to ANY/ALL",
                );
                None
            }
        };
    match &n.v {
        Value::Null => Polling::Any,
        Value::Map(entries) => {
            let mut star = None;
            for e in entries {
                let p = one(&e.value, &join_key(&f, &e.key), d);
                if e.key == "*" {
                    star = p;
                }
            }
            let chosen = star.unwrap_or(Polling::Any);
            let name = if chosen == Polling::All { "ALL" } else { "ANY" };
            d.warn(n, &f, format!("per-endpoint polling is not supported: Zeroflow uses {name} (the `*` entry, else ANY) for every endpoint"));
            chosen
        }
        _ => one(n, &f, d).unwrap_or(Polling::Any),
    }
}

/// What the caller knows of an Executor besides its arguments.
struct ExecMeta {
    name: String,
    needs: Vec<String>,
    port_is_gateway: bool,
}

fn executor(
    a: &Args,
    meta: ExecMeta,
    jc: Option<&Node>,
    jc_path: &str,
    ctx: &Ctx,
    d: &mut Diags,
) -> Executor {
    let (uses_node, uses_path) = match a.get(&["uses"]) {
        Some((n, f)) => (Some(n), f),
        None => (None, join_key(&a.path, "uses")),
    };
    let uses = uses_of(uses_node, &uses_path, d);
    let serverless = matches!(&uses, Uses::Hub { scheme, .. } if scheme.ends_with("+serverless"));
    let mut replicas = 1;
    let replicas_node = a.get(&["replicas"]);
    if let Some((n, f)) = &replicas_node
        && let Some(v) = (Reader { d }).u32(n, f, 1, u32::MAX, "an integer >= 1")
    {
        replicas = v;
    }
    let mut shards = 1;
    if let Some((n, f)) = a.get(&["shards"])
        && let Some(v) = (Reader { d }).u32(n, &f, 1, u32::MAX, "an integer >= 1")
    {
        shards = v;
    }
    let polling = polling(a, d);
    let bool_arg = |keys: &[&str], d: &mut Diags| {
        a.get(keys)
            .and_then(|(n, f)| (!n.is_null()).then(|| (Reader { d }).bool(n, &f)).flatten())
            .unwrap_or(false)
    };
    let no_reduce = bool_arg(&["no_reduce", "disable_reduce"], d);
    let floating = bool_arg(&["floating"], d);
    let tls = bool_arg(&["tls"], d);
    let external_flag = bool_arg(&["external"], d);
    let timeout_send = a
        .get(&["timeout_send"])
        .and_then(|(n, f)| timeout_ms(n, &f, d));
    let mut retries = -1;
    if let Some((n, f)) = a.get(&["retries"])
        && !n.is_null()
        && let Some(v) = (Reader { d }).int(
            n,
            &f,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            "an integer (-1 = decide from the replica count)",
        )
    {
        retries = i32::try_from(v).unwrap_or(-1);
    }
    let env = a
        .get(&["env"])
        .map(|(n, f)| env_map(n, &f, d))
        .unwrap_or_default();
    let env_from_secret = a
        .get(&["env_from_secret"])
        .map(|(n, f)| secrets(n, &f, d))
        .unwrap_or_default();
    let py_modules = a
        .get(&["py_modules"])
        .map(|(n, f)| string_list(n, &f, d))
        .unwrap_or_default();
    let workspace = a
        .get(&["workspace"])
        .filter(|(n, _)| !n.is_null())
        .and_then(|(n, f)| (Reader { d }).text(n, &f, "a folder path"));
    let when = match a.get(&["when"]) {
        None => None,
        Some((n, _)) if n.is_null() => None,
        Some((n, f)) if n.is_map() => {
            let json = to_json(n);
            // Checked here, with the YAML position, rather than failing on the first request.
            match crate::when::Condition::parse(&json) {
                Ok(_) => Some(json),
                Err(e) => {
                    d.error(n, &f, format!("invalid `when` condition: {e}"));
                    None
                }
            }
        }
        Some((n, f)) => {
            d.bad(
                n,
                &f,
                "a mapping of document conditions, e.g. {tags__key: {$eq: value}}",
            );
            None
        }
    };
    let host = a
        .get(&["host", "host_in"])
        .and_then(|(n, f)| host_of(n, &f, d));
    let port_node = a.get(&["port", "ports"]);
    let port = match &port_node {
        None => None,
        Some((n, _)) if n.is_null() => None,
        Some((n, f)) => match &n.v {
            Value::Seq(items) => {
                if items.len() > 1 {
                    d.warn(n, f, "several ports given: Zeroflow uses the first");
                }
                items
                    .first()
                    .and_then(|p| (Reader { d }).port(p, &join_index(f, 0)))
            }
            _ => (Reader { d }).port(n, f),
        },
    };
    for k in UNSUPPORTED_EXECUTOR {
        if let Some((n, f)) = a.get(&[k])
            && !n.is_null()
        {
            d.warn(n, &f, format!("`{k}` is not supported by Zeroflow and is ignored: shard results are merged by the gateway"));
        }
    }
    let external = if external_flag {
        let mut host = host.clone();
        let mut tls = tls;
        if let Some(h) = &host {
            if let Some(rest) = h.strip_prefix("grpcs://") {
                tls = true;
                host = Some(rest.to_string());
            } else if let Some(rest) = h.strip_prefix("grpc://") {
                host = Some(rest.to_string());
            }
        }
        match (host, port) {
            (Some(host), Some(port)) => Some(ExternalAddress {
                host,
                port,
                tls,
                shards: vec![],
            }),
            (h, p) => {
                let missing: Vec<&str> =
                    [h.is_none().then_some("host"), p.is_none().then_some("port")]
                        .into_iter()
                        .flatten()
                        .collect();
                let (at, _) = a.get(&["external"]).unwrap_or((a.own, a.path.clone()));
                d.error(
                    at,
                    &join_key(&a.path, "external"),
                    format!(
                        "an external Executor needs `host` and `port`; missing: {}",
                        missing.join(", ")
                    ),
                );
                None
            }
        }
    } else {
        None
    };
    let facts = jcloud::ExecutorFacts {
        serverless,
        replicas,
        cap: ctx.cap,
    };
    let jc_own = jcloud::executor(jc, jc_path, &facts, d);
    if jc_own.autoscale_set
        && let Some((n, f)) = &replicas_node
        && replicas > 1
    {
        d.warn(
            n,
            f,
            format!(
                "`replicas` is ignored: autoscaling decides the count, from {} to {}",
                jc_own.autoscale.min, jc_own.autoscale.max
            ),
        );
    }
    Executor {
        name: meta.name,
        uses,
        uses_with: json_map(a, "uses_with", d),
        uses_metas: json_map(a, "uses_metas", d),
        uses_requests: json_map(a, "uses_requests", d),
        py_modules,
        workspace,
        env,
        env_from_secret,
        replicas,
        shards,
        polling,
        needs: meta.needs,
        when,
        no_reduce,
        floating,
        timeout_send,
        retries,
        port: if external_flag || meta.port_is_gateway {
            None
        } else {
            port
        },
        command: a.get(&["command"]).and_then(|(n, f)| command(n, &f, d)),
        external,
        jcloud: jc_own,
    }
}

/// Zeroflow's `command:`: a list of strings, or one string split on whitespace.
fn command(n: &Node, f: &str, d: &mut Diags) -> Option<Vec<String>> {
    let allowed = "a non-empty list of strings, or one string (split on whitespace)";
    let argv: Vec<String> = match &n.v {
        Value::Null => return None,
        Value::Str(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Seq(items) => {
            let mut out = Vec::new();
            for (i, it) in items.iter().enumerate() {
                match &it.v {
                    Value::Seq(_) | Value::Map(_) | Value::Null => {
                        d.bad(it, &join_index(f, i), "a string")
                    }
                    // An argument such as `8080` or `true` is still text on a command line.
                    _ => {
                        let arg = scalar_text(it).unwrap_or_default();
                        warn_jina_option(&arg, it, &join_index(f, i), d);
                        out.push(arg);
                    }
                }
            }
            out
        }
        _ => {
            d.bad(n, f, allowed);
            return None;
        }
    };
    if argv.is_empty() {
        d.bad(n, f, allowed);
        return None;
    }
    Some(argv)
}

/// Jina passes a `command` list to argparse as `--command a b c`, so an element that names one
/// of its own options (`--port 8080`) is taken as that option, or makes Jina reject the spec.
fn warn_jina_option(arg: &str, at: &Node, field: &str, d: &mut Diags) {
    let Some(name) = arg.strip_prefix("--") else {
        return;
    };
    let name = name.split('=').next().unwrap_or_default().replace('-', "_");
    if name.is_empty() {
        return;
    }
    let hits: Vec<&str> = DEPLOYMENT_ARGS
        .iter()
        .copied()
        .filter(|o| o.starts_with(&name))
        .collect();
    if DEPLOYMENT_ARGS.contains(&name.as_str()) || !hits.is_empty() {
        d.warn(at, field, format!("Jina reads `{arg}` in a `command` list as its own `--{}` argument (its loader fails or changes the Executor); write the command as one string to keep the spec loadable by Jina", hits.first().copied().unwrap_or(&name).replace('_', "-")));
    }
}

/// Where each `needs` entry was written, for errors found once all names are known.
struct NeedsAt {
    path: String,
    line: usize,
    col: usize,
    items: Vec<(String, usize, usize)>,
}

fn needs_of(n: Option<(&Node, String)>, d: &mut Diags) -> Option<NeedsAt> {
    let (n, f) = n?;
    let items = match &n.v {
        Value::Null => return None,
        Value::Str(s) => vec![(s.clone(), n.line, n.col)],
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| {
                (Reader { d })
                    .string(it, &join_index(&f, i), "an Executor name or `gateway`")
                    .map(|s| (s, it.line, it.col))
            })
            .collect(),
        _ => {
            d.bad(n, &f, "an Executor name, `gateway`, or a list of them");
            return None;
        }
    };
    if items.is_empty() {
        // Jina reads an empty list as "not given".
        return None;
    }
    Some(NeedsAt {
        path: f,
        line: n.line,
        col: n.col,
        items,
    })
}

struct Graph {
    executors: Vec<Executor>,
    needs_at: Vec<Option<NeedsAt>>,
    /// The names of the inspect Executors left out, which nothing may need.
    inspect: Vec<String>,
}

struct Naming {
    /// Every name Jina gives a node, in order: the Executors, and the inspect Executors that
    /// Zeroflow leaves out (they still count in Jina's `executor<N>` names and renames).
    names: Vec<String>,
    last: String,
}

impl Naming {
    /// Jina's rule: a taken name gets the number of Executors so far appended.
    fn unique(&self, wanted: String, at: &Node, field: &str, d: &mut Diags) -> String {
        let n = self.free(&wanted);
        if n != wanted {
            d.warn(at, field, format!("the name `{wanted}` is already used; Jina renames this Executor to `{n}`, and so does Zeroflow: give it a unique name"));
        }
        n
    }

    fn free(&self, wanted: &str) -> String {
        if !self.names.iter().any(|n| n == wanted) {
            return wanted.to_string();
        }
        let mut n = format!("{wanted}{}", self.names.len());
        while self.names.contains(&n) {
            n.push('_');
        }
        n
    }
}

fn flow_item(
    item: &Node,
    path: &str,
    inherited: &[Entry],
    naming: &mut Naming,
    g: &mut Graph,
    ctx: &Ctx,
    d: &mut Diags,
) {
    if item.get("jtype").and_then(Node::as_str) == Some("Deployment") {
        return inline_deployment(item, path, "an inline Deployment", naming, g, ctx, d);
    }
    let resolved = resolve_args(
        item,
        path,
        DEPLOYMENT_ARGS,
        &[GATEWAY_ARGS, CLIENT_ARGS, FLOW_ARGS],
        EXECUTOR_EXTRA,
        "an Executor",
        d,
    );
    let item = &resolved;
    let name_node = item.get("name");
    if name_node.and_then(Node::as_str) == Some(GATEWAY) {
        d.warn(name_node.unwrap_or(item), &join_key(path, "name"), "an Executor named `gateway` is skipped, as Jina skips it: the gateway is configured in `with:` and `gateway:`");
        return;
    }
    for k in OLD_PORT_NAMES {
        if let Some(e) = item.entry(k) {
            d.warn_at(e.kline, e.kcol, &join_key(path, k), format!("Jina 3 reads `{k}` (Jina 2's name for `port`) only for the gateway: ignored on an Executor; write `port` to set the Executor's own port"));
        }
    }
    let mut default_name = format!("executor{}", naming.names.len());
    let needs_given = needs_of(item.get("needs").map(|n| (n, join_key(path, "needs"))), d);
    let mut join_hanging = false;
    if let Some(m) = item.get("method") {
        let mf = join_key(path, "method");
        match m.as_str() {
            Some("add") => {}
            Some("needs") => {
                default_name = "joiner".into();
                if needs_given.as_ref().is_none_or(|n| n.items.len() < 2) {
                    d.error(m, &mf, "method `needs` joins several Executors: it needs a `needs` list of at least two names");
                }
            }
            Some("needs_all") => {
                default_name = "joiner".into();
                join_hanging = true;
                if let Some(at) = &needs_given {
                    d.error_at(at.line, at.col, &at.path, "method `needs_all` joins every Executor that no other one needs, and Jina fails when `needs` is given too; allowed: no `needs`, or `method: needs`");
                }
            }
            Some("inspect") => return inspect_item(item, m, path, naming, g, d),
            _ => d.bad(m, &mf, "add, needs, needs_all or inspect"),
        }
    }
    let nf = join_key(path, "name");
    // Jina passes `joiner` to `add` as a name, which renames it when taken; `executor<N>` it
    // does not check, and a second node of the same name replaces the first, so it is
    // renamed here too.
    let name = match name_node {
        None => naming.unique(default_name, item, &nf, d),
        Some(n) => match &n.v {
            Value::Null => naming.unique(default_name, n, &nf, d),
            Value::Str(s) => {
                if !is_identifier(s) {
                    d.bad(n, &nf, "a Python identifier (letters, digits and `_`, not starting with a digit), as Jina requires");
                }
                naming.unique(s.clone(), n, &nf, d)
            }
            _ => {
                d.bad(n, &nf, "a Python identifier (letters, digits and `_`, not starting with a digit), as Jina requires");
                default_name
            }
        },
    };
    let (needs, needs_at) = match needs_given {
        Some(at) => {
            let mut v: Vec<String> = Vec::new();
            for (s, _, _) in &at.items {
                if !v.contains(s) {
                    v.push(s.clone());
                }
            }
            (v, Some(at))
        }
        None if join_hanging => {
            let hanging = hanging(g);
            if hanging.is_empty() {
                let m = item.get("method").unwrap_or(item);
                d.error(m, &join_key(path, "method"), "method `needs_all` joins the Executors that no other one needs, and there are none before it; allowed: `method: add`");
            }
            (hanging, None)
        }
        None => (vec![naming.last.clone()], None),
    };
    let args = Args {
        own: item,
        path: path.to_string(),
        inherited,
        with_path: "with".into(),
    };
    let meta = ExecMeta {
        name: name.clone(),
        needs,
        port_is_gateway: false,
    };
    let e = executor(&args, meta, item.get("jcloud"), path, ctx, d);
    if !e.floating {
        naming.last = name.clone();
    }
    naming.names.push(name);
    g.executors.push(e);
    g.needs_at.push(needs_at);
}

/// Jina's `_hanging_deployments`: the Executors that are not floating and that no Executor needs,
/// in the order they were added.
fn hanging(g: &Graph) -> Vec<String> {
    g.executors
        .iter()
        .filter(|e| !e.floating)
        .filter(|e| !g.executors.iter().any(|o| o.needs.contains(&e.name)))
        .map(|e| e.name.clone())
        .collect()
}

/// `method: inspect`. Jina adds an inspect Executor and a pass-through beside it, both reading the
/// last Executor's output, and by default (`inspect: COLLECT`) joins what the inspect Executors
/// return into the response. Zeroflow leaves both out: the Flow Jina builds with
/// `inspect: REMOVE`. Their names still count in Jina's naming of the Executors after them.
fn inspect_item(
    item: &Node,
    method: &Node,
    path: &str,
    naming: &mut Naming,
    g: &mut Graph,
    d: &mut Diags,
) {
    let wanted = item
        .get("name")
        .and_then(scalar_text)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "inspect".into());
    let name = naming.free(&wanted);
    naming.names.push(name.clone());
    let aux = naming.free(&format!("_aux_{wanted}"));
    naming.names.push(aux.clone());
    g.inspect.extend([name.clone(), aux]);
    d.warn(
        method,
        &join_key(path, "method"),
        format!(
            "`method: inspect` adds an inspect Executor (`{name}`) that reads what `{}` returns; Zeroflow does not run inspect Executors and leaves it out, which is the Flow Jina builds with `inspect: REMOVE`",
            naming.last
        ),
    );
}

/// An `executors:` item that is a string, which Jina hands to `Deployment.load_config`: the path
/// of a Deployment YAML, or a Deployment written out as YAML (`jtype: ...`, where each `|`
/// starts a `with:` line, as in Jina) or as JSON. Anything else (a class name, a URL) is not a
/// Deployment Jina can load here.
#[allow(clippy::too_many_arguments)]
fn deployment_ref(
    item: &Node,
    text: &str,
    path: &str,
    search: &[String],
    naming: &mut Naming,
    g: &mut Graph,
    ctx: &Ctx,
    d: &mut Diags,
) {
    let s = text.trim();
    if YAML_PATH.is_match(s) {
        let Some((file, text)) = find_file(item, s, path, search, ctx, d) else {
            return;
        };
        ctx.read.borrow_mut().push(file.clone());
        let mut sub = Diags::default();
        if let Some(root) = crate::read_tree(&text, ctx.source, &mut sub, true) {
            let dir = file.rsplit_once('/').map(|(dir, _)| dir);
            deployment_doc(
                &root,
                "",
                "a Deployment YAML",
                dir,
                naming,
                g,
                ctx,
                &mut sub,
            );
        }
        d.absorb(sub, Some(&file));
        return;
    }
    if s.starts_with("http://") || s.starts_with("https://") {
        d.error(
            item,
            path,
            format!(
                "got {}: Zeroflow does not download a Deployment YAML; allowed: a copy of it in the Flow's folder, named by its path",
                describe(item)
            ),
        );
        return;
    }
    let yaml = if s.starts_with("jtype") {
        s.replace('|', "\n    with: ")
    } else if s.starts_with('{') {
        s.to_string()
    } else {
        d.bad(
            item,
            path,
            "an Executor mapping, the path of a Deployment YAML (.yml or .yaml), or a Deployment as YAML or JSON text",
        );
        return;
    };
    let mut sub = Diags::default();
    let root = crate::read_tree(&yaml, ctx.source, &mut sub, false);
    if root.is_none() && s.contains('|') {
        for x in &mut sub.errors {
            x.message.push_str(" (Jina reads each `|` in this text as a new line `    with: `, and so does Zeroflow)");
        }
    }
    // The text has no lines of its own in the spec: everything found in it points at the item.
    for x in sub.errors.iter_mut().chain(sub.warnings.iter_mut()) {
        x.line = item.line;
        x.column = item.col;
        x.field = if x.field.is_empty() {
            path.to_string()
        } else if x.field.starts_with('[') {
            format!("{path}{}", x.field)
        } else {
            format!("{path}.{}", x.field)
        };
    }
    d.absorb(sub, None);
    if let Some(mut root) = root {
        pin(&mut root, item.line, item.col);
        deployment_doc(
            &root,
            path,
            "the Deployment in this item",
            None,
            naming,
            g,
            ctx,
            d,
        );
    }
}

/// Moves every node of `n` to `line`:`col`.
fn pin(n: &mut Node, line: usize, col: usize) {
    n.line = line;
    n.col = col;
    match &mut n.v {
        Value::Seq(items) => items.iter_mut().for_each(|i| pin(i, line, col)),
        Value::Map(entries) => {
            for e in entries {
                e.kline = line;
                e.kcol = col;
                pin(&mut e.value, line, col);
            }
        }
        _ => {}
    }
}

/// `a/b` from a search folder and a path as Jina's `os.path.join` makes it (an absolute path
/// stays itself).
fn join_path(base: &str, p: &str) -> String {
    if base.is_empty() || p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{p}", base.trim_end_matches('/'))
    }
}

/// The path and text of the Deployment YAML an item names, found as Jina finds it (in
/// `with.extra_search_paths`, then in the Flow's folder) and read through the caller's
/// [`FileReader`]; None after saying why.
fn find_file(
    item: &Node,
    name: &str,
    path: &str,
    search: &[String],
    ctx: &Ctx,
    d: &mut Diags,
) -> Option<(String, String)> {
    let mut tried: Vec<String> = Vec::new();
    for base in search {
        let p = join_path(base, name);
        if tried.contains(&p) {
            continue;
        }
        match ctx.files.read(&p) {
            Ok(text) => return Some((p, text)),
            Err(FileError::NotFound) => tried.push(p),
            Err(e) => {
                d.error(
                    item,
                    path,
                    format!("cannot read the Deployment YAML `{p}`: {e}"),
                );
                return None;
            }
        }
    }
    let looked: Vec<String> = tried.iter().map(|t| format!("`{t}`")).collect();
    d.error(
        item,
        path,
        format!(
            "the Deployment YAML {} is not there (looked for {}, relative to the Flow's folder)",
            describe(item),
            looked.join(", ")
        ),
    );
    None
}

/// A Deployment (from a file when `dir` is its folder) added to the Flow as Jina's
/// `Flow.add(deployment)` adds it: named by its position, after the last Executor.
#[allow(clippy::too_many_arguments)]
fn deployment_doc(
    root: &Node,
    path: &str,
    what: &str,
    dir: Option<&str>,
    naming: &mut Naming,
    g: &mut Graph,
    ctx: &Ctx,
    d: &mut Diags,
) {
    if root.get("jtype").and_then(Node::as_str) != Some("Deployment") {
        let (at, got) = match root.get("jtype") {
            Some(j) => (j, format!("`jtype: {}`", describe(j).trim_matches('"'))),
            None => (root, "no `jtype`".to_string()),
        };
        d.error(at, &join_key(path, "jtype"), format!("got {got}, allowed: `jtype: Deployment` (Jina loads what a Flow names in `executors:` as a Deployment)"));
        return;
    }
    let before = g.executors.len();
    inline_deployment(root, path, what, naming, g, ctx, d);
    if let (Some(dir), Some(e)) = (dir, g.executors.get_mut(before)) {
        rebase(e, dir, ctx.files);
    }
}

/// Jina looks for the files a Deployment YAML names in the Flow's folder first, then in the
/// Deployment YAML's own: a relative path found only beside the Deployment YAML is made relative
/// to the Flow's folder, where everything else in the spec is relative to.
fn rebase(e: &mut Executor, dir: &str, files: &dyn FileReader) {
    let fix = |p: &str| -> Option<String> {
        if p.starts_with('/') || files.exists(p) {
            return None;
        }
        let q = join_path(dir, p);
        files.exists(&q).then_some(q)
    };
    for m in &mut e.py_modules {
        if let Some(q) = fix(m) {
            *m = q;
        }
    }
    if let Uses::Config { path } = &mut e.uses
        && let Some(q) = fix(path)
    {
        *path = q;
    }
}

/// An `executors:` item written as `jtype: Deployment` with its own `with:`, or the Deployment
/// YAML an item names (`what` says which, for messages).
#[allow(clippy::too_many_arguments)]
fn inline_deployment(
    item: &Node,
    path: &str,
    what: &str,
    naming: &mut Naming,
    g: &mut Graph,
    ctx: &Ctx,
    d: &mut Diags,
) {
    d.unknown_keys(item, path, &[INLINE_DEPLOYMENT], what);
    if let Some(v) = item.entry("version") {
        d.error_at(
            v.kline,
            v.kcol,
            &join_key(path, "version"),
            format!(
                "got {}, allowed: no `version` (Jina rejects a version on a Deployment)",
                describe(&v.value)
            ),
        );
    }
    if let Some(n) = item.get("needs")
        && !n.is_null()
    {
        d.warn(
            n,
            &join_key(path, "needs"),
            format!("Jina ignores `needs` on {what}: it follows the previous Executor"),
        );
    }
    let wpath = join_key(path, "with");
    let empty = empty_map();
    let with = match item.get("with") {
        Some(w) if w.is_map() => w,
        Some(w) => {
            d.bad(w, &wpath, "a mapping of Deployment arguments");
            &empty
        }
        None => {
            d.error(item, &wpath, "missing; a `jtype: Deployment` item needs a `with:` block (Jina fails without one)");
            &empty
        }
    };
    let resolved = resolve_args(
        with,
        &wpath,
        DEPLOYMENT_ARGS,
        &[GATEWAY_ARGS],
        &["jcloud", "command"],
        "a Deployment's `with`",
        d,
    );
    let with = &resolved;
    // Jina adds an inline Deployment under a positional name; `with.name` does not name the node.
    let name = format!("executor{}", naming.names.len());
    if let Some(n) = with.get("name")
        && n.as_str() != Some(name.as_str())
        && !n.is_null()
    {
        d.warn(n, &join_key(&wpath, "name"), format!("Jina names {what} by its position: this Executor is `{name}` in the Flow graph, not {}", describe(n)));
    }
    let name = naming.unique(name, item, &join_key(path, "name"), d);
    let (jc, jc_path) = match (with.get("jcloud"), item.get("jcloud")) {
        (Some(j), _) => (Some(j), wpath.clone()),
        (None, j) => (j, path.to_string()),
    };
    let args = Args {
        own: with,
        path: wpath,
        inherited: &[],
        with_path: String::new(),
    };
    let meta = ExecMeta {
        name: name.clone(),
        needs: vec![naming.last.clone()],
        port_is_gateway: false,
    };
    let e = executor(&args, meta, jc, &jc_path, ctx, d);
    if !e.floating {
        naming.last = name.clone();
    }
    naming.names.push(name);
    g.executors.push(e);
    g.needs_at.push(None);
}

fn check_graph(g: &Graph, d: &mut Diags) {
    let names: Vec<&str> = g.executors.iter().map(|e| e.name.as_str()).collect();
    let mut known: Vec<&str> = vec![GATEWAY];
    known.extend(names.iter().copied());
    let mut bad = false;
    for (e, at) in g.executors.iter().zip(&g.needs_at) {
        let Some(at) = at else { continue };
        for (need, line, col) in &at.items {
            if need == &e.name {
                d.error_at(
                    *line,
                    *col,
                    &at.path,
                    format!(
                        "Executor `{}` needs itself; allowed: another Executor or `gateway`",
                        e.name
                    ),
                );
                bad = true;
            } else if g.inspect.contains(need) {
                d.error_at(
                    *line,
                    *col,
                    &at.path,
                    format!("Executor `{}` needs `{need}`, an inspect Executor, which Zeroflow leaves out; allowed: an Executor that is not inspect, or `gateway`", e.name),
                );
                bad = true;
            } else if !known.contains(&need.as_str()) {
                let mut msg = format!(
                    "Executor `{}` needs `{need}`, which is not in this Flow; known: {}",
                    e.name,
                    known.join(", ")
                );
                if let Some(s) = suggest(need, known.iter().copied()) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
                d.error_at(*line, *col, &at.path, msg);
                bad = true;
            }
        }
    }
    if bad {
        return;
    }
    // Kahn's algorithm: whatever cannot be ordered lies on or behind a cycle.
    let idx: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut indeg: Vec<usize> = g
        .executors
        .iter()
        .map(|e| e.needs.iter().filter(|n| n.as_str() != GATEWAY).count())
        .collect();
    let mut ready: Vec<usize> = (0..names.len()).filter(|i| indeg[*i] == 0).collect();
    let mut done = BTreeSet::new();
    while let Some(i) = ready.pop() {
        done.insert(i);
        for (j, e) in g.executors.iter().enumerate() {
            if e.needs.iter().any(|n| n == names[i]) {
                indeg[j] = indeg[j].saturating_sub(1);
                if indeg[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    if done.len() == names.len() {
        return;
    }
    // Walk predecessors from a stuck Executor until one repeats: that loop is the cycle.
    let Some(start) = (0..names.len()).find(|i| !done.contains(i)) else {
        return;
    };
    let mut seen: Vec<usize> = vec![start];
    let mut cur = start;
    loop {
        let Some(next) = g.executors[cur]
            .needs
            .iter()
            .filter_map(|n| idx.get(n.as_str()).copied())
            .find(|j| !done.contains(j))
        else {
            return;
        };
        if let Some(pos) = seen.iter().position(|s| *s == next) {
            let mut cycle: Vec<usize> = seen[pos..].to_vec();
            cycle.reverse();
            let first = *cycle.iter().min().unwrap_or(&next);
            let rot = cycle.iter().position(|c| *c == first).unwrap_or(0);
            cycle.rotate_left(rot);
            let mut text: Vec<&str> = cycle.iter().map(|c| names[*c]).collect();
            text.push(names[first]);
            let (path, line, col) = match &g.needs_at[first] {
                Some(at) => (at.path.clone(), at.line, at.col),
                None => (String::new(), 0, 0),
            };
            d.error_at(line, col, &path, format!("the `needs` graph has a cycle: {}; allowed: a graph without cycles (each Executor runs after the ones it needs)", text.join(" -> ")));
            return;
        }
        seen.push(next);
        cur = next;
    }
}

// ---------------------------------------------------------------------------------------------
// Documents

fn check_version(root: &Node, d: &mut Diags) {
    let Some(v) = root.get("version") else { return };
    let text = match &v.v {
        Value::Null => return,
        Value::Int(i) => i.to_string(),
        Value::Float(f) => crate::yaml::py_float(*f),
        Value::Str(s) => s.clone(),
        _ => String::new(),
    };
    if text.split('.').next() != Some("1") {
        d.bad(
            v,
            "version",
            "1 (a Flow YAML of version 1: `1`, '1' or '1.0')",
        );
    }
}

pub(crate) fn load_flow(root: &Node, ctx: &Ctx, d: &mut Diags) -> Flow {
    d.unknown_keys(root, "", &[FLOW_TOP], "a Flow");
    check_version(root, d);
    let empty = empty_map();
    let with = match root.get("with") {
        None => &empty,
        Some(w) if w.is_null() => &empty,
        Some(w) if w.is_map() => w,
        Some(w) => {
            d.bad(w, "with", "a mapping of Flow and gateway arguments");
            &empty
        }
    };
    let resolved = resolve_args(
        with,
        "with",
        FLOW_ARGS,
        &[GATEWAY_ARGS, DEPLOYMENT_ARGS, CLIENT_ARGS],
        WITH_EXTRA,
        "the Flow's `with`",
        d,
    );
    let with = &resolved;
    if let Some(n) = with.get("inspect")
        && !n.is_null()
        && !n.as_str().is_some_and(|s| {
            ["COLLECT", "HANG", "REMOVE"].contains(&s.to_ascii_uppercase().as_str())
        })
    {
        d.bad(n, "with.inspect", "COLLECT, HANG or REMOVE (any case)");
    }
    let section = match root.get(GATEWAY) {
        None => None,
        Some(s) if s.is_null() => None,
        Some(s) if s.is_map() => Some(s),
        Some(s) => {
            d.bad(s, GATEWAY, "a mapping of gateway arguments");
            None
        }
    };
    let resolved_section = section.map(|s| {
        resolve_args(
            s,
            GATEWAY,
            GATEWAY_ARGS,
            &[],
            &["jcloud"],
            "the `gateway` section",
            d,
        )
    });
    let section = resolved_section.as_ref();
    let gw_in = GatewayIn {
        with,
        with_path: "with".into(),
        section,
    };
    let gateway = gateway(&gw_in, section.and_then(|s| s.get("jcloud")), d);
    let env = with
        .get("env")
        .map(|n| env_map(n, "with.env", d))
        .unwrap_or_default();
    let inherited: Vec<Entry> = with
        .entries()
        .iter()
        .filter(|e| INHERITED.contains(&e.key.as_str()))
        .cloned()
        .collect();

    // Jina looks for a Deployment YAML a Flow names in `with.extra_search_paths`, then in the
    // Flow's folder.
    let mut search = with
        .get("extra_search_paths")
        .map(|n| string_list(n, "with.extra_search_paths", d))
        .unwrap_or_default();
    search.push(String::new());
    let (list, list_key) = match (root.get("executors"), root.get("deployments")) {
        (Some(e), dep) => {
            if let Some(dn) = dep {
                d.warn(
                    dn,
                    "deployments",
                    "both `executors` and `deployments` are given: Jina reads only `executors`",
                );
            }
            (Some(e), "executors")
        }
        (None, dep) => (dep, "deployments"),
    };
    let mut g = Graph {
        executors: vec![],
        needs_at: vec![],
        inspect: vec![],
    };
    let mut naming = Naming {
        names: vec![],
        last: GATEWAY.into(),
    };
    match list.map(|l| &l.v) {
        None | Some(Value::Null) => {}
        Some(Value::Seq(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = join_index(list_key, i);
                match &item.v {
                    Value::Map(_) => {
                        flow_item(item, &path, &inherited, &mut naming, &mut g, ctx, d)
                    }
                    Value::Str(s) => {
                        deployment_ref(item, s, &path, &search, &mut naming, &mut g, ctx, d)
                    }
                    _ => d.bad(
                        item,
                        &path,
                        "an Executor mapping, or the path of a Deployment YAML",
                    ),
                }
            }
        }
        Some(_) => {
            if let Some(l) = list {
                d.bad(l, list_key, "a list of Executors");
            }
        }
    }
    check_graph(&g, d);
    let jc = jcloud::flow(root.get("jcloud"), "jcloud", d);
    Flow {
        name: jc.name.clone(),
        gateway,
        executors: g.executors,
        jcloud: jc,
        env,
    }
}

/// A Deployment YAML: one Executor behind a gateway that listens where the Deployment would.
pub(crate) fn load_deployment(root: &Node, ctx: &Ctx, d: &mut Diags) -> Flow {
    d.unknown_keys(root, "", &[DEPLOYMENT_TOP], "a Deployment");
    if let Some(v) = root.entry("version") {
        d.error_at(
            v.kline,
            v.kcol,
            "version",
            format!(
                "got {}, allowed: no `version` (Jina rejects a version on a Deployment)",
                describe(&v.value)
            ),
        );
    }
    let empty = empty_map();
    let with = match root.get("with") {
        Some(w) if w.is_map() => w,
        Some(w) => {
            d.bad(w, "with", "a mapping of Deployment arguments");
            &empty
        }
        None => {
            d.error(
                root,
                "with",
                "missing; a Deployment YAML needs a `with:` block (Jina fails without one)",
            );
            &empty
        }
    };
    let resolved = resolve_args(
        with,
        "with",
        DEPLOYMENT_ARGS,
        &[GATEWAY_ARGS],
        &["jcloud", "command"],
        "a Deployment's `with`",
        d,
    );
    let with = &resolved;
    let name = match with.get("name") {
        None => "executor".to_string(),
        Some(n) if n.is_null() => "executor".to_string(),
        Some(n) => (Reader { d })
            .text(n, "with.name", "a name")
            .unwrap_or_else(|| "executor".into()),
    };
    let gw_in = GatewayIn {
        with,
        with_path: "with".into(),
        section: None,
    };
    let top_jc = root.get("jcloud").filter(|j| !j.is_null());
    let mut flow_jc = FlowJcloud {
        name: None,
        version: None,
        labels: BTreeMap::new(),
        traces: false,
    };
    let mut exec_jc_owned: Option<Node> = None;
    if let Some(j) = top_jc
        && (Reader { d })
            .map(j, "jcloud", "a mapping of JCloud settings")
            .is_some()
    {
        d.unknown_keys(
            j,
            "jcloud",
            &[jcloud::flow_keys_list(), jcloud::executor_keys()],
            "a Deployment's `jcloud`",
        );
        jcloud::flow_keys(j, "jcloud", &mut flow_jc, d);
        let exec_part: Vec<Entry> = j
            .entries()
            .iter()
            .filter(|e| {
                jcloud::executor_keys().contains(&e.key.as_str())
                    && !matches!(e.key.as_str(), "labels" | "monitor")
            })
            .cloned()
            .collect();
        if with.get("jcloud").is_some() {
            if let Some(e) = exec_part.first() {
                d.warn_at(
                    e.kline,
                    e.kcol,
                    &join_key("jcloud", &e.key),
                    "ignored: `with.jcloud` holds this Deployment's Executor settings",
                );
            }
        } else {
            exec_jc_owned = Some(Node {
                v: Value::Map(exec_part),
                line: j.line,
                col: j.col,
            });
        }
    }
    let (jc, jc_path) = match with.get("jcloud") {
        Some(j) => (Some(j), "with"),
        None => (exec_jc_owned.as_ref(), ""),
    };
    let mut gateway = gateway(&gw_in, None, d);
    gateway.timeout_send = None;
    let args = Args {
        own: with,
        path: "with".into(),
        inherited: &[],
        with_path: String::new(),
    };
    let meta = ExecMeta {
        name,
        needs: vec![GATEWAY.into()],
        port_is_gateway: true,
    };
    let e = executor(&args, meta, jc, jc_path, ctx, d);
    Flow {
        name: flow_jc.name.clone(),
        gateway,
        executors: vec![e],
        jcloud: flow_jc,
        env: BTreeMap::new(),
    }
}
