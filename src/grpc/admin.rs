//! `consent.v1.Admin`: log maintenance, export and import, for operators.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use super::{access::caller, convert};
use crate::{
    broker::Broker,
    domain::{AppId, UserId},
    pb::{self, admin_server::Admin, export_record::Record},
    store::{DecisionRow, Retention},
};

/// Decisions read per page while exporting.
const EXPORT_PAGE: usize = 1024;

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

/// The end of the range a protobuf `Timestamp` may hold
/// (10000-01-01T00:00:00Z), in Unix milliseconds: later grant expiries are
/// refused, not stored as grants that never lapse.
const MAX_TIMESTAMP_MS: u64 = 253_402_300_800_000;

/// An import, checked as a whole: what to write, in order.
struct ImportPlan {
    apps: Vec<(
        AppId,
        crate::domain::AppKind,
        crate::domain::RawDeclarations,
    )>,
    /// Sorted by (app, user, scope), one row per key.
    rows: Vec<DecisionRow>,
}

/// Checks every record of an import before anything is written: each row
/// parses, its app is in the import or registered (`registered`), a grant's
/// scope is declared by that app, a grant's expiry is within the Timestamp
/// range, and no two rows for one (app, user, scope) disagree (identical
/// repeats are kept once); an app appears once, or again identically.
fn validate_import(
    records: Vec<Record>,
    registered: impl Fn(&AppId) -> Result<Option<crate::domain::Declarations>, Status>,
) -> Result<ImportPlan, Status> {
    use std::collections::{btree_map::Entry, BTreeMap, HashMap};

    use crate::domain::{DecisionState, Declarations, Lifetime, LocationKind, Scope};
    let mut apps = Vec::new();
    let mut declared: HashMap<AppId, (crate::domain::AppKind, Declarations)> = HashMap::new();
    let mut rows: BTreeMap<(AppId, UserId, Scope), DecisionRow> = BTreeMap::new();
    let mut run: Option<((AppId, UserId), usize)> = None;
    for record in records {
        match record {
            Record::App(app) => {
                let (id, kind, raw) = convert::app_request(Some(app))?;
                let parsed = Declarations::parse(kind, raw.clone())?;
                match declared.get(&id) {
                    Some(seen) if *seen == (kind, parsed.clone()) => continue,
                    Some(_) => {
                        return Err(Status::invalid_argument(format!(
                            "the import holds two different records for app {id}"
                        )))
                    }
                    None => {}
                }
                declared.insert(id.clone(), (kind, parsed));
                apps.push((id, kind, raw));
            }
            Record::Decision(d) => {
                let row = stored_decision(d)?;
                let user_key = (row.app.clone(), row.user.clone());
                let count = match &run {
                    Some((key, n)) if *key == user_key => n + 1,
                    _ => 1,
                };
                if count > MAX_ROWS_PER_USER {
                    return Err(Status::invalid_argument(format!(
                        "more than {MAX_ROWS_PER_USER} decision rows in a row for app {} user {}: an export has one per scope",
                        row.app, row.user
                    )));
                }
                run = Some((user_key, count));
                let at = format!(
                    "decision for app {} user {} scope {}",
                    row.app, row.user, row.scope
                );
                let expires = match &row.lifetime {
                    Lifetime::Permanent => None,
                    Lifetime::Until { expires_at_ms } => Some(*expires_at_ms),
                    Lifetime::Session { expires_at_ms, .. } => Some(*expires_at_ms),
                };
                if let Some(ms) = expires.filter(|ms| *ms >= MAX_TIMESTAMP_MS) {
                    return Err(Status::invalid_argument(format!(
                        "{at}: decision.expires_at {ms} ms is beyond 9999-12-31, the range of a timestamp"
                    )));
                }
                match rows.entry((row.app.clone(), row.user.clone(), row.scope)) {
                    Entry::Occupied(seen) if *seen.get() == row => {}
                    Entry::Occupied(seen) => {
                        return Err(Status::invalid_argument(format!(
                            "{at}: two rows disagree ({:?} {:?} and {:?} {:?}); an export has one per key",
                            seen.get().state, seen.get().lifetime, row.state, row.lifetime
                        )))
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(row);
                    }
                }
            }
            Record::Header(h) if h.format > EXPORT_FORMAT => {
                return Err(Status::invalid_argument(format!(
                    "the export has format {}; this consentd reads format {EXPORT_FORMAT}",
                    h.format,
                )))
            }
            Record::Header(_) | Record::Event(_) => {}
        }
    }
    // Every row's app, and every grant's declaration.
    let mut checked: HashMap<AppId, Declarations> = HashMap::new();
    for row in rows.values() {
        let declarations = match checked.get(&row.app) {
            Some(d) => d,
            None => {
                let found = match declared.get(&row.app) {
                    Some((_, d)) => Some(d.clone()),
                    None => registered(&row.app)?,
                };
                let Some(d) = found else {
                    return Err(Status::not_found(format!(
                        "decision for app {} user {}: the app is neither in the import nor registered",
                        row.app, row.user
                    )));
                };
                checked.entry(row.app.clone()).or_insert(d)
            }
        };
        if row.state != DecisionState::Granted {
            continue;
        }
        let location = row.scope.info().location;
        let undeclared = (location != LocationKind::None && declarations.desc(row.scope).is_none())
            || (location == LocationKind::Background && !declarations.background_location());
        if undeclared {
            return Err(Status::invalid_argument(format!(
                "decision for app {} user {} scope {}: a grant of a scope the app does not declare",
                row.app, row.user, row.scope
            )));
        }
    }
    Ok(ImportPlan {
        apps,
        rows: rows.into_values().collect(),
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
        caller(&request)?.may_span_all_apps()?;
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
        who.may_span_all_apps()?;
        let mut stream = request.into_inner();
        // The whole import is read and checked before the first write.
        let mut records = Vec::new();
        while let Some(item) = stream.message().await? {
            records.extend(item.record);
        }
        let plan = validate_import(records, |id| match self.broker.get_app(id) {
            Ok(read) => Ok(Some(read.value.declarations.clone())),
            Err(crate::broker::BrokerError::Domain(crate::domain::DomainError::NotFound {
                ..
            })) => Ok(None),
            Err(e) => Err(e.into()),
        })?;
        let (apps, decisions) = (plan.apps.len() as u64, plan.rows.len() as u64);
        let written = self.broker.import(plan.apps, plan.rows, &who).await?;
        let (changed, revision) = (written.value, written.revision);
        tracing::info!(apps, decisions, changed, "import done");
        Ok(Response::new(pb::ImportResponse {
            apps,
            decisions,
            changed,
            revision,
        }))
    }
}
