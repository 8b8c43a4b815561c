//! The gates of SPEC section 4, in order, and the errMsg strings of section 8.

use consentd::pb::{self, Answer, DecisionState as S, Outcome as O, Reason as R};

use crate::fixture::{android, client_info, location_app, Client, TestDaemon};

async fn daemon() -> (TestDaemon, Client) {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.register(pb::App {
        app_id: "wxbare".into(),
        kind: pb::AppKind::MiniProgram.into(),
        ..Default::default()
    })
    .await;
    c.register(pb::App {
        app_id: "wxgame".into(),
        kind: pb::AppKind::MiniGame.into(),
        ..Default::default()
    })
    .await;
    (h, c)
}

/// (outcome, state, reason, errMsg, rule).
type Summary<'a> = (O, S, R, &'a str, &'a str);

fn summary(d: &pb::Decision) -> Summary<'_> {
    (
        d.outcome(),
        d.state(),
        d.reason(),
        d.err_msg.as_str(),
        d.rule.as_str(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gate_decides_with_its_err_msg() {
    let (h, c) = daemon().await;
    c.answer("wxloc", "granted", "scope.camera", Answer::Allow)
        .await;
    c.answer("wxloc", "denied", "scope.camera", Answer::Deny)
        .await;
    let old_sdk = client_info(pb::Platform::Android, "8.0.5", "1.1.9");
    let old_host = client_info(pb::Platform::Ios, "7.0.20", "3.0.0");
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str, pb::ClientInfo, Summary)> = vec![
        // 1: unsupported for the kind, then base library minimums (even over a stored grant).
        ("wxgame", "u", "scope.address", android(), (O::Unsupported, S::NotDetermined, R::ScopeNotForAppKind, "authorize:fail not supported", "")),
        ("wxbare", "u", "scope.gameClubData", android(), (O::Unsupported, S::NotDetermined, R::ScopeNotForAppKind, "authorize:fail not supported", "")),
        ("wxloc", "granted", "scope.camera", old_sdk.clone(), (O::Unsupported, S::Granted, R::BaseLibraryTooOld, "authorize:fail not supported", "authorize-min-sdk")),
        // 2: abolished scopes and anonymous userInfo.
        ("wxbare", "u", "scope.address", android(), (O::NoAuthNeeded, S::NotDetermined, R::AuthorizationAbolished, "authorize:ok", "")),
        ("wxbare", "u", "scope.invoiceTitle", android(), (O::NoAuthNeeded, S::NotDetermined, R::AuthorizationAbolished, "authorize:ok", "")),
        ("wxbare", "u", "scope.invoice", android(), (O::NoAuthNeeded, S::NotDetermined, R::AuthorizationAbolished, "authorize:ok", "")),
        ("wxbare", "u", "scope.userInfo", android(), (O::NoAuthNeeded, S::NotDetermined, R::AnonymousProfile, "authorize:ok", "")),
        ("wxgame", "u", "scope.userInfo", android(), (O::Prompt, S::NotDetermined, R::PopupAvailable, "", "")),
        // 3: declarations.
        ("wxbare", "u", "scope.userLocation", android(), (O::NotDeclared, S::NotDetermined, R::MissingPermissionDesc, "authorize:fail:require permission desc", "")),
        ("wxbare", "u", "scope.userFuzzyLocation", android(), (O::NotDeclared, S::NotDetermined, R::MissingPermissionDesc, "authorize:fail:require permission desc", "")),
        ("wxbare", "u", "scope.userLocationBackground", android(), (O::NotDeclared, S::NotDetermined, R::MissingPermissionDesc, "authorize:fail:require permission desc", "")),
        // 4: the stored decision, whatever the client.
        ("wxloc", "granted", "scope.camera", old_host.clone(), (O::Granted, S::Granted, R::StoredGrant, "authorize:ok", "")),
        ("wxloc", "denied", "scope.camera", android(), (O::Denied, S::Denied, R::StoredDenial, "authorize:fail auth deny", "")),
        // 5: never asked: popup or settings page.
        ("wxloc", "u", "scope.camera", android(), (O::Prompt, S::NotDetermined, R::PopupAvailable, "", "")),
        ("wxloc", "u", "scope.userLocationBackground", android(), (O::Prompt, S::NotDetermined, R::PopupAvailable, "", "")),
        ("wxloc", "u", "scope.userLocationBackground", old_host, (O::SettingsRequired, S::NotDetermined, R::PopupUnavailable, "authorize:fail auth deny", "background-location-popup")),
    ];
    for (i, (app, user, scope, client, want)) in cases.into_iter().enumerate() {
        let d = c
            .authorize(app, user, scope, client)
            .await
            .unwrap()
            .decision
            .unwrap();
        assert_eq!(summary(&d), want, "case {i}: {app} {user} {scope}");
        assert_eq!(d.scope, scope);
        assert_eq!(d.prompt.is_some(), want.0 == O::Prompt, "case {i}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_location_needs_the_background_mode() {
    let (h, c) = daemon().await;
    let mut app = location_app("wxnomode");
    app.required_background_modes.clear();
    c.register(app).await;
    let d = c
        .decision("wxnomode", "u", "scope.userLocationBackground")
        .await;
    assert_eq!(
        summary(&d),
        (
            O::NotDeclared,
            S::NotDetermined,
            R::MissingBackgroundMode,
            "authorize:fail the api need to be declared in the requiredBackgroundModes field in app.json/ext.json",
            ""
        )
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_are_checked_against_the_current_registration() {
    let (h, c) = daemon().await;
    c.answer("wxloc", "u", "scope.userLocation", Answer::Allow)
        .await;
    assert_eq!(
        c.decision("wxloc", "u", "scope.userLocation")
            .await
            .outcome(),
        O::Granted
    );
    // The developer drops the location statement: the stored grant no longer suffices.
    let mut app = location_app("wxloc");
    app.permission.clear();
    c.apps()
        .update_app(pb::UpdateAppRequest { app: Some(app) })
        .await
        .unwrap();
    let d = c.decision("wxloc", "u", "scope.userLocation").await;
    assert_eq!((d.outcome(), d.state()), (O::NotDeclared, S::Granted));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_carry_the_popup_content() {
    let (h, c) = daemon().await;
    let p = c
        .decision("wxloc", "u", "scope.userLocation")
        .await
        .prompt
        .unwrap();
    assert_eq!(
        (
            p.scope.as_str(),
            p.scope_description.as_str(),
            p.app_desc.as_str(),
            p.background_location
        ),
        (
            "scope.userLocation",
            "Precise geographical location",
            "to show shops nearby",
            false
        )
    );
    let p = c
        .decision("wxloc", "u", "scope.userLocationBackground")
        .await
        .prompt
        .unwrap();
    assert!(p.background_location);
    assert_eq!(
        p.app_desc, "to show shops nearby",
        "background uses the location statement"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_prefixes_err_msgs_with_the_interface() {
    let (h, c) = daemon().await;
    c.answer("wxloc", "denied", "scope.userLocation", Answer::Deny)
        .await;
    c.answer("wxloc", "granted", "scope.userLocation", Answer::Allow)
        .await;
    let mut fuzzy_only = location_app("wxfuzzy");
    fuzzy_only.permission.insert(
        "scope.userFuzzyLocation".into(),
        pb::PermissionDesc {
            desc: "city".into(),
        },
    );
    fuzzy_only.required_private_infos = vec!["getFuzzyLocation".into()];
    c.register(fuzzy_only).await;
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str, O, &str)> = vec![
        ("wxloc", "granted", "wx.getLocation", O::Granted, "getLocation:ok"),
        ("wxloc", "granted", "MapContext.moveToLocation", O::Granted, "moveToLocation:ok"),
        ("wxloc", "denied", "wx.getLocation", O::Denied, "getLocation:fail auth deny"),
        ("wxloc", "denied", "wx.startLocationUpdate", O::Denied, "startLocationUpdate:fail auth deny"),
        ("wxloc", "u", "wx.getLocation", O::Prompt, ""),
        // Declared in permission but not in requiredPrivateInfos.
        ("wxfuzzy", "u", "wx.getLocation", O::NotDeclared, "getLocation:fail the api need to be declared in the requiredPrivateInfos field in app.json/ext.json"),
        ("wxloc", "u", "wx.getFuzzyLocation", O::NotDeclared, "getFuzzyLocation:fail:require permission desc"),
        ("wxfuzzy", "u", "wx.getFuzzyLocation", O::Prompt, ""),
        // Abolished beats the declaration check.
        ("wxbare", "u", "wx.chooseAddress", O::NoAuthNeeded, "chooseAddress:ok"),
        ("wxbare", "u", "wx.getUserInfo", O::NoAuthNeeded, "getUserInfo:ok"),
        ("wxgame", "u", "wx.chooseInvoice", O::Unsupported, "chooseInvoice:fail not supported"),
        ("wxloc", "u", "RecorderManager.start", O::Prompt, ""),
    ];
    for (app, user, api, outcome, err) in cases {
        let r = c.check(app, user, api, android()).await.unwrap();
        assert_eq!(
            (r.outcome(), r.err_msg.as_str()),
            (outcome, err),
            "{app} {user} {api}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pusher_needs_both_record_and_camera() {
    let (h, c) = daemon().await;
    let cases = [
        (
            Some(Answer::Allow),
            Some(Answer::Allow),
            O::Granted,
            "live-pusher:ok",
        ),
        (Some(Answer::Allow), None, O::Prompt, ""),
        (
            None,
            Some(Answer::Deny),
            O::Denied,
            "live-pusher:fail auth deny",
        ),
        (
            Some(Answer::Deny),
            Some(Answer::Allow),
            O::Denied,
            "live-pusher:fail auth deny",
        ),
    ];
    for (i, (record, camera, outcome, err)) in cases.into_iter().enumerate() {
        let user = format!("u{i}");
        for (scope, answer) in [("scope.record", record), ("scope.camera", camera)] {
            if let Some(a) = answer {
                c.answer("wxloc", &user, scope, a).await;
            }
        }
        let r = c
            .check("wxloc", &user, "live-pusher", android())
            .await
            .unwrap();
        assert_eq!(
            (r.outcome(), r.err_msg.as_str()),
            (outcome, err),
            "case {i}"
        );
        assert_eq!(r.decisions.len(), 2);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_authorize_answers_in_request_order() {
    let (h, c) = daemon().await;
    c.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    let req = pb::BatchAuthorizeRequest {
        app_id: "wxloc".into(),
        user_id: "u".into(),
        scopes: vec![
            "scope.camera".into(),
            "scope.address".into(),
            "scope.record".into(),
            "scope.camera".into(),
        ],
        client: Some(android()),
    };
    let r = c
        .auth()
        .batch_authorize(req.clone())
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = r
        .decisions
        .iter()
        .map(|d| (d.scope.as_str(), d.outcome()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("scope.camera", O::Granted),
            ("scope.address", O::NoAuthNeeded),
            ("scope.record", O::Prompt),
            ("scope.camera", O::Granted)
        ]
    );
    assert_eq!(r.revision, c.revision().await);
    let too_many = pb::BatchAuthorizeRequest {
        scopes: vec!["scope.camera".into(); 65],
        ..req.clone()
    };
    crate::fixture::assert_status(
        c.auth().batch_authorize(too_many).await,
        tonic::Code::InvalidArgument,
        "1 to 64",
    );
    let bad = pb::BatchAuthorizeRequest {
        scopes: vec!["scope.camera".into(), "scope.nope".into()],
        ..req
    };
    crate::fixture::assert_status(
        c.auth().batch_authorize(bad).await,
        tonic::Code::InvalidArgument,
        "scopes[1]",
    );
    h.stop().await;
}
