//! The load bench's `etcd` scenario (issue 14, "Measure"): consentd with
//! `--store etcd` on a real 3-member etcd cluster on loopback
//! (`src/store/etcd_cluster.rs`, the tests' harness), with 1 and with 3
//! daemons, against the sled daemon of the same run and two ceilings: the
//! echo server and the raw etcd transaction rate through the same client
//! crate (`etcd-client`) at the same concurrency.
//!
//! Runs only when `BENCH_ONLY` names `etcd`, in a build with `--features
//! etcd` and the `etcd` binary on the PATH (or `CONSENTD_ETCD`); otherwise
//! it prints why it did not run (the smoke run of `cargo test` skips it:
//! about two minutes of debug daemons; `BENCH_MODE=smoke BENCH_ONLY=etcd`
//! runs it with a tenth of the durations and one round). Each measurement is repeated `BENCH_ETCD_ROUNDS` times
//! (default 3), the servers taking turns in a rotating order; the table
//! shows the round with the median rate, and every ratio is the median of
//! the per-round ratios (neighbouring measurements on this noisy machine).
//!
//! - **reads**: Authorize (the load bench's mix over 10 apps x 1,000 users)
//!   at c16 and c64 against the echo, the sled daemon, one etcd-mode daemon
//!   and three (the load spread over them; CPU per call is the three
//!   daemons' CPU over all calls);
//! - **writes**: durable RecordDecision of a new user per call at c64
//!   (the `record` scenario) on sled, on one etcd daemon and spread over
//!   three, against the raw etcd transaction ceiling: 64 tasks each
//!   committing a transaction shaped like one RecordDecision's commit (the
//!   same number of puts with the same key and value sizes, read from the
//!   etcd watch of a real commit, and the writer's two compares: a key's
//!   mod revision and a lock key's existence);
//! - **watch**: publish-to-receive latency (the load bench's `fan_out`:
//!   from sending a RecordDecision to each subscriber receiving it) on
//!   sled and on an etcd daemon (every etcd daemon publishes from its etcd
//!   watch, the writing one too);
//! - **scale** (only with `BENCH_ETCD_SCALE=N`, e.g. 1000000): N decisions
//!   (one app, N users) loaded through the Admin Import RPC in calls of
//!   `BENCH_ETCD_IMPORT` decisions (default 100,000; the daemon writes
//!   them in jobs of 1,024, one etcd transaction each); then etcd's db size
//!   (Status of each member, and again after an etcd compaction and
//!   defragmentation), the member data dirs, the importing daemon's RSS, a
//!   fresh daemon's time from start to serving (its full load) and RSS, and
//!   Authorize lookups at c64 on it. Everything lives in the cluster's temp
//!   dir, removed at the end.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use consentd::pb::{self, authorization_client::AuthorizationClient};
use serde_json::json;

use super::{
    drive, drive_spread, fan_out,
    process::{self, Proc},
    reads::{authorize_call, channels, client_info, preload},
    record_call, smoke, Run, Shape,
};

#[path = "../../src/store/etcd_cluster.rs"]
#[allow(dead_code)] // the fault tests' helpers are not used here
mod etcd_cluster;

use etcd_cluster::EtcdCluster;

/// Why the scenario cannot run in this build or on this machine.
pub fn unavailable() -> Option<String> {
    if !cfg!(feature = "etcd") {
        return Some("this build has no etcd backend: run with --features etcd".into());
    }
    etcd_cluster::etcd_unavailable()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// An etcd-mode daemon on the cluster under `prefix` (`dir` is its unused
/// data dir).
fn daemon(cluster: &EtcdCluster, prefix: &str, dir: &Path, extra: &[&str]) -> Proc {
    let endpoints = cluster.endpoints().join(",");
    let mut args = vec![
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoints.as_str(),
        "--etcd-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    Proc::daemon(dir, &args)
}

/// The members' process ids.
fn member_pids(cluster: &EtcdCluster) -> Vec<u32> {
    (0..cluster.endpoints().len())
        .filter_map(|i| cluster.pid(i))
        .collect()
}

/// CPU ticks of every etcd member together.
fn etcd_ticks(cluster: &EtcdCluster) -> u64 {
    member_pids(cluster)
        .into_iter()
        .map(process::pid_cpu_ticks)
        .sum()
}

/// Records one decision through `writer`, then waits until every reader's
/// view has its revision (views are prefixes of one log: all earlier
/// writes are there too).
async fn converge(writer: &Proc, readers: &[&Proc]) {
    let request = |user: &str| pb::AuthorizeRequest {
        app_id: "wxbench0".into(),
        user_id: user.into(),
        scope: "scope.camera".into(),
        client: Some(client_info("8.0.5")),
    };
    let mut w = AuthorizationClient::new(channels(writer.addr, 1).await.remove(0));
    let revision = w
        .record_decision(pb::RecordDecisionRequest {
            lifetime: None,
            app_id: "wxbench0".into(),
            user_id: "converge".into(),
            scope: "scope.camera".into(),
            answer: pb::Answer::Allow.into(),
            client: Some(client_info("8.0.5")),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    for reader in readers {
        let mut c = AuthorizationClient::new(channels(reader.addr, 1).await.remove(0));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = c
                .authorize(request("converge"))
                .await
                .unwrap()
                .into_inner()
                .revision;
            if seen >= revision {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a daemon's view stayed at revision {seen} < {revision} for 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The median of `v` (NaN when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs of one server under one load, a run per round.
struct Series {
    name: String,
    runs: Vec<Run>,
    /// etcd members' CPU (cores) during each run (0 for sled and echo).
    etcd_cores: Vec<f64>,
}

impl Series {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            runs: Vec::new(),
            etcd_cores: Vec::new(),
        }
    }
    /// The run with the median rate.
    fn median_run(&self) -> &Run {
        let mut order: Vec<&Run> = self.runs.iter().collect();
        order.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        order[order.len() / 2]
    }
    fn rates(&self) -> Vec<f64> {
        self.runs.iter().map(Run::rate).collect()
    }
    fn cpu_us(&self) -> Vec<f64> {
        self.runs.iter().map(Run::server_us_per_call).collect()
    }
    /// Median over rounds of this series' `f` over `base`'s.
    fn ratio(&self, base: &Series, f: fn(&Run) -> f64) -> f64 {
        median(
            self.runs
                .iter()
                .zip(&base.runs)
                .map(|(a, b)| f(a) / f(b))
                .collect(),
        )
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "calls_per_sec_rounds": self.rates(),
            "server_cpu_us_per_call_rounds": self.cpu_us(),
            "etcd_cpu_cores_rounds": self.etcd_cores,
            "errors": self.runs.iter().map(|r| r.errors).sum::<u64>(),
            "median": self.median_run().json(&self.name, None),
        })
    }
}

/// One target: the figure against its bound.
fn target(name: &str, value: f64, bound: &str, met: bool) -> serde_json::Value {
    println!(
        "etcd target: {name}: {value:.2} (target {bound}): {}",
        if met { "met" } else { "NOT met" }
    );
    json!({"target": name, "value": value, "bound": bound, "met": met})
}

/// The scenario; `sled` is the run's sled daemon, preloaded like the etcd
/// one. Rows go through `report`; returns the JSON of everything.
pub async fn scenario(
    echo: &Proc,
    sled: &Proc,
    report: &mut dyn FnMut(&str, &Run, Option<f64>),
) -> serde_json::Value {
    let rounds = env_usize("BENCH_ETCD_ROUNDS", if smoke() { 1 } else { 3 }).max(1);
    let cluster = tokio::task::block_in_place(|| EtcdCluster::start(3))
        .unwrap_or_else(|e| panic!("etcd scenario: the cluster did not start: {e}"));
    println!(
        "etcd scenario: 3 members at {}, {rounds} rounds",
        cluster.endpoints().join(",")
    );
    let dirs = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let e1 = daemon(&cluster, "/bench/", &dirs.path().join("d1"), &[]);
    let e2 = daemon(&cluster, "/bench/", &dirs.path().join("d2"), &[]);
    let e3 = daemon(&cluster, "/bench/", &dirs.path().join("d3"), &[]);
    preload(e1.addr).await;
    converge(&e1, &[&e2, &e3]).await;
    let preload_s = started.elapsed().as_secs_f64();
    println!("etcd scenario: 3 daemons up and preloaded in {preload_s:.1} s");
    let all = [&e1, &e2, &e3];

    // Reads: Authorize at c16 and c64.
    let shapes = [
        (
            "c16",
            Shape {
                connections: 4,
                concurrency: 16,
            },
        ),
        (
            "c64",
            Shape {
                connections: 4,
                concurrency: 64,
            },
        ),
    ];
    let mut out = serde_json::Map::new();
    let mut targets = Vec::new();
    for (tag, shape) in shapes {
        let mut series = [
            Series::new(format!("etcd: ceiling echo authorize {tag}")),
            Series::new(format!("etcd: authorize {tag} sled")),
            Series::new(format!("etcd: authorize {tag} etcd x1")),
            Series::new(format!("etcd: authorize {tag} etcd x3")),
            Series::new(format!(
                "etcd: authorize c{} etcd x3 ({tag} per daemon)",
                3 * shape.concurrency
            )),
        ];
        for round in 0..rounds {
            for k in 0..series.len() {
                let v = (k + round) % series.len();
                let t0 = etcd_ticks(&cluster);
                let at = Instant::now();
                let run = match v {
                    0 => drive(echo, shape, authorize_call).await,
                    1 => drive(sled, shape, authorize_call).await,
                    2 => drive(&e1, shape, authorize_call).await,
                    3 => drive_spread(&all, shape, authorize_call).await,
                    _ => {
                        let per_daemon = Shape {
                            connections: shape.connections,
                            concurrency: 3 * shape.concurrency,
                        };
                        drive_spread(&all, per_daemon, authorize_call).await
                    }
                };
                let cores = (etcd_ticks(&cluster) - t0) as f64 / 100.0 / at.elapsed().as_secs_f64();
                series[v].runs.push(run);
                series[v].etcd_cores.push(cores);
            }
        }
        let ceiling = series[0].median_run().rate();
        for s in &series {
            let c = (!s.name.contains("ceiling")).then_some(ceiling);
            println!("{}", s.median_run().row(&s.name, c));
            report(&s.name, s.median_run(), c);
        }
        let [_, sled_s, one, three, three_busy] = &series;
        let x1 = one.ratio(sled_s, Run::rate);
        let x3 = three.ratio(sled_s, Run::rate);
        targets.push(target(
            &format!("authorize {tag} etcd x1 / sled"),
            x1,
            ">= 0.9",
            x1 >= 0.9,
        ));
        targets.push(target(
            &format!("authorize {tag} etcd x3 / sled"),
            x3,
            ">= 0.9",
            x3 >= 0.9,
        ));
        // "Unchanged": within the run-to-run spread of one binary here.
        // At the same total concurrency each of three daemons has a third
        // of the callers (fewer calls per wake-up); at three times the
        // concurrency each has as many as the one daemon.
        for (label, s) in [
            ("same total concurrency", three),
            ("same concurrency per daemon", three_busy),
        ] {
            let cpu = s.ratio(one, Run::server_us_per_call);
            targets.push(target(
                &format!("daemon CPU per Authorize {tag}, 3 daemons / 1, {label}"),
                cpu,
                "<= 1.15 (unchanged)",
                cpu <= 1.15,
            ));
        }
        for s in &series {
            println!("etcd series: {}", s.json());
        }
        out.insert(
            format!("authorize_{tag}"),
            series.iter().map(Series::json).collect::<Vec<_>>().into(),
        );
    }

    // Writes: durable RecordDecision at c64 against the raw etcd ceiling.
    let c64 = shapes[1].1;
    #[cfg(feature = "etcd")]
    let shape_of_commit = commit_shape(&cluster, &e1, "/bench/").await;
    #[cfg(not(feature = "etcd"))]
    let shape_of_commit: Vec<(usize, usize)> = Vec::new();
    println!(
        "etcd scenario: one RecordDecision commits {} keys (key, value bytes): {shape_of_commit:?}",
        shape_of_commit.len()
    );
    // One more daemon whose transactions may hold a whole group (the
    // members allow 10,000 operations and 8 MiB): with the defaults (128
    // operations) a group of 64 RecordDecisions (5 keys each) is three
    // transactions, one after the other.
    let config = dirs.path().join("big-txn.toml");
    std::fs::write(
        &config,
        "[etcd]\nmax_txn_ops = 4096\nmax_txn_bytes = 4000000\n",
    )
    .unwrap();
    let e4 = daemon(
        &cluster,
        "/bench/",
        &dirs.path().join("d4"),
        &["--config", config.to_str().unwrap()],
    );
    converge(&e1, &[&e4]).await;
    let mut series = [
        Series::new("etcd: ceiling raw etcd txn c64"),
        Series::new("etcd: record durable c64 sled"),
        Series::new("etcd: record durable c64 etcd x1"),
        Series::new("etcd: record durable c64 etcd x3"),
        Series::new("etcd: record durable c64 etcd x1 (max_txn_ops 4096)"),
        Series::new("etcd: raw etcd txn c1"),
    ];
    for round in 0..rounds {
        for k in 0..series.len() {
            let v = (k + round) % series.len();
            let t0 = etcd_ticks(&cluster);
            let at = Instant::now();
            let run = match v {
                #[cfg(feature = "etcd")]
                0 => raw_txn(&cluster, c64.concurrency, &shape_of_commit, round).await,
                #[cfg(not(feature = "etcd"))]
                0 => unreachable!("checked by unavailable()"),
                1 => drive(sled, c64, record_call).await,
                2 => drive(&e1, c64, record_call).await,
                3 => drive_spread(&all, c64, record_call).await,
                4 => drive(&e4, c64, record_call).await,
                #[cfg(feature = "etcd")]
                _ => raw_txn(&cluster, 1, &shape_of_commit, rounds + round).await,
                #[cfg(not(feature = "etcd"))]
                _ => unreachable!("checked by unavailable()"),
            };
            let cores = (etcd_ticks(&cluster) - t0) as f64 / 100.0 / at.elapsed().as_secs_f64();
            series[v].runs.push(run);
            series[v].etcd_cores.push(cores);
        }
    }
    let ceiling = series[0].median_run().rate();
    for s in &series {
        let c = (!s.name.contains("raw")).then_some(ceiling);
        println!("{}", s.median_run().row(&s.name, c));
        report(&s.name, s.median_run(), c);
    }
    for (i, label) in [(2, "x1"), (3, "x3"), (4, "x1 (max_txn_ops 4096)")] {
        let r = series[i].ratio(&series[0], Run::rate);
        targets.push(target(
            &format!("durable writes c64 etcd {label} / raw etcd txn"),
            r,
            ">= 0.6",
            r >= 0.6,
        ));
    }
    for s in &series {
        println!("etcd series: {}", s.json());
    }
    out.insert(
        "record_c64".into(),
        series.iter().map(Series::json).collect::<Vec<_>>().into(),
    );
    out.insert(
        "commit_shape".into(),
        shape_of_commit
            .iter()
            .map(|(k, v)| json!({"key_bytes": k, "value_bytes": v}))
            .collect::<Vec<_>>()
            .into(),
    );

    // Watch: publish-to-receive, sled vs etcd.
    // `fan_out` names its users after (subscribers, rate, sequence): each
    // round writes to another app so that every write is a change (an
    // unchanged decision publishes no event, and the subscribers would
    // wait for it). The load bench's own watch scenario uses wxbench0.
    let mut watch = Vec::new();
    for (subs, rate) in [(1, 1000), (100, 1000)] {
        let (mut on_sled, mut on_etcd) = (Vec::new(), Vec::new());
        for round in 0..rounds.min(super::reads::APPS - 1) {
            let app = format!("wxbench{}", round + 1);
            for k in 0..2 {
                if (k + round) % 2 == 0 {
                    on_sled.push(fan_out(sled, subs, rate, &app).await);
                } else {
                    on_etcd.push(fan_out(&e2, subs, rate, &app).await);
                }
            }
        }
        for (name, got) in [("sled", &on_sled), ("etcd", &on_etcd)] {
            if smoke() {
                for g in got {
                    assert!(
                        g.1 > 0 && g.0 == g.1,
                        "etcd watch {subs} x {rate} {name}: delivered {} of {}",
                        g.0,
                        g.1
                    );
                }
            }
        }
        let ratio = median(
            on_etcd
                .iter()
                .zip(&on_sled)
                .map(|(e, s)| e.3 / s.3)
                .collect(),
        );
        let p99 = |v: &[(usize, usize, f64, f64)]| median(v.iter().map(|x| x.3).collect());
        let p50 = |v: &[(usize, usize, f64, f64)]| median(v.iter().map(|x| x.2).collect());
        println!(
            "etcd watch {subs} x {rate}/s: p50 sled {:.2} ms, etcd {:.2} ms; p99 sled {:.2} ms, etcd {:.2} ms; delivered sled {:?}, etcd {:?}",
            p50(&on_sled), p50(&on_etcd), p99(&on_sled), p99(&on_etcd),
            on_sled.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
            on_etcd.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
        );
        targets.push(target(
            &format!("watch p99 {subs} x {rate}/s etcd / sled"),
            ratio,
            "<= 2",
            ratio <= 2.0,
        ));
        watch.push(json!({
            "subscribers": subs, "events_per_sec": rate,
            "sled_p50_ms": p50(&on_sled), "sled_p99_ms": p99(&on_sled),
            "etcd_p50_ms": p50(&on_etcd), "etcd_p99_ms": p99(&on_etcd),
            "p99_ratio": ratio,
            "sled_rounds": on_sled.iter().map(|g| json!({"delivered": g.0, "expected": g.1, "p50_ms": g.2, "p99_ms": g.3})).collect::<Vec<_>>(),
            "etcd_rounds": on_etcd.iter().map(|g| json!({"delivered": g.0, "expected": g.1, "p50_ms": g.2, "p99_ms": g.3})).collect::<Vec<_>>(),
        }));
    }
    out.insert("watch".into(), watch.into());
    let rss: Vec<u64> = all.iter().map(|d| d.status_kib("VmHWM:") / 1024).collect();
    out.insert("daemon_peak_rss_mib".into(), rss.into());
    // What a daemon costs with no calls (timers, the etcd watch's progress
    // notifications, the lease keep-alive), and etcd's own idle cost.
    let window = Duration::from_secs(if smoke() { 1 } else { 5 });
    let (s0, d0, m0) = (sled.cpu_ticks(), e1.cpu_ticks(), etcd_ticks(&cluster));
    tokio::time::sleep(window).await;
    let idle = |t1: u64, t0: u64| (t1 - t0) as f64 / 100.0 / window.as_secs_f64();
    let idle = json!({
        "sled_daemon_cores": idle(sled.cpu_ticks(), s0),
        "etcd_daemon_cores": idle(e1.cpu_ticks(), d0),
        "etcd_members_cores": idle(etcd_ticks(&cluster), m0),
    });
    println!("etcd scenario: idle CPU: {idle}");
    out.insert("idle".into(), idle);
    e4.stop();
    e1.stop();
    e2.stop();
    e3.stop();

    #[cfg(feature = "etcd")]
    if let Some(n) = std::env::var("BENCH_ETCD_SCALE")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
    {
        out.insert("scale".into(), scale(&cluster, dirs.path(), n).await);
    }
    out.insert("targets".into(), targets.into());
    out.insert("preload_s".into(), preload_s.into());
    drop(cluster);
    out.into()
}

/// The keys one RecordDecision commits, as (key bytes, value bytes): a
/// watch on the store's keys sees the commit's transaction as one etcd
/// revision.
#[cfg(feature = "etcd")]
async fn commit_shape(cluster: &EtcdCluster, writer: &Proc, prefix: &str) -> Vec<(usize, usize)> {
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let data = format!("{prefix}data/");
    let mut stream = client
        .watch(
            data.as_bytes(),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let user = "commit-shape";
    let mut c = AuthorizationClient::new(channels(writer.addr, 1).await.remove(0));
    c.record_decision(pb::RecordDecisionRequest {
        lifetime: None,
        app_id: "wxbench3".into(),
        user_id: user.into(),
        scope: "scope.camera".into(),
        answer: pb::Answer::Allow.into(),
        client: Some(client_info("8.0.5")),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .expect("the commit reached the watch")
            .unwrap()
            .expect("the watch ended");
        let mut by_revision: std::collections::BTreeMap<i64, Vec<(usize, usize, bool)>> =
            Default::default();
        for event in resp.events() {
            if let Some(kv) = event.kv() {
                let names = kv.key().windows(user.len()).any(|w| w == user.as_bytes())
                    || kv.value().windows(user.len()).any(|w| w == user.as_bytes());
                by_revision.entry(kv.mod_revision()).or_default().push((
                    kv.key().len(),
                    kv.value().len(),
                    names,
                ));
            }
        }
        if let Some(keys) = by_revision
            .into_values()
            .find(|keys| keys.iter().any(|k| k.2))
        {
            return keys.into_iter().map(|(k, v, _)| (k, v)).collect();
        }
    }
}

/// The raw etcd ceiling: `concurrency` tasks on one client (as a daemon
/// has), each committing transactions of `shape`'s puts (a new "user" per
/// transaction, keys padded to the same lengths), compared like the
/// writer's: the task's revision key's mod revision equals the last one it
/// wrote, and its lock key exists. Server CPU and RSS are the members'.
#[cfg(feature = "etcd")]
async fn raw_txn(
    cluster: &EtcdCluster,
    concurrency: usize,
    shape: &[(usize, usize)],
    round: usize,
) -> Run {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    use hdrhistogram::Histogram;
    let (warmup, duration) = (
        super::secs("BENCH_WARMUP", 1.0),
        super::secs("BENCH_SECONDS", 5.0),
    );
    let client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut client = client.clone();
        let shape = shape.to_vec();
        tasks.push(tokio::spawn(async move {
            let base = format!("/raw/r{round}/t{t}/");
            let (rev_key, lock_key) = (format!("{base}rev"), format!("{base}lock"));
            client.put(lock_key.clone(), "held", None).await.unwrap();
            let put = client.put(rev_key.clone(), "0", None).await.unwrap();
            let mut last = put.header().map_or(0, |h| h.revision());
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let (mut calls, mut errors, mut seq) = (0u64, 0u64, 0u64);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let ops: Vec<TxnOp> = shape
                    .iter()
                    .enumerate()
                    .map(|(i, &(k, v))| {
                        let mut key = format!("{base}{seq}/{i}/").into_bytes();
                        key.resize(k.max(key.len()), b'k');
                        TxnOp::put(key, vec![b'v'; v], None)
                    })
                    .chain([TxnOp::put(
                        rev_key.clone(),
                        seq.to_le_bytes().to_vec(),
                        None,
                    )])
                    .collect();
                let txn = Txn::new()
                    .when([
                        Compare::mod_revision(rev_key.clone(), CompareOp::Equal, last),
                        Compare::create_revision(lock_key.clone(), CompareOp::Greater, 0),
                    ])
                    .and_then(ops);
                let ok = match client.txn(txn).await {
                    Ok(resp) if resp.succeeded() => {
                        last = resp.header().map_or(0, |h| h.revision());
                        true
                    }
                    _ => false,
                };
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
    let (server0, client0) = (etcd_ticks(cluster), process::self_cpu_ticks());
    tokio::time::sleep_until(end.into()).await;
    let (server1, client1) = (etcd_ticks(cluster), process::self_cpu_ticks());
    let mut run = Run {
        calls: 0,
        errors: 0,
        seconds: duration.as_secs_f64(),
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
        server_cpu_s: (server1 - server0) as f64 / 100.0,
        client_cpu_s: (client1 - client0) as f64 / 100.0,
        peak_rss_kib: member_pids(cluster)
            .into_iter()
            .map(|p| process::pid_status_kib(p, "VmHWM:"))
            .max()
            .unwrap_or(0),
    };
    for t in tasks {
        let (hist, calls, errors) = t.await.unwrap();
        run.hist.add(hist).unwrap();
        run.calls += calls;
        run.errors += errors;
    }
    // Keep etcd's db to what the daemons wrote.
    let mut client = client;
    let _ = client
        .delete(
            format!("/raw/r{round}/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await;
    run
}

/// Each member's db size (etcd's Status), bytes.
#[cfg(feature = "etcd")]
async fn db_sizes(cluster: &EtcdCluster) -> Vec<i64> {
    let mut sizes = Vec::new();
    for endpoint in cluster.endpoints() {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        sizes.push(c.status().await.unwrap().db_size());
    }
    sizes
}

/// The scale part: `n` decisions through Import, then sizes, RSS and a
/// fresh daemon's start.
#[cfg(feature = "etcd")]
async fn scale(cluster: &EtcdCluster, dirs: &Path, n: usize) -> serde_json::Value {
    let per_call = env_usize("BENCH_ETCD_IMPORT", 100_000).max(1);
    let mib = |b: f64| b / 1048576.0;
    let before = db_sizes(cluster).await;
    // An import job of 1,024 decisions is ~3,100 keys: raise the
    // transaction bounds (the harness's members allow 10,000 ops, 8 MiB).
    let config = dirs.join("scale.toml");
    std::fs::write(
        &config,
        "[etcd]\nmax_txn_ops = 10000\nmax_txn_bytes = 8000000\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let empty = daemon(cluster, "/scale/", &dirs.join("s0"), &["--config", config]);
    let empty_rss = empty.status_kib("VmRSS:");
    let loader = empty;
    let started = Instant::now();
    let mut admin = pb::admin_client::AdminClient::new(channels(loader.addr, 1).await.remove(0))
        .max_decoding_message_size(64 << 20);
    for from in (0..n).step_by(per_call) {
        let mut records = Vec::with_capacity(per_call + 1);
        if from == 0 {
            records.push(pb::ExportRecord {
                record: Some(pb::export_record::Record::App(pb::App {
                    app_id: "wxscale".into(),
                    kind: pb::AppKind::MiniProgram.into(),
                    ..Default::default()
                })),
            });
        }
        for i in from..(from + per_call).min(n) {
            records.push(pb::ExportRecord {
                record: Some(pb::export_record::Record::Decision(pb::StoredDecision {
                    app_id: "wxscale".into(),
                    user_id: format!("u{i}"),
                    scope: "scope.camera".into(),
                    state: pb::DecisionState::Granted.into(),
                    ..Default::default()
                })),
            });
        }
        let done = admin
            .import(tokio_stream::iter(records))
            .await
            .unwrap_or_else(|e| panic!("import of decisions {from}..: {e}"))
            .into_inner();
        println!(
            "etcd scale: imported {} decisions ({} changed) at {:.0} s, revision {}",
            (from + per_call).min(n),
            done.changed,
            started.elapsed().as_secs_f64(),
            done.revision
        );
    }
    let load_s = started.elapsed().as_secs_f64();
    let loaded = db_sizes(cluster).await;
    let loader_rss = loader.status_kib("VmRSS:");
    let loader_hwm = loader.status_kib("VmHWM:");
    // A fresh daemon: its start is a full load of the prefix.
    let fresh = daemon(cluster, "/scale/", &dirs.join("s1"), &["--config", config]);
    let fresh_rss = fresh.status_kib("VmRSS:");
    let lookups = drive(
        &fresh,
        Shape {
            connections: 4,
            concurrency: 64,
        },
        move |task, seq, c| super::scale_lookup(n, task, seq, c),
    )
    .await;
    let fresh_after = fresh.status_kib("VmRSS:");
    let fresh_start_s = fresh.ready_after.as_secs_f64();
    loader.stop();
    fresh.stop();
    let dir_bytes: Vec<u64> = (1..=3)
        .map(|i| super::du(&cluster.dir().join(format!("m{i}"))))
        .collect();
    let db_file: Vec<u64> = (1..=3)
        .map(|i| {
            std::fs::metadata(cluster.dir().join(format!("m{i}/member/snap/db")))
                .map_or(0, |m| m.len())
        })
        .collect();
    // What the live keys take: etcd's history compacted and each member
    // defragmented.
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let now = client.get("/scale/", None).await.unwrap();
    let revision = now.header().map_or(0, |h| h.revision());
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    for endpoint in cluster.endpoints() {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        c.defragment().await.unwrap();
    }
    let compacted = db_sizes(cluster).await;
    let per = |after: &[i64]| (after[0] - before[0]) as f64 / n as f64;
    let result = json!({
        "decisions": n, "import_calls_of": per_call, "import_s": load_s,
        "decisions_per_sec": n as f64 / load_s,
        "etcd_db_mib_before": before.iter().map(|&b| mib(b as f64)).collect::<Vec<_>>(),
        "etcd_db_mib_loaded": loaded.iter().map(|&b| mib(b as f64)).collect::<Vec<_>>(),
        "etcd_db_mib_compacted_defragmented": compacted.iter().map(|&b| mib(b as f64)).collect::<Vec<_>>(),
        "etcd_db_file_mib": db_file.iter().map(|&b| mib(b as f64)).collect::<Vec<_>>(),
        "etcd_member_dir_mib": dir_bytes.iter().map(|&b| mib(b as f64)).collect::<Vec<_>>(),
        "etcd_db_bytes_per_decision_loaded": per(&loaded),
        "etcd_db_bytes_per_decision_compacted": per(&compacted),
        "daemon_rss_mib_empty": mib(empty_rss as f64 * 1024.0),
        "loader_rss_mib": mib(loader_rss as f64 * 1024.0), "loader_peak_rss_mib": mib(loader_hwm as f64 * 1024.0),
        "fresh_start_to_serving_s": fresh_start_s,
        "fresh_rss_mib": mib(fresh_rss as f64 * 1024.0),
        "fresh_rss_mib_after_lookups": mib(fresh_after as f64 * 1024.0),
        "daemon_bytes_per_decision": (fresh_rss.saturating_sub(empty_rss)) as f64 * 1024.0 / n as f64,
        "lookups_c64_per_sec": lookups.rate(), "lookups_errors": lookups.errors,
        "lookups_p99_us": lookups.us(0.99),
    });
    println!("etcd scale: {result}");
    result
}
