//! The flood: every malformed request against a live daemon, then proof that
//! nothing changed and the daemon still serves.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use consentd::pb::{self, export_record::Record};
use tonic::transport::Channel;

use crate::{
    fixture::{bare_app, heavy, location_app, TestDaemon},
    support,
};

use super::{cases::cases, wire::send};

/// Everything the seeded store holds, as Export streams it (events included).
async fn export(channel: &Channel) -> Vec<pb::ExportRecord> {
    support::export(channel, true).await
}

/// Seeds apps and decisions, floods every RPC of the three services with
/// malformed requests (16 in flight), checks each status code, then that the
/// revision and the whole Export are unchanged and normal calls still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_change_nothing() {
    let _heavy = heavy().await;
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.register(bare_app("wxgame", pb::AppKind::MiniGame)).await;
    c.answer("wxloc", "alice", "scope.camera", pb::Answer::Allow)
        .await;
    c.answer("wxloc", "alice", "scope.userLocation", pb::Answer::Allow)
        .await;
    c.answer("wxloc", "bob", "scope.record", pb::Answer::Deny)
        .await;
    let both = c
        .answer(
            "wxloc",
            "carol",
            "scope.userLocationBackground",
            pb::Answer::Allow,
        )
        .await;
    assert_eq!(both.len(), 2, "background allow grants both: {both:?}");
    c.answer("wxgame", "dan", "scope.userInfo", pb::Answer::Deny)
        .await;

    let revision = c.revision().await;
    let before = export(&c.channel).await;
    let stored_app = before
        .iter()
        .find_map(|r| match &r.record {
            Some(Record::App(a)) if a.app_id == "wxloc" => Some(a.clone()),
            _ => None,
        })
        .expect("wxloc is exported");
    assert!(
        before
            .iter()
            .any(|r| matches!(r.record, Some(Record::Event(_)))),
        "the export carries the event log"
    );

    let cases = Arc::new(cases(&stored_app));
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let tally = Arc::new(Mutex::new(BTreeMap::<(&'static str, String), usize>::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (cases, next, failures, tally) =
            (cases.clone(), next.clone(), failures.clone(), tally.clone());
        let channel = c.channel.clone();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let sent = tokio::time::timeout(
                    Duration::from_secs(20),
                    send(channel.clone(), &case.path, &case.wire),
                )
                .await;
                let problem = match sent {
                    Err(_) => Some("no answer in 20 s".to_owned()),
                    Ok(Ok(body)) => Some(format!("succeeded ({} bytes)", body.len())),
                    Ok(Err(status)) => {
                        *tally
                            .lock()
                            .unwrap()
                            .entry((case.category, format!("{:?}", status.code())))
                            .or_default() += 1;
                        let message = status.message();
                        if status.code() != case.code {
                            Some(format!("got {:?}: {message:.200}", status.code()))
                        } else if !message.contains(case.needle) {
                            Some(format!("message {message:.200?} lacks {:?}", case.needle))
                        } else {
                            None
                        }
                    }
                };
                if let Some(problem) = problem {
                    failures.lock().unwrap().push(format!(
                        "{} {} [{}]: want {:?}, {problem}",
                        case.category, case.path, case.label, case.code
                    ));
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    let tally = tally.lock().unwrap().clone();
    eprintln!("{} malformed requests in {elapsed:?}:", cases.len());
    for ((category, code), n) in &tally {
        eprintln!("  {category:<22} {code:<18} {n}");
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} cases went wrong:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(40)].join("\n")
    );

    // Nothing changed.
    assert_eq!(c.revision().await, revision, "nothing was committed");
    let after = export(&c.channel).await;
    assert_eq!(after.len(), before.len(), "export length");
    assert!(after == before, "the export changed");
    c.assert_consistent().await;

    // And the daemon still answers normal calls correctly.
    let d = c.decision("wxloc", "alice", "scope.camera").await;
    assert_eq!(d.outcome(), pb::Outcome::Granted);
    let d = c.decision("wxloc", "bob", "scope.record").await;
    assert_eq!(d.outcome(), pb::Outcome::Denied);
    let d = c.decision("wxloc", "zoe", "scope.camera").await;
    assert_eq!(d.outcome(), pb::Outcome::Prompt);
    let changes = c
        .answer("wxloc", "zoe", "scope.camera", pb::Answer::Allow)
        .await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].revision, revision + 1);
    let setting = c.setting("wxloc", "zoe").await;
    assert_eq!(
        setting.auth_setting,
        HashMap::from([("scope.camera".to_owned(), true)])
    );
    assert_eq!(setting.revision, revision + 1);
    h.stop().await;
}
