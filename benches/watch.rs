//! Watch fan-out benchmark: `cargo bench --bench watch`.
//!
//! Three servers run as separate processes for the whole run:
//! - `durable`: the release `consentd` on a temp dir (the default config:
//!   every group is flushed before it is published);
//! - `relaxed`: the same with `flush_on_commit = false`, which takes the
//!   fsync out of the path, so what is left is closest to publish-to-receive;
//! - `bare`: the bare tonic broadcast (`support/echo.rs`: RecordDecision sends
//!   a ready `WatchResponse` on a `tokio::sync::broadcast` that each Watch
//!   stream follows; no store, no filter, no commit).
//!
//! Each scenario (K live subscribers, one writer recording at R events/s) runs
//! `BENCH_ROUNDS` rounds; in every round each server gets the same load in
//! turn (the order rotates per round), so every ratio compares neighbouring
//! measurements on this noisy machine. Latency is write-to-receive on the
//! client's clock: from sending the RecordDecision to a subscriber receiving
//! its event (for consentd that includes the commit). Spread is the time
//! from the event's first receipt by any subscriber to this subscriber's:
//! the fan-out alone, with the commit left out for both servers. Reported
//! per scenario and server: the medians over rounds of p50/p99/max latency,
//! spread p50/p99 and server CPU per delivered event, and the median of the
//! per-round ratios to the bare broadcast. Every event must reach every
//! subscriber. Before the scenarios: server RSS growth per idle stream (1,000
//! open), for consentd and for the bare server. Results also go to
//! `target/bench-watch.json`.
//!
//! Environment: `BENCH_SECONDS` (default 2) per measurement, `BENCH_ROUNDS`
//! (default 5), `BENCH_SCENARIOS` (default `1x1000,100x1000,1000x100`;
//! `1000x1000` saturates the two cores), `BENCH_SERVERS` (default
//! `bare,durable,relaxed`; an entry `label=relaxed@/path/to/consentd` adds
//! another build of the daemon, e.g. an older commit, to the same run).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
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

#[path = "support/echo.rs"]
mod echo;

use process::Proc;

const APP: &str = "wxbench";

/// One server under test, alive for the whole run.
struct Server {
    name: String,
    proc: Proc,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// `mode` is `durable` (the default config) or `relaxed` (no flush).
    async fn daemon(name: &str, mode: &str, binary: Option<&str>) -> Server {
        let config = match mode {
            "durable" => "",
            "relaxed" => "flush_on_commit = false\n",
            other => panic!("unknown daemon mode {other}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("consentd.toml");
        std::fs::write(&file, config).unwrap();
        let (data, args) = (
            dir.path().join("data"),
            ["--config", file.to_str().unwrap()],
        );
        let proc = match binary {
            Some(binary) => Proc::daemon_bin(std::path::Path::new(binary), &data, &args),
            None => Proc::daemon(&data, &args),
        };
        let app = pb::App {
            app_id: APP.into(),
            kind: pb::AppKind::MiniProgram.into(),
            ..Default::default()
        };
        AppsClient::new(connect(proc.addr).await)
            .register_app(pb::RegisterAppRequest { app: Some(app) })
            .await
            .unwrap();
        Server {
            name: name.to_owned(),
            proc,
            _dir: Some(dir),
        }
    }

    fn bare() -> Server {
        Server {
            name: "bare".into(),
            proc: echo::spawn(),
            _dir: None,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proc.addr
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

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// One measurement of one server.
#[derive(Clone, Copy)]
struct Sample {
    delivered: usize,
    expected: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// After the first subscriber got the event, how long until this one did.
    spread_p50_ms: f64,
    spread_p99_ms: f64,
    /// Server CPU (user + system) per delivered event.
    cpu_us_per_event: f64,
}

/// K subscribers (100 per connection) follow the stream while one writer
/// records `rate` events/s for `seconds`; each event is a new user whose id
/// carries its sequence number, so a reader finds its send time without a lock.
async fn measure(
    server: &Server,
    subscribers: usize,
    rate: u64,
    seconds: f64,
    tag: &str,
) -> Sample {
    let total = (rate as f64 * seconds) as usize;
    let mut channels = Vec::new();
    for _ in 0..subscribers.div_ceil(100) {
        channels.push(connect(server.addr()).await);
    }
    let base = Instant::now();
    // Nanoseconds after `base` + 1 at which event `seq` was sent (0: not yet).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let prefix = format!("{tag}-");
    let mut readers = Vec::new();
    for i in 0..subscribers {
        let mut auth = AuthorizationClient::new(channels[i % channels.len()].clone());
        let mut stream = auth
            .watch(pb::WatchRequest {
                app_ids: vec![APP.into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let prefix = prefix.clone();
        readers.push(tokio::spawn(async move {
            // (sequence number, nanoseconds after `base` it arrived)
            let mut received: Vec<(usize, u64)> = Vec::with_capacity(total);
            while received.len() < total {
                let item = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await
                {
                    Ok(Some(Ok(item))) => item,
                    _ => break,
                };
                if let Some(Kind::Event(e)) = item.kind {
                    let now = base.elapsed().as_nanos() as u64;
                    let seq = e
                        .user_id
                        .strip_prefix(&prefix)
                        .and_then(|s| s.parse::<usize>().ok());
                    if let Some(seq) = seq.filter(|&s| s < total) {
                        received.push((seq, now));
                    }
                }
            }
            received
        }));
    }
    let writer = connect(server.addr()).await;
    let cpu0 = server.proc.cpu_ticks();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut writes = Vec::with_capacity(total);
    for seq in 0..total {
        tick.tick().await;
        let user = format!("{prefix}{seq}");
        sent[seq].store(base.elapsed().as_nanos() as u64 + 1, Ordering::Release);
        let mut auth = AuthorizationClient::new(writer.clone());
        writes.push(tokio::spawn(async move {
            auth.record_decision(pb::RecordDecisionRequest {
                lifetime: None,
                app_id: APP.into(),
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
    let mut received = Vec::with_capacity(total * subscribers);
    for r in readers {
        received.extend(r.await.unwrap());
    }
    let cpu_s = (server.proc.cpu_ticks() - cpu0) as f64 / 100.0; // USER_HZ
                                                                 // The first arrival of each event stands in for its publication: how
                                                                 // long the rest took after it is what the fan-out itself adds.
    let mut first = vec![u64::MAX; total];
    for &(seq, at) in &received {
        first[seq] = first[seq].min(at);
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut latency: Vec<f64> = received
        .iter()
        .map(|&(seq, at)| ms(at.saturating_sub(sent[seq].load(Ordering::Acquire) - 1)))
        .collect();
    let mut spread: Vec<f64> = received
        .iter()
        .map(|&(seq, at)| ms(at - first[seq]))
        .collect();
    latency.sort_by(f64::total_cmp);
    spread.sort_by(f64::total_cmp);
    Sample {
        delivered: received.len(),
        expected: total * subscribers,
        p50_ms: percentile(&latency, 0.50),
        p99_ms: percentile(&latency, 0.99),
        max_ms: latency.last().copied().unwrap_or(f64::NAN),
        spread_p50_ms: percentile(&spread, 0.50),
        spread_p99_ms: percentile(&spread, 0.99),
        cpu_us_per_event: cpu_s * 1e6 / received.len().max(1) as f64,
    }
}

/// Server RSS growth per open idle stream, in KiB.
async fn idle_stream_kib(server: &Server, streams: usize) -> f64 {
    let before = server.proc.status_kib("VmRSS:");
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(100) {
        channels.push(connect(server.addr()).await);
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
    let after = server.proc.status_kib("VmRSS:");
    drop(open);
    after.saturating_sub(before) as f64 / streams as f64
}

fn main() {
    if std::env::args().any(|a| a == "--echo-server") {
        echo::run();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let seconds: f64 = env("BENCH_SECONDS", 2.0);
        let rounds: usize = env("BENCH_ROUNDS", 5);
        let scenarios: Vec<(usize, u64)> = env("BENCH_SCENARIOS", "1x1000,100x1000,1000x100".to_string())
            .split(',')
            .filter_map(|s| {
                let (k, r) = s.trim().split_once('x')?;
                Some((k.parse().ok()?, r.parse().ok()?))
            })
            .collect();
        let wanted = env("BENCH_SERVERS", "bare,durable,relaxed".to_string());
        let mut servers = Vec::new();
        for entry in wanted.split(',').map(str::trim) {
            servers.push(match entry.split_once('=') {
                None if entry == "bare" => Server::bare(),
                None => Server::daemon(entry, entry, None).await,
                Some((label, spec)) => {
                    let (mode, binary) = spec.split_once('@').unwrap_or((spec, ""));
                    Server::daemon(label, mode, Some(binary).filter(|b| !b.is_empty())).await
                }
            });
        }

        let mut idle = Vec::new();
        for server in &servers {
            let kib = idle_stream_kib(server, 1000).await;
            println!("{}: {kib:.1} KiB of RSS per idle stream (1,000 open)", server.name);
            idle.push(serde_json::json!({"server": server.name, "kib_per_idle_stream": kib}));
        }

        let width = servers.iter().map(|s| s.name.len()).max().unwrap_or(4);
        // samples[scenario][server][round]
        let mut samples = vec![vec![Vec::new(); servers.len()]; scenarios.len()];
        let mut tag = 0;
        for round in 0..rounds {
            for (s, &(subs, rate)) in scenarios.iter().enumerate() {
                for k in 0..servers.len() {
                    let v = (k + round) % servers.len();
                    tag += 1;
                    let sample = measure(&servers[v], subs, rate, seconds, &format!("m{tag}")).await;
                    println!(
                        "round {round} {subs}x{rate} {:>width$}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, spread p50 {:.2} ms, p99 {:.2} ms, {:.1} us CPU/event, delivered {}/{}",
                        servers[v].name, sample.p50_ms, sample.p99_ms, sample.max_ms, sample.spread_p50_ms, sample.spread_p99_ms,
                        sample.cpu_us_per_event, sample.delivered, sample.expected
                    );
                    samples[s][v].push(sample);
                }
            }
        }

        let bare = servers.iter().position(|s| s.name == "bare");
        println!("\nmedians over {rounds} rounds of {seconds} s; x bare: the median of the per-round ratios to the bare broadcast");
        println!("latency: write-to-receive; spread: receive minus the event's first receipt by any subscriber (the fan-out alone)\n");
        println!("| subscribers x events/s | server | p50 ms | p99 ms | spread p50 ms | spread p99 ms | CPU us/event | p50 x bare | p99 x bare | spread p99 x bare | CPU x bare | delivered |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        type Metric = fn(&Sample) -> f64;
        let metrics: [(&str, Metric); 6] = [
            ("p50_ms", |r| r.p50_ms),
            ("p99_ms", |r| r.p99_ms),
            ("max_ms", |r| r.max_ms),
            ("spread_p50_ms", |r| r.spread_p50_ms),
            ("spread_p99_ms", |r| r.spread_p99_ms),
            ("cpu_us_per_event", |r| r.cpu_us_per_event),
        ];
        let mut json = Vec::new();
        for (s, &(subs, rate)) in scenarios.iter().enumerate() {
            for (v, server) in servers.iter().enumerate() {
                let runs = &samples[s][v];
                let mut row = serde_json::Map::new();
                for (name, f) in metrics {
                    let ratio = bare.map_or(f64::NAN, |b| {
                        median(runs.iter().zip(&samples[s][b]).map(|(o, b)| f(o) / f(b)).collect())
                    });
                    row.insert(name.into(), median(runs.iter().map(f).collect()).into());
                    row.insert(format!("{name}_x_bare"), ratio.into());
                }
                let all = runs.iter().all(|r| r.delivered == r.expected);
                let get = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
                let x = |k: &str| {
                    let r = get(k);
                    if r.is_finite() { format!("{r:.2}") } else { "-".into() }
                };
                println!(
                    "| {subs} x {rate} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {} |",
                    server.name, get("p50_ms"), get("p99_ms"), get("spread_p50_ms"), get("spread_p99_ms"),
                    get("cpu_us_per_event"), x("p50_ms_x_bare"), x("p99_ms_x_bare"), x("spread_p99_ms_x_bare"),
                    x("cpu_us_per_event_x_bare"), if all { "all" } else { "MISSING" }
                );
                row.insert("subscribers".into(), subs.into());
                row.insert("events_per_sec".into(), rate.into());
                row.insert("server".into(), server.name.clone().into());
                row.insert("all_delivered".into(), all.into());
                row.insert("rounds".into(), runs.iter().map(|r| serde_json::json!({
                    "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
                    "spread_p50_ms": r.spread_p50_ms, "spread_p99_ms": r.spread_p99_ms,
                    "cpu_us_per_event": r.cpu_us_per_event, "delivered": r.delivered, "expected": r.expected,
                })).collect::<Vec<_>>().into());
                json.push(serde_json::Value::Object(row));
            }
        }
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-watch.json");
        let doc = serde_json::json!({"seconds": seconds, "rounds": rounds, "idle_streams": idle, "scenarios": json});
        std::fs::write(&out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        println!("\nwrote {}", out.display());
        assert!(
            samples.iter().flatten().flatten().all(|r| r.delivered == r.expected),
            "events were lost"
        );
        for server in servers {
            server.proc.stop();
        }
    });
}
