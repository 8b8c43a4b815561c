//! Timed and one-time grants: a lifetime on popup answers and settings
//! changes; lapses recorded by consentd itself as EXPIRED events, in order
//! and resumable, driven by a timer index that survives restarts.

use std::time::Duration;

use consentd::pb::{self, grant_lifetime::Kind, watch_response};
use tonic::{Code, Streaming};

use crate::{
    fixture::{android, assert_status, location_app, Client, TestDaemon},
    support::export,
};

const LOC: &str = "scope.userLocation";
const BG: &str = "scope.userLocationBackground";

fn until(ms: u64) -> Option<pb::GrantLifetime> {
    Some(pb::GrantLifetime {
        kind: Some(Kind::Until(prost_types::Timestamp {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })),
    })
}

fn session(id: &str) -> Option<pb::GrantLifetime> {
    Some(pb::GrantLifetime {
        kind: Some(Kind::SessionId(id.into())),
    })
}

fn ms_of(t: &prost_types::Timestamp) -> u64 {
    t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000
}

async fn record(
    c: &Client,
    scope: &str,
    answer: pb::Answer,
    lifetime: Option<pb::GrantLifetime>,
) -> Result<pb::RecordDecisionResponse, tonic::Status> {
    c.auth()
        .record_decision(pb::RecordDecisionRequest {
            app_id: "wxshop".into(),
            user_id: "u1".into(),
            scope: scope.into(),
            answer: answer.into(),
            client: Some(android()),
            lifetime,
        })
        .await
        .map(|r| r.into_inner())
}

/// A daemon on a manual clock (time moves only by `h.advance`), with the
/// app `wxshop` registered.
async fn daemon(tweak: impl FnOnce(&mut consentd::config::Config)) -> TestDaemon {
    let h = TestDaemon::with_manual_clock(|c| {
        c.grants.expiry_check_interval = Duration::from_millis(50);
        tweak(c);
    })
    .await;
    h.client().register(location_app("wxshop")).await;
    h
}

/// The next decision events (progress markers skipped), `n` of them.
async fn next_events(
    stream: &mut Streaming<pb::WatchResponse>,
    n: usize,
) -> Vec<pb::DecisionEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the lapse arrives in time")
            .unwrap()
            .expect("stream open");
        if let Some(watch_response::Kind::Event(e)) = item.kind {
            out.push(e);
        }
    }
    out
}

fn expired(e: &pb::DecisionEvent, scope: &str) {
    assert_eq!(e.scope, scope);
    assert_eq!(e.cause, pb::Cause::Expired as i32, "{e:?}");
    assert_eq!(e.old_state, pb::DecisionState::Granted as i32);
    assert_eq!(e.new_state, pb::DecisionState::NotDetermined as i32);
}

#[tokio::test]
async fn a_timed_grant_lapses_into_an_expired_event_and_prompts_again() {
    let h = daemon(|_| {}).await;
    let c = h.client();
    let start = c.revision().await;
    let mut watch = c
        .watch(pb::WatchRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = h.now_ms() + 1500;
    let granted = record(&c, LOC, pb::Answer::Allow, until(deadline))
        .await
        .unwrap();
    assert_eq!(granted.state, pb::DecisionState::Granted as i32);
    let d = c.decision("wxshop", "u1", LOC).await;
    assert_eq!(d.outcome, pb::Outcome::Granted as i32);
    assert_eq!(ms_of(d.expires_at.as_ref().unwrap()), deadline);
    assert!(d.session_id.is_empty());

    let mut events = next_events(&mut watch, 1).await;
    assert_eq!(events[0].cause, pb::Cause::Popup as i32);
    h.advance(Duration::from_millis(1499));
    assert_eq!(
        c.decision("wxshop", "u1", LOC).await.outcome,
        pb::Outcome::Granted as i32,
        "not before its time"
    );
    h.advance(Duration::from_millis(1));
    events.extend(next_events(&mut watch, 1).await);
    expired(&events[1], LOC);
    assert!(h.now_ms() >= deadline, "not before its time");
    assert!(events[1].revision > events[0].revision);

    let d = c.decision("wxshop", "u1", LOC).await;
    assert_eq!(d.outcome, pb::Outcome::Prompt as i32);
    assert!(d.expires_at.is_none());
    assert!(c.setting("wxshop", "u1").await.auth_setting.is_empty());
    assert!(c.assert_consistent().await.consistent);
    h.stop().await;
}

#[tokio::test]
async fn reads_see_a_lapse_at_once_and_the_next_write_records_it_first() {
    // The expiry task only runs at start: the lapse is up to readers and writers.
    let h = daemon(|c| c.grants.expiry_check_interval = Duration::from_secs(3600)).await;
    let c = h.client();
    record(&c, LOC, pb::Answer::Allow, until(h.now_ms() + 300))
        .await
        .unwrap();
    h.advance(Duration::from_millis(400));
    let before = c.revision().await;
    assert_eq!(
        c.decision("wxshop", "u1", LOC).await.outcome,
        pb::Outcome::Prompt as i32
    );
    assert_eq!(c.revision().await, before, "a read writes nothing");

    // The user now denies: the lapse goes into the log first.
    let denied = record(&c, LOC, pb::Answer::Deny, None).await.unwrap();
    let causes: Vec<(String, i32, i32, i32)> = denied
        .changes
        .iter()
        .map(|ch| (ch.scope.clone(), ch.old_state, ch.new_state, ch.cause))
        .collect();
    assert_eq!(
        causes,
        [
            (
                LOC.to_string(),
                pb::DecisionState::Granted as i32,
                pb::DecisionState::NotDetermined as i32,
                pb::Cause::Expired as i32
            ),
            (
                LOC.to_string(),
                pb::DecisionState::NotDetermined as i32,
                pb::DecisionState::Denied as i32,
                pb::Cause::Popup as i32
            ),
        ]
    );
    assert!(c.assert_consistent().await.consistent);
    h.stop().await;
}

#[tokio::test]
async fn one_time_grants_end_with_their_session_or_the_idle_timeout() {
    let h = daemon(|c| c.grants.session_idle_timeout = Duration::from_millis(1200)).await;
    let c = h.client();
    record(&c, "scope.camera", pb::Answer::Allow, session("s1"))
        .await
        .unwrap();
    record(&c, "scope.record", pb::Answer::Allow, session("s2"))
        .await
        .unwrap();
    record(&c, "scope.bluetooth", pb::Answer::Allow, None)
        .await
        .unwrap();
    let d = c.decision("wxshop", "u1", "scope.camera").await;
    assert_eq!(d.outcome, pb::Outcome::Granted as i32);
    assert_eq!(d.session_id, "s1");
    assert!(d.expires_at.is_some());

    let end = |id: &str| {
        let c = c.clone();
        let id = id.to_string();
        async move {
            c.auth()
                .end_session(pb::EndSessionRequest {
                    app_id: "wxshop".into(),
                    user_id: "u1".into(),
                    session_id: id,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let ended = end("s1").await;
    assert_eq!(ended.changes.len(), 1);
    assert_eq!(ended.changes[0].scope, "scope.camera");
    assert_eq!(ended.changes[0].cause, pb::Cause::Expired as i32);
    assert!(
        end("s1").await.changes.is_empty(),
        "ending twice changes nothing"
    );
    assert!(end("other").await.changes.is_empty());
    assert_eq!(
        c.decision("wxshop", "u1", "scope.camera").await.outcome,
        pb::Outcome::Prompt as i32
    );

    // s2 never ends: the idle timeout lapses it; the permanent grant stays.
    let start = c.revision().await;
    let mut watch = c
        .watch(pb::WatchRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
    h.advance(Duration::from_millis(1200));
    expired(&next_events(&mut watch, 1).await[0], "scope.record");
    let setting = c.setting("wxshop", "u1").await.auth_setting;
    assert_eq!(setting.get("scope.bluetooth"), Some(&true));
    assert_eq!(setting.get("scope.record"), None);
    h.stop().await;
}

#[tokio::test]
async fn a_lapse_missed_while_down_is_applied_promptly_after_a_restart() {
    let mut h = daemon(|_| {}).await;
    let c = h.client();
    let start = c.revision().await;
    record(&c, LOC, pb::Answer::Allow, until(h.now_ms() + 600))
        .await
        .unwrap();
    h.take().shutdown().await.unwrap();
    h.advance(Duration::from_millis(900));
    let restarted = std::time::Instant::now();
    h.start_again().await;
    let c = h.client();
    let mut watch = c
        .watch(pb::WatchRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
    let events = next_events(&mut watch, 2).await;
    expired(&events[1], LOC);
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "lapsed {:?} after the start",
        restarted.elapsed()
    );
    assert_eq!(events[1].revision, start + 2, "revisions continue");
    h.stop().await;
}

#[tokio::test]
async fn a_lapsing_location_grant_takes_background_location_with_it() {
    let h = daemon(|_| {}).await;
    let c = h.client();
    let start = c.revision().await;
    // Location for a second; background, later, for good.
    record(&c, LOC, pb::Answer::Allow, until(h.now_ms() + 1000))
        .await
        .unwrap();
    record(&c, BG, pb::Answer::Allow, None).await.unwrap();
    let mut watch = c
        .watch(pb::WatchRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
    h.advance(Duration::from_millis(1000));
    let events = next_events(&mut watch, 4).await;
    expired(&events[2], BG);
    expired(&events[3], LOC);
    assert!(c.setting("wxshop", "u1").await.auth_setting.is_empty());
    assert!(c.assert_consistent().await.consistent);
    h.stop().await;
}

#[tokio::test]
async fn settings_changes_carry_lifetimes_and_bad_lifetimes_are_refused() {
    let h = daemon(|_| {}).await;
    let c = h.client();
    record(
        &c,
        "scope.camera",
        pb::Answer::Deny,
        until(h.now_ms() + 60_000),
    )
    .await
    .unwrap();
    // A denial is permanent whatever the request says.
    let d = c.decision("wxshop", "u1", "scope.camera").await;
    assert_eq!(d.outcome, pb::Outcome::Denied as i32);
    assert!(d.expires_at.is_none());

    let deadline = h.now_ms() + 60_000;
    let updated = c
        .update(pb::UpdateSettingRequest {
            app_id: "wxshop".into(),
            user_id: "u1".into(),
            auth_setting: [("scope.camera".to_string(), true)].into(),
            location: 0,
            lifetime: until(deadline),
        })
        .await
        .unwrap();
    assert_eq!(updated.changes[0].cause, pb::Cause::Settings as i32);
    let d = c.decision("wxshop", "u1", "scope.camera").await;
    assert_eq!(ms_of(d.expires_at.as_ref().unwrap()), deadline);

    assert_status(
        record(
            &c,
            "scope.record",
            pb::Answer::Allow,
            until(h.now_ms() - 1000),
        )
        .await,
        Code::InvalidArgument,
        "lifetime.until",
    );
    assert_status(
        record(&c, "scope.record", pb::Answer::Allow, session("")).await,
        Code::InvalidArgument,
        "lifetime.session_id",
    );
    let negative = Some(pb::GrantLifetime {
        kind: Some(Kind::Until(prost_types::Timestamp {
            seconds: -5,
            nanos: 0,
        })),
    });
    assert_status(
        record(&c, "scope.record", pb::Answer::Allow, negative).await,
        Code::InvalidArgument,
        "before 1970",
    );
    assert_status(
        c.auth()
            .end_session(pb::EndSessionRequest {
                app_id: "wxshop".into(),
                user_id: "u1".into(),
                session_id: "bad id".into(),
            })
            .await,
        Code::InvalidArgument,
        "session_id",
    );
    h.stop().await;
}

#[tokio::test]
async fn export_and_import_keep_lifetimes() {
    let h = daemon(|_| {}).await;
    let c = h.client();
    let deadline = h.now_ms() + 3_600_000;
    record(&c, "scope.camera", pb::Answer::Allow, until(deadline))
        .await
        .unwrap();
    record(&c, "scope.record", pb::Answer::Allow, session("s9"))
        .await
        .unwrap();
    record(&c, "scope.bluetooth", pb::Answer::Allow, None)
        .await
        .unwrap();
    let records = export(&c.channel, false).await;
    let stored = |scope: &str| {
        records
            .iter()
            .find_map(|r| match &r.record {
                Some(pb::export_record::Record::Decision(d)) if d.scope == scope => Some(d.clone()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        ms_of(stored("scope.camera").expires_at.as_ref().unwrap()),
        deadline
    );
    assert_eq!(stored("scope.record").session_id, "s9");
    assert!(stored("scope.bluetooth").expires_at.is_none());
    // Lifetimes made exports format 2; the data dir's format 3 (binary audit
    // records, which exports do not carry) leaves exports importable by a
    // format-2 build.
    match &records[0].record {
        Some(pb::export_record::Record::Header(h)) => assert_eq!(h.format, 2),
        other => panic!("an export starts with its header, not {other:?}"),
    }

    let fresh = daemon(|_| {}).await;
    let imported = fresh
        .client()
        .admin()
        .import(tokio_stream::iter(records.into_iter().filter(|r| {
            !matches!(r.record, Some(pb::export_record::Record::App(_)))
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.decisions, 3);
    let f = fresh.client();
    let camera = f.decision("wxshop", "u1", "scope.camera").await;
    assert_eq!(ms_of(camera.expires_at.as_ref().unwrap()), deadline);
    assert_eq!(
        f.decision("wxshop", "u1", "scope.record").await.session_id,
        "s9"
    );
    assert!(f
        .decision("wxshop", "u1", "scope.bluetooth")
        .await
        .expires_at
        .is_none());

    // A lifetime on a denial is refused.
    let bad = pb::ExportRecord {
        record: Some(pb::export_record::Record::Decision(pb::StoredDecision {
            app_id: "wxshop".into(),
            user_id: "u2".into(),
            scope: "scope.camera".into(),
            state: pb::DecisionState::Denied.into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
            session_id: String::new(),
        })),
    };
    assert_status(
        f.admin().import(tokio_stream::iter(vec![bad])).await,
        Code::InvalidArgument,
        "only grants have a lifetime",
    );
    h.stop().await;
    fresh.stop().await;
}

#[tokio::test]
async fn a_one_time_grant_in_use_stays_alive_and_lapses_once_idle() {
    let h = daemon(|c| c.grants.session_idle_timeout = Duration::from_millis(1200)).await;
    let c = h.client();
    record(&c, "scope.camera", pb::Answer::Allow, session("s1"))
        .await
        .unwrap();
    let first = ms_of(
        c.decision("wxshop", "u1", "scope.camera")
            .await
            .expires_at
            .as_ref()
            .unwrap(),
    );
    // Used every 300 ms for 3 s: far past the idle timeout, never idle.
    for _ in 0..10 {
        h.advance(Duration::from_millis(300));
        let d = c.decision("wxshop", "u1", "scope.camera").await;
        assert_eq!(
            d.outcome,
            pb::Outcome::Granted as i32,
            "a grant in use must not lapse"
        );
        // A read renews a grant with under half its idle timeout left,
        // without waiting: let the renewal land before time moves on.
        let mut deadline = ms_of(d.expires_at.as_ref().unwrap());
        for _ in 0..200 {
            if deadline >= h.now_ms() + 600 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let d = c.decision("wxshop", "u1", "scope.camera").await;
            deadline = ms_of(d.expires_at.as_ref().unwrap());
        }
    }
    let later = ms_of(
        c.decision("wxshop", "u1", "scope.camera")
            .await
            .expires_at
            .as_ref()
            .unwrap(),
    );
    assert!(
        later > first + 1000,
        "the deadline moved: {first} -> {later}"
    );
    // Idle now: it lapses.
    let start = c.revision().await;
    let mut watch = c
        .watch(pb::WatchRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
    h.advance(Duration::from_millis(1200));
    expired(&next_events(&mut watch, 1).await[0], "scope.camera");
    assert!(c.assert_consistent().await.consistent);
    h.stop().await;
}

#[tokio::test]
async fn background_reads_as_lapsed_with_location_before_the_lapse_is_recorded() {
    // The expiry task runs only at start: the lapse is up to readers.
    let h = daemon(|c| c.grants.expiry_check_interval = Duration::from_secs(3600)).await;
    let c = h.client();
    record(&c, LOC, pb::Answer::Allow, until(h.now_ms() + 300))
        .await
        .unwrap();
    record(&c, BG, pb::Answer::Allow, None).await.unwrap();
    assert_eq!(
        c.decision("wxshop", "u1", BG).await.outcome,
        pb::Outcome::Granted as i32
    );
    h.advance(Duration::from_millis(400));
    assert_ne!(
        c.decision("wxshop", "u1", BG).await.outcome,
        pb::Outcome::Granted as i32,
        "background granted without location"
    );
    assert!(c.setting("wxshop", "u1").await.auth_setting.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn an_import_with_a_users_rows_apart_keeps_the_log_a_chain() {
    let h = daemon(|_| {}).await;
    let c = h.client();
    let row = |user: &str, scope: &str, state: pb::DecisionState| pb::ExportRecord {
        record: Some(pb::export_record::Record::Decision(pb::StoredDecision {
            app_id: "wxshop".into(),
            user_id: user.into(),
            scope: scope.into(),
            state: state.into(),
            ..Default::default()
        })),
    };
    c.admin()
        .import(tokio_stream::iter(vec![
            row("u1", "scope.camera", pb::DecisionState::Granted),
            row("u2", "scope.camera", pb::DecisionState::Granted),
            row("u1", "scope.record", pb::DecisionState::Denied),
        ]))
        .await
        .unwrap();
    assert!(c.assert_consistent().await.consistent);
    let setting = c.setting("wxshop", "u1").await.auth_setting;
    assert_eq!(setting.get("scope.camera"), Some(&true));
    assert_eq!(setting.get("scope.record"), Some(&false));
    h.stop().await;
}
