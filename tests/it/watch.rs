//! Decision-change streams (issue 3): each of the seven guarantees, over real gRPC.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use consentd::{
    config::Config,
    pb::{self, authorization_client::AuthorizationClient, watch_response::Kind},
    store::Retention,
};
use tokio_stream::StreamExt as _;
use tonic::{transport::Channel, Code, Streaming};

use crate::{
    fixture::{connect, grpcurl, location_app, run_grpcurl, Client, TestDaemon},
    support::{key_of_change, key_of_event, EventKey as Key},
};

/// A daemon with two location apps registered.
async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestDaemon {
    let h = TestDaemon::with(tweak).await;
    for app in ["wxa", "wxb"] {
        h.client().register(location_app(app)).await;
    }
    h
}

async fn start() -> TestDaemon {
    start_with(|_| {}).await
}

fn from(revision: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        start_revision: Some(revision),
        ..Default::default()
    }
}

/// Grants then forgets scope.camera for users u{range} of `app`; returns the log it made.
async fn flips(c: &Client, app: &str, users: std::ops::Range<usize>) -> Vec<Key> {
    let mut log = Vec::new();
    for i in users {
        let u = format!("u{i}");
        log.extend(
            c.flip(app, &u, "scope.camera")
                .await
                .iter()
                .map(|ch| key_of_change(app, &u, ch)),
        );
    }
    log
}

/// Reads events until one with `revision >= until` (progress markers skipped).
async fn events_until(
    stream: &mut Streaming<pb::WatchResponse>,
    until: u64,
) -> Vec<pb::DecisionEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out
        .last()
        .is_none_or(|e: &pb::DecisionEvent| e.revision < until)
    {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events arrive in time")
            .expect("stream open")
            .expect("no error");
        if let Some(Kind::Event(e)) = item.kind {
            out.push(e);
        }
    }
    out
}

/// Asserts revisions strictly increase.
fn assert_ordered(events: &[pb::DecisionEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].revision < pair[1].revision,
            "out of order: {} then {}",
            pair[0].revision,
            pair[1].revision
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_by_app_user_and_scope() {
    let h = start().await;
    let c = h.client();
    let start = h.daemon().watch_stats().started.load(Ordering::Relaxed);
    assert_eq!(start, 0);
    let mut all = Vec::new();
    for (app, user, scope) in [
        ("wxa", "u1", "scope.camera"),
        ("wxa", "u2", "scope.record"),
        ("wxb", "u1", "scope.camera"),
        ("wxb", "u2", "scope.werun"),
    ] {
        for c in c.answer(app, user, scope, pb::Answer::Deny).await {
            all.push(key_of_change(app, user, &c));
        }
    }
    let last = all.last().unwrap().0;
    type Keep = Box<dyn Fn(&Key) -> bool>;
    let cases: Vec<(pb::WatchRequest, Keep)> = vec![
        (
            pb::WatchRequest {
                app_ids: vec!["wxa".into()],
                ..from(0)
            },
            Box::new(|k: &Key| k.1 == "wxa"),
        ),
        (
            pb::WatchRequest {
                user_ids: vec!["u1".into()],
                ..from(0)
            },
            Box::new(|k: &Key| k.2 == "u1"),
        ),
        (
            pb::WatchRequest {
                scopes: vec!["scope.camera".into(), "scope.werun".into()],
                ..from(0)
            },
            Box::new(|k: &Key| k.3 != "scope.record"),
        ),
        (
            pb::WatchRequest {
                app_ids: vec!["wxb".into()],
                user_ids: vec!["u2".into()],
                ..from(0)
            },
            Box::new(|k: &Key| k.1 == "wxb" && k.2 == "u2"),
        ),
        (from(0), Box::new(|_: &Key| true)),
    ];
    for (req, keep) in cases {
        let want: Vec<Key> = all.iter().filter(|k| keep(k)).cloned().collect();
        let mut stream = c.watch(req.clone()).await.unwrap();
        // A progress marker at `last` proves nothing else is coming.
        let mut got = Vec::new();
        loop {
            match stream.next().await.unwrap().unwrap().kind.unwrap() {
                Kind::Event(e) => got.push(key_of_event(&e)),
                Kind::Progress(p) if p.revision >= last => break,
                Kind::Progress(_) => {}
            }
        }
        assert_eq!(got, want, "filter {req:?}");
    }
    // Bad filters are refused up front.
    for (req, field) in [
        (
            pb::WatchRequest {
                scopes: vec!["scope.nope".into()],
                ..Default::default()
            },
            "scopes[0]",
        ),
        (
            pb::WatchRequest {
                app_ids: vec!["".into()],
                ..Default::default()
            },
            "app_ids[0]",
        ),
        (
            pb::WatchRequest {
                user_ids: vec!["a b".into()],
                ..Default::default()
            },
            "user_ids[0]",
        ),
    ] {
        let status = c.watch(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_under_concurrent_writers_equals_the_log() {
    let _turn = crate::fixture::heavy().await;
    let h = start().await;
    let c = h.client();
    // Some history first.
    let mut acked: Vec<Key> = Vec::new();
    for i in 0..20 {
        let user = format!("pre{i}");
        acked.extend(
            c.flip("wxa", &user, "scope.camera")
                .await
                .iter()
                .map(|c| key_of_change("wxa", &user, c)),
        );
    }
    // Writers keep going while a subscriber replays from 0 and crosses the seam.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let channel = h.client().channel;
            tokio::spawn(async move {
                let c = Client { channel };
                let mut acked = Vec::new();
                for i in 0..25 {
                    let user = format!("w{w}-{i}");
                    let app = if i % 2 == 0 { "wxa" } else { "wxb" };
                    acked.extend(
                        c.flip(app, &user, "scope.record")
                            .await
                            .iter()
                            .map(|c| key_of_change(app, &user, c)),
                    );
                }
                acked
            })
        })
        .collect();
    let mut stream = c.watch(from(0)).await.unwrap();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    acked.sort();
    let last = acked.last().unwrap().0;
    let got: Vec<Key> = events_until(&mut stream, last)
        .await
        .iter()
        .map(key_of_event)
        .collect();
    assert_eq!(got.len(), 20 * 2 + 8 * 25 * 2);
    assert_eq!(
        got, acked,
        "the stream is exactly the acknowledged log, in order"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_without_start_sees_only_new_events() {
    let h = start().await;
    let c = h.client();
    c.flip("wxa", "old", "scope.camera").await;
    let mut stream = c.watch(pb::WatchRequest::default()).await.unwrap();
    let changes = c
        .answer("wxa", "new", "scope.camera", pb::Answer::Allow)
        .await;
    let got = events_until(&mut stream, changes[0].revision).await;
    assert_eq!(
        got.iter().map(key_of_event).collect::<Vec<_>>(),
        vec![key_of_change("wxa", "new", &changes[0])]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_has_no_gap_and_no_duplicate() {
    let h = start().await;
    let c = h.client();
    let mut log = Vec::new();
    log.extend(flips(&c, "wxa", 0..10).await);
    let mut stream = c.watch(from(0)).await.unwrap();
    let first = events_until(&mut stream, log[6].0).await;
    let last_seen = first.last().unwrap().revision;
    drop(stream);
    // The server frees the subscription promptly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.daemon().watch_stats().active.load(Ordering::Relaxed) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription not freed after disconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.extend(flips(&c, "wxa", 10..15).await);
    let mut resumed = c.watch(from(last_seen)).await.unwrap();
    let rest = events_until(&mut resumed, log.last().unwrap().0).await;
    let mut got: Vec<Key> = first.iter().chain(rest.iter()).map(key_of_event).collect();
    assert_ordered(&first.iter().chain(rest.iter()).cloned().collect::<Vec<_>>());
    got.dedup();
    assert_eq!(
        got.len(),
        first.len() + rest.len(),
        "no duplicate across the resume"
    );
    assert_eq!(got, log);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_state_and_old_starts_get_out_of_range() {
    let h = start_with(|c| {
        c.retention = Retention {
            max_events: Some(6),
            max_age: None,
        }
    })
    .await;
    let c = h.client();
    let mut log = Vec::new();
    for i in 0..10 {
        let u = format!("u{i}");
        log.extend(
            c.answer("wxa", &u, "scope.camera", pb::Answer::Allow)
                .await
                .iter()
                .map(|c| key_of_change("wxa", &u, c)),
        );
        log.extend(
            c.answer("wxa", &u, "scope.record", pb::Answer::Deny)
                .await
                .iter()
                .map(|c| key_of_change("wxa", &u, c)),
        );
    }
    let mut admin = h.client().admin();
    let compacted = admin
        .compact(pb::CompactRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(compacted.removed_events, 14);
    assert_eq!(compacted.compacted_through, log[13].0);
    let verify = c.assert_consistent().await;
    assert_eq!((verify.retained_events, verify.decisions), (6, 20));

    let status = c.watch(from(0)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let oldest = format!(
        "the oldest retained revision is {}",
        compacted.compacted_through + 1
    );
    assert!(status.message().contains(&oldest), "{}", status.message());
    // From the horizon on, the retained history replays exactly.
    let mut stream = c.watch(from(compacted.compacted_through)).await.unwrap();
    let got: Vec<Key> = events_until(&mut stream, log.last().unwrap().0)
        .await
        .iter()
        .map(key_of_event)
        .collect();
    assert_eq!(got, log[14..].to_vec());
    // Decision state is never trimmed.
    let setting = c
        .auth()
        .get_setting(pb::GetSettingRequest {
            app_id: "wxa".into(),
            user_id: "u0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        setting.auth_setting,
        [
            ("scope.camera".to_string(), true),
            ("scope.record".to_string(), false)
        ]
        .into()
    );
    // Starts ahead of the store are refused too.
    let status = c.watch(from(10_000)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_markers_never_run_ahead_of_sent_events() {
    let h = start().await;
    let c = h.client();
    // Watch one app while both change; every marker must cover only events already sent.
    let mut stream = c
        .watch(pb::WatchRequest {
            app_ids: vec!["wxb".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let writer = {
        let channel = h.client().channel;
        tokio::spawn(async move {
            let c = Client { channel };
            let mut wxb = Vec::new();
            for i in 0..40 {
                let u = format!("u{i}");
                let app = if i % 3 == 0 { "wxb" } else { "wxa" };
                let changes = c.flip(app, &u, "scope.camera").await;
                if app == "wxb" {
                    wxb.extend(changes.iter().map(|c| key_of_change(app, &u, c)));
                }
                if i % 10 == 0 {
                    // Let the stream go idle so markers interleave with events.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
            wxb
        })
    };
    let mut received: Vec<Key> = Vec::new();
    let mut markers = 0;
    let wxb = writer.await.unwrap();
    let final_revision = c.revision().await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .kind
            .unwrap()
        {
            Kind::Event(e) => received.push(key_of_event(&e)),
            Kind::Progress(p) => {
                markers += 1;
                let owed = wxb.iter().filter(|k| k.0 <= p.revision).count();
                assert!(
                    received.len() >= owed,
                    "marker {} claims events not yet sent",
                    p.revision
                );
                if p.revision >= final_revision {
                    break;
                }
            }
        }
    }
    assert!(
        markers >= 2,
        "idle filtered stream got {markers} progress markers"
    );
    assert_eq!(received, wxb);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_receive_every_event() {
    let _turn = crate::fixture::heavy().await;
    // No idle markers: 1,000 streams x 10/s of them only compete with the events.
    let h = start_with(|c| c.watch.progress_interval = Duration::from_secs(300)).await;
    let c = h.client();
    let base = c.revision().await;
    // Spread the streams over a few connections; every subscriber reads as it goes.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(connect(h.daemon().local_addr().unwrap()).await);
    }
    let (total, events) = (50u64, 25);
    let last = base + total;
    let mut readers = Vec::new();
    for i in 0..1000 {
        let mut auth = AuthorizationClient::new(channels[i % channels.len()].clone());
        let mut stream = auth.watch(from(base)).await.unwrap().into_inner();
        readers.push(tokio::spawn(async move {
            events_until(&mut stream, last)
                .await
                .iter()
                .map(key_of_event)
                .collect::<Vec<_>>()
        }));
    }
    assert_eq!(
        h.daemon().watch_stats().active.load(Ordering::Relaxed),
        1000
    );
    let mut log = Vec::new();
    for i in 0..events {
        let u = format!("u{i}");
        log.extend(
            c.flip("wxa", &u, "scope.camera")
                .await
                .iter()
                .map(|c| key_of_change("wxa", &u, c)),
        );
    }
    assert_eq!(log.len() as u64, total);
    assert_eq!(log.last().unwrap().0, last);
    for r in readers {
        assert_eq!(r.await.unwrap(), log);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_caught_up_from_the_log_not_buffered() {
    let _turn = crate::fixture::heavy().await;
    // A tiny broadcast ring and stream buffer force the slow reader off the ring.
    let h = start_with(|c| {
        c.publish_capacity = 4;
        c.watch.stream_buffer = 2;
        c.watch.catch_up_page = 16;
    })
    .await;
    let c = h.client();
    // A client that reads nothing and advertises a tiny window: the server
    // cannot park events in the connection, so its task must wait and lag.
    let tiny = Channel::from_shared(format!("http://{}", h.daemon().local_addr().unwrap()))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut slow = AuthorizationClient::new(tiny)
        .watch(from(0))
        .await
        .unwrap()
        .into_inner();
    // hyper buffers up to 400 KB per stream before the task itself must wait:
    // write well past that (4,000 events of ~175 bytes) from parallel writers.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut log = Vec::new();
                for i in 0..250 {
                    let u = format!("{w}-{i}-{}", "x".repeat(110));
                    log.extend(
                        c.flip("wxa", &u, "scope.camera")
                            .await
                            .iter()
                            .map(|ch| key_of_change("wxa", &u, ch)),
                    );
                }
                log
            })
        })
        .collect();
    let mut log = Vec::new();
    for w in writers {
        log.extend(w.await.unwrap());
    }
    log.sort();
    let stats = h.daemon().watch_stats();
    // Its task is parked on the full stream while the ring moves on.
    assert_eq!(stats.lagged.load(Ordering::Relaxed), 0);
    // Now it reads, and gets every event exactly once, in order.
    let got: Vec<Key> = events_until(&mut slow, log.last().unwrap().0)
        .await
        .iter()
        .map(key_of_event)
        .collect();
    assert_eq!(got, log);
    assert!(
        stats.lagged.load(Ordering::Relaxed) >= 1,
        "the slow reader lagged the ring"
    );
    assert!(
        stats.catch_ups.load(Ordering::Relaxed) >= 2,
        "replay and lag recovery read the log"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_a_resumable_unavailable() {
    let mut h = start().await;
    let c = h.client();
    let mut log = Vec::new();
    log.extend(flips(&c, "wxa", 0..5).await);
    let mut stream = c.watch(from(0)).await.unwrap();
    let mut seen = events_until(&mut stream, log.last().unwrap().0).await;
    let shutdown = tokio::spawn({
        let daemon = h.take();
        async move { daemon.shutdown().await.unwrap() }
    });
    // Markers may precede the end; the end is UNAVAILABLE naming the revision to resume from.
    let status = loop {
        match stream
            .next()
            .await
            .expect("the stream ends with a status, not silently")
        {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    shutdown.await.unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    let resume: u64 = status
        .message()
        .rsplit("start_revision ")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {:?}", status.message()));
    assert_eq!(resume, log.last().unwrap().0);

    // Restart on the same data dir: writes continue, the subscriber resumes without loss.
    h.start_again().await;
    let c = h.client();
    log.extend(flips(&c, "wxa", 5..8).await);
    let mut resumed = c.watch(from(resume)).await.unwrap();
    seen.extend(events_until(&mut resumed, log.last().unwrap().0).await);
    assert_eq!(seen.iter().map(key_of_event).collect::<Vec<_>>(), log);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_always_equals_the_folded_log() {
    let h = start().await;
    let c = h.client();
    for i in 0..30 {
        let u = format!("u{}", i % 7);
        match i % 4 {
            0 => drop(
                c.answer("wxa", &u, "scope.userLocationBackground", pb::Answer::Allow)
                    .await,
            ),
            1 => drop(c.remove("wxa", &u).await),
            2 => drop(c.answer("wxa", &u, "scope.camera", pb::Answer::Deny).await),
            _ => drop(c.answer("wxb", &u, "scope.record", pb::Answer::Allow).await),
        }
    }
    // Fold the whole stream ourselves and compare with GetSetting for everyone.
    let last = c.revision().await;
    let mut stream = c.watch(from(0)).await.unwrap();
    let mut folded: BTreeMap<(String, String, String), i32> = BTreeMap::new();
    for e in events_until(&mut stream, last).await {
        let key = (e.app_id.clone(), e.user_id.clone(), e.scope.clone());
        assert_eq!(
            folded
                .get(&key)
                .copied()
                .unwrap_or(pb::DecisionState::NotDetermined as i32),
            e.old_state,
            "event {} continues the state",
            e.revision
        );
        if e.new_state == pb::DecisionState::NotDetermined as i32 {
            folded.remove(&key);
        } else {
            folded.insert(key, e.new_state);
        }
    }
    for app in ["wxa", "wxb"] {
        for u in 0..7 {
            let user = format!("u{u}");
            let setting = c
                .auth()
                .get_setting(pb::GetSettingRequest {
                    app_id: app.into(),
                    user_id: user.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .auth_setting;
            let want: std::collections::HashMap<String, bool> = folded
                .iter()
                .filter(|((a, u2, _), _)| a == app && *u2 == user)
                .map(|((_, _, s), st)| (s.clone(), *st == pb::DecisionState::Granted as i32))
                .collect();
            assert_eq!(setting, want, "{app}/{user}");
        }
    }
    h.client().assert_consistent().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_streams_watch_events() {
    let Some(grpcurl) = grpcurl() else { return };
    let h = start().await;
    let c = h.client();
    let changes = c
        .answer("wxa", "u1", "scope.camera", pb::Answer::Allow)
        .await;
    c.answer("wxb", "u1", "scope.camera", pb::Answer::Deny)
        .await;
    // Replays the log, then streams live until -max-time ends the call.
    let filter = r#"{"start_revision": 0, "app_ids": ["wxa"]}"#;
    let (_, stdout, stderr) = run_grpcurl(
        grpcurl,
        &["-max-time", "1", "-d", filter],
        h.addr(),
        &["consent.v1.Authorization/Watch"],
    )
    .await;
    assert!(
        stderr.contains("DeadlineExceeded"),
        "the stream stays open until the deadline: {stderr}"
    );
    let expected_event = format!(
        r#""event": {{
    "revision": "{}",
    "appId": "wxa",
    "userId": "u1",
    "scope": "scope.camera",
    "oldState": "DECISION_STATE_NOT_DETERMINED",
    "newState": "DECISION_STATE_GRANTED",
    "cause": "CAUSE_POPUP","#,
        changes[0].revision
    );
    assert!(stdout.contains(&expected_event), "{stdout}");
    assert!(!stdout.contains("wxb"), "the app filter applies: {stdout}");
    assert!(
        stdout.contains(r#""progress": {"#),
        "idle markers appear: {stdout}"
    );
    h.stop().await;
}
