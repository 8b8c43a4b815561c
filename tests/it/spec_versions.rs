//! SPEC section 5: the platform-version rules. Versions compare numerically
//! segment by segment, zero-padded; never as strings.

use consentd::pb::{self, min_sdk_rule::Target, Outcome, Platform, Reason};

use crate::util::{
    client, fuzzy_app, location_app, min_sdk_rule, TestDaemon, BACKGROUND, FUZZY, LOCATION,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_rules_lists_the_defaults() {
    let h = TestDaemon::start().await;
    let rules = h.rules().await;
    assert_eq!(rules.popup_rules.len(), 1, "{rules:?}");
    let popup = &rules.popup_rules[0];
    assert_eq!(popup.scope, BACKGROUND);
    let mut platforms = popup.platforms().collect::<Vec<_>>();
    platforms.sort_by_key(|p| *p as i32);
    assert_eq!(platforms, [Platform::Ios, Platform::Android]);
    assert_eq!(popup.min_host_version, "8.0.0");
    assert!(!popup.id.is_empty());

    let mut minimums: Vec<(Target, &str)> = rules
        .min_sdk_rules
        .iter()
        .map(|r| {
            (
                r.target.clone().expect("a target"),
                r.min_sdk_version.as_str(),
            )
        })
        .collect();
    minimums.sort_by_key(|(t, _)| format!("{t:?}"));
    assert_eq!(
        minimums,
        [
            (Target::Api("wx.authorize".into()), "1.2.0"),
            (Target::Scope(FUZZY.into()), "2.25.0"),
            (Target::Scope(BACKGROUND.into()), "2.8.0"),
        ]
    );
    let mut ids: Vec<&str> = rules.min_sdk_rules.iter().map(|r| r.id.as_str()).collect();
    ids.push(&popup.id);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "rule ids are unique and set: {rules:?}");
    h.stop().await;
}

/// The background popup exists on Android and iOS from host 8.0.0 on;
/// everywhere else the user goes to the settings page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_location_popup_by_platform_and_host_version() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    let rules = h.rules().await;
    let popup_rule = rules.popup_rules[0].id.clone();
    let popup = true;
    let cases = [
        (Platform::Android, "8.0", popup),
        (Platform::Android, "8.0.0", popup),
        (Platform::Android, "8", popup),
        (Platform::Android, "8.0.0.1", popup),
        (Platform::Android, "8.0.1", popup),
        (Platform::Android, "10.0.0", popup),
        (Platform::Android, "7.9.99", !popup),
        (Platform::Android, "7", !popup),
        (Platform::Android, "7.10.0", !popup),
        (Platform::Ios, "8.0", popup),
        (Platform::Ios, "8.0.0", popup),
        (Platform::Ios, "8.0.0.1", popup),
        (Platform::Ios, "10.0.0", popup),
        (Platform::Ios, "7.9.99", !popup),
        (Platform::Ios, "7.0.20", !popup),
        (Platform::Ohos, "8.0.5", !popup),
        (Platform::Ohos, "10.0.0", !popup),
        (Platform::Windows, "8.0.5", !popup),
        (Platform::Windows, "10.0.0", !popup),
        (Platform::Mac, "8.0.5", !popup),
        (Platform::Mac, "10.0.0", !popup),
        (Platform::Devtools, "8.0.5", !popup),
        (Platform::Devtools, "10.0.0", !popup),
    ];
    for (platform, host, popup) in cases {
        let c = client(platform, host, "3.0.0");
        let d = h.decision_for("wxloc", "u", BACKGROUND, c).await;
        let what = format!("{platform:?} {host}: {d:?}");
        assert_eq!(d.state(), pb::DecisionState::NotDetermined, "{what}");
        if popup {
            assert_eq!(
                (d.outcome(), d.reason(), d.err_msg.as_str()),
                (Outcome::Prompt, Reason::PopupAvailable, ""),
                "{what}"
            );
            assert!(d.prompt.unwrap().background_location, "{platform:?} {host}");
        } else {
            assert_eq!(
                (d.outcome(), d.reason(), d.err_msg.as_str(), d.rule.as_str()),
                (
                    Outcome::SettingsRequired,
                    Reason::PopupUnavailable,
                    "authorize:fail auth deny",
                    popup_rule.as_str()
                ),
                "{what}"
            );
            assert!(d.prompt.is_none(), "{what}");
        }
        // The rule is about background location only.
        let c = client(platform, host, "3.0.0");
        let fg = h.decision_for("wxloc", "u", LOCATION, c).await;
        assert_eq!(fg.outcome(), Outcome::Prompt, "{platform:?} {host}");
    }
    // CheckApi follows the same rule.
    for (platform, host, outcome, msg) in [
        (Platform::Android, "8.0", Outcome::Prompt, ""),
        (
            Platform::Android,
            "7.9.99",
            Outcome::SettingsRequired,
            "startLocationUpdateBackground:fail auth deny",
        ),
        (
            Platform::Windows,
            "8.0.5",
            Outcome::SettingsRequired,
            "startLocationUpdateBackground:fail auth deny",
        ),
    ] {
        let c = client(platform, host, "3.0.0");
        let resp = h
            .check_api("wxloc", "u", "wx.startLocationUpdateBackground", c)
            .await
            .unwrap();
        assert_eq!(
            (resp.outcome(), resp.err_msg.as_str()),
            (outcome, msg),
            "{platform:?} {host}"
        );
    }
    h.stop().await;
}

/// Base-library minimums: below them the scope or interface does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_library_minimums_compare_numerically() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.register(fuzzy_app("wxfuzzy", pb::AppKind::MiniProgram))
        .await;
    let rules = h.rules().await;
    let ok = None;
    let too_old = |target: &str| Some(min_sdk_rule(&rules, target));
    let cases = [
        // wx.authorize: 1.2.0
        ("wxloc", "scope.camera", "1.2", ok.clone()),
        ("wxloc", "scope.camera", "1.2.0", ok.clone()),
        ("wxloc", "scope.camera", "1.10", ok.clone()),
        ("wxloc", "scope.camera", "1.11.0", ok.clone()),
        ("wxloc", "scope.camera", "1.1.9", too_old("wx.authorize")),
        ("wxloc", "scope.camera", "1.1.99", too_old("wx.authorize")),
        ("wxloc", "scope.camera", "0.9", too_old("wx.authorize")),
        // background location: 2.8.0
        ("wxloc", BACKGROUND, "2.8", ok.clone()),
        ("wxloc", BACKGROUND, "2.10.0", ok.clone()),
        ("wxloc", BACKGROUND, "2.7.9", too_old(BACKGROUND)),
        ("wxloc", BACKGROUND, "2.7.99.99", too_old(BACKGROUND)),
        // getFuzzyLocation: 2.25.0
        ("wxfuzzy", FUZZY, "2.25", ok.clone()),
        ("wxfuzzy", FUZZY, "2.25.0", ok.clone()),
        ("wxfuzzy", FUZZY, "2.25.0.0", ok.clone()),
        ("wxfuzzy", FUZZY, "2.100.0", ok.clone()),
        ("wxfuzzy", FUZZY, "10.0", ok.clone()),
        ("wxfuzzy", FUZZY, "2.9.9", too_old(FUZZY)),
        ("wxfuzzy", FUZZY, "2.24.99", too_old(FUZZY)),
        ("wxfuzzy", FUZZY, "2.3", too_old(FUZZY)),
    ];
    for (app_id, scope, sdk, failed_rule) in cases {
        let c = client(Platform::Android, "8.0.5", sdk);
        let d = h.decision_for(app_id, "u", scope, c).await;
        let what = format!("{scope} sdk {sdk}: {d:?}");
        match failed_rule {
            None => assert_eq!(d.outcome(), Outcome::Prompt, "{what}"),
            Some(rule) => assert_eq!(
                (d.outcome(), d.reason(), d.err_msg.as_str(), d.rule.as_str()),
                (
                    Outcome::Unsupported,
                    Reason::BaseLibraryTooOld,
                    "authorize:fail not supported",
                    rule.as_str()
                ),
                "{what}"
            ),
        }
    }
    h.stop().await;
}

/// A scope minimum applies to every interface of the scope; wx.authorize's
/// does not apply to CheckApi.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_library_minimums_for_interfaces() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.register(fuzzy_app("wxfuzzy", pb::AppKind::MiniProgram))
        .await;
    #[rustfmt::skip]
    let cases = [
        ("wxfuzzy", "wx.getFuzzyLocation", "2.25", Outcome::Prompt, ""),
        ("wxfuzzy", "wx.getFuzzyLocation", "2.100.0", Outcome::Prompt, ""),
        ("wxfuzzy", "wx.getFuzzyLocation", "2.9.9", Outcome::Unsupported, "getFuzzyLocation:fail not supported"),
        ("wxloc", "wx.startLocationUpdateBackground", "2.7.9", Outcome::Unsupported, "startLocationUpdateBackground:fail not supported"),
        ("wxloc", "wx.startLocationUpdateBackground", "2.8.0", Outcome::Prompt, ""),
        // Below wx.authorize's minimum, but the interface itself exists.
        ("wxloc", "camera", "1.1.9", Outcome::Prompt, ""),
        ("wxloc", "wx.getLocation", "1.0.0", Outcome::Prompt, ""),
    ];
    for (app_id, api, sdk, outcome, msg) in cases {
        let c = client(Platform::Ios, "8.0.5", sdk);
        let resp = h.check_api(app_id, "u", api, c).await.unwrap();
        assert_eq!(
            (resp.outcome(), resp.err_msg.as_str()),
            (outcome, msg),
            "{api} sdk {sdk}: {resp:?}"
        );
    }
    h.stop().await;
}
