//! `consent.v1.Admin`: log maintenance, export and import, for operators.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use super::{
    access::{caller, refuse},
    convert,
};
use crate::{
    broker::Broker,
    domain::{AppId, Rpc, UserId},
    pb::{self, admin_server::Admin, export_record::Record},
    store::{DecisionRow, Retention},
};

/// Decisions read per page while exporting.
const EXPORT_PAGE: usize = 1024;
/// Decisions per write job while importing (a user's rows never split).
const IMPORT_BATCH: usize = 1024;

pub struct AdminService {
    broker: Broker,
    retention: Retention,
    /// Owns the export tasks (the daemon waits for them on shutdown).
    exports: TaskTracker,
    /// Ends exports in progress at shutdown.
    stop: CancellationToken,
}

impl AdminService {
    pub fn new(
        broker: Broker,
        retention: Retention,
        exports: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            broker,
            retention,
            exports,
            stop,
        }
    }
}

/// The format of exports. It moves when what an export holds changes, not
/// with the data dir's format: data format 3 changed only how audit records
/// are stored, and exports do not carry them, so an export from this build
/// still imports into a format-2 build.
pub const EXPORT_FORMAT: u64 = 2;

fn record(r: Record) -> Result<pb::ExportRecord, Status> {
    Ok(pb::ExportRecord { record: Some(r) })
}

/// Streams the export into `tx` until done or the client goes away.
async fn export(
    broker: Broker,
    include_events: bool,
    tx: mpsc::Sender<Result<pb::ExportRecord, Status>>,
) {
    let header = pb::ExportHeader {
        revision: broker.revision(),
        format: EXPORT_FORMAT,
    };
    let result: Result<(), Status> = async {
        let send = |r| async {
            tx.send(record(r))
                .await
                .map_err(|_| Status::cancelled("client went away"))
        };
        send(Record::Header(header)).await?;
        let mut after = None;
        loop {
            let apps = broker.apps_after(after.as_ref(), EXPORT_PAGE)?;
            for app in &apps {
                send(Record::App(convert::app(app))).await?;
            }
            match apps.last() {
                Some(last) if apps.len() == EXPORT_PAGE => after = Some(last.id.clone()),
                _ => break,
            }
        }
        let mut after: Option<DecisionRow> = None;
        loop {
            let rows = broker.decisions_after(after.as_ref(), EXPORT_PAGE)?;
            for row in &rows {
                let (expires_at, session_id) = convert::stored_lifetime(&row.lifetime);
                send(Record::Decision(pb::StoredDecision {
                    app_id: row.app.as_str().to_owned(),
                    user_id: row.user.as_str().to_owned(),
                    scope: row.scope.name().to_owned(),
                    state: convert::state(row.state).into(),
                    expires_at,
                    session_id,
                }))
                .await?;
            }
            if rows.len() < EXPORT_PAGE {
                break;
            }
            after = rows.last().cloned();
        }
        if include_events {
            let mut after = broker.compacted_through();
            loop {
                let events = broker.events_after(after, EXPORT_PAGE)?;
                for e in &events {
                    send(Record::Event(convert::event(e))).await?;
                }
                match events.last() {
                    Some(last) if events.len() == EXPORT_PAGE => after = last.revision,
                    _ => break,
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(status) = result {
        if status.code() != tonic::Code::Cancelled {
            let _ = tx.send(Err(status)).await;
        }
    }
}

fn stored_decision(d: pb::StoredDecision) -> Result<DecisionRow, Status> {
    // Ids first: the state's message quotes them, so they must be sane.
    let app = AppId::parse_field("decision.app_id", &d.app_id)?;
    let user = UserId::parse_field("decision.user_id", &d.user_id)?;
    let scope = convert::scope("decision.scope", &d.scope)?;
    let state = match pb::DecisionState::try_from(d.state) {
        Ok(pb::DecisionState::Granted) => crate::domain::DecisionState::Granted,
        Ok(pb::DecisionState::Denied) => crate::domain::DecisionState::Denied,
        _ => {
            return Err(Status::invalid_argument(format!(
                "decision.state {} for {} {} {} must be GRANTED or DENIED",
                d.state, d.app_id, d.user_id, d.scope
            )))
        }
    };
    let lifetime = convert::lifetime_of_stored(d.expires_at, &d.session_id)?;
    if lifetime != crate::domain::Lifetime::Permanent
        && state != crate::domain::DecisionState::Granted
    {
        return Err(Status::invalid_argument(format!(
            "decision for {} {} {}: only grants have a lifetime",
            d.app_id, d.user_id, d.scope
        )));
    }
    Ok(DecisionRow {
        app,
        user,
        scope,
        state,
        lifetime,
    })
}

/// Most consecutive decision rows one (app, user) may have in an import.
const MAX_ROWS_PER_USER: usize = 2 * crate::domain::CATALOG.len();

#[tonic::async_trait]
impl Admin for AdminService {
    type ExportStream = ReceiverStream<Result<pb::ExportRecord, Status>>;

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        caller(&request)?
            .may_span_all_apps(Rpc::Compact)
            .map_err(refuse)?;
        let done = self.broker.compact(self.retention).await?;
        Ok(Response::new(pb::CompactResponse {
            removed_events: done.removed,
            compacted_through: done.compacted_through,
            revision: self.broker.revision(),
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        caller(&request)?
            .may_span_all_apps(Rpc::Verify)
            .map_err(refuse)?;
        let v = self.broker.verify().await?;
        Ok(Response::new(pb::VerifyResponse {
            consistent: v.mismatches.is_empty(),
            decisions: v.decisions,
            retained_events: v.retained_events,
            compacted_through: v.compacted_through,
            mismatches: v.mismatches,
            revision: v.revision,
        }))
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        caller(&request)?
            .may_span_all_apps(Rpc::Export)
            .map_err(refuse)?;
        let (tx, rx) = mpsc::channel(256);
        // Ends when the export is done, the client stops reading, or the
        // daemon shuts down.
        let (broker, stop) = (self.broker.clone(), self.stop.clone());
        let include_events = request.into_inner().include_events;
        self.exports.spawn(async move {
            tokio::select! {
                () = export(broker, include_events, tx.clone()) => {}
                () = stop.cancelled() => {
                    // Never wait for a client that stopped reading: shutdown
                    // waits for this task.
                    let status = Status::unavailable("consentd is shutting down; export again");
                    let _ = tx.try_send(Err(status));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn import(
        &self,
        request: Request<Streaming<pb::ExportRecord>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let who = caller(&request)?;
        who.may_span_all_apps(Rpc::Import).map_err(refuse)?;
        let mut stream = request.into_inner();
        let (mut apps, mut decisions, mut changed) = (0u64, 0u64, 0u64);
        let mut batch: Vec<DecisionRow> = Vec::new();
        let mut revision = self.broker.revision();
        while let Some(item) = stream.message().await? {
            match item.record {
                Some(Record::App(app)) => {
                    let (id, kind, raw) = convert::app_request(Some(app))?;
                    revision = self.broker.upsert_app(id, kind, raw, &who).await?.revision;
                    apps += 1;
                }
                Some(Record::Decision(d)) => {
                    let row = stored_decision(d)?;
                    // Flush full batches only between users.
                    let new_user = batch
                        .last()
                        .is_some_and(|l| l.app != row.app || l.user != row.user);
                    // A user has one row per scope: more in a row is not an
                    // export, and must not grow the batch without bound.
                    let run = batch
                        .iter()
                        .rev()
                        .take_while(|l| l.app == row.app && l.user == row.user)
                        .count();
                    if run >= MAX_ROWS_PER_USER {
                        return Err(Status::invalid_argument(format!(
                            "more than {MAX_ROWS_PER_USER} decision rows in a row for app {} user {}: an export has one per scope",
                            row.app, row.user
                        )));
                    }
                    if batch.len() >= IMPORT_BATCH && new_user {
                        let written = self
                            .broker
                            .import_decisions(std::mem::take(&mut batch), &who)
                            .await?;
                        changed += written.value;
                        revision = written.revision;
                    }
                    batch.push(row);
                    decisions += 1;
                }
                Some(Record::Header(h)) if h.format > EXPORT_FORMAT => {
                    return Err(Status::invalid_argument(format!(
                        "the export has format {}; this consentd reads format {EXPORT_FORMAT}",
                        h.format,
                    )))
                }
                Some(Record::Header(_)) | Some(Record::Event(_)) | None => {}
            }
        }
        if !batch.is_empty() {
            let written = self.broker.import_decisions(batch, &who).await?;
            changed += written.value;
            revision = written.revision;
        }
        tracing::info!(apps, decisions, changed, "import done");
        Ok(Response::new(pb::ImportResponse {
            apps,
            decisions,
            changed,
            revision,
        }))
    }
}
