//! The backend-independent checks of the [`Store`] contract (see the
//! module docs of `store`). Each check takes a [`Backend`], a factory that
//! opens (and reopens) a store by name, and uses the trait alone; a backend
//! runs them all with `store_contract_tests!(factory)`.

use std::{sync::Arc, time::Duration};

use super::{Erasure, Retention, RevisionWait, Store, StoreError, TxnError, WriteSet};
use crate::domain::{
    AppId, AuditAction, AuditEntry, AuditQuery, Cause, Change, DecisionState, DomainError, Event,
    NagState, PrivacyState, Scope, StateQuery, Subject, UserId,
};

/// Opens stores for the contract checks.
pub(crate) trait Backend {
    /// Opens the store called `name`, creating it the first time; opening
    /// the same name again (after [`Store::close`]) finds what was
    /// acknowledged before.
    fn open(&self, name: &str) -> Arc<dyn Store>;
}

/// Expands to one `#[tokio::test]` per contract check, each on a store
/// from `$backend` (an expression that makes a fresh [`Backend`]);
/// `ignore = "why"` first marks them ignored (a backend that needs a
/// service, run by `--ignored`).
macro_rules! store_contract_tests {
    (ignore = $why:literal, $backend:expr) => {
        $crate::store::contract::store_contract_tests!(@all [#[ignore = $why]] $backend);
    };
    ($backend:expr) => {
        $crate::store::contract::store_contract_tests!(@all [] $backend);
    };
    (@all [$(#[$attr:meta])*] $backend:expr) => {
        $crate::store::contract::store_contract_tests!(@each [$(#[$attr])*] $backend;
            a_failed_or_panicking_job_writes_nothing,
            every_change_takes_the_next_revision_and_one_event,
            acknowledged_writes_survive_a_reopen,
            published_groups_are_contiguous,
            a_job_sees_what_earlier_jobs_of_its_group_wrote,
            compaction_trims_into_the_checkpoint_and_raises_the_horizon,
            subject_reads_what_the_query_asks_for,
            the_log_pages_from_any_revision_and_trims_inside_a_group,
            the_user_index_follows_every_write,
            an_erasure_renames_the_user_in_everything_retained,
            a_pending_erasure_finishes_when_the_store_reopens,
            a_consistency_token_is_met_or_refused_by_what_it_names,
        );
    };
    (@each $attrs:tt $backend:expr; $($check:ident),* $(,)?) => {
        $(
            $crate::store::contract::store_contract_tests!(@one $attrs $backend; $check);
        )*
    };
    (@one [$(#[$attr:meta])*] $backend:expr; $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $check() {
            let backend = $backend;
            $crate::store::contract::$check(&backend).await;
        }
    };
}
pub(crate) use store_contract_tests;

fn subject(user: &str) -> Subject {
    Subject {
        app: AppId::parse("wxcontract").unwrap(),
        user: UserId::parse(user).unwrap(),
    }
}

fn change(scope: Scope, old: DecisionState, new: DecisionState) -> Change {
    Change {
        scope,
        old,
        new,
        cause: Cause::Popup,
    }
}

fn changes(set: Vec<(Subject, Change)>) -> WriteSet {
    WriteSet {
        changes: set,
        ..WriteSet::default()
    }
}

async fn submit(store: &Arc<dyn Store>, set: WriteSet) -> super::Committed {
    store
        .submit(Box::new(move |_| Ok(set)))
        .await
        .expect("the write commits")
}

fn all_events(store: &Arc<dyn Store>, after: u64) -> Vec<Event> {
    store.events_after(after, 10_000).expect("events read")
}

/// 1. Atomic job: a refused or panicking job writes nothing and takes no
///    revision, even between two jobs that commit in the same group.
pub(crate) async fn a_failed_or_panicking_job_writes_nothing(backend: &impl Backend) {
    let store = backend.open("atomic");
    let before = store.revision();
    let u = subject("u");
    let ok = |scope| {
        let u = u.clone();
        Box::new(move |_: &dyn super::View| {
            Ok(changes(vec![(
                u,
                change(scope, DecisionState::NotDetermined, DecisionState::Granted),
            )]))
        })
    };
    let refused = Box::new(|_: &dyn super::View| -> Result<WriteSet, TxnError> {
        Err(DomainError::FailedPrecondition {
            message: "refused by the job".into(),
        }
        .into())
    });
    let panics = Box::new(|_: &dyn super::View| -> Result<WriteSet, TxnError> {
        panic!("a job that panics")
    });
    let (a, b, c, d) = tokio::join!(
        store.submit(ok(Scope::Camera)),
        store.submit(refused),
        store.submit(panics),
        store.submit(ok(Scope::Record)),
    );
    assert!(matches!(b, Err(TxnError::Rejected(_))), "{b:?}");
    assert!(
        matches!(c, Err(TxnError::Store(StoreError::Internal(_)))),
        "{c:?}"
    );
    let (a, d) = (a.unwrap(), d.unwrap());
    let mut revisions = vec![a.revision, d.revision];
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        [before + 1, before + 2],
        "no revision went to a failed job"
    );
    let events = all_events(&store, before);
    assert_eq!(events.len(), 2, "{events:?}");
    store.close().await.unwrap();
}

/// 2 and 3. A revision per change, one event per decision change (in
///    order, with old, new and cause), the current revision for a job that
///    changes nothing.
pub(crate) async fn every_change_takes_the_next_revision_and_one_event(backend: &impl Backend) {
    let store = backend.open("revisions");
    let start = store.revision();
    let u = subject("u");
    let (n, g, d) = (
        DecisionState::NotDetermined,
        DecisionState::Granted,
        DecisionState::Denied,
    );
    let planned = vec![
        (u.clone(), change(Scope::UserLocation, n, g)),
        (u.clone(), change(Scope::UserLocationBackground, n, g)),
        (
            u.clone(),
            Change {
                cause: Cause::Settings,
                ..change(Scope::Camera, n, d)
            },
        ),
    ];
    let committed = submit(&store, changes(planned.clone())).await;
    assert_eq!(committed.revision, start + 3);
    assert_eq!(store.revision(), start + 3);
    let events = all_events(&store, start);
    assert_eq!(
        events, committed.events,
        "the log holds what was acknowledged"
    );
    for (i, (e, (s, c))) in events.iter().zip(&planned).enumerate() {
        assert_eq!(e.revision, start + 1 + i as u64);
        assert_eq!((&e.app, &e.user), (&s.app, &s.user));
        assert_eq!(
            (e.scope, e.old, e.new, e.cause),
            (c.scope, c.old, c.new, c.cause)
        );
    }
    // A privacy answer takes a revision but is no decision: no event.
    let privacy = WriteSet {
        privacy: Some((
            u.clone(),
            Some(PrivacyState {
                agreed: true,
                version: 1,
                at_ms: 0,
            }),
        )),
        ..WriteSet::default()
    };
    assert_eq!(submit(&store, privacy).await.revision, start + 4);
    assert_eq!(all_events(&store, start).len(), 3);
    // Nothing changed: the current revision, no event.
    let nothing = submit(&store, WriteSet::default()).await;
    assert_eq!(nothing.revision, start + 4);
    assert!(nothing.events.is_empty());
    store.close().await.unwrap();
}

/// 4. Acknowledged writes are there after a reopen, and revisions go on
///    from where they were.
pub(crate) async fn acknowledged_writes_survive_a_reopen(backend: &impl Backend) {
    let store = backend.open("durable");
    let u = subject("u");
    let g = DecisionState::Granted;
    let committed = submit(
        &store,
        changes(vec![(
            u.clone(),
            change(Scope::Camera, DecisionState::NotDetermined, g),
        )]),
    )
    .await;
    store.close().await.unwrap();
    assert!(
        matches!(
            store.submit(Box::new(|_| Ok(WriteSet::default()))).await,
            Err(TxnError::Store(StoreError::Closed))
        ),
        "a closed store refuses writes"
    );
    drop(store);

    let store = backend.open("durable");
    assert_eq!(store.revision(), committed.revision);
    let state = store
        .subject(&u.app, &u.user, &StateQuery::decisions())
        .unwrap();
    assert_eq!(state.records.get(&Scope::Camera).map(|d| d.state), Some(g));
    assert_eq!(all_events(&store, 0), committed.events);
    let next = submit(
        &store,
        changes(vec![(u, change(Scope::Camera, g, DecisionState::Denied))]),
    )
    .await;
    assert_eq!(
        next.revision,
        committed.revision + 1,
        "revisions never go back"
    );
    store.close().await.unwrap();
}

/// 5. Committed groups are published in order and contiguous.
pub(crate) async fn published_groups_are_contiguous(backend: &impl Backend) {
    let store = backend.open("groups");
    let mut rx = store.subscribe();
    let start = store.revision();
    const WRITES: u64 = 64;
    let writes = (0..WRITES).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let u = subject(&format!("u{i}"));
            let c = change(
                Scope::Camera,
                DecisionState::NotDetermined,
                DecisionState::Granted,
            );
            submit(&store, changes(vec![(u, c)])).await
        })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    let mut last = start;
    let mut seen = Vec::new();
    while last < start + WRITES {
        let group = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("every group is published")
            .expect("the subscriber keeps up with 64 groups");
        assert_eq!(group.prev_revision, last, "groups are contiguous");
        assert!(group.revision >= group.prev_revision);
        seen.extend(group.events.iter().map(|e| e.revision));
        last = group.revision;
    }
    assert_eq!(seen, (start + 1..=start + WRITES).collect::<Vec<_>>());
    store.close().await.unwrap();
}

/// 6. A job reads what earlier jobs wrote, also within one group commit:
///    32 concurrent flips of one decision make a chain of states.
pub(crate) async fn a_job_sees_what_earlier_jobs_of_its_group_wrote(backend: &impl Backend) {
    let store = backend.open("serial");
    let start = store.revision();
    let flips = (0..32).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .submit(Box::new(|view| {
                    let u = subject("u");
                    let state = view.subject(&u.app, &u.user, &StateQuery::decisions())?;
                    let old = state
                        .records
                        .get(&Scope::Camera)
                        .map_or(DecisionState::NotDetermined, |d| d.state);
                    let new = match old {
                        DecisionState::Granted => DecisionState::Denied,
                        _ => DecisionState::Granted,
                    };
                    Ok(changes(vec![(u, change(Scope::Camera, old, new))]))
                }))
                .await
                .unwrap()
        })
    });
    for f in flips.collect::<Vec<_>>() {
        f.await.unwrap();
    }
    let events = all_events(&store, start);
    assert_eq!(events.len(), 32);
    let mut state = DecisionState::NotDetermined;
    for e in &events {
        assert_eq!(e.old, state, "each job saw the one before: {e:?}");
        state = e.new;
    }
    store.close().await.unwrap();
}

/// 7. Compaction trims events beyond the retention into the checkpoint and
///    raises the horizon; verification still holds.
pub(crate) async fn compaction_trims_into_the_checkpoint_and_raises_the_horizon(
    backend: &impl Backend,
) {
    let store = backend.open("retention");
    let start = store.revision();
    let mut state = DecisionState::NotDetermined;
    for i in 0..10 {
        let new = if i % 2 == 0 {
            DecisionState::Granted
        } else {
            DecisionState::Denied
        };
        submit(
            &store,
            changes(vec![(subject("u"), change(Scope::Camera, state, new))]),
        )
        .await;
        state = new;
    }
    let retention = Retention {
        max_events: Some(3),
        max_age: None,
    };
    let done = store.compact(retention).await.unwrap();
    assert_eq!(done.compacted_through, start + 7);
    assert_eq!(store.compacted_through(), start + 7);
    let kept = all_events(&store, 0);
    assert_eq!(
        kept.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [start + 8, start + 9, start + 10],
        "nothing at or below the horizon is served"
    );
    let v = store.verify().await.unwrap();
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    assert_eq!(v.retained_events, 3);
    assert_eq!(v.decisions, 1);
    store.close().await.unwrap();
}

/// Reads: one call returns what the query asks for, and only that.
pub(crate) async fn subject_reads_what_the_query_asks_for(backend: &impl Backend) {
    let store = backend.open("subject");
    let u = subject("u");
    let (n, g) = (DecisionState::NotDetermined, DecisionState::Granted);
    let nag = NagState {
        cancels: 1,
        embargo_until_ms: 0,
    };
    let answer = PrivacyState {
        agreed: false,
        version: 2,
        at_ms: 5,
    };
    submit(
        &store,
        WriteSet {
            changes: vec![
                (u.clone(), change(Scope::Camera, n, g)),
                (u.clone(), change(Scope::Record, n, g)),
            ],
            privacy: Some((u.clone(), Some(answer))),
            nag: Some((u.clone(), Scope::Bluetooth, Some(nag))),
            ..WriteSet::default()
        },
    )
    .await;
    let everything = StateQuery {
        scopes: None,
        privacy: true,
        nag: true,
    };
    let all = store.subject(&u.app, &u.user, &everything).unwrap();
    assert_eq!(
        all.records.keys().copied().collect::<Vec<_>>(),
        [Scope::Record, Scope::Camera]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(all.privacy, Some(answer));
    assert_eq!(all.nag.get(&Scope::Bluetooth), Some(&nag));

    let one = StateQuery {
        scopes: Some(vec![Scope::Camera]),
        privacy: false,
        nag: false,
    };
    let camera = store.subject(&u.app, &u.user, &one).unwrap();
    assert_eq!(
        camera.records.keys().copied().collect::<Vec<_>>(),
        [Scope::Camera]
    );
    assert_eq!(camera.privacy, None, "not asked for");
    assert!(camera.nag.is_empty(), "not asked for");
    let other = store
        .subject(&u.app, &UserId::parse("v").unwrap(), &everything)
        .unwrap();
    assert_eq!(other, Default::default(), "another user has nothing");
    store.close().await.unwrap();
}

/// 3 and 7 with large groups: the log reads back from any revision in pages
/// of any size (a Watch resume point may fall inside one group commit, and a
/// backend may pack a group's events into one value), and retention may cut
/// through a group: exactly the newest events stay, across a reopen.
pub(crate) async fn the_log_pages_from_any_revision_and_trims_inside_a_group(
    backend: &impl Backend,
) {
    let store = backend.open("paging");
    let (n, g, d) = (
        DecisionState::NotDetermined,
        DecisionState::Granted,
        DecisionState::Denied,
    );
    let start = store.revision();
    let users = |range: std::ops::Range<usize>, scope, old, new| {
        range
            .map(|i| (subject(&format!("user-{i:04}")), change(scope, old, new)))
            .collect::<Vec<_>>()
    };
    let mut expected = Vec::new();
    // Small, large (one job of 700 changes, ~40 KB of events), small.
    for set in [
        users(0..3, Scope::Camera, n, g),
        users(0..700, Scope::Record, n, g),
        users(0..3, Scope::Camera, g, d),
    ] {
        expected.extend(submit(&store, changes(set)).await.events);
    }
    let last = start + 706;
    assert_eq!(store.revision(), last);
    let after_all = |after: u64, limit: usize| -> Vec<Event> {
        expected
            .iter()
            .filter(|e| e.revision > after)
            .take(limit)
            .cloned()
            .collect()
    };
    for after in [
        0,
        start,
        start + 1,
        start + 3,
        start + 4,
        start + 350,
        start + 702,
        start + 703,
        last - 1,
        last,
        last + 5,
    ] {
        for limit in [0, 1, 7, 10_000] {
            assert_eq!(
                store.events_after(after, limit).unwrap(),
                after_all(after, limit),
                "after {after}, limit {limit}"
            );
        }
    }
    // Paging through the whole log, 37 at a time.
    let mut paged = Vec::new();
    let mut after = start;
    loop {
        let page = store.events_after(after, 37).unwrap();
        let Some(e) = page.last() else { break };
        after = e.revision;
        paged.extend(page);
    }
    assert_eq!(paged, expected);

    // Keep 400: the horizon falls inside the large group.
    let retention = Retention {
        max_events: Some(400),
        max_age: None,
    };
    let done = store.compact(retention).await.unwrap();
    assert_eq!(done.compacted_through, last - 400);
    assert_eq!(done.removed, 306);
    let check = |store: Arc<dyn Store>| async move {
        assert_eq!(store.compacted_through(), last - 400);
        assert_eq!(store.stats().events, 400);
        assert_eq!(all_events(&store, 0), after_all(last - 400, 10_000));
        assert_eq!(
            store.events_after(last - 10, 3).unwrap(),
            after_all(last - 10, 3)
        );
        let v = store.verify().await.unwrap();
        assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
        assert_eq!((v.retained_events, v.decisions), (400, 703));
        store.close().await.unwrap();
    };
    check(store).await;
    check(backend.open("paging")).await;
}

fn in_app(app: &str, user: &str) -> Subject {
    Subject {
        app: AppId::parse(app).unwrap(),
        user: UserId::parse(user).unwrap(),
    }
}

fn apps_of(store: &Arc<dyn Store>, user: &str) -> Vec<String> {
    store
        .user_apps(&UserId::parse(user).unwrap(), None, 1000)
        .unwrap()
        .into_iter()
        .map(|a| a.as_str().to_owned())
        .collect()
}

/// The per-user index: exactly the apps where the user has a decision, a
/// privacy answer or an anti-nag state, after every kind of write, in the
/// same job (a later job of the group sees it), paged in id order, and
/// covered by verify.
pub(crate) async fn the_user_index_follows_every_write(backend: &impl Backend) {
    let store = backend.open("user-index");
    let (n, g, d) = (
        DecisionState::NotDetermined,
        DecisionState::Granted,
        DecisionState::Denied,
    );
    let nag = NagState {
        cancels: 1,
        embargo_until_ms: 0,
    };
    let answer = PrivacyState {
        agreed: true,
        version: 1,
        at_ms: 5,
    };
    submit(
        &store,
        changes(vec![
            (in_app("wxb", "u"), change(Scope::Camera, n, g)),
            (in_app("wxa", "u"), change(Scope::Record, n, d)),
            (in_app("wxa", "u10"), change(Scope::Record, n, d)),
        ]),
    )
    .await;
    submit(
        &store,
        WriteSet {
            privacy: Some((in_app("wxc", "u"), Some(answer))),
            nag: Some((in_app("wxd", "u"), Scope::Bluetooth, Some(nag))),
            ..WriteSet::default()
        },
    )
    .await;
    assert_eq!(apps_of(&store, "u"), ["wxa", "wxb", "wxc", "wxd"]);
    assert_eq!(
        apps_of(&store, "u10"),
        ["wxa"],
        "a longer id is another user"
    );
    let u = UserId::parse("u").unwrap();
    let page = store
        .user_apps(&u, Some(&AppId::parse("wxb").unwrap()), 1)
        .unwrap();
    assert_eq!(page, [AppId::parse("wxc").unwrap()], "paged after wxb");

    // Removing one of two decisions keeps the entry; the last one removes it.
    submit(
        &store,
        changes(vec![(in_app("wxb", "u"), change(Scope::Record, n, g))]),
    )
    .await;
    submit(
        &store,
        changes(vec![(in_app("wxb", "u"), change(Scope::Camera, g, n))]),
    )
    .await;
    assert!(apps_of(&store, "u").contains(&"wxb".to_owned()));
    submit(
        &store,
        changes(vec![(in_app("wxb", "u"), change(Scope::Record, g, n))]),
    )
    .await;
    submit(
        &store,
        WriteSet {
            forget: vec![in_app("wxc", "u"), in_app("wxd", "u")],
            ..WriteSet::default()
        },
    )
    .await;
    assert_eq!(apps_of(&store, "u"), ["wxa"]);

    // A job sees the entries an earlier job of its group staged.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let first = store.submit(Box::new(move |_| {
        Ok(changes(vec![(
            in_app("wxe", "u"),
            change(Scope::Camera, n, g),
        )]))
    }));
    let second = store.submit(Box::new(move |view| {
        let _ = tx.send(view.user_apps(&UserId::parse("u").unwrap())?);
        Ok(WriteSet::default())
    }));
    let (a, b) = tokio::join!(first, second);
    a.unwrap();
    b.unwrap();
    let seen: Vec<String> = rx.await.unwrap().iter().map(|a| a.to_string()).collect();
    assert_eq!(seen, ["wxa", "wxe"]);

    let v = store.verify().await.unwrap();
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    store.close().await.unwrap();
    let store = backend.open("user-index");
    assert_eq!(apps_of(&store, "u"), ["wxa", "wxe"], "durable");
    store.close().await.unwrap();
}

/// An erasure: the marker commits with the revocations; finishing it
/// renames the user in every retained event, checkpoint entry and audit
/// record up to the erasing job (not after), keeps revisions contiguous
/// and checkpoint + log == decisions.
pub(crate) async fn an_erasure_renames_the_user_in_everything_retained(backend: &impl Backend) {
    let store = backend.open("erasure");
    let (n, g) = (DecisionState::NotDetermined, DecisionState::Granted);
    let entry = |user: &str| AuditEntry {
        app: AppId::parse("wxa").unwrap(),
        user: Some(UserId::parse(user).unwrap()),
        scope: Some(Scope::Camera),
        action: AuditAction::SettingsChanged,
        principal: "p".into(),
        client: None,
    };
    for scope in [Scope::Camera, Scope::Record, Scope::Bluetooth] {
        submit(
            &store,
            WriteSet {
                changes: vec![
                    (in_app("wxa", "gone"), change(scope, n, g)),
                    (in_app("wxa", "stays"), change(scope, n, g)),
                ],
                audit: vec![entry("gone"), entry("stays")],
                ..WriteSet::default()
            },
        )
        .await;
    }
    // Two events folded into the checkpoint: the user is named there too.
    store
        .compact(Retention {
            max_events: Some(4),
            max_age: None,
        })
        .await
        .unwrap();
    // A timed grant changed since: its timer is stale but names the user.
    submit(
        &store,
        WriteSet {
            changes: vec![(in_app("wxa", "gone"), change(Scope::Werun, n, g))],
            lifetime: crate::domain::Lifetime::Until {
                expires_at_ms: u64::MAX / 2,
            },
            ..WriteSet::default()
        },
    )
    .await;
    submit(
        &store,
        changes(vec![(
            in_app("wxa", "gone"),
            change(Scope::Werun, g, DecisionState::Denied),
        )]),
    )
    .await;
    assert_eq!(store.next_timer().unwrap(), Some(u64::MAX / 2));
    let pseudonym = UserId::parse("erased-0123456789abcdef0123456789abcdef").unwrap();
    let revoke = [Scope::Camera, Scope::Record, Scope::Bluetooth, Scope::Werun]
        .into_iter()
        .map(|scope| {
            let old = if scope == Scope::Werun {
                DecisionState::Denied
            } else {
                g
            };
            (
                in_app("wxa", "gone"),
                Change {
                    cause: Cause::UserErased,
                    ..change(scope, old, n)
                },
            )
        })
        .collect();
    let erased = submit(
        &store,
        WriteSet {
            changes: revoke,
            erasure: Some(Erasure {
                user: UserId::parse("gone").unwrap(),
                pseudonym: pseudonym.clone(),
            }),
            ..WriteSet::default()
        },
    )
    .await;
    assert!(erased.events.iter().all(|e| e.user.as_str() == "gone"));
    assert!(apps_of(&store, "gone").is_empty());
    let renamed = store.finish_erasures().await.unwrap();
    assert!(renamed >= 3 + 3, "events and audit records: {renamed}");
    assert_eq!(store.finish_erasures().await.unwrap(), 0, "nothing pending");
    assert_eq!(
        store.next_timer().unwrap(),
        None,
        "the stale timer went too"
    );
    // The user comes back after the erasure: the new event keeps the name.
    submit(
        &store,
        changes(vec![(in_app("wxa", "gone"), change(Scope::Camera, n, g))]),
    )
    .await;

    let events = all_events(&store, store.compacted_through());
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    let expected: Vec<u64> = (store.compacted_through() + 1..=store.revision()).collect();
    assert_eq!(revisions, expected, "contiguous");
    let named: Vec<u64> = events
        .iter()
        .filter(|e| e.user.as_str() == "gone")
        .map(|e| e.revision)
        .collect();
    assert_eq!(
        named,
        [store.revision()],
        "only the event after the erasure"
    );
    assert!(events.iter().any(|e| e.user == pseudonym));
    let (records, _) = store
        .audit(
            &AppId::parse("wxa").unwrap(),
            &AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            },
        )
        .unwrap();
    assert_eq!(records.len(), 6);
    assert!(records
        .iter()
        .all(|r| r.entry.user.as_ref().map(UserId::as_str) != Some("gone")));
    assert_eq!(
        records
            .iter()
            .filter(|r| r.entry.user.as_ref() == Some(&pseudonym))
            .count(),
        3
    );
    let v = store.verify().await.unwrap();
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    store.close().await.unwrap();
}

/// A crash between the erasing write and its scrub: the marker is durable,
/// and opening the store finishes the scrub before anything is read.
pub(crate) async fn a_pending_erasure_finishes_when_the_store_reopens(backend: &impl Backend) {
    let store = backend.open("erasure-pending");
    let (n, g) = (DecisionState::NotDetermined, DecisionState::Granted);
    submit(
        &store,
        changes(vec![(in_app("wxa", "gone"), change(Scope::Camera, n, g))]),
    )
    .await;
    submit(
        &store,
        WriteSet {
            changes: vec![(
                in_app("wxa", "gone"),
                Change {
                    cause: Cause::UserErased,
                    ..change(Scope::Camera, g, n)
                },
            )],
            erasure: Some(Erasure {
                user: UserId::parse("gone").unwrap(),
                pseudonym: UserId::parse("erased-ff").unwrap(),
            }),
            ..WriteSet::default()
        },
    )
    .await;
    // Not finished: the log still names the user until the store reopens.
    assert!(all_events(&store, 0)
        .iter()
        .all(|e| e.user.as_str() == "gone"));
    // Compaction waits for the scrub: folding the user's events into the
    // checkpoint first would leave checkpoint entries naming the user.
    let everything = Retention {
        max_events: Some(0),
        max_age: None,
    };
    let postponed = store.compact(everything).await.unwrap();
    assert_eq!(postponed.removed, 0, "compaction ran before the scrub");
    store.close().await.unwrap();
    let store = backend.open("erasure-pending");
    let users: Vec<String> = all_events(&store, 0)
        .iter()
        .map(|e| e.user.to_string())
        .collect();
    assert_eq!(users, ["erased-ff", "erased-ff"]);
    assert_eq!(store.finish_erasures().await.unwrap(), 0, "nothing pending");
    // Scrubbed: compaction goes on again.
    assert_eq!(store.compact(everything).await.unwrap().removed, 2);
    let v = store.verify().await.unwrap();
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    store.close().await.unwrap();
}

/// Consistency tokens ([`Store::wait_for_revision`]): a revision the
/// store's reads already reflect is met at once (a write's own revision
/// right after its acknowledgement: read-your-writes); one beyond every
/// commit of the whole store is `Ahead`, naming both numbers, at once, not
/// after the wait.
pub(crate) async fn a_consistency_token_is_met_or_refused_by_what_it_names(backend: &impl Backend) {
    let store = backend.open("tokens");
    let start = store.revision();
    let long = Duration::from_secs(5);
    assert!(store.wait_for_revision(0, long).await.unwrap() >= start);
    assert!(store.wait_for_revision(start, long).await.unwrap() >= start);
    let committed = submit(
        &store,
        changes(vec![(
            subject("u"),
            change(
                Scope::Camera,
                DecisionState::NotDetermined,
                DecisionState::Granted,
            ),
        )]),
    )
    .await;
    let met = tokio::time::timeout(
        Duration::from_millis(500),
        store.wait_for_revision(committed.revision, long),
    )
    .await
    .expect("met without waiting")
    .unwrap();
    assert!(met >= committed.revision, "{met} < {}", committed.revision);
    let wanted = committed.revision + 1000;
    let started = std::time::Instant::now();
    match store.wait_for_revision(wanted, long).await {
        Err(RevisionWait::Ahead { wanted: w, newest }) => {
            assert_eq!((w, newest), (wanted, committed.revision));
        }
        other => panic!("a revision never given out is Ahead: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at once, not after the wait: {:?}",
        started.elapsed()
    );
    let message = store
        .wait_for_revision(wanted, long)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&wanted.to_string()) && message.contains(&committed.revision.to_string()),
        "{message}"
    );
    store.close().await.unwrap();
}
