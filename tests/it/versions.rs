//! Platform-version rules (SPEC section 5) through the API.

use consentd::pb::{self, min_sdk_rule::Target, Outcome as O, Platform as P};

use crate::fixture::{client_info, location_app, TestDaemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_popup_by_platform_and_host_version() {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    #[rustfmt::skip]
    let cases = [
        (P::Android, "8.0.0", O::Prompt), (P::Ios, "8.0.0", O::Prompt),
        (P::Android, "8.0", O::Prompt), (P::Ios, "8", O::Prompt),
        (P::Android, "8.0.0.1", O::Prompt), (P::Ios, "10.0.0", O::Prompt),
        (P::Android, "8.0.50", O::Prompt),
        (P::Android, "7.9.99", O::SettingsRequired), (P::Ios, "7.0.20", O::SettingsRequired),
        (P::Ios, "7.99999.0", O::SettingsRequired),
        (P::Ohos, "8.0.5", O::SettingsRequired), (P::Windows, "8.0.5", O::SettingsRequired),
        (P::Mac, "8.0.5", O::SettingsRequired), (P::Devtools, "8.0.5", O::SettingsRequired),
    ];
    for (platform, host, outcome) in cases {
        assert_eq!(
            c.outcome(
                "wxloc",
                "u",
                "scope.userLocationBackground",
                client_info(platform, host, "3.0.0")
            )
            .await,
            outcome,
            "{platform:?} {host}"
        );
        // Foreground location has a popup everywhere.
        assert_eq!(
            c.outcome(
                "wxloc",
                "u",
                "scope.userLocation",
                client_info(platform, host, "3.0.0")
            )
            .await,
            O::Prompt,
            "{platform:?} {host}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_library_minimums_compare_numerically() {
    let h = TestDaemon::start().await;
    let c = h.client();
    let mut app = location_app("wxfuzzy");
    app.permission.insert(
        "scope.userFuzzyLocation".into(),
        pb::PermissionDesc {
            desc: "city".into(),
        },
    );
    app.required_private_infos = vec!["getFuzzyLocation".into()];
    c.register(app).await;
    #[rustfmt::skip]
    let cases = [
        // getFuzzyLocation exists from 2.25.0.
        ("scope.userFuzzyLocation", "2.25.0", O::Prompt), ("scope.userFuzzyLocation", "2.25", O::Prompt),
        ("scope.userFuzzyLocation", "2.100.0", O::Prompt), ("scope.userFuzzyLocation", "2.24.99", O::Unsupported),
        ("scope.userFuzzyLocation", "2.9.9", O::Unsupported),
        // Background location from 2.8.0.
        ("scope.userLocationBackground", "2.8", O::Prompt), ("scope.userLocationBackground", "2.10.0", O::Prompt),
        ("scope.userLocationBackground", "2.7.9", O::Unsupported),
        // wx.authorize itself from 1.2.0: 1.11.0 > 1.9.9 > 1.2.0 > 1.1.9.
        ("scope.camera", "1.11.0", O::Prompt), ("scope.camera", "1.9.9", O::Prompt),
        ("scope.camera", "1.2.0", O::Prompt), ("scope.camera", "1.1.9", O::Unsupported),
    ];
    for (scope, sdk, outcome) in cases {
        assert_eq!(
            c.outcome("wxfuzzy", "u", scope, client_info(P::Ios, "8.0.5", sdk))
                .await,
            outcome,
            "{scope} sdk {sdk}"
        );
    }
    // The interface itself: wx.getFuzzyLocation below 2.25.0 does not exist; wx.authorize's
    // minimum does not apply to calling an interface.
    for (sdk, outcome) in [("2.24.0", O::Unsupported), ("2.25.0", O::Prompt)] {
        let r = c
            .check(
                "wxfuzzy",
                "u",
                "wx.getFuzzyLocation",
                client_info(P::Ios, "8.0.5", sdk),
            )
            .await
            .unwrap();
        assert_eq!(r.outcome(), outcome, "sdk {sdk}");
    }
    let r = c
        .check(
            "wxfuzzy",
            "u",
            "camera",
            client_info(P::Ios, "8.0.5", "1.0.0"),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), O::Prompt);
    let d = c
        .authorize(
            "wxfuzzy",
            "u",
            "scope.userFuzzyLocation",
            client_info(P::Ios, "8.0.5", "2.9.9"),
        )
        .await
        .unwrap()
        .decision
        .unwrap();
    assert_eq!(
        (d.reason(), d.rule.as_str()),
        (pb::Reason::BaseLibraryTooOld, "fuzzy-location-min-sdk")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_rules_lists_the_defaults() {
    let h = TestDaemon::start().await;
    let rules = h
        .client()
        .auth()
        .get_rules(pb::GetRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.popup_rules.len(), 1);
    let popup = &rules.popup_rules[0];
    assert_eq!(
        (
            popup.id.as_str(),
            popup.scope.as_str(),
            popup.min_host_version.as_str()
        ),
        (
            "background-location-popup",
            "scope.userLocationBackground",
            "8.0.0"
        )
    );
    assert_eq!(popup.platforms().collect::<Vec<_>>(), [P::Android, P::Ios]);
    let minimums: Vec<_> = rules
        .min_sdk_rules
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.target.clone().unwrap(),
                r.min_sdk_version.as_str(),
            )
        })
        .collect();
    assert_eq!(
        minimums,
        [
            (
                "authorize-min-sdk",
                Target::Api("wx.authorize".into()),
                "1.2.0"
            ),
            (
                "background-location-min-sdk",
                Target::Scope("scope.userLocationBackground".into()),
                "2.8.0"
            ),
            (
                "fuzzy-location-min-sdk",
                Target::Scope("scope.userFuzzyLocation".into()),
                "2.25.0"
            ),
        ]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_rules_replace_the_defaults() {
    let h = TestDaemon::with(|config| {
        config.rules.popup[0]
            .platforms
            .push(consentd::domain::Platform::Ohos);
        config.rules.popup[0].min_host_version = "8.0.10".parse().unwrap();
    })
    .await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    for (platform, host, outcome) in [
        (P::Ohos, "8.0.10", O::Prompt),
        (P::Android, "8.0.9", O::SettingsRequired),
    ] {
        assert_eq!(
            c.outcome(
                "wxloc",
                "u",
                "scope.userLocationBackground",
                client_info(platform, host, "3.0.0")
            )
            .await,
            outcome,
            "{platform:?} {host}"
        );
    }
    let rules = c
        .auth()
        .get_rules(pb::GetRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.popup_rules[0].min_host_version, "8.0.10");
    h.stop().await;
}
