//! Decision-change streams (SPEC section 7).
//!
//! Every subscription is one task owned by the [`Watcher`]'s tracker. It
//! follows the store's broadcast of committed groups and keeps a cursor: the
//! revision through which every event has been handled (sent, or skipped by
//! the filter). Groups are contiguous (`prev_revision` of one is the
//! `revision` of the one before), so the task tells a duplicate (already
//! covered: skip) from a gap (it lagged, or it has just started: read the
//! missing range from the durable log first). Replay-then-live and lag
//! recovery are therefore the same path, and nothing is sent twice or
//! skipped. Memory per subscriber is its channel (bounded) and its place in
//! the shared broadcast ring (bounded); a subscriber that falls behind the
//! ring reads the log instead, and one that falls behind the log's
//! retention is ended with OUT_OF_RANGE.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    sync::{broadcast, mpsc},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    domain::{Event, EventFilter},
    store::{Published, Store, StoreError},
};

/// Tuning of the watch streams.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Idle time after which a stream gets a progress marker.
    pub progress_interval: Duration,
    /// Items buffered per stream before its task waits for the client.
    pub stream_buffer: usize,
    /// Events read from the log per page while catching up.
    pub catch_up_page: usize,
    /// Most streams open at once, over every connection.
    pub max_streams: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            progress_interval: Duration::from_secs(5),
            stream_buffer: 64,
            catch_up_page: 512,
            max_streams: DEFAULT_MAX_WATCH_STREAMS,
        }
    }
}

/// Default for [`WatchConfig::max_streams`].
pub const DEFAULT_MAX_WATCH_STREAMS: u64 = 10_000;

/// One item of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    Event(Event),
    /// Every matching event up to this revision has been sent.
    Progress(u64),
}

/// Why a stream could not start or had to end.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "start_revision {start} is older than the retained history: events up to revision \
         {compacted_through} were compacted, the oldest retained revision is {} \
         (resume with start_revision >= {compacted_through}, or resynchronise with GetSetting)",
        compacted_through + 1
    )]
    OutOfRange { start: u64, compacted_through: u64 },
    #[error("start_revision {start} is ahead of the current revision {current}")]
    Ahead { start: u64, current: u64 },
    #[error(
        "this stream fell behind the retained history at revision {cursor} (events up to \
         {compacted_through} were compacted); resynchronise with GetSetting and watch again"
    )]
    FellBehind { cursor: u64, compacted_through: u64 },
    #[error("{open} watch streams are open, the limit (watch.max_streams); try again later")]
    TooManyStreams { open: u64 },
    #[error("consentd is shutting down; resume with start_revision {last}")]
    ShuttingDown { last: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters of the watch streams.
#[derive(Debug, Default)]
pub struct WatchStats {
    pub active: AtomicU64,
    pub started: AtomicU64,
    /// Times a subscriber fell behind the broadcast ring.
    pub lagged: AtomicU64,
    /// Reads of the durable log (replays and lag recovery).
    pub catch_ups: AtomicU64,
}

/// The end of a stream, read by the gRPC edge after the last item.
pub type Outcome = Arc<Mutex<Option<WatchError>>>;

/// Owns every subscription task.
pub struct Watcher {
    store: Arc<dyn Store>,
    config: WatchConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    stats: Arc<WatchStats>,
}

impl Watcher {
    pub fn new(store: Arc<dyn Store>, config: WatchConfig) -> Self {
        Self {
            store,
            config,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            stats: Arc::new(WatchStats::default()),
        }
    }

    pub fn stats(&self) -> &WatchStats {
        &self.stats
    }

    /// Starts a subscription. Items arrive on the receiver; when it ends,
    /// the outcome holds the error that ended it, if any.
    pub fn subscribe(
        &self,
        filter: EventFilter,
        start: Option<u64>,
    ) -> Result<(mpsc::Receiver<WatchItem>, Outcome), WatchError> {
        if self.shutdown.is_cancelled() {
            return Err(WatchError::ShuttingDown {
                last: start.unwrap_or_else(|| self.store.revision()),
            });
        }
        // Counted before anything else, so the limit holds under a burst.
        let guard = ActiveGuard::new(self.stats.clone());
        let open = self.stats.active.load(Ordering::Relaxed);
        if open > self.config.max_streams {
            return Err(WatchError::TooManyStreams { open: open - 1 });
        }
        // Subscribe before reading the revision: every group after it is
        // then either in the log range we replay or in the receiver.
        let published = self.store.subscribe();
        let current = self.store.revision();
        let compacted_through = self.store.compacted_through();
        let cursor = match start {
            Some(start) if start < compacted_through => {
                return Err(WatchError::OutOfRange {
                    start,
                    compacted_through,
                })
            }
            Some(start) if start > current => return Err(WatchError::Ahead { start, current }),
            Some(start) => start,
            None => current,
        };
        let (tx, rx) = mpsc::channel(self.config.stream_buffer.max(1));
        let outcome = Outcome::default();
        let subscription = Subscription {
            store: self.store.clone(),
            filter,
            cursor,
            published,
            tx,
            shutdown: self.shutdown.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
            _guard: guard,
        };
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        let end = outcome.clone();
        self.tasks.spawn(async move {
            if let Err(e) = subscription.run(current).await {
                if let Ok(mut slot) = end.lock() {
                    *slot = Some(e);
                }
            }
        });
        Ok((rx, outcome))
    }

    /// Ends every stream with a resumable UNAVAILABLE and waits for the
    /// tasks, at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tasks.len(),
                "watch streams did not stop in time"
            );
        }
    }
}

/// Counts a live subscription; uncounts it when the task ends, however.
struct ActiveGuard(Arc<WatchStats>);

impl ActiveGuard {
    fn new(stats: Arc<WatchStats>) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the loop stopped without an error for the client.
enum Stop {
    /// The client went away.
    Disconnected,
    Error(WatchError),
}

impl From<WatchError> for Stop {
    fn from(e: WatchError) -> Self {
        Stop::Error(e)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Error(e.into())
    }
}

struct Subscription {
    store: Arc<dyn Store>,
    filter: EventFilter,
    /// Every event up to here has been sent or filtered out.
    cursor: u64,
    published: broadcast::Receiver<Arc<Published>>,
    tx: mpsc::Sender<WatchItem>,
    shutdown: CancellationToken,
    config: WatchConfig,
    stats: Arc<WatchStats>,
    _guard: ActiveGuard,
}

impl Subscription {
    async fn run(mut self, current: u64) -> Result<(), WatchError> {
        match self.serve(current).await {
            Ok(()) | Err(Stop::Disconnected) => Ok(()),
            Err(Stop::Error(e)) => Err(e),
        }
    }

    async fn serve(&mut self, current: u64) -> Result<(), Stop> {
        self.catch_up(current).await?;
        let interval = self.config.progress_interval;
        let idle = tokio::time::sleep(interval);
        tokio::pin!(idle);
        loop {
            let sent = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(self.shutting_down()),
                () = self.tx.closed() => return Err(Stop::Disconnected),
                received = self.published.recv() => match received {
                    Ok(group) => self.apply(&group).await?,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        self.stats.lagged.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(cursor = self.cursor, missed_groups = missed, "watcher lagged; catching up from the log");
                        let target = self.store.revision();
                        self.catch_up(target).await?
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(self.shutting_down()),
                },
                () = &mut idle => {
                    self.emit(WatchItem::Progress(self.cursor)).await?;
                    true
                }
            };
            if sent {
                idle.as_mut().reset(Instant::now() + interval);
            }
        }
    }

    fn shutting_down(&self) -> Stop {
        Stop::Error(WatchError::ShuttingDown { last: self.cursor })
    }

    /// Handles one committed group; returns whether anything was sent.
    async fn apply(&mut self, group: &Published) -> Result<bool, Stop> {
        if group.revision <= self.cursor {
            return Ok(false);
        }
        let mut sent = false;
        if group.prev_revision > self.cursor {
            // A group we never saw: read the gap from the log.
            sent = self.catch_up(group.prev_revision).await?;
        }
        for event in &group.events {
            if event.revision > self.cursor {
                sent |= self.offer(event).await?;
            }
        }
        self.cursor = group.revision;
        Ok(sent)
    }

    /// Sends every retained event in (cursor, target] from the durable log.
    async fn catch_up(&mut self, target: u64) -> Result<bool, Stop> {
        let mut sent = false;
        if self.cursor < target {
            self.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
        }
        while self.cursor < target {
            let page = self.config.catch_up_page.max(1);
            let events = self.store.events_after(self.cursor, page)?;
            // Checked after the read: trimming raises the horizon before it
            // deletes, so a horizon at or below the cursor proves the read whole.
            let compacted_through = self.store.compacted_through();
            if compacted_through > self.cursor {
                return Err(WatchError::FellBehind {
                    cursor: self.cursor,
                    compacted_through,
                }
                .into());
            }
            let complete = events.len() < page;
            for event in &events {
                if event.revision > target {
                    break;
                }
                sent |= self.offer(event).await?;
            }
            if complete || events.last().is_none_or(|e| e.revision >= target) {
                break;
            }
        }
        self.cursor = self.cursor.max(target);
        Ok(sent)
    }

    /// Sends `event` if it matches; advances the cursor either way.
    async fn offer(&mut self, event: &Event) -> Result<bool, Stop> {
        let matched = self.filter.matches(event);
        if matched {
            self.emit(WatchItem::Event(event.clone())).await?;
        }
        self.cursor = event.revision;
        Ok(matched)
    }

    async fn emit(&mut self, item: WatchItem) -> Result<(), Stop> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(self.shutting_down()),
            sent = self.tx.send(item) => sent.map_err(|_| Stop::Disconnected),
        }
    }
}
