//! `consent.v1.Admin`: log maintenance, export and import, for operators.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use super::{access::caller, convert};
use crate::{
    broker::Broker,
    pb::{self, admin_server::Admin, export_record::Record},
    store::{DecisionRow, Retention},
};

/// Decisions read per page while exporting.
const EXPORT_PAGE: usize = 1024;

pub struct AdminService {
    broker: Broker,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    retention: Retention,
    /// Owns the export tasks (the daemon waits for them on shutdown).
    exports: TaskTracker,
    /// Ends exports in progress at shutdown.
    stop: CancellationToken,
}

impl AdminService {
    pub fn new(
        broker: Broker,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        retention: Retention,
        exports: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            broker,
            metrics,
            retention,
            exports,
            stop,
        }
    }
}

pub use crate::domain::import::EXPORT_FORMAT;

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

#[tonic::async_trait]
impl Admin for AdminService {
    type ExportStream = ReceiverStream<Result<pb::ExportRecord, Status>>;

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        caller(&request)?.may_span_all_apps()?;
        let done = self.broker.compact(self.retention).await?;
        Ok(Response::new(pb::CompactResponse {
            removed_events: done.removed,
            compacted_through: done.compacted_through,
            revision: self.broker.revision(),
        }))
    }

    async fn erase_user(
        &self,
        request: Request<pb::EraseUserRequest>,
    ) -> Result<Response<pb::EraseUserResponse>, Status> {
        // The user's data may be in any app: only principals covering all.
        let who = caller(&request)?;
        who.may_span_all_apps()?;
        let convert::UserCall(user) = request.into_inner().try_into()?;
        let written = self.broker.erase_user(&user, &who).await?;
        let e = &written.value;
        self.metrics
            .observe_user_erasure(e.rewritten, e.scrub_pending);
        Ok(Response::new(pb::EraseUserResponse {
            revoked_decisions: written.events.len() as u64,
            apps: e.apps,
            rewritten_records: e.rewritten,
            scrub_pending: e.scrub_pending,
            revision: written.revision,
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        caller(&request)?.may_span_all_apps()?;
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
        caller(&request)?.may_span_all_apps()?;
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
                    let status = Status::from(crate::store::StoreError::Closed);
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
        who.may_span_all_apps()?;
        let mut stream = request.into_inner();
        // The whole import is read and checked before the first write.
        let mut records = Vec::new();
        while let Some(item) = stream.message().await? {
            records.extend(item.record);
        }
        let records = records.into_iter().map(convert::import_record);
        let done = self.broker.import(records, &who).await?;
        let (apps, decisions, changed, revision) =
            (done.apps, done.decisions, done.changed, done.revision);
        tracing::info!(apps, decisions, changed, "import done");
        Ok(Response::new(pb::ImportResponse {
            apps,
            decisions,
            changed,
            revision,
        }))
    }
}
