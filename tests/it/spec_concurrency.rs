//! Concurrent writers: 32 tasks x 20 writes (RecordDecision and
//! UpdateSetting) on distinct and shared keys. Every committed change gets
//! its own revision, each task sees its revisions increase, and the final
//! state is what the writes and their revision order say.

use std::collections::{HashMap, HashSet};

use consentd::pb::{Answer, DecisionState, LocationOption};

use crate::util::{location_app, TestDaemon};

const TASKS: usize = 32;
const DISTINCT_SCOPES: [&str; 5] = [
    "scope.camera",
    "scope.record",
    "scope.bluetooth",
    "scope.werun",
    "scope.writePhotosAlbum",
];
const SHARED_USER: &str = "shared";
const SHARED_SCOPE: &str = "scope.camera";

/// A committed change as a task saw it: (revision, user, scope, new state).
type Seen = (u64, String, String, DecisionState);

/// The popup answer a task gives its own user's scope `k` first.
fn first_answer(task: usize, k: usize) -> Answer {
    if (task + k).is_multiple_of(2) {
        Answer::Allow
    } else {
        Answer::Deny
    }
}

/// 20 writes: for each of 5 scopes of its own user, a popup answer then a
/// settings flip (10 writes that each change something), interleaved with
/// 10 settings writes on the shared user's shared scope (which may or may
/// not change it, depending on the other tasks).
async fn writer(h: &TestDaemon, task: usize) -> (Vec<u64>, Vec<Seen>) {
    let user = format!("user-{task}");
    let mut own_revisions = Vec::new();
    let mut seen = Vec::new();
    let mut note = |user: &str, changes: &[consentd::pb::DecisionChange]| {
        for c in changes {
            seen.push((c.revision, user.to_string(), c.scope.clone(), c.new_state()));
        }
    };
    for (k, scope) in DISTINCT_SCOPES.iter().enumerate() {
        let answer = first_answer(task, k);
        let resp = h.answer("wxc", &user, scope, answer).await;
        assert_eq!(resp.changes.len(), 1, "task {task} {scope}: {resp:?}");
        note(&user, &resp.changes);
        own_revisions.push(resp.revision);

        let shared = h
            .update_setting(
                "wxc",
                SHARED_USER,
                &[(SHARED_SCOPE, (task + k).is_multiple_of(2))],
                LocationOption::Unspecified,
            )
            .await
            .unwrap();
        note(SHARED_USER, &shared.changes);
        own_revisions.push(shared.revision);

        let flip = h
            .update_setting(
                "wxc",
                &user,
                &[(scope, answer != Answer::Allow)],
                LocationOption::Unspecified,
            )
            .await
            .unwrap();
        assert_eq!(flip.changes.len(), 1, "task {task} {scope}: {flip:?}");
        note(&user, &flip.changes);
        own_revisions.push(flip.revision);

        let shared = h
            .update_setting(
                "wxc",
                SHARED_USER,
                &[(SHARED_SCOPE, (task + k) % 2 == 1)],
                LocationOption::Unspecified,
            )
            .await
            .unwrap();
        note(SHARED_USER, &shared.changes);
        own_revisions.push(shared.revision);
    }
    (own_revisions, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_unique_ordered_revisions_and_a_consistent_state() {
    let h = std::sync::Arc::new(TestDaemon::start().await);
    h.register(location_app("wxc")).await;
    h.answer("wxc", SHARED_USER, SHARED_SCOPE, Answer::Allow)
        .await;
    let start = h.revision().await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let h = h.clone();
            tokio::spawn(async move { writer(&h, task).await })
        })
        .collect();
    let mut all_seen: Vec<Seen> = Vec::new();
    for (task, handle) in tasks.into_iter().enumerate() {
        let (revisions, seen) = handle.await.expect("writer task");
        assert_eq!(revisions.len(), 20);
        // A task's own distinct-key writes always change something, so its
        // responses never go backwards and its changes strictly increase.
        assert!(
            revisions.windows(2).all(|w| w[0] <= w[1]),
            "task {task}: revisions go backwards: {revisions:?}"
        );
        let own: Vec<u64> = seen
            .iter()
            .filter(|(_, user, _, _)| user != SHARED_USER)
            .map(|(r, _, _, _)| *r)
            .collect();
        assert_eq!(own.len(), 10, "task {task}");
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "task {task}: change revisions not strictly increasing: {own:?}"
        );
        all_seen.extend(seen);
    }

    // Every committed change has its own revision, all above the start.
    let revisions: HashSet<u64> = all_seen.iter().map(|(r, _, _, _)| *r).collect();
    assert_eq!(
        revisions.len(),
        all_seen.len(),
        "two changes share a revision"
    );
    assert!(revisions.iter().all(|r| *r > start));
    let top = *revisions.iter().max().unwrap();
    assert_eq!(h.revision().await, top, "the store reports the last change");

    // Distinct keys: each scope ends opposite to its task's popup answer.
    for task in 0..TASKS {
        let user = format!("user-{task}");
        let expected: HashMap<String, bool> = DISTINCT_SCOPES
            .iter()
            .enumerate()
            .map(|(k, s)| (s.to_string(), first_answer(task, k) != Answer::Allow))
            .collect();
        assert_eq!(
            h.setting("wxc", &user).await.auth_setting,
            expected,
            "{user}"
        );
    }
    // The shared key: the change with the highest revision wins, and the
    // changes alternate (each one changes something).
    let mut shared: Vec<&Seen> = all_seen.iter().filter(|s| s.1 == SHARED_USER).collect();
    shared.sort();
    assert!(
        shared.windows(2).all(|w| w[0].3 != w[1].3),
        "consecutive shared changes to the same state: {shared:?}"
    );
    let last = shared.last().map(|s| s.3 == DecisionState::Granted);
    let stored = h.setting("wxc", SHARED_USER).await.auth_setting;
    assert_eq!(
        stored.get(SHARED_SCOPE).copied(),
        Some(last.unwrap_or(true)),
        "shared scope"
    );
    assert_eq!(stored.len(), 1);

    match std::sync::Arc::try_unwrap(h) {
        Ok(h) => h.stop().await,
        Err(_) => panic!("a writer still holds the daemon"),
    }
}
