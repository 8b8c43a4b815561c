//! The operator's view: the real grpcurl 1.8.6 against the daemon, through
//! server reflection only (no proto files).

use crate::fixture::{grpcurl, run_grpcurl, TestDaemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl: scripts/test installs it and runs this"]
async fn list_describe_register_and_authorize() {
    let grpcurl = grpcurl();
    let h = TestDaemon::start().await;
    let addr = h.addr();
    let call = |data: &str, method: &str| {
        let (data, method) = (data.to_owned(), method.to_owned());
        let grpcurl = grpcurl.clone();
        async move { run_grpcurl(grpcurl, &["-d", &data], addr, &[&method]).await }
    };

    let (ok, out, err) = run_grpcurl(grpcurl.clone(), &[], addr, &["list"]).await;
    assert!(ok, "{err}");
    for service in [
        "consent.v1.Admin",
        "consent.v1.Apps",
        "consent.v1.Authorization",
        "grpc.health.v1.Health",
    ] {
        assert!(
            out.lines().any(|l| l == service),
            "{service} missing from:\n{out}"
        );
    }
    let (ok, out, err) = run_grpcurl(
        grpcurl.clone(),
        &[],
        addr,
        &["describe", "consent.v1.Authorization"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("rpc Authorize ( .consent.v1.AuthorizeRequest ) returns ( .consent.v1.AuthorizeResponse );"), "{out}");
    assert!(
        out.contains(
            "rpc Watch ( .consent.v1.WatchRequest ) returns ( stream .consent.v1.WatchResponse );"
        ),
        "{out}"
    );
    let (ok, out, _) = run_grpcurl(
        grpcurl.clone(),
        &[],
        addr,
        &["describe", "consent.v1.Outcome"],
    )
    .await;
    assert!(
        ok && out.contains("OUTCOME_SETTINGS_REQUIRED = 4;"),
        "{out}"
    );

    let app = r#"{"app": {"app_id": "wxdemo", "kind": "APP_KIND_MINI_PROGRAM",
        "permission": {"scope.userLocation": {"desc": "to show shops near you"}}}}"#;
    let (ok, out, err) = call(app, "consent.v1.Apps/RegisterApp").await;
    assert!(ok, "{err}");
    assert!(out.contains(r#""appId": "wxdemo""#), "{out}");
    let ask = r#"{"app_id": "wxdemo", "user_id": "user-1", "scope": "scope.userLocation",
        "client": {"platform": "PLATFORM_ANDROID", "host_version": "8.0.5", "sdk_version": "3.4.0"}}"#;
    let (ok, out, err) = call(ask, "consent.v1.Authorization/Authorize").await;
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["decision"]["outcome"], "OUTCOME_PROMPT");
    assert_eq!(json["decision"]["reason"], "REASON_POPUP_AVAILABLE");
    assert_eq!(
        json["decision"]["prompt"]["appDesc"],
        "to show shops near you"
    );
    assert_eq!(json["revision"], "1");

    // A bad request shows the status and the field.
    let bad = r#"{"app_id": "wxdemo", "user_id": "user-1", "scope": "scope.nope",
        "client": {"platform": "PLATFORM_ANDROID", "host_version": "8.0.5", "sdk_version": "3.4.0"}}"#;
    let (ok, _, err) = call(bad, "consent.v1.Authorization/Authorize").await;
    assert!(!ok);
    assert!(
        err.contains("Code: InvalidArgument")
            && err.contains(r#"scope "scope.nope" is not a known scope"#),
        "{err}"
    );
    h.stop().await;
}
