//! consentd on etcd (issue 14), against a real 3-member etcd cluster
//! started from the `etcd` binary (`etcd_cluster`, shared by these tests).
//! Ignored unless asked for: `scripts/test` runs them (`--ignored etcd`)
//! when the build has the `etcd` feature and etcd is installed.

use std::{collections::BTreeMap, time::Duration};

use consentd::pb::{self, watch_response::Kind};
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use crate::{
    etcd_cluster::shared_endpoints,
    fixture::{connect, location_app, Client, TestDaemon},
    support::{
        child::{spawn_consentd, Consentd},
        key_of_change, key_of_event, use_etcd, EventKey,
    },
};

/// A key prefix no other test uses.
pub(crate) fn fresh_prefix() -> String {
    let mut id = [0u8; 8];
    getrandom::getrandom(&mut id).expect("random bytes");
    format!("/consentd-it/{}/", hex::encode(id))
}

/// The `consentd` binary with `--store etcd` on `endpoints` (comma
/// separated) under `prefix`, its data dir `data`, on a loopback port, with
/// `extra` arguments and `env`.
pub(crate) fn spawn_on_etcd(
    endpoints: &str,
    prefix: &str,
    data: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Consentd {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoints,
        "--etcd-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    spawn_consentd(&args, env)
}

/// An in-process daemon on the shared cluster under `prefix`.
async fn daemon_on(prefix: &str) -> TestDaemon {
    let prefix = prefix.to_owned();
    TestDaemon::with(move |c| use_etcd(c, &prefix)).await
}

/// Reads a Watch stream until an event at `until` or later; returns the
/// events, progress markers skipped.
async fn events_until(stream: &mut Streaming<pb::WatchResponse>, until: u64) -> Vec<EventKey> {
    let mut out: Vec<EventKey> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.last().is_none_or(|e| e.0 < until) {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("events up to {until} in time; got {out:?}"))
            .expect("stream open")
            .expect("no error");
        if let Some(Kind::Event(e)) = item.kind {
            out.push(key_of_event(&e));
        }
    }
    out
}

pub(crate) fn from(revision: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        start_revision: Some(revision),
        ..Default::default()
    }
}

/// Every event starts from the state the one before it (of the same app,
/// user and scope) left: no update was lost.
pub(crate) fn assert_chain(log: &[EventKey]) {
    let mut states: BTreeMap<(String, String, String), i32> = BTreeMap::new();
    for e in log {
        let key = (e.1.clone(), e.2.clone(), e.3.clone());
        let before = states
            .get(&key)
            .copied()
            .unwrap_or(pb::DecisionState::NotDetermined as i32);
        assert_eq!(
            e.4, before,
            "event {e:?} starts from a state the log did not leave"
        );
        states.insert(key, e.5);
    }
    for pair in log.windows(2) {
        assert_eq!(
            pair[1].0,
            pair[0].0 + 1,
            "revisions without a gap: {pair:?}"
        );
    }
}

/// `consentd --store etcd --etcd-endpoints ... --etcd-prefix ...` (the real
/// binary) keeps its decisions in etcd: a second daemon, started on another
/// data dir after the first was killed with -9, serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_daemon_binary_keeps_its_decisions_in_etcd() {
    let prefix = fresh_prefix();
    let endpoints = shared_endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let spawn = |data: &str| {
        spawn_on_etcd(
            &endpoints,
            &prefix,
            &dir.path().join(data),
            &[],
            &[("RUST_LOG", "info")],
        )
    };
    let first = spawn("a");
    let serving = first.wait_for("consentd serving");
    assert!(serving.contains("Etcd"), "{serving}");
    first.wait_for("etcd store opened");
    let c = Client {
        channel: connect(first.addr()).await,
    };
    c.register(location_app("wxetcd")).await;
    c.answer("wxetcd", "u1", "scope.camera", pb::Answer::Allow)
        .await;
    let revision = c.revision().await;
    first.kill9();

    let second = spawn("b");
    let c = Client {
        channel: connect(second.addr()).await,
    };
    assert_eq!(c.revision().await, revision, "the log goes on where it was");
    assert_eq!(
        c.decision("wxetcd", "u1", "scope.camera").await.outcome(),
        pb::Outcome::Granted
    );
    c.assert_consistent().await;
    assert!(
        !dir.path().join("b").join("db").exists(),
        "no sled store was opened"
    );
}

/// A Watch client reads part of the log from one daemon, then resumes on
/// another daemon of the same cluster with the revision it last saw: no
/// gap, no duplicate; and a daemon that stops does not take the log with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_watch_resumes_on_another_daemon_without_gap_or_duplicate() {
    let prefix = fresh_prefix();
    let (a, b) = (daemon_on(&prefix).await, daemon_on(&prefix).await);
    let (ca, cb) = (a.client(), b.client());
    ca.register(location_app("wxa")).await;
    let mut written = Vec::new();
    for i in 0..10 {
        let u = format!("u{i}");
        // Alternate the daemons: both write to the one log.
        let c = if i % 2 == 0 { &ca } else { &cb };
        written.extend(
            c.flip("wxa", &u, "scope.camera")
                .await
                .iter()
                .map(|ch| key_of_change("wxa", &u, ch)),
        );
    }
    let last = written.last().unwrap().0;
    // Part of the log from b...
    let mut on_b = cb.watch(from(0)).await.unwrap();
    let first_part = events_until(&mut on_b, written[7].0).await;
    drop(on_b);
    let seen = first_part.last().unwrap().0;
    b.stop().await;
    // ...more writes while the client is away, then the rest from a.
    for i in 10..14 {
        let u = format!("u{i}");
        written.extend(
            ca.flip("wxa", &u, "scope.camera")
                .await
                .iter()
                .map(|ch| key_of_change("wxa", &u, ch)),
        );
    }
    let end = written.last().unwrap().0;
    assert!(end > last);
    let mut on_a = ca.watch(from(seen)).await.unwrap();
    let rest = events_until(&mut on_a, end).await;
    let mut resumed = first_part;
    resumed.extend(rest);
    assert_eq!(
        resumed, written,
        "the resumed stream is exactly the acknowledged log"
    );
    assert_chain(&resumed);
    ca.assert_consistent().await;
}

/// Writers on two daemons change the same users' decisions at once
/// (answers and removals, each planned from the current state): every
/// acknowledged change is in the one log, the log is a chain of states
/// (nothing lost), and both daemons find state == fold(log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_concurrent_writes_through_two_daemons_lose_nothing() {
    let prefix = fresh_prefix();
    let (a, b) = (daemon_on(&prefix).await, daemon_on(&prefix).await);
    let clients = [a.client(), b.client()];
    clients[0].register(location_app("wxc")).await;
    const WRITERS: usize = 16;
    const ROUNDS: usize = 12;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let c = clients[w % 2].clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for r in 0..ROUNDS {
                    // Four users shared by all writers: real contention.
                    let u = format!("u{}", (w + r) % 4);
                    let changes = if (w + r) % 3 == 0 {
                        c.remove("wxc", &u).await
                    } else {
                        let scope = ["scope.camera", "scope.record"][r % 2];
                        c.answer("wxc", &u, scope, pb::Answer::Allow).await
                    };
                    acked.extend(changes.iter().map(|ch| key_of_change("wxc", &u, ch)));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    acked.sort();
    let end = acked.last().expect("some writes changed something").0;
    for c in &clients {
        let mut stream = c.watch(from(0)).await.unwrap();
        let log = events_until(&mut stream, end).await;
        assert_eq!(log, acked, "the log is exactly the acknowledged changes");
        assert_chain(&log);
        let verify = c.assert_consistent().await;
        assert_eq!(verify.revision, end);
    }
    assert_eq!(
        clients[0].setting("wxc", "u1").await,
        clients[1].setting("wxc", "u1").await,
        "both daemons serve the same state"
    );
}

/// docs/deploy-etcd.md's commands, run verbatim as one `sh -e` script with
/// the built `consentd` and `consentctl` (and Debian's `etcd`, `etcdctl`)
/// on PATH: three members, three daemons, a write through one read on the
/// others, everything stopped again. Its own process group, killed if it
/// hangs.
#[test]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
fn etcd_deploy_doc_runs_verbatim() {
    use std::{os::unix::process::CommandExt as _, process::Command};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/deploy-etcd.md")).unwrap();
    let script: String = text
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .collect();
    assert!(script.contains("--store etcd"), "the doc has its commands");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_consentd"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Files, not pipes: nobody reads while the script runs.
    let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut child = Command::new("sh")
        .arg("-ec")
        .arg(&script)
        .env("PATH", path)
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = child.id() as libc::pid_t;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            // SAFETY: kill(2) of the process group this test started.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let read = |mut f: std::fs::File| {
        use std::io::{Read as _, Seek as _};
        let mut text = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut text).unwrap();
        text
    };
    let (stdout, stderr) = (read(stdout), read(stderr));
    assert!(
        status.success(),
        "the doc's script failed ({status}):\n{stdout}\n{stderr}"
    );
    let granted = stdout
        .lines()
        .filter(|l| l.starts_with("outcome") && l.trim_end().ends_with(" GRANTED"))
        .count();
    assert_eq!(granted, 2, "daemons 2 and 3 both answer GRANTED:\n{stdout}");
}

/// A write acknowledged by daemon A, then a read with its revision as the
/// consistency token on daemon B: B answers only once its view has the
/// write, every time (counted: how often B's view had not applied it yet
/// when asked). A token beyond etcd's `m/revision` is OUT_OF_RANGE naming
/// both numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_a_token_from_one_daemon_is_met_on_another() {
    use crate::{fixture::android, support::authorize_req, tokens::with_token};
    let prefix = fresh_prefix();
    let (a, b) = (daemon_on(&prefix).await, daemon_on(&prefix).await);
    let (ca, cb) = (a.client(), b.client());
    ca.register(location_app("wxtok")).await;
    let mut behind = 0;
    for i in 0..20 {
        let u = format!("u{i}");
        let changes = ca
            .answer("wxtok", &u, "scope.camera", pb::Answer::Allow)
            .await;
        let token = key_of_change("wxtok", &u, &changes[0]).0;
        let ask = || authorize_req("wxtok", &u, "scope.camera", android());
        let (mut one, mut other) = (cb.auth(), cb.auth());
        let (with, without) = tokio::join!(
            one.authorize(with_token(ask(), &token.to_string())),
            other.authorize(ask()),
        );
        let with = with.expect("the token is met").into_inner();
        assert_eq!(
            with.decision.unwrap().outcome(),
            pb::Outcome::Granted,
            "b answers from a view that has a's write {token}"
        );
        if without.unwrap().into_inner().decision.unwrap().outcome() != pb::Outcome::Granted {
            behind += 1;
        }
    }
    eprintln!("b's view had not applied a's write yet, without a token: {behind} of 20");
    let newest = ca.revision().await;
    let ahead = newest + 1000;
    let status = cb
        .auth()
        .authorize(with_token(
            authorize_req("wxtok", "u0", "scope.camera", android()),
            &ahead.to_string(),
        ))
        .await
        .expect_err("beyond the store");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&ahead.to_string())
            && status.message().contains(&newest.to_string()),
        "{status:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// etcd calls are timed by operation, and the cluster's revision as the
/// quorum probe reads it reaches the view's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_call_latency_and_cluster_revision_metrics_move() {
    use crate::metrics::{scrape, value};
    let prefix = fresh_prefix();
    let d = TestDaemon::with(move |c| {
        use_etcd(c, &prefix);
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = d.daemon().metrics_addr().expect("metrics endpoint on");
    let c = d.client();
    c.register(location_app("wxmet")).await;
    c.answer("wxmet", "u", "scope.camera", pb::Answer::Allow)
        .await;
    let revision = c.revision().await;
    let count = |text: &str, op: &str| {
        value(
            text,
            &format!(r#"consentd_etcd_request_seconds_count{{op="{op}"}}"#),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(addr).await;
        let probed = value(&text, "consentd_store_cluster_revision ") >= revision as f64;
        if (probed && count(&text, "lease_keepalive") >= 1.0)
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for op in [
        "txn",
        "range",
        "lock",
        "unlock",
        "watch",
        "lease_grant",
        "lease_keepalive",
    ] {
        assert!(count(&text, op) >= 1.0, "{op}: {text}");
    }
    assert!(
        value(&text, r#"consentd_etcd_request_seconds_sum{op="txn"}"#) > 0.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "consentd_store_cluster_revision "),
        revision as f64
    );
    assert_eq!(value(&text, "consentd_store_view_lag_revisions "), 0.0);
    d.stop().await;
}
