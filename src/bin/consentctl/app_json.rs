//! Declarations read from the platform's own app.json / game.json.
//!
//! Only `permission`, `requiredBackgroundModes` and `requiredPrivateInfos`
//! matter here; every other key of the file is ignored. The declarations are
//! checked with the daemon's own rules before anything is sent, and errors
//! name the field as developers write it.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use consentd::{
    domain::{AppKind, Declarations, RawDeclarations},
    pb,
};
use serde_json::Value;

/// The file's name for each wire field, for messages.
const FIELDS: [(&str, &str); 3] = [
    ("app.permission", "permission"),
    ("app.required_background_modes", "requiredBackgroundModes"),
    ("app.required_private_infos", "requiredPrivateInfos"),
];

fn strings(file: &Path, json: &Value, field: &str) -> Result<Vec<String>> {
    match json.get(field) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => bail!(
                    "{}: {field}[{i}] must be a string, not {other}",
                    file.display()
                ),
            })
            .collect(),
        Some(other) => bail!(
            "{}: {field} must be an array of strings, not {other}",
            file.display()
        ),
    }
}

/// Reads and checks `file`; returns the app to register.
pub fn read(file: &Path, app_id: &str, kind: pb::AppKind) -> Result<pb::App> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    if !json.is_object() {
        bail!(
            "{}: expected a JSON object at the top level",
            file.display()
        );
    }
    let mut permission = Vec::new();
    match json.get("permission") {
        None => {}
        Some(Value::Object(map)) => {
            for (scope, entry) in map {
                match entry.get("desc") {
                    Some(Value::String(desc)) => permission.push((scope.clone(), desc.clone())),
                    _ => bail!(
                        "{}: permission[{scope:?}] needs a string \"desc\"",
                        file.display()
                    ),
                }
            }
        }
        Some(other) => bail!(
            "{}: permission must be an object, not {other}",
            file.display()
        ),
    }
    let raw = RawDeclarations {
        permission,
        background_modes: strings(file, &json, "requiredBackgroundModes")?,
        private_infos: strings(file, &json, "requiredPrivateInfos")?,
        // The privacy guide is not part of app.json: use --privacy-guide.
        privacy: None,
    };
    let domain_kind = match kind {
        pb::AppKind::MiniGame => AppKind::MiniGame,
        _ => AppKind::MiniProgram,
    };
    if let Err(e) = Declarations::parse(domain_kind, raw.clone()) {
        let message = FIELDS
            .iter()
            .fold(e.to_string(), |m, (wire, json)| m.replace(wire, json));
        bail!("{}: {message}", file.display());
    }
    Ok(pb::App {
        app_id: app_id.to_owned(),
        kind: kind.into(),
        permission: raw
            .permission
            .into_iter()
            .map(|(s, desc)| (s, pb::PermissionDesc { desc }))
            .collect(),
        required_background_modes: raw.background_modes,
        required_private_infos: raw.private_infos,
        ..Default::default()
    })
}
