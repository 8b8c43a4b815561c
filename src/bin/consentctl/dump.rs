//! `consentctl export` / `import`: the store as JSON lines.
//!
//! One JSON object per line, tagged by `type`: a `header` first, then `app`s,
//! `decision`s and, with `--events`, the retained `event`s. Import reads apps
//! and decisions (events are history, not state) and checks that the daemon
//! took exactly as many as the file holds.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use consentd::{
    client::ClientChannel,
    pb::{self, admin_client::AdminClient, export_record::Record},
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt as _;

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Header {
        revision: u64,
        format: u64,
    },
    App {
        app_id: String,
        kind: String,
        permission: BTreeMap<String, String>,
        required_background_modes: Vec<String>,
        required_private_infos: Vec<String>,
        /// The privacy guide, if the app has one (its version is the
        /// daemon's to set).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        privacy: Option<PrivacyLine>,
    },
    Decision {
        app_id: String,
        user_id: String,
        scope: String,
        state: String,
        /// Timed and one-time grants: when they lapse (Unix ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
        /// One-time grants: the runtime session.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        session_id: String,
    },
    Event {
        revision: u64,
        app_id: String,
        user_id: String,
        scope: String,
        old_state: String,
        new_state: String,
        cause: String,
    },
}

/// An app's privacy guide in a dump.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivacyLine {
    name: String,
    info_types: Vec<String>,
}

use crate::render::{cause, kind, state};

fn line_of(record: Record) -> Option<Line> {
    Some(match record {
        Record::Header(h) => Line::Header {
            revision: h.revision,
            format: h.format,
        },
        Record::App(a) => Line::App {
            app_id: a.app_id,
            kind: kind(a.kind),
            permission: a.permission.into_iter().map(|(k, v)| (k, v.desc)).collect(),
            required_background_modes: a.required_background_modes,
            required_private_infos: a.required_private_infos,
            privacy: a.privacy.map(|p| PrivacyLine {
                name: p.name,
                info_types: p.info_types,
            }),
        },
        Record::Decision(d) => Line::Decision {
            app_id: d.app_id,
            user_id: d.user_id,
            scope: d.scope,
            state: state(d.state),
            expires_at_ms: d
                .expires_at
                .map(|t| t.seconds.max(0) as u64 * 1000 + t.nanos.max(0) as u64 / 1_000_000),
            session_id: d.session_id,
        },
        Record::Event(e) => Line::Event {
            revision: e.revision,
            app_id: e.app_id,
            user_id: e.user_id,
            scope: e.scope,
            old_state: state(e.old_state),
            new_state: state(e.new_state),
            cause: cause(e.cause),
        },
    })
}

/// A line back as a record to import; `None` for lines import skips.
fn record_of(line: Line, at: usize) -> Result<Option<Record>> {
    let enum_value = |prefix: &str, short: &str, parse: fn(&str) -> Option<i32>| {
        parse(&format!("{prefix}{short}"))
            .with_context(|| format!("line {at}: unknown value {short:?}"))
    };
    Ok(match line {
        Line::Header { revision, format } => {
            Some(Record::Header(pb::ExportHeader { revision, format }))
        }
        Line::App {
            app_id,
            kind,
            permission,
            required_background_modes,
            required_private_infos,
            privacy,
        } => Some(Record::App(pb::App {
            app_id,
            kind: enum_value("APP_KIND_", &kind, |s| {
                pb::AppKind::from_str_name(s).map(Into::into)
            })?,
            permission: permission
                .into_iter()
                .map(|(k, desc)| (k, pb::PermissionDesc { desc }))
                .collect(),
            required_background_modes,
            required_private_infos,
            privacy: privacy.map(|p| pb::PrivacyGuide {
                name: p.name,
                info_types: p.info_types,
                version: 0,
            }),
            ..Default::default()
        })),
        Line::Decision {
            app_id,
            user_id,
            scope,
            state,
            expires_at_ms,
            session_id,
        } => Some(Record::Decision(pb::StoredDecision {
            app_id,
            user_id,
            scope,
            state: enum_value("DECISION_STATE_", &state, |s| {
                pb::DecisionState::from_str_name(s).map(Into::into)
            })?,
            expires_at: expires_at_ms.map(|ms| prost_types::Timestamp {
                seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            session_id,
        })),
        Line::Event { .. } => None,
    })
}

fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let template = if len.is_some() {
        "{msg} [{bar:40}] {pos}/{len} ({per_sec})"
    } else {
        "{msg} {pos} records ({per_sec})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// Writes the export to `output` (or stdout); returns (apps, decisions, events).
pub async fn export(
    channel: ClientChannel,
    include_events: bool,
    output: Option<&Path>,
) -> Result<(u64, u64, u64)> {
    let mut stream = AdminClient::new(channel)
        .export(pb::ExportRequest { include_events })
        .await?
        .into_inner();
    let sink: Box<dyn std::io::Write> = match output {
        Some(path) => Box::new(
            // User ids and their decisions: readable by the owner only.
            {
                use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
                file
            },
        ),
        None => Box::new(super::stdout::Stdout),
    };
    let mut out = BufWriter::new(sink);
    let progress = bar(None, "exporting");
    let (mut apps, mut decisions, mut events) = (0, 0, 0);
    while let Some(item) = stream.next().await {
        let Some(record) = item?.record else { continue };
        match &record {
            Record::App(_) => apps += 1,
            Record::Decision(_) => decisions += 1,
            Record::Event(_) => events += 1,
            Record::Header(_) => {}
        }
        if let Some(line) = line_of(record) {
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        progress.inc(1);
    }
    out.flush()?;
    progress.finish_and_clear();
    Ok((apps, decisions, events))
}

/// Streams `input` into the daemon; checks the counts it reports.
pub async fn import(channel: ClientChannel, input: &Path) -> Result<pb::ImportResponse> {
    let open =
        || std::fs::File::open(input).with_context(|| format!("cannot read {}", input.display()));
    let total = BufReader::new(open()?).lines().count() as u64;
    let progress = bar(Some(total), "importing");
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let reader = {
        let (file, progress) = (open()?, progress.clone());
        tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
            let (mut apps, mut decisions) = (0, 0);
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let line = line?;
                progress.inc(1);
                if line.trim().is_empty() {
                    continue;
                }
                let parsed: Line = serde_json::from_str(&line)
                    .with_context(|| format!("line {}: not an export record", i + 1))?;
                match record_of(parsed, i + 1)? {
                    Some(record) => {
                        match record {
                            Record::App(_) => apps += 1,
                            Record::Decision(_) => decisions += 1,
                            _ => {}
                        }
                        if tx
                            .blocking_send(pb::ExportRecord {
                                record: Some(record),
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    None => continue,
                }
            }
            Ok((apps, decisions))
        })
    };
    let response = AdminClient::new(channel)
        .import(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let (apps, decisions) = reader.await??;
    let response = response?.into_inner();
    progress.finish_and_clear();
    if (response.apps, response.decisions) != (apps, decisions) {
        bail!(
            "the daemon took {} apps and {} decisions, but {} holds {apps} and {decisions}",
            response.apps,
            response.decisions,
            input.display()
        );
    }
    Ok(response)
}
