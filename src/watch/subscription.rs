//! One subscription: a state machine polled by its response stream.

use std::{
    future::Future as _,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    sync::{broadcast, futures::OwnedNotified},
    time::{Instant, Sleep},
};
use tokio_stream::{
    wrappers::{errors::BroadcastStreamRecvError, BroadcastStream},
    Stream as _,
};

use super::{ActiveGuard, Outcome, WatchConfig, WatchError};
use crate::{
    domain::{Event, EventFilter},
    store::{Published, Store},
};

/// What a subscription hands out, lent to the caller's renderer.
pub enum Item<'a> {
    /// An event of a committed group, shared with every other subscriber.
    Live(&'a Event),
    /// An event read from the durable log for this subscriber alone
    /// (replay from `start_revision`, or recovery after lagging).
    Logged(Event),
    /// Every matching event up to this revision has been handed out.
    Progress(u64),
}

/// Where the next events come from.
enum Source {
    /// Nothing taken: poll the broadcast.
    Ring,
    /// A committed group, handed out from `next` on.
    Live { group: Arc<Published>, next: usize },
    /// A page of the log read for (cursor, target]; `more` when the page
    /// was full, so the range may continue past it.
    Log {
        page: std::vec::IntoIter<Event>,
        target: u64,
        more: bool,
    },
}

/// What one step found.
enum Found {
    /// `events[index]` of the group in `Source::Live`.
    Live(usize),
    Logged(Event),
    Progress(u64),
}

pub struct Subscription {
    store: Arc<dyn Store>,
    filter: EventFilter,
    /// Every event up to here has been handed out or filtered out.
    cursor: u64,
    source: Source,
    /// A group that revealed a gap: applied once the log has filled it.
    deferred: Option<Arc<Published>>,
    published: BroadcastStream<Arc<Published>>,
    /// Fires at `last_active + interval` or earlier; holds `idle_waker`.
    idle: Pin<Box<Sleep>>,
    idle_waker: Option<Waker>,
    interval: Duration,
    /// When the stream last handed something out (or started).
    last_active: Instant,
    /// Something was handed out since `last_active` was taken.
    active: bool,
    /// Completes on shutdown; polled only to (re)register the waker.
    closed: Pin<Box<OwnedNotified>>,
    closed_waker: Option<Waker>,
    page: usize,
    outcome: Outcome,
    ended: bool,
    guard: ActiveGuard,
}

impl Subscription {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        store: Arc<dyn Store>,
        filter: EventFilter,
        cursor: u64,
        current: u64,
        published: broadcast::Receiver<Arc<Published>>,
        config: &WatchConfig,
        outcome: Outcome,
        guard: ActiveGuard,
    ) -> Self {
        // Created now, so a shutdown from here on completes it even before
        // it is first polled.
        let closed = Box::pin(guard.hub().closed.clone().notified_owned());
        let interval = config.progress_interval;
        let mut subscription = Self {
            store,
            filter,
            cursor,
            source: Source::Ring,
            deferred: None,
            published: BroadcastStream::new(published),
            idle: Box::pin(tokio::time::sleep(interval)),
            idle_waker: None,
            interval,
            last_active: Instant::now(),
            active: false,
            closed,
            closed_waker: None,
            page: config.catch_up_page.max(1),
            outcome,
            ended: false,
            guard,
        };
        // Replay (cursor, current] from the log first, on the first poll.
        subscription.catch_up(current);
        subscription
    }

    /// The next item rendered by `render`, or `None` once the stream has
    /// ended (the outcome then holds why, unless the store's broadcast ended
    /// without error).
    pub fn poll_item<T>(
        &mut self,
        cx: &mut Context<'_>,
        render: impl FnOnce(Item<'_>) -> T,
    ) -> Poll<Option<T>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.step(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(found)) => {
                self.active = true;
                Poll::Ready(Some(render(match found {
                    Found::Live(index) => match &self.source {
                        Source::Live { group, .. } => Item::Live(&group.events[index]),
                        _ => unreachable!("a live event comes from a live group"),
                    },
                    Found::Logged(event) => Item::Logged(event),
                    Found::Progress(revision) => Item::Progress(revision),
                })))
            }
            Poll::Ready(Err(e)) => {
                self.ended = true;
                if let Ok(mut slot) = self.outcome.lock() {
                    *slot = Some(e);
                }
                Poll::Ready(None)
            }
        }
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Found, WatchError>> {
        loop {
            if self.guard.hub().closing.load(Ordering::Acquire) {
                return Poll::Ready(Err(self.shutting_down()));
            }
            // Hand out what has been taken already.
            match &mut self.source {
                Source::Ring => {}
                Source::Live { group, next } => {
                    while let Some(event) = group.events.get(*next) {
                        let index = *next;
                        *next += 1;
                        if event.revision <= self.cursor {
                            continue;
                        }
                        self.cursor = event.revision;
                        if self.filter.matches(event) {
                            return Poll::Ready(Ok(Found::Live(index)));
                        }
                    }
                    self.cursor = self.cursor.max(group.revision);
                    self.source = Source::Ring;
                }
                Source::Log { page, target, more } => {
                    let target = *target;
                    for event in page.by_ref() {
                        if event.revision > target {
                            *more = false;
                            break;
                        }
                        self.cursor = event.revision;
                        if self.filter.matches(&event) {
                            return Poll::Ready(Ok(Found::Logged(event)));
                        }
                    }
                    if *more && self.cursor < target {
                        self.read_page(target)?;
                        continue;
                    }
                    self.cursor = self.cursor.max(target);
                    self.source = match self.deferred.take() {
                        Some(group) => Source::Live { group, next: 0 },
                        None => Source::Ring,
                    };
                    continue;
                }
            }
            // The next committed group.
            match Pin::new(&mut self.published).poll_next(cx) {
                Poll::Ready(Some(Ok(group))) => {
                    if group.revision <= self.cursor {
                        continue;
                    }
                    self.note_lag();
                    if group.prev_revision > self.cursor {
                        // A group we never saw: read the gap from the log.
                        let target = group.prev_revision;
                        self.deferred = Some(group);
                        self.catch_up(target);
                    } else {
                        self.source = Source::Live { group, next: 0 };
                    }
                    continue;
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    self.guard
                        .hub()
                        .stats
                        .lagged
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        cursor = self.cursor,
                        missed_groups = missed,
                        "watcher lagged; catching up from the log"
                    );
                    let target = self.store.revision();
                    self.catch_up(target);
                    continue;
                }
                Poll::Ready(None) => return Poll::Ready(Err(self.shutting_down())),
                Poll::Pending => {}
            }
            // Nothing to hand out: a progress marker once the stream has
            // been idle for the interval.
            if self.poll_idle(cx) {
                return Poll::Ready(Ok(Found::Progress(self.cursor)));
            }
            self.register_for_shutdown(cx);
            return Poll::Pending;
        }
    }

    /// Reads (cursor, target] from the log before anything else.
    fn catch_up(&mut self, target: u64) {
        if self.cursor < target {
            self.count_catch_up();
            self.source = Source::Log {
                page: Vec::new().into_iter(),
                target,
                more: true,
            };
        } else if let Some(group) = self.deferred.take() {
            self.source = Source::Live { group, next: 0 };
        }
    }

    fn count_catch_up(&self) {
        self.guard
            .hub()
            .stats
            .catch_ups
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records how far behind the store this stream is as it takes its
    /// next batch (a group or a log page): revisions committed that it has
    /// not handed out. The watcher keeps the largest since the last scrape.
    fn note_lag(&self) {
        let lag = self.store.revision().saturating_sub(self.cursor);
        let max = &self.guard.hub().stats.max_lag;
        // Most batches set no new maximum: no write to the shared line then.
        if lag > max.load(Ordering::Relaxed) {
            max.fetch_max(lag, Ordering::Relaxed);
        }
    }

    /// The next page of retained events after the cursor.
    fn read_page(&mut self, target: u64) -> Result<(), WatchError> {
        self.note_lag();
        let events = match self.store.events_after(self.cursor, self.page) {
            Ok(events) => events,
            // A store closed under a shutting-down stream is the shutdown.
            Err(_) if self.guard.hub().closing.load(Ordering::Acquire) => {
                return Err(self.shutting_down())
            }
            Err(e) => return Err(e.into()),
        };
        // Checked after the read: trimming raises the horizon before it
        // deletes, so a horizon at or below the cursor proves the read whole.
        let compacted_through = self.store.compacted_through();
        if compacted_through > self.cursor {
            return Err(WatchError::FellBehind {
                cursor: self.cursor,
                compacted_through,
            });
        }
        let more = events.len() == self.page && events.last().is_some_and(|e| e.revision < target);
        self.source = Source::Log {
            page: events.into_iter(),
            target,
            more,
        };
        Ok(())
    }

    fn shutting_down(&self) -> WatchError {
        WatchError::ShuttingDown { last: self.cursor }
    }

    /// Whether the stream has been idle for the interval; otherwise makes
    /// sure the timer will wake the polling task when it might be.
    ///
    /// Activity does not move the timer (that would cost a clock read and a
    /// timer update per item): it fires at the deadline it was armed with,
    /// and is re-armed for `last_active + interval` if the stream has been
    /// busy since. Between firings it is only polled again when the waker
    /// changes, as it keeps the one it was polled with until it fires.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        if self.active {
            self.active = false;
            self.last_active = Instant::now();
        }
        let registered = !self.idle.is_elapsed()
            && self
                .idle_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
        if registered {
            return false;
        }
        while self.idle.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let due = self.last_active + self.interval;
            if due <= now {
                self.idle.as_mut().reset(now + self.interval);
                self.idle_waker = None;
                return true;
            }
            self.idle.as_mut().reset(due);
        }
        self.idle_waker = Some(cx.waker().clone());
        false
    }

    /// Makes sure a shutdown wakes the task that polls this subscription.
    fn register_for_shutdown(&mut self, cx: &mut Context<'_>) {
        if self
            .closed_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return;
        }
        // Ready means shutdown has begun: the flag is set already, and the
        // next poll ends the stream.
        if self.closed.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        self.closed_waker = Some(cx.waker().clone());
    }
}
