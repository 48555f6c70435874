//! Tables and summaries for people. Scripts use `--json`, which prints the server's answer as is,
//! so nothing here needs to be stable for parsing.

use super::Kind;
use comfy_table::presets::{UTF8_FULL, UTF8_FULL_CONDENSED};
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use serde_json::Value;
use std::io::IsTerminal;

/// Rounded corners like the public client's rich tables; lists without lines between rows.
fn table() -> Table {
    styled(UTF8_FULL_CONDENSED)
}

/// With a line between rows: for multi-line cells (status, panel).
fn lined_table() -> Table {
    styled(UTF8_FULL)
}

fn styled(style: comfy_table::TableStyle) -> Table {
    let mut t = Table::new();
    t.load_style(style.with_rounded_corners());
    // Wrap to the terminal's width only when there is a real one: piped output keeps whole
    // lines, and a pseudo-terminal that reports no size (0 columns) must not squeeze every cell
    // to one character.
    if std::io::stdout().is_terminal() && t.width().is_some_and(|w| w >= 40) {
        t.set_content_arrangement(ContentArrangement::Dynamic);
    }
    t
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// `2024-01-01T10:00:00.123456+00:00` → `2024-01-01 10:00:00 +00:00`: readable, and still the
/// server's own clock and zone (we do not guess the local one).
pub fn when(iso: &str) -> String {
    let iso = iso.trim();
    if iso.len() < 19 || iso.as_bytes().get(10) != Some(&b'T') {
        return dash(iso);
    }
    let (date_time, rest) = iso.split_at(19);
    let zone = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let zone = match zone {
        "Z" | "+00:00" | "+0000" | "" => "UTC".to_string(),
        z => z.to_string(),
    };
    format!("{} {zone}", date_time.replacen('T', " ", 1))
}

/// One `name: url` line per endpoint, gateway first.
pub fn endpoints(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return match v {
            Value::Null => "-".into(),
            other => other.to_string(),
        };
    };
    if map.is_empty() {
        return "-".into();
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| (k.as_str() != "gateway", k.as_str()));
    keys.into_iter()
        .map(|k| {
            let url = map[k]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| map[k].to_string());
            format!("{k}: {url}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn cph_total(item: &Value) -> String {
    match item.pointer("/CPH/total") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "-".into(),
    }
}

/// The list: ID | Status | Endpoint(s) | Credits Per Hour | Created, as the public client shows.
pub fn list_table(items: &[Value]) -> String {
    let mut t = table();
    t.set_header(["ID", "Status", "Endpoint(s)", "Credits Per Hour", "Created"]);
    for it in items {
        t.add_row(vec![
            Cell::new(str_at(it, "/id")),
            Cell::new(dash(str_at(it, "/status/phase"))).set_alignment(CellAlignment::Center),
            Cell::new(endpoints(
                it.pointer("/status/endpoints").unwrap_or(&Value::Null),
            )),
            Cell::new(cph_total(it)),
            Cell::new(when(str_at(it, "/ctime"))),
        ]);
    }
    t.to_string()
}

fn yaml(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim_end().to_string(),
        Value::Null => "-".into(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|_| other.to_string()),
    }
}

fn json_pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `status`: a two-column table, rows as the public client's.
pub fn status_table(s: &Value, verbose: bool) -> String {
    let mut t = lined_table();
    t.add_row(vec![Cell::new("ID"), Cell::new(str_at(s, "/id"))]);
    t.add_row(vec![
        Cell::new("Phase"),
        Cell::new(dash(str_at(s, "/status/phase"))).set_alignment(CellAlignment::Center),
    ]);
    t.add_row(vec![
        Cell::new("Endpoint(s)"),
        Cell::new(endpoints(
            s.pointer("/status/endpoints").unwrap_or(&Value::Null),
        )),
    ]);
    if let Some(d) = s.pointer("/status/dashboards")
        && truthy(d)
    {
        t.add_row(vec![Cell::new("Dashboard"), Cell::new(endpoints(d))]);
    }
    if verbose {
        if let Some(c) = s.pointer("/status/conditions")
            && truthy(c)
        {
            t.add_row(vec![Cell::new("Details"), Cell::new(json_pretty(c))]);
        }
        let version = str_at(s, "/status/version");
        if !version.is_empty() {
            t.add_row(vec![Cell::new("Jina Version"), Cell::new(version)]);
        }
    }
    if let Some(spec) = s.get("spec")
        && truthy(spec)
    {
        t.add_row(vec![Cell::new("Spec"), Cell::new(yaml(spec))]);
    }
    if let Some(cph) = s.get("CPH")
        && truthy(cph)
    {
        t.add_row(vec![
            Cell::new("Credits Per Hour"),
            Cell::new(json_pretty(cph)),
        ]);
    }
    let err = str_at(s, "/error");
    if !err.is_empty() {
        t.add_row(vec![Cell::new("Error"), Cell::new(err)]);
    }
    t.add_row(vec![
        Cell::new("Created"),
        Cell::new(when(str_at(s, "/ctime"))),
    ]);
    t.add_row(vec![
        Cell::new("Updated"),
        Cell::new(when(str_at(s, "/utime"))),
    ]);
    t.to_string()
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(_) => true,
    }
}

/// After a deploy, resume or pause: a titled box with the ID and one row per endpoint.
pub fn success_panel(kind: Kind, id: &str, status: &Value, paused: bool) -> String {
    let mut t = table();
    let title = format!(
        "🎉 {} is {}!",
        kind.noun_title(),
        if paused { "paused" } else { "available" }
    );
    t.set_header(vec![Cell::new(title), Cell::new("")]);
    t.add_row(vec![Cell::new("ID"), Cell::new(id)]);
    if let Some(map) = status
        .pointer("/status/endpoints")
        .and_then(Value::as_object)
    {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort_by_key(|k| (k.as_str() != "gateway", k.as_str()));
        for k in keys {
            let url = map[k]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| map[k].to_string());
            t.add_row(vec![Cell::new(title_case(k)), Cell::new(url)]);
        }
    }
    format!(
        "{t}\nNext: `jc {cli} status {id}`, `jc {cli} logs {id}`, `jc {cli} remove {id}`",
        cli = kind.cli()
    )
}

/// Python's `str.title()` for endpoint names, as the public panel shows them (`Gateway`).
pub fn title_case(s: &str) -> String {
    let mut out = String::new();
    let mut up = true;
    for c in s.chars() {
        if c.is_alphabetic() {
            if up {
                out.extend(c.to_uppercase());
            } else {
                out.extend(c.to_lowercase());
            }
            up = false;
        } else {
            out.push(c);
            up = true;
        }
    }
    out
}

/// Secrets in a list show their keys, not their values: `get` (or `--json`) shows values.
pub fn secrets_table(items: &[Value]) -> String {
    let mut t = table();
    t.set_header(["Name", "Keys"]);
    for s in items {
        let keys = s
            .get("data")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        t.add_row(vec![str_at(s, "/name").to_string(), dash(&keys)]);
    }
    t.to_string()
}

pub fn secret_table(s: &Value) -> String {
    let mut t = table();
    t.set_header(["Name", "Key", "Value"]);
    let name = str_at(s, "/name");
    if let Some(m) = s.get("data").and_then(Value::as_object) {
        for (k, v) in m {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            t.add_row(vec![name.to_string(), k.clone(), v]);
        }
    }
    t.to_string()
}

fn job_status(j: &Value) -> String {
    let last = j
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.last());
    match last {
        Some(c) => dash(str_at(c, "/type")),
        None if !str_at(j, "/status/completionTime").is_empty() => "Complete".into(),
        None => "Running".into(),
    }
}

pub fn jobs_table(items: &[Value]) -> String {
    let mut t = table();
    t.set_header([
        "Name",
        "Status",
        "Start Time",
        "Completion Time",
        "Last Probe Time",
    ]);
    for j in items {
        let last_probe = j
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.last())
            .map(|c| when(str_at(c, "/lastProbeTime")))
            .unwrap_or_else(|| "-".into());
        t.add_row(vec![
            str_at(j, "/name").to_string(),
            job_status(j),
            when(str_at(j, "/status/startTime")),
            when(str_at(j, "/status/completionTime")),
            last_probe,
        ]);
    }
    t.to_string()
}

/// `logs`: the server sends pod → text; each pod gets a header line.
pub fn logs(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut out = String::new();
            for (pod, text) in m {
                out.push_str(&format!("── {pod} ──\n"));
                let text = text
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| text.to_string());
                out.push_str(&text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            out
        }
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_has_the_public_columns_and_readable_cells() {
        let out = list_table(&[json!({
            "id": "merry-magpie-82b9c0897f",
            "status": {"phase": "Serving", "endpoints": {"exec1": "grpc://127.0.0.1:2", "gateway": "grpc://127.0.0.1:1"}},
            "CPH": {"total": 3},
            "ctime": "2024-01-01T10:00:00.123456+00:00"
        })]);
        let header = out.lines().nth(1).unwrap();
        for col in ["ID", "Status", "Endpoint(s)", "Credits Per Hour", "Created"] {
            assert!(header.contains(col), "{out}");
        }
        assert!(out.contains("merry-magpie-82b9c0897f"));
        assert!(out.contains("2024-01-01 10:00:00 UTC"), "{out}");
        let gw = out.find("gateway: grpc://127.0.0.1:1").expect(&out);
        let ex = out.find("exec1: grpc://127.0.0.1:2").expect(&out);
        assert!(gw < ex, "gateway first:\n{out}");
        assert!(out.starts_with('╭'), "rounded corners:\n{out}");
    }

    #[test]
    fn status_rows() {
        let s = json!({
            "id": "f1",
            "status": {"phase": "Failed", "endpoints": {}, "conditions": [{"type": "FlowAlive"}], "version": "3.34.0"},
            "spec": {"jtype": "Flow", "executors": [{"name": "e", "replicas": 2}]},
            "error": "Executor e: its replicas failed",
            "ctime": "2024-01-01T10:00:00Z",
        });
        let out = status_table(&s, false);
        assert!(
            out.contains("Failed") && out.contains("Executor e: its replicas failed"),
            "{out}"
        );
        assert!(out.contains("replicas: 2"), "spec as YAML:\n{out}");
        assert!(!out.contains("FlowAlive") && !out.contains("Jina Version"));
        let out = status_table(&s, true);
        assert!(out.contains("FlowAlive") && out.contains("3.34.0"), "{out}");
    }

    #[test]
    fn panel_secrets_jobs_logs() {
        let p = success_panel(
            Kind::Flow,
            "f1",
            &json!({"status": {"endpoints": {"gateway": "grpc://h:1"}}}),
            false,
        );
        assert!(
            p.contains("Flow is available!") && p.contains("Gateway") && p.contains("grpc://h:1"),
            "{p}"
        );
        let s = secrets_table(&[json!({"name": "db", "data": {"USER": "u", "PASS": "p"}})]);
        assert!(
            s.contains("db") && s.contains("USER") && !s.contains("│ p"),
            "{s}"
        );
        let j = jobs_table(&[
            json!({"name": "j", "status": {"startTime": "2024-01-01T10:00:00Z",
            "conditions": [{"type": "Complete", "lastProbeTime": "2024-01-01T10:01:00Z"}]}}),
        ]);
        assert!(j.contains("Complete") && j.contains("10:01:00"), "{j}");
        assert_eq!(logs(&json!({"pod-1": "a\nb"})), "── pod-1 ──\na\nb\n");
        assert_eq!(title_case("my_exec-1"), "My_Exec-1");
        assert_eq!(when("nonsense"), "nonsense");
        assert_eq!(when(""), "-");
    }
}
