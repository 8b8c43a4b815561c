//! Hostile and malformed requests: the right status naming the field, no
//! change to the store, and the daemon keeps serving.

use consentd::pb::{self, Answer};
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::fixture::{android, assert_status, client_info, location_app, TestDaemon};

fn authorize(
    app: &str,
    user: &str,
    scope: &str,
    client: Option<pb::ClientInfo>,
) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        app_id: app.into(),
        user_id: user.into(),
        scope: scope.into(),
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_name_the_field_and_change_nothing() {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    let revision = c.revision().await;
    let setting = c.setting("wxloc", "u").await;

    let long = "x".repeat(129);
    let with_client = |platform: i32, host: &str, sdk: &str| {
        Some(pb::ClientInfo {
            platform,
            host_version: host.into(),
            sdk_version: sdk.into(),
        })
    };
    #[rustfmt::skip]
    let authorize_cases: Vec<(pb::AuthorizeRequest, Code, &str)> = vec![
        (authorize("", "u", "scope.camera", Some(android())), Code::InvalidArgument, "app_id \"\" is empty"),
        (authorize(&long, "u", "scope.camera", Some(android())), Code::InvalidArgument, "is 129 bytes long; the limit is 128"),
        (authorize("wxloc", "", "scope.camera", Some(android())), Code::InvalidArgument, "user_id \"\" is empty"),
        (authorize("wxloc", "u\u{0}", "scope.camera", Some(android())), Code::InvalidArgument, "user_id"),
        (authorize("wxloc", "u\nv", "scope.camera", Some(android())), Code::InvalidArgument, "non-printable"),
        (authorize("wxloc", "u v", "scope.camera", Some(android())), Code::InvalidArgument, "user_id \"u v\""),
        (authorize("wxloc", "u", "scope.nope", Some(android())), Code::InvalidArgument, "valid scopes: scope.userLocation"),
        (authorize("wxloc", "u", "", Some(android())), Code::InvalidArgument, "scope \"\""),
        (authorize("wxloc", "u", "scope.camera", None), Code::InvalidArgument, "client is required"),
        (authorize("wxloc", "u", "scope.camera", with_client(0, "8.0.5", "3.0.0")), Code::InvalidArgument, "client.platform is required"),
        (authorize("wxloc", "u", "scope.camera", with_client(99, "8.0.5", "3.0.0")), Code::InvalidArgument, "client.platform 99"),
        (authorize("wxloc", "u", "scope.camera", with_client(1, "8..0", "3.0.0")), Code::InvalidArgument, "client.host_version \"8..0\""),
        (authorize("wxloc", "u", "scope.camera", with_client(1, "a.b", "3.0.0")), Code::InvalidArgument, "client.host_version \"a.b\""),
        (authorize("wxloc", "u", "scope.camera", with_client(1, "", "3.0.0")), Code::InvalidArgument, "client.host_version \"\" is not a version"),
        (authorize("wxloc", "u", "scope.camera", with_client(1, "8.0.0", "8.0.0-beta")), Code::InvalidArgument, "client.sdk_version \"8.0.0-beta\""),
        (authorize("wxloc", "u", "scope.camera", with_client(1, "8.0.0", "99999999999")), Code::InvalidArgument, "too large"),
        (authorize("wxnone", "u", "scope.camera", Some(android())), Code::NotFound, "app \"wxnone\" is not registered"),
    ];
    for (req, code, needle) in authorize_cases {
        assert_status(c.auth().authorize(req).await, code, needle);
    }
    // Writes refuse the same way and commit nothing.
    assert_status(
        c.record("", "u", "scope.camera", Answer::Deny, android())
            .await,
        Code::InvalidArgument,
        "app_id",
    );
    assert_status(
        c.record("wxloc", "u", "scope.nope", Answer::Deny, android())
            .await,
        Code::InvalidArgument,
        "scope",
    );
    assert_status(
        c.record(
            "wxloc",
            "u",
            "scope.camera",
            Answer::Deny,
            client_info(pb::Platform::Ios, "x", "3"),
        )
        .await,
        Code::InvalidArgument,
        "client.host_version",
    );
    let bad_answer = pb::RecordDecisionRequest {
        answer: 42,
        ..Default::default()
    };
    assert_status(
        c.auth()
            .record_decision(pb::RecordDecisionRequest {
                app_id: "wxloc".into(),
                user_id: "u".into(),
                scope: "scope.camera".into(),
                client: Some(android()),
                ..bad_answer
            })
            .await,
        Code::InvalidArgument,
        "answer 42",
    );
    let bad_location = pb::UpdateSettingRequest {
        app_id: "wxloc".into(),
        user_id: "u".into(),
        location: 9,
        ..Default::default()
    };
    assert_status(
        c.update(bad_location).await,
        Code::InvalidArgument,
        "location 9",
    );
    let unknown_toggle = pb::UpdateSettingRequest {
        app_id: "wxloc".into(),
        user_id: "u".into(),
        auth_setting: [("scope.nope".to_string(), true)].into(),
        ..Default::default()
    };
    assert_status(
        c.update(unknown_toggle).await,
        Code::InvalidArgument,
        "auth_setting \"scope.nope\"",
    );
    assert_status(
        c.auth()
            .remove_app(pb::RemoveAppRequest {
                app_id: "wxnone".into(),
                user_id: "u".into(),
            })
            .await,
        Code::NotFound,
        "wxnone",
    );
    assert_status(
        c.auth()
            .get_setting(pb::GetSettingRequest {
                app_id: "wxloc".into(),
                user_id: long.clone(),
            })
            .await,
        Code::InvalidArgument,
        "user_id",
    );
    assert_status(
        c.apps()
            .list_apps(pb::ListAppsRequest {
                page_size: 1,
                page_token: "\u{7}".into(),
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );

    assert_eq!(c.revision().await, revision, "nothing was committed");
    assert_eq!(
        c.setting("wxloc", "u").await.auth_setting,
        setting.auth_setting
    );
    let mut health = HealthClient::new(c.channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "consent.v1.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving, "still serving");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_each_service() {
    let h = TestDaemon::start().await;
    let mut health = HealthClient::new(h.client().channel);
    for service in [
        "",
        "consent.v1.Authorization",
        "consent.v1.Apps",
        "consent.v1.Admin",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }
    assert_status(
        health
            .check(HealthCheckRequest {
                service: "nope".into(),
            })
            .await,
        Code::NotFound,
        "",
    );
    h.stop().await;
}
