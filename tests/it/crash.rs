//! Crash consistency (issue 3, guarantee 6): SIGKILL the daemon (a child
//! process) under concurrent writes, restart it on the same data dir, and
//! check that nothing acknowledged was lost and the log still explains the state.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use consentd::{
    pb::{self, authorization_client::AuthorizationClient, watch_response::Kind},
    server::Daemon,
};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::fixture::{client_info, connect, location_app, test_config, Client};

/// The real `consentd` binary on a port of its choosing.
struct ChildDaemon {
    child: Child,
    addr: SocketAddr,
}

impl ChildDaemon {
    fn spawn(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consentd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("consentd starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("consentd logs before exiting").unwrap();
            let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if log["fields"]["message"] == "consentd serving" {
                break log["fields"]["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn client() -> pb::ClientInfo {
    client_info(pb::Platform::Ios, "8.0.5", "3.0.0")
}

type Key = (u64, String, String, String, i32, i32, i32);

/// One writer: flips decisions until the daemon dies; returns every acknowledged change.
async fn write_until_dead(channel: Channel, writer: usize) -> Vec<Key> {
    let mut auth = AuthorizationClient::new(channel);
    let mut acked = Vec::new();
    for i in 0.. {
        let user = format!("w{writer}-u{}", i % 5);
        let scope = [
            "scope.camera",
            "scope.record",
            "scope.userLocationBackground",
        ][i % 3];
        let result = match i % 4 {
            0 | 1 => auth
                .record_decision(pb::RecordDecisionRequest {
                    app_id: "wxcrash".into(),
                    user_id: user.clone(),
                    scope: scope.into(),
                    answer: if i % 4 == 0 {
                        pb::Answer::Allow
                    } else {
                        pb::Answer::Deny
                    }
                    .into(),
                    client: Some(client()),
                })
                .await
                .map(|r| r.into_inner().changes),
            2 => auth
                .update_setting(pb::UpdateSettingRequest {
                    app_id: "wxcrash".into(),
                    user_id: user.clone(),
                    location: pb::LocationOption::NotAllowed.into(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().changes),
            _ => auth
                .remove_app(pb::RemoveAppRequest {
                    app_id: "wxcrash".into(),
                    user_id: user.clone(),
                })
                .await
                .map(|r| r.into_inner().changes),
        };
        match result {
            Ok(changes) => acked.extend(changes.iter().map(|c| {
                (
                    c.revision,
                    "wxcrash".to_string(),
                    user.clone(),
                    c.scope.clone(),
                    c.old_state,
                    c.new_state,
                    c.cause,
                )
            })),
            // Business refusals (e.g. an answer over a stored decision) are fine.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(_) => break,
        }
    }
    acked
}

fn key(e: &pb::DecisionEvent) -> Key {
    (
        e.revision,
        e.app_id.clone(),
        e.user_id.clone(),
        e.scope.clone(),
        e.old_state,
        e.new_state,
        e.cause,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = ChildDaemon::spawn(&data);
    let channel = connect(daemon.addr).await;
    Client {
        channel: channel.clone(),
    }
    .register(location_app("wxcrash"))
    .await;

    // A subscriber follows from the start and records what it saw.
    let mut stream = AuthorizationClient::new(channel.clone())
        .watch(pb::WatchRequest {
            start_revision: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(item)) = stream.next().await {
            if let Some(Kind::Event(e)) = item.kind {
                seen.push(key(&e));
            }
        }
        seen
    });
    let writers: Vec<_> = (0..16)
        .map(|w| tokio::spawn(write_until_dead(channel.clone(), w)))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    daemon.kill9();

    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let seen = watcher.await.unwrap();
    assert!(
        acked.len() > 50,
        "the writers got going before the kill ({} acks)",
        acked.len()
    );

    // Restart in-process on the same dir.
    let daemon = Daemon::start(test_config(data)).await.unwrap();
    let channel = connect(daemon.local_addr()).await;
    let verify = Client {
        channel: channel.clone(),
    }
    .assert_consistent()
    .await;

    // The whole log after the restart.
    let revision = verify.revision;
    let mut auth = AuthorizationClient::new(channel.clone());
    let mut log_stream = auth
        .watch(pb::WatchRequest {
            start_revision: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut log = Vec::new();
    while log.last().is_none_or(|k: &Key| k.0 < revision)
        && verify.retained_events > log.len() as u64
    {
        if let Some(Kind::Event(e)) = log_stream.next().await.unwrap().unwrap().kind {
            log.push(key(&e));
        }
    }
    assert_eq!(log.len() as u64, verify.retained_events);
    for pair in log.windows(2) {
        assert!(pair[0].0 < pair[1].0, "revisions strictly increase");
    }
    let logged: std::collections::HashSet<&Key> = log.iter().collect();
    for a in &acked {
        assert!(logged.contains(a), "acknowledged change {a:?} was lost");
    }
    // What the subscriber saw before the crash is exactly a prefix of the log...
    assert_eq!(
        seen[..],
        log[..seen.len()],
        "the stream never ran ahead of the durable log"
    );
    // ...and resuming from its last revision yields exactly the rest.
    let resume = seen.last().map_or(0, |k| k.0);
    let mut resumed = auth
        .watch(pb::WatchRequest {
            start_revision: Some(resume),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut rest = Vec::new();
    while seen.len() + rest.len() < log.len() {
        if let Some(Kind::Event(e)) = resumed.next().await.unwrap().unwrap().kind {
            rest.push(key(&e));
        }
    }
    assert_eq!([seen, rest].concat(), log);

    // Revisions continue above everything that was committed.
    let after = auth
        .record_decision(pb::RecordDecisionRequest {
            app_id: "wxcrash".into(),
            user_id: "fresh".into(),
            scope: "scope.werun".into(),
            answer: pb::Answer::Allow.into(),
            client: Some(client()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after.revision > revision);
    daemon.shutdown().await.unwrap();
}
