//! Decision-change streams (SPEC section 7).
//!
//! A subscription is a state machine that the gRPC response stream polls;
//! it has no task of its own. It follows the store's broadcast of committed
//! groups and keeps a cursor: the revision through which every event has
//! been handed out (or skipped by the filter). Groups are contiguous
//! (`prev_revision` of one is the `revision` of the one before), so it tells
//! a duplicate (already covered: skip) from a gap (it lagged, or it has just
//! started: read the missing range from the durable log first). Replay-then-
//! live and lag recovery are therefore the same path, and nothing is sent
//! twice or skipped. A subscription is only polled when the connection can
//! take more, so a slow client leaves its place in the bounded broadcast
//! ring behind and reads the log instead; nothing is buffered without
//! bound, and one that falls behind the log's retention is ended with
//! OUT_OF_RANGE.
//!
//! Events of a committed group are lent to the caller straight from the
//! group the broadcast shares: nothing is copied until the caller renders
//! it, and there is no channel and no task hop in between. Shutdown wakes
//! every waiting subscription through one `Notify`.

mod subscription;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::Notify;

pub use subscription::{Item, Subscription};

use crate::{
    domain::EventFilter,
    store::{Store, StoreError},
};

/// Tuning of the watch streams.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Idle time after which a stream gets a progress marker.
    pub progress_interval: Duration,
    /// No longer used: a stream holds no buffer of its own (it is polled
    /// only when the connection can take more; what waits is the shared
    /// broadcast ring, then the log). Kept so existing configs still parse.
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
    /// The most revisions any stream was behind the store as it took its
    /// next batch, since this was last taken (reset by each scrape).
    pub max_lag: AtomicU64,
}

/// The end of a stream, read by the gRPC edge after the last item.
pub type Outcome = Arc<Mutex<Option<WatchError>>>;

/// What every subscription shares with its watcher.
#[derive(Default)]
struct Hub {
    stats: WatchStats,
    /// Set once on shutdown; every subscription checks it before each item.
    closing: AtomicBool,
    /// Wakes every waiting subscription on shutdown.
    closed: Arc<Notify>,
}

/// Starts subscriptions and ends them all on shutdown.
pub struct Watcher {
    store: Arc<dyn Store>,
    config: WatchConfig,
    hub: Arc<Hub>,
}

impl Watcher {
    pub fn new(store: Arc<dyn Store>, config: WatchConfig) -> Self {
        Self {
            store,
            config,
            hub: Arc::default(),
        }
    }

    pub fn stats(&self) -> &WatchStats {
        &self.hub.stats
    }

    /// Starts a subscription: poll it for items; once it yields `None`, the
    /// outcome holds the error that ended it, if any. It must be created
    /// inside the runtime (it owns a timer).
    pub fn subscribe(
        &self,
        filter: EventFilter,
        start: Option<u64>,
    ) -> Result<(Subscription, Outcome), WatchError> {
        if self.hub.closing.load(Ordering::Acquire) {
            return Err(WatchError::ShuttingDown {
                last: start.unwrap_or_else(|| self.store.revision()),
            });
        }
        // Counted before anything else, so the limit holds under a burst.
        let guard = ActiveGuard::new(self.hub.clone());
        let open = self.hub.stats.active.load(Ordering::Relaxed);
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
        self.hub.stats.started.fetch_add(1, Ordering::Relaxed);
        let outcome = Outcome::default();
        let subscription = Subscription::new(
            self.store.clone(),
            filter,
            cursor,
            current,
            published,
            &self.config,
            outcome.clone(),
            guard,
        );
        Ok((subscription, outcome))
    }

    /// Ends every stream with a resumable UNAVAILABLE: each one that is
    /// waiting is woken and ends at once; one that is busy ends before its
    /// next item. Nothing runs on behalf of a stream between polls, so there
    /// is nothing to wait for.
    pub fn shutdown(&self) {
        self.hub.closing.store(true, Ordering::Release);
        self.hub.closed.notify_waiters();
    }
}

/// Counts a live subscription; uncounts it when it is dropped, however.
struct ActiveGuard(Arc<Hub>);

impl ActiveGuard {
    fn new(hub: Arc<Hub>) -> Self {
        hub.stats.active.fetch_add(1, Ordering::Relaxed);
        Self(hub)
    }

    fn hub(&self) -> &Hub {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}
