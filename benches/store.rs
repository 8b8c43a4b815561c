//! Storage benchmark: `cargo bench --bench store`.
//!
//! 1. The layout decision: a decision + its event committed as one atomic
//!    batch on a single tree (what consentd does) vs. a transaction over two
//!    trees, both non-durable, so only the commit mechanism differs.
//! 2. Durable writes through the real store (`SledStore` + group commit): a
//!    popup answer per job, acknowledged after flush, at concurrency 1, 16, 64.
//!
//! Environment: `BENCH_OPS` (default 20000) writes per run.

use std::{sync::Arc, time::Instant};

use consentd::{
    domain::{AppId, Cause, Change, DecisionState, Scope, UserId},
    store::{SledConfig, SledStore, Store, WriteSet},
};
use sled::Transactional as _;

fn ops() -> usize {
    std::env::var("BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn open_db(dir: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .cache_capacity(128 << 20)
        .flush_every_ms(None)
        .open()
        .unwrap()
}

fn layout() {
    let n = ops();
    let value = [1u8; 19];
    let event = [2u8; 48];

    let dir = tempfile::tempdir().unwrap();
    let tree = open_db(dir.path()).open_tree("t").unwrap();
    let start = Instant::now();
    for i in 0..n as u64 {
        let mut batch = sled::Batch::default();
        batch.insert(format!("d/app\0user{i}\0scope.camera").as_bytes(), &value);
        batch.insert([b"e/".as_slice(), &i.to_be_bytes()].concat(), &event[..]);
        batch.insert(b"m/revision".as_slice(), &i.to_be_bytes());
        tree.apply_batch(batch).unwrap();
    }
    let single = n as f64 / start.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let (state, log) = (db.open_tree("state").unwrap(), db.open_tree("log").unwrap());
    let start = Instant::now();
    for i in 0..n as u64 {
        (&state, &log)
            .transaction(|(s, l)| {
                s.insert(format!("app\0user{i}\0scope.camera").as_bytes(), &value[..])?;
                l.insert(&i.to_be_bytes(), &event[..])?;
                s.insert(b"m/revision".as_slice(), &i.to_be_bytes()[..])?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .unwrap();
    }
    let multi = n as f64 / start.elapsed().as_secs_f64();
    println!("commit mechanism, non-durable, {n} commits of state + event:");
    println!("  single-tree atomic batch : {single:>9.0} commits/s");
    println!(
        "  two-tree transaction     : {multi:>9.0} commits/s  (batch is {:.2}x)",
        single / multi
    );
}

async fn durable(concurrency: usize) -> f64 {
    let n = ops();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open(&SledConfig {
            path: dir.path().join("data"),
            cache_capacity: 128 << 20,
            max_batch: 1024,
            queue_depth: 4096,
            publish_capacity: 1024,
            observer: None,
            flush_on_commit: true,
            clock: consentd::clock::SystemClock::shared(),
        })
        .unwrap(),
    );
    let app = AppId::parse("wxbench").unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (store, app) = (store.clone(), app.clone());
            tokio::spawn(async move {
                for i in (t..n).step_by(concurrency) {
                    let user = UserId::parse(&format!("user{i}")).unwrap();
                    let change = Change {
                        scope: Scope::Camera,
                        old: DecisionState::NotDetermined,
                        new: DecisionState::Granted,
                        cause: Cause::Popup,
                    };
                    let app = app.clone();
                    store
                        .submit(Box::new(move |_view| {
                            Ok(WriteSet {
                                changes: vec![(consentd::domain::Subject { app, user }, change)],
                                ..WriteSet::default()
                            })
                        }))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    store.close().await.unwrap();
    rate
}

fn main() {
    layout();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "\ndurable writes through SledStore (acknowledged after flush), {} per run:",
        ops()
    );
    let mut rates = Vec::new();
    for c in [1, 16, 64] {
        let rate = runtime.block_on(durable(c));
        rates.push(rate);
        println!("  concurrency {c:>3}: {rate:>9.0} writes/s");
    }
    println!("  group commit at 64 vs 1: {:.1}x", rates[2] / rates[0]);
}
