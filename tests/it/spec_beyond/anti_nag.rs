//! Issue #8: the anti-nag policy (off by default, embargoes after repeated
//! cancels).

use std::time::Duration;

use consentd::{
    config::Config,
    domain::NagPolicy,
    pb::{Answer, AppKind, AuditAction, DecisionState, Outcome, Reason},
};
use tonic::Code;

use crate::util::{android, app, assert_decision, expect_status, TestDaemon};

use AuditAction as A;
use DecisionState::NotDetermined;

use super::{allow_for, audit_until, count, find, one_time, time_of, CAMERA, RECORD};

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
    let h = TestDaemon::start_with_manual_clock(|c| {
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
    let before = h.now();
    h.answer("wxnag", "u", CAMERA, Answer::Cancel).await;
    let after = h.now();

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

    // Not a millisecond early...
    h.advance(end.duration_since(h.now()).unwrap() - Duration::from_millis(1));
    let d = h.decision("wxnag", "u", CAMERA).await;
    assert_eq!(d.outcome(), Outcome::Embargoed, "{d:?}");
    assert_eq!(d.embargo_until, Some(super::ts(end)));
    // ...after the embargo the popup is back.
    h.advance(Duration::from_millis(1));
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
