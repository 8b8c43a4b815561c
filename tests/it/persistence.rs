//! Restarts and concurrent writers: the store keeps everything and revisions
//! only ever go up.

use std::collections::{HashMap, HashSet};

use consentd::pb::{self, Answer, LocationOption};

use crate::fixture::{android, location_app, TestDaemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_everything_and_revisions_continue() {
    let mut h = TestDaemon::with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.answer("wxloc", "u1", "scope.userLocationBackground", Answer::Allow)
        .await;
    c.answer("wxloc", "u1", "scope.camera", Answer::Deny).await;
    c.answer("wxloc", "u2", "scope.record", Answer::Allow).await;
    let scopes = [
        "scope.userLocation",
        "scope.userLocationBackground",
        "scope.camera",
        "scope.record",
        "scope.werun",
    ];
    let mut before = Vec::new();
    for user in ["u1", "u2"] {
        before.push(c.setting("wxloc", user).await.auth_setting);
        for scope in scopes {
            before.push(
                [(
                    scope.to_string(),
                    c.decision("wxloc", user, scope).await.outcome() as i32 == 1,
                )]
                .into(),
            );
        }
    }
    let revision = c.revision().await;
    let app = c
        .apps()
        .get_app(pb::GetAppRequest {
            app_id: "wxloc".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .app;

    let events = |text: &str| crate::metrics::value(text, "consentd_event_log_events ");
    let logged = events(&crate::metrics::scrape(h.daemon().metrics_addr().unwrap()).await);
    assert_eq!(
        logged, 4.0,
        "two for background (location first), camera, record"
    );

    h.restart().await;
    let c = h.client();
    assert_eq!(c.revision().await, revision);
    let reopened = events(&crate::metrics::scrape(h.daemon().metrics_addr().unwrap()).await);
    assert_eq!(
        reopened, logged,
        "the log length is kept, not recounted wrong"
    );
    assert_eq!(
        c.apps()
            .get_app(pb::GetAppRequest {
                app_id: "wxloc".into()
            })
            .await
            .unwrap()
            .into_inner()
            .app,
        app
    );
    let mut after: Vec<HashMap<String, bool>> = Vec::new();
    for user in ["u1", "u2"] {
        after.push(c.setting("wxloc", user).await.auth_setting);
        for scope in scopes {
            after.push(
                [(
                    scope.to_string(),
                    c.decision("wxloc", user, scope).await.outcome() as i32 == 1,
                )]
                .into(),
            );
        }
    }
    assert_eq!(after, before);
    let next = c.answer("wxloc", "u3", "scope.camera", Answer::Allow).await;
    assert_eq!(
        next[0].revision,
        revision + 1,
        "the revision continues, never reused"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_unique_increasing_revisions() {
    let _turn = crate::fixture::heavy().await;
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..20 {
                    // Own users, plus a shared one every task fights over.
                    let user = if i % 5 == 0 {
                        "shared".to_string()
                    } else {
                        format!("t{t}-{i}")
                    };
                    let r = match i % 3 {
                        0 => c
                            .record("wxloc", &user, "scope.camera", Answer::Allow, android())
                            .await
                            .map(|r| r.revision),
                        1 => c
                            .update(pb::UpdateSettingRequest {
                                app_id: "wxloc".into(),
                                user_id: user.clone(),
                                location: LocationOption::WhileUsing.into(),
                                ..Default::default()
                            })
                            .await
                            .map(|r| r.revision),
                        _ => c
                            .record(
                                "wxloc",
                                &user,
                                "scope.userLocation",
                                Answer::Allow,
                                android(),
                            )
                            .await
                            .map(|r| r.revision),
                    };
                    match r {
                        Ok(revision) => revisions.push(revision),
                        // The settings page refuses users who were never asked.
                        Err(s) => assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}"),
                    }
                }
                revisions
            })
        })
        .collect();
    let mut committed = HashSet::new();
    for t in tasks {
        let revisions = t.await.unwrap();
        for pair in revisions.windows(2) {
            assert!(pair[0] <= pair[1], "a task's revisions never go back");
        }
        committed.extend(revisions);
    }
    // Every user ended granted where they were asked, and the log explains the state.
    let shared = c.setting("wxloc", "shared").await.auth_setting;
    assert_eq!(shared.get("scope.camera"), Some(&true));
    let verify = c.assert_consistent().await;
    assert!(verify.retained_events >= committed.len() as u64 - 1);
    assert_eq!(verify.revision, c.revision().await);
    h.stop().await;
}

/// Even when in-flight calls outlive the drain timeout (and their connections
/// still hold the services), shutdown releases the data dir: a new daemon can
/// start on it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_data_dir_even_past_the_drain_timeout() {
    let mut h = TestDaemon::with(|c| c.drain_timeout = std::time::Duration::from_millis(1)).await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    let busy: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                // Until the daemon goes away; errors after that are expected.
                while c
                    .authorize("wxloc", "u", "scope.camera", android())
                    .await
                    .is_ok()
                {}
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    h.take().shutdown().await.unwrap();
    h.start_again().await;
    assert_eq!(
        h.client()
            .decision("wxloc", "u", "scope.camera")
            .await
            .outcome(),
        pb::Outcome::Prompt
    );
    for b in busy {
        b.abort();
    }
    h.stop().await;
}

/// An export whose client stopped reading does not hold up a shutdown: the
/// export task is the daemon's, and it ends (with UNAVAILABLE for the
/// client) when the daemon stops.
#[tokio::test]
async fn a_stalled_export_ends_with_the_daemon() {
    let mut h = TestDaemon::with(|c| c.drain_timeout = std::time::Duration::from_millis(300)).await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    // More rows than the export's buffer holds, so its task blocks on the
    // client that never reads.
    let rows: Vec<pb::ExportRecord> = (0..2_000)
        .map(|i| pb::ExportRecord {
            record: Some(pb::export_record::Record::Decision(pb::StoredDecision {
                app_id: "wxloc".into(),
                user_id: format!("u{i}"),
                scope: "scope.camera".into(),
                state: pb::DecisionState::Granted.into(),
                ..Default::default()
            })),
        })
        .collect();
    c.admin().import(tokio_stream::iter(rows)).await.unwrap();
    let mut stream = c
        .admin()
        .export(pb::ExportRequest {
            include_events: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some(), "the header");
    let daemon = h.take();
    tokio::time::timeout(std::time::Duration::from_secs(10), daemon.shutdown())
        .await
        .expect("shutdown does not wait for the stalled export")
        .unwrap();
    // What the client reads next ends in an error, never a silent end.
    let mut ended = None;
    for _ in 0..5_000 {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(status) => {
                ended = Some(status);
                break;
            }
        }
    }
    assert!(ended.is_some(), "the stalled export ended without an error");
}
