//! The cluster-wide duties of the etcd backend: grant lapses, log
//! compaction, audit trimming and resuming an erasure's scrub run on one
//! daemon at a time, the holder.
//!
//! Holding is a key, `<prefix>duties`, created only if absent and attached
//! to a lease of its own that this daemon keeps alive (`keep_lease`). The
//! daemon that creates it holds the duties for as long as the key exists
//! with the create revision it got; that pair is the **fence**: every duty
//! commit compares the key's `create_revision` in the same etcd transaction
//! as its writes (see `etcd_writer`), so a holder that lost the key (its
//! lease lapsed while it was paused or cut off, and another daemon took the
//! key) commits nothing, even before it notices. The others look every
//! `check` interval; when the holder's lease lapses etcd deletes the key and
//! the next daemon to look creates it: a takeover within the lease TTL plus
//! one check. The holder looks too, and steps down when its key is gone or
//! when it could not reach etcd for a whole TTL (its lease may have lapsed).
//! A daemon that stops deletes its key at once (and revokes the lease).

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// This daemon's holding: the duty key and the create revision it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

impl Fence {
    /// The compare every duty commit adds: the key is still the one this
    /// daemon created.
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.create_revision)
    }

    /// Read in the transaction's failure branch, to tell a lost holding
    /// from another writer's commit.
    pub fn read(&self) -> TxnOp {
        TxnOp::get(self.key.clone(), None)
    }

    /// Whether a failed transaction's failure branch (`read`, as the op at
    /// `index`) shows that this holding is gone.
    pub fn lost_in(&self, resp: &etcd_client::TxnResponse, index: usize) -> bool {
        match resp.op_responses().get(index) {
            Some(TxnOpResponse::Get(got)) => got
                .kvs()
                .first()
                .is_none_or(|kv| kv.create_revision() != self.create_revision),
            _ => false,
        }
    }
}

/// Whether this daemon holds the duties, shared by the election task, the
/// writer (which fences duty commits) and the server's duty tasks.
pub(super) struct Duties {
    held: Mutex<Option<Fence>>,
    holding: watch::Sender<bool>,
    /// Wakes the election task (a fenced commit was refused).
    recheck: Notify,
}

impl Duties {
    pub fn new() -> Self {
        Self {
            held: Mutex::new(None),
            holding: watch::channel(false).0,
            recheck: Notify::new(),
        }
    }

    /// The fence of this daemon's holding, if it holds the duties.
    pub fn fence(&self) -> Option<Fence> {
        self.held.lock().ok().and_then(|h| h.clone())
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.holding.subscribe()
    }

    fn set(&self, fence: Option<Fence>) {
        if let Ok(mut held) = self.held.lock() {
            *held = fence;
        }
        let holds = self.fence().is_some();
        self.holding
            .send_if_modified(|h| std::mem::replace(h, holds) != holds);
    }

    /// Steps down: `fence` is gone (a duty commit on it was refused).
    pub fn lost(&self, fence: &Fence, reason: &str) {
        if self.fence().as_ref() == Some(fence) {
            self.set(None);
            tracing::warn!(
                reason,
                create_revision = fence.create_revision,
                "cluster-wide duties lost"
            );
        }
        self.recheck.notify_one();
    }
}

/// How the election runs.
pub(super) struct Election {
    pub client: Client,
    pub duties: Arc<Duties>,
    /// `<prefix>duties`.
    pub key: Vec<u8>,
    /// What the key holds: who this daemon is (for operators reading it
    /// with etcdctl).
    pub me: String,
    /// The lease the key is attached to (kept alive, replaced once lapsed,
    /// by a `keep_lease` task).
    pub lease: Arc<AtomicI64>,
    /// How often the key is looked at.
    pub check: Duration,
    pub ttl: Duration,
    pub timeout: Duration,
}

impl Election {
    /// Campaigns and watches over the holding until `stop`; then steps down
    /// (deleting the key, so another daemon takes over at once).
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.check);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ok = Instant::now();
        // The holder seen last time, to say why the duties came here.
        let mut seen: Option<String> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
                () = self.duties.recheck.notified() => {}
            }
            match self.duties.fence() {
                Some(fence) => match self.confirm(&fence).await {
                    Ok(None) => last_ok = Instant::now(),
                    Ok(Some(reason)) => self.duties.lost(&fence, &reason),
                    Err(e) if last_ok.elapsed() >= self.ttl => self.duties.lost(
                        &fence,
                        &format!(
                            "etcd out of reach for longer than the lease TTL ({:?}); its lease \
                             may have lapsed: {e}",
                            self.ttl
                        ),
                    ),
                    Err(e) => tracing::debug!(error = %e, "etcd: confirming the duties"),
                },
                None => match self.campaign().await {
                    Ok(Ok(fence)) => {
                        let reason = match &seen {
                            Some(holder) => format!(
                                "the previous holder ({holder}) is gone: its lease lapsed or it \
                                 stepped down"
                            ),
                            None => "no daemon held them".to_owned(),
                        };
                        tracing::info!(
                            reason,
                            holder = %self.me,
                            create_revision = fence.create_revision,
                            "cluster-wide duties acquired"
                        );
                        self.duties.set(Some(fence));
                        last_ok = Instant::now();
                        seen = None;
                    }
                    Ok(Err(holder)) => seen = Some(holder),
                    Err(e) => tracing::debug!(error = %e, "etcd: campaigning for the duties"),
                },
            }
        }
        if let Some(fence) = self.duties.fence() {
            self.duties.set(None);
            let resign = Txn::new()
                .when([fence.compare()])
                .and_then([TxnOp::delete(fence.key.clone(), None)]);
            let resigned = tokio::time::timeout(self.timeout, self.client.txn(resign)).await;
            let done = matches!(resigned, Ok(Ok(_)));
            tracing::info!(
                reason = if done {
                    "this daemon stops: the key is deleted, another daemon takes over at once"
                } else {
                    "this daemon stops: the key could not be deleted, it goes with the lease"
                },
                "cluster-wide duties lost"
            );
        }
    }

    /// Whether the holding still stands: `Ok(None)`, or why not.
    async fn confirm(&mut self, fence: &Fence) -> Result<Option<String>, String> {
        let got = tokio::time::timeout(self.timeout, self.client.get(fence.key.clone(), None))
            .await
            .map_err(|_| format!("no answer in {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        Ok(match got.kvs().first() {
            Some(kv) if kv.create_revision() == fence.create_revision => None,
            Some(kv) => Some(format!(
                "another daemon holds them now ({}): this daemon's lease lapsed (paused or cut \
                 off from etcd for longer than the TTL)",
                String::from_utf8_lossy(kv.value())
            )),
            None => Some(
                "the duty key is gone: this daemon's lease lapsed (paused or cut off from etcd \
                 for longer than the TTL), or an operator deleted it"
                    .to_owned(),
            ),
        })
    }

    /// Creates the key if absent: `Ok(Ok(fence))` when this daemon now
    /// holds the duties, `Ok(Err(holder))` when another daemon does.
    async fn campaign(&mut self) -> Result<Result<Fence, String>, String> {
        let lease = self.lease.load(Ordering::Acquire);
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                self.key.clone(),
                self.me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let resp = tokio::time::timeout(self.timeout, self.client.txn(txn))
            .await
            .map_err(|_| format!("no answer in {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        if resp.succeeded() {
            // Every write of a transaction takes its revision.
            let create_revision = resp.header().map_or(0, |h| h.revision());
            return Ok(Ok(Fence {
                key: self.key.clone(),
                create_revision,
            }));
        }
        let holder = match resp.op_responses().first() {
            Some(TxnOpResponse::Get(got)) => got.kvs().first().map_or_else(String::new, |kv| {
                String::from_utf8_lossy(kv.value()).into_owned()
            }),
            _ => String::new(),
        };
        Ok(Err(holder))
    }
}
