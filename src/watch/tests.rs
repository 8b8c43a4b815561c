//! The subscription state machine against a real store, polled by hand.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::time::Instant;

use super::{Item, Subscription, WatchConfig, WatchError, Watcher};
use crate::{
    domain::{AppId, Cause, Change, DecisionState, Event, EventFilter, Scope, Subject, UserId},
    store::{SledConfig, SledStore, Store, WriteSet},
};

fn open(dir: &tempfile::TempDir, publish_capacity: usize) -> Arc<dyn Store> {
    let store = SledStore::open(&SledConfig {
        path: dir.path().join("data"),
        cache_capacity: 8 << 20,
        max_batch: 64,
        queue_depth: 64,
        publish_capacity,
        observer: None,
        flush_on_commit: false,
        clock: crate::clock::SystemClock::shared(),
    })
    .unwrap();
    Arc::new(store)
}

/// Grants `scope.camera` to a new user of `app`; returns its revision.
async fn grant(store: &Arc<dyn Store>, app: &str, user: &str) -> u64 {
    let (app, user) = (AppId::parse(app).unwrap(), UserId::parse(user).unwrap());
    let change = Change {
        scope: Scope::Camera,
        old: DecisionState::NotDetermined,
        new: DecisionState::Granted,
        cause: Cause::Popup,
    };
    store
        .submit(Box::new(move |_| {
            Ok(WriteSet {
                changes: vec![(Subject { app, user }, change)],
                ..WriteSet::default()
            })
        }))
        .await
        .unwrap()
        .revision
}

fn config(progress_interval: Duration) -> WatchConfig {
    WatchConfig {
        progress_interval,
        catch_up_page: 4,
        ..WatchConfig::default()
    }
}

/// One item of a stream, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum WatchItem {
    Event(Event),
    /// Every matching event up to this revision has been sent.
    Progress(u64),
}

fn owned(item: Item<'_>) -> WatchItem {
    match item {
        Item::Live(event) => WatchItem::Event(event.clone()),
        Item::Logged(event) => WatchItem::Event(event),
        Item::Progress(revision) => WatchItem::Progress(revision),
    }
}

async fn next(subscription: &mut Subscription) -> Option<WatchItem> {
    std::future::poll_fn(|cx| subscription.poll_item(cx, owned)).await
}

async fn next_within(subscription: &mut Subscription, limit: Duration) -> Option<WatchItem> {
    tokio::time::timeout(limit, next(subscription))
        .await
        .expect("the subscription stalled")
}

fn revision(item: &WatchItem) -> u64 {
    match item {
        WatchItem::Event(e) => e.revision,
        WatchItem::Progress(r) => *r,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wakes_a_waiting_subscription_and_names_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 16);
    let watcher = Watcher::new(store.clone(), config(Duration::from_secs(60)));
    let last = grant(&store, "wxa", "u1").await;
    let (mut subscription, outcome) = watcher.subscribe(EventFilter::default(), Some(0)).unwrap();
    let first = next_within(&mut subscription, Duration::from_secs(5)).await;
    assert_eq!(first.as_ref().map(revision), Some(last));
    // Parked on the broadcast, polled by a task of its own.
    let parked = tokio::spawn(async move { next(&mut subscription).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!parked.is_finished());
    watcher.shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(5), parked)
        .await
        .expect("shutdown did not wake the subscription")
        .unwrap();
    assert_eq!(ended, None);
    let why = outcome.lock().unwrap().take();
    assert!(
        matches!(why, Some(WatchError::ShuttingDown { last: l }) if l == last),
        "{why:?}"
    );
    assert!(matches!(
        watcher.subscribe(EventFilter::default(), None),
        Err(WatchError::ShuttingDown { .. })
    ));
    assert_eq!(watcher.stats().active.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_markers_come_only_after_a_whole_idle_interval() {
    let interval = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 16);
    let watcher = Watcher::new(store.clone(), config(interval));
    let (mut all, _) = watcher.subscribe(EventFilter::default(), None).unwrap();
    // Matches nothing that is written: its markers still follow the cursor.
    let mut other = EventFilter::default();
    other.apps.insert(AppId::parse("wxother").unwrap());
    let (mut none, _) = watcher.subscribe(other, None).unwrap();
    // Writes every 100 ms for 0.6 s: activity keeps postponing the marker.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..6 {
                last = grant(&store, "wxa", &format!("u{i}")).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last
        })
    };
    // Until every event is in and two markers have followed the last one.
    let mut items = Vec::new();
    let mut at = Instant::now();
    let (mut events, mut markers_after) = (0, 0);
    while events < 6 || markers_after < 2 {
        let item = next_within(&mut all, Duration::from_secs(10))
            .await
            .unwrap();
        let now = Instant::now();
        match item {
            WatchItem::Event(_) => {
                events += 1;
                markers_after = 0;
            }
            WatchItem::Progress(_) => {
                markers_after += 1;
                // Never early: the stream was idle for the whole interval
                // since the item before (timers do not fire before their
                // deadline, and activity moves it).
                assert!(
                    now - at >= interval - Duration::from_millis(2),
                    "marker {} ms after the previous item",
                    (now - at).as_millis()
                );
            }
        }
        items.push(item);
        at = now;
    }
    let last = writer.await.unwrap();
    let events: Vec<u64> = items
        .iter()
        .filter(|i| matches!(i, WatchItem::Event(_)))
        .map(revision)
        .collect();
    assert_eq!(events, (last - 5..=last).collect::<Vec<_>>());
    // Markers name the cursor, which never runs ahead of the events sent.
    let mut sent = 0;
    for item in &items {
        match item {
            WatchItem::Event(e) => sent = e.revision,
            WatchItem::Progress(r) => assert_eq!(*r, sent),
        }
    }
    assert_eq!(items.last().map(revision), Some(last));
    // The filtered stream got no event, but its marker covers every one.
    let marker = loop {
        match next_within(&mut none, Duration::from_secs(10))
            .await
            .unwrap()
        {
            WatchItem::Progress(r) if r == last => break r,
            WatchItem::Progress(_) => continue,
            WatchItem::Event(e) => panic!("filtered stream got {e:?}"),
        }
    };
    assert_eq!(marker, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_the_ring_reads_the_gap_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // A ring of two groups, log pages of four events.
    let store = open(&dir, 2);
    let watcher = Watcher::new(store.clone(), config(Duration::from_secs(60)));
    let mut log = Vec::new();
    for i in 0..5 {
        log.push(grant(&store, "wxa", &format!("old{i}")).await);
    }
    // Replays from 2, then is not polled while 20 more groups commit.
    let (mut subscription, _) = watcher.subscribe(EventFilter::default(), Some(2)).unwrap();
    for i in 0..20 {
        log.push(grant(&store, "wxa", &format!("new{i}")).await);
    }
    let mut got = Vec::new();
    while got.last() != log.last() {
        match next_within(&mut subscription, Duration::from_secs(10)).await {
            Some(WatchItem::Event(e)) => got.push(e.revision),
            Some(WatchItem::Progress(_)) => {}
            None => panic!("ended"),
        }
    }
    let expected: Vec<u64> = log.iter().copied().filter(|&r| r > 2).collect();
    assert_eq!(got, expected, "every event once, in order");
    let stats = watcher.stats();
    assert!(
        stats.lagged.load(Ordering::Relaxed) >= 1,
        "it lagged the ring"
    );
    assert!(
        stats.catch_ups.load(Ordering::Relaxed) >= 2,
        "replay and lag recovery"
    );
    // Live again: the next group comes straight from the ring.
    let live = grant(&store, "wxa", "live").await;
    let item = next_within(&mut subscription, Duration::from_secs(10)).await;
    assert_eq!(item.as_ref().map(revision), Some(live));
}
