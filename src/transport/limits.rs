//! Connection limits, applied before a connection reaches HTTP/2: a global
//! cap and a cap per source (remote IP, or the peer's uid on a unix socket),
//! a deadline for the first request and an idle timeout once no request is
//! open. A refused connection is closed at once, so its file descriptor is
//! back before the next accept; the global cap is kept below the process's
//! file-descriptor limit so accepting never fails with EMFILE.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

/// Defaults of [`ConnectionLimits`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 256;
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// File descriptors kept free for the store, listeners and the metrics
/// endpoint when the global cap is derived from the fd limit.
pub const RESERVED_FDS: usize = 64;

/// Bounds on connections (`[limits]` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once over every listener (TLS handshakes
    /// included); lowered to the fd limit minus [`RESERVED_FDS`].
    pub max_connections: usize,
    /// Connections from one source; at most half of the global cap.
    pub max_per_source: usize,
    /// A connection must start its first request within this.
    pub first_request_timeout: Duration,
    /// A connection with no request open for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
        }
    }
}

/// The soft limit on open files of this process, if it can be read.
fn fd_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as usize)
}

impl ConnectionLimits {
    /// The caps in force: the global cap below the fd limit, the per-source
    /// cap at most half the global one (so one source never holds them all).
    pub fn effective(&self) -> (usize, usize) {
        let max = match fd_limit() {
            Some(fds) => self
                .max_connections
                .min(fds.saturating_sub(RESERVED_FDS).max(2)),
            None => self.max_connections,
        };
        (max, self.max_per_source.min((max / 2).max(1)))
    }
}

/// Where a connection comes from, for the per-source cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Ip(IpAddr),
    /// A unix-socket peer, by user id.
    Uid(u32),
    Unknown,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Uid(uid) => write!(f, "unix uid {uid}"),
            Source::Unknown => f.write_str("unknown source"),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Total(usize),
    PerSource(usize),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Total(n) => write!(f, "{n} connections are open (limits.max_connections)"),
            Refused::PerSource(n) => write!(
                f,
                "{n} connections from this source are open (limits.max_connections_per_source)"
            ),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<Source, usize>,
}

/// The connection slots of one daemon.
pub struct Slots {
    max: usize,
    per_source: usize,
    counts: Mutex<Counts>,
}

impl Slots {
    pub fn new(max: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_source,
            counts: Mutex::default(),
        })
    }

    pub fn try_acquire(self: &Arc<Self>, source: Source) -> Result<Slot, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max {
            return Err(Refused::Total(counts.total));
        }
        let from = counts.by_source.entry(source).or_default();
        if *from >= self.per_source {
            return Err(Refused::PerSource(*from));
        }
        *from += 1;
        counts.total += 1;
        Ok(Slot {
            slots: self.clone(),
            source,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One connection's place; given back when the connection is dropped.
pub struct Slot {
    slots: Arc<Slots>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

/// What a connection's requests tell its idle timer: how many are open and
/// since when none has been. Shared through [`super::PeerInfo`].
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    served: AtomicBool,
    /// Milliseconds after `born` at which the last request ended.
    idle_since_ms: AtomicU64,
    born: Instant,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    /// A request started; it stays open until the guard is dropped (with
    /// the end of its response body).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        RequestGuard(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.born + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

/// An open request of a connection.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let since = self.0.born.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(since, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The idle timer of one connection, polled from its reads.
pub struct IdleTimer {
    activity: Arc<Activity>,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    first_request: Duration,
    idle: Duration,
}

impl IdleTimer {
    pub fn new(activity: Arc<Activity>, limits: &ConnectionLimits) -> Self {
        // The first check comes at the earlier of the two limits: a first
        // request may end long before the first-request deadline.
        let deadline = activity.born + limits.first_request_timeout.min(limits.idle_timeout);
        Self {
            activity,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            first_request: limits.first_request_timeout,
            idle: limits.idle_timeout,
        }
    }

    /// `Some(reason)` once the connection has been without a request for
    /// too long; otherwise arms the timer for the next check.
    pub fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> Option<&'static str> {
        use std::future::Future as _;
        while self.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let (limit, reason) = if self.activity.served.load(Ordering::Acquire) {
                (self.idle, "no request open for the idle timeout")
            } else {
                (
                    self.first_request,
                    "no request within the first-request deadline",
                )
            };
            if self.activity.open.load(Ordering::Acquire) > 0 {
                self.sleep.as_mut().reset(now + limit);
                continue;
            }
            let due = self.activity.idle_since() + limit;
            if due <= now {
                return Some(reason);
            }
            self.sleep.as_mut().reset(due);
        }
        None
    }
}

/// A token bucket for log lines about refusals: a burst, then a steady
/// trickle; what it holds back is counted and reported with the next line
/// it lets through. One per daemon component, never global.
pub struct LogLimiter {
    state: Mutex<Bucket>,
    burst: f64,
    per_second: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(20, 1.0)
    }
}

impl LogLimiter {
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            state: Mutex::new(Bucket {
                tokens: f64::from(burst),
                at: Instant::now(),
                suppressed: 0,
            }),
            burst: f64::from(burst),
            per_second,
        }
    }

    /// `Some(lines held back since the last one let through)` when this
    /// line may be logged; `None` when it is to be suppressed.
    pub fn admit(&self) -> Option<u64> {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.at).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_the_total_and_each_source() {
        let slots = Slots::new(3, 2);
        let a = Source::Ip("10.0.0.1".parse().unwrap());
        let b = Source::Uid(1000);
        let a1 = slots.try_acquire(a).unwrap();
        let _a2 = slots.try_acquire(a).unwrap();
        assert_eq!(slots.try_acquire(a).err(), Some(Refused::PerSource(2)));
        let _b1 = slots.try_acquire(b).unwrap();
        assert_eq!(slots.try_acquire(b).err(), Some(Refused::Total(3)));
        drop(a1);
        assert_eq!(slots.open(), 2);
        let _b2 = slots.try_acquire(b).unwrap();
    }

    #[test]
    fn the_per_source_cap_is_at_most_half_the_total() {
        let limits = ConnectionLimits {
            max_connections: 10,
            max_per_source: 100,
            ..ConnectionLimits::default()
        };
        assert_eq!(limits.effective(), (10, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_limiter_lets_a_burst_through_then_counts() {
        let limiter = LogLimiter::new(3, 1.0);
        assert_eq!(
            (0..5).map(|_| limiter.admit()).collect::<Vec<_>>(),
            vec![Some(0), Some(0), Some(0), None, None]
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(limiter.admit(), Some(2));
        assert_eq!(limiter.admit(), None);
    }
}
