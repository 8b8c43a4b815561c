//! The Prometheus endpoint: scraped over plain HTTP, counters move with calls.

use std::net::SocketAddr;

use consentd::pb::{self, Answer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::fixture::{android, location_app, TestDaemon};

pub async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `GET path` over HTTP/1.1: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: consentd\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        response.split_once("\r\n\r\n").unwrap().1.to_owned(),
    )
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
    let h = TestDaemon::with(|c| {
        // consentd_store_size_bytes is the sled data dir's size (0 on etcd).
        *c = crate::support::on_sled(c.clone());
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = h.daemon().metrics_addr().expect("metrics endpoint on");
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.decision("wxloc", "u", "scope.camera").await;
    let before = scrape(addr).await;
    let authorize = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Authorize",grpc_service="consent.v1.Authorization",grpc_type="unary"}"#;
    assert_eq!(value(&before, authorize), 1.0, "{before}");
    assert_eq!(
        value(
            &before,
            r#"consentd_outcomes_total{outcome="OUTCOME_PROMPT",reason="REASON_POPUP_AVAILABLE",scope="scope.camera"}"#
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
            r#"grpc_server_handled_total{grpc_code="NotFound",grpc_method="Authorize",grpc_service="consent.v1.Authorization",grpc_type="unary"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"consentd_outcomes_total{outcome="OUTCOME_GRANTED",reason="REASON_STORED_GRANT",scope="scope.camera"}"#
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
            r#"grpc_server_handling_seconds_count{grpc_method="RecordDecision",grpc_service="consent.v1.Authorization",grpc_type="unary"}"#
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conventional_names_probes_and_every_metric_documented() {
    let h = TestDaemon::with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = h.daemon().metrics_addr().expect("metrics endpoint on");
    let c = h.client();
    c.register(location_app("wxdoc")).await;
    c.decision("wxdoc", "u", "scope.camera").await;
    let _watch = c.watch(pb::WatchRequest::default()).await.unwrap();
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    let text = scrape(addr).await;
    assert!(
        value(&text, "process_resident_memory_bytes ") > 0.0,
        "{text}"
    );
    assert!(value(&text, "process_open_fds ") > 0.0, "{text}");
    assert_eq!(
        value(
            &text,
            &format!(
                r#"consentd_build_info{{revision="{}",version="{}"}}"#,
                consentd::VERSION
                    .split_once(" (")
                    .unwrap()
                    .1
                    .trim_end_matches(')'),
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            r#"grpc_server_handling_seconds_count{grpc_method="RegisterApp",grpc_service="consent.v1.Apps",grpc_type="unary"}"#
        ) >= 1.0,
        "{text}"
    );
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"),
    )
    .unwrap();
    let exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    assert!(exported.len() > 20, "{text}");
    for name in exported {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is missing from docs/metrics.md"
        );
    }
    h.stop().await;
}

/// The view's revision against the store's newest known one (equal on a
/// healthy daemon), and the Watch lag: the most revisions any stream was
/// behind as it took its next batch since the previous scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_and_watch_lag_gauges_move() {
    let h = TestDaemon::with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = h.daemon().metrics_addr().expect("metrics endpoint on");
    let c = h.client();
    c.register(location_app("wxlag")).await;
    for i in 0..30 {
        c.answer("wxlag", &format!("u{i}"), "scope.camera", Answer::Allow)
            .await;
    }
    let revision = c.revision().await;
    // The store's newest revision is seen (etcd: by the next quorum probe).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = scrape(addr).await;
        if value(&text, "consentd_store_cluster_revision ") >= revision as f64
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        value(&text, "consentd_store_cluster_revision "),
        revision as f64,
        "{text}"
    );
    assert_eq!(value(&text, "consentd_store_revision "), revision as f64);
    assert_eq!(value(&text, "consentd_store_view_lag_revisions "), 0.0);
    assert_eq!(
        value(&text, "consentd_watch_lag_revisions_max "),
        0.0,
        "no stream yet"
    );

    // A stream replaying from 0 starts `revision` revisions behind.
    let mut watch = c
        .watch(pb::WatchRequest {
            start_revision: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(watch.message().await.unwrap().is_some());
    let text = scrape(addr).await;
    assert_eq!(
        value(&text, "consentd_watch_lag_revisions_max "),
        revision as f64,
        "{text}"
    );
    // Caught up: the next scrape shows the lag since this one.
    let patience = std::time::Duration::from_secs(10);
    tokio::time::timeout(patience, until_user(&mut watch, "u29"))
        .await
        .expect("the replay arrives");
    scrape(addr).await;
    c.answer("wxlag", "late", "scope.camera", Answer::Allow)
        .await;
    tokio::time::timeout(patience, until_user(&mut watch, "late"))
        .await
        .expect("the late event arrives");
    let text = scrape(addr).await;
    let lag = value(&text, "consentd_watch_lag_revisions_max ");
    assert!(
        (1.0..=2.0).contains(&lag),
        "an up-to-date stream is behind by its next group only: {lag}"
    );
    h.stop().await;
}

/// Reads `watch` until an event of `user`.
async fn until_user(watch: &mut tonic::Streaming<pb::WatchResponse>, user: &str) {
    loop {
        let item = watch.message().await.unwrap().expect("stream open");
        if let Some(pb::watch_response::Kind::Event(e)) = item.kind {
            if e.user_id == user {
                return;
            }
        }
    }
}
