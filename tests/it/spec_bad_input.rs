//! Gate 1 (SPEC sections 4 and 8, notes/semantics.md "Validation order"):
//! malformed requests are INVALID_ARGUMENT naming the field and the value,
//! unknown apps NOT_FOUND; none of them changes anything, and the daemon
//! keeps serving.

use std::{future::Future, pin::Pin};

use consentd::pb::{self, Answer, Platform};
use tonic::{Code, Status};

use crate::util::{android, client, expect_status, location_app, TestDaemon, LOCATION};

type Call<'a> = Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'a>>;

/// One bad request: what it is, the call, the code and the needles its
/// message must contain.
struct Case<'a> {
    what: String,
    call: Call<'a>,
    code: Code,
    needles: Vec<String>,
}

fn invalid<'a>(what: impl Into<String>, call: Call<'a>, needles: &[&str]) -> Case<'a> {
    Case {
        what: what.into(),
        call,
        code: Code::InvalidArgument,
        needles: needles.iter().map(|s| s.to_string()).collect(),
    }
}

fn ok<T>(r: Result<T, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

/// Ids that are not ids: (value, why).
fn bad_ids() -> Vec<(String, &'static str)> {
    vec![
        (String::new(), "empty"),
        ("a".repeat(129), "129 bytes"),
        ("é".repeat(65), "130 bytes in 65 chars"),
        ("wx\u{7}app".into(), "a control character"),
        ("wx\u{0}".into(), "NUL"),
        ("wx\u{7f}".into(), "DEL"),
        ("wx app".into(), "a space"),
        ("wx\tapp".into(), "a tab"),
        ("wx\napp".into(), "a newline"),
    ]
}

/// Versions that do not parse.
const BAD_VERSIONS: [&str; 10] = [
    "8..0",
    "a.b",
    "",
    "8.0.0-beta",
    "8.0.",
    ".8",
    "v8.0",
    "8,0",
    " 8.0",
    "1.2.3.4.5.6.7.8.9",
];

fn authorize_req(
    app_id: &str,
    user_id: &str,
    scope: &str,
    c: Option<pb::ClientInfo>,
) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        app_id: app_id.into(),
        user_id: user_id.into(),
        scope: scope.into(),
        client: c,
    }
}

fn cases(h: &TestDaemon) -> Vec<Case<'_>> {
    let authorize = move |req: pb::AuthorizeRequest| -> Call<'_> {
        let mut auth = h.auth.clone();
        Box::pin(async move { ok(auth.authorize(req).await) })
    };
    let record = move |req: pb::RecordDecisionRequest| -> Call<'_> {
        let mut auth = h.auth.clone();
        Box::pin(async move { ok(auth.record_decision(req).await) })
    };
    let record_req = |answer: i32| pb::RecordDecisionRequest {
        lifetime: None,
        app_id: "wxloc".into(),
        user_id: "u".into(),
        scope: "scope.bluetooth".into(),
        answer,
        client: Some(android()),
    };
    let valid = || Some(android());
    let mut cases = Vec::new();

    for (id, why) in bad_ids() {
        let quoted = format!("{id:?}");
        cases.push(invalid(
            format!("Authorize app_id {why}"),
            authorize(authorize_req(&id, "u", LOCATION, valid())),
            &["app_id", &quoted],
        ));
        cases.push(invalid(
            format!("Authorize user_id {why}"),
            authorize(authorize_req("wxloc", &id, LOCATION, valid())),
            &["user_id", &quoted],
        ));
        cases.push(invalid(
            format!("GetSetting user_id {why}"),
            Box::pin(async move {
                ok(h.auth
                    .clone()
                    .get_setting(pb::GetSettingRequest {
                        app_id: "wxloc".into(),
                        user_id: id.clone(),
                    })
                    .await)
            }),
            &["user_id"],
        ));
    }
    cases.push(invalid(
        "Authorize empty app_id, exact message",
        authorize(authorize_req("", "u", LOCATION, valid())),
        &[r#"app_id "" is empty"#],
    ));

    let mut scope_needles = vec![r#"scope "scope.foo" is not a known scope; valid scopes: "#];
    let catalog = [
        "scope.userLocation",
        "scope.userFuzzyLocation",
        "scope.userLocationBackground",
        "scope.record",
        "scope.camera",
        "scope.bluetooth",
        "scope.writePhotosAlbum",
        "scope.addPhoneContact",
        "scope.addPhoneCalendar",
        "scope.werun",
        "scope.address",
        "scope.invoiceTitle",
        "scope.invoice",
        "scope.userInfo",
        "scope.WxFriendInteraction",
        "scope.gameClubData",
    ];
    scope_needles.extend(catalog);
    cases.push(invalid(
        "unknown scope lists the valid ones",
        authorize(authorize_req("wxloc", "u", "scope.foo", valid())),
        &scope_needles,
    ));
    for scope in [
        "",
        "userLocation",
        "scope.UserLocation",
        "scope.userLocation ",
    ] {
        let quoted = format!("{scope:?}");
        cases.push(invalid(
            format!("scope {scope:?}"),
            authorize(authorize_req("wxloc", "u", scope, valid())),
            &["scope", &quoted],
        ));
    }

    cases.push(invalid(
        "no client",
        authorize(authorize_req("wxloc", "u", LOCATION, None)),
        &["client"],
    ));
    for (platform, needles) in [
        (Platform::Unspecified as i32, vec!["platform"]),
        (99, vec!["platform", "99"]),
        (-1, vec!["platform", "-1"]),
    ] {
        let mut c = android();
        c.platform = platform;
        cases.push(invalid(
            format!("platform {platform}"),
            authorize(authorize_req("wxloc", "u", LOCATION, Some(c))),
            &needles,
        ));
    }
    for version in BAD_VERSIONS {
        let quoted = format!("{version:?}");
        let host = client(Platform::Ios, version, "3.0.0");
        cases.push(invalid(
            format!("host_version {version:?}"),
            authorize(authorize_req("wxloc", "u", LOCATION, Some(host))),
            &["host_version", &quoted],
        ));
        let sdk = client(Platform::Ios, "8.0.5", version);
        cases.push(invalid(
            format!("sdk_version {version:?}"),
            authorize(authorize_req("wxloc", "u", LOCATION, Some(sdk))),
            &["sdk_version", &quoted],
        ));
    }

    // Other RPCs.
    let check = move |api: &str, c: pb::ClientInfo| -> Call<'_> {
        let api = api.to_string();
        Box::pin(async move { ok(h.check_api("wxloc", "u", &api, c).await) })
    };
    cases.push(invalid(
        "CheckApi unknown interface",
        check("wx.nope", android()),
        &["api", "\"wx.nope\""],
    ));
    let mut c = android();
    c.platform = 42;
    cases.push(invalid(
        "CheckApi platform 42",
        check("camera", c),
        &["platform", "42"],
    ));
    cases.push(invalid(
        "CheckApi sdk 8..0",
        check("camera", client(Platform::Ios, "8.0.5", "8..0")),
        &["sdk_version", "\"8..0\""],
    ));

    for (answer, needles) in [
        (Answer::Unspecified as i32, vec!["answer"]),
        (99, vec!["answer", "99"]),
    ] {
        cases.push(invalid(
            format!("RecordDecision answer {answer}"),
            record(record_req(answer)),
            &needles,
        ));
    }
    let mut bad_scope = record_req(Answer::Allow as i32);
    bad_scope.scope = "scope.foo".into();
    cases.push(invalid(
        "RecordDecision unknown scope",
        record(bad_scope),
        &["scope.foo"],
    ));
    let mut bad_version = record_req(Answer::Allow as i32);
    bad_version.client = Some(client(Platform::Android, "a.b", "3.0.0"));
    cases.push(invalid(
        "RecordDecision host a.b",
        record(bad_version),
        &["host_version", "\"a.b\""],
    ));
    let mut no_user = record_req(Answer::Allow as i32);
    no_user.user_id = String::new();
    cases.push(invalid(
        "RecordDecision empty user_id",
        record(no_user),
        &[r#"user_id "" is empty"#],
    ));

    let batch = move |scopes: Vec<String>| -> Call<'_> {
        let mut auth = h.auth.clone();
        Box::pin(async move {
            ok(auth
                .batch_authorize(pb::BatchAuthorizeRequest {
                    app_id: "wxloc".into(),
                    user_id: "u".into(),
                    scopes,
                    client: Some(android()),
                })
                .await)
        })
    };
    cases.push(invalid(
        "BatchAuthorize with one unknown scope",
        batch(vec![LOCATION.into(), "scope.nope".into()]),
        &["scope.nope"],
    ));
    cases.push(invalid(
        "BatchAuthorize with 65 scopes",
        batch(vec!["scope.camera".to_string(); 65]),
        &["scopes"],
    ));

    let update = move |toggles: Vec<(&'static str, bool)>, location: i32| -> Call<'_> {
        let mut auth = h.auth.clone();
        Box::pin(async move {
            ok(auth
                .update_setting(pb::UpdateSettingRequest {
                    lifetime: None,
                    app_id: "wxloc".into(),
                    user_id: "u".into(),
                    auth_setting: toggles
                        .into_iter()
                        .map(|(s, on)| (s.to_string(), on))
                        .collect(),
                    location,
                })
                .await)
        })
    };
    cases.push(invalid(
        "UpdateSetting unknown scope",
        update(vec![("scope.foo", true)], 0),
        &["scope.foo"],
    ));
    cases.push(invalid(
        "UpdateSetting location 99",
        update(vec![], 99),
        &["location", "99"],
    ));
    cases.push(invalid(
        "OpenSetting empty app_id",
        Box::pin(async move {
            ok(h.auth
                .clone()
                .open_setting(pb::OpenSettingRequest {
                    app_id: String::new(),
                    user_id: "u".into(),
                })
                .await)
        }),
        &["app_id"],
    ));
    cases.push(invalid(
        "RemoveApp 129-byte user_id",
        Box::pin(async move { ok(h.remove_app("wxloc", &"u".repeat(129)).await) }),
        &["user_id"],
    ));
    cases.push(invalid(
        "GetApp empty app_id",
        Box::pin(async move { ok(h.get_app("").await) }),
        &["app_id"],
    ));

    // Well-formed, but the app does not exist.
    let not_found = r#"app "wxnope" is not registered"#;
    let unknown: Vec<(&str, Call<'_>)> = vec![
        (
            "Authorize",
            authorize(authorize_req("wxnope", "u", LOCATION, valid())),
        ),
        (
            "CheckApi",
            Box::pin(async move { ok(h.check_api("wxnope", "u", "camera", android()).await) }),
        ),
        (
            "RecordDecision",
            record(pb::RecordDecisionRequest {
                app_id: "wxnope".into(),
                ..record_req(Answer::Allow as i32)
            }),
        ),
        (
            "GetSetting",
            Box::pin(async move {
                ok(h.auth
                    .clone()
                    .get_setting(pb::GetSettingRequest {
                        app_id: "wxnope".into(),
                        user_id: "u".into(),
                    })
                    .await)
            }),
        ),
        (
            "OpenSetting",
            Box::pin(async move {
                ok(h.auth
                    .clone()
                    .open_setting(pb::OpenSettingRequest {
                        app_id: "wxnope".into(),
                        user_id: "u".into(),
                    })
                    .await)
            }),
        ),
        (
            "RemoveApp",
            Box::pin(async move { ok(h.remove_app("wxnope", "u").await) }),
        ),
    ];
    for (rpc, call) in unknown {
        cases.push(Case {
            what: format!("{rpc} unknown app"),
            call,
            code: Code::NotFound,
            needles: vec![not_found.into()],
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field_and_change_nothing() {
    let h = TestDaemon::start().await;
    h.register(location_app("wxloc")).await;
    h.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    h.answer("wxloc", "u", "scope.record", Answer::Deny).await;
    let setting = h.setting("wxloc", "u").await;

    let mut failures = Vec::new();
    for case in cases(&h) {
        match case.call.await {
            Ok(()) => failures.push(format!("{}: succeeded", case.what)),
            Err(status) => {
                let missing: Vec<&String> = case
                    .needles
                    .iter()
                    .filter(|n| !status.message().contains(n.as_str()))
                    .collect();
                if status.code() != case.code || !missing.is_empty() {
                    failures.push(format!(
                        "{}: expected {:?} naming {:?}, got {:?} {:?}",
                        case.what,
                        case.code,
                        missing,
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad cases:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing changed, and the daemon still serves.
    let after = h.setting("wxloc", "u").await;
    assert_eq!(after.auth_setting, setting.auth_setting);
    assert_eq!(after.revision, setting.revision);
    assert_eq!(h.revision().await, setting.revision);
    let d = h.decision("wxloc", "u", "scope.camera").await;
    assert_eq!(d.outcome(), pb::Outcome::Granted);
    h.stop().await;
}

/// The edges that are valid: 128-byte ids (also in multibyte characters),
/// 8 version segments, a single segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_valid_inputs_are_accepted() {
    let h = TestDaemon::start().await;
    let long_app = "a".repeat(128);
    h.register(location_app(&long_app)).await;
    for user in ["u".repeat(128), "é".repeat(64), "用户".repeat(21)] {
        let d = h.decision(&long_app, &user, "scope.camera").await;
        assert_eq!(d.outcome(), pb::Outcome::Prompt, "{user}");
    }
    for (host, sdk) in [
        ("1.2.3.4.5.6.7.8", "3.0.0"),
        ("8", "3"),
        ("8.0.5", "2.25.0.0.0.0.0.0"),
    ] {
        let c = client(Platform::Ios, host, sdk);
        let d = h.decision_for(&long_app, "u", "scope.camera", c).await;
        assert_eq!(d.outcome(), pb::Outcome::Prompt, "{host} {sdk}");
    }
    expect_status(
        h.authorize(
            &long_app,
            "u",
            "scope.camera",
            client(Platform::Ios, "8", "1.2.3.4.5.6.7.8.9"),
        )
        .await,
        Code::InvalidArgument,
        "sdk_version",
    );
    h.stop().await;
}
