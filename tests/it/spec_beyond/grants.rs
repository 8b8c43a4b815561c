//! Issue #8, part 2: timed and one-time grants that lapse by themselves
//! (EXPIRED events, resumable Watch, session ends and idle timeouts,
//! restarts).

use std::time::{Duration, Instant};

use consentd::{
    config::Config,
    pb::{
        self, watch_response, Answer, AppKind, AuditAction, Cause, DecisionState, LocationOption,
        Outcome, Reason,
    },
};
use tonic::{Code, Streaming};

use crate::util::{
    android, app, assert_decision, expect_status, location_app, Rpc, TestDaemon, BACKGROUND,
    LOCATION,
};

use AuditAction as A;
use DecisionState::{Denied, Granted, NotDetermined};

use super::{
    allow_for, audit_all, audit_req, find, gap, next_events, one_time, record_for, short_expiry,
    time_of, until, watch, BLUETOOTH, CAMERA, RECORD, WERUN,
};

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

const MS: Duration = Duration::from_millis(1);

/// Real time the expiry task (every 100 ms, [`short_expiry`]) gets to
/// show it does nothing: a few of its ticks.
const QUIET: Duration = Duration::from_millis(300);

#[track_caller]
fn assert_increasing(events: &[pb::DecisionEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].revision < pair[1].revision,
            "revisions not increasing: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_grant_lapses_to_not_determined_with_an_expired_event() {
    let h = TestDaemon::start_with_manual_clock(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let mut live = watch(&h, "wxcam", None).await;

    let lapse = h.now() + Duration::from_millis(1000);
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
    h.advance(Duration::from_millis(999));
    assert_no_event(&mut live, QUIET).await;
    assert_eq!(
        h.decision("wxcam", "u", CAMERA).await.outcome(),
        Outcome::Granted,
        "lapsed 1 ms early"
    );
    h.advance(MS);
    let expired = next_events(&mut live, 1, Duration::from_secs(3)).await;
    assert!(h.now() >= lapse);
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
    assert_no_event(&mut live, QUIET).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_are_validated_and_denials_stay_permanent() {
    let h = TestDaemon::start_with_manual_clock(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let before = h.revision().await;
    let past = h.now() - Duration::from_secs(5);
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
    let lapse = h.now() + Duration::from_millis(700);
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

    let mut events = next_events(&mut live, 2, Duration::from_secs(3)).await;
    h.advance(Duration::from_millis(699));
    assert_no_event(&mut live, QUIET).await;
    h.advance(MS);
    events.extend(next_events(&mut live, 1, Duration::from_secs(3)).await);
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
    assert_no_event(&mut live, QUIET).await;
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
    let h = TestDaemon::start_with_manual_clock(short_expiry).await;
    h.register(location_app("wxloc")).await;
    let mut live = watch(&h, "wxloc", None).await;
    let lapse = h.now() + Duration::from_millis(600);
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
    let mut events = next_events(&mut live, 2, Duration::from_secs(3)).await;
    h.advance(Duration::from_millis(599));
    assert_no_event(&mut live, QUIET).await;
    h.advance(MS);
    events.extend(next_events(&mut live, 2, Duration::from_secs(3)).await);
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
    let h = TestDaemon::start_with_manual_clock(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let r0 = h.revision().await;
    let mut live = watch(&h, "wxcam", None).await;
    allow_for(
        &h,
        "wxcam",
        "u",
        CAMERA,
        until(h.now() + Duration::from_millis(500)),
    )
    .await;
    let mut seen = next_events(&mut live, 1, Duration::from_secs(3)).await;
    h.advance(Duration::from_millis(500));
    seen.extend(next_events(&mut live, 1, Duration::from_secs(3)).await);
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
    let h = TestDaemon::start_with_manual_clock(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let t0 = h.now();
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
        expires + Duration::from_millis(5) >= t0 + idle && expires <= h.now() + idle,
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
    let idle = Duration::from_secs(1);
    let h = TestDaemon::start_with_manual_clock(|c| {
        short_expiry(c);
        c.grants.session_idle_timeout = idle;
    })
    .await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let mut live = watch(&h, "wxcam", None).await;
    let t0 = h.now();
    allow_for(&h, "wxcam", "u", CAMERA, one_time("used")).await;
    allow_for(&h, "wxcam", "u", RECORD, one_time("idle")).await;
    let granted = next_events(&mut live, 2, Duration::from_secs(2)).await;
    assert_eq!(granted.len(), 2);

    // Use the camera grant every 250 ms for 2 s (twice the idle timeout).
    let mut camera_deadline = t0 + idle;
    for step in 1..=8 {
        h.advance(Duration::from_millis(250));
        let d = h.decision("wxcam", "u", CAMERA).await;
        assert_eq!(
            (d.outcome(), d.session_id.as_str()),
            (Outcome::Granted, "used"),
            "a used one-time grant lapsed after {} ms",
            step * 250
        );
        // A read renews a grant with under half its idle timeout left,
        // without waiting: let the renewal land before time moves on.
        camera_deadline = time_of(&d.expires_at);
        for _ in 0..200 {
            if camera_deadline >= h.now() + idle / 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let d = h.decision("wxcam", "u", CAMERA).await;
            camera_deadline = time_of(&d.expires_at);
        }
        assert!(
            camera_deadline >= h.now() + idle / 2,
            "a used one-time grant was not renewed at step {step}"
        );
    }
    // Meanwhile the unused one lapsed, once, not before its idle timeout.
    let lapsed = next_events(&mut live, 1, Duration::from_secs(2)).await;
    assert_eq!(
        described(&lapsed),
        vec![ev(RECORD, Granted, NotDetermined, Cause::Expired)]
    );
    assert!(time_of(&lapsed[0].time) >= t0 + idle, "{lapsed:?}");
    assert_eq!(
        h.decision("wxcam", "u", RECORD).await.outcome(),
        Outcome::Prompt
    );
    // Unused from now on: the camera grant lapses at its deadline, not before.
    assert!(camera_deadline <= h.now() + idle, "{camera_deadline:?}");
    h.advance(camera_deadline.duration_since(h.now()).unwrap() - MS);
    assert_no_event(&mut live, QUIET).await;
    h.advance(MS);
    let lapsed = next_events(&mut live, 1, Duration::from_secs(2)).await;
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
    let mut h = TestDaemon::start_with_manual_clock(short_expiry).await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let r0 = h.revision().await;
    let lapse = h.now() + Duration::from_millis(1500);
    allow_for(&h, "wxcam", "u", CAMERA, until(lapse)).await;
    allow_for(&h, "wxcam", "u", RECORD, one_time("s1")).await;

    h.restart().await;
    assert!(h.now() < lapse, "the clock moved during the restart");
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
    h.advance(Duration::from_millis(1499));
    assert_no_event(&mut stream, QUIET).await;
    h.advance(MS);
    let expired = next_events(&mut stream, 1, Duration::from_secs(3)).await;
    assert_eq!(
        described(&expired),
        vec![ev(CAMERA, Granted, NotDetermined, Cause::Expired)]
    );
    assert!(h.now() >= lapse);

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
    let mut h = TestDaemon::start_with_manual_clock(|c| {
        c.grants.expiry_check_interval = Duration::from_secs(60);
    })
    .await;
    h.register(app("wxcam", AppKind::MiniProgram)).await;
    let r0 = h.revision().await;
    let lapse = h.now() + Duration::from_millis(300);
    allow_for(&h, "wxcam", "u", CAMERA, until(lapse)).await;
    h.answer("wxcam", "u", RECORD, Answer::Allow).await;

    h.restart_after(Duration::from_millis(600)).await;
    assert!(h.now() > lapse);
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
