//! SPEC section 4 and notes/semantics.md: the five gates in order, each
//! with its reason and exact errMsg, and that an earlier gate wins.

use consentd::pb::{self, Answer, AppKind, DecisionState, Outcome, Platform, Reason};
use tonic::Code;

use crate::util::{
    android, app, assert_decision, client, expect_status, location_app, min_sdk_rule, Declare,
    TestDaemon, BACKGROUND, BACKGROUND_DESC, FUZZY, FUZZY_DESC, LOCATION, LOCATION_DESC,
};

const PRIVATE_INFOS: &str =
    "fail the api need to be declared in the requiredPrivateInfos field in app.json/ext.json";
const BACKGROUND_MODES: &str =
    "fail the api need to be declared in the requiredBackgroundModes field in app.json/ext.json";

fn authorize_request(app_id: &str, scope: &str, client: pb::ClientInfo) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        app_id: app_id.into(),
        user_id: "u".into(),
        scope: scope.into(),
        client: Some(client),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate1_malformed_request_wins_over_unknown_app() {
    let h = TestDaemon::start().await;
    let unknown = "wxnope";
    let mut no_platform = android();
    no_platform.platform = Platform::Unspecified.into();
    expect_status(
        h.authorize(unknown, "u", LOCATION, no_platform).await,
        Code::InvalidArgument,
        "platform",
    );
    expect_status(
        h.authorize(unknown, "", LOCATION, android()).await,
        Code::InvalidArgument,
        r#"user_id "" is empty"#,
    );
    expect_status(
        h.authorize(unknown, "u", "scope.foo", android()).await,
        Code::InvalidArgument,
        r#"scope "scope.foo" is not a known scope; valid scopes: scope.userLocation, "#,
    );
    expect_status(
        h.check_api(unknown, "u", "wx.nope", android()).await,
        Code::InvalidArgument,
        "wx.nope",
    );
    // Well-formed: now the app is looked up.
    expect_status(
        h.authorize(unknown, "u", LOCATION, android()).await,
        Code::NotFound,
        r#"app "wxnope" is not registered"#,
    );
    expect_status(
        h.check_api(unknown, "u", "wx.getLocation", android()).await,
        Code::NotFound,
        r#"app "wxnope" is not registered"#,
    );
    h.stop().await;
}

/// Gate 1's UNSUPPORTED (kind or base library) wins over abolished scopes
/// (gate 2), missing declarations (gate 3), stored decisions (gate 4) and
/// the popup rules (gate 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate1_unsupported_wins_over_every_later_gate() {
    let h = TestDaemon::start().await;
    h.register(app("wxgame", AppKind::MiniGame)).await;
    h.register(app("wxbare", AppKind::MiniProgram)).await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    let rules = h.rules().await;
    let authorize_rule = min_sdk_rule(&rules, "wx.authorize");
    let background_rule = min_sdk_rule(&rules, BACKGROUND);
    let fuzzy_rule = min_sdk_rule(&rules, FUZZY);
    let windows = |sdk: &str| client(Platform::Windows, "8.0.5", sdk);
    let android_sdk = |sdk: &str| client(Platform::Android, "8.0.5", sdk);

    #[rustfmt::skip]
    let cases = [
        // Kind: would be NO_AUTH_NEEDED (gate 2) for a mini program.
        ("wxgame", "scope.address", android(), Reason::ScopeNotForAppKind, ""),
        ("wxgame", "scope.invoice", android(), Reason::ScopeNotForAppKind, ""),
        // Kind: would be NOT_DECLARED (gate 3).
        ("wxgame", BACKGROUND, android(), Reason::ScopeNotForAppKind, ""),
        // Base library: gate 2 would say NO_AUTH_NEEDED.
        ("wxbare", "scope.address", android_sdk("1.1.9"), Reason::BaseLibraryTooOld, &authorize_rule),
        ("wxbare", "scope.userInfo", android_sdk("1.1.9"), Reason::BaseLibraryTooOld, &authorize_rule),
        // Base library: gate 3 would say NOT_DECLARED.
        ("wxbare", FUZZY, android_sdk("2.24.9"), Reason::BaseLibraryTooOld, &fuzzy_rule),
        ("wxbare", BACKGROUND, android_sdk("2.7.9"), Reason::BaseLibraryTooOld, &background_rule),
        // Base library: gate 4 would say GRANTED.
        ("wxloc", "scope.camera", android_sdk("1.1.9"), Reason::BaseLibraryTooOld, &authorize_rule),
        // Base library: gate 5 would say SETTINGS_REQUIRED.
        ("wxloc", BACKGROUND, windows("2.7.9"), Reason::BaseLibraryTooOld, &background_rule),
    ];
    for (app_id, scope, client, reason, rule) in cases {
        let d = h.decision_for(app_id, "u", scope, client.clone()).await;
        let what = format!("{app_id} {scope} {client:?}");
        assert_eq!(
            (d.outcome(), d.reason(), d.err_msg.as_str(), d.rule.as_str()),
            (
                Outcome::Unsupported,
                reason,
                "authorize:fail not supported",
                rule
            ),
            "{what}"
        );
    }
    // The minimum met, the later gates decide again.
    assert_eq!(
        h.decision_for("wxloc", "u", "scope.camera", android_sdk("1.2.0"))
            .await
            .outcome(),
        Outcome::Granted
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate2_abolished_and_anonymous_scopes_need_nothing_declared() {
    let h = TestDaemon::start().await;
    h.register(app("wxbare", AppKind::MiniProgram)).await;
    // Even a client that can show no popup at all gets NO_AUTH_NEEDED.
    let old_windows = client(Platform::Windows, "7.0.0", "2.0.0");
    for (scope, reason) in [
        ("scope.address", Reason::AuthorizationAbolished),
        ("scope.invoiceTitle", Reason::AuthorizationAbolished),
        ("scope.invoice", Reason::AuthorizationAbolished),
        ("scope.userInfo", Reason::AnonymousProfile),
    ] {
        for c in [android(), old_windows.clone()] {
            let d = h.decision_for("wxbare", "u", scope, c).await;
            assert_decision(&d, Outcome::NoAuthNeeded, reason, "authorize:ok");
        }
    }
    // wx.chooseAddress is in requiredPrivateInfos' list, but gate 2 decides first.
    for (api, msg) in [
        ("wx.chooseAddress", "chooseAddress:ok"),
        ("wx.chooseInvoiceTitle", "chooseInvoiceTitle:ok"),
        ("wx.chooseInvoice", "chooseInvoice:ok"),
        ("wx.getUserInfo", "getUserInfo:ok"),
    ] {
        let resp = h.check_api("wxbare", "u", api, android()).await.unwrap();
        assert_eq!(
            (resp.outcome(), resp.err_msg.as_str()),
            (Outcome::NoAuthNeeded, msg),
            "{api}"
        );
    }
    h.stop().await;
}

/// Gate 3 for Authorize: descs under the scope's own key (background also
/// accepts scope.userLocation's), then the background mode; desc first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate3_authorize_needs_permission_desc_then_background_mode() {
    let h = TestDaemon::start().await;
    let mp = |id: &str| app(id, AppKind::MiniProgram);
    const NO_DESC: &str = "authorize:fail:require permission desc";
    let no_mode = format!("authorize:{BACKGROUND_MODES}");
    use Outcome::{NotDeclared, Prompt};
    use Reason::{MissingBackgroundMode as NoMode, MissingPermissionDesc as NoDesc};
    #[rustfmt::skip]
    let cases: Vec<(pb::App, &str, Outcome, Reason, &str, &str)> = vec![
        (mp("a1"), LOCATION, NotDeclared, NoDesc, NO_DESC, ""),
        (mp("a2"), FUZZY, NotDeclared, NoDesc, NO_DESC, ""),
        // Neither desc nor mode: the desc is checked first.
        (mp("a3"), BACKGROUND, NotDeclared, NoDesc, NO_DESC, ""),
        (app("g1", AppKind::MiniGame), LOCATION, NotDeclared, NoDesc, NO_DESC, ""),
        (app("g2", AppKind::MiniGame), FUZZY, NotDeclared, NoDesc, NO_DESC, ""),
        // Each foreground scope needs its own key.
        (mp("a4").desc(FUZZY, FUZZY_DESC), LOCATION, NotDeclared, NoDesc, NO_DESC, ""),
        (mp("a5").desc(LOCATION, LOCATION_DESC), FUZZY, NotDeclared, NoDesc, NO_DESC, ""),
        (mp("a6").desc(BACKGROUND, BACKGROUND_DESC).background_modes(&["location"]), LOCATION, NotDeclared, NoDesc, NO_DESC, ""),
        // Desc present, background mode missing.
        (mp("a7").desc(BACKGROUND, BACKGROUND_DESC), BACKGROUND, NotDeclared, NoMode, &no_mode, ""),
        (mp("a8").desc(LOCATION, LOCATION_DESC).background_modes(&["audio"]), BACKGROUND, NotDeclared, NoMode, &no_mode, ""),
        // Declared: the popup, with the desc it found.
        (mp("a9").desc(LOCATION, LOCATION_DESC).background_modes(&["location"]), BACKGROUND, Prompt, Reason::PopupAvailable, "", LOCATION_DESC),
        (mp("a10").desc(BACKGROUND, BACKGROUND_DESC).background_modes(&["location"]), BACKGROUND, Prompt, Reason::PopupAvailable, "", BACKGROUND_DESC),
        // Authorize does not look at requiredPrivateInfos (CheckApi does).
        (mp("a11").desc(LOCATION, LOCATION_DESC), LOCATION, Prompt, Reason::PopupAvailable, "", LOCATION_DESC),
        (mp("a12").desc(FUZZY, FUZZY_DESC), FUZZY, Prompt, Reason::PopupAvailable, "", FUZZY_DESC),
        // Non-location scopes need no declaration at all.
        (mp("a13"), "scope.camera", Prompt, Reason::PopupAvailable, "", ""),
    ];
    for (declared, scope, outcome, reason, msg, app_desc) in cases {
        let id = declared.app_id.clone();
        h.register(declared).await;
        let d = h.decision(&id, "u", scope).await;
        assert_eq!(
            (d.outcome(), d.reason(), d.err_msg.as_str()),
            (outcome, reason, msg),
            "{id} {scope}: {d:?}"
        );
        assert_eq!(d.state(), DecisionState::NotDetermined, "{id}");
        if outcome == Prompt {
            assert_eq!(d.prompt.unwrap().app_desc, app_desc, "{id} {scope}");
        }
    }
    h.stop().await;
}

/// Gate 3 for CheckApi: desc, background mode, then requiredPrivateInfos,
/// each errMsg prefixed with the interface name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate3_check_api_needs_private_infos() {
    let h = TestDaemon::start().await;
    let mp = |id: &str| app(id, AppKind::MiniProgram);
    use Outcome::{NoAuthNeeded, NotDeclared, Prompt};
    use Reason::{
        MissingBackgroundMode as NoMode, MissingPermissionDesc as NoDesc,
        MissingPrivateInfo as NoInfo, PopupAvailable,
    };
    let desc_only = mp("c1").desc(LOCATION, LOCATION_DESC);
    #[rustfmt::skip]
    let cases: Vec<(pb::App, &str, Outcome, Reason, String)> = vec![
        (desc_only.clone(), "wx.getLocation", NotDeclared, NoInfo, format!("getLocation:{PRIVATE_INFOS}")),
        (desc_only.clone(), "wx.startLocationUpdate", NotDeclared, NoInfo, format!("startLocationUpdate:{PRIVATE_INFOS}")),
        // Not one of the interfaces requiredPrivateInfos lists.
        (desc_only, "MapContext.moveToLocation", Prompt, PopupAvailable, String::new()),
        // Each interface needs its own name.
        (mp("c2").desc(LOCATION, LOCATION_DESC).private_infos(&["startLocationUpdate"]), "wx.getLocation", NotDeclared, NoInfo, format!("getLocation:{PRIVATE_INFOS}")),
        (mp("c3").desc(LOCATION, LOCATION_DESC).private_infos(&["getLocation"]), "wx.getLocation", Prompt, PopupAvailable, String::new()),
        (mp("c4").desc(FUZZY, FUZZY_DESC), "wx.getFuzzyLocation", NotDeclared, NoInfo, format!("getFuzzyLocation:{PRIVATE_INFOS}")),
        (mp("c5").desc(LOCATION, LOCATION_DESC).background_modes(&["location"]), "wx.startLocationUpdateBackground", NotDeclared, NoInfo, format!("startLocationUpdateBackground:{PRIVATE_INFOS}")),
        // The desc is checked before the private infos, the mode before them too.
        (mp("c6"), "wx.getLocation", NotDeclared, NoDesc, "getLocation:fail:require permission desc".into()),
        (mp("c7").private_infos(&["getFuzzyLocation"]), "wx.getFuzzyLocation", NotDeclared, NoDesc, "getFuzzyLocation:fail:require permission desc".into()),
        (mp("c8").desc(LOCATION, LOCATION_DESC).private_infos(&["startLocationUpdateBackground"]), "wx.startLocationUpdateBackground", NotDeclared, NoMode, format!("startLocationUpdateBackground:{BACKGROUND_MODES}")),
        (mp("c9").desc(LOCATION, LOCATION_DESC).background_modes(&["location"]).private_infos(&["startLocationUpdateBackground"]), "wx.startLocationUpdateBackground", Prompt, PopupAvailable, String::new()),
        // Abolished: gate 2 decides before requiredPrivateInfos.
        (mp("c10"), "wx.chooseAddress", NoAuthNeeded, Reason::AuthorizationAbolished, "chooseAddress:ok".into()),
    ];
    for (declared, api, outcome, reason, msg) in cases {
        let id = declared.app_id.clone();
        if h.get_app(&id).await.is_err() {
            h.register(declared).await;
        }
        let resp = h.check_api(&id, "u", api, android()).await.unwrap();
        assert_eq!(
            (resp.outcome(), resp.err_msg.as_str()),
            (outcome, msg.as_str()),
            "{id} {api}: {resp:?}"
        );
        assert_eq!(resp.decisions.len(), 1, "{api}");
        assert_eq!(resp.decisions[0].reason(), reason, "{id} {api}");
        assert_eq!(resp.decisions[0].err_msg, msg, "{id} {api}");
    }
    h.stop().await;
}

/// Decisions are evaluated against the current declarations: gate 3 wins
/// over a stored decision, which comes back once the app declares again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate3_wins_over_stored_decisions() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "granted", LOCATION, Answer::Allow).await;
    h.answer("wxloc", "denied", LOCATION, Answer::Deny).await;

    let undeclared = pb::App {
        permission: Default::default(),
        ..location_app("wxloc")
    };
    h.update_app(undeclared).await.unwrap();
    for (user, state) in [
        ("granted", DecisionState::Granted),
        ("denied", DecisionState::Denied),
    ] {
        let d = h.decision("wxloc", user, LOCATION).await;
        assert_decision(
            &d,
            Outcome::NotDeclared,
            Reason::MissingPermissionDesc,
            "authorize:fail:require permission desc",
        );
        assert_eq!(d.state(), state, "the stored decision is kept");
    }

    h.update_app(location_app("wxloc")).await.unwrap();
    let granted = h.decision("wxloc", "granted", LOCATION).await;
    assert_decision(
        &granted,
        Outcome::Granted,
        Reason::StoredGrant,
        "authorize:ok",
    );
    let denied = h.decision("wxloc", "denied", LOCATION).await;
    assert_decision(
        &denied,
        Outcome::Denied,
        Reason::StoredDenial,
        "authorize:fail auth deny",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate4_stored_decisions_answer_without_popup() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "u", LOCATION, Answer::Deny).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    h.answer("wxloc", "u", "scope.record", Answer::Deny).await;

    let d = h.decision("wxloc", "u", "scope.camera").await;
    assert_decision(&d, Outcome::Granted, Reason::StoredGrant, "authorize:ok");
    assert_eq!(d.state(), DecisionState::Granted);
    assert!(d.prompt.is_none());
    let d = h.decision("wxloc", "u", LOCATION).await;
    assert_decision(
        &d,
        Outcome::Denied,
        Reason::StoredDenial,
        "authorize:fail auth deny",
    );
    assert_eq!(d.state(), DecisionState::Denied);
    assert!(d.prompt.is_none());

    for (api, outcome, msg) in [
        (
            "wx.getLocation",
            Outcome::Denied,
            "getLocation:fail auth deny",
        ),
        (
            "wx.startLocationUpdate",
            Outcome::Denied,
            "startLocationUpdate:fail auth deny",
        ),
        (
            "MapContext.moveToLocation",
            Outcome::Denied,
            "moveToLocation:fail auth deny",
        ),
        ("camera", Outcome::Granted, "camera:ok"),
        ("wx.createVKSession", Outcome::Granted, "createVKSession:ok"),
        (
            "RecorderManager.start",
            Outcome::Denied,
            "start:fail auth deny",
        ),
        // Two scopes, the most restrictive decides: record is denied.
        ("live-pusher", Outcome::Denied, "live-pusher:fail auth deny"),
        // Never asked.
        ("wx.openBluetoothAdapter", Outcome::Prompt, ""),
    ] {
        let resp = h.check_api("wxloc", "u", api, android()).await.unwrap();
        assert_eq!(
            (resp.outcome(), resp.err_msg.as_str()),
            (outcome, msg),
            "{api}: {resp:?}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pusher_combines_record_and_camera() {
    let h = TestDaemon::start().await;
    h.register(app("wxlive", AppKind::MiniProgram)).await;
    let states = |resp: &pb::CheckApiResponse| -> Vec<(String, Outcome)> {
        resp.decisions
            .iter()
            .map(|d| (d.scope.clone(), d.outcome()))
            .collect()
    };
    #[rustfmt::skip]
    let steps = [
        // (answer given first, combined outcome, errMsg, record, camera)
        (None, Outcome::Prompt, "", Outcome::Prompt, Outcome::Prompt),
        (Some(("scope.camera", Answer::Allow)), Outcome::Prompt, "", Outcome::Prompt, Outcome::Granted),
        (Some(("scope.record", Answer::Allow)), Outcome::Granted, "live-pusher:ok", Outcome::Granted, Outcome::Granted),
    ];
    for (answer, outcome, msg, record, camera) in steps {
        if let Some((scope, a)) = answer {
            h.answer("wxlive", "u", scope, a).await;
        }
        let resp = h
            .check_api("wxlive", "u", "live-pusher", android())
            .await
            .unwrap();
        assert_eq!(
            (resp.outcome(), resp.err_msg.as_str()),
            (outcome, msg),
            "{resp:?}"
        );
        assert_eq!(
            states(&resp),
            vec![
                ("scope.record".into(), record),
                ("scope.camera".into(), camera)
            ]
        );
    }
    // Camera denied, record granted: denied.
    h.answer("wxlive", "v", "scope.camera", Answer::Deny).await;
    h.answer("wxlive", "v", "scope.record", Answer::Allow).await;
    let resp = h
        .check_api("wxlive", "v", "live-pusher", android())
        .await
        .unwrap();
    assert_eq!(
        (resp.outcome(), resp.err_msg.as_str()),
        (Outcome::Denied, "live-pusher:fail auth deny")
    );
    h.stop().await;
}

/// A stored decision is answered even where no popup could be shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate4_wins_over_the_popup_rules() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "granted", BACKGROUND, Answer::Allow)
        .await;
    h.answer("wxloc", "denied", BACKGROUND, Answer::Deny).await;
    for platform in [
        Platform::Windows,
        Platform::Mac,
        Platform::Ohos,
        Platform::Devtools,
    ] {
        let c = client(platform, "8.0.5", "3.0.0");
        let d = h
            .decision_for("wxloc", "granted", BACKGROUND, c.clone())
            .await;
        assert_decision(&d, Outcome::Granted, Reason::StoredGrant, "authorize:ok");
        let d = h
            .decision_for("wxloc", "denied", BACKGROUND, c.clone())
            .await;
        assert_decision(
            &d,
            Outcome::Denied,
            Reason::StoredDenial,
            "authorize:fail auth deny",
        );
        // The never-asked user on the same client has no popup.
        let d = h.decision_for("wxloc", "new", BACKGROUND, c).await;
        assert_eq!(d.outcome(), Outcome::SettingsRequired, "{platform:?}");
    }
    let old_android = client(Platform::Android, "7.0.0", "3.0.0");
    let d = h
        .decision_for("wxloc", "granted", BACKGROUND, old_android)
        .await;
    assert_eq!(d.outcome(), Outcome::Granted);
    h.stop().await;
}

/// Explain gives Authorize's answer, and its first failed step is the gate
/// that decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_deciding_gate() {
    let h = TestDaemon::start().await;
    h.register(app("wxgame", AppKind::MiniGame)).await;
    h.register(app("wxbare", AppKind::MiniProgram)).await;
    h.answer("wxbare", "u", "scope.camera", Answer::Deny).await;
    for (app_id, scope, gate) in [
        ("wxgame", "scope.address", 1),
        ("wxbare", "scope.address", 2),
        ("wxbare", LOCATION, 3),
        ("wxbare", "scope.camera", 4),
    ] {
        let explained = h
            .auth
            .clone()
            .explain(authorize_request(app_id, scope, android()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            explained.decision.as_ref(),
            Some(&h.decision(app_id, "u", scope).await),
            "{app_id} {scope}"
        );
        let first_failed = explained
            .steps
            .iter()
            .find(|s| !s.passed)
            .unwrap_or_else(|| panic!("{app_id} {scope}: no failed step: {explained:?}"));
        assert_eq!(first_failed.gate, gate, "{app_id} {scope}: {explained:?}");
        assert!(
            explained.steps.windows(2).all(|w| w[0].gate <= w[1].gate),
            "steps out of gate order: {explained:?}"
        );
    }
    h.stop().await;
}
