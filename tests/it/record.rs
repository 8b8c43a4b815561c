//! Popup answers (RecordDecision): ALLOW, DENY, CANCEL, idempotence, the
//! background two-option popup, and answers no popup could have produced.

use consentd::pb::{self, Answer, Cause, DecisionState as S, Outcome as O};
use tonic::Code;

use crate::fixture::{android, assert_status, client_info, location_app, Client, TestDaemon};

async fn daemon() -> (TestDaemon, Client) {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    (h, c)
}

fn changes(r: &pb::RecordDecisionResponse) -> Vec<(&str, S, S, Cause)> {
    r.changes
        .iter()
        .map(|c| (c.scope.as_str(), c.old_state(), c.new_state(), c.cause()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_and_cancel() {
    let (h, c) = daemon().await;
    let allow = c
        .record("wxloc", "u", "scope.camera", Answer::Allow, android())
        .await
        .unwrap();
    assert_eq!(
        (allow.err_msg.as_str(), allow.state()),
        ("authorize:ok", S::Granted)
    );
    assert_eq!(
        changes(&allow),
        [("scope.camera", S::NotDetermined, S::Granted, Cause::Popup)]
    );
    assert_eq!(allow.changes[0].revision, allow.revision);
    assert_eq!(
        c.decision("wxloc", "u", "scope.camera").await.outcome(),
        O::Granted
    );

    let deny = c
        .record("wxloc", "u", "scope.record", Answer::Deny, android())
        .await
        .unwrap();
    assert_eq!(
        (deny.err_msg.as_str(), deny.state()),
        ("authorize:fail auth deny", S::Denied)
    );
    assert!(deny.revision > allow.revision);
    assert_eq!(
        c.decision("wxloc", "u", "scope.record").await.outcome(),
        O::Denied
    );

    let cancel = c
        .record("wxloc", "u", "scope.bluetooth", Answer::Cancel, android())
        .await
        .unwrap();
    assert_eq!(
        (cancel.err_msg.as_str(), cancel.state()),
        ("authorize:fail auth cancel", S::NotDetermined)
    );
    assert!(cancel.changes.is_empty());
    assert_eq!(cancel.revision, deny.revision, "cancel commits nothing");
    assert_eq!(
        c.decision("wxloc", "u", "scope.bluetooth").await.outcome(),
        O::Prompt,
        "asks again"
    );
    assert_eq!(
        c.setting("wxloc", "u").await.auth_setting.len(),
        2,
        "cancel is not a decision"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_the_same_answer_again_changes_nothing() {
    let (h, c) = daemon().await;
    for answer in [Answer::Allow, Answer::Deny] {
        let user = format!("{answer:?}");
        let first = c
            .record("wxloc", &user, "scope.camera", answer, android())
            .await
            .unwrap();
        let again = c
            .record("wxloc", &user, "scope.camera", answer, android())
            .await
            .unwrap();
        assert!(again.changes.is_empty());
        assert_eq!(
            (again.err_msg, again.state, again.revision),
            (first.err_msg, first.state, first.revision)
        );
    }
    // No event either: the log holds exactly the two first answers.
    let revision = c.revision().await;
    let mut stream = c
        .watch(pb::WatchRequest {
            start_revision: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut events = Vec::new();
    while events.last().is_none_or(|r| *r < revision) {
        use tokio_stream::StreamExt as _;
        if let Some(pb::watch_response::Kind::Event(e)) = stream.next().await.unwrap().unwrap().kind
        {
            events.push(e.revision);
        }
    }
    assert_eq!(events.len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_popup_has_two_allow_options() {
    let (h, c) = daemon().await;
    let both = c
        .record(
            "wxloc",
            "always",
            "scope.userLocationBackground",
            Answer::Allow,
            android(),
        )
        .await
        .unwrap();
    assert_eq!(both.err_msg, "authorize:ok");
    assert_eq!(
        changes(&both),
        [
            (
                "scope.userLocation",
                S::NotDetermined,
                S::Granted,
                Cause::Popup
            ),
            (
                "scope.userLocationBackground",
                S::NotDetermined,
                S::Granted,
                Cause::Popup
            ),
        ],
        "location first, so every prefix of the log keeps background => location"
    );
    let fg = c
        .record(
            "wxloc",
            "fg",
            "scope.userLocationBackground",
            Answer::AllowWhileUsing,
            android(),
        )
        .await
        .unwrap();
    assert_eq!(
        (fg.err_msg.as_str(), fg.state()),
        ("authorize:fail auth deny", S::NotDetermined)
    );
    assert_eq!(
        changes(&fg),
        [(
            "scope.userLocation",
            S::NotDetermined,
            S::Granted,
            Cause::Popup
        )]
    );
    assert_eq!(
        c.setting("wxloc", "fg").await.auth_setting,
        [("scope.userLocation".to_string(), true)].into()
    );
    let deny = c
        .record(
            "wxloc",
            "no",
            "scope.userLocationBackground",
            Answer::Deny,
            android(),
        )
        .await
        .unwrap();
    assert_eq!(
        changes(&deny),
        [(
            "scope.userLocationBackground",
            S::NotDetermined,
            S::Denied,
            Cause::Popup
        )]
    );
    assert_status(
        c.record(
            "wxloc",
            "x",
            "scope.camera",
            Answer::AllowWhileUsing,
            android(),
        )
        .await,
        Code::InvalidArgument,
        "only valid for scope.userLocationBackground",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_no_popup_could_have_produced_are_refused() {
    let (h, c) = daemon().await;
    c.record("wxloc", "u", "scope.camera", Answer::Deny, android())
        .await
        .unwrap();
    let before = c.revision().await;
    let old_ios = client_info(pb::Platform::Ios, "7.0.20", "3.0.0");
    let cases = [
        ("scope.camera", Answer::Allow, android(), "already DENIED"),
        ("scope.camera", Answer::Cancel, android(), "already DENIED"),
        ("scope.address", Answer::Allow, android(), "NoAuthNeeded"),
        (
            "scope.userFuzzyLocation",
            Answer::Allow,
            android(),
            "NotDeclared",
        ),
        (
            "scope.userLocationBackground",
            Answer::Allow,
            old_ios,
            "background-location-popup",
        ),
        (
            "scope.gameClubData",
            Answer::Allow,
            android(),
            "Unsupported",
        ),
    ];
    for (scope, answer, client, needle) in cases {
        assert_status(
            c.record("wxloc", "u", scope, answer, client).await,
            Code::FailedPrecondition,
            needle,
        );
    }
    assert_eq!(c.revision().await, before, "nothing changed");
    assert_status(
        c.record("wxloc", "u", "scope.camera", Answer::Unspecified, android())
            .await,
        Code::InvalidArgument,
        "answer is required",
    );
    assert_status(
        c.record("wxnone", "u", "scope.camera", Answer::Allow, android())
            .await,
        Code::NotFound,
        "\"wxnone\"",
    );
    h.stop().await;
}
