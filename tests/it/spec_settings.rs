//! SPEC section 6 and notes/semantics.md "Settings": GetSetting,
//! OpenSetting, UpdateSetting (with "background granted implies location
//! granted" after every single change) and RemoveApp.

use std::collections::HashMap;

use consentd::pb::{
    self, Answer, AppKind, Cause, DecisionState, LocationOption, Outcome, Platform,
};
use tonic::Code;

use crate::util::{
    android, app, assert_invariant_holds_after_each, change_list, client, expect_status,
    location_app, setting_of, sorted, Declare, TestDaemon, BACKGROUND, FUZZY, LOCATION,
    LOCATION_DESC,
};

use DecisionState::{Denied, Granted, NotDetermined};
use LocationOption::{
    NotAllowed, Unspecified as NoLocation, WhileUsing, WhileUsingAndAfterLeaving as AfterLeaving,
};

/// scope -> on, as the settings page sends them.
type Toggles = &'static [(&'static str, bool)];
/// (scope, new state), in commit order.
type Changes = &'static [(&'static str, DecisionState)];

/// The stored decisions of (app, user), from GetSetting.
async fn states(h: &TestDaemon, app_id: &str, user: &str) -> HashMap<String, DecisionState> {
    h.setting(app_id, user)
        .await
        .auth_setting
        .into_iter()
        .map(|(scope, on)| (scope, if on { Granted } else { Denied }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_setting_lists_only_decided_scopes() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    let empty = h.setting("wxloc", "u").await;
    assert!(empty.auth_setting.is_empty(), "{empty:?}");
    assert_eq!(empty.err_msg, "getSetting:ok");
    assert_eq!(empty.revision, h.revision().await);

    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    h.answer("wxloc", "u", "scope.record", Answer::Deny).await;
    h.answer("wxloc", "u", "scope.bluetooth", Answer::Cancel)
        .await;
    // Asked but abolished, and asked but undeclared: never stored.
    h.decision("wxloc", "u", "scope.address").await;
    let setting = h.setting("wxloc", "u").await;
    assert_eq!(
        sorted(&setting.auth_setting),
        setting_of(&[("scope.camera", true), ("scope.record", false)])
    );
    assert_eq!(setting.err_msg, "getSetting:ok");
    assert_eq!(setting.revision, h.revision().await);
    h.stop().await;
}

/// A summary of a settings item: (scope, location?, enabled, option, options).
type Item = (String, bool, bool, LocationOption, Vec<LocationOption>);

fn items(resp: &pb::OpenSettingResponse) -> Vec<Item> {
    resp.items
        .iter()
        .map(|i| {
            assert!(!i.title.is_empty(), "item without title: {i:?}");
            (
                i.scope.clone(),
                i.location,
                // `enabled` is for on/off items only.
                i.enabled && !i.location,
                i.location_option(),
                i.location_options().collect(),
            )
        })
        .collect()
}

fn toggle(scope: &str, enabled: bool) -> Item {
    (scope.into(), false, enabled, NoLocation, vec![])
}

fn location_item(option: LocationOption, options: &[LocationOption]) -> Item {
    (LOCATION.into(), true, false, option, options.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_setting_shows_asked_scopes_in_catalog_order() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    let page = h.open_setting("wxloc", "u").await;
    assert!(
        page.items.is_empty() && page.auth_setting.is_empty(),
        "{page:?}"
    );
    assert_eq!(page.err_msg, "openSetting:ok");

    // Answered out of catalog order.
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    h.answer("wxloc", "u", "scope.record", Answer::Deny).await;
    h.answer("wxloc", "u", FUZZY, Answer::Allow).await;
    h.answer("wxloc", "u", LOCATION, Answer::Allow).await;
    let page = h.open_setting("wxloc", "u").await;
    let all = [NotAllowed, WhileUsing, AfterLeaving];
    assert_eq!(
        items(&page),
        [
            location_item(WhileUsing, &all),
            toggle(FUZZY, true),
            toggle("scope.record", false),
            toggle("scope.camera", true),
        ]
    );
    assert_eq!(
        page.auth_setting,
        h.setting("wxloc", "u").await.auth_setting
    );
    assert_eq!(page.err_msg, "openSetting:ok");
    assert_eq!(page.revision, h.revision().await);

    // One location item for both location scopes, showing the combination.
    h.answer("wxloc", "u", BACKGROUND, Answer::Allow).await;
    let page = h.open_setting("wxloc", "u").await;
    assert_eq!(items(&page)[0], location_item(AfterLeaving, &all));
    assert_eq!(items(&page).len(), 4);
    h.answer("wxloc", "v", LOCATION, Answer::Deny).await;
    let page = h.open_setting("wxloc", "v").await;
    assert_eq!(items(&page), [location_item(NotAllowed, &all)]);
    // Background decided alone still shows the location item.
    h.answer("wxloc", "w", BACKGROUND, Answer::Deny).await;
    let page = h.open_setting("wxloc", "w").await;
    assert_eq!(page.items.len(), 1);
    assert!(page.items[0].location && page.items[0].scope == LOCATION);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_third_location_option_needs_background_location_declared() {
    let h = TestDaemon::start().await;
    h.register(app("wxfg", AppKind::MiniProgram).desc(LOCATION, LOCATION_DESC))
        .await;
    h.answer("wxfg", "u", LOCATION, Answer::Allow).await;
    let page = h.open_setting("wxfg", "u").await;
    assert_eq!(
        items(&page),
        [location_item(WhileUsing, &[NotAllowed, WhileUsing])]
    );
    let revision = h.revision().await;
    expect_status(
        h.update_setting("wxfg", "u", &[], AfterLeaving).await,
        Code::FailedPrecondition,
        "requiredBackgroundModes",
    );
    expect_status(
        h.update_setting("wxfg", "u", &[(BACKGROUND, true)], NoLocation)
            .await,
        Code::FailedPrecondition,
        "requiredBackgroundModes",
    );
    assert_eq!(h.revision().await, revision);
    assert_eq!(
        sorted(&h.setting("wxfg", "u").await.auth_setting),
        setting_of(&[(LOCATION, true)])
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_setting_toggles_and_returns_the_new_auth_setting() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    h.answer("wxloc", "u", "scope.record", Answer::Deny).await;

    type Step = (Toggles, Changes, bool, bool);
    #[rustfmt::skip]
    let steps: [Step; 4] = [
        // (toggles, expected changes, camera after, record after)
        (&[("scope.camera", false)], &[("scope.camera", Denied)], false, false),
        (&[("scope.camera", true), ("scope.record", true)], &[("scope.camera", Granted), ("scope.record", Granted)], true, true),
        // Already so: nothing changes.
        (&[("scope.camera", true)], &[], true, true),
        (&[("scope.record", false)], &[("scope.record", Denied)], true, false),
    ];
    for (toggles, expected, camera, record) in steps {
        let before = h.revision().await;
        let resp = h
            .update_setting("wxloc", "u", toggles, NoLocation)
            .await
            .unwrap();
        let mut got = change_list(&resp.changes);
        got.sort();
        let mut want: Vec<(String, DecisionState)> = expected
            .iter()
            .map(|(s, st)| (s.to_string(), *st))
            .collect();
        want.sort();
        assert_eq!(got, want, "{toggles:?}");
        assert!(resp.changes.iter().all(|c| c.cause() == Cause::Settings));
        let expected_setting = setting_of(&[("scope.camera", camera), ("scope.record", record)]);
        assert_eq!(sorted(&resp.auth_setting), expected_setting, "{toggles:?}");
        assert_eq!(
            sorted(&h.setting("wxloc", "u").await.auth_setting),
            expected_setting
        );
        assert_eq!(resp.err_msg, "openSetting:ok");
        match resp.changes.last() {
            Some(last) => {
                assert!(resp.changes.iter().all(|c| c.revision > before));
                assert_eq!(resp.revision, last.revision);
            }
            None => assert_eq!(resp.revision, before),
        }
    }
    // The settings page is how a denied scope gets granted.
    assert_eq!(
        h.decision("wxloc", "u", "scope.camera").await.outcome(),
        Outcome::Granted
    );
    assert_eq!(
        h.decision("wxloc", "u", "scope.record").await.outcome(),
        Outcome::Denied
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_setting_refuses_never_asked_scopes_and_changes_nothing() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    let revision = h.revision().await;
    // (toggles, location item, the never-asked scope the refusal names)
    let refused: [(Toggles, LocationOption, &str); 5] = [
        (&[("scope.bluetooth", true)], NoLocation, "scope.bluetooth"),
        // One bad toggle spoils the call: camera stays granted.
        (
            &[("scope.camera", false), ("scope.bluetooth", false)],
            NoLocation,
            "scope.bluetooth",
        ),
        (&[("scope.address", true)], NoLocation, "scope.address"),
        // The location item, neither location scope asked.
        (&[], WhileUsing, LOCATION),
        (&[(LOCATION, true)], NoLocation, LOCATION),
    ];
    for (toggles, location, never_asked) in refused {
        expect_status(
            h.update_setting("wxloc", "u", toggles, location).await,
            Code::FailedPrecondition,
            never_asked,
        );
    }
    assert_eq!(h.revision().await, revision);
    assert_eq!(
        sorted(&h.setting("wxloc", "u").await.auth_setting),
        setting_of(&[("scope.camera", true)])
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradictory_location_requests_are_invalid() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "u", BACKGROUND, Answer::Allow).await;
    let revision = h.revision().await;
    let invalid: [(&[(&str, bool)], LocationOption); 4] = [
        (&[(LOCATION, false), (BACKGROUND, true)], NoLocation),
        (&[(LOCATION, true)], WhileUsing),
        (&[(BACKGROUND, false)], NotAllowed),
        (&[(LOCATION, true), (BACKGROUND, true)], AfterLeaving),
    ];
    for (toggles, location) in invalid {
        expect_status(
            h.update_setting("wxloc", "u", toggles, location).await,
            Code::InvalidArgument,
            LOCATION,
        );
    }
    assert_eq!(h.revision().await, revision);
    assert_eq!(
        sorted(&h.setting("wxloc", "u").await.auth_setting),
        setting_of(&[(LOCATION, true), (BACKGROUND, true)])
    );
    h.stop().await;
}

/// How a user's location decisions are set up before a settings change.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// Location granted, background never asked.
    WhileUsing,
    /// Both granted.
    Both,
    /// Location denied, background never asked.
    LocationDenied,
    /// Location granted, background denied.
    BackgroundDenied,
    /// Both denied.
    BothDenied,
}

async fn set_up(h: &TestDaemon, user: &str, start: Start) {
    let answers: &[(&str, Answer)] = match start {
        Start::WhileUsing => &[(LOCATION, Answer::Allow)],
        Start::Both => &[(BACKGROUND, Answer::Allow)],
        Start::LocationDenied => &[(LOCATION, Answer::Deny)],
        Start::BackgroundDenied => &[(LOCATION, Answer::Allow), (BACKGROUND, Answer::Deny)],
        Start::BothDenied => &[(LOCATION, Answer::Deny), (BACKGROUND, Answer::Deny)],
    };
    for (scope, answer) in answers {
        h.answer("wxloc", user, scope, *answer).await;
    }
}

/// Every way to change location on the settings page, from every start:
/// the mapping of SPEC section 6, the changes in an order that keeps
/// "background granted implies location granted" after each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_item_and_location_toggles_keep_the_invariant() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    type Case = (Start, Toggles, LocationOption, Changes, Toggles);
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // (start, toggles, location item, changes in order, resulting auth_setting)
        (Start::Both, &[], NotAllowed, &[(BACKGROUND, Denied), (LOCATION, Denied)], &[(LOCATION, false), (BACKGROUND, false)]),
        (Start::Both, &[], WhileUsing, &[(BACKGROUND, Denied)], &[(LOCATION, true), (BACKGROUND, false)]),
        (Start::Both, &[], AfterLeaving, &[], &[(LOCATION, true), (BACKGROUND, true)]),
        (Start::WhileUsing, &[], AfterLeaving, &[(BACKGROUND, Granted)], &[(LOCATION, true), (BACKGROUND, true)]),
        (Start::WhileUsing, &[], NotAllowed, &[(LOCATION, Denied)], &[(LOCATION, false)]),
        (Start::WhileUsing, &[], WhileUsing, &[], &[(LOCATION, true)]),
        (Start::LocationDenied, &[], WhileUsing, &[(LOCATION, Granted)], &[(LOCATION, true)]),
        (Start::LocationDenied, &[], AfterLeaving, &[(LOCATION, Granted), (BACKGROUND, Granted)], &[(LOCATION, true), (BACKGROUND, true)]),
        (Start::BackgroundDenied, &[], AfterLeaving, &[(BACKGROUND, Granted)], &[(LOCATION, true), (BACKGROUND, true)]),
        (Start::BackgroundDenied, &[], NotAllowed, &[(LOCATION, Denied)], &[(LOCATION, false), (BACKGROUND, false)]),
        (Start::BothDenied, &[], AfterLeaving, &[(LOCATION, Granted), (BACKGROUND, Granted)], &[(LOCATION, true), (BACKGROUND, true)]),
        (Start::BothDenied, &[], WhileUsing, &[(LOCATION, Granted)], &[(LOCATION, true), (BACKGROUND, false)]),
        // The same through auth_setting keys.
        (Start::Both, &[(LOCATION, false)], NoLocation, &[(BACKGROUND, Denied), (LOCATION, Denied)], &[(LOCATION, false), (BACKGROUND, false)]),
        (Start::Both, &[(BACKGROUND, false)], NoLocation, &[(BACKGROUND, Denied)], &[(LOCATION, true), (BACKGROUND, false)]),
        (Start::Both, &[(LOCATION, true), (BACKGROUND, true)], NoLocation, &[], &[(LOCATION, true), (BACKGROUND, true)]),
        (Start::BothDenied, &[(BACKGROUND, true)], NoLocation, &[(LOCATION, Granted), (BACKGROUND, Granted)], &[(LOCATION, true), (BACKGROUND, true)]),
        (Start::BackgroundDenied, &[(BACKGROUND, true)], NoLocation, &[(BACKGROUND, Granted)], &[(LOCATION, true), (BACKGROUND, true)]),
        (Start::BackgroundDenied, &[(LOCATION, false)], NoLocation, &[(LOCATION, Denied)], &[(LOCATION, false), (BACKGROUND, false)]),
        (Start::LocationDenied, &[(LOCATION, true)], NoLocation, &[(LOCATION, Granted)], &[(LOCATION, true)]),
        (Start::WhileUsing, &[(LOCATION, false)], NoLocation, &[(LOCATION, Denied)], &[(LOCATION, false)]),
        // A location toggle together with an ordinary one.
        (Start::Both, &[(LOCATION, false), ("scope.camera", true)], NoLocation, &[(BACKGROUND, Denied), (LOCATION, Denied)], &[(LOCATION, false), (BACKGROUND, false), ("scope.camera", true)]),
    ];
    for (i, (start, toggles, location, changes, result)) in cases.iter().enumerate() {
        let user = format!("user-{i}");
        set_up(&h, &user, *start).await;
        if toggles.iter().any(|(s, _)| *s == "scope.camera") {
            h.answer("wxloc", &user, "scope.camera", Answer::Deny).await;
        }
        let mut state = states(&h, "wxloc", &user).await;
        let what = format!("case {i}: {start:?} {toggles:?} {location:?}");
        let resp = h
            .update_setting("wxloc", &user, toggles, *location)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        let location_changes: Vec<_> = change_list(&resp.changes)
            .into_iter()
            .filter(|(s, _)| s == LOCATION || s == BACKGROUND)
            .collect();
        let want: Vec<_> = changes.iter().map(|(s, st)| (s.to_string(), *st)).collect();
        assert_eq!(location_changes, want, "{what}");
        assert_invariant_holds_after_each(&mut state, &resp.changes);
        assert_eq!(sorted(&resp.auth_setting), setting_of(result), "{what}");
        assert_eq!(
            sorted(&h.setting("wxloc", &user).await.auth_setting),
            setting_of(result),
            "{what}"
        );
    }
    h.stop().await;
}

/// SETTINGS_REQUIRED sends the user to the settings page, where choosing
/// "while using and after leaving" grants background location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_required_is_resolved_on_the_settings_page() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    let windows = client(Platform::Windows, "8.0.5", "3.0.0");
    let d = h
        .decision_for("wxloc", "u", BACKGROUND, windows.clone())
        .await;
    assert_eq!(d.outcome(), Outcome::SettingsRequired);
    // Foreground location has a popup on this client.
    h.record("wxloc", "u", LOCATION, Answer::Allow, windows.clone())
        .await
        .unwrap();
    let page = h.open_setting("wxloc", "u").await;
    assert_eq!(
        page.items[0].location_options().collect::<Vec<_>>(),
        [NotAllowed, WhileUsing, AfterLeaving]
    );
    let resp = h
        .update_setting("wxloc", "u", &[], AfterLeaving)
        .await
        .unwrap();
    assert_eq!(change_list(&resp.changes), [(BACKGROUND.into(), Granted)]);
    assert_eq!(resp.changes[0].old_state(), NotDetermined);
    let d = h.decision_for("wxloc", "u", BACKGROUND, windows).await;
    assert_eq!(d.outcome(), Outcome::Granted);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_app_forgets_every_decision_of_that_user_for_that_app() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.register(location_app("wxother")).await;
    for (app_id, user) in [("wxloc", "u"), ("wxloc", "v"), ("wxother", "u")] {
        h.answer(app_id, user, BACKGROUND, Answer::Allow).await;
        h.answer(app_id, user, "scope.camera", Answer::Deny).await;
        h.answer(app_id, user, "scope.record", Answer::Allow).await;
    }
    let kept_v = h.setting("wxloc", "v").await.auth_setting;
    let kept_other = h.setting("wxother", "u").await.auth_setting;
    let mut state = states(&h, "wxloc", "u").await;
    let before = h.revision().await;

    let resp = h.remove_app("wxloc", "u").await.unwrap();
    let mut removed: Vec<(String, DecisionState)> = resp
        .changes
        .iter()
        .map(|c| (c.scope.clone(), c.old_state()))
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            ("scope.camera".into(), Denied),
            ("scope.record".into(), Granted),
            (LOCATION.into(), Granted),
            (BACKGROUND.into(), Granted),
        ]
    );
    for c in &resp.changes {
        assert_eq!(
            (c.new_state(), c.cause()),
            (NotDetermined, Cause::AppRemoved),
            "{c:?}"
        );
        assert!(c.revision > before);
    }
    assert_invariant_holds_after_each(&mut state, &resp.changes);
    assert_eq!(resp.revision, resp.changes.last().unwrap().revision);

    assert!(h.setting("wxloc", "u").await.auth_setting.is_empty());
    assert!(h.open_setting("wxloc", "u").await.items.is_empty());
    for scope in [LOCATION, BACKGROUND, "scope.camera", "scope.record"] {
        let d = h.decision("wxloc", "u", scope).await;
        assert_eq!(
            (d.outcome(), d.state()),
            (Outcome::Prompt, NotDetermined),
            "{scope}"
        );
    }
    assert_eq!(h.setting("wxloc", "v").await.auth_setting, kept_v);
    assert_eq!(h.setting("wxother", "u").await.auth_setting, kept_other);

    // Nothing left to remove.
    let again = h.remove_app("wxloc", "u").await.unwrap();
    assert!(again.changes.is_empty());
    assert_eq!(again.revision, resp.revision);
    expect_status(
        h.remove_app("wxnope", "u").await,
        Code::NotFound,
        r#"app "wxnope" is not registered"#,
    );
    // The popup works again after removal.
    let r = h
        .record("wxloc", "u", "scope.camera", Answer::Allow, android())
        .await;
    assert_eq!(r.unwrap().state(), Granted);
    h.stop().await;
}
