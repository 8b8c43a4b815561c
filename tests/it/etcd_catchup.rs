//! Issue 14 item 5: a restarting etcd-mode daemon catches up from the
//! snapshot of its view in its data dir (a watch from the snapshot's etcd
//! revision), not by reading the whole prefix, unless the snapshot is
//! unusable or etcd compacted its history past it. The daemon under test
//! is the real binary (its "etcd store opened" line says how it started);
//! the other daemons writing meanwhile are in-process.
//!
//! Ignored unless asked for: `scripts/test` runs them (`--ignored etcd`)
//! when the build has the `etcd` feature and etcd is installed.

use std::{path::Path, time::Duration};

use consentd::pb;

use crate::{
    etcd::{fresh_prefix, spawn_on_etcd},
    etcd_cluster::{shared_endpoints, EtcdCluster},
    fixture::{connect, location_app, Client, TestDaemon},
    support::{child::Consentd, export},
};

/// `consentd --store etcd` on `endpoints` under `prefix`, its data dir
/// `data` (where the view's snapshot lives), with `config` as its config
/// file's text.
fn spawn(endpoints: &[String], prefix: &str, data: &Path, config: &str) -> Consentd {
    let file = data.with_extension("toml");
    std::fs::write(&file, config).unwrap();
    spawn_on_etcd(
        &endpoints.join(","),
        prefix,
        data,
        &["--config", file.to_str().unwrap()],
        &[("RUST_LOG", "info")],
    )
}

/// The fields of the daemon's "etcd store opened" line.
fn opened(daemon: &Consentd) -> serde_json::Value {
    let line = daemon.wait_for("etcd store opened");
    serde_json::from_str::<serde_json::Value>(&line).unwrap()["fields"].clone()
}

/// An in-process daemon on `endpoints` under `prefix`.
async fn other_daemon(endpoints: &[String], prefix: &str) -> TestDaemon {
    let (endpoints, prefix) = (endpoints.to_vec(), prefix.to_owned());
    TestDaemon::with(move |c| {
        c.store = consentd::config::StoreKind::Etcd;
        c.etcd.endpoints = endpoints;
        c.etcd.prefix = prefix;
    })
    .await
}

/// Writes that put and delete keys: apps registered and deleted, answers,
/// removals.
async fn churn(c: &Client, tag: &str) {
    for app in ["keep", "gone"] {
        c.register(location_app(&format!("wx{tag}{app}"))).await;
        for u in 0..6 {
            c.answer(
                &format!("wx{tag}{app}"),
                &format!("u{u}"),
                "scope.camera",
                pb::Answer::Allow,
            )
            .await;
        }
    }
    for u in 0..3 {
        c.remove(&format!("wx{tag}keep"), &format!("u{u}")).await;
    }
    c.apps()
        .delete_app(pb::DeleteAppRequest {
            app_id: format!("wx{tag}gone"),
        })
        .await
        .expect("DeleteApp");
}

/// Stops `daemon` cleanly (SIGTERM): it writes its snapshot at close.
fn stop(mut daemon: Consentd) {
    daemon.signal("TERM");
    assert!(daemon.wait().success(), "{}", daemon.log());
}

/// A daemon stopped cleanly, then restarted after other daemons registered,
/// answered, removed and deleted apps: it reads only the changes since its
/// snapshot (far fewer keys than the store holds), and then its Export
/// (log included) is the other daemon's and Verify passes: no put and no
/// delete was missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_restarted_daemon_catches_up_from_its_snapshot() {
    let prefix = fresh_prefix();
    let endpoints = shared_endpoints().to_vec();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let a = spawn(&endpoints, &prefix, &data, "");
    assert_eq!(opened(&a)["from"], "etcd", "no snapshot yet");
    let ca = Client {
        channel: connect(a.addr()).await,
    };
    // Enough state that a full load reads many more keys than the catch-up.
    for i in 0..4 {
        churn(&ca, &format!("a{i}")).await;
    }
    stop(a);
    assert!(data.join("etcd-view.snap").exists(), "snapshot at close");

    let b = other_daemon(&endpoints, &prefix).await;
    let cb = b.client();
    churn(&cb, "b").await;
    // Deletes of keys the snapshot holds.
    cb.apps()
        .delete_app(pb::DeleteAppRequest {
            app_id: "wxa0keep".into(),
        })
        .await
        .expect("DeleteApp");
    cb.remove("wxa1keep", "u4").await;

    let a = spawn(&endpoints, &prefix, &data, "");
    let fields = opened(&a);
    assert_eq!(fields["from"], "snapshot", "{fields}");
    let keys_read = fields["keys_read"].as_u64().unwrap();
    let ca = Client {
        channel: connect(a.addr()).await,
    };
    let expected = export(&cb.channel, true).await;
    assert_eq!(export(&ca.channel, true).await, expected);
    // A daemon without a snapshot reads every key of the store.
    let fresh = spawn(&endpoints, &prefix, &dir.path().join("c"), "");
    let full = opened(&fresh);
    assert_eq!(full["from"], "etcd", "{full}");
    let total = full["keys_read"].as_u64().unwrap();
    stop(fresh);
    assert!(
        keys_read > 0 && keys_read * 2 < total,
        "caught up with {keys_read} changes; the store holds {total} keys"
    );
    assert_eq!(ca.revision().await, cb.revision().await);
    ca.assert_consistent().await;
    // And it goes on following the other daemon.
    cb.answer("wxbkeep", "u9", "scope.camera", pb::Answer::Deny)
        .await;
    let revision = cb.revision().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while ca.revision().await < revision {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the restarted daemon follows the log");
    assert_eq!(
        export(&ca.channel, true).await,
        export(&cb.channel, true).await
    );
    stop(a);
    b.stop().await;
}

/// A snapshot that does not pass its checksum is not used: the daemon
/// warns, reads the whole prefix, and serves exactly the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_corrupt_snapshot_falls_back_to_a_full_load_with_a_warning() {
    let prefix = fresh_prefix();
    let endpoints = shared_endpoints().to_vec();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let a = spawn(&endpoints, &prefix, &data, "");
    let ca = Client {
        channel: connect(a.addr()).await,
    };
    churn(&ca, "c").await;
    stop(a);
    let file = data.join("etcd-view.snap");
    let mut raw = std::fs::read(&file).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 0x01;
    std::fs::write(&file, raw).unwrap();

    let b = other_daemon(&endpoints, &prefix).await;
    churn(&b.client(), "d").await;
    let a = spawn(&endpoints, &prefix, &data, "");
    let warning = a.wait_for("the view's snapshot cannot be used");
    assert!(warning.contains("checksum mismatch"), "{warning}");
    assert!(warning.contains("WARN"), "{warning}");
    let fields = opened(&a);
    assert_eq!(fields["from"], "etcd", "{fields}");
    let ca = Client {
        channel: connect(a.addr()).await,
    };
    assert_eq!(
        export(&ca.channel, true).await,
        export(&b.client().channel, true).await
    );
    ca.assert_consistent().await;
    stop(a);
    b.stop().await;
}

/// The current etcd revision of the cluster at `endpoints`.
async fn etcd_revision(client: &mut etcd_client::Client) -> i64 {
    client
        .get("probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// A daemon killed with -9 restarts from the snapshot it wrote while
/// running (`snapshot_interval_secs`); but once etcd compacted its history
/// past that snapshot the daemon says so and reads the whole prefix. Its
/// own one-member cluster: compacting the shared one would disturb other
/// tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_compacted_past_the_snapshot_falls_back_to_a_full_load() {
    let cluster = tokio::task::block_in_place(|| EtcdCluster::start(1))
        .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
    let endpoints = cluster.endpoints();
    let prefix = fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let config = "[etcd]\nsnapshot_interval_secs = 1\n";
    let a = spawn(&endpoints, &prefix, &data, config);
    let ca = Client {
        channel: connect(a.addr()).await,
    };
    churn(&ca, "e").await;
    let written = ca.revision().await;
    // Past the next snapshot tick, then no clean close.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.kill9();

    // Killed, it still catches up from its periodic snapshot.
    let b = other_daemon(&endpoints, &prefix).await;
    churn(&b.client(), "f").await;
    let a = spawn(&endpoints, &prefix, &data, config);
    let fields = opened(&a);
    assert_eq!(fields["from"], "snapshot", "{fields}");
    let ca = Client {
        channel: connect(a.addr()).await,
    };
    assert!(ca.revision().await > written);
    assert_eq!(
        export(&ca.channel, true).await,
        export(&b.client().channel, true).await
    );
    a.kill9();

    // More writes, then etcd compacts its history up to now: the snapshot
    // (at most a second older than the kill) is behind it.
    churn(&b.client(), "g").await;
    let mut etcd = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    let now = etcd_revision(&mut etcd).await;
    etcd.compact(now, None).await.unwrap();
    let a = spawn(&endpoints, &prefix, &data, config);
    let warning = a.wait_for("the view's snapshot cannot be used");
    assert!(warning.contains("etcd compacted its history"), "{warning}");
    let fields = opened(&a);
    assert_eq!(fields["from"], "etcd", "{fields}");
    let ca = Client {
        channel: connect(a.addr()).await,
    };
    assert_eq!(
        export(&ca.channel, true).await,
        export(&b.client().channel, true).await
    );
    ca.assert_consistent().await;
    stop(a);
    b.stop().await;
}
