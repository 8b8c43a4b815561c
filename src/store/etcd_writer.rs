//! The etcd backend's writer: one task per daemon that runs write jobs on
//! the local view and commits them to etcd as fenced transactions.
//!
//! Jobs are closures that run once (`FnOnce`), so a job must never meet a
//! conflict it would have to be re-run for. The writer therefore writes only
//! while it holds the store's etcd lock (etcd's Lock API, on a lease this
//! daemon keeps alive): with the lock it first brings the local view up to
//! the last commit (the etcd `mod_revision` of `m/revision`), then stages
//! jobs exactly as the sled writer does, and commits each group in one etcd
//! transaction that compares `m/revision`'s `mod_revision` with the one the
//! jobs read and that the lock key still exists (the fence: a writer whose
//! lease lapsed commits nothing). A group is acknowledged once etcd
//! committed it and the local view (fed by the watch) has applied it, so a
//! daemon reads its own writes.

use std::{
    collections::BTreeMap,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp};
use tokio::sync::{mpsc, oneshot};

use super::{
    codec,
    etcd_replica::{Replica, Shared, StagedReplica},
    etcd_store::timed,
    sled_read::{self, Kv as _, Overlay},
    sled_users, AppWrite, Committed, Job, StoreError, Timer, TxnError, View, WriteSet,
};
use crate::domain::{
    App, AppId, AuditRecord, Decision, DecisionState, Event, Lifetime, StateQuery, Subject,
    SubjectState, UserDecisions, UserId,
};

/// Maintenance planned on the current view (compaction, audit trimming):
/// the keys to write (`None` = delete). What the plan found out, it keeps
/// for its caller (a channel it captured).
pub(super) type Plan = Box<dyn FnOnce(&Replica) -> Result<Overlay, StoreError> + Send + 'static>;

pub(super) enum Request {
    /// A write job, group-committed with its neighbours.
    Write {
        job: Job,
        reply: oneshot::Sender<Result<Committed, TxnError>>,
    },
    /// Maintenance, committed after the writes queued before it; `done`
    /// says whether its writes committed.
    Maintain {
        plan: Plan,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Limits and names of the writer.
pub(super) struct WriterConfig {
    /// `<prefix>data/`: every key of the store is under it.
    pub data_prefix: Vec<u8>,
    /// The name of the etcd lock writers take.
    pub lock_name: Vec<u8>,
    pub max_batch: usize,
    /// Most operations (and bytes) in one etcd transaction: etcd refuses
    /// more than its `--max-txn-ops` (default 128) and `--max-request-bytes`.
    pub max_txn_ops: usize,
    pub max_txn_bytes: usize,
    /// Longest the writer keeps the lock while it has work queued, so that
    /// other daemons get their turn.
    pub max_hold: Duration,
    /// Bound on every etcd call and on waiting for the watch.
    pub timeout: Duration,
}

/// The lock, while this writer holds it.
struct Held {
    key: Vec<u8>,
    /// The `mod_revision` of `m/revision` that the view has applied and the
    /// next commit compares on.
    revision_mod: i64,
    since: Instant,
}

pub(super) struct Writer {
    pub client: Client,
    pub shared: Arc<Shared>,
    pub config: WriterConfig,
    /// The lease the lock is held on (kept alive, and replaced when it
    /// lapsed, by the store's lease keeper).
    pub lease: Arc<AtomicI64>,
    held: Option<Held>,
    /// Lock keys whose release failed (e.g. the Unlock went to a member
    /// that had just died). The lease stays alive, so etcd would keep such
    /// a key, and every other daemon would wait behind it: they are
    /// deleted again before the next lock and while the writer is idle.
    stranded: Vec<Vec<u8>>,
}

/// How often an idle writer retries deleting lock keys it failed to release.
const STRANDED_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// One job's staged writes, or a group's.
#[derive(Default)]
struct Staging {
    overlay: Overlay,
    /// The last revision handed out.
    revision: u64,
    /// The last audit sequence number handed out.
    audit_seq: u64,
}

/// Jobs whose writes go into one etcd transaction.
struct Batch {
    overlay: Overlay,
    revision: u64,
    audit_seq: u64,
    events: usize,
    replies: Vec<(oneshot::Sender<Result<Committed, TxnError>>, Committed)>,
}

type Reply = oneshot::Sender<Result<Committed, TxnError>>;

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {what}: {e}"))
}

impl Writer {
    pub fn new(
        client: Client,
        shared: Arc<Shared>,
        config: WriterConfig,
        lease: Arc<AtomicI64>,
    ) -> Self {
        Self {
            client,
            shared,
            config,
            lease,
            held: None,
            stranded: Vec::new(),
        }
    }

    /// Serves requests until every sender is gone, then lets the lock go.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut pending: Vec<(Job, Reply)> = Vec::with_capacity(self.config.max_batch);
        loop {
            let first = if self.stranded.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(STRANDED_RETRY, rx.recv()).await {
                    Ok(request) => request,
                    Err(_) => {
                        self.release_stranded().await;
                        continue;
                    }
                }
            };
            let Some(first) = first else { break };
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Write { job, reply } => {
                        pending.push((job, reply));
                        if pending.len() >= self.config.max_batch {
                            self.commit_group(&mut pending).await;
                        }
                    }
                    Request::Maintain { plan, done } => {
                        // After the writes that arrived before it.
                        if !pending.is_empty() {
                            self.commit_group(&mut pending).await;
                        }
                        let _ = done.send(self.maintain(plan).await);
                    }
                }
                next = rx.try_recv().ok();
            }
            if !pending.is_empty() {
                self.commit_group(&mut pending).await;
            }
            // Nothing queued: let other daemons write.
            self.release().await;
        }
        self.release().await;
        tracing::debug!("etcd writer stopped");
    }

    /// Takes the lock unless held, and brings the view up to the last
    /// commit. Lets it go first when held for long (fairness).
    async fn acquire(&mut self) -> Result<i64, StoreError> {
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.since.elapsed() > self.config.max_hold)
        {
            self.release().await;
        }
        if let Some(held) = &self.held {
            return Ok(held.revision_mod);
        }
        self.release_stranded().await;
        if !self.stranded.is_empty() {
            return Err(unavailable(
                "taking the write lock",
                "a lock key this daemon failed to release is still there",
            ));
        }
        let timeout = self.config.timeout;
        let lease = self.lease.load(Ordering::Acquire);
        let lock = timed(
            &self.shared.observer,
            "lock",
            tokio::time::timeout(
                timeout,
                self.client.lock(
                    self.config.lock_name.clone(),
                    Some(LockOptions::new().with_lease(lease)),
                ),
            ),
        )
        .await;
        let lock = match lock {
            Ok(Ok(lock)) => lock,
            failed => {
                // etcd may still grant the request later: drop our key (etcd
                // names it `<name>/<lease in hex>`), or other daemons would
                // wait behind it for as long as the lease lives.
                let mine = [
                    self.config.lock_name.as_slice(),
                    b"/",
                    format!("{lease:x}").as_bytes(),
                ]
                .concat();
                self.unlock(mine).await;
                return Err(match failed {
                    Ok(Err(e)) => unavailable("taking the write lock", e),
                    _ => unavailable("taking the write lock", format!("no answer in {timeout:?}")),
                });
            }
        };
        let key = lock.key().to_vec();
        // From here on no other writer commits: read where the log ends.
        let revision_key = [self.config.data_prefix.as_slice(), codec::REVISION_KEY].concat();
        let got = timed(
            &self.shared.observer,
            "range",
            tokio::time::timeout(timeout, self.client.get(revision_key, None)),
        )
        .await;
        let revision_mod = match got {
            Ok(Ok(resp)) => resp.kvs().first().map_or(0, |kv| kv.mod_revision()),
            Ok(Err(e)) => {
                self.unlock(key).await;
                return Err(unavailable("reading the revision", e));
            }
            Err(_) => {
                self.unlock(key).await;
                return Err(unavailable(
                    "reading the revision",
                    format!("no answer in {timeout:?}"),
                ));
            }
        };
        if let Err(e) = self.caught_up(revision_mod, |r| r.revision_mod).await {
            self.unlock(key).await;
            return Err(e);
        }
        self.held = Some(Held {
            key,
            revision_mod,
            since: Instant::now(),
        });
        Ok(revision_mod)
    }

    /// Waits until the view has applied etcd revision `at` (as `field` of
    /// the view tells it).
    async fn caught_up(&self, at: i64, field: fn(&Replica) -> i64) -> Result<(), StoreError> {
        let mut applied = self.shared.applied.subscribe();
        let wait = async {
            loop {
                if field(&*self.shared.read()?) >= at {
                    return Ok(());
                }
                applied.changed().await.map_err(|_| StoreError::Closed)?;
            }
        };
        tokio::time::timeout(self.config.timeout, wait)
            .await
            .map_err(|_| {
                unavailable(
                    "the local view",
                    format!(
                        "the watch did not deliver etcd revision {at} within {:?}",
                        self.config.timeout
                    ),
                )
            })?
    }

    async fn release(&mut self) {
        if let Some(held) = self.held.take() {
            self.unlock(held.key).await;
        }
    }

    async fn unlock(&mut self, key: Vec<u8>) {
        if let Err(e) = self.try_unlock(&key).await {
            // The lease is kept alive, so etcd keeps the key: retried.
            tracing::warn!(error = %e, "etcd: could not release the write lock; retrying");
            self.stranded.push(key);
        }
    }

    async fn try_unlock(&mut self, key: &[u8]) -> Result<(), StoreError> {
        let unlock = tokio::time::timeout(self.config.timeout, self.client.unlock(key.to_vec()));
        match timed(&self.shared.observer, "unlock", unlock).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable("releasing the write lock", e)),
            Err(_) => Err(unavailable("releasing the write lock", "no answer in time")),
        }
    }

    /// Deletes again the lock keys whose release failed (never while the
    /// lock is held: the key of a new lock on the same lease has the same
    /// name).
    async fn release_stranded(&mut self) {
        if self.held.is_some() {
            return;
        }
        let mut left = Vec::new();
        for key in std::mem::take(&mut self.stranded) {
            match self.try_unlock(&key).await {
                Ok(()) => tracing::info!("etcd: a write lock key left behind is released"),
                Err(_) => left.push(key),
            }
        }
        self.stranded = left;
    }

    /// Commits `overlay` (plus the store's counters) in one fenced
    /// transaction on top of `revision_mod`; returns the etcd revision it
    /// committed at, once the view has applied it.
    async fn commit(
        &mut self,
        revision_mod: i64,
        overlay: &Overlay,
        revision: u64,
        audit_seq: u64,
    ) -> Result<i64, StoreError> {
        let prefix = &self.config.data_prefix;
        let key = |k: &[u8]| [prefix.as_slice(), k].concat();
        let lock_key = self
            .held
            .as_ref()
            .map(|h| h.key.clone())
            .ok_or_else(|| StoreError::Internal("commit without the write lock".into()))?;
        let mut ops: Vec<TxnOp> = overlay
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(key(k), v.clone(), None),
                None => TxnOp::delete(key(k), None),
            })
            .collect();
        ops.push(TxnOp::put(
            key(codec::REVISION_KEY),
            codec::encode_u64(revision).to_vec(),
            None,
        ));
        ops.push(TxnOp::put(
            key(codec::AUDIT_SEQ_KEY),
            codec::encode_u64(audit_seq).to_vec(),
            None,
        ));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key(codec::REVISION_KEY), CompareOp::Equal, revision_mod),
                Compare::create_revision(lock_key, CompareOp::Greater, 0),
            ])
            .and_then(ops);
        let timeout = self.config.timeout;
        let txn = tokio::time::timeout(timeout, self.client.txn(txn));
        let resp = match timed(&self.shared.observer, "txn", txn).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                // The outcome is unknown: let the lock go and re-read.
                self.release().await;
                return Err(unavailable("commit (outcome unknown)", e));
            }
            Err(_) => {
                self.release().await;
                return Err(unavailable(
                    "commit (outcome unknown)",
                    format!("no answer in {timeout:?}"),
                ));
            }
        };
        if !resp.succeeded() {
            self.release().await;
            return Err(StoreError::Unavailable(
                "etcd: the write lock was lost (lease lapsed?) or another writer committed: \
                 nothing was written"
                    .into(),
            ));
        }
        let at = resp.header().map_or(0, |h| h.revision());
        self.caught_up(at, |r| r.etcd_revision).await?;
        if let Some(held) = &mut self.held {
            held.revision_mod = at;
        }
        Ok(at)
    }

    async fn commit_group(&mut self, pending: &mut Vec<(Job, Reply)>) {
        let revision_mod = match self.acquire().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, jobs = pending.len(), "etcd: cannot write");
                for (_, reply) in pending.drain(..) {
                    let _ = reply.send(Err(TxnError::Store(clone_error(&e))));
                }
                return;
            }
        };
        let started = Instant::now();
        let jobs = pending.len();
        let batches = match self.stage_group(pending) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "etcd: staging failed");
                for (_, reply) in pending.drain(..) {
                    let _ = reply.send(Err(TxnError::Store(clone_error(&e))));
                }
                return;
            }
        };
        let mut revision_mod = revision_mod;
        let mut failure: Option<StoreError> = None;
        let mut events = 0;
        for batch in batches {
            // Jobs that wrote nothing need no commit.
            if failure.is_none() && !batch.overlay.is_empty() {
                match self
                    .commit(
                        revision_mod,
                        &batch.overlay,
                        batch.revision,
                        batch.audit_seq,
                    )
                    .await
                {
                    Ok(at) => {
                        revision_mod = at;
                        events += batch.events;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "etcd: group commit failed");
                        failure = Some(e);
                    }
                }
            }
            for (reply, committed) in batch.replies {
                let result = match &failure {
                    Some(e) => Err(TxnError::Store(clone_error(e))),
                    None => Ok(committed),
                };
                // A caller that went away no longer needs its answer.
                let _ = reply.send(result);
            }
        }
        if let Some(observer) = &self.shared.observer {
            observer.group_committed(jobs, events, started.elapsed());
        }
    }

    /// Runs the jobs on the view and stages their writes, split into
    /// transactions at job boundaries within etcd's limits. Refused jobs
    /// are answered at once.
    fn stage_group(&self, pending: &mut Vec<(Job, Reply)>) -> Result<Vec<Batch>, StoreError> {
        let replica = self.shared.read()?;
        let now = self.shared.clock.now_ms();
        let mut group = Staging {
            revision: replica.revision,
            audit_seq: replica.audit_seq,
            ..Staging::default()
        };
        let new_batch = |g: &Staging| Batch {
            overlay: Overlay::new(),
            revision: g.revision,
            audit_seq: g.audit_seq,
            events: 0,
            replies: Vec::new(),
        };
        let mut batches = vec![new_batch(&group)];
        for (job, reply) in pending.drain(..) {
            let view = GroupView {
                replica: &replica,
                overlay: &group.overlay,
            };
            let planned = catch_unwind(AssertUnwindSafe(|| job(&view))).unwrap_or_else(|_| {
                Err(StoreError::Internal("a write job panicked".into()).into())
            });
            let mut one = Staging {
                revision: group.revision,
                audit_seq: group.audit_seq,
                ..Staging::default()
            };
            let staged = planned.and_then(|set| {
                stage(&replica, &group.overlay, &mut one, set, now).map_err(TxnError::from)
            });
            let committed = match staged {
                Ok(c) => c,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            let (ops, bytes) = size(&one.overlay);
            // `+ 2`: the revision and audit counters every commit writes.
            if ops + 2 > self.config.max_txn_ops || bytes > self.config.max_txn_bytes {
                let _ = reply.send(Err(StoreError::Internal(format!(
                    "one write of {ops} keys ({bytes} bytes) exceeds the etcd transaction \
                     limits ({} operations, {} bytes): raise etcd's --max-txn-ops and \
                     --max-request-bytes and consentd's etcd_max_txn_ops / etcd_max_txn_bytes",
                    self.config.max_txn_ops, self.config.max_txn_bytes
                ))
                .into()));
                continue;
            }
            let last = batches.last_mut().expect("one batch at least");
            let (batch_ops, batch_bytes) = size(&last.overlay);
            if !last.replies.is_empty()
                && (batch_ops + ops + 2 > self.config.max_txn_ops
                    || batch_bytes + bytes > self.config.max_txn_bytes)
            {
                batches.push(new_batch(&group));
            }
            let batch = batches.last_mut().expect("one batch at least");
            for (key, value) in one.overlay {
                batch.overlay.insert(key.clone(), value.clone());
                group.overlay.insert(key, value);
            }
            group.revision = one.revision;
            group.audit_seq = one.audit_seq;
            batch.revision = one.revision;
            batch.audit_seq = one.audit_seq;
            batch.events += committed.events.len();
            batch.replies.push((reply, committed));
        }
        Ok(batches)
    }

    /// Commits a maintenance plan on the current view.
    async fn maintain(&mut self, plan: Plan) -> Result<(), StoreError> {
        let revision_mod = self.acquire().await?;
        let (overlay, revision, audit_seq) = {
            let replica = self.shared.read()?;
            let overlay =
                catch_unwind(AssertUnwindSafe(|| plan(&replica))).unwrap_or_else(|_| {
                    Err(StoreError::Internal("a maintenance task panicked".into()))
                })?;
            (overlay, replica.revision, replica.audit_seq)
        };
        if overlay.is_empty() {
            return Ok(());
        }
        let (ops, bytes) = size(&overlay);
        if ops + 2 > self.config.max_txn_ops || bytes > self.config.max_txn_bytes {
            return Err(StoreError::Internal(format!(
                "maintenance planned {ops} keys ({bytes} bytes), beyond one etcd transaction"
            )));
        }
        self.commit(revision_mod, &overlay, revision, audit_seq)
            .await
            .map(|_| ())
    }
}

/// Operations and bytes of `overlay` as etcd counts them (roughly).
fn size(overlay: &Overlay) -> (usize, usize) {
    let bytes = overlay
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
        .sum();
    (overlay.len(), bytes)
}

/// A copy of `e` for every job of a failed group.
pub(super) fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Open { path, message } => StoreError::Open {
            path: path.clone(),
            message: message.clone(),
        },
        StoreError::Format { path, message } => StoreError::Format {
            path: path.clone(),
            message: message.clone(),
        },
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Full(m) => StoreError::Full(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Closed => StoreError::Closed,
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
    }
}

/// Stages one job's write set on top of the view and the group so far
/// (`seen`), giving each change the next revision: the same keys and values
/// the sled writer writes for it.
fn stage(
    replica: &Replica,
    seen: &Overlay,
    one: &mut Staging,
    set: WriteSet,
    now: u64,
) -> Result<Committed, StoreError> {
    let mut committed = Committed {
        revision: one.revision,
        ..Committed::default()
    };
    // Whose stored state this job may create or remove: the per-user index
    // is brought in line for them once the job is staged.
    let touched = touched_subjects(&set);
    let erasure = set.erasure.clone();
    let put = |one: &mut Staging, key: Vec<u8>, value: Option<Vec<u8>>| {
        one.overlay.insert(key, value);
    };
    let next = |one: &mut Staging| -> Result<u64, StoreError> {
        one.revision = one
            .revision
            .checked_add(1)
            .ok_or_else(|| StoreError::Internal("revision counter exhausted".into()))?;
        Ok(one.revision)
    };
    // What this job reads back of its own and the group's writes.
    let read = |one: &Staging, key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = one.overlay.get(key) {
            return Ok(v.clone());
        }
        let staged = StagedReplica {
            replica,
            overlay: seen,
        };
        staged.read(key, |raw| Ok(raw.to_vec()))
    };
    let keys_under = |one: &Staging, prefix: &[u8]| -> Result<Vec<Vec<u8>>, StoreError> {
        let staged = StagedReplica {
            replica,
            overlay: seen,
        };
        let mut keys = std::collections::BTreeSet::new();
        staged.scan(prefix, &mut |k, _| {
            keys.insert(k.to_vec());
            Ok(())
        })?;
        for (key, value) in one.overlay.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        Ok(keys.into_iter().collect())
    };

    match set.app {
        Some(AppWrite::Put(mut app)) => {
            app.revision = next(one)?;
            app.updated_at_ms = now;
            put(one, codec::app_key(&app.id), Some(codec::encode_app(&app)));
            committed.app = Some(Arc::new(app));
            committed.revision = one.revision;
        }
        Some(AppWrite::Delete(id)) => {
            next(one)?;
            put(one, codec::app_key(&id), None);
            committed.revision = one.revision;
        }
        None => {}
    }
    for Subject { app, user } in set.forget {
        put(one, codec::privacy_key(&app, &user), None);
        for key in keys_under(one, &codec::user_nag_prefix(&app, &user))? {
            put(one, key, None);
        }
    }
    if let Some((Subject { app, user }, answer)) = set.privacy {
        committed.revision = next(one)?;
        put(
            one,
            codec::privacy_key(&app, &user),
            answer.as_ref().map(codec::encode_privacy),
        );
    }
    for timer in &set.cleared_timers {
        let key = codec::decision_key(&timer.subject.app, &timer.subject.user, timer.scope);
        put(one, codec::timer_key(timer.expires_at_ms, &key), None);
    }
    for (subject, change) in set.changes {
        let revision = next(one)?;
        let key = codec::decision_key(&subject.app, &subject.user, change.scope);
        let lifetime = match change.new {
            DecisionState::Granted => set
                .lifetimes
                .get(&(subject.clone(), change.scope))
                .unwrap_or(&set.lifetime)
                .clone(),
            _ => Lifetime::Permanent,
        };
        if let Some(at) = lifetime.expires_at_ms() {
            put(one, codec::timer_key(at, &key), Some(Vec::new()));
        }
        let value = (change.new != DecisionState::NotDetermined).then(|| {
            codec::encode_decision(&Decision {
                state: change.new,
                cause: change.cause,
                updated_at_ms: now,
                revision,
                lifetime,
            })
        });
        put(one, key, value);
        let event = Event {
            revision,
            app: subject.app,
            user: subject.user,
            scope: change.scope,
            old: change.old,
            new: change.new,
            cause: change.cause,
            time_ms: now,
        };
        put(
            one,
            codec::event_key(revision).to_vec(),
            Some(codec::encode_event(&event)),
        );
        committed.events.push(event);
        committed.revision = revision;
    }
    for (subject, scope, lifetime) in set.renew {
        let key = codec::decision_key(&subject.app, &subject.user, scope);
        let Some(raw) = read(one, &key)? else {
            continue;
        };
        let mut decision = codec::decode_decision(&raw)?;
        if let Some(at) = lifetime.expires_at_ms() {
            put(one, codec::timer_key(at, &key), Some(Vec::new()));
        }
        decision.lifetime = lifetime;
        put(one, key, Some(codec::encode_decision(&decision)));
    }
    if let Some((subject, scope, state)) = set.nag {
        put(
            one,
            codec::nag_key(&subject.app, &subject.user, scope),
            state.as_ref().map(codec::encode_nag),
        );
    }
    for entry in set.audit {
        one.audit_seq += 1;
        let seq = one.audit_seq;
        put(
            one,
            codec::audit_index_key(&entry.app, seq),
            Some(Vec::new()),
        );
        let record = AuditRecord {
            seq,
            time_ms: now,
            revision: committed.revision,
            entry,
        };
        put(
            one,
            codec::audit_key(seq).to_vec(),
            Some(codec::encode_audit(&record)),
        );
    }
    // The per-user index (`u/<user>\0<app>`, the sled backend's keys) in
    // the same transaction as the state it follows.
    let index = {
        let staged = StagedReplica {
            replica,
            overlay: seen,
        };
        let job = sled_read::Staged {
            tree: &staged,
            overlay: &one.overlay,
        };
        sled_users::index_updates_kv(&job, &touched)?
    };
    for (key, value) in index {
        put(one, key, value);
    }
    // An erasure's marker commits with its revocations; the scrub
    // (`EtcdStore::finish_erasures`) removes it in its last transaction.
    if let Some(e) = erasure {
        let marker = sled_users::Marker {
            user: e.user,
            pseudonym: e.pseudonym,
            revision: one.revision,
            audit_seq: one.audit_seq,
        };
        put(
            one,
            sled_users::marker_key(&marker.pseudonym),
            Some(sled_users::encode_marker(&marker)),
        );
    }
    Ok(committed)
}

/// The subjects whose decisions, privacy answer or anti-nag state `set`
/// writes.
fn touched_subjects(set: &WriteSet) -> std::collections::BTreeSet<Subject> {
    let mut touched: std::collections::BTreeSet<Subject> =
        set.changes.iter().map(|(s, _)| s.clone()).collect();
    touched.extend(set.forget.iter().cloned());
    touched.extend(set.privacy.iter().map(|(s, _)| s.clone()));
    touched.extend(set.nag.iter().map(|(s, _, _)| s.clone()));
    touched
}

/// The view plus what earlier jobs of the group staged.
struct GroupView<'a> {
    replica: &'a Replica,
    overlay: &'a Overlay,
}

impl GroupView<'_> {
    fn staged(&self) -> StagedReplica<'_> {
        StagedReplica {
            replica: self.replica,
            overlay: self.overlay,
        }
    }
}

impl View for GroupView<'_> {
    fn app(&self, id: &AppId) -> Result<Option<Arc<App>>, StoreError> {
        if let Some(staged) = self.overlay.get(&codec::app_key(id)) {
            return staged
                .as_deref()
                .map(|raw| codec::decode_app(raw).map(Arc::new))
                .transpose();
        }
        Ok(self.replica.apps.get(id).cloned())
    }

    fn subject(
        &self,
        app: &AppId,
        user: &UserId,
        query: &StateQuery,
    ) -> Result<SubjectState, StoreError> {
        sled_read::subject(&self.staged(), app, user, query)
    }

    fn due_timers(&self, now_ms: u64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        let bound = codec::timers_due_bound(now_ms);
        let mut out = Vec::new();
        self.staged().scan(codec::TIMER_PREFIX, &mut |key, _| {
            if out.len() < limit && key < bound.as_slice() {
                let (expires_at_ms, decision_key) = codec::split_timer_key(key)?;
                let (app, user, scope) = codec::split_decision_key(&decision_key)?;
                out.push(Timer {
                    expires_at_ms,
                    subject: Subject { app, user },
                    scope,
                });
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn app_decisions(&self, app: &AppId) -> Result<Vec<(UserId, UserDecisions)>, StoreError> {
        let prefix = codec::app_decisions_prefix(app);
        let mut users: BTreeMap<UserId, UserDecisions> = BTreeMap::new();
        self.staged().scan(&prefix, &mut |key, value| {
            let (user, scope) = codec::split_user_scope(&key[prefix.len()..])?;
            users
                .entry(user)
                .or_default()
                .insert(scope, codec::decode_decision(value)?.state);
            Ok(())
        })?;
        Ok(users.into_iter().collect())
    }

    fn user_apps(&self, user: &UserId) -> Result<Vec<AppId>, StoreError> {
        sled_users::user_apps(&self.staged(), user, None, usize::MAX)
    }

    fn subjects_with_user_state(&self, app: &AppId) -> Result<Vec<Subject>, StoreError> {
        let mut users = std::collections::BTreeSet::new();
        for prefix in [codec::app_privacy_prefix(app), codec::app_nag_prefix(app)] {
            self.staged().scan(&prefix, &mut |key, _| {
                let tail = &key[prefix.len()..];
                // privacy: `<user>`; anti-nag: `<user>\0<scope>`.
                let user = tail.split(|b| *b == 0).next().unwrap_or(tail);
                let user = std::str::from_utf8(user)
                    .ok()
                    .and_then(|u| UserId::parse(u).ok())
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "bad user in key {:?}",
                            String::from_utf8_lossy(key)
                        ))
                    })?;
                users.insert(user);
                Ok(())
            })?;
        }
        Ok(users
            .into_iter()
            .map(|user| Subject {
                app: app.clone(),
                user,
            })
            .collect())
    }
}
