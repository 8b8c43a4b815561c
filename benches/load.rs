//! The load benchmark: `cargo bench --bench load` (release build).
//!
//! Starts the release `consentd` on a temp dir and a bare tonic echo server
//! (this binary re-executed with `--echo-server`: same Authorize request and
//! response shapes, no logic; RecordDecision + Watch as a bare broadcast) as
//! separate processes, drives both with the same tonic load generator, and
//! reports throughput, latency p50/p90/p99/p99.9 (hdrhistogram), client and
//! daemon CPU, daemon peak RSS, and every result as a ratio to the ceiling.
//! Results: a table on stdout and `target/bench-load.json`.
//!
//! `cargo test` runs this suite as a smoke test (the target has `test =
//! true`; the first line printed says which run this is: `cargo bench`
//! passes `--bench`, `cargo test` does not, `BENCH_MODE=full|smoke`
//! overrides): the dev-profile daemon, a tenth of the durations, a 3,000-decision
//! scale store loaded in three slices, results in `bench-load-smoke.json`
//! under cargo's test scratch dir, and it fails unless every scenario made
//! calls without errors and every watch event reached every subscriber.
//!
//! Environment: `BENCH_SECONDS` (default 5) and `BENCH_WARMUP` (default 1)
//! per run; `BENCH_SCALE` (comma-separated decision counts for the scale
//! scenario, default `10000,1000000`; `BENCH_SCALE_DIR` keeps the loaded
//! stores there and reuses them); `BENCH_ONLY` (comma-separated scenario
//! names: ceiling, authorize, checkapi, record, mixed, watch, scale, soak,
//! etcd; `soak` runs only when named, or briefly in the smoke run; `etcd`
//! only when named (its own variables: `support/etcd.rs`));
//! `BENCH_COMPARE` (comma-separated `label@/path/to/consentd`: other builds,
//! e.g. older commits, run through every scenario but the soak after this
//! one, in the same run and against the same ceiling; the scale scenario
//! then loads every build, this one included, through the Import RPC, since
//! older builds cannot open this build's bulk-written store); `BENCH_PIN=1` runs the servers on CPU 0 and the load generator
//! on CPU 1 (`sched_setaffinity`; the first line says which).
//!
//! `soak`: durable UpdateSetting flips at c=64 (128 decisions, every call a
//! real change) against a fresh daemon with the default configuration
//! (retention, cache, compaction every minute) for `BENCH_SOAK_SECONDS`
//! (default 1800), sampling the daemon's RSS, the data dir's size and the
//! write rate every `BENCH_SOAK_SAMPLE` seconds (default 30); each sample
//! is printed as it is taken. `BENCH_SOAK_CONFIG=path` gives the daemon a
//! config file (e.g. `[audit] max_records = 1000000`).

use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use consentd::{
    domain::{
        AppId, AppKind, Cause, Change, DecisionState, Declarations, RawDeclarations, Scope, UserId,
    },
    pb::{self, authorization_client::AuthorizationClient, watch_response::Kind},
    store::{AppWrite, SledConfig, SledStore, Store, WriteSet},
};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

#[path = "support/process.rs"]
mod process;

#[path = "support/echo.rs"]
mod echo;

#[path = "support/reads.rs"]
mod reads;

#[path = "support/etcd.rs"]
mod etcd;

use process::{self_cpu_ticks, Proc};
use reads::{
    authorize_call, channels, check_api_call, client_info, mixed_authorize, preload, APPS,
};

// ---------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Shape {
    connections: usize,
    concurrency: usize,
}

struct Run {
    calls: u64,
    errors: u64,
    seconds: f64,
    hist: Histogram<u64>,
    server_cpu_s: f64,
    client_cpu_s: f64,
    peak_rss_kib: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
    fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    fn server_us_per_call(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.calls.max(1) as f64
    }
    fn json(&self, name: &str, ceiling: Option<f64>) -> serde_json::Value {
        json!({
            "scenario": name, "calls_per_sec": self.rate(), "errors": self.errors,
            "p50_us": self.us(0.5), "p90_us": self.us(0.9), "p99_us": self.us(0.99), "p999_us": self.us(0.999),
            "server_cpu_us_per_call": self.server_us_per_call(), "server_cpu_cores": self.server_cpu_s / self.seconds,
            "client_cpu_cores": self.client_cpu_s / self.seconds, "server_peak_rss_kib": self.peak_rss_kib,
            "ratio_to_ceiling": ceiling.map(|c| self.rate() / c),
        })
    }
    fn row(&self, name: &str, ceiling: Option<f64>) -> String {
        format!(
            "| {name} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {} |",
            self.rate(),
            self.errors,
            self.us(0.5),
            self.us(0.9),
            self.us(0.99),
            self.us(0.999),
            self.server_us_per_call(),
            self.server_cpu_s / self.seconds,
            self.client_cpu_s / self.seconds,
            self.peak_rss_kib / 1024,
            ceiling.map_or("-".into(), |c| format!("{:.2}", self.rate() / c)),
        )
    }
}

/// Whether this is a smoke run that checks the harness (`cargo test`), not a
/// benchmark. `cfg!(test)` cannot tell: with `test = true` the target is
/// built with it under `cargo bench` too. `cargo bench` passes `--bench`;
/// `cargo test` does not. `BENCH_MODE=full|smoke` overrides either way.
fn smoke() -> bool {
    static SMOKE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SMOKE.get_or_init(|| match std::env::var("BENCH_MODE").as_deref() {
        Ok("full") => false,
        Ok("smoke") => true,
        Ok(other) => panic!("BENCH_MODE must be full or smoke, not {other:?}"),
        Err(_) => !std::env::args().any(|a| a == "--bench"),
    })
}

fn secs(var: &str, default: f64) -> Duration {
    let default = if smoke() { default / 10.0 } else { default };
    Duration::from_secs_f64(
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// Runs `call(task, seq, client)` from `shape.concurrency` tasks for the
/// configured duration after a warm-up; latency is recorded after warm-up.
async fn drive<F, Fut>(server: &Proc, shape: Shape, call: F) -> Run
where
    F: Fn(usize, u64, AuthorizationClient<Channel>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    drive_spread(&[server], shape, call).await
}

/// [`drive`] with the load spread over several servers (e.g. daemons
/// sharing one etcd cluster): `shape.connections` to each, the callers
/// taking turns over every connection; server CPU is their sum, peak RSS
/// the largest.
async fn drive_spread<F, Fut>(servers: &[&Proc], shape: Shape, call: F) -> Run
where
    F: Fn(usize, u64, AuthorizationClient<Channel>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let (warmup, duration) = (secs("BENCH_WARMUP", 1.0), secs("BENCH_SECONDS", 5.0));
    let mut chans = Vec::new();
    for server in servers {
        chans.extend(channels(server.addr, shape.connections).await);
    }
    let cpu = || servers.iter().map(|s| s.cpu_ticks()).sum::<u64>();
    let call = Arc::new(call);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for t in 0..shape.concurrency {
        let client = AuthorizationClient::new(chans[t % chans.len()].clone());
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let (mut calls, mut errors) = (0u64, 0u64);
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let ok = call(t, seq, client.clone()).await.is_ok();
                seq += 1;
                if t0 >= measure_from {
                    calls += 1;
                    errors += u64::from(!ok);
                    let _ = hist.record(t0.elapsed().as_nanos() as u64);
                }
            }
            (hist, calls, errors)
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let (server0, client0) = (cpu(), self_cpu_ticks());
    tokio::time::sleep_until(end.into()).await;
    let (server1, client1) = (cpu(), self_cpu_ticks());
    let mut run = Run {
        calls: 0,
        errors: 0,
        seconds: duration.as_secs_f64(),
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
        server_cpu_s: (server1 - server0) as f64 / 100.0,
        client_cpu_s: (client1 - client0) as f64 / 100.0,
        peak_rss_kib: servers
            .iter()
            .map(|s| s.status_kib("VmHWM:"))
            .max()
            .unwrap_or(0),
    };
    for t in tasks {
        let (hist, calls, errors) = t.await.unwrap();
        run.hist.add(hist).unwrap();
        run.calls += calls;
        run.errors += errors;
    }
    run
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

fn fresh_record(task: usize, seq: u64) -> pb::RecordDecisionRequest {
    pb::RecordDecisionRequest {
        lifetime: None,
        app_id: format!("wxbench{}", task % APPS),
        user_id: format!("w{task}-{seq}"),
        scope: "scope.camera".into(),
        answer: pb::Answer::Allow.into(),
        client: Some(client_info("8.0.5")),
    }
}

async fn record_call(
    task: usize,
    seq: u64,
    mut c: AuthorizationClient<Channel>,
) -> Result<(), tonic::Status> {
    c.record_decision(fresh_record(task, seq)).await.map(drop)
}

async fn mixed_call(
    task: usize,
    seq: u64,
    mut c: AuthorizationClient<Channel>,
) -> Result<(), tonic::Status> {
    if (seq as usize + task).is_multiple_of(20) {
        c.record_decision(fresh_record(task, seq)).await.map(drop)
    } else {
        c.authorize(mixed_authorize(seq, task)).await.map(drop)
    }
}

/// K live subscribers while a writer records at `rate` events/s for the run
/// duration; returns (delivered, expected, p50 ms, p99 ms).
async fn fan_out(
    server: &Proc,
    subscribers: usize,
    rate: u64,
    app: &str,
) -> (usize, usize, f64, f64) {
    let seconds = secs("BENCH_SECONDS", 5.0).as_secs_f64().min(3.0);
    let total = (rate as f64 * seconds) as usize;
    let chans = channels(server.addr, subscribers.div_ceil(100)).await;
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut readers = Vec::new();
    for i in 0..subscribers {
        let mut auth = AuthorizationClient::new(chans[i % chans.len()].clone());
        let mut stream = auth
            .watch(pb::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        let sent_at = sent_at.clone();
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total);
            while lat.len() < total {
                match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                    Ok(Some(Ok(item))) => {
                        if let Some(Kind::Event(e)) = item.kind {
                            let now = Instant::now();
                            if let Some(t0) = sent_at.lock().unwrap().get(&e.user_id).copied() {
                                lat.push(now.duration_since(t0).as_secs_f64() * 1e3);
                            }
                        }
                    }
                    _ => break,
                }
            }
            lat
        }));
    }
    let writer = channels(server.addr, 1).await.remove(0);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut writes = Vec::new();
    for seq in 0..total {
        tick.tick().await;
        let user = format!("f{subscribers}-{rate}-{seq}");
        sent_at.lock().unwrap().insert(user.clone(), Instant::now());
        let mut auth = AuthorizationClient::new(writer.clone());
        let app = app.to_owned();
        writes.push(tokio::spawn(async move {
            let _ = auth
                .record_decision(pb::RecordDecisionRequest {
                    lifetime: None,
                    app_id: app,
                    user_id: user,
                    scope: "scope.camera".into(),
                    answer: pb::Answer::Allow.into(),
                    client: Some(client_info("8.0.5")),
                })
                .await;
        }));
    }
    for w in writes {
        let _ = w.await;
    }
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    let q = |p: f64| {
        all.get(((all.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (all.len(), total * subscribers, q(0.5), q(0.99))
}

/// Apps of the user in the user-view measurement.
const VIEW_APPS: usize = 50;

/// The user's own view at a store's size (issue 18): one user with two
/// decisions in each of [`VIEW_APPS`] apps. ListUserDecisions of all of
/// them (median of 50 calls), ResetUser of the 100 decisions (median of 10,
/// seeded again before each), then EraseUser once (it also rewrites the
/// retained log and audit trail: its cost follows their size). Latencies
/// in ms, client side, one call at a time.
async fn user_view(addr: std::net::SocketAddr) -> serde_json::Value {
    let channel = channels(addr, 1).await.remove(0);
    let mut apps = pb::apps_client::AppsClient::new(channel.clone());
    let mut auth = AuthorizationClient::new(channel.clone());
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let app_id = |i: usize| format!("wxview{i:02}");
    for i in 0..VIEW_APPS {
        let app = pb::App {
            app_id: app_id(i),
            kind: pb::AppKind::MiniProgram.into(),
            ..Default::default()
        };
        apps.register_app(pb::RegisterAppRequest { app: Some(app) })
            .await
            .unwrap();
    }
    let user = "bench-view-user";
    let seed = |mut auth: AuthorizationClient<Channel>| async move {
        for i in 0..VIEW_APPS {
            for scope in ["scope.camera", "scope.record"] {
                auth.record_decision(pb::RecordDecisionRequest {
                    lifetime: None,
                    app_id: app_id(i),
                    user_id: user.into(),
                    scope: scope.into(),
                    answer: pb::Answer::Allow.into(),
                    client: Some(client_info("8.0.5")),
                })
                .await
                .unwrap();
            }
        }
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    seed(auth.clone()).await;
    let mut list = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let r = auth
            .list_user_decisions(pb::ListUserDecisionsRequest {
                user_id: user.into(),
                page_size: VIEW_APPS as u32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        list.push(ms(t));
        assert_eq!(r.apps.len(), VIEW_APPS);
    }
    let mut reset = Vec::new();
    for round in 0..10 {
        if round > 0 {
            seed(auth.clone()).await;
        }
        let t = Instant::now();
        let r = auth
            .reset_user(pb::ResetUserRequest {
                user_id: user.into(),
            })
            .await
            .unwrap()
            .into_inner();
        reset.push(ms(t));
        assert_eq!(r.events.len(), 2 * VIEW_APPS);
    }
    seed(auth.clone()).await;
    let t = Instant::now();
    let erased = admin
        .erase_user(pb::EraseUserRequest {
            user_id: user.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let erase = ms(t);
    assert_eq!(erased.revoked_decisions as usize, 2 * VIEW_APPS);
    json!({
        "apps": VIEW_APPS, "decisions": 2 * VIEW_APPS,
        "list_ms_p50": median(list.clone()), "list_ms_max": list.iter().copied().fold(0.0, f64::max),
        "reset_ms_p50": median(reset.clone()), "reset_ms_max": reset.iter().copied().fold(0.0, f64::max),
        "erase_ms": erase, "erase_rewritten_records": erased.rewritten_records,
    })
}

/// Writes `n` decisions (and their events) straight into a fresh store: the
/// bulk path. sled 0.34 keeps the memory of a long run of large batches
/// (about 6 GB of RSS per million decisions here, flushed or not, and not
/// given back when the store is closed), so each slice of
/// [`bulk_slice`] decisions is written by a child process of its own
/// (this binary with `--bulk-load`), whose memory goes when it exits.
fn bulk_preload(dir: &Path, n: usize) -> Duration {
    let started = Instant::now();
    for start in (0..n.max(1)).step_by(bulk_slice()) {
        let end = (start + bulk_slice()).min(n);
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--bulk-load")
            .arg(dir)
            .arg(start.to_string())
            .arg(end.to_string())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "bulk load of {start}..{end} failed: {status}"
        );
    }
    started.elapsed()
}

/// One lookup of the scale scenario: a granted camera of one of `n` users
/// of app `wxscale`, spread over the users by task and sequence number.
async fn scale_lookup(
    n: usize,
    task: usize,
    seq: u64,
    mut c: AuthorizationClient<Channel>,
) -> Result<(), tonic::Status> {
    let user = (seq as usize * 7919 + task * 104_729) % n;
    c.authorize(pb::AuthorizeRequest {
        app_id: "wxscale".into(),
        user_id: format!("u{user}"),
        scope: "scope.camera".into(),
        client: Some(client_info("8.0.5")),
    })
    .await
    .map(drop)
}

/// The builds named in `BENCH_COMPARE`, as (label, path of their consentd).
fn builds(compare: &[String]) -> impl Iterator<Item = (&str, &str)> {
    compare.iter().map(|e| {
        e.split_once('@')
            .expect("BENCH_COMPARE: label@/path/to/consentd")
    })
}

/// Loads `n` granted cameras of app `wxscale` (users u0..u{n-1}, as the
/// bulk path writes them) through the Admin Import RPC: the loading path
/// every build has, so that other builds (whose data formats differ) can
/// be measured on the same store.
async fn import_preload(addr: std::net::SocketAddr, n: usize) -> Duration {
    let started = Instant::now();
    let channel = channels(addr, 1).await.remove(0);
    let mut admin = pb::admin_client::AdminClient::new(channel).max_decoding_message_size(64 << 20);
    let app = pb::App {
        app_id: "wxscale".into(),
        kind: pb::AppKind::MiniProgram.into(),
        ..Default::default()
    };
    let records = std::iter::once(pb::ExportRecord {
        record: Some(pb::export_record::Record::Header(pb::ExportHeader {
            revision: 0,
            format: 2,
        })),
    })
    .chain(std::iter::once(pb::ExportRecord {
        record: Some(pb::export_record::Record::App(app)),
    }))
    .chain((0..n).map(|i| pb::ExportRecord {
        record: Some(pb::export_record::Record::Decision(pb::StoredDecision {
            app_id: "wxscale".into(),
            user_id: format!("u{i}"),
            scope: "scope.camera".into(),
            state: pb::DecisionState::Granted.into(),
            expires_at: None,
            session_id: String::new(),
        })),
    }));
    let imported = admin
        .import(tokio_stream::iter(records))
        .await
        .unwrap_or_else(|e| panic!("import of {n} decisions: {e}"))
        .into_inner();
    assert_eq!(imported.decisions, n as u64, "import of {n} decisions");
    started.elapsed()
}

/// Decisions per bulk-load child process.
fn bulk_slice() -> usize {
    if smoke() {
        1_000
    } else {
        1_000_000
    }
}

/// The `--bulk-load DIR START END` child: registers the app on the first
/// slice, then writes users START..END in 20,000-change write jobs.
fn bulk_load_slice(args: &[String]) {
    let [dir, start, end] = args else {
        panic!("usage: --bulk-load DIR START END");
    };
    let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SledStore::open(&SledConfig {
            path: dir.into(),
            cache_capacity: 128 << 20,
            max_batch: 64,
            queue_depth: 64,
            publish_capacity: 16,
            observer: None,
            flush_on_commit: false,
            clock: consentd::clock::SystemClock::shared(),
        })
        .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let app = AppId::parse("wxscale").unwrap();
        if start == 0 {
            let raw = RawDeclarations::default();
            let declarations = Declarations::parse(AppKind::MiniProgram, raw).unwrap();
            let registration = consentd::domain::App {
                privacy_version: 0,
                id: app.clone(),
                kind: AppKind::MiniProgram,
                declarations,
                revision: 0,
                updated_at_ms: 0,
            };
            store
                .submit(Box::new(move |_| {
                    Ok(WriteSet {
                        app: Some(AppWrite::Put(registration)),
                        ..WriteSet::default()
                    })
                }))
                .await
                .unwrap();
        }
        const CHUNK: usize = 20_000;
        for from in (start..end).step_by(CHUNK) {
            let app = app.clone();
            let changes = (from..(from + CHUNK).min(end))
                .map(|i| {
                    let change = Change {
                        scope: Scope::Camera,
                        old: DecisionState::NotDetermined,
                        new: DecisionState::Granted,
                        cause: Cause::Popup,
                    };
                    let user = UserId::parse(&format!("u{i}")).unwrap();
                    let subject = consentd::domain::Subject {
                        app: app.clone(),
                        user,
                    };
                    (subject, change)
                })
                .collect();
            store
                .submit(Box::new(move |_| {
                    Ok(WriteSet {
                        changes,
                        ..WriteSet::default()
                    })
                }))
                .await
                .unwrap();
        }
        store.close().await.unwrap();
    });
}

/// One soak sample.
struct SoakSample {
    at_s: f64,
    writes: u64,
    rate: f64,
    rss_mib: f64,
    disk_mib: f64,
    cpu_us_per_write: f64,
    errors: u64,
}

/// Durable UpdateSetting flips at c=64 for `duration`, sampled every
/// `every`: 64 tasks, each alternating between two users of its own whose
/// camera it turns off and on again (128 decisions; every call a change).
async fn soak(daemon: &Proc, data: &Path, duration: Duration, every: Duration) -> Vec<SoakSample> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let chans = channels(daemon.addr, 4).await;
    let (calls, errors, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut tasks = Vec::new();
    for t in 0..64usize {
        let mut auth = AuthorizationClient::new(chans[t % chans.len()].clone());
        let (calls, errors, stop) = (calls.clone(), errors.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // preload granted the camera of every user u0..u999 in every
                // app: decision d is user u{d} of app wxbench{d % 10}.
                let d = t + 64 * (seq as usize % 2);
                let request = pb::UpdateSettingRequest {
                    app_id: format!("wxbench{}", d % APPS),
                    user_id: format!("u{d}"),
                    auth_setting: [("scope.camera".to_string(), (seq / 2) % 2 == 1)].into(),
                    ..Default::default()
                };
                let ok = match auth.update_setting(request).await {
                    Ok(r) => !r.into_inner().changes.is_empty(),
                    Err(_) => false,
                };
                calls.fetch_add(1, Ordering::Relaxed);
                errors.fetch_add(u64::from(!ok), Ordering::Relaxed);
                seq += 1;
            }
        }));
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    let (mut last_calls, mut last_cpu, mut last_at) = (0u64, daemon.cpu_ticks(), started);
    println!("| soak t s | writes | writes/s (interval) | daemon RSS MiB | data dir MiB | daemon CPU us/write | errors |");
    println!("|---|---|---|---|---|---|---|");
    while started.elapsed() < duration {
        let next = (started + every * (samples.len() as u32 + 1)).min(started + duration);
        tokio::time::sleep_until(next.into()).await;
        let (now, total, cpu) = (
            Instant::now(),
            calls.load(Ordering::Relaxed),
            daemon.cpu_ticks(),
        );
        let interval = now.duration_since(last_at).as_secs_f64();
        let done = total - last_calls;
        let sample = SoakSample {
            at_s: now.duration_since(started).as_secs_f64(),
            writes: total,
            rate: done as f64 / interval,
            rss_mib: daemon.status_kib("VmRSS:") as f64 / 1024.0,
            disk_mib: du(data) as f64 / 1048576.0,
            cpu_us_per_write: (cpu - last_cpu) as f64 * 1e4 / done.max(1) as f64,
            errors: errors.load(Ordering::Relaxed),
        };
        println!(
            "| {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {} |",
            sample.at_s,
            sample.writes,
            sample.rate,
            sample.rss_mib,
            sample.disk_mib,
            sample.cpu_us_per_write,
            sample.errors
        );
        (last_calls, last_cpu, last_at) = (total, cpu, now);
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    samples
}

fn du(path: &Path) -> u64 {
    walk(path)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn walk(path: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--echo-server") {
        echo::run();
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--bulk-load") {
        bulk_load_slice(&args[at + 1..]);
        return;
    }
    if smoke() {
        // Test-harness arguments: a listing (cargo-nextest asks for one)
        // shows no tests, and a name filter that does not match this suite
        // skips its 30 seconds.
        let filters: Vec<&String> = args
            .iter()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        if args.iter().any(|a| a == "--list")
            || filters
                .iter()
                .any(|f| !"bench_load_smoke".contains(f.as_str()))
        {
            return;
        }
    }
    // Before the runtime starts its threads, so that they inherit it.
    process::pin_self();
    let pinning = if process::pinned() {
        format!(
            "pinned (BENCH_PIN=1): servers on CPU {}, the load generator on CPU {}",
            process::SERVER_CPU,
            process::CLIENT_CPU
        )
    } else {
        "unpinned".to_owned()
    };
    if smoke() {
        println!(
            "load bench: SMOKE run, {pinning} (checks the harness; a tenth of every duration, a \
             3,000-decision scale store; not a benchmark: run `cargo bench --bench load` for figures)"
        );
    } else {
        println!("load bench: FULL run, {pinning}");
    }
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(str::to_owned).collect());
    let wants = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));
    let compare: Vec<String> = std::env::var("BENCH_COMPARE")
        .ok()
        .map(|s| {
            s.split(',')
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut rows = Vec::new();
        let mut results = Vec::new();
        let mut report = |name: &str, run: &Run, ceiling: Option<f64>| {
            if smoke() {
                assert!(run.calls > 0 && run.errors == 0, "{name}: {} calls, {} errors", run.calls, run.errors);
            }
            rows.push(run.row(name, ceiling));
            results.push(run.json(name, ceiling));
        };
        let shapes = [("c16", Shape { connections: 4, concurrency: 16 }), ("c64", Shape { connections: 4, concurrency: 64 })];

        let echo = echo::spawn();
        let mut ceilings = HashMap::new();
        if wants("ceiling") || wants("authorize") || wants("mixed") || wants("scale") {
            for (tag, shape) in shapes {
                let run = drive(&echo, shape, authorize_call).await;
                ceilings.insert(tag, run.rate());
                report(&format!("ceiling echo {tag}"), &run, None);
            }
        }
        if wants("ceiling") || wants("checkapi") {
            let run = drive(&echo, shapes[1].1, check_api_call).await;
            ceilings.insert("checkapi c64", run.rate());
            report("ceiling echo checkapi c64", &run, None);
        }
        // The echo answers RecordDecision too (a send on its broadcast, no
        // store): the ceiling for the write scenarios.
        if wants("ceiling") || wants("record") {
            let run = drive(&echo, shapes[1].1, record_call).await;
            ceilings.insert("record c64", run.rate());
            report("ceiling echo record c64", &run, None);
        }

        let dir = tempfile::tempdir().unwrap();
        let daemon = Proc::daemon(&dir.path().join("data"), &[]);
        preload(daemon.addr).await;
        if wants("authorize") {
            for (tag, shape) in shapes {
                let run = drive(&daemon, shape, authorize_call).await;
                report(&format!("authorize {tag}"), &run, ceilings.get(tag).copied());
            }
        }
        if wants("checkapi") {
            let run = drive(&daemon, shapes[1].1, check_api_call).await;
            report("checkapi c64", &run, ceilings.get("checkapi c64").copied());
        }
        // Other builds of the daemon (older commits, say) under the same
        // Authorize (and CheckApi) load, against the same ceiling.
        if wants("authorize") || wants("checkapi") {
            for (label, binary) in builds(&compare) {
                let dir = tempfile::tempdir().unwrap();
                let other = Proc::daemon_bin(Path::new(binary), &dir.path().join("data"), &[]);
                preload(other.addr).await;
                if wants("authorize") {
                    for (tag, shape) in shapes {
                        let run = drive(&other, shape, authorize_call).await;
                        report(&format!("authorize {tag} [{label}]"), &run, ceilings.get(tag).copied());
                    }
                }
                if wants("checkapi") {
                    let run = drive(&other, shapes[1].1, check_api_call).await;
                    report(&format!("checkapi c64 [{label}]"), &run, ceilings.get("checkapi c64").copied());
                }
                other.stop();
            }
        }
        if wants("mixed") {
            let run = drive(&daemon, shapes[1].1, mixed_call).await;
            report("mixed 95/5 c64", &run, ceilings.get("c64").copied());
            for (label, binary) in builds(&compare) {
                let dir = tempfile::tempdir().unwrap();
                let other = Proc::daemon_bin(Path::new(binary), &dir.path().join("data"), &[]);
                preload(other.addr).await;
                let run = drive(&other, shapes[1].1, mixed_call).await;
                report(&format!("mixed 95/5 c64 [{label}]"), &run, ceilings.get("c64").copied());
                other.stop();
            }
        }
        let mut durable_rate = None;
        if wants("record") {
            // A fresh daemon, like the other builds' below: the shared one has
            // a bigger store and the authorize runs' prompt audit behind it.
            let dir = tempfile::tempdir().unwrap();
            let fresh = Proc::daemon(&dir.path().join("data"), &[]);
            preload(fresh.addr).await;
            let run = drive(&fresh, shapes[1].1, record_call).await;
            durable_rate = Some(run.rate());
            report("record durable c64", &run, ceilings.get("record c64").copied());
            fresh.stop();
        }
        let mut fanouts = Vec::new();
        if wants("watch") {
            // Other builds on daemons of their own, preloaded like this one,
            // each configuration measured on every build back to back.
            let mut others = Vec::new();
            for (label, binary) in builds(&compare) {
                let dir = tempfile::tempdir().unwrap();
                let other = Proc::daemon_bin(Path::new(binary), &dir.path().join("data"), &[]);
                preload(other.addr).await;
                others.push((label, other, dir));
            }
            for (subs, rate) in [(1, 1000), (100, 1000), (1000, 100)] {
                let bare = fan_out(&echo, subs, rate, "wxbench0").await;
                let ours = fan_out(&daemon, subs, rate, "wxbench0").await;
                if smoke() {
                    assert!(ours.1 > 0 && ours.0 == ours.1, "watch {subs} x {rate}: consentd delivered {} of {}", ours.0, ours.1);
                    assert_eq!(bare.0, bare.1, "watch {subs} x {rate}: the bare fan-out");
                }
                let mut compared = serde_json::Map::new();
                for (label, other, _) in &others {
                    let theirs = fan_out(other, subs, rate, "wxbench0").await;
                    compared.insert(
                        (*label).to_owned(),
                        json!({"delivered": theirs.0, "expected": theirs.1, "p50_ms": theirs.2, "p99_ms": theirs.3, "p99_ratio": theirs.3 / bare.3}),
                    );
                }
                fanouts.push(json!({
                    "subscribers": subs, "events_per_sec": rate,
                    "consentd": {"delivered": ours.0, "expected": ours.1, "p50_ms": ours.2, "p99_ms": ours.3},
                    "bare_fanout": {"delivered": bare.0, "expected": bare.1, "p50_ms": bare.2, "p99_ms": bare.3},
                    "p99_ratio": ours.3 / bare.3,
                    "compared": compared,
                }));
            }
            for (_, other, _) in others {
                other.stop();
            }
        }
        // etcd mode (support/etcd.rs): only when named. Not in the smoke
        // run: a 3-member cluster, four debug daemons and their preload take
        // about two minutes on a busy 2-core machine.
        let mut etcd_results = serde_json::Value::Null;
        if only.as_ref().is_some_and(|o| o.iter().any(|x| x == "etcd")) {
            match etcd::unavailable() {
                Some(why) => println!("etcd scenario skipped: {why}"),
                None => etcd_results = etcd::scenario(&echo, &daemon, &mut report).await,
            }
        } else if smoke() {
            println!(
                "etcd scenario skipped: it runs only when named (BENCH_ONLY=etcd), being too slow \
                 for the smoke run{}",
                etcd::unavailable().map_or(String::new(), |why| format!(" ({why})"))
            );
        }
        daemon.stop();
        echo.stop();

        if wants("record") {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("relaxed.toml");
            std::fs::write(&config, "flush_on_commit = false\n").unwrap();
            let relaxed = Proc::daemon(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
            preload(relaxed.addr).await;
            let run = drive(&relaxed, shapes[1].1, record_call).await;
            report("record relaxed c64", &run, ceilings.get("record c64").copied());
            if let Some(durable) = durable_rate {
                println!("record durable/relaxed: {:.2}", durable / run.rate());
            }
            relaxed.stop();
            // Other builds under the same durable write load, in the same run.
            for (label, binary) in builds(&compare) {
                let dir = tempfile::tempdir().unwrap();
                let other = Proc::daemon_bin(Path::new(binary), &dir.path().join("data"), &[]);
                preload(other.addr).await;
                let run = drive(&other, shapes[1].1, record_call).await;
                report(&format!("record durable c64 [{label}]"), &run, ceilings.get("record c64").copied());
                other.stop();
            }
        }

        let mut scale = Vec::new();
        if wants("scale") {
            let sizes: Vec<usize> = std::env::var("BENCH_SCALE")
                .unwrap_or_else(|_| if smoke() { "3000" } else { "10000,1000000" }.into())
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect();
            for n in sizes {
                let dir = tempfile::tempdir().unwrap();
                // BENCH_SCALE_DIR keeps the loaded stores for later runs.
                let kept = std::env::var_os("BENCH_SCALE_DIR").map(|d| Path::new(&d).join(n.to_string()));
                let data = kept.clone().unwrap_or_else(|| dir.path().join("data"));
                let marker = data.with_extension("loaded");
                let load = if kept.is_some() && marker.exists() {
                    Duration::from_secs_f64(std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap())
                } else {
                    let _ = std::fs::remove_dir_all(&data);
                    let load = tokio::task::block_in_place(|| bulk_preload(&data, n));
                    if kept.is_some() {
                        std::fs::write(&marker, load.as_secs_f64().to_string()).unwrap();
                    }
                    load
                };
                let daemon = Proc::daemon(&data, &[]);
                let lookups = drive(&daemon, shapes[1].1, move |task, seq, c| scale_lookup(n, task, seq, c))
                .await;
                report(&format!("scale {n} lookups c64"), &lookups, ceilings.get("c64").copied());
                let users = user_view(daemon.addr).await;
                println!("scale {n} user view: {users}");
                // The compared builds, and this one again, loaded the same
                // way: through Import (the bulk path writes this build's data
                // format, which older builds cannot open).
                if !compare.is_empty() {
                    let this = env!("CARGO_BIN_EXE_consentd");
                    for (label, binary) in std::iter::once(("HEAD", this)).chain(builds(&compare)) {
                        let dir = tempfile::tempdir().unwrap();
                        let other = Proc::daemon_bin(Path::new(binary), &dir.path().join("data"), &[]);
                        let load = import_preload(other.addr, n).await;
                        let run = drive(&other, shapes[1].1, move |task, seq, c| scale_lookup(n, task, seq, c))
                        .await;
                        report(&format!("scale {n} lookups c64 [{label}, imported]"), &run, ceilings.get("c64").copied());
                        scale.push(json!({
                            "build": label, "decisions": n, "import_s": load.as_secs_f64(),
                            "on_disk_mib": du(&dir.path().join("data")) as f64 / 1048576.0,
                            "lookups_per_sec": run.rate(),
                            "peak_rss_mib": other.status_kib("VmHWM:") as f64 / 1024.0,
                        }));
                        other.stop();
                    }
                }
                scale.push(json!({
                    "user_view": users,
                    "decisions": n, "bulk_load_s": load.as_secs_f64(), "on_disk_mib": du(&data) as f64 / 1048576.0,
                    "restart_to_serving_s": daemon.ready_after.as_secs_f64(), "lookups_per_sec": lookups.rate(),
                    "peak_rss_mib": daemon.status_kib("VmHWM:") as f64 / 1024.0,
                    "rss_after_mib": daemon.status_kib("VmRSS:") as f64 / 1024.0,
                }));
                daemon.stop();
            }
        }

        println!("\n| scenario | calls/s | errors | p50 us | p90 us | p99 us | p99.9 us | daemon CPU us/call | daemon cores | client cores | daemon peak RSS MiB | x ceiling |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for row in &rows {
            println!("{row}");
        }
        for f in &fanouts {
            println!("watch fan-out: {f}");
        }
        for s in &scale {
            println!("scale: {s}");
        }
        let mut soaked = Vec::new();
        if only.as_ref().map_or(smoke(), |o| o.iter().any(|x| x == "soak")) {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            // BENCH_SOAK_CONFIG: a config file for the soak's daemon (e.g. a
            // smaller audit retention, to reach its steady state sooner).
            let config = std::env::var("BENCH_SOAK_CONFIG").ok();
            let args: Vec<&str> = config.iter().flat_map(|c| ["--config", c.as_str()]).collect();
            let daemon = Proc::daemon(&data, &args);
            preload(daemon.addr).await;
            // The smoke run: 3 s, a sample a second.
            let (seconds, every) = if smoke() { (30.0, 10.0) } else { (1800.0, 30.0) };
            let samples = soak(&daemon, &data, secs("BENCH_SOAK_SECONDS", seconds), secs("BENCH_SOAK_SAMPLE", every)).await;
            if smoke() {
                let last = samples.last().expect("a soak sample");
                assert!(last.writes > 0 && last.errors == 0, "soak: {} writes, {} errors", last.writes, last.errors);
            }
            daemon.stop();
            soaked = samples
                .iter()
                .map(|s| json!({"at_s": s.at_s, "writes": s.writes, "writes_per_sec": s.rate, "rss_mib": s.rss_mib, "data_dir_mib": s.disk_mib, "cpu_us_per_write": s.cpu_us_per_write, "errors": s.errors}))
                .collect();
        }
        let out = json!({ "runs": results, "watch": fanouts, "scale": scale, "soak": soaked, "etcd": etcd_results });
        // The smoke run's file goes to cargo's scratch dir for tests, wherever
        // the target dir is.
        let path = if smoke() {
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-load-smoke.json")
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-load.json")
        };
        std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
        println!("\nwrote {}", path.display());
    });
}
