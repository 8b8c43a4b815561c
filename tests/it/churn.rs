//! Churn: 10,000 Watch subscribers connecting and disconnecting in waves while
//! writes go on. Every stream gets what it asked for, subscriptions are freed,
//! and the daemon's memory returns near its baseline (no leak per stream).

use std::time::Duration;

use consentd::pb::{self, watch_response::Kind};
use tokio_stream::StreamExt as _;

use crate::fixture::{connect, location_app, Client, TestDaemon};

/// This process's resident memory (the daemon runs in-process here).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscribers_in_waves_leave_no_trace() {
    let _turn = crate::fixture::heavy().await;
    const WAVES: usize = 5;
    const PER_WAVE: usize = 2_000;
    // Streams are opened thousands at a time before anyone reads: keep idle
    // progress markers out of the way (the h2 client GOAWAYs a connection
    // holding too many unread small frames).
    let h = TestDaemon::with(|c| c.watch.progress_interval = Duration::from_secs(300)).await;
    let c = h.client();
    c.register(location_app("wxchurn")).await;
    let channels = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(connect(h.addr()).await);
        }
        v
    };
    // A sustained 95/5 Authorize/RecordDecision load runs through every wave,
    // on its own app (the subscribers filter it out).
    c.register(location_app("wxload")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|t| {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut calls, mut worst) = (0u64, Duration::ZERO);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = std::time::Instant::now();
                    let user = format!("load{t}-{}", calls % 50);
                    if calls % 20 == 0 {
                        // Repeats of the same answer are fine; anything else is not.
                        let r = c
                            .record(
                                "wxload",
                                &user,
                                "scope.camera",
                                pb::Answer::Allow,
                                crate::fixture::android(),
                            )
                            .await;
                        assert!(r.is_ok(), "{r:?}");
                    } else {
                        c.authorize("wxload", &user, "scope.record", crate::fixture::android())
                            .await
                            .unwrap();
                    }
                    worst = worst.max(started.elapsed());
                    calls += 1;
                }
                (calls, worst)
            })
        })
        .collect();
    // One warm-up wave so allocator pools exist before the baseline.
    let mut baseline = 0;
    for wave in 0..=WAVES {
        let start = c.revision().await;
        let mut streams = Vec::with_capacity(PER_WAVE);
        for i in 0..PER_WAVE {
            let client = Client {
                channel: channels[i % channels.len()].clone(),
            };
            let req = pb::WatchRequest {
                start_revision: Some(start),
                app_ids: vec!["wxchurn".into()],
                ..Default::default()
            };
            streams.push(client.watch(req).await.unwrap());
        }
        assert_eq!(
            h.daemon()
                .watch_stats()
                .active
                .load(std::sync::atomic::Ordering::Relaxed),
            PER_WAVE as u64
        );
        // A write every stream must see, then half of them read it and all disconnect.
        let change = c
            .answer(
                "wxchurn",
                &format!("wave{wave}"),
                "scope.camera",
                pb::Answer::Allow,
            )
            .await;
        let revision = change[0].revision;
        let readers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        loop {
                            let item = tokio::time::timeout(Duration::from_secs(30), s.next())
                                .await
                                .unwrap()
                                .unwrap()
                                .unwrap();
                            if let Some(Kind::Event(e)) = item.kind {
                                assert_eq!(e.revision, revision);
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for r in readers {
            r.await.unwrap();
        }
        // Every stream is gone; the daemon frees each subscription.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while h
            .daemon()
            .watch_stats()
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "subscriptions of wave {wave} not freed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rss = rss_kib();
        if wave == 0 {
            baseline = rss;
        } else {
            eprintln!("churn: after wave {wave} ({} streams so far): RSS {rss} KiB (baseline {baseline} KiB)", wave * PER_WAVE);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut calls, mut worst) = (0, Duration::ZERO);
    for l in load {
        let (n, w) = l.await.unwrap();
        calls += n;
        worst = worst.max(w);
    }
    eprintln!("churn: {calls} mixed calls alongside, slowest {worst:?}");
    assert!(calls > 1000, "the load kept going ({calls} calls)");
    assert!(
        worst < Duration::from_secs(5),
        "latency stayed bounded: slowest call {worst:?}"
    );
    let end = rss_kib();
    // 10,000 streams came and went: memory must not have grown by anything
    // like their sum (they held ~15 KiB each while open).
    assert!(
        end < baseline + 16 * 1024,
        "RSS grew from {baseline} KiB to {end} KiB over {} streams",
        WAVES * PER_WAVE
    );
    h.stop().await;
}
