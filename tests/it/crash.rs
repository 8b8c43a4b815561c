//! Crash consistency (issue 3, guarantee 6): SIGKILL the daemon (a child
//! process) under concurrent writes, restart it on the same data dir, and
//! check that nothing acknowledged was lost and the log still explains the state.
//!
//! A SIGKILL cannot lose what the kernel already holds, so these tests prove
//! "acknowledged => reached the OS". "Acknowledged => on disk" is the
//! power-cut test's (`tests/root`, `power_cut`).

use std::time::Duration;

use consentd::{pb, server::Daemon};

use crate::{
    crash_support::{
        check_after_restart, kill_moments, run_cycle, seed, writers_under_way, ChildDaemon, Cycle,
        Written, APP, MIN_ACKS,
    },
    fixture::{client_info, connect, location_app, test_config, Client},
    support::on_sled,
};

/// SIGTERM during load: every write either completes and is durable, or fails
/// with a status; none is acknowledged and then lost. The daemon exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_acknowledged() {
    let _turn = crate::fixture::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = ChildDaemon::spawn(&data);
    let channel = connect(daemon.addr).await;
    let client = Client {
        channel: channel.clone(),
    };
    client.register(location_app(APP)).await;
    let start = client.revision().await;
    let (writers, stop) = writers_under_way(&channel).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.now();
    let code = tokio::task::spawn_blocking(move || daemon.terminate())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "a graceful shutdown exits 0");
    let mut written = Written::default();
    for w in writers {
        written.merge(w.await.unwrap());
    }
    written.assert_sound("SIGTERM", MIN_ACKS);

    let daemon = Daemon::start(on_sled(test_config(data))).await.unwrap();
    let client = Client {
        channel: connect(daemon.local_addr().unwrap()).await,
    };
    let changes = written.changes.len() as u64;
    let checked = check_after_restart(
        &client,
        &Cycle {
            start,
            written,
            seen: Vec::new(),
        },
    )
    .await;
    assert!(checked >= changes);
    daemon.shutdown().await.unwrap();
}

/// SIGKILL under 64 writers at a random moment after at least [`MIN_ACKS`]
/// acknowledgements, restart, check; repeated. Every error a writer gets is
/// counted; any but a business refusal before the kill, or a transport error
/// after it, fails the test. `CONSENTD_CRASH_CYCLES` sets the cycles
/// (default 3; the long run is `CONSENTD_CRASH_CYCLES=100 cargo test
/// --release --test it crash`), `CONSENTD_CRASH_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let _turn = crate::fixture::heavy().await;
    let cycles: usize = std::env::var("CONSENTD_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = seed();
    eprintln!("crash test: {cycles} cycles, CONSENTD_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut previous: Option<Cycle> = None;
    let (mut acked_total, mut checked_events) = (0, 0);
    for (n, after) in kill_moments(seed, cycles).into_iter().enumerate() {
        let daemon = ChildDaemon::spawn(&data);
        let client = Client {
            channel: connect(daemon.addr).await,
        };
        match &previous {
            None => drop(client.register(location_app(APP)).await),
            Some(cycle) => checked_events += check_after_restart(&client, cycle).await,
        }
        let cycle = run_cycle(daemon, after, || {}).await;
        cycle.written.assert_sound(
            &format!("cycle {n} (kill {after:?} after {MIN_ACKS} acks)"),
            MIN_ACKS,
        );
        acked_total += cycle.written.changes.len();
        previous = Some(cycle);
    }
    // The last restart in-process; revisions continue above everything committed.
    let daemon = Daemon::start(on_sled(test_config(data))).await.unwrap();
    let client = Client {
        channel: connect(daemon.local_addr().unwrap()).await,
    };
    let last = previous.expect("at least one cycle");
    checked_events += check_after_restart(&client, &last).await;
    let revision = client.revision().await;
    let after = client
        .record(
            APP,
            "fresh",
            "scope.werun",
            pb::Answer::Allow,
            client_info(pb::Platform::Ios, "8.0.5", "3.0.0"),
        )
        .await
        .unwrap();
    assert!(after.revision > revision);
    eprintln!("crash test: {cycles} cycles survived, {acked_total} acknowledged changes checked, {checked_events} logged events checked");
    daemon.shutdown().await.unwrap();
}
