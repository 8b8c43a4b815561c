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

/// grpcurl 1.8.6 sends a unix socket's path as the HTTP/2 `:authority`;
/// h2 (0.4, under tonic) refuses a malformed authority before any handler
/// runs (`RST_STREAM PROTOCOL_ERROR`) and offers no switch to accept it. So
/// the documented form passes `-authority localhost`; this test shows both,
/// and tells when a newer h2 or grpcurl changes the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl: scripts/test installs it and runs this"]
async fn grpcurl_over_a_unix_socket_with_the_documented_authority() {
    let grpcurl = grpcurl();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let path = sock.clone();
    let h = TestDaemon::with(|c| c.listen.push(consentd::transport::ListenAddr::Unix(path))).await;
    let run = |authority: bool| {
        let mut command = std::process::Command::new(&grpcurl);
        command.args(["-plaintext", "-unix"]);
        if authority {
            command.args(["-authority", "localhost"]);
        }
        command.arg(&sock).arg("list");
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(true);
    assert!(
        ok && out.lines().any(|l| l == "consent.v1.Authorization"),
        "{out}{err}"
    );
    let (ok, _, err) = run(false);
    assert!(!ok && err.contains("PROTOCOL_ERROR"), "{err}");
    h.stop().await;
}

/// `consentctl --json` prints what grpcurl prints for the same call: one
/// spelling per value (`OUTCOME_PROMPT`, `errMsg`, revisions as strings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl: scripts/test installs it and runs this"]
async fn consentctl_json_is_the_json_grpcurl_prints() {
    let grpcurl = grpcurl();
    let h = TestDaemon::start().await;
    h.client()
        .register(crate::fixture::location_app("wxsame"))
        .await;
    let addr = h.addr();
    let ask = r#"{"app_id": "wxsame", "user_id": "u1", "scope": "scope.camera",
        "client": {"platform": "PLATFORM_ANDROID", "host_version": "8.0.50", "sdk_version": "3.0.0"}}"#;
    let (ok, from_grpcurl, err) = run_grpcurl(
        grpcurl,
        &["-d", ask],
        addr,
        &["consent.v1.Authorization/Authorize"],
    )
    .await;
    assert!(ok, "{err}");
    let out = crate::support::child::consentctl()
        .args([
            "--addr",
            &addr.to_string(),
            "--json",
            "authorize",
            "wxsame",
            "u1",
            "scope.camera",
        ])
        .output()
        .unwrap();
    let from_consentctl = String::from_utf8_lossy(&out.stdout);
    let parse = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s).unwrap_or_else(|e| panic!("{e}: {s}"))
    };
    assert_eq!(parse(&from_consentctl), parse(&from_grpcurl));
    assert!(
        from_consentctl.contains(r#""outcome":"OUTCOME_PROMPT""#),
        "{from_consentctl}"
    );
    h.stop().await;
}
