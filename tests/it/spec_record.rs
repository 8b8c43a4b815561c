//! SPEC section 4 "Popup answers" and notes/semantics.md "Popup answers":
//! RecordDecision, its preconditions and the background two-option popup.

use consentd::pb::{self, Answer, AppKind, Cause, DecisionState, Outcome, Platform};
use tonic::Code;

use crate::util::{
    android, app, change_list, client, expect_refused, expect_status, location_app, setting_of,
    sorted, TestDaemon, BACKGROUND, LOCATION,
};

use DecisionState::{Denied, Granted, NotDetermined};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_record_once_then_change_nothing() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    for (answer, state, msg, outcome) in [
        (Answer::Allow, Granted, "authorize:ok", Outcome::Granted),
        (
            Answer::Deny,
            Denied,
            "authorize:fail auth deny",
            Outcome::Denied,
        ),
    ] {
        let user = format!("{answer:?}");
        let before = h.revision().await;
        let first = h.answer("wxloc", &user, "scope.camera", answer).await;
        assert_eq!((first.err_msg.as_str(), first.state()), (msg, state));
        assert_eq!(first.changes.len(), 1, "{first:?}");
        let change = &first.changes[0];
        assert_eq!(
            (
                change.scope.as_str(),
                change.old_state(),
                change.new_state(),
                change.cause()
            ),
            ("scope.camera", NotDetermined, state, Cause::Popup)
        );
        assert!(change.revision > before);
        assert_eq!(first.revision, change.revision);
        assert_eq!(
            h.decision("wxloc", &user, "scope.camera").await.outcome(),
            outcome
        );

        // The same answer again: same errMsg, no change, same revision.
        let again = h.answer("wxloc", &user, "scope.camera", answer).await;
        assert_eq!((again.err_msg.as_str(), again.state()), (msg, state));
        assert!(again.changes.is_empty(), "{again:?}");
        assert_eq!(again.revision, first.revision);
        assert_eq!(h.revision().await, first.revision);
        assert_eq!(
            sorted(&h.setting("wxloc", &user).await.auth_setting),
            setting_of(&[("scope.camera", state == Granted)])
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_records_nothing_and_the_next_call_prompts_again() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "u", "scope.record", Answer::Allow).await;
    let before = h.revision().await;
    for _ in 0..2 {
        let resp = h.answer("wxloc", "u", "scope.camera", Answer::Cancel).await;
        assert_eq!(
            (resp.err_msg.as_str(), resp.state()),
            ("authorize:fail auth cancel", NotDetermined)
        );
        assert!(resp.changes.is_empty(), "{resp:?}");
        assert_eq!(resp.revision, before, "CANCEL reports the current revision");
        let d = h.decision("wxloc", "u", "scope.camera").await;
        assert_eq!(d.outcome(), Outcome::Prompt);
    }
    assert_eq!(h.revision().await, before);
    assert_eq!(
        sorted(&h.setting("wxloc", "u").await.auth_setting),
        setting_of(&[("scope.record", true)])
    );
    // The popup is still there to be answered.
    let resp = h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    assert_eq!(resp.state(), Granted);
    h.stop().await;
}

/// Only a popup this client could have been shown can be answered: anything
/// else is FAILED_PRECONDITION naming the outcome, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_a_popup_are_refused() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.register(app("wxbare", AppKind::MiniProgram)).await;
    h.register(app("wxgame", AppKind::MiniGame)).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    h.answer("wxloc", "u", "scope.record", Answer::Deny).await;
    let settings_before = settings_of_u(&h).await;
    let revision = h.revision().await;

    let cur = android();
    #[rustfmt::skip]
    let cases = [
        ("wxloc", "scope.record", Answer::Allow, cur.clone(), Outcome::Denied),
        ("wxloc", "scope.record", Answer::Cancel, cur.clone(), Outcome::Denied),
        ("wxloc", "scope.camera", Answer::Deny, cur.clone(), Outcome::Granted),
        ("wxloc", "scope.camera", Answer::Cancel, cur.clone(), Outcome::Granted),
        ("wxbare", "scope.address", Answer::Allow, cur.clone(), Outcome::NoAuthNeeded),
        ("wxbare", "scope.invoice", Answer::Deny, cur.clone(), Outcome::NoAuthNeeded),
        ("wxbare", "scope.userInfo", Answer::Allow, cur.clone(), Outcome::NoAuthNeeded),
        ("wxbare", LOCATION, Answer::Allow, cur.clone(), Outcome::NotDeclared),
        ("wxbare", BACKGROUND, Answer::Deny, cur.clone(), Outcome::NotDeclared),
        ("wxgame", "scope.addPhoneContact", Answer::Allow, cur.clone(), Outcome::Unsupported),
        ("wxgame", "scope.address", Answer::Cancel, cur.clone(), Outcome::Unsupported),
        ("wxloc", "scope.bluetooth", Answer::Allow, client(Platform::Android, "8.0.5", "1.1.9"), Outcome::Unsupported),
        ("wxloc", BACKGROUND, Answer::Allow, client(Platform::Windows, "8.0.5", "3.0.0"), Outcome::SettingsRequired),
        ("wxloc", BACKGROUND, Answer::Cancel, client(Platform::Android, "7.9.99", "3.0.0"), Outcome::SettingsRequired),
        ("wxloc", BACKGROUND, Answer::AllowWhileUsing, client(Platform::Mac, "8.0.5", "3.0.0"), Outcome::SettingsRequired),
    ];
    for (app_id, scope, answer, c, outcome) in cases {
        let status = expect_refused(h.record(app_id, "u", scope, answer, c).await, outcome);
        assert!(
            status.message().contains(scope),
            "{scope} not named: {:?}",
            status.message()
        );
    }
    assert_eq!(
        h.revision().await,
        revision,
        "a refused answer committed something"
    );
    assert_eq!(settings_of_u(&h).await, settings_before);
    h.stop().await;
}

async fn settings_of_u(h: &TestDaemon) -> Vec<Vec<(String, bool)>> {
    let mut all = Vec::new();
    for app_id in ["wxloc", "wxbare", "wxgame"] {
        all.push(sorted(&h.setting(app_id, "u").await.auth_setting));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_while_using_is_only_for_background_location() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    let revision = h.revision().await;
    for scope in [LOCATION, "scope.camera", "scope.address"] {
        expect_status(
            h.record("wxloc", "u", scope, Answer::AllowWhileUsing, android())
                .await,
            Code::InvalidArgument,
            "answer",
        );
    }
    assert_eq!(h.revision().await, revision);
    assert!(h.setting("wxloc", "u").await.auth_setting.is_empty());
    h.stop().await;
}

/// "While using and after leaving" grants both, location first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_popup_allow_grants_location_then_background() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    let d = h.decision("wxloc", "u", BACKGROUND).await;
    assert!(d.prompt.unwrap().background_location);

    let resp = h.answer("wxloc", "u", BACKGROUND, Answer::Allow).await;
    assert_eq!(
        (resp.err_msg.as_str(), resp.state()),
        ("authorize:ok", Granted)
    );
    assert_eq!(
        change_list(&resp.changes),
        [(LOCATION.into(), Granted), (BACKGROUND.into(), Granted)]
    );
    assert!(resp.changes[0].revision < resp.changes[1].revision);
    assert_eq!(resp.revision, resp.changes[1].revision);
    assert_eq!(
        sorted(&h.setting("wxloc", "u").await.auth_setting),
        setting_of(&[(LOCATION, true), (BACKGROUND, true)])
    );

    // Location already granted: only background changes.
    h.answer("wxloc", "v", LOCATION, Answer::Allow).await;
    let resp = h.answer("wxloc", "v", BACKGROUND, Answer::Allow).await;
    assert_eq!(change_list(&resp.changes), [(BACKGROUND.into(), Granted)]);
    h.stop().await;
}

/// "While using" grants location only and fails the background request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_popup_while_using_grants_location_only() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    let resp = h
        .answer("wxloc", "u", BACKGROUND, Answer::AllowWhileUsing)
        .await;
    assert_eq!(
        (resp.err_msg.as_str(), resp.state()),
        ("authorize:fail auth deny", NotDetermined)
    );
    assert_eq!(change_list(&resp.changes), [(LOCATION.into(), Granted)]);
    assert_eq!(resp.changes[0].cause(), Cause::Popup);
    assert_eq!(
        sorted(&h.setting("wxloc", "u").await.auth_setting),
        setting_of(&[(LOCATION, true)])
    );
    assert_eq!(
        h.decision("wxloc", "u", LOCATION).await.outcome(),
        Outcome::Granted
    );
    // Background was never decided: the popup comes again.
    assert_eq!(
        h.decision("wxloc", "u", BACKGROUND).await.outcome(),
        Outcome::Prompt
    );

    let again = h
        .answer("wxloc", "u", BACKGROUND, Answer::AllowWhileUsing)
        .await;
    assert_eq!(again.err_msg, "authorize:fail auth deny");
    assert!(again.changes.is_empty(), "{again:?}");
    assert_eq!(again.revision, resp.revision);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_popup_deny_records_background_only() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    let resp = h.answer("wxloc", "u", BACKGROUND, Answer::Deny).await;
    assert_eq!(
        (resp.err_msg.as_str(), resp.state()),
        ("authorize:fail auth deny", Denied)
    );
    assert_eq!(change_list(&resp.changes), [(BACKGROUND.into(), Denied)]);
    assert_eq!(
        sorted(&h.setting("wxloc", "u").await.auth_setting),
        setting_of(&[(BACKGROUND, false)])
    );
    assert_eq!(
        h.decision("wxloc", "u", LOCATION).await.outcome(),
        Outcome::Prompt
    );
    assert_eq!(
        h.decision("wxloc", "u", BACKGROUND).await.outcome(),
        Outcome::Denied
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_per_app_and_per_user() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxa")).await;
    h.register(location_app("wxb")).await;
    h.answer("wxa", "u", "scope.camera", Answer::Allow).await;
    for (app_id, user, outcome) in [
        ("wxa", "u", Outcome::Granted),
        ("wxa", "v", Outcome::Prompt),
        ("wxb", "u", Outcome::Prompt),
    ] {
        let d: pb::Decision = h.decision(app_id, user, "scope.camera").await;
        assert_eq!(d.outcome(), outcome, "{app_id}/{user}");
    }
    h.stop().await;
}
