//! Watch fan-out benchmark: `cargo bench --bench watch`.
//!
//! Starts the release `consentd` as a separate process on a temp dir, opens K
//! live subscribers (spread over connections), drives a writer at a fixed
//! rate, and reports per scenario: events delivered (must be K x written),
//! write-to-receive latency p50/p99/max (client clock: from sending the
//! RecordDecision to a subscriber receiving its event, so it includes the
//! durable group commit), and the daemon's RSS growth per idle stream.
//! Results also go to `target/bench-watch.json`.
//!
//! Environment: `BENCH_SECONDS` (default 3) per scenario.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use consentd::pb::{
    self, apps_client::AppsClient, authorization_client::AuthorizationClient, watch_response::Kind,
};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

#[path = "support/process.rs"]
#[allow(dead_code)] // shared with the load bench, which uses all of it
mod process;

use process::Proc;

/// The release daemon on a temp dir that lives as long as it does.
struct Daemon {
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn spawn() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Daemon {
            proc: Proc::daemon(&dir.path().join("data"), &[]),
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proc.addr
    }

    fn rss_kib(&self) -> u64 {
        self.proc.status_kib("VmRSS:")
    }

    fn cpu_ticks(&self) -> u64 {
        self.proc.cpu_ticks()
    }
}

fn client() -> pb::ClientInfo {
    pb::ClientInfo {
        platform: pb::Platform::Android.into(),
        host_version: "8.0.5".into(),
        sdk_version: "3.0.0".into(),
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Result {
    subscribers: usize,
    rate: u64,
    written: usize,
    delivered: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    server_cpu_pct: f64,
}

async fn scenario(
    daemon: &Daemon,
    subscribers: usize,
    rate: u64,
    seconds: u64,
    tag: &str,
) -> Result {
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..subscribers.div_ceil(100) {
            v.push(connect(daemon.addr()).await);
        }
        v
    };
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = (rate * seconds) as usize;
    let mut readers = Vec::new();
    for i in 0..subscribers {
        let mut auth = AuthorizationClient::new(channels[i % channels.len()].clone());
        let mut stream = auth
            .watch(pb::WatchRequest {
                app_ids: vec!["wxbench".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let sent_at = sent_at.clone();
        let prefix = format!("{tag}-");
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total);
            while latencies.len() < total {
                let item = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await
                {
                    Ok(Some(Ok(item))) => item,
                    _ => break,
                };
                if let Some(Kind::Event(e)) = item.kind {
                    let now = Instant::now();
                    if e.user_id.starts_with(&prefix) {
                        let t0 = sent_at.lock().unwrap().get(&e.user_id).copied();
                        if let Some(t0) = t0 {
                            latencies.push(now.duration_since(t0).as_secs_f64() * 1e3);
                        }
                    }
                }
            }
            latencies
        }));
    }
    let writer_channel = connect(daemon.addr()).await;
    let cpu0 = daemon.cpu_ticks();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut writes = Vec::with_capacity(total);
    for seq in 0..total {
        tick.tick().await;
        let user = format!("{tag}-{seq}");
        sent_at.lock().unwrap().insert(user.clone(), Instant::now());
        let mut auth = AuthorizationClient::new(writer_channel.clone());
        writes.push(tokio::spawn(async move {
            auth.record_decision(pb::RecordDecisionRequest {
                lifetime: None,
                app_id: "wxbench".into(),
                user_id: user,
                scope: "scope.camera".into(),
                answer: pb::Answer::Allow.into(),
                client: Some(client()),
            })
            .await
            .unwrap();
        }));
    }
    for w in writes {
        w.await.unwrap();
    }
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let server_cpu_pct = (daemon.cpu_ticks() - cpu0) as f64 / ticks_per_sec / elapsed * 100.0;
    all.sort_by(f64::total_cmp);
    Result {
        subscribers,
        rate,
        written: total,
        delivered: all.len(),
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().copied().unwrap_or(f64::NAN),
        server_cpu_pct,
    }
}

async fn idle_stream_memory(daemon: &Daemon, streams: usize) -> (u64, u64) {
    let before = daemon.rss_kib();
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(100) {
        channels.push(connect(daemon.addr()).await);
    }
    let mut open = Vec::new();
    for i in 0..streams {
        let mut auth = AuthorizationClient::new(channels[i % channels.len()].clone());
        open.push(
            auth.watch(pb::WatchRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = daemon.rss_kib();
    drop(open);
    (before, after)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
        let daemon = Daemon::spawn();
        let channel = connect(daemon.addr()).await;
        let app = pb::App { app_id: "wxbench".into(), kind: pb::AppKind::MiniProgram.into(), ..Default::default() };
        AppsClient::new(channel).register_app(pb::RegisterAppRequest { app: Some(app) }).await.unwrap();

        let (before, after) = idle_stream_memory(&daemon, 1000).await;
        let per_stream = (after.saturating_sub(before)) as f64 / 1000.0;
        println!("idle streams: RSS {before} KiB -> {after} KiB with 1000 open: {per_stream:.1} KiB per idle stream");

        let mut results = Vec::new();
        for (i, (subs, rate)) in [(1, 1000), (100, 1000), (1000, 100), (1000, 1000)].into_iter().enumerate() {
            results.push(scenario(&daemon, subs, rate, seconds, &format!("s{i}")).await);
        }
        println!("\n| subscribers | events/s | written | delivered | p50 ms | p99 ms | max ms | daemon CPU % |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &results {
            println!(
                "| {} | {} | {} | {} ({}) | {:.2} | {:.2} | {:.2} | {:.0} |",
                r.subscribers,
                r.rate,
                r.written,
                r.delivered,
                if r.delivered == r.written * r.subscribers { "all" } else { "MISSING" },
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.server_cpu_pct
            );
        }
        let json = serde_json::json!({
            "idle_stream_kib": per_stream,
            "scenarios": results.iter().map(|r| serde_json::json!({
                "subscribers": r.subscribers, "events_per_sec": r.rate, "written": r.written,
                "delivered": r.delivered, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
                "daemon_cpu_pct": r.server_cpu_pct,
            })).collect::<Vec<_>>(),
        });
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-watch.json");
        std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        println!("\nwrote {}", out.display());
        assert!(results.iter().all(|r| r.delivered == r.written * r.subscribers), "events were lost");
    });
}
