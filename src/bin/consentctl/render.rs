//! Responses as JSON values; tables are drawn from the same values, so the
//! two outputs never disagree.

use consentd::pb;
use serde_json::{json, Map, Value};

/// Enum names without their type prefix: `OUTCOME_GRANTED` -> `GRANTED`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

pub fn outcome(v: i32) -> String {
    pb::Outcome::try_from(v).map_or_else(|_| v.to_string(), |e| short(e.as_str_name(), "OUTCOME_"))
}

pub fn state(v: i32) -> String {
    pb::DecisionState::try_from(v).map_or_else(
        |_| v.to_string(),
        |e| short(e.as_str_name(), "DECISION_STATE_"),
    )
}

fn reason(v: i32) -> String {
    pb::Reason::try_from(v).map_or_else(|_| v.to_string(), |e| short(e.as_str_name(), "REASON_"))
}

pub fn cause(v: i32) -> String {
    pb::Cause::try_from(v).map_or_else(|_| v.to_string(), |e| short(e.as_str_name(), "CAUSE_"))
}

pub fn kind(v: i32) -> String {
    pb::AppKind::try_from(v).map_or_else(|_| v.to_string(), |e| short(e.as_str_name(), "APP_KIND_"))
}

fn availability(v: i32) -> String {
    pb::Availability::try_from(v).map_or_else(
        |_| v.to_string(),
        |e| short(e.as_str_name(), "AVAILABILITY_"),
    )
}

fn location(v: i32) -> String {
    pb::LocationOption::try_from(v).map_or_else(
        |_| v.to_string(),
        |e| short(e.as_str_name(), "LOCATION_OPTION_"),
    )
}

fn platform(v: i32) -> String {
    pb::Platform::try_from(v)
        .map_or_else(|_| v.to_string(), |e| short(e.as_str_name(), "PLATFORM_"))
}

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref().map_or(Value::Null, |t| json!(t.to_string()))
}

pub fn decision(d: &pb::Decision) -> Value {
    let mut v = json!({
        "scope": d.scope,
        "outcome": outcome(d.outcome),
        "state": state(d.state),
        "err_msg": d.err_msg,
        "reason": reason(d.reason),
        "rule": d.rule,
    });
    if let Some(p) = &d.prompt {
        v["prompt"] = json!({
            "scope_description": p.scope_description,
            "app_desc": p.app_desc,
            "background_location": p.background_location,
        });
    }
    // Set only by the features beyond the platform: absent otherwise.
    if d.expires_at.is_some() {
        v["expires_at"] = time(&d.expires_at);
    }
    if !d.session_id.is_empty() {
        v["session_id"] = json!(d.session_id);
    }
    if d.err_no != 0 {
        v["err_no"] = json!(d.err_no);
    }
    if d.embargo_until.is_some() {
        v["embargo_until"] = time(&d.embargo_until);
    }
    v
}

pub fn audit_record(r: &pb::AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "time": time(&r.time),
        "user": r.user_id,
        "scope": r.scope,
        "action": pb::AuditAction::try_from(r.action)
            .map_or_else(|_| r.action.to_string(), |a| a.as_str_name().trim_start_matches("AUDIT_ACTION_").to_owned()),
        "principal": r.principal,
        "client": r.client.as_ref().map_or_else(String::new, |c| {
            format!("{} {} / {}", platform(c.platform), c.host_version, c.sdk_version)
        }),
    })
}

pub fn change(c: &pb::DecisionChange) -> Value {
    json!({
        "revision": c.revision,
        "scope": c.scope,
        "old_state": state(c.old_state),
        "new_state": state(c.new_state),
        "cause": cause(c.cause),
    })
}

/// One line per event for the live tail.
pub fn event_line(e: &pb::DecisionEvent) -> String {
    format!(
        "{:>8}  {}  {}  {}  {}  {} -> {}  ({})",
        e.revision,
        time(&e.time).as_str().unwrap_or("-"),
        e.app_id,
        e.user_id,
        e.scope,
        state(e.old_state),
        state(e.new_state),
        cause(e.cause)
    )
}

/// One row per (app, scope) of a user's listing.
pub fn user_rows(apps: &[pb::UserAppDecisions]) -> Vec<Value> {
    apps.iter()
        .flat_map(|a| {
            a.decisions.iter().map(|d| {
                json!({
                    "app": a.app_id,
                    "scope": d.scope,
                    "state": state(d.state),
                    "cause": cause(d.cause),
                    "updated": time(&d.updated_at),
                    "revision": d.revision,
                    "expires": d.expires_at.as_ref().map_or(Value::String(String::new()), |_| time(&d.expires_at)),
                    "session": d.session_id,
                })
            })
        })
        .collect()
}

pub fn event(e: &pb::DecisionEvent) -> Value {
    json!({
        "revision": e.revision,
        "app": e.app_id,
        "scope": e.scope,
        "old_state": state(e.old_state),
        "new_state": state(e.new_state),
        "cause": cause(e.cause),
    })
}

pub fn app(a: &pb::App) -> Value {
    let permission: Map<String, Value> = a
        .permission
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.desc)))
        .collect();
    json!({
        "app_id": a.app_id,
        "kind": kind(a.kind),
        "permission": permission,
        "required_background_modes": a.required_background_modes,
        "required_private_infos": a.required_private_infos,
        "revision": a.revision,
        "updated_at": time(&a.updated_at),
    })
}

pub fn scope(s: &pb::ScopeInfo) -> Value {
    json!({
        "scope": s.scope,
        "description": s.description,
        "interfaces": s.interfaces,
        "mini_program": availability(s.mini_program),
        "mini_game": availability(s.mini_game),
        "desc_required": s.desc_required,
        "background_mode_required": s.background_mode_required,
    })
}

pub fn setting_item(i: &pb::SettingItem) -> Value {
    if i.location {
        json!({
            "scope": i.scope,
            "title": i.title,
            "location_option": location(i.location_option),
            "location_options": i.location_options.iter().map(|o| location(*o)).collect::<Vec<_>>(),
        })
    } else {
        json!({ "scope": i.scope, "title": i.title, "enabled": i.enabled })
    }
}

pub fn auth_setting(map: &std::collections::HashMap<String, bool>) -> Value {
    let sorted: std::collections::BTreeMap<_, _> = map.iter().collect();
    json!(sorted)
}

pub fn rules(r: &pb::GetRulesResponse) -> Value {
    json!({
        "popup_rules": r.popup_rules.iter().map(|p| json!({
            "id": p.id,
            "scope": p.scope,
            "platforms": p.platforms.iter().map(|x| platform(*x)).collect::<Vec<_>>(),
            "min_host_version": p.min_host_version,
        })).collect::<Vec<_>>(),
        "min_sdk_rules": r.min_sdk_rules.iter().map(|m| {
            let (key, target) = match &m.target {
                Some(pb::min_sdk_rule::Target::Api(a)) => ("api", a.clone()),
                Some(pb::min_sdk_rule::Target::Scope(s)) => ("scope", s.clone()),
                None => ("target", String::new()),
            };
            json!({ "id": m.id, key: target, "min_sdk_version": m.min_sdk_version })
        }).collect::<Vec<_>>(),
        "revision": r.revision,
    })
}

/// Prints a value: JSON on one line, or a readable table. A write error (a
/// closed pipe) is returned, never a panic.
pub fn print(value: &Value, as_json: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = super::stdout::Stdout;
    if as_json {
        writeln!(stdout, "{value}")?;
    } else {
        write!(stdout, "{}", table(value, 0))?;
    }
    stdout.flush()
}

/// Widest table printed (columns wrap their text to fit).
const MAX_WIDTH: u16 = 100;

/// Key/value lines for objects; arrays of objects become aligned columns.
/// Empty values (no text, no items) are left out.
fn table(value: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            let shown: Vec<(&String, &Value)> = map.iter().filter(|(_, v)| !is_empty(v)).collect();
            let width = shown.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            let mut out = String::new();
            for (k, v) in shown {
                match v {
                    Value::Object(_) | Value::Array(_) if !is_flat(v) => {
                        out.push_str(&format!("{pad}{k}:\n{}", table(v, indent + 2)));
                    }
                    _ => out.push_str(&format!("{pad}{k:<width$}  {}\n", scalar(v))),
                }
            }
            out
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            columns(items, &pad)
        }
        other => format!("{pad}{}\n", scalar(other)),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

fn is_flat(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().all(|i| !i.is_object() && !i.is_array()),
        Value::Object(map) => map.is_empty(),
        _ => true,
    }
}

/// Rows of objects as aligned columns (comfy-table, no borders); columns
/// empty in every row are left out. Rows too wide for [`MAX_WIDTH`] are
/// printed as records instead: the first field as a heading, then the
/// others as key/value lines, values wrapped to fit.
fn columns(rows: &[Value], pad: &str) -> String {
    let mut headers: Vec<&str> = Vec::new();
    for row in rows {
        for (k, v) in row.as_object().into_iter().flat_map(|m| m.iter()) {
            if !headers.contains(&k.as_str()) && !is_empty(v) {
                headers.push(k);
            }
        }
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            headers
                .iter()
                .map(|h| r.get(*h).map_or(String::new(), scalar))
                .collect()
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|row| row[i].chars().count())
            .chain([headers[i].len()])
            .max()
            .unwrap_or(0)
    };
    let natural: usize = (0..headers.len()).map(|i| width(i) + 2).sum::<usize>() + pad.len();
    let avail = usize::from(MAX_WIDTH).saturating_sub(pad.len());
    if natural <= usize::from(MAX_WIDTH) {
        let header: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
        return render_table(header, cells, avail, pad);
    }
    let mut out = String::new();
    for row in cells {
        let (first, rest) = row.split_first().expect("a row has a first field");
        out.push_str(&format!("{pad}{first}\n"));
        let pairs = headers[1..]
            .iter()
            .zip(rest)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| vec![(*k).to_owned(), v.clone()])
            .collect();
        out.push_str(&render_table(
            Vec::new(),
            pairs,
            avail - 2,
            &format!("{pad}  "),
        ));
    }
    out
}

/// A borderless table at most `width` wide, each line after `pad`.
fn render_table(header: Vec<String>, rows: Vec<Vec<String>>, width: usize, pad: &str) -> String {
    use comfy_table::{presets::NOTHING, ContentArrangement, Table};
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(u16::try_from(width).unwrap_or(MAX_WIDTH));
    if !header.is_empty() {
        t.set_header(header);
    }
    for row in rows {
        t.add_row(row);
    }
    // comfy-table pads each cell with one space on both sides.
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(&format!(
            "{pad}{}\n",
            line.get(1..).unwrap_or("").trim_end()
        ));
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(", "),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}
