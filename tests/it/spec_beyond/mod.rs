//! Issue #8 "Beyond the platform", read from the issue text, the proto and the
//! README (not from the implementation): the privacy-agreement gate, timed and
//! one-time grants that lapse by themselves (EXPIRED events, resumable Watch,
//! restarts), the consent audit trail and the anti-nag policy.

use std::time::{Duration, Instant, SystemTime};

use consentd::{
    config::Config,
    pb::{self, grant_lifetime, watch_response, Answer, AuditAction},
};
use prost_types::Timestamp;
use tonic::Streaming;

use crate::util::{android, Rpc, TestDaemon};

mod anti_nag;
mod audit;
mod grants;
mod privacy;

pub(super) const GUIDE: &str = "Shop Privacy Guide";
pub(super) const NOT_IN_GUIDE: &str = "fail api scope is not declared in the privacy agreement";
pub(super) const PRIVACY_DENIED: &str = "fail privacy permission is not authorized";
pub(super) const CAMERA: &str = "scope.camera";
pub(super) const RECORD: &str = "scope.record";
pub(super) const BLUETOOTH: &str = "scope.bluetooth";
pub(super) const WERUN: &str = "scope.werun";

pub(super) fn ts(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

pub(super) fn time_of(t: &Option<Timestamp>) -> SystemTime {
    SystemTime::try_from(t.expect("a timestamp")).expect("a valid timestamp")
}

/// |a - b| as a duration.
pub(super) fn gap(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

pub(super) fn until(t: SystemTime) -> Option<pb::GrantLifetime> {
    Some(pb::GrantLifetime {
        kind: Some(grant_lifetime::Kind::Until(ts(t))),
    })
}

pub(super) fn one_time(session: &str) -> Option<pb::GrantLifetime> {
    Some(pb::GrantLifetime {
        kind: Some(grant_lifetime::Kind::SessionId(session.into())),
    })
}

pub(super) async fn record_for(
    h: &TestDaemon,
    (app, user, scope): (&str, &str, &str),
    answer: Answer,
    lifetime: Option<pb::GrantLifetime>,
) -> Rpc<pb::RecordDecisionResponse> {
    let req = pb::RecordDecisionRequest {
        app_id: app.into(),
        user_id: user.into(),
        scope: scope.into(),
        answer: answer.into(),
        client: Some(android()),
        lifetime,
    };
    Ok(h.auth.clone().record_decision(req).await?.into_inner())
}

/// A popup ALLOW with a lifetime, which must succeed.
pub(super) async fn allow_for(
    h: &TestDaemon,
    app: &str,
    user: &str,
    scope: &str,
    lifetime: Option<pb::GrantLifetime>,
) -> pb::RecordDecisionResponse {
    record_for(h, (app, user, scope), Answer::Allow, lifetime)
        .await
        .unwrap_or_else(|s| panic!("ALLOW {app}/{user}/{scope} with a lifetime: {s:?}"))
}

pub(super) async fn watch(
    h: &TestDaemon,
    app: &str,
    start: Option<u64>,
) -> Streaming<pb::WatchResponse> {
    let req = pb::WatchRequest {
        app_ids: vec![app.into()],
        start_revision: start,
        ..Default::default()
    };
    h.auth.clone().watch(req).await.expect("Watch").into_inner()
}

/// The next `n` events (progress markers skipped); panics after `within`.
pub(super) async fn next_events(
    stream: &mut Streaming<pb::WatchResponse>,
    n: usize,
    within: Duration,
) -> Vec<pb::DecisionEvent> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let item = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {n} events within {within:?}: {out:?}",
                    out.len()
                )
            })
            .expect("watch stream ok")
            .expect("watch stream open");
        if let Some(watch_response::Kind::Event(e)) = item.kind {
            out.push(e);
        }
    }
    out
}

pub(super) fn audit_req(app: &str) -> pb::ListAuditRequest {
    pb::ListAuditRequest {
        app_id: app.into(),
        ..Default::default()
    }
}

/// Every record `req` matches, following page tokens.
pub(super) async fn audit_all(
    h: &TestDaemon,
    mut req: pb::ListAuditRequest,
) -> Vec<pb::AuditRecord> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = h.list_audit(req.clone()).await.expect("ListAudit");
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
    panic!("ListAudit never reached its last page");
}

/// Polls the trail of `app` until `done` holds (prompt records are
/// written in batches); returns it.
pub(super) async fn audit_until(
    h: &TestDaemon,
    app: &str,
    done: impl Fn(&[pb::AuditRecord]) -> bool,
) -> Vec<pb::AuditRecord> {
    let start = Instant::now();
    loop {
        let records = audit_all(h, audit_req(app)).await;
        if done(&records) {
            return records;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "audit trail of {app} never got there: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) fn count(
    records: &[pb::AuditRecord],
    user: &str,
    scope: &str,
    action: AuditAction,
) -> usize {
    records
        .iter()
        .filter(|r| r.user_id == user && r.scope == scope && r.action() == action)
        .count()
}

pub(super) fn find<'a>(
    records: &'a [pb::AuditRecord],
    scope: &str,
    action: AuditAction,
) -> &'a pb::AuditRecord {
    records
        .iter()
        .find(|r| r.scope == scope && r.action() == action)
        .unwrap_or_else(|| panic!("no {action:?} record for {scope:?} in {records:#?}"))
}

pub(super) fn short_expiry(c: &mut Config) {
    c.grants.expiry_check_interval = Duration::from_millis(100);
}
