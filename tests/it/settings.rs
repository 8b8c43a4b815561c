//! wx.getSetting / wx.openSetting and the settings page (SPEC section 6).

use std::collections::HashMap;

use consentd::pb::{self, Answer, Cause, DecisionState as S, LocationOption as L};
use tonic::Code;

use crate::fixture::{assert_status, location_app, Client, TestDaemon};

async fn daemon() -> (TestDaemon, Client) {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    let mut no_bg = location_app("wxfg");
    no_bg.required_background_modes.clear();
    c.register(no_bg).await;
    (h, c)
}

fn map(entries: &[(&str, bool)]) -> HashMap<String, bool> {
    entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn toggles(app: &str, user: &str, entries: &[(&str, bool)]) -> pb::UpdateSettingRequest {
    pb::UpdateSettingRequest {
        app_id: app.into(),
        user_id: user.into(),
        auth_setting: map(entries),
        ..Default::default()
    }
}

fn location(app: &str, user: &str, option: L) -> pb::UpdateSettingRequest {
    pb::UpdateSettingRequest {
        app_id: app.into(),
        user_id: user.into(),
        location: option.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_setting_lists_only_asked_scopes() {
    let (h, c) = daemon().await;
    let empty = c.setting("wxloc", "u").await;
    assert!(empty.auth_setting.is_empty());
    assert_eq!(empty.err_msg, "getSetting:ok");
    c.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    c.answer("wxloc", "u", "scope.record", Answer::Deny).await;
    c.answer("wxloc", "u", "scope.werun", Answer::Cancel).await;
    let s = c.setting("wxloc", "u").await;
    assert_eq!(
        s.auth_setting,
        map(&[("scope.camera", true), ("scope.record", false)])
    );
    assert_eq!(s.revision, c.revision().await);
    assert!(
        c.setting("wxloc", "other").await.auth_setting.is_empty(),
        "per user"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_page_has_one_location_item() {
    let (h, c) = daemon().await;
    c.answer("wxloc", "u", "scope.userLocation", Answer::Allow)
        .await;
    c.answer("wxloc", "u", "scope.camera", Answer::Deny).await;
    let page = c
        .auth()
        .open_setting(pb::OpenSettingRequest {
            app_id: "wxloc".into(),
            user_id: "u".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.err_msg, "openSetting:ok");
    assert_eq!(page.items.len(), 2);
    let loc = &page.items[0];
    assert!(loc.location);
    assert_eq!(loc.location_option(), L::WhileUsing);
    assert_eq!(
        loc.location_options().collect::<Vec<_>>(),
        [L::NotAllowed, L::WhileUsing, L::WhileUsingAndAfterLeaving]
    );
    assert_eq!(
        (
            page.items[1].scope.as_str(),
            page.items[1].enabled,
            page.items[1].location
        ),
        ("scope.camera", false, false)
    );
    // Without background location declared, the third option is not offered.
    c.answer("wxfg", "u", "scope.userLocation", Answer::Allow)
        .await;
    let page = c
        .auth()
        .open_setting(pb::OpenSettingRequest {
            app_id: "wxfg".into(),
            user_id: "u".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.items[0].location_options().collect::<Vec<_>>(),
        [L::NotAllowed, L::WhileUsing]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_setting_returns_the_new_auth_setting() {
    let (h, c) = daemon().await;
    c.answer("wxloc", "u", "scope.camera", Answer::Deny).await;
    let r = c
        .update(toggles("wxloc", "u", &[("scope.camera", true)]))
        .await
        .unwrap();
    assert_eq!(r.err_msg, "openSetting:ok");
    assert_eq!(r.auth_setting, map(&[("scope.camera", true)]));
    assert_eq!(r.changes.len(), 1);
    assert_eq!(
        (
            r.changes[0].old_state(),
            r.changes[0].new_state(),
            r.changes[0].cause()
        ),
        (S::Denied, S::Granted, Cause::Settings)
    );
    assert_eq!(c.setting("wxloc", "u").await.auth_setting, r.auth_setting);
    // The same again changes nothing.
    let again = c
        .update(toggles("wxloc", "u", &[("scope.camera", true)]))
        .await
        .unwrap();
    assert!(again.changes.is_empty());
    assert_eq!(again.revision, r.revision);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_asked_scopes_cannot_be_changed() {
    let (h, c) = daemon().await;
    c.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    let before = c.revision().await;
    assert_status(
        c.update(toggles("wxloc", "u", &[("scope.record", true)]))
            .await,
        Code::FailedPrecondition,
        "scope.record was never asked",
    );
    assert_status(
        c.update(toggles(
            "wxloc",
            "u",
            &[("scope.camera", false), ("scope.record", true)],
        ))
        .await,
        Code::FailedPrecondition,
        "never asked",
    );
    assert_status(
        c.update(location("wxloc", "u", L::WhileUsing)).await,
        Code::FailedPrecondition,
        "scope.userLocation was never asked",
    );
    assert_status(
        c.update(toggles("wxloc", "u", &[])).await,
        Code::InvalidArgument,
        "nothing to change",
    );
    assert_eq!(c.revision().await, before);
    assert_eq!(
        c.setting("wxloc", "u").await.auth_setting,
        map(&[("scope.camera", true)]),
        "all or nothing"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_implies_location_on_every_path() {
    let (h, c) = daemon().await;
    let bg = "scope.userLocationBackground";
    let fg = "scope.userLocation";
    // Settings-page location options.
    c.answer("wxloc", "a", fg, Answer::Allow).await;
    let r = c
        .update(location("wxloc", "a", L::WhileUsingAndAfterLeaving))
        .await
        .unwrap();
    assert_eq!(
        r.auth_setting,
        map(&[(fg, true), (bg, true)]),
        "granting background on the settings page (the SETTINGS_REQUIRED path)"
    );
    let r = c
        .update(location("wxloc", "a", L::WhileUsing))
        .await
        .unwrap();
    assert_eq!(r.auth_setting, map(&[(fg, true), (bg, false)]));
    let r = c
        .update(location("wxloc", "a", L::NotAllowed))
        .await
        .unwrap();
    assert_eq!(r.auth_setting, map(&[(fg, false), (bg, false)]));
    // Toggles: revoking location revokes background; granting background grants location.
    c.answer("wxloc", "b", bg, Answer::Allow).await;
    let r = c
        .update(toggles("wxloc", "b", &[(fg, false)]))
        .await
        .unwrap();
    assert_eq!(r.auth_setting, map(&[(fg, false), (bg, false)]));
    assert_eq!(
        r.changes
            .iter()
            .map(|c| c.scope.as_str())
            .collect::<Vec<_>>(),
        [bg, fg],
        "background revoked first"
    );
    let r = c
        .update(toggles("wxloc", "b", &[(bg, true)]))
        .await
        .unwrap();
    assert_eq!(r.auth_setting, map(&[(fg, true), (bg, true)]));
    assert_eq!(
        r.changes
            .iter()
            .map(|c| c.scope.as_str())
            .collect::<Vec<_>>(),
        [fg, bg],
        "location granted first"
    );
    assert_status(
        c.update(toggles("wxloc", "b", &[(fg, false), (bg, true)]))
            .await,
        Code::InvalidArgument,
        "cannot revoke",
    );
    assert_status(
        c.update(pb::UpdateSettingRequest {
            location: L::NotAllowed.into(),
            ..toggles("wxloc", "b", &[(fg, true)])
        })
        .await,
        Code::InvalidArgument,
        "cannot be set together",
    );
    // Apps without background location have no third option.
    c.answer("wxfg", "c", fg, Answer::Allow).await;
    assert_status(
        c.update(location("wxfg", "c", L::WhileUsingAndAfterLeaving))
            .await,
        Code::FailedPrecondition,
        "requiredBackgroundModes",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_app_forgets_every_decision() {
    let (h, c) = daemon().await;
    c.answer("wxloc", "u", "scope.userLocationBackground", Answer::Allow)
        .await;
    c.answer("wxloc", "u", "scope.camera", Answer::Deny).await;
    c.answer("wxloc", "other", "scope.camera", Answer::Allow)
        .await;
    let removed = c.remove("wxloc", "u").await;
    let mut revoked: Vec<_> = removed
        .iter()
        .map(|c| (c.scope.as_str(), c.new_state(), c.cause()))
        .collect();
    assert_eq!(
        revoked.remove(0).0,
        "scope.userLocationBackground",
        "background first"
    );
    assert_eq!(revoked.len(), 2);
    assert!(removed
        .iter()
        .all(|c| c.new_state() == S::NotDetermined && c.cause() == Cause::AppRemoved));
    assert!(c.setting("wxloc", "u").await.auth_setting.is_empty());
    assert_eq!(
        c.decision("wxloc", "u", "scope.camera").await.outcome(),
        pb::Outcome::Prompt,
        "asks again"
    );
    assert_eq!(
        c.setting("wxloc", "other").await.auth_setting,
        map(&[("scope.camera", true)]),
        "other users untouched"
    );
    assert!(
        c.remove("wxloc", "u").await.is_empty(),
        "removing twice is a no-op"
    );
    h.stop().await;
}
