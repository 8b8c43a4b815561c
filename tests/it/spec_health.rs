//! grpc.health.v1: the daemon reports SERVING, overall and per service.

use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

use crate::util::TestDaemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let mut h = TestDaemon::start().await;
    for round in ["fresh", "after a restart"] {
        for service in ["", "consent.v1.Authorization", "consent.v1.Apps"] {
            let resp = h
                .health()
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("health of {service:?} ({round}): {s:?}"))
                .into_inner();
            assert_eq!(
                resp.status(),
                ServingStatus::Serving,
                "{service:?} ({round})"
            );
        }
        if round == "fresh" {
            h.restart().await;
        }
    }
    h.stop().await;
}
