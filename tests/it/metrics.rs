//! The Prometheus endpoint: scraped over plain HTTP, counters move with calls.

use std::net::SocketAddr;

use consentd::pb::{self, Answer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::fixture::{android, location_app, TestDaemon};

pub async fn scrape(addr: SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: consentd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the sample whose name and labels start with `series`.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_calls() {
    let h = TestDaemon::with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = h.daemon().metrics_addr().expect("metrics endpoint on");
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.decision("wxloc", "u", "scope.camera").await;
    let before = scrape(addr).await;
    let authorize =
        r#"consentd_rpc_requests_total{code="Ok",method="/consent.v1.Authorization/Authorize"}"#;
    assert_eq!(value(&before, authorize), 1.0, "{before}");
    assert_eq!(
        value(
            &before,
            r#"consentd_outcomes_total{outcome="Prompt",reason="PopupAvailable",scope="scope.camera"}"#
        ),
        1.0
    );

    c.answer("wxloc", "u", "scope.camera", Answer::Allow).await;
    c.decision("wxloc", "u", "scope.camera").await;
    c.decision("wxloc", "u", "scope.camera").await;
    let _ = c.authorize("wxnone", "u", "scope.camera", android()).await;
    let _watch = c.watch(pb::WatchRequest::default()).await.unwrap();
    let after = scrape(addr).await;
    assert_eq!(
        value(&after, authorize),
        3.0,
        "two more successful Authorize calls"
    );
    assert_eq!(
        value(
            &after,
            r#"consentd_rpc_requests_total{code="NotFound",method="/consent.v1.Authorization/Authorize"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"consentd_outcomes_total{outcome="Granted",reason="StoredGrant",scope="scope.camera"}"#
        ),
        2.0
    );
    assert_eq!(
        value(&after, "consentd_store_revision "),
        c.revision().await as f64
    );
    assert_eq!(value(&after, "consentd_event_log_events "), 1.0);
    assert_eq!(value(&after, "consentd_apps "), 1.0);
    assert_eq!(value(&after, "consentd_watch_subscribers "), 1.0);
    assert!(
        value(&after, "consentd_store_group_commit_jobs_count ") >= 2.0,
        "register + record committed"
    );
    assert!(value(&after, "consentd_store_size_bytes ") > 0.0);
    assert!(
        value(
            &after,
            r#"consentd_rpc_duration_seconds_count{method="/consent.v1.Authorization/RecordDecision"}"#
        ) >= 1.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_by_default() {
    let h = TestDaemon::start().await;
    assert!(h.daemon().metrics_addr().is_none());
    h.stop().await;
}
