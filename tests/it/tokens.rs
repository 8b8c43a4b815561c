//! Consistency tokens: the `consentd-min-revision` request header (model:
//! `src/store/mod.rs`, "Consistency tokens"), on whichever store
//! `CONSENTD_TEST_STORE` names. The etcd side (another daemon's view, a
//! view that lags) is in `etcd.rs` and the store's own tests.

use std::time::{Duration, Instant};

use consentd::{grpc::MIN_REVISION_HEADER, pb};
use tonic::Code;

use crate::{
    fixture::{android, location_app, TestDaemon},
    support::authorize_req,
};

/// `message` with the consistency token `token`.
pub(crate) fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert(MIN_REVISION_HEADER, token.parse().expect("ASCII token"));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_met_or_refused_with_the_numbers() {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxtok")).await;
    c.answer("wxtok", "u", "scope.camera", pb::Answer::Allow)
        .await;
    let revision = c.revision().await;

    // Met: the revision of the caller's own write, on reads, writes, Admin
    // and Watch alike.
    let granted = c
        .auth()
        .authorize(with_token(
            authorize_req("wxtok", "u", "scope.camera", android()),
            &revision.to_string(),
        ))
        .await
        .expect("a token the view has is met")
        .into_inner();
    assert_eq!(
        granted.decision.unwrap().outcome(),
        pb::Outcome::Granted,
        "the answer reflects the write"
    );
    c.admin()
        .verify(with_token(pb::VerifyRequest {}, "0"))
        .await
        .expect("token 0 is always met");
    let mut watch = c
        .auth()
        .watch(with_token(
            pb::WatchRequest {
                start_revision: Some(0),
                ..Default::default()
            },
            &revision.to_string(),
        ))
        .await
        .expect("Watch takes a token too")
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());

    // Beyond every commit: OUT_OF_RANGE at once, naming both numbers.
    let ahead = revision + 1000;
    let started = Instant::now();
    let status = c
        .auth()
        .authorize(with_token(
            authorize_req("wxtok", "u", "scope.camera", android()),
            &ahead.to_string(),
        ))
        .await
        .expect_err("a revision never given out");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&ahead.to_string())
            && status.message().contains(&revision.to_string()),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused without waiting out the cap: {:?}",
        started.elapsed()
    );
    let status = c
        .auth()
        .record_decision(with_token(
            crate::support::record_req("wxtok", "u", "scope.camera", pb::Answer::Deny, android()),
            &ahead.to_string(),
        ))
        .await
        .expect_err("a write with an unmet token does not run");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(c.revision().await, revision, "nothing was written");

    // Malformed: INVALID_ARGUMENT naming the header and the value.
    for bad in ["abc", "-1", "+3", "1.5", "18446744073709551616"] {
        let status = c
            .auth()
            .authorize(with_token(
                authorize_req("wxtok", "u", "scope.camera", android()),
                bad,
            ))
            .await
            .expect_err(bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(
            status.message().contains(MIN_REVISION_HEADER)
                && status.message().contains(&format!("{bad:?}")),
            "{status:?}"
        );
    }
    h.stop().await;
}
