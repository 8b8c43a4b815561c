//! Storage: decisions, apps and the event log behind a small trait.
//!
//! Writes are *jobs*: a closure that reads the current state through a
//! [`View`] and returns a [`WriteSet`]. The store runs jobs one at a time,
//! so a job's reads and its writes are atomic with respect to every other
//! write. Concurrent jobs may share one commit and one flush (group commit).
//!
//! # The contract every backend keeps
//! [`contract`] checks each point through the [`Store`] trait alone, for any
//! backend given as a factory; a new backend runs the same tests.
//! 1. **Atomic job.** A job's write set is applied whole or not at all; a
//!    job that fails (or panics) writes nothing and takes no revision.
//! 2. **A revision per change.** Every decision change, app write and
//!    privacy answer takes the next revision of one strictly increasing
//!    sequence that never goes back, across restarts and failures.
//!    [`Committed::revision`] is the job's last one (the current revision
//!    when the job changed nothing).
//! 3. **One event per decision change**, in revision order, with the old
//!    state, the new state and the cause: the log is a chain of states.
//! 4. **Acknowledged only once durable.** [`Store::submit`] resolves after
//!    the change survives a restart of the store (and, for the sled
//!    backend, a crash of the process).
//! 5. **Contiguous published groups.** Committed groups reach
//!    [`Store::subscribe`] in order, each one's `prev_revision` the previous
//!    one's `revision`, so a subscriber tells a gap (it lagged: read
//!    [`Store::events_after`]) from a duplicate.
//! 6. **Reads see committed data.** [`Store::revision`] is read first by
//!    callers, and every read after it reflects at least that revision; a
//!    job's [`View`] also sees what earlier jobs of its group wrote.
//! 7. **Retention and OUT_OF_RANGE.** [`Store::compact`] trims events beyond
//!    the retention into the checkpoint and raises
//!    [`Store::compacted_through`]; events at or below it are gone from
//!    [`Store::events_after`], so a reader resuming there must be told
//!    OUT_OF_RANGE, never served a silent gap. [`Store::verify`] holds:
//!    checkpoint + retained log == stored decisions.
//! 8. **The per-user index is exact.** [`Store::user_apps`] (and
//!    [`View::user_apps`]) list exactly the apps in which a user has a
//!    decision, a privacy answer or an anti-nag state, kept by the backend
//!    in the same atomic write that creates or removes that state (the
//!    broker never writes it), so listing, resetting and erasing a user
//!    touch only that user's records. [`Store::verify`] checks it.
//! 9. **Erasure.** A job whose [`WriteSet::erasure`] is set commits a
//!    durable "erasure pending" marker with its changes;
//!    [`Store::finish_erasures`] (and opening the store, after a crash)
//!    then renames the user to the pseudonym in every retained event,
//!    checkpoint entry and audit record written up to that job, atomically,
//!    so revisions stay contiguous and checkpoint + log still folds to the
//!    stored decisions. Compaction waits while an erasure is pending (it
//!    would fold the user's events into checkpoint entries the scrub finds
//!    only through those events).
//!
//! # Consistency tokens (both backends)
//! Every write answers with the revision it committed at (and every read
//! can learn the current one, e.g. `GetRevision`). A caller that sends the
//! last revision it saw as the request metadata header
//! `consentd-min-revision: N` (any RPC; `grpcurl -H 'consentd-min-revision:
//! N'`) is answered only from a view that includes revision N, by any
//! daemon: the SpiceDB ZedToken idea, with a plain number.
//! [`Store::wait_for_revision`] is the one place that waits; the gRPC
//! layer `grpc::consistency` calls it before the handler runs.
//! - N at or below the view's revision: no wait, no etcd call.
//! - N above it: the daemon checks that N exists (sled: its own revision is
//!   the whole store's; etcd: a linearizable read of `m/revision`, which
//!   needs a quorum), then waits until its view has applied N, at most the
//!   call's deadline (`grpc-timeout`), the request timeout and
//!   `min_revision_max_wait_ms` (default 5000).
//! - N beyond the whole store: OUT_OF_RANGE naming N and the store's
//!   newest revision (a token never given out, e.g. from another cluster).
//! - The view did not get there in time, or the existence check found no
//!   quorum: UNAVAILABLE naming N and the view's revision; retry, on this
//!   daemon or another.
//! - A header that is not one decimal number: INVALID_ARGUMENT naming the
//!   header and its value.
//!
//! Without a token a read is answered from the daemon's view as it is
//! (read-your-writes holds on the daemon that acknowledged the write).
//!
//! # The etcd backend: its consistency model (cargo feature `etcd`)
//! `EtcdStore` keeps the contract above with any number of daemons sharing
//! one etcd cluster (keys under one `--etcd-prefix`):
//! - **One global revision sequence.** `m/revision` is written by every
//!   commit in the same etcd transaction as the commit's keys, so every
//!   daemon sees one log (`e/<revision>`) in one order, strictly increasing
//!   with no gap, across daemon restarts.
//! - **Writes: one writer at a time, fenced.** Jobs run once (they are
//!   `FnOnce`), so they must never be re-run after a conflict. A daemon's
//!   writer therefore writes only while it holds the store's etcd lock
//!   (etcd's Lock API on a lease the daemon keeps alive; held while it has
//!   writes queued, at most ~50 ms at a time, then let go so other daemons
//!   get their turn). With the lock it reads `m/revision`, waits until its
//!   local view has applied that commit, runs the jobs on the view plus
//!   the group's staged writes, and commits the group in one transaction
//!   that compares `m/revision`'s etcd `mod_revision` with the one the jobs
//!   read and checks that its lock key still exists. If either compare
//!   fails (its lease lapsed and another daemon wrote), nothing is written
//!   and the jobs fail with UNAVAILABLE: a daemon never commits on a stale
//!   view, so no update is lost and every job's invariants hold over the
//!   whole cluster. A group larger than etcd's `--max-txn-ops` /
//!   `--max-request-bytes` is split into transactions at job boundaries.
//!   Lock attempts are made on a lease of their own: when one fails or
//!   times out, the writer revokes that lease and takes a fresh one, since
//!   etcd may still carry the attempt out after the writer gave up (the
//!   member serving it was paused, or its answer was lost); a key on a
//!   revoked lease is deleted and can never be created again, where a key
//!   on the kept-alive lease would stall every daemon's writes.
//! - **Acknowledged after quorum.** A write is acknowledged once etcd has
//!   committed its transaction (a Raft quorum) *and* this daemon's view has
//!   applied it: read-your-writes on the daemon that acknowledged it. An
//!   etcd error or timeout on commit is UNAVAILABLE with an unknown outcome
//!   (the write may have committed; its revision then shows in the log).
//! - **Reads are local.** Every read (Authorize, CheckApi, Watch catch-up,
//!   exports, audit pages) is served from the daemon's in-memory view, fed
//!   by one etcd watch from the revision it has applied, with no etcd
//!   round trip. A view is a consistent prefix of the log, at most as far
//!   behind etcd as the watch delivers (milliseconds when etcd is
//!   healthy); another daemon's write becomes visible here when the watch
//!   applies it.
//! - **Without a quorum.** Reads without a token go on from the last
//!   applied view (its revision is what `GetRevision` and Watch progress
//!   report); reads with a token above the view fail with UNAVAILABLE
//!   (their check needs a quorum); writes fail with UNAVAILABLE within
//!   their deadline. Each daemon probes etcd once a second with a
//!   linearizable read of `m/revision` (bounded by the smaller of
//!   `etcd.timeout` and 2 s: a serializable read would be answered by a cut
//!   off member); while probes fail, gRPC health (the overall `""` service
//!   and each service) is NOT_SERVING, and SERVING again after the first
//!   probe that succeeds. Each change is logged once, with the reason.
//! - **Watch.** Every daemon publishes every commit from its watch as one
//!   contiguous group, so a client can resume `Watch` on any daemon with
//!   the same `start_revision`: no gap, no duplicate.
//! - **Start.** A daemon with a snapshot of its view in its data dir
//!   (`etcd_snapshot`: written every `[etcd] snapshot_interval_secs` while
//!   the view moves and at a clean close) starts from it when it is intact
//!   and of this cluster (etcd's cluster id) and prefix: it writes a marker
//!   key, watches the prefix from the snapshot's etcd revision + 1 and
//!   applies every put *and delete* up to the marker, so the view is as
//!   current as a full load (a range read would miss deletions). Otherwise
//!   (no snapshot, corrupt, another cluster or prefix, etcd behind it or
//!   compacted past it) it logs why and loads the whole prefix at one etcd
//!   revision. Either way it then watches from the next revision; if etcd
//!   compacted its own history past the view while the watch was broken,
//!   the view is reloaded whole (the next published group then says so by
//!   its `prev_revision`, and subscribers catch up from the log).
//! - **Retention.** Compaction and audit trimming are ordinary fenced
//!   commits (checkpoint, horizon and deletions in one transaction), so
//!   OUT_OF_RANGE behaves as in sled mode on every daemon.
//! - **The per-user index (item 8).** The writer stages the index keys
//!   (`u/<user>\0<app>`, the sled keys) after each job, from the job's
//!   writes over the view and its group, and commits them in the same
//!   fenced etcd transaction as the state they follow; every daemon's
//!   view gets them through its watch, so `user_apps` is a local range
//!   read. Verify derives the index from the decision, privacy and anti-nag
//!   keys and compares both ways. Layout 2 (`m/etcd_format`) has the
//!   index: the first layout-2 daemon to open a layout-1 prefix builds it
//!   in bounded fenced transactions and records layout 2 in the last one
//!   (stop layout-1 daemons first: they write no index).
//! - **Erasure (item 9).** The marker (`x/<pseudonym>`, the sled value)
//!   commits in the erasing job's transaction, with its revocations, which
//!   Watch subscribers get as usual. The scrub cannot be one transaction
//!   (one key per event and audit record, within `--max-txn-ops` /
//!   `--max-request-bytes`): each step is a maintenance commit, fenced
//!   like every write, planned on the current view: first each (app,
//!   scope) of the user's retained events up to the erasure, its checkpoint
//!   entry and those events together (so checkpoint + log keeps folding to
//!   the decisions between steps unless one such unit alone exceeds a
//!   transaction), then the audit records up to the erasure's sequence
//!   number, then timers whose keys name the user; the marker is deleted in
//!   the step that takes the last of them. A step rewrites only what still
//!   names the user, so a scrub cut short (a crash, a lost lock, no quorum)
//!   is resumed by planning again: `finish_erasures`, `recover`, and every
//!   daemon's open (which finishes it before serving). Until then the
//!   retained log still names the user in what is not yet rewritten.
//!   Every daemon's view takes the rewritten keys through its watch; the
//!   rewrites do not move the store revision and are not published to
//!   Watch subscribers again (a view publishes only events above the
//!   revision it had).
//! - **Cluster-wide duties (issue 14 item 7).** Grant lapses, log
//!   compaction, audit trimming and resuming a pending erasure's scrub
//!   ([`Store::recover`]) run on one daemon at a time, the holder
//!   ([`Store::duties`]; the server runs them through the `*_duty`
//!   methods only while it holds them). Holding is the key
//!   `<prefix>duties`, created only if absent on a lease of the daemon's
//!   own (TTL `lease_ttl`); its value names the holder (pid, lease). Every
//!   duty commit compares that key's create revision in its transaction
//!   (the fence), so a holder whose lease lapsed (paused, or cut off from
//!   etcd, for longer than the TTL) commits no duty, even before it
//!   notices: the commit fails with UNAVAILABLE and it steps down. The
//!   other daemons look every `duty_check` (500 ms); when the holder dies
//!   etcd deletes the key as its lease lapses and the next daemon to look
//!   takes it: a takeover within the TTL plus half a second. The holder
//!   looks too, and steps down when its key is gone or after a whole TTL
//!   without reaching etcd; a daemon that stops deletes the key at once.
//!   The duties are idempotent plans on the current view, committed under
//!   the write lock, so even two holders at once (impossible with the
//!   fence) would not lapse a grant twice; the election removes the
//!   duplicated work. Per daemon, not cluster-wide: the prompt audit
//!   batches (each daemon buffers the prompts *it* served, in its memory;
//!   no other daemon has them, so each daemon writes its own, as ordinary
//!   writes), the erasure scrub an EraseUser call runs itself (the
//!   request's own work, reported to its caller) and the one a daemon
//!   finishes on open before serving. Operator calls (Admin Compact) run
//!   on whichever daemon gets them, fenced by the write lock only.

#[cfg(test)]
pub(crate) mod contract;
// Shared as source with tests/it: not every helper is used by both.
#[cfg(test)]
#[allow(dead_code)]
pub(crate) mod etcd_cluster;
#[cfg(test)]
mod etcd_cluster_tests;
#[cfg(feature = "etcd")]
mod etcd_duties;
#[cfg(feature = "etcd")]
mod etcd_replica;
#[cfg(feature = "etcd")]
mod etcd_snapshot;
#[cfg(feature = "etcd")]
mod etcd_store;
#[cfg(feature = "etcd")]
mod etcd_tls;
#[cfg(feature = "etcd")]
mod etcd_writer;
mod sled_codec;
mod sled_durability;
mod sled_maintenance;
mod sled_read;
mod sled_shared;
mod sled_store;
mod sled_users;
mod sled_writer;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::{broadcast, watch};

#[cfg(feature = "etcd")]
pub use etcd_store::{EtcdConfig, EtcdStore, Opened, ETCD_FORMAT};
#[cfg(feature = "etcd")]
pub use etcd_tls::EtcdTls;
use sled_codec as codec;
pub use sled_codec::FORMAT_VERSION;
pub use sled_store::{SledConfig, SledStore};

use crate::domain::{
    App, AppId, AuditEntry, AuditQuery, AuditRecord, Change, DomainError, Event, Lifetime,
    NagState, PrivacyState, Scope, StateQuery, Subject, SubjectState, UserDecisions, UserId,
};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The current state as a write job sees it: committed data plus whatever
/// earlier jobs of the same group commit staged.
pub trait View {
    fn app(&self, id: &AppId) -> Result<Option<Arc<App>>, StoreError>;
    /// The app, or the job's refusal: NOT_FOUND.
    fn registered_app(&self, id: &AppId) -> Result<Arc<App>, TxnError> {
        Ok(self
            .app(id)?
            .ok_or_else(|| DomainError::app_not_found(id))?)
    }
    /// What `query` asks for about (`app`, `user`), as stored (lapsed
    /// grants included), in one read.
    fn subject(
        &self,
        app: &AppId,
        user: &UserId,
        query: &StateQuery,
    ) -> Result<SubjectState, StoreError>;
    /// Timers due at `now_ms`, earliest first, at most `limit`.
    fn due_timers(&self, now_ms: u64, limit: usize) -> Result<Vec<Timer>, StoreError>;
    /// Every user's decisions for `app` (for deleting an app).
    fn app_decisions(&self, app: &AppId) -> Result<Vec<(UserId, UserDecisions)>, StoreError>;
    /// The users of `app` with a privacy answer or an anti-nag state.
    fn subjects_with_user_state(&self, app: &AppId) -> Result<Vec<Subject>, StoreError>;
    /// Every app in which `user` has stored state (the per-user index), in
    /// id order.
    fn user_apps(&self, user: &UserId) -> Result<Vec<AppId>, StoreError>;
}

/// What a job writes. Decision changes become events, in order.
#[derive(Debug, Default)]
pub struct WriteSet {
    pub app: Option<AppWrite>,
    pub changes: Vec<(Subject, Change)>,
    /// The lifetime of every grant among `changes` (denials and
    /// revocations are permanent). A timed one also gets a timer.
    pub lifetime: Lifetime,
    /// Timers that came due and were handled (or found stale): removed.
    pub cleared_timers: Vec<Timer>,
    /// Per-decision lifetimes that override `lifetime` (imports).
    pub lifetimes: std::collections::BTreeMap<(Subject, Scope), Lifetime>,
    /// A privacy-guide answer to store (`Some`) or forget (`None`). It takes
    /// a revision but is not a decision: no event.
    pub privacy: Option<(Subject, Option<PrivacyState>)>,
    /// Audit records, committed with the changes they describe.
    pub audit: Vec<AuditEntry>,
    /// An anti-nag state to store (`Some`) or forget (`None`).
    pub nag: Option<(Subject, Scope, Option<NagState>)>,
    /// Subjects whose privacy answer and anti-nag states are removed.
    pub forget: Vec<Subject>,
    /// Stored grants whose lifetime becomes the one given (one-time grants
    /// in use, renewed): not a change of state, so no event and no
    /// revision. A decision that is gone by now is left alone.
    pub renew: Vec<(Subject, Scope, Lifetime)>,
    /// Set by an erasure: the store records a durable marker with this
    /// job's changes, and [`Store::finish_erasures`] later renames the user
    /// to the pseudonym in everything retained up to this job.
    pub erasure: Option<Erasure>,
}

/// A user's erasure: the id to remove and the pseudonym that replaces it
/// in the retained event log and audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Erasure {
    pub user: UserId,
    pub pseudonym: UserId,
}

/// A timed or one-time grant's timer: when it comes due, the grant lapses
/// unless the decision changed since (then the timer is stale).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    pub expires_at_ms: u64,
    pub subject: Subject,
    pub scope: Scope,
}

/// A change to an app registration.
#[derive(Debug)]
pub enum AppWrite {
    /// Create or replace; the store sets `revision` and `updated_at_ms`.
    Put(App),
    Delete(AppId),
}

/// A committed write.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    /// The revision of the job's last change, or the current revision when
    /// it changed nothing.
    pub revision: u64,
    pub events: Vec<Event>,
    /// The app as stored, for an `AppWrite::Put`.
    pub app: Option<Arc<App>>,
}

/// One group commit as the writer publishes it to subscribers. Groups are
/// contiguous: each one's `prev_revision` is the previous one's `revision`,
/// so a subscriber can tell a gap (it lagged) from a duplicate.
#[derive(Debug)]
pub struct Published {
    pub prev_revision: u64,
    pub revision: u64,
    /// The group's events, in revision order (possibly none: app changes).
    pub events: Vec<Event>,
}

/// How much of the event log to keep. An event is trimmed when either limit
/// says so; `None` disables a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_events: Option<u64>,
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Entries written before this (Unix ms) are too old, if ages count.
    pub(crate) fn age_cutoff(&self, now_ms: u64) -> Option<u64> {
        self.max_age
            .map(|age| now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)))
    }

    /// Whether an entry written at `time_ms` goes, `remaining` being how
    /// many entries are kept from it on (itself included), and `cutoff` what
    /// [`Retention::age_cutoff`] gave.
    pub(crate) fn drops(&self, remaining: u64, time_ms: u64, cutoff: Option<u64>) -> bool {
        self.max_events.is_some_and(|max| remaining > max)
            || cutoff.is_some_and(|cutoff| time_ms < cutoff)
    }
}

/// The default retention: the last million events, at most 30 days old.
pub const DEFAULT_RETENTION: Retention = Retention {
    max_events: Some(1_000_000),
    max_age: Some(Duration::from_secs(30 * 24 * 3600)),
};

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compaction {
    pub removed: u64,
    /// Every event up to this revision has been trimmed into the checkpoint.
    pub compacted_through: u64,
}

/// The result of checking checkpoint + log against the stored decisions.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    pub decisions: u64,
    pub retained_events: u64,
    pub compacted_through: u64,
    /// Described mismatches, at most [`MAX_MISMATCHES`].
    pub mismatches: Vec<String>,
    /// The revision the check ran at.
    pub revision: u64,
}

/// Sizes of the store, read at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub revision: u64,
    pub compacted_through: u64,
    /// Events retained in the log.
    pub events: u64,
    pub apps: u64,
    pub size_on_disk: u64,
    /// The newest store revision this daemon knows the whole store to
    /// have: its own revision for a local store (sled); for etcd, what the
    /// last quorum probe read (`m/revision`), which the view may lag.
    pub cluster_revision: u64,
}

/// Told about every group commit (for metrics); must be cheap: it runs on
/// the writer thread.
pub trait CommitObserver: Send + Sync {
    /// `jobs` write jobs became `events` events in one batch and one flush.
    fn group_committed(&self, jobs: usize, events: usize, flush: Duration);
    /// One call to a remote backend (etcd) took `elapsed`, failed calls
    /// and time-outs included; `op` is one of a few fixed names (`txn`,
    /// `range`, `lock`, ...).
    fn backend_call(&self, op: &'static str, elapsed: Duration) {
        let _ = (op, elapsed);
    }
}

/// Why a consistency token (a revision the caller saw) was not honoured by
/// [`Store::wait_for_revision`].
#[derive(Debug, thiserror::Error)]
pub enum RevisionWait {
    /// No daemon has committed this revision: the token is not one the
    /// store gave out.
    #[error(
        "revision {wanted} is beyond the store's newest revision {newest}: not a revision this \
         store gave out"
    )]
    Ahead { wanted: u64, newest: u64 },
    /// The revision exists, but this daemon's view did not apply it in time.
    #[error(
        "this daemon's view has applied revision {view}, not yet {wanted}, after waiting \
         {waited:?}; retry (on any daemon)"
    )]
    Behind {
        wanted: u64,
        view: u64,
        waited: Duration,
    },
    /// Whether the revision exists could not be checked (no quorum).
    #[error("cannot check revision {wanted} against the store (this daemon's view is at {view}): {error}")]
    Unreachable {
        wanted: u64,
        view: u64,
        error: StoreError,
    },
}

/// Most mismatches a verification reports.
pub const MAX_MISMATCHES: usize = 20;

pub use crate::domain::DecisionRow;

/// One page of audit records and the sequence number to continue after,
/// when more may follow.
pub type AuditPage = (Vec<AuditRecord>, Option<u64>);

/// A write job.
pub type Job = Box<dyn FnOnce(&dyn View) -> Result<WriteSet, TxnError> + Send>;

/// The storage interface the broker uses.
pub trait Store: Send + Sync + 'static {
    fn app(&self, id: &AppId) -> Result<Option<Arc<App>>, StoreError>;
    /// Apps in id order, starting after `after`.
    fn apps(&self, after: Option<&AppId>, limit: usize) -> Result<Vec<Arc<App>>, StoreError>;
    /// Every stored decision in key order (app, user, scope), starting after
    /// `after`, at most `limit`: for exports.
    fn decisions_after(
        &self,
        after: Option<&DecisionRow>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>, StoreError>;
    /// What `query` asks for about (`app`, `user`), as stored (lapsed
    /// grants included), in one read: every verdict reads through this.
    fn subject(
        &self,
        app: &AppId,
        user: &UserId,
        query: &StateQuery,
    ) -> Result<SubjectState, StoreError>;
    /// The apps in which `user` has stored state (a decision, a privacy
    /// answer or an anti-nag state), in id order, after `after`, at most
    /// `limit`: the per-user index, so the cost does not grow with the
    /// number of apps or users in the store.
    fn user_apps(
        &self,
        user: &UserId,
        after: Option<&AppId>,
        limit: usize,
    ) -> Result<Vec<AppId>, StoreError>;
    /// Runs the scrub of every pending erasure (see [`WriteSet::erasure`]);
    /// returns how many stored records were rewritten.
    fn finish_erasures(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// One page of an app's audit records, oldest first, matching `query`.
    /// Returns the page and the sequence number to continue after, when
    /// more may follow.
    fn audit(&self, app: &AppId, query: &AuditQuery) -> Result<AuditPage, StoreError>;
    /// Trims audit records beyond `retention`; returns how many went.
    fn trim_audit(&self, retention: Retention) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Queues a write without waiting for it (records that must not slow a
    /// read down). Fails at once when the queue is full.
    fn submit_detached(&self, job: Job) -> Result<(), StoreError>;
    /// The earliest timer, if any (when the next grant lapses).
    fn next_timer(&self) -> Result<Option<u64>, StoreError>;
    /// The revision of the last durable commit.
    fn revision(&self) -> u64;
    /// A consistency token: resolves (with the view's revision) once every
    /// read of this store reflects at least `revision`, waiting at most
    /// `within`. A revision the whole store has not reached is
    /// [`RevisionWait::Ahead`] at once; a view that does not get there in
    /// time is [`RevisionWait::Behind`]. See "Consistency tokens" above.
    fn wait_for_revision(
        &self,
        revision: u64,
        within: Duration,
    ) -> BoxFuture<'_, Result<u64, RevisionWait>>;
    /// Whether the store can commit at all, for a store that depends on
    /// others (etcd: a quorum of its members), followed as it changes;
    /// `None` for a store of its own (sled), always able while it is open.
    fn quorum(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
    /// Retained events with revision > `after`, oldest first, at most `limit`.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Committed groups from now on (bounded: a slow receiver lags and must
    /// catch up from [`Store::events_after`]).
    fn subscribe(&self) -> broadcast::Receiver<Arc<Published>>;
    /// Events up to this revision have been trimmed from the log.
    fn compacted_through(&self) -> u64;
    fn stats(&self) -> StoreStats;
    /// Trims the log to `retention`, folding trimmed events into the checkpoint.
    fn compact(&self, retention: Retention) -> BoxFuture<'_, Result<Compaction, StoreError>>;
    /// Checks checkpoint + retained log == stored decisions.
    fn verify(&self) -> BoxFuture<'_, Result<Verification, StoreError>>;
    /// Runs `job` on the writer; resolves once its changes are durable.
    fn submit(&self, job: Job) -> BoxFuture<'_, Result<Committed, TxnError>>;
    /// After a failed write (a backend may keep failing once it has hit an
    /// I/O error, e.g. a full disk): if there is room again, reopens the
    /// store in place and resumes writing. Returns whether it reopened. Reads go on
    /// meanwhile, except for the moment of the reopen. Also resumes a
    /// pending erasure's scrub (etcd: a cluster-wide duty, only on the
    /// daemon that holds the duties).
    fn recover(&self) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Stops the writer after the jobs already queued and flushes. Later
    /// writes fail with [`StoreError::Closed`].
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether this daemon holds the cluster-wide duties (grant lapses, log
    /// compaction, audit trimming, resuming an erasure's scrub), as it
    /// changes: the server runs them only while it holds them, through the
    /// `*_duty` methods. A backend that serves one daemon (sled) always
    /// holds them.
    fn duties(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    /// [`Store::submit`] as a cluster-wide duty: the job does not run (and
    /// fails with UNAVAILABLE) unless this daemon holds the duties, and its
    /// commit is refused if it lost them meanwhile.
    fn submit_duty(&self, job: Job) -> BoxFuture<'_, Result<Committed, TxnError>> {
        self.submit(job)
    }

    /// [`Store::compact`] as a cluster-wide duty (see [`Store::submit_duty`]).
    fn compact_duty(&self, retention: Retention) -> BoxFuture<'_, Result<Compaction, StoreError>> {
        self.compact(retention)
    }

    /// [`Store::trim_audit`] as a cluster-wide duty (see [`Store::submit_duty`]).
    fn trim_audit_duty(&self, retention: Retention) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.trim_audit(retention)
    }
}

impl dyn Store {
    /// Runs a job that also returns a value computed from what it read.
    pub async fn write<T, F>(&self, job: F) -> Result<(Committed, T), TxnError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn View) -> Result<(WriteSet, T), TxnError> + Send + 'static,
    {
        self.write_as(false, job).await
    }

    /// [`Store::write`] as a cluster-wide duty (see [`Store::submit_duty`]).
    pub async fn write_duty<T, F>(&self, job: F) -> Result<(Committed, T), TxnError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn View) -> Result<(WriteSet, T), TxnError> + Send + 'static,
    {
        self.write_as(true, job).await
    }

    async fn write_as<T, F>(&self, duty: bool, job: F) -> Result<(Committed, T), TxnError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn View) -> Result<(WriteSet, T), TxnError> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |view| {
            let (set, value) = job(view)?;
            // The receiver lives until after the commit: cannot fail.
            let _ = tx.send(value);
            Ok(set)
        });
        let committed = if duty {
            self.submit_duty(job).await?
        } else {
            self.submit(job).await?
        };
        let value = rx
            .try_recv()
            .map_err(|_| StoreError::Internal("write job returned no value".into()))?;
        Ok((committed, value))
    }
}

/// A storage failure, classified by the backend so that callers (and the
/// gRPC edge) never look at a backend's own error type.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened (missing permissions, locked by
    /// another process, not a directory, ...).
    #[error("cannot open the data dir {path}: {message}")]
    Open { path: String, message: String },
    #[error("data dir {path}: {message}")]
    Format { path: String, message: String },
    /// A read or write failed; the store may work again later (a backend
    /// that cannot recover by itself is reopened, see [`Store::recover`]).
    #[error("storage I/O failed: {0}")]
    Unavailable(String),
    /// No room left for writes.
    #[error("storage I/O failed: {0}")]
    Full(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("internal store error: {0}")]
    Internal(String),
}

/// Why a write job did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The job refused the write (the request broke a rule).
    #[error(transparent)]
    Rejected(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
