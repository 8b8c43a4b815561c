//! Issue #8 "Beyond the platform", read from the issue text, the proto and the
//! README (not from the implementation): the privacy-agreement gate, timed and
//! one-time grants that lapse by themselves (EXPIRED events, resumable Watch,
//! restarts), the consent audit trail and the anti-nag policy.

use std::time::{Duration, Instant, SystemTime};

use consentd::{
    config::Config,
    domain::NagPolicy,
    pb::{
        self, grant_lifetime, watch_response, Answer, AppKind, AuditAction, Cause, DecisionState,
        LocationOption, Outcome, Platform, Reason,
    },
    store::Retention,
};
use prost_types::Timestamp;
use tonic::{Code, Streaming};

use crate::{
    support::export,
    util::{
        android, app, assert_decision, client, expect_refused, expect_status, location_app,
        with_privacy, Rpc, TestDaemon, BACKGROUND, LOCATION,
    },
};

use AuditAction as A;
use DecisionState::{Denied, Granted, NotDetermined};

const GUIDE: &str = "Shop Privacy Guide";
const NOT_IN_GUIDE: &str = "fail api scope is not declared in the privacy agreement";
const PRIVACY_DENIED: &str = "fail privacy permission is not authorized";
const CAMERA: &str = "scope.camera";
const RECORD: &str = "scope.record";
const BLUETOOTH: &str = "scope.bluetooth";
const WERUN: &str = "scope.werun";

// --- Local helpers ------------------------------------------------------

fn ts(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

fn time_of(t: &Option<Timestamp>) -> SystemTime {
    SystemTime::try_from(t.expect("a timestamp")).expect("a valid timestamp")
}

/// |a - b| as a duration.
fn gap(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

fn until(t: SystemTime) -> Option<pb::GrantLifetime> {
    Some(pb::GrantLifetime {
        kind: Some(grant_lifetime::Kind::Until(ts(t))),
    })
}

fn one_time(session: &str) -> Option<pb::GrantLifetime> {
    Some(pb::GrantLifetime {
        kind: Some(grant_lifetime::Kind::SessionId(session.into())),
    })
}

async fn record_for(
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
async fn allow_for(
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

async fn update_for(
    h: &TestDaemon,
    app: &str,
    user: &str,
    toggles: &[(&str, bool)],
    lifetime: Option<pb::GrantLifetime>,
) -> Rpc<pb::UpdateSettingResponse> {
    let req = pb::UpdateSettingRequest {
        app_id: app.into(),
        user_id: user.into(),
        auth_setting: toggles.iter().map(|(s, on)| (s.to_string(), *on)).collect(),
        location: LocationOption::Unspecified.into(),
        lifetime,
    };
    Ok(h.auth.clone().update_setting(req).await?.into_inner())
}

async fn watch(h: &TestDaemon, app: &str, start: Option<u64>) -> Streaming<pb::WatchResponse> {
    let req = pb::WatchRequest {
        app_ids: vec![app.into()],
        start_revision: start,
        ..Default::default()
    };
    h.auth.clone().watch(req).await.expect("Watch").into_inner()
}

/// The next `n` events (progress markers skipped); panics after `within`.
async fn next_events(
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

/// Asserts no event arrives for `quiet`.
async fn assert_no_event(stream: &mut Streaming<pb::WatchResponse>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return,
            Ok(item) => {
                let item = item.expect("watch stream ok").expect("watch stream open");
                if let Some(watch_response::Kind::Event(e)) = item.kind {
                    panic!("unexpected event {e:?}");
                }
            }
        }
    }
}

/// (scope, old, new, cause) of each event.
fn described(events: &[pb::DecisionEvent]) -> Vec<(String, DecisionState, DecisionState, Cause)> {
    events
        .iter()
        .map(|e| (e.scope.clone(), e.old_state(), e.new_state(), e.cause()))
        .collect()
}

fn ev(
    scope: &str,
    old: DecisionState,
    new: DecisionState,
    cause: Cause,
) -> (String, DecisionState, DecisionState, Cause) {
    (scope.to_string(), old, new, cause)
}

#[track_caller]
fn assert_increasing(events: &[pb::DecisionEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].revision < pair[1].revision,
            "revisions not increasing: {events:?}"
        );
    }
}

fn audit_req(app: &str) -> pb::ListAuditRequest {
    pb::ListAuditRequest {
        app_id: app.into(),
        ..Default::default()
    }
}

/// Every record `req` matches, following page tokens.
async fn audit_all(h: &TestDaemon, mut req: pb::ListAuditRequest) -> Vec<pb::AuditRecord> {
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
async fn audit_until(
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

fn actions(records: &[pb::AuditRecord]) -> Vec<(String, String, AuditAction)> {
    records
        .iter()
        .map(|r| (r.user_id.clone(), r.scope.clone(), r.action()))
        .collect()
}

fn count(records: &[pb::AuditRecord], user: &str, scope: &str, action: AuditAction) -> usize {
    records
        .iter()
        .filter(|r| r.user_id == user && r.scope == scope && r.action() == action)
        .count()
}

fn find<'a>(
    records: &'a [pb::AuditRecord],
    scope: &str,
    action: AuditAction,
) -> &'a pb::AuditRecord {
    records
        .iter()
        .find(|r| r.scope == scope && r.action() == action)
        .unwrap_or_else(|| panic!("no {action:?} record for {scope:?} in {records:#?}"))
}

fn short_expiry(c: &mut Config) {
    c.grants.expiry_check_interval = Duration::from_millis(100);
}

// --- 1. Privacy-agreement gate -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_types_missing_from_the_guide_are_not_declared_with_errno_112() {
    let h = TestDaemon::start().await;
    h.register(with_privacy(
        location_app("wxpriv"),
        GUIDE,
        &["location", "camera"],
    ))
    .await;
    let undeclared = [
        RECORD,                   // microphone
        "scope.writePhotosAlbum", // album
        "scope.addPhoneContact",  // contacts
        "scope.addPhoneCalendar", // calendar
        BLUETOOTH,
        WERUN,
    ];
    for agreed in [false, true] {
        for scope in undeclared {
            let d = h.decision("wxpriv", "u", scope).await;
            assert_decision(
                &d,
                Outcome::NotDeclared,
                Reason::PrivacyNotDeclared,
                &format!("authorize:{NOT_IN_GUIDE}"),
            );
            assert_eq!(d.err_no, 112, "{scope} (agreed: {agreed}): {d:?}");
        }
        // CheckApi: the errMsg names the interface.
        for (api, prefix) in [
            ("wx.startRecord", "startRecord"),
            ("wx.saveImageToPhotosAlbum", "saveImageToPhotosAlbum"),
            ("wx.getWeRunData", "getWeRunData"),
        ] {
            let r = h.check_api("wxpriv", "u", api, android()).await.unwrap();
            assert_eq!(
                (r.outcome(), r.err_msg.as_str()),
                (
                    Outcome::NotDeclared,
                    format!("{prefix}:{NOT_IN_GUIDE}").as_str()
                ),
                "{api}: {r:?}"
            );
            assert_eq!(r.decisions.len(), 1, "{r:?}");
            assert_eq!(
                (r.decisions[0].reason(), r.decisions[0].err_no),
                (Reason::PrivacyNotDeclared, 112)
            );
        }
        // Agreeing to the guide does not declare what it does not cover.
        let answer = h.record_privacy("wxpriv", "u", true).await.unwrap();
        assert!(!answer.need_authorization);
    }
    // Declared types pass the privacy gate once agreed.
    let d = h.decision("wxpriv", "u", CAMERA).await;
    assert_decision(&d, Outcome::Prompt, Reason::PopupAvailable, "");
    assert_eq!(d.err_no, 0);
    // A popup answer for an undeclared scope is refused and records nothing.
    expect_refused(
        h.record("wxpriv", "u", RECORD, Answer::Allow, android())
            .await,
        Outcome::NotDeclared,
    );
    assert!(h.setting("wxpriv", "u").await.auth_setting.is_empty());
    h.stop().await;
}

/// The privacy gate runs before the scope gates: its answer wins over the
/// declaration gate (missing desc, missing requiredPrivateInfos).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_gate_runs_before_the_scope_gates() {
    let h = TestDaemon::start().await;
    // No location desc, no requiredPrivateInfos: gate 3 would say NOT_DECLARED.
    h.register(with_privacy(
        app("wxbare", AppKind::MiniProgram),
        GUIDE,
        &["camera"],
    ))
    .await;
    h.register(with_privacy(
        app("wxloc", AppKind::MiniProgram),
        GUIDE,
        &["location"],
    ))
    .await;

    let d = h.decision("wxbare", "u", LOCATION).await;
    assert_decision(
        &d,
        Outcome::NotDeclared,
        Reason::PrivacyNotDeclared,
        &format!("authorize:{NOT_IN_GUIDE}"),
    );
    assert_eq!(d.err_no, 112);
    let r = h
        .check_api("wxbare", "u", "wx.getLocation", android())
        .await
        .unwrap();
    assert_eq!(
        (r.outcome(), r.err_msg.as_str()),
        (
            Outcome::NotDeclared,
            format!("getLocation:{NOT_IN_GUIDE}").as_str()
        )
    );
    assert_eq!(r.decisions[0].err_no, 112);

    // Declared but not agreed: the agreement comes first, not the desc error.
    let d = h.decision("wxloc", "u", LOCATION).await;
    assert_eq!(
        (d.outcome(), d.reason(), d.err_no),
        (Outcome::PrivacyRequired, Reason::PrivacyAgreementNeeded, 0),
        "{d:?}"
    );
    let r = h
        .check_api("wxloc", "u", "wx.getLocation", android())
        .await
        .unwrap();
    assert_eq!(r.outcome(), Outcome::PrivacyRequired, "{r:?}");
    // Agreed: the scope gates decide again, exactly as before.
    h.record_privacy("wxloc", "u", true).await.unwrap();
    let d = h.decision("wxloc", "u", LOCATION).await;
    assert_decision(
        &d,
        Outcome::NotDeclared,
        Reason::MissingPermissionDesc,
        "authorize:fail:require permission desc",
    );
    assert_eq!(d.err_no, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_agreement_is_asked_recorded_and_asked_again_when_the_guide_grows() {
    let h = TestDaemon::start().await;
    let registered = h
        .register(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera"],
        ))
        .await;
    let guide = registered.privacy.clone().expect("the guide is stored");
    assert_eq!((guide.name.as_str(), guide.info_types.len()), (GUIDE, 2));
    let v1 = guide.version;

    let s = h.get_privacy("wxpriv", "u").await.unwrap();
    assert_eq!(
        (
            s.need_authorization,
            s.privacy_contract_name.as_str(),
            s.err_msg.as_str()
        ),
        (true, GUIDE, "getPrivacySetting:ok")
    );
    for scope in [LOCATION, CAMERA] {
        let d = h.decision("wxpriv", "u", scope).await;
        assert_eq!(
            (d.outcome(), d.reason(), d.err_no),
            (Outcome::PrivacyRequired, Reason::PrivacyAgreementNeeded, 0),
            "{scope}: {d:?}"
        );
    }
    let r = h
        .check_api("wxpriv", "u", "camera", android())
        .await
        .unwrap();
    assert_eq!(r.outcome(), Outcome::PrivacyRequired, "{r:?}");
    // No popup answer before the agreement.
    let before = h.revision().await;
    expect_refused(
        h.record("wxpriv", "u", CAMERA, Answer::Allow, android())
            .await,
        Outcome::PrivacyRequired,
    );
    assert_eq!(h.revision().await, before);

    let agreed = h.record_privacy("wxpriv", "u", true).await.unwrap();
    assert_eq!((agreed.need_authorization, agreed.version), (false, v1));
    let s = h.get_privacy("wxpriv", "u").await.unwrap();
    assert_eq!(
        (s.need_authorization, s.privacy_contract_name.as_str()),
        (false, GUIDE)
    );
    assert_decision(
        &h.decision("wxpriv", "u", LOCATION).await,
        Outcome::Prompt,
        Reason::PopupAvailable,
        "",
    );
    h.answer("wxpriv", "u", LOCATION, Answer::Allow).await;
    let r = h
        .check_api("wxpriv", "u", "wx.getLocation", android())
        .await
        .unwrap();
    assert_eq!(
        (r.outcome(), r.err_msg.as_str()),
        (Outcome::Granted, "getLocation:ok")
    );
    // Per (app, user): another user still has to agree.
    assert!(
        h.get_privacy("wxpriv", "v")
            .await
            .unwrap()
            .need_authorization
    );
    assert_eq!(
        h.decision("wxpriv", "v", LOCATION).await.outcome(),
        Outcome::PrivacyRequired
    );

    // The same guide again: same version, the agreement stands.
    let same = h
        .update_app(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera"],
        ))
        .await
        .unwrap();
    assert_eq!(same.app.unwrap().privacy.unwrap().version, v1);
    assert!(
        !h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );

    // The guide gains a type: a newer version the user must agree to again,
    // and the privacy gate comes before the stored grant.
    let grown = h
        .update_app(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera", "bluetooth"],
        ))
        .await
        .unwrap();
    let v2 = grown.app.unwrap().privacy.unwrap().version;
    assert!(v2 > v1, "version {v2} did not grow from {v1}");
    assert!(
        h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );
    let d = h.decision("wxpriv", "u", LOCATION).await;
    assert_eq!(
        (d.outcome(), d.reason()),
        (Outcome::PrivacyRequired, Reason::PrivacyAgreementNeeded),
        "{d:?}"
    );
    let again = h.record_privacy("wxpriv", "u", true).await.unwrap();
    assert_eq!((again.need_authorization, again.version), (false, v2));
    assert_decision(
        &h.decision("wxpriv", "u", LOCATION).await,
        Outcome::Granted,
        Reason::StoredGrant,
        "authorize:ok",
    );
    assert_eq!(
        h.decision("wxpriv", "u", BLUETOOTH).await.outcome(),
        Outcome::Prompt
    );

    // README: RemoveApp forgets the agreement with the decisions.
    h.remove_app("wxpriv", "u").await.unwrap();
    assert!(
        h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );
    assert_eq!(
        h.decision("wxpriv", "u", LOCATION).await.outcome(),
        Outcome::PrivacyRequired
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_disagreement_fails_without_a_popup_for_the_gap() {
    let h =
        TestDaemon::start_with(|c| c.grants.privacy_disagree_gap = Duration::from_secs(1)).await;
    // The default gap (10 s) on a second daemon, disagreed at the same time.
    let d10 = TestDaemon::start().await;
    for d in [&h, &d10] {
        d.register(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera"],
        ))
        .await;
    }
    let disagreed_at = Instant::now();
    let r = h.record_privacy("wxpriv", "u", false).await.unwrap();
    assert!(r.need_authorization);
    d10.record_privacy("wxpriv", "u", false).await.unwrap();

    let d = h.decision("wxpriv", "u", LOCATION).await;
    assert_decision(
        &d,
        Outcome::PrivacyDenied,
        Reason::PrivacyDisagreed,
        &format!("authorize:{PRIVACY_DENIED}"),
    );
    assert_eq!(d.err_no, 104);
    for (api, prefix) in [("wx.getLocation", "getLocation"), ("camera", "camera")] {
        let r = h.check_api("wxpriv", "u", api, android()).await.unwrap();
        assert_eq!(
            (r.outcome(), r.err_msg.as_str()),
            (
                Outcome::PrivacyDenied,
                format!("{prefix}:{PRIVACY_DENIED}").as_str()
            ),
            "{api}"
        );
        assert_eq!(r.decisions[0].err_no, 104, "{r:?}");
    }
    let s = h.get_privacy("wxpriv", "u").await.unwrap();
    assert_eq!(
        (s.need_authorization, s.privacy_contract_name.as_str()),
        (true, GUIDE)
    );
    expect_refused(
        h.record("wxpriv", "u", CAMERA, Answer::Allow, android())
            .await,
        Outcome::PrivacyDenied,
    );
    // Only that user.
    assert_eq!(
        h.decision("wxpriv", "v", LOCATION).await.outcome(),
        Outcome::PrivacyRequired
    );

    // After the gap the agreement is asked for again.
    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(disagreed_at.elapsed())).await;
    let d = h.decision("wxpriv", "u", LOCATION).await;
    assert_eq!(
        (d.outcome(), d.reason(), d.err_no),
        (Outcome::PrivacyRequired, Reason::PrivacyAgreementNeeded, 0),
        "{d:?}"
    );
    // ...while the default 10 s gap still holds on the other daemon.
    let d = d10.decision("wxpriv", "u", LOCATION).await;
    assert_eq!(
        (d.outcome(), d.err_no),
        (Outcome::PrivacyDenied, 104),
        "{d:?}"
    );

    h.record_privacy("wxpriv", "u", true).await.unwrap();
    assert_eq!(
        h.decision("wxpriv", "u", LOCATION).await.outcome(),
        Outcome::Prompt
    );
    h.stop().await;
    d10.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_guide_and_agreements_survive_a_restart() {
    let mut h = TestDaemon::start().await;
    h.register(with_privacy(
        location_app("wxpriv"),
        GUIDE,
        &["location", "camera"],
    ))
    .await;
    h.record_privacy("wxpriv", "u", true).await.unwrap();
    h.answer("wxpriv", "u", CAMERA, Answer::Allow).await;
    h.record_privacy("wxpriv", "w", false).await.unwrap();
    let guide = h.get_app("wxpriv").await.unwrap().app.unwrap().privacy;

    h.restart().await;

    assert_eq!(
        h.get_app("wxpriv").await.unwrap().app.unwrap().privacy,
        guide
    );
    assert!(
        !h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );
    assert_decision(
        &h.decision("wxpriv", "u", CAMERA).await,
        Outcome::Granted,
        Reason::StoredGrant,
        "authorize:ok",
    );
    assert_eq!(
        h.decision("wxpriv", "u", LOCATION).await.outcome(),
        Outcome::Prompt
    );
    // Never answered: still asked.
    assert!(
        h.get_privacy("wxpriv", "v")
            .await
            .unwrap()
            .need_authorization
    );
    assert_eq!(
        h.decision("wxpriv", "v", CAMERA).await.outcome(),
        Outcome::PrivacyRequired
    );
    // Disagreed moments ago (default gap 10 s): still no popup.
    let d = h.decision("wxpriv", "w", CAMERA).await;
    assert_eq!(
        (d.outcome(), d.err_no),
        (Outcome::PrivacyDenied, 104),
        "{d:?}"
    );
    // Undeclared stays undeclared.
    assert_eq!(h.decision("wxpriv", "u", RECORD).await.err_no, 112);

    // The version keeps growing after the restart.
    let v1 = guide.unwrap().version;
    let grown = h
        .update_app(with_privacy(
            location_app("wxpriv"),
            GUIDE,
            &["location", "camera", "werun"],
        ))
        .await
        .unwrap();
    assert!(grown.app.unwrap().privacy.unwrap().version > v1);
    assert!(
        h.get_privacy("wxpriv", "u")
            .await
            .unwrap()
            .need_authorization
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_without_a_guide_behave_as_before() {
    let h = TestDaemon::start().await;
    let registered = h.register(location_app("wxplain")).await;
    assert_eq!(registered.privacy, None);
    let s = h.get_privacy("wxplain", "u").await.unwrap();
    assert_eq!(
        (
            s.need_authorization,
            s.privacy_contract_name.as_str(),
            s.err_msg.as_str()
        ),
        (false, "", "getPrivacySetting:ok")
    );
    for scope in [LOCATION, CAMERA, RECORD, WERUN, BLUETOOTH] {
        let d = h.decision("wxplain", "u", scope).await;
        assert_decision(&d, Outcome::Prompt, Reason::PopupAvailable, "");
        assert_eq!(d.err_no, 0);
    }
    h.answer("wxplain", "u", CAMERA, Answer::Allow).await;
    h.answer("wxplain", "u", RECORD, Answer::Deny).await;
    let r = h
        .check_api("wxplain", "u", "wx.startRecord", android())
        .await
        .unwrap();
    assert_eq!(
        (r.outcome(), r.err_msg.as_str()),
        (Outcome::Denied, "startRecord:fail auth deny")
    );
    let d = h.decision("wxplain", "u", CAMERA).await;
    assert_decision(&d, Outcome::Granted, Reason::StoredGrant, "authorize:ok");
    // Permanent grants carry no lifetime.
    assert_eq!((d.expires_at, d.session_id.as_str()), (None, ""));
    h.stop().await;
}

// --- 2. Timed and one-time grants ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_grant_lapses_to_not_determined_with_an_expired_event() {
    let h = TestDaemon::start_with(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let mut live = watch(&h, "wxcam", None).await;

    let lapse = SystemTime::now() + Duration::from_millis(1000);
    let granted = allow_for(&h, "wxcam", "u", CAMERA, until(lapse)).await;
    assert_eq!(
        (granted.err_msg.as_str(), granted.state()),
        ("authorize:ok", Granted)
    );
    assert_eq!(
        granted
            .changes
            .iter()
            .map(|c| (c.scope.as_str(), c.new_state(), c.cause()))
            .collect::<Vec<_>>(),
        vec![(CAMERA, Granted, Cause::Popup)]
    );
    h.answer("wxcam", "u", RECORD, Answer::Allow).await; // permanent

    let d = h.decision("wxcam", "u", CAMERA).await;
    assert_decision(&d, Outcome::Granted, Reason::StoredGrant, "authorize:ok");
    assert!(
        gap(time_of(&d.expires_at), lapse) <= Duration::from_millis(1),
        "expires_at {:?} is not the requested {lapse:?}",
        d.expires_at
    );
    assert_eq!(d.session_id, "");
    assert_eq!(h.decision("wxcam", "u", RECORD).await.expires_at, None);

    let first = next_events(&mut live, 2, Duration::from_secs(2)).await;
    assert_eq!(
        described(&first),
        vec![
            ev(CAMERA, NotDetermined, Granted, Cause::Popup),
            ev(RECORD, NotDetermined, Granted, Cause::Popup),
        ]
    );
    // Nothing lapses early.
    assert_no_event(&mut live, Duration::from_millis(500)).await;
    let expired = next_events(&mut live, 1, Duration::from_secs(3)).await;
    assert!(SystemTime::now() >= lapse);
    assert_eq!(
        described(&expired),
        vec![ev(CAMERA, Granted, NotDetermined, Cause::Expired)]
    );
    let e = &expired[0];
    assert_eq!((e.app_id.as_str(), e.user_id.as_str()), ("wxcam", "u"));
    assert!(e.revision > first[1].revision);
    assert!(
        time_of(&e.time) + Duration::from_millis(5) >= lapse,
        "{e:?}"
    );

    // Back to never asked.
    assert_decision(
        &h.decision("wxcam", "u", CAMERA).await,
        Outcome::Prompt,
        Reason::PopupAvailable,
        "",
    );
    let r = h
        .check_api("wxcam", "u", "camera", android())
        .await
        .unwrap();
    assert_eq!(r.outcome(), Outcome::Prompt);
    assert_eq!(
        crate::util::sorted(&h.setting("wxcam", "u").await.auth_setting),
        crate::util::setting_of(&[(RECORD, true)])
    );
    assert!(h.revision().await >= e.revision);
    assert_no_event(&mut live, Duration::from_millis(300)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_are_validated_and_denials_stay_permanent() {
    let h = TestDaemon::start_with(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let before = h.revision().await;
    let past = SystemTime::now() - Duration::from_secs(5);
    expect_status(
        record_for(&h, ("wxcam", "u", CAMERA), Answer::Allow, until(past)).await,
        Code::InvalidArgument,
        "until",
    );
    assert_eq!(h.revision().await, before);
    assert_eq!(
        h.decision("wxcam", "u", CAMERA).await.outcome(),
        Outcome::Prompt
    );

    // Settings: the scopes turned on get the lifetime, a scope turned off is
    // denied for good.
    h.answer("wxcam", "u", CAMERA, Answer::Deny).await;
    h.answer("wxcam", "u", RECORD, Answer::Allow).await;
    let mut live = watch(&h, "wxcam", None).await;
    let lapse = SystemTime::now() + Duration::from_millis(700);
    let updated = update_for(
        &h,
        "wxcam",
        "u",
        &[(CAMERA, true), (RECORD, false)],
        until(lapse),
    )
    .await
    .unwrap();
    assert_eq!(
        crate::util::sorted(&updated.auth_setting),
        crate::util::setting_of(&[(CAMERA, true), (RECORD, false)])
    );
    let d = h.decision("wxcam", "u", CAMERA).await;
    assert_eq!(d.outcome(), Outcome::Granted);
    assert!(
        gap(time_of(&d.expires_at), lapse) <= Duration::from_millis(1),
        "{d:?}"
    );
    assert_eq!(h.decision("wxcam", "u", RECORD).await.expires_at, None);

    let events = next_events(&mut live, 3, Duration::from_secs(3)).await;
    let mut settings: Vec<_> = described(&events[..2]).into_iter().collect();
    settings.sort();
    assert_eq!(
        settings,
        vec![
            ev(CAMERA, Denied, Granted, Cause::Settings),
            ev(RECORD, Granted, Denied, Cause::Settings),
        ]
    );
    assert_eq!(
        described(&events[2..]),
        vec![ev(CAMERA, Granted, NotDetermined, Cause::Expired)]
    );
    assert_no_event(&mut live, Duration::from_millis(400)).await;
    assert_eq!(
        crate::util::sorted(&h.setting("wxcam", "u").await.auth_setting),
        crate::util::setting_of(&[(RECORD, false)])
    );
    h.stop().await;
}

/// A lapsing location grant takes background location with it; each event
/// keeps "background granted implies location granted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsing_location_takes_background_first() {
    let h = TestDaemon::start_with(short_expiry).await;
    h.register(location_app("wxloc")).await;
    let mut live = watch(&h, "wxloc", None).await;
    let lapse = SystemTime::now() + Duration::from_millis(600);
    let r = allow_for(&h, "wxloc", "u", BACKGROUND, until(lapse)).await;
    assert_eq!(
        crate::util::change_list(&r.changes),
        vec![
            (LOCATION.to_string(), Granted),
            (BACKGROUND.to_string(), Granted)
        ]
    );
    for scope in [LOCATION, BACKGROUND] {
        let d = h.decision("wxloc", "u", scope).await;
        assert_eq!(d.outcome(), Outcome::Granted, "{scope}");
        assert!(
            gap(time_of(&d.expires_at), lapse) <= Duration::from_millis(1),
            "{d:?}"
        );
    }
    let events = next_events(&mut live, 4, Duration::from_secs(3)).await;
    assert_increasing(&events);
    assert_eq!(
        described(&events),
        vec![
            ev(LOCATION, NotDetermined, Granted, Cause::Popup),
            ev(BACKGROUND, NotDetermined, Granted, Cause::Popup),
            ev(BACKGROUND, Granted, NotDetermined, Cause::Expired),
            ev(LOCATION, Granted, NotDetermined, Cause::Expired),
        ]
    );
    assert!(h.setting("wxloc", "u").await.auth_setting.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_an_expired_event_exactly_once_in_order() {
    let h = TestDaemon::start_with(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let r0 = h.revision().await;
    let mut live = watch(&h, "wxcam", None).await;
    allow_for(
        &h,
        "wxcam",
        "u",
        CAMERA,
        until(SystemTime::now() + Duration::from_millis(500)),
    )
    .await;
    let seen = next_events(&mut live, 2, Duration::from_secs(3)).await;
    h.answer("wxcam", "u", RECORD, Answer::Allow).await;
    let seen: Vec<_> = seen
        .into_iter()
        .chain(next_events(&mut live, 1, Duration::from_secs(2)).await)
        .collect();
    let expected = vec![
        ev(CAMERA, NotDetermined, Granted, Cause::Popup),
        ev(CAMERA, Granted, NotDetermined, Cause::Expired),
        ev(RECORD, NotDetermined, Granted, Cause::Popup),
    ];
    assert_eq!(described(&seen), expected);
    assert_increasing(&seen);

    // Resuming from before the lapse replays it once, in place; from each
    // later revision, exactly the rest.
    let mut from_start = None;
    for (i, start) in [r0, seen[0].revision, seen[1].revision]
        .into_iter()
        .enumerate()
    {
        let mut resumed = watch(&h, "wxcam", Some(start)).await;
        let replay = next_events(&mut resumed, 3 - i, Duration::from_secs(2)).await;
        assert_eq!(replay, seen[i..].to_vec(), "resumed from {start}");
        assert_no_event(&mut resumed, Duration::from_millis(200)).await;
        if i == 0 {
            from_start = Some(resumed);
        }
    }
    // ...and then live, without a gap or a repeat.
    let mut resumed = from_start.unwrap();
    h.answer("wxcam", "u", BLUETOOTH, Answer::Deny).await;
    let next = next_events(&mut resumed, 1, Duration::from_secs(2)).await;
    assert_eq!(
        described(&next),
        vec![ev(BLUETOOTH, NotDetermined, Denied, Cause::Popup)]
    );
    assert!(next[0].revision > seen[2].revision);
    assert_no_event(&mut resumed, Duration::from_millis(200)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_grants_lapse_when_their_session_ends() {
    let h = TestDaemon::start_with(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let t0 = SystemTime::now();
    allow_for(&h, "wxcam", "u", CAMERA, one_time("s1")).await;
    allow_for(&h, "wxcam", "u", RECORD, one_time("s1")).await;
    allow_for(&h, "wxcam", "u", BLUETOOTH, one_time("s2")).await;
    h.answer("wxcam", "u", WERUN, Answer::Allow).await;
    allow_for(&h, "wxcam", "v", CAMERA, one_time("s1")).await;

    let d = h.decision("wxcam", "u", CAMERA).await;
    assert_decision(&d, Outcome::Granted, Reason::StoredGrant, "authorize:ok");
    assert_eq!(d.session_id, "s1");
    // One-time grants expire after the idle timeout (default 1800 s) at the latest.
    let idle = Config::default().grants.session_idle_timeout;
    let expires = time_of(&d.expires_at);
    assert!(
        expires + Duration::from_millis(5) >= t0 + idle && expires <= SystemTime::now() + idle,
        "expires_at {expires:?} is not the idle timeout {idle:?} away"
    );

    let mut live = watch(&h, "wxcam", None).await;
    let before = h.revision().await;
    let ended = h.end_session("wxcam", "u", "s1").await.unwrap();
    let mut changes: Vec<_> = ended
        .changes
        .iter()
        .map(|c| (c.scope.clone(), c.old_state(), c.new_state(), c.cause()))
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        vec![
            ev(CAMERA, Granted, NotDetermined, Cause::Expired),
            ev(RECORD, Granted, NotDetermined, Cause::Expired),
        ]
    );
    assert!(ended.changes.iter().all(|c| c.revision > before));
    assert_eq!(
        ended.revision,
        ended.changes.iter().map(|c| c.revision).max().unwrap()
    );
    let events = next_events(&mut live, 2, Duration::from_secs(2)).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.scope.clone(), e.revision, e.cause()))
            .collect::<Vec<_>>(),
        ended
            .changes
            .iter()
            .map(|c| (c.scope.clone(), c.revision, c.cause()))
            .collect::<Vec<_>>()
    );
    assert!(events.iter().all(|e| e.user_id == "u"));

    for scope in [CAMERA, RECORD] {
        assert_eq!(
            h.decision("wxcam", "u", scope).await.outcome(),
            Outcome::Prompt
        );
    }
    // Other sessions, permanent grants and other users' sessions stay.
    let d = h.decision("wxcam", "u", BLUETOOTH).await;
    assert_eq!(
        (d.outcome(), d.session_id.as_str()),
        (Outcome::Granted, "s2")
    );
    assert_eq!(
        h.decision("wxcam", "u", WERUN).await.outcome(),
        Outcome::Granted
    );
    assert_eq!(
        h.decision("wxcam", "v", CAMERA).await.outcome(),
        Outcome::Granted
    );

    // Ending it again changes nothing.
    let again = h.end_session("wxcam", "u", "s1").await.unwrap();
    assert!(again.changes.is_empty(), "{again:?}");
    assert_eq!(again.revision, ended.revision);
    assert_no_event(&mut live, Duration::from_millis(300)).await;
    h.stop().await;
}

/// The idle timeout counts from the last use: a used one-time grant stays,
/// an unused one lapses by itself (cause EXPIRED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_grants_lapse_after_the_idle_timeout_unless_used() {
    let h = TestDaemon::start_with(|c| {
        short_expiry(c);
        c.grants.session_idle_timeout = Duration::from_secs(1);
    })
    .await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let mut live = watch(&h, "wxcam", None).await;
    let start = Instant::now();
    allow_for(&h, "wxcam", "u", CAMERA, one_time("used")).await;
    allow_for(&h, "wxcam", "u", RECORD, one_time("idle")).await;
    let granted = next_events(&mut live, 2, Duration::from_secs(2)).await;
    assert_eq!(granted.len(), 2);

    // Use the camera grant every 250 ms for 2 s (twice the idle timeout).
    while start.elapsed() < Duration::from_millis(2000) {
        let d = h.decision("wxcam", "u", CAMERA).await;
        assert_eq!(
            (d.outcome(), d.session_id.as_str()),
            (Outcome::Granted, "used"),
            "a used one-time grant lapsed after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Meanwhile the unused one lapsed, once.
    let lapsed = next_events(&mut live, 1, Duration::from_millis(100)).await;
    assert_eq!(
        described(&lapsed),
        vec![ev(RECORD, Granted, NotDetermined, Cause::Expired)]
    );
    assert_eq!(
        h.decision("wxcam", "u", RECORD).await.outcome(),
        Outcome::Prompt
    );
    // Unused from now on: the camera grant lapses within the timeout (+ checks).
    let lapsed = next_events(&mut live, 1, Duration::from_millis(1800)).await;
    assert_eq!(
        described(&lapsed),
        vec![ev(CAMERA, Granted, NotDetermined, Cause::Expired)]
    );
    assert_eq!(
        h.decision("wxcam", "u", CAMERA).await.outcome(),
        Outcome::Prompt
    );
    h.stop().await;
}

/// Timers live in the store: a grant that lapses after a restart still does,
/// and a one-time grant can still be ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_timers_survive_a_restart() {
    let mut h = TestDaemon::start_with(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let r0 = h.revision().await;
    let lapse = SystemTime::now() + Duration::from_millis(1500);
    allow_for(&h, "wxcam", "u", CAMERA, until(lapse)).await;
    allow_for(&h, "wxcam", "u", RECORD, one_time("s1")).await;

    h.restart().await;
    assert!(
        SystemTime::now() < lapse,
        "the restart took too long for this test"
    );
    let d = h.decision("wxcam", "u", CAMERA).await;
    assert_eq!(d.outcome(), Outcome::Granted);
    assert!(
        gap(time_of(&d.expires_at), lapse) <= Duration::from_millis(1),
        "{d:?}"
    );
    assert_eq!(h.decision("wxcam", "u", RECORD).await.session_id, "s1");

    let mut stream = watch(&h, "wxcam", Some(r0)).await;
    let granted = next_events(&mut stream, 2, Duration::from_secs(2)).await;
    assert_eq!(
        described(&granted),
        vec![
            ev(CAMERA, NotDetermined, Granted, Cause::Popup),
            ev(RECORD, NotDetermined, Granted, Cause::Popup),
        ]
    );
    let expired = next_events(&mut stream, 1, Duration::from_secs(3)).await;
    assert_eq!(
        described(&expired),
        vec![ev(CAMERA, Granted, NotDetermined, Cause::Expired)]
    );
    assert!(SystemTime::now() >= lapse);

    let ended = h.end_session("wxcam", "u", "s1").await.unwrap();
    assert_eq!(
        crate::util::change_list(&ended.changes),
        vec![(RECORD.to_string(), NotDetermined)]
    );
    assert_eq!(ended.changes[0].cause(), Cause::Expired);
    h.stop().await;
}

/// A lapse that fell while the daemon was down is applied as soon as it
/// starts, not at the next periodic check (set far away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapse_missed_while_down_is_applied_right_after_start() {
    let mut h = TestDaemon::start_with(|c| {
        c.grants.expiry_check_interval = Duration::from_secs(60);
    })
    .await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let r0 = h.revision().await;
    let lapse = SystemTime::now() + Duration::from_millis(300);
    allow_for(&h, "wxcam", "u", CAMERA, until(lapse)).await;
    h.answer("wxcam", "u", RECORD, Answer::Allow).await;

    h.restart_after(Duration::from_millis(600)).await;
    assert!(SystemTime::now() > lapse);
    let started = Instant::now();
    // No write has happened since the start: only the start-up check can
    // have recorded the lapse.
    let mut stream = watch(&h, "wxcam", Some(r0)).await;
    let events = next_events(&mut stream, 3, Duration::from_secs(2)).await;
    assert_eq!(
        described(&events),
        vec![
            ev(CAMERA, NotDetermined, Granted, Cause::Popup),
            ev(RECORD, NotDetermined, Granted, Cause::Popup),
            ev(CAMERA, Granted, NotDetermined, Cause::Expired),
        ]
    );
    assert_increasing(&events);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        h.decision("wxcam", "u", CAMERA).await.outcome(),
        Outcome::Prompt
    );
    assert_eq!(
        h.decision("wxcam", "u", RECORD).await.outcome(),
        Outcome::Granted
    );
    assert_no_event(&mut stream, Duration::from_millis(300)).await;

    // The lapse is audited as the daemon's own doing.
    let trail = audit_all(&h, audit_req("wxcam")).await;
    let expired = find(&trail, CAMERA, A::Expired);
    assert_eq!(
        (expired.principal.as_str(), expired.user_id.as_str()),
        ("consentd", "u")
    );
    assert_eq!(expired.revision, events[2].revision);
    h.stop().await;
}

// --- 3. Consent audit trail ---------------------------------------------

fn ios() -> pb::ClientInfo {
    client(Platform::Ios, "8.0.44", "2.30.1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_every_prompt_answer_and_change_with_client_and_time() {
    let h = TestDaemon::start().await;
    let t0 = SystemTime::now();
    h.register(location_app("wxaud")).await;

    // Prompts shown: camera on Android (twice: the popup is still up, one
    // record), bluetooth on iOS.
    assert_eq!(
        h.decision("wxaud", "u", CAMERA).await.outcome(),
        Outcome::Prompt
    );
    assert_eq!(
        h.decision("wxaud", "u", CAMERA).await.outcome(),
        Outcome::Prompt
    );
    assert_eq!(
        h.decision_for("wxaud", "u", BLUETOOTH, ios())
            .await
            .outcome(),
        Outcome::Prompt
    );
    let allow = h.answer("wxaud", "u", CAMERA, Answer::Allow).await;
    h.answer("wxaud", "u", RECORD, Answer::Deny).await;
    let cancel = h
        .record("wxaud", "u", BLUETOOTH, Answer::Cancel, ios())
        .await
        .unwrap();
    assert_eq!(cancel.err_msg, "authorize:fail auth cancel");
    h.answer("wxaud", "u", BACKGROUND, Answer::AllowWhileUsing)
        .await;
    // Two scopes changed on the settings page: two records.
    h.update_setting(
        "wxaud",
        "u",
        &[(CAMERA, false), (RECORD, true)],
        LocationOption::Unspecified,
    )
    .await
    .unwrap();
    h.remove_app("wxaud", "u").await.unwrap();
    h.update_app(location_app("wxaud")).await.unwrap();
    h.apps
        .clone()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxaud".into(),
        })
        .await
        .unwrap();

    // The trail outlives the registration.
    let trail = audit_until(&h, "wxaud", |r| {
        count(r, "u", CAMERA, A::PromptShown) >= 1 && count(r, "u", BLUETOOTH, A::PromptShown) >= 1
    })
    .await;
    let t1 = SystemTime::now();

    let mut committed: Vec<_> = actions(&trail)
        .into_iter()
        .filter(|(_, _, a)| *a != A::PromptShown)
        .collect();
    // RemoveApp may be one record or one per forgotten scope.
    committed.dedup_by(|a, b| a.2 == A::AppRemoved && b.2 == A::AppRemoved);
    let s = |user: &str, scope: &str, a: AuditAction| (user.to_string(), scope.to_string(), a);
    assert_eq!(
        committed.iter().map(|(_, _, a)| *a).collect::<Vec<_>>(),
        vec![
            A::OperatorRegisterApp,
            A::AnsweredAllow,
            A::AnsweredDeny,
            A::AnsweredCancel,
            A::AnsweredAllowWhileUsing,
            A::SettingsChanged,
            A::SettingsChanged,
            A::AppRemoved,
            A::OperatorUpdateApp,
            A::OperatorDeleteApp,
        ],
        "{committed:#?}"
    );
    assert_eq!(
        committed[1..5].to_vec(),
        vec![
            s("u", CAMERA, A::AnsweredAllow),
            s("u", RECORD, A::AnsweredDeny),
            s("u", BLUETOOTH, A::AnsweredCancel),
            s("u", BACKGROUND, A::AnsweredAllowWhileUsing),
        ]
    );
    let mut settings_pair = committed[5..7].to_vec();
    settings_pair.sort();
    assert_eq!(
        settings_pair,
        vec![
            s("u", CAMERA, A::SettingsChanged),
            s("u", RECORD, A::SettingsChanged)
        ]
    );
    assert_eq!(committed[7].0, "u");
    for r in &trail {
        assert_eq!(r.app_id, "wxaud");
    }
    // The same popup asked for twice while up is one record.
    assert_eq!(count(&trail, "u", CAMERA, A::PromptShown), 1, "{trail:#?}");
    assert_eq!(
        count(&trail, "u", BLUETOOTH, A::PromptShown),
        1,
        "{trail:#?}"
    );

    // Positions, times, principals, clients.
    for pair in trail.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "oldest first: {trail:#?}");
    }
    let principal = &trail[0].principal;
    assert!(
        !principal.is_empty() && principal != "consentd",
        "{principal:?}"
    );
    for r in &trail {
        let t = time_of(&r.time);
        assert!(
            t + Duration::from_millis(5) >= t0 && t <= t1,
            "time of {r:?}"
        );
        assert_eq!(
            &r.principal, principal,
            "auth is off: the local operator, {r:?}"
        );
        assert!(r.revision > 0, "{r:?}");
    }
    let with_client = |scope: &str, a: AuditAction| find(&trail, scope, a).client.clone();
    assert_eq!(with_client(CAMERA, A::PromptShown), Some(android()));
    assert_eq!(with_client(BLUETOOTH, A::PromptShown), Some(ios()));
    assert_eq!(with_client(CAMERA, A::AnsweredAllow), Some(android()));
    assert_eq!(with_client(RECORD, A::AnsweredDeny), Some(android()));
    assert_eq!(with_client(BLUETOOTH, A::AnsweredCancel), Some(ios()));
    // The settings page names no client.
    assert_eq!(with_client(CAMERA, A::SettingsChanged), None);
    // Written in the commit of the change: its revision.
    assert_eq!(
        find(&trail, CAMERA, A::AnsweredAllow).revision,
        allow.revision
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_lapses_sessions_privacy_answers_and_imports() {
    let h = TestDaemon::start_with(short_expiry).await;
    h.register(with_privacy(
        app("wxaud", AppKind::MiniProgram),
        GUIDE,
        &["camera", "microphone"],
    ))
    .await;
    h.record_privacy("wxaud", "v", false).await.unwrap();
    h.record_privacy("wxaud", "u", true).await.unwrap();
    let mut live = watch(&h, "wxaud", None).await;
    allow_for(
        &h,
        "wxaud",
        "u",
        CAMERA,
        until(SystemTime::now() + Duration::from_millis(300)),
    )
    .await;
    allow_for(&h, "wxaud", "u", RECORD, one_time("s1")).await;
    let events = next_events(&mut live, 3, Duration::from_secs(3)).await;
    assert_eq!(events[2].cause(), Cause::Expired);
    let ended = h.end_session("wxaud", "u", "s1").await.unwrap();
    assert_eq!(ended.changes.len(), 1);

    let trail = audit_until(&h, "wxaud", |r| {
        r.iter().any(|r| r.action() == A::SessionEnded)
    })
    .await;
    let v = trail
        .iter()
        .find(|r| r.action() == A::PrivacyDisagreed)
        .unwrap_or_else(|| panic!("no PRIVACY_DISAGREED in {trail:#?}"));
    assert_eq!(v.user_id, "v");
    let u = trail
        .iter()
        .find(|r| r.action() == A::PrivacyAgreed)
        .unwrap_or_else(|| panic!("no PRIVACY_AGREED in {trail:#?}"));
    assert_eq!(u.user_id, "u");
    assert!(v.seq < u.seq);
    let expired = find(&trail, CAMERA, A::Expired);
    assert_eq!(
        (expired.principal.as_str(), expired.user_id.as_str()),
        ("consentd", "u")
    );
    assert_eq!(expired.revision, events[2].revision);
    let session = trail
        .iter()
        .find(|r| r.action() == A::SessionEnded)
        .unwrap();
    assert_eq!(session.user_id, "u");
    assert_ne!(
        session.principal, "consentd",
        "the runtime ended the session"
    );
    assert!(session.seq > expired.seq);

    // An operator import is audited too.
    h.answer("wxaud", "u", CAMERA, Answer::Deny).await;
    let mut admin = h.admin();
    let records = export(&h.channel(), false).await;
    h.apps
        .clone()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxaud".into(),
        })
        .await
        .unwrap();
    let before_import = audit_all(&h, audit_req("wxaud")).await;
    let imported = admin
        .import(tokio_stream::iter(records))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((imported.apps, imported.decisions), (1, 1));
    let trail = audit_all(&h, audit_req("wxaud")).await;
    let new = &trail[before_import.len()..];
    let import = new
        .iter()
        .find(|r| r.action() == A::OperatorImport)
        .unwrap_or_else(|| panic!("no OPERATOR_IMPORT after an import: {new:#?}"));
    assert!(!import.principal.is_empty() && import.principal != "consentd");
    assert_eq!(
        crate::util::sorted(&h.setting("wxaud", "u").await.auth_setting),
        crate::util::setting_of(&[(CAMERA, false)])
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_audit_filters_by_user_scope_and_time_and_pages() {
    let h = TestDaemon::start_with(|c| c.audit.record_prompts = false).await;
    h.register(app("wxaud", AppKind::MiniProgram)).await;
    h.register(app("wxother", AppKind::MiniProgram)).await;
    h.answer("wxaud", "u", CAMERA, Answer::Allow).await;
    h.answer("wxaud", "v", CAMERA, Answer::Deny).await;
    h.answer("wxaud", "u", RECORD, Answer::Deny).await;
    h.answer("wxother", "u", CAMERA, Answer::Allow).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.answer("wxaud", "v", RECORD, Answer::Allow).await;
    h.answer("wxaud", "u", BLUETOOTH, Answer::Cancel).await;
    h.update_setting(
        "wxaud",
        "u",
        &[(CAMERA, false)],
        LocationOption::Unspecified,
    )
    .await
    .unwrap();

    let all = audit_all(&h, audit_req("wxaud")).await;
    let s = |user: &str, scope: &str, a: AuditAction| (user.to_string(), scope.to_string(), a);
    assert_eq!(
        actions(&all),
        vec![
            s("", "", A::OperatorRegisterApp),
            s("u", CAMERA, A::AnsweredAllow),
            s("v", CAMERA, A::AnsweredDeny),
            s("u", RECORD, A::AnsweredDeny),
            s("v", RECORD, A::AnsweredAllow),
            s("u", BLUETOOTH, A::AnsweredCancel),
            s("u", CAMERA, A::SettingsChanged),
        ]
    );
    let of = |keep: &dyn Fn(&pb::AuditRecord) -> bool| -> Vec<pb::AuditRecord> {
        all.iter().filter(|r| keep(r)).cloned().collect()
    };

    let req = |user: &str, scope: &str, since: Option<SystemTime>| pb::ListAuditRequest {
        app_id: "wxaud".into(),
        user_id: user.into(),
        scope: scope.into(),
        since: since.map(ts),
        ..Default::default()
    };
    assert_eq!(
        audit_all(&h, req("u", "", None)).await,
        of(&|r| r.user_id == "u")
    );
    assert_eq!(
        audit_all(&h, req("", CAMERA, None)).await,
        of(&|r| r.scope == CAMERA)
    );
    assert_eq!(
        audit_all(&h, req("v", RECORD, None)).await,
        of(&|r| r.user_id == "v" && r.scope == RECORD)
    );
    let recent = audit_all(&h, req("", "", Some(since))).await;
    assert_eq!(recent, all[4..].to_vec());
    assert_eq!(
        audit_all(&h, req("u", "", Some(since))).await,
        all[5..].to_vec()
    );
    assert!(audit_all(&h, req("nobody", "", None)).await.is_empty());
    let other = audit_all(&h, audit_req("wxother")).await;
    assert_eq!(
        actions(&other),
        vec![
            s("", "", A::OperatorRegisterApp),
            s("u", CAMERA, A::AnsweredAllow)
        ]
    );

    // Pages of 2: the same records, in order, then an empty token.
    let mut paged = Vec::new();
    let mut req = pb::ListAuditRequest {
        page_size: 2,
        ..audit_req("wxaud")
    };
    let mut pages = 0;
    loop {
        let page = h.list_audit(req.clone()).await.unwrap();
        pages += 1;
        assert!(page.records.len() <= 2, "{page:?}");
        paged.extend(page.records);
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
        assert!(pages < 10);
    }
    assert_eq!(paged, all);
    assert_eq!(pages, 4);
    // Filters and pages together.
    let filtered_pages = {
        let mut out = Vec::new();
        let mut req = pb::ListAuditRequest {
            page_size: 1,
            user_id: "u".into(),
            ..audit_req("wxaud")
        };
        loop {
            let page = h.list_audit(req.clone()).await.unwrap();
            assert!(page.records.len() <= 1);
            out.extend(page.records);
            if page.next_page_token.is_empty() {
                break out;
            }
            req.page_token = page.next_page_token;
        }
    };
    assert_eq!(filtered_pages, of(&|r| r.user_id == "u"));
    // The default page holds everything here.
    let page = h.list_audit(audit_req("wxaud")).await.unwrap();
    assert_eq!(
        (page.records, page.next_page_token.as_str()),
        (all.clone(), "")
    );
    h.stop().await;
}

/// Audit retention is its own: trimming the trail keeps the Watch log, and
/// trimming the Watch log keeps the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_is_independent_of_the_watch_log() {
    let a = TestDaemon::start_with(|c| {
        c.audit.record_prompts = false;
        c.audit.retention = Retention {
            max_events: Some(3),
            max_age: None,
        };
        c.compaction_interval = Duration::from_millis(100);
    })
    .await;
    let w = TestDaemon::start_with(|c| {
        c.audit.record_prompts = false;
        c.retention = Retention {
            max_events: Some(1),
            max_age: None,
        };
        c.compaction_interval = Duration::from_millis(100);
    })
    .await;
    let r0 = a.revision().await;
    for h in [&a, &w] {
        h.register(app("wxret", AppKind::MiniProgram)).await;
        for scope in [CAMERA, RECORD, BLUETOOTH, WERUN] {
            h.answer("wxret", "u", scope, Answer::Allow).await;
        }
        h.update_setting(
            "wxret",
            "u",
            &[(CAMERA, false)],
            LocationOption::Unspecified,
        )
        .await
        .unwrap();
    }
    // The trail of `a` is trimmed to its newest three records...
    let kept = audit_until(&a, "wxret", |r| r.len() <= 3).await;
    let s = |scope: &str, act: AuditAction| ("u".to_string(), scope.to_string(), act);
    assert_eq!(
        actions(&kept),
        vec![
            s(BLUETOOTH, A::AnsweredAllow),
            s(WERUN, A::AnsweredAllow),
            s(CAMERA, A::SettingsChanged),
        ]
    );
    // ...while its event log (default retention) still replays everything.
    let mut replay = watch(&a, "wxret", Some(r0)).await;
    let events = next_events(&mut replay, 5, Duration::from_secs(2)).await;
    assert_eq!(events.last().unwrap().cause(), Cause::Settings);

    // `w` trimmed its event log to one event...
    let start = Instant::now();
    loop {
        let res = w
            .auth
            .clone()
            .watch(pb::WatchRequest {
                start_revision: Some(r0),
                ..Default::default()
            })
            .await;
        match res {
            Err(status) if status.code() == Code::OutOfRange => break,
            _ => {
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "event log never trimmed"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // ...and kept its whole trail.
    let trail = audit_all(&w, audit_req("wxret")).await;
    assert_eq!(trail.len(), 6, "{trail:#?}");
    a.stop().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_older_than_max_age_are_trimmed() {
    let h = TestDaemon::start_with(|c| {
        c.audit.record_prompts = false;
        c.audit.retention = Retention {
            max_events: None,
            max_age: Some(Duration::from_secs(1)),
        };
        c.compaction_interval = Duration::from_millis(100);
    })
    .await;
    h.register(app("wxage", AppKind::MiniProgram)).await;
    h.answer("wxage", "u", CAMERA, Answer::Allow).await;
    assert_eq!(audit_all(&h, audit_req("wxage")).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    h.answer("wxage", "u", RECORD, Answer::Allow).await;
    let kept = audit_until(&h, "wxage", |r| r.len() == 1).await;
    assert_eq!(
        actions(&kept),
        vec![("u".to_string(), RECORD.to_string(), A::AnsweredAllow)]
    );
    h.stop().await;
}

/// With authentication on, each record names the principal that made the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_principal_is_the_authenticated_caller() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let digest = |token: &str| format!("{:x}", Sha256::digest(token.as_bytes()));
    let creds = dir.path().join("credentials.toml");
    std::fs::write(
        &creds,
        format!(
            r#"
[[principal]]
name = "ops"
role = "operator"
token_sha256 = "{}"

[[principal]]
name = "shop-runtime"
role = "runtime"
apps = ["wxauth"]
token_sha256 = "{}"

[[principal]]
name = "settings-page"
role = "settings"
apps = ["*"]
token_sha256 = "{}"
"#,
            digest("ops-token"),
            digest("runtime-token"),
            digest("settings-token"),
        ),
    )
    .unwrap();
    let h = TestDaemon::start_with(|c| c.credentials = Some(creds.clone())).await;
    let channel = h.channel();
    let with = |token: &'static str| {
        let channel = channel.clone();
        pb::authorization_client::AuthorizationClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                Ok(req)
            },
        )
    };
    let mut ops_apps = pb::apps_client::AppsClient::with_interceptor(
        channel.clone(),
        |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", "Bearer ops-token".parse().unwrap());
            Ok(req)
        },
    );
    ops_apps
        .register_app(pb::RegisterAppRequest {
            app: Some(app("wxauth", AppKind::MiniProgram)),
        })
        .await
        .unwrap();
    with("runtime-token")
        .record_decision(pb::RecordDecisionRequest {
            app_id: "wxauth".into(),
            user_id: "u".into(),
            scope: CAMERA.into(),
            answer: Answer::Allow.into(),
            client: Some(ios()),
            lifetime: None,
        })
        .await
        .unwrap();
    with("settings-token")
        .update_setting(pb::UpdateSettingRequest {
            app_id: "wxauth".into(),
            user_id: "u".into(),
            auth_setting: [(CAMERA.to_string(), false)].into_iter().collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let trail = with("ops-token")
        .list_audit(audit_req("wxauth"))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(
        trail
            .iter()
            .map(|r| (r.action(), r.principal.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (A::OperatorRegisterApp, "ops"),
            (A::AnsweredAllow, "shop-runtime"),
            (A::SettingsChanged, "settings-page"),
        ]
    );
    assert_eq!(trail[1].client, Some(ios()));
    // The runtime may not read the trail.
    expect_status(
        with("runtime-token").list_audit(audit_req("wxauth")).await,
        Code::PermissionDenied,
        "shop-runtime",
    );
    h.stop().await;
}

// --- Anti-nag policy ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_nag_is_off_by_default() {
    let h = TestDaemon::start().await;
    assert!(Config::default().anti_nag.is_none());
    h.register(app("wxnag", AppKind::MiniProgram)).await;
    for _ in 0..6 {
        let d = h.decision("wxnag", "u", CAMERA).await;
        assert_decision(&d, Outcome::Prompt, Reason::PopupAvailable, "");
        assert_eq!(d.embargo_until, None);
        let r = h.answer("wxnag", "u", CAMERA, Answer::Cancel).await;
        assert_eq!(
            (r.err_msg.as_str(), r.state(), r.changes.len()),
            ("authorize:fail auth cancel", NotDetermined, 0)
        );
    }
    let r = h
        .check_api("wxnag", "u", "camera", android())
        .await
        .unwrap();
    assert_eq!((r.outcome(), r.err_msg.as_str()), (Outcome::Prompt, ""));
    let trail = audit_until(&h, "wxnag", |r| {
        count(r, "u", CAMERA, A::AnsweredCancel) == 6
    })
    .await;
    assert_eq!(count(&trail, "u", CAMERA, A::PromptSuppressed), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_nag_embargoes_prompts_after_n_cancels_in_a_row() {
    let embargo = Duration::from_millis(1500);
    let h = TestDaemon::start_with(|c| {
        c.anti_nag = Some(NagPolicy {
            max_cancels: 2,
            embargo_ms: embargo.as_millis() as u64,
        })
    })
    .await;
    h.register(app("wxnag", AppKind::MiniProgram)).await;

    h.answer("wxnag", "u", CAMERA, Answer::Cancel).await;
    assert_eq!(
        h.decision("wxnag", "u", CAMERA).await.outcome(),
        Outcome::Prompt
    );
    let before = SystemTime::now();
    h.answer("wxnag", "u", CAMERA, Answer::Cancel).await;
    let after = SystemTime::now();

    let d = h.decision("wxnag", "u", CAMERA).await;
    assert_decision(
        &d,
        Outcome::Embargoed,
        Reason::PromptEmbargoed,
        "authorize:fail auth cancel",
    );
    let end = time_of(&d.embargo_until);
    assert!(
        end + Duration::from_millis(5) >= before + embargo && end <= after + embargo,
        "embargo_until {end:?} is not {embargo:?} after the second cancel"
    );
    let r = h
        .check_api("wxnag", "u", "camera", android())
        .await
        .unwrap();
    assert_eq!(
        (r.outcome(), r.err_msg.as_str()),
        (Outcome::Embargoed, "camera:fail auth cancel")
    );
    assert_eq!(r.decisions[0].embargo_until, d.embargo_until);
    // An answer during the embargo is refused, and changes nothing.
    expect_status(
        h.record("wxnag", "u", CAMERA, Answer::Allow, android())
            .await,
        Code::FailedPrecondition,
        "",
    );
    assert!(h.setting("wxnag", "u").await.auth_setting.is_empty());
    // Only that (app, user, scope).
    assert_eq!(
        h.decision("wxnag", "u", RECORD).await.outcome(),
        Outcome::Prompt
    );
    assert_eq!(
        h.decision("wxnag", "v", CAMERA).await.outcome(),
        Outcome::Prompt
    );

    // "In a row": an allow resets the count (a one-time grant, then its
    // session ends, gives a never-asked scope again).
    h.answer("wxnag", "u", RECORD, Answer::Cancel).await;
    allow_for(&h, "wxnag", "u", RECORD, one_time("s")).await;
    h.end_session("wxnag", "u", "s").await.unwrap();
    h.answer("wxnag", "u", RECORD, Answer::Cancel).await;
    assert_eq!(
        h.decision("wxnag", "u", RECORD).await.outcome(),
        Outcome::Prompt
    );
    h.answer("wxnag", "u", RECORD, Answer::Cancel).await;
    assert_eq!(
        h.decision("wxnag", "u", RECORD).await.outcome(),
        Outcome::Embargoed
    );

    let trail = audit_until(&h, "wxnag", |r| {
        count(r, "u", CAMERA, A::PromptSuppressed) >= 1
    })
    .await;
    assert_eq!(find(&trail, CAMERA, A::PromptSuppressed).user_id, "u");

    // After the embargo the popup is back.
    tokio::time::sleep(
        end.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(100),
    )
    .await;
    let d = h.decision("wxnag", "u", CAMERA).await;
    assert_decision(&d, Outcome::Prompt, Reason::PopupAvailable, "");
    assert_eq!(d.embargo_until, None);
    h.answer("wxnag", "u", CAMERA, Answer::Allow).await;
    assert_eq!(
        h.decision("wxnag", "u", CAMERA).await.outcome(),
        Outcome::Granted
    );
    h.stop().await;
}

/// "One record per changed scope": a settings call that changes nothing
/// writes no SETTINGS_CHANGED record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_has_no_settings_record_for_a_settings_call_that_changes_nothing() {
    let h = TestDaemon::start_with(|c| c.audit.record_prompts = false).await;
    h.register(app("wxaud", AppKind::MiniProgram)).await;
    h.answer("wxaud", "u", CAMERA, Answer::Allow).await;
    let before = audit_all(&h, audit_req("wxaud")).await;
    let r = h
        .update_setting("wxaud", "u", &[(CAMERA, true)], LocationOption::Unspecified)
        .await
        .unwrap();
    assert!(r.changes.is_empty());
    assert_eq!(audit_all(&h, audit_req("wxaud")).await, before);
    h.stop().await;
}
