//! The etcd backend (`--store etcd`, cargo feature `etcd`): any number of
//! daemons share one etcd cluster, each with a local view of the whole store
//! kept current by one etcd watch (see `etcd_replica`) and a writer that
//! commits through fenced etcd transactions (see `etcd_writer`). The
//! consistency model is described in `store/mod.rs`, "The etcd backend".
//!
//! etcd keys: `<prefix>data/<key>`, with the keys and values of
//! `sled_codec` for decisions, timers, apps, the checkpoint, privacy and
//! anti-nag state and the counters (`m/revision`, `m/compacted_through`,
//! `m/audit_seq`), so `sled_read` reads this view too; but the log one key
//! per entry, not sled's chunks: `E/<revision>` holds one event
//! (`encode_event`), `A/<seq>` one audit record (`encode_audit`) with its
//! index entry `I/<app>\0<seq>` (small etcd values, one watch event each,
//! trimmed by deleting keys); the per-user index `u/<user>\0<app>` and the
//! erasure markers `x/<pseudonym>` of `sled_users`. `<prefix>data/m/etcd_format`
//! is this layout's version ([`ETCD_FORMAT`]) and `<prefix>lock/...` the
//! write lock's keys (etcd's Lock API).

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    codec,
    etcd_duties::{Duties, Election},
    etcd_replica::{Changes, Replica, Shared},
    etcd_snapshot::{self, Origin, Unusable},
    etcd_writer::{Plan, Request, Writer, WriterConfig},
    sled_read::{self, Overlay},
    sled_users, AuditPage, BoxFuture, CommitObserver, Committed, Compaction, DecisionRow, Job,
    Published, Retention, RevisionWait, Store, StoreError, StoreStats, TxnError, Verification,
    MAX_MISMATCHES,
};
use crate::{
    clock::SharedClock,
    domain::{App, AppId, AuditQuery, DecisionState, Event, StateQuery, SubjectState, UserId},
};

/// The version of the etcd key layout, under `m/etcd_format`. Layout 2
/// adds the per-user index (`u/<user>\0<app>`) and erasure markers
/// (`x/<pseudonym>`); opening a layout-1 prefix builds the index.
pub const ETCD_FORMAT: u64 = 2;
const ETCD_FORMAT_KEY: &[u8] = b"m/etcd_format";
/// Keys read per etcd range request when loading the view. Large on
/// purpose: etcd 3.4 collects the revisions of the *whole rest* of a range
/// for every page (its index lookup takes no limit; 3.5 fixed that), so a
/// load in pages of P keys costs O(N^2 / P) there. With 2,000-key pages a
/// store of 1M decisions (~3M keys) did not load in minutes; at 100,000 it
/// takes a few dozen pages and serves after 16 s. A page is ~20 MB: one
/// commit's keys measured 22-48 bytes (with the prefix) and values 0-140
/// bytes; only app registrations are larger, and there are few of them.
const LOAD_PAGE: i64 = 100_000;
/// The largest range response the loader accepts (tonic's default is 4 MiB).
const LOAD_MESSAGE_BYTES: usize = 256 << 20;
/// The least time one load page may take before the load fails: a large
/// page from a busy etcd 3.4 takes seconds, more than the call timeout
/// meant for single keys and commits.
const LOAD_PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often each daemon checks that etcd has a quorum (health).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The longest a quorum probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach etcd and how to write to it.
#[derive(Clone)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Every key of this store starts with it (several stores can share a
    /// cluster).
    pub prefix: String,
    /// etcd user and password, when etcd has authentication on (the
    /// client authenticates again when etcd says its token expired).
    pub user: Option<(String, String)>,
    /// TLS towards `https://` endpoints.
    pub tls: Option<super::EtcdTls>,
    /// Most jobs committed by one group commit.
    pub max_batch: usize,
    /// Jobs waiting for the writer before submitters wait.
    pub queue_depth: usize,
    /// Committed groups buffered for watchers before a slow one lags.
    pub publish_capacity: usize,
    /// etcd's `--max-txn-ops` and (about) `--max-request-bytes`: a group
    /// commit is split into transactions within them.
    pub max_txn_ops: usize,
    pub max_txn_bytes: usize,
    /// The lease the write lock is held on: a daemon that dies holds the
    /// lock at most this long.
    pub lease_ttl: Duration,
    /// Bound on each etcd call.
    pub timeout: Duration,
    /// How often each daemon looks at the cluster-wide duties' key: a
    /// takeover happens within `lease_ttl` plus this.
    pub duty_check: Duration,
    pub observer: Option<Arc<dyn CommitObserver>>,
    pub clock: SharedClock,
    /// Where the local view's snapshot is kept (the daemon's data dir), so
    /// that a restart catches up from it; `None`: no snapshot, every start
    /// loads the whole prefix.
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// How often the snapshot is rewritten while the view moves (it is also
    /// written at a clean close).
    pub snapshot_interval: Duration,
    /// Tests: how long the watcher waits before applying each response (a
    /// view that lags behind etcd).
    #[cfg(test)]
    pub(crate) watch_delay: Duration,
}

impl EtcdConfig {
    /// Defaults for a cluster at `endpoints` with keys under `prefix`;
    /// the transaction limits are etcd's own defaults.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>, clock: SharedClock) -> Self {
        Self {
            endpoints,
            prefix: prefix.into(),
            user: None,
            tls: None,
            max_batch: 256,
            queue_depth: 4096,
            publish_capacity: 1024,
            max_txn_ops: 128,
            max_txn_bytes: 1 << 20,
            lease_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            duty_check: Duration::from_millis(500),
            observer: None,
            clock,
            snapshot_dir: None,
            snapshot_interval: Duration::from_secs(60),
            #[cfg(test)]
            watch_delay: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The etcd-backed [`Store`].
pub struct EtcdStore {
    shared: Arc<Shared>,
    client: Client,
    writer: Mutex<Option<(mpsc::Sender<Request>, JoinHandle<()>)>>,
    /// The watcher and the lease keeper.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: CancellationToken,
    /// The lease lock attempts are made on.
    lease: Arc<AtomicI64>,
    /// The lease the duties' key is attached to.
    duty_lease: Arc<AtomicI64>,
    duties: Arc<Duties>,
    config: EtcdConfig,
    /// Whether the last quorum probe succeeded (gRPC health follows it).
    quorum: watch::Sender<bool>,
    /// The newest `m/revision` read from etcd with a quorum (probes and
    /// consistency-token checks): the store's revision as the cluster has it.
    cluster_revision: Arc<AtomicU64>,
    snapshots: Option<Arc<Snapshots>>,
    opened: Opened,
}

/// How a store's view was built when it opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The etcd revision of the snapshot it caught up from; `None`: it
    /// read the whole prefix.
    pub from_snapshot: Option<i64>,
    /// Keys (or, when catching up, watch events) read from etcd.
    pub keys_read: u64,
}

/// The snapshot file of one store and the etcd revision last written.
struct Snapshots {
    path: std::path::PathBuf,
    origin: Origin,
    written: AtomicI64,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {what}: {e}"))
}

/// What an error at start most likely means, for the operator: TLS and
/// authentication failures come back from etcd-client as transport errors
/// and gRPC statuses that do not name the setting to fix.
fn open_hint(config: &EtcdConfig, message: &str) -> Option<String> {
    if message.contains("invalid peer certificate") {
        return Some(
            "TLS: etcd's server certificate does not verify against --etcd-ca, or is not \
             valid for the endpoint's host"
                .into(),
        );
    }
    // TLS 1.3: etcd checks the client certificate after the client's
    // side of the handshake is done, so the client sees an alert, a closed
    // connection or a broken pipe, whichever comes first.
    let rejected = [
        "connection closed",
        "broken pipe",
        "BadCertificate",
        "CertificateRequired",
    ];
    if config.tls.is_some() && rejected.iter().any(|r| message.contains(r)) {
        let sent = if config.tls.as_ref().is_some_and(|t| t.identity.is_some()) {
            "refused the client certificate of --etcd-cert (not signed by a CA in its \
             --trusted-ca-file?)"
        } else {
            "wants a client certificate: give --etcd-cert and --etcd-key"
        };
        return Some(format!(
            "TLS: etcd closed the connection or refused the handshake: it likely {sent}"
        ));
    }
    if message.contains("authentication failed") {
        let user = config.user.as_ref().map_or("", |(name, _)| name.as_str());
        return Some(format!(
            "check --etcd-user {user:?} and its password (--etcd-password-file or \
             CONSENTD_ETCD_PASSWORD)"
        ));
    }
    if message.contains("permission denied") || message.contains("user name is empty") {
        let user = config.user.as_ref().map_or("", |(name, _)| name.as_str());
        return Some(if user.is_empty() {
            "etcd has authentication on: give --etcd-user and its password".into()
        } else {
            format!(
                "etcd user {user:?} needs a role with readwrite permission on the key prefix \
                 {:?} (etcdctl role grant-permission ROLE --prefix=true readwrite {})",
                config.prefix, config.prefix
            )
        });
    }
    None
}

/// Runs an etcd call with the configured bound.
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, format!("no answer in {timeout:?}"))),
    }
}

/// Awaits an etcd call, telling `observer` how long it took (failures and
/// time-outs included) under `op`, one of a few fixed names.
pub(super) async fn timed<F: std::future::Future>(
    observer: &Option<Arc<dyn CommitObserver>>,
    op: &'static str,
    call: F,
) -> F::Output {
    let started = Instant::now();
    let out = call.await;
    if let Some(observer) = observer {
        observer.backend_call(op, started.elapsed());
    }
    out
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Everything: etcd's "\0" end means no upper bound.
    vec![0]
}

impl EtcdStore {
    /// Connects, loads the local view from etcd and starts the watcher, the
    /// lease keeper and the writer.
    pub async fn open(config: &EtcdConfig) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: format!(
                "etcd {} prefix {:?}",
                config.endpoints.join(","),
                config.prefix
            ),
            message: match open_hint(config, &message) {
                Some(hint) => format!("{message} ({hint})"),
                None => message,
            },
        };
        if config.endpoints.is_empty() {
            return Err(open_err("no etcd endpoints given".into()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_keep_alive(Duration::from_secs(2), config.timeout)
            .with_require_leader(true);
        if let Some((name, password)) = &config.user {
            // etcd's tokens expire (simple tokens after --auth-token-ttl of
            // idleness): authenticate again and retry, instead of failing.
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(t);
        }
        let mut client = bounded(
            config.timeout,
            "connecting",
            Client::connect(&config.endpoints, Some(options)),
        )
        .await
        .map_err(|e| open_err(e.to_string()))?;
        let data_prefix = [config.prefix.as_bytes(), b"data/"].concat();
        let lease = timed(
            &config.observer,
            "lease_grant",
            bounded(
                config.timeout,
                "granting the lease",
                client.lease_grant(lease_seconds(config.lease_ttl), None),
            ),
        )
        .await
        .map_err(|e| open_err(e.to_string()))?
        .id();
        let start = start_view(&mut client, config, &data_prefix, lease)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let mut replica = start.replica;
        let layout = timed(
            &config.observer,
            "txn",
            check_format(&mut client, &data_prefix, &mut replica, config.timeout),
        )
        .await
        .map_err(|e| open_err(e.to_string()))?;
        // A second lease, for the duties' key (the first is for lock attempts).
        let duty_lease = timed(
            &config.observer,
            "lease_grant",
            bounded(
                config.timeout,
                "granting the lease",
                client.lease_grant(lease_seconds(config.lease_ttl), None),
            ),
        )
        .await
        .map_err(|e| open_err(e.to_string()))?
        .id();
        tracing::info!(
            endpoints = %config.endpoints.join(","),
            prefix = %config.prefix,
            revision = replica.revision,
            etcd_revision = replica.etcd_revision,
            compacted_through = replica.compacted_through,
            apps = replica.apps.len(),
            events = replica.events,
            from = if start.opened.from_snapshot.is_some() { "snapshot" } else { "etcd" },
            snapshot_etcd_revision = start.opened.from_snapshot,
            keys_read = start.opened.keys_read,
            "etcd store opened"
        );

        let shared = Arc::new(Shared::new(
            replica,
            config.publish_capacity,
            config.observer.clone(),
            config.clock.clone(),
        ));
        let stop = CancellationToken::new();
        let lease = Arc::new(AtomicI64::new(lease));
        let duty_lease = Arc::new(AtomicI64::new(duty_lease));
        let duties = Arc::new(Duties::new());
        let watcher = tokio::spawn(watch_loop(
            client.clone(),
            shared.clone(),
            data_prefix.clone(),
            config.clone(),
            stop.clone(),
        ));
        let keeper = tokio::spawn(keep_lease(
            client.clone(),
            lease.clone(),
            config.clone(),
            stop.clone(),
        ));
        let (quorum, _) = watch::channel(true);
        let cluster_revision = Arc::new(AtomicU64::new(shared.revision.load(Ordering::Acquire)));
        let prober = tokio::spawn(probe_quorum(
            client.clone(),
            [data_prefix.as_slice(), codec::REVISION_KEY].concat(),
            config.clone(),
            quorum.clone(),
            cluster_revision.clone(),
            stop.clone(),
        ));
        let duty_keeper = tokio::spawn(keep_lease(
            client.clone(),
            duty_lease.clone(),
            config.clone(),
            stop.clone(),
        ));
        let mut tasks = vec![watcher, keeper, prober, duty_keeper];
        let snapshots = start.snapshot_path.map(|path| {
            Arc::new(Snapshots {
                path,
                origin: start.origin,
                // A view caught up from a snapshot differs from it: write
                // it again at the first tick.
                written: AtomicI64::new(0),
            })
        });
        if let Some(snapshots) = &snapshots {
            tasks.push(tokio::spawn(snapshot_loop(
                shared.clone(),
                snapshots.clone(),
                config.snapshot_interval,
                stop.clone(),
            )));
        }
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let writer = Writer::new(
            client.clone(),
            shared.clone(),
            WriterConfig {
                data_prefix,
                lock_name: [config.prefix.as_bytes(), b"lock"].concat(),
                max_batch: config.max_batch.max(1),
                max_txn_ops: config.max_txn_ops.max(8),
                max_txn_bytes: config.max_txn_bytes.max(4096),
                max_hold: Duration::from_millis(50),
                timeout: config.timeout,
                lease_seconds: lease_seconds(config.lease_ttl),
            },
            lease.clone(),
            duties.clone(),
        );
        let writer = tokio::spawn(writer.run(rx));
        let store = Self {
            shared,
            client,
            writer: Mutex::new(Some((tx, writer))),
            tasks: Mutex::new(tasks),
            stop,
            lease,
            duty_lease,
            duties,
            config: config.clone(),
            quorum,
            cluster_revision,
            snapshots,
            opened: start.opened,
        };
        if layout < 2 {
            let written = store
                .build_index()
                .await
                .map_err(|e| open_err(format!("building the per-user index (layout 2): {e}")))?;
            tracing::info!(written, "etcd layout 2: per-user index built");
        }
        // An erasure whose scrub a crash interrupted (on this daemon or any
        // other) finishes before anything is served.
        if store.erasures_pending()? {
            let renamed = store
                .scrub_erasures(false)
                .await
                .map_err(|e| open_err(format!("finishing a pending erasure: {e}")))?;
            tracing::info!(renamed, "pending erasure finished on open");
        }
        // Only now: a daemon that holds the duties is ready to run them.
        let election = Election {
            client: store.client.clone(),
            duties: store.duties.clone(),
            key: [config.prefix.as_bytes(), b"duties"].concat(),
            me: format!(
                "consentd pid {} lease {:x}",
                std::process::id(),
                store.duty_lease.load(Ordering::Acquire)
            ),
            lease: store.duty_lease.clone(),
            check: config.duty_check.max(Duration::from_millis(10)),
            ttl: config.lease_ttl,
            timeout: config.timeout,
        };
        let election = tokio::spawn(election.run(store.stop.clone()));
        store
            .tasks
            .lock()
            .map_err(|_| StoreError::Internal("task handles poisoned".into()))?
            .push(election);
        Ok(store)
    }

    /// How this store's view was built when it opened.
    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    /// Whether an erasure marker is in the view.
    fn erasures_pending(&self) -> Result<bool, StoreError> {
        Ok(self
            .shared
            .read()?
            .scan_prefix(sled_users::ERASURE_PREFIX)
            .next()
            .is_some())
    }

    /// Brings the per-user index in line with the stored state, in fenced
    /// transactions of bounded size, and records layout 2 in the last one
    /// (an interrupted build is redone on the next open); returns how many
    /// index keys it wrote or removed.
    async fn build_index(&self) -> Result<u64, StoreError> {
        let budget = self.config.max_txn_ops.max(8) - 4;
        let mut written = 0;
        loop {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.maintain(
                Box::new(move |replica| {
                    let (overlay, n, done) = index_build_plan(replica, budget)?;
                    let _ = tx.send((n, done));
                    Ok(overlay)
                }),
                false,
            )
            .await?;
            let (n, done) = rx
                .try_recv()
                .map_err(|_| StoreError::Internal("the index build planned nothing".into()))?;
            written += n;
            if done {
                return Ok(written);
            }
        }
    }

    /// Runs one fenced transaction of the first pending erasure's scrub
    /// (at most `budget` keys): returns how many records it renamed and
    /// whether any erasure is still pending after it.
    async fn scrub_step(&self, budget: usize, duty: bool) -> Result<(u64, bool), StoreError> {
        let max_bytes = self.config.max_txn_bytes.max(4096) / 2;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.maintain(
            Box::new(move |replica| {
                let step = scrub_plan(replica, budget, max_bytes)?;
                let _ = tx.send((step.renamed, step.more));
                Ok(step.overlay)
            }),
            duty,
        )
        .await?;
        rx.try_recv()
            .map_err(|_| StoreError::Internal("the erasure scrub planned nothing".into()))
    }

    /// Runs every pending erasure's scrub to its end, one bounded fenced
    /// transaction at a time; returns how many records were renamed. As a
    /// duty (`duty`) only on the holder, fenced.
    async fn scrub_erasures(&self, duty: bool) -> Result<u64, StoreError> {
        let budget = self.config.max_txn_ops.max(8) - 4;
        let mut renamed = 0;
        loop {
            let (n, more) = self.scrub_step(budget, duty).await?;
            renamed += n;
            if !more {
                tracing::info!(
                    renamed,
                    "erasure scrubbed: the retained log, checkpoint and audit trail no longer name the user"
                );
                return Ok(renamed);
            }
        }
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Internal("writer handle poisoned".into()))?
            .as_ref()
            .map(|(tx, _)| tx.clone())
            .ok_or(StoreError::Closed)
    }

    /// Commits a maintenance plan through the writer; a duty's (`duty`)
    /// fenced on this daemon's holding of the duties.
    async fn maintain(&self, plan: Plan, duty: bool) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.sender()?
            .send(Request::Maintain { plan, done, duty })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Trims the audit trail; as a duty (`duty`) only on the holder, fenced.
    async fn trim_audit_as(&self, retention: Retention, duty: bool) -> Result<u64, StoreError> {
        let now = self.shared.clock.now_ms();
        let limit = self.chunk();
        let mut removed = 0;
        loop {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.maintain(
                Box::new(move |replica| {
                    let (overlay, n, done) = trim_audit_plan(replica, retention, now, limit)?;
                    let _ = tx.send((n, done));
                    Ok(overlay)
                }),
                duty,
            )
            .await?;
            let (n, done) = rx
                .try_recv()
                .map_err(|_| StoreError::Internal("audit trim planned nothing".into()))?;
            removed += n;
            if done {
                break;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "audit trail trimmed");
        }
        Ok(removed)
    }

    /// Compacts the log; as a duty (`duty`) only on the holder, fenced.
    async fn compact_as(&self, retention: Retention, duty: bool) -> Result<Compaction, StoreError> {
        let now = self.shared.clock.now_ms();
        let limit = self.chunk();
        let mut total = Compaction {
            removed: 0,
            compacted_through: self.compacted_through(),
        };
        loop {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.maintain(
                Box::new(move |replica| {
                    let (overlay, chunk, done) = compact_plan(replica, retention, now, limit)?;
                    let _ = tx.send((chunk, done));
                    Ok(overlay)
                }),
                duty,
            )
            .await?;
            let (chunk, done) = rx
                .try_recv()
                .map_err(|_| StoreError::Internal("compaction planned nothing".into()))?;
            total.removed += chunk.removed;
            total.compacted_through = chunk.compacted_through;
            if done {
                break;
            }
        }
        if total.removed > 0 {
            tracing::info!(
                removed = total.removed,
                compacted_through = total.compacted_through,
                "event log compacted"
            );
        }
        Ok(total)
    }

    /// The largest number of log entries one maintenance transaction trims
    /// (each takes a delete and at most one checkpoint write).
    fn chunk(&self) -> usize {
        (self.config.max_txn_ops.max(8) - 4) / 2
    }
}

fn lease_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(2)
}

/// Reads every key under `data_prefix` at one etcd revision.
async fn load(
    client: &mut Client,
    data_prefix: &[u8],
    timeout: Duration,
    observer: &Option<Arc<dyn CommitObserver>>,
) -> Result<Replica, StoreError> {
    let end = prefix_end(data_prefix);
    let mut replica = Replica::default();
    let mut start = data_prefix.to_vec();
    let mut at = 0;
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(LOAD_MESSAGE_BYTES);
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(LOAD_PAGE);
        if at > 0 {
            options = options.with_revision(at);
        }
        let resp = timed(
            observer,
            "range",
            bounded(
                timeout.max(LOAD_PAGE_TIMEOUT),
                "loading the store",
                kv.get(start.clone(), Some(options)),
            ),
        )
        .await?;
        if at == 0 {
            at = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            let key = &kv.key()[data_prefix.len()..];
            replica.apply(key, Some(kv.value()))?;
            if key == codec::REVISION_KEY {
                replica.revision_mod = kv.mod_revision();
            }
            start = [kv.key(), b"\0"].concat();
        }
        if !resp.more() || resp.kvs().is_empty() {
            break;
        }
    }
    replica.etcd_revision = at;
    Ok(replica)
}

/// The view a store starts with and how it was built.
struct Start {
    replica: Replica,
    opened: Opened,
    origin: Origin,
    snapshot_path: Option<std::path::PathBuf>,
}

/// Builds the view to start with: the snapshot in the data dir caught up
/// through a watch from its revision when it is usable, else the whole
/// prefix, with a log line saying why.
async fn start_view(
    client: &mut Client,
    config: &EtcdConfig,
    data_prefix: &[u8],
    lease: i64,
) -> Result<Start, StoreError> {
    // Which cluster this is, and how far it is.
    let probe = bounded(
        config.timeout,
        "reading the cluster's revision",
        client.get(
            [data_prefix, ETCD_FORMAT_KEY].concat(),
            Some(GetOptions::new().with_count_only()),
        ),
    )
    .await?;
    let header = probe
        .header()
        .ok_or_else(|| unavailable("reading the cluster's revision", "no response header"))?;
    let origin = Origin {
        cluster_id: header.cluster_id(),
        prefix: config.prefix.clone(),
    };
    let current = header.revision();
    let snapshot_path = match &config.snapshot_dir {
        Some(dir) => match std::fs::create_dir_all(dir) {
            Ok(()) => Some(dir.join(etcd_snapshot::SNAPSHOT_FILE)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "etcd: no snapshot of the view (the data dir cannot be created): every start reads the whole prefix");
                None
            }
        },
        None => None,
    };
    if let Some(path) = &snapshot_path {
        match catch_up(client, config, data_prefix, &origin, current, lease, path).await {
            Ok((replica, snapshot_revision, keys_read)) => {
                return Ok(Start {
                    replica,
                    opened: Opened {
                        from_snapshot: Some(snapshot_revision),
                        keys_read,
                    },
                    origin,
                    snapshot_path,
                });
            }
            Err(None) => tracing::info!(
                path = %path.display(),
                "etcd: no snapshot of the view yet: reading the whole prefix"
            ),
            Err(Some(why)) => tracing::warn!(
                path = %path.display(),
                reason = %why,
                "etcd: the view's snapshot cannot be used: reading the whole prefix"
            ),
        }
    }
    let replica = load(client, data_prefix, config.timeout, &config.observer).await?;
    let keys_read = replica.kv.len() as u64;
    Ok(Start {
        replica,
        opened: Opened {
            from_snapshot: None,
            keys_read,
        },
        origin,
        snapshot_path,
    })
}

/// Loads the snapshot at `path` and brings it up to date: every put and
/// delete under the prefix since its etcd revision, through a watch from
/// the next one, up to a marker key this call writes (its revision is past
/// `current`, so every change before it has been seen once it arrives).
/// Returns the view, the snapshot's revision and how many watch events
/// were read; `Err(None)`: there is no snapshot; `Err(Some(why))`: it
/// cannot be used.
async fn catch_up(
    client: &mut Client,
    config: &EtcdConfig,
    data_prefix: &[u8],
    origin: &Origin,
    current: i64,
    lease: i64,
    path: &std::path::Path,
) -> Result<(Replica, i64, u64), Option<Unusable>> {
    let file = path.to_owned();
    let snapshot = tokio::task::spawn_blocking(move || etcd_snapshot::read(&file))
        .await
        .map_err(|e| Some(Unusable(format!("reading the snapshot: {e}"))))?;
    let (mut replica, found) = snapshot.map_err(Some)?.ok_or(None)?;
    let refuse = |why: String| Some(Unusable(why));
    if found.prefix != origin.prefix {
        return Err(refuse(format!(
            "the snapshot is of prefix {:?}, not {:?}",
            found.prefix, origin.prefix
        )));
    }
    if found.cluster_id != origin.cluster_id {
        return Err(refuse(format!(
            "the snapshot is of etcd cluster {:x}, not {:x}",
            found.cluster_id, origin.cluster_id
        )));
    }
    let at = replica.etcd_revision;
    if at > current {
        return Err(refuse(format!(
            "etcd's revision {current} is behind the snapshot's {at}: etcd was restored or replaced"
        )));
    }
    let failed = |e: StoreError| refuse(format!("catching up: {e}"));
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| refuse(format!("random bytes: {e}")))?;
    let prefix = config.prefix.as_bytes();
    let marker = [prefix, b"catchup/", hex::encode(nonce).as_bytes()].concat();
    // On the daemon's lease: gone with it should the delete below fail.
    let put = bounded(
        config.timeout,
        "writing the catch-up marker",
        client.put(
            marker.clone(),
            Vec::new(),
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await
    .map_err(failed)?;
    let target = put.header().map_or(0, |h| h.revision());
    let options = WatchOptions::new()
        .with_range(prefix_end(prefix))
        .with_start_revision(at + 1);
    let mut stream = bounded(
        config.timeout,
        "watching from the snapshot",
        client.watch(prefix.to_vec(), Some(options)),
    )
    .await
    .map_err(failed)?;
    let mut read = 0u64;
    'stream: loop {
        let resp = bounded(config.timeout, "catching up", stream.message())
            .await
            .map_err(failed)?
            .ok_or_else(|| refuse("the catch-up watch ended early".into()))?;
        if resp.canceled() {
            return Err(refuse(if resp.compact_revision() > 0 {
                format!(
                    "etcd compacted its history through revision {} past the snapshot's {at}",
                    resp.compact_revision()
                )
            } else {
                format!("the catch-up watch was canceled: {}", resp.cancel_reason())
            }));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            if kv.key() == marker.as_slice() {
                break 'stream;
            }
            let Some(key) = kv.key().strip_prefix(data_prefix) else {
                continue;
            };
            let value = match event.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            };
            if key == codec::REVISION_KEY {
                replica.revision_mod = kv.mod_revision();
            }
            replica
                .apply(key, value)
                .map_err(|e| refuse(format!("a change since the snapshot: {e}")))?;
            read += 1;
        }
    }
    drop(stream);
    replica.etcd_revision = target;
    if let Err(e) = bounded(
        config.timeout,
        "deleting the catch-up marker",
        client.delete(marker, None),
    )
    .await
    {
        tracing::warn!(error = %e, "etcd: the catch-up marker goes with the lease");
    }
    tracing::info!(
        snapshot_etcd_revision = at,
        etcd_revision = target,
        events = read,
        "etcd: the view caught up from its snapshot"
    );
    Ok((replica, at, read))
}

/// Rewrites the view's snapshot every `every` while the view moves.
async fn snapshot_loop(
    shared: Arc<Shared>,
    snapshots: Arc<Snapshots>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = write_snapshot(shared.clone(), snapshots.clone()).await {
            tracing::warn!(error = %e, "etcd: the view's snapshot not written");
        }
    }
}

/// Writes the view's snapshot unless the last one is at its revision;
/// returns the revision written, if any. Encoding (under the view's read
/// lock) and writing run on a blocking thread.
async fn write_snapshot(
    shared: Arc<Shared>,
    snapshots: Arc<Snapshots>,
) -> Result<Option<i64>, StoreError> {
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let at = shared.read()?.etcd_revision;
        if at == snapshots.written.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Labelled `at` or a later revision the view reached meanwhile.
        let (at, bytes) = etcd_snapshot::write_atomically(&snapshots.path, |out| {
            etcd_snapshot::encode_to(|| shared.read(), &snapshots.origin, out)
        })?;
        snapshots.written.store(at, Ordering::Release);
        tracing::debug!(
            etcd_revision = at,
            bytes,
            total_ms = started.elapsed().as_millis() as u64,
            "etcd: the view's snapshot written"
        );
        Ok(Some(at))
    })
    .await
    .map_err(|e| StoreError::Internal(format!("writing the snapshot: {e}")))?
}

/// Checks (or, on an empty prefix, writes) the layout version.
async fn check_format(
    client: &mut Client,
    data_prefix: &[u8],
    replica: &mut Replica,
    timeout: Duration,
) -> Result<u64, StoreError> {
    match replica.kv.get(ETCD_FORMAT_KEY) {
        Some(raw) => {
            let found = codec::decode_u64(raw)?;
            if found > ETCD_FORMAT {
                return Err(StoreError::Corrupt(format!(
                    "the prefix holds etcd layout {found}; this consentd reads layout {ETCD_FORMAT}"
                )));
            }
            Ok(found)
        }
        None if !replica.kv.is_empty() => Err(StoreError::Corrupt(
            "the prefix holds keys but no consentd layout marker (m/etcd_format): not a \
             consentd store, or another program's keys; choose another --etcd-prefix"
                .into(),
        )),
        None => {
            let key = [data_prefix, ETCD_FORMAT_KEY].concat();
            let value = codec::encode_u64(ETCD_FORMAT).to_vec();
            // Several daemons may start on an empty prefix at once.
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value.clone(), None)]);
            bounded(timeout, "writing the layout marker", client.txn(txn)).await?;
            // The watch brings the key into the view; readers never need it.
            // (A daemon that lost the race to an older one meets layout 1
            // on its next open and builds the index then.)
            Ok(ETCD_FORMAT)
        }
    }
}

/// Feeds the local view from one etcd watch on the store's keys, resuming
/// after the last revision applied when the stream breaks, reloading the
/// whole view when etcd compacted its history past it.
async fn watch_loop(
    mut client: Client,
    shared: Arc<Shared>,
    data_prefix: Vec<u8>,
    config: EtcdConfig,
    stop: CancellationToken,
) {
    let timeout = config.timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        let from = match shared.read() {
            Ok(r) => r.etcd_revision + 1,
            Err(e) => {
                tracing::error!(error = %e, "etcd watch stopped");
                return;
            }
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = timed(&config.observer, "watch", tokio::time::timeout(timeout, client.watch(data_prefix.clone(), Some(options)))) => opened,
        };
        let mut stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, from, "etcd watch could not start; retrying");
                if sleep_or_stop(&stop, &mut pause).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::warn!(from, "etcd watch did not start in time; retrying");
                if sleep_or_stop(&stop, &mut pause).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = stream.message() => message,
            };
            match message {
                Ok(Some(resp)) => {
                    pause = Duration::from_millis(50);
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            tracing::warn!(
                                compact_revision = resp.compact_revision(),
                                from,
                                "etcd compacted its history past the local view: reloading it"
                            );
                            match load(&mut client, &data_prefix, timeout, &config.observer).await {
                                Ok(fresh) => {
                                    if let Err(e) = shared.replace(fresh) {
                                        tracing::error!(error = %e, "replacing the local view");
                                    }
                                }
                                Err(e) => tracing::warn!(error = %e, "reloading the local view"),
                            }
                        } else {
                            tracing::warn!(reason = resp.cancel_reason(), "etcd watch canceled");
                        }
                        break;
                    }
                    #[cfg(test)]
                    tokio::time::sleep(config.watch_delay).await;
                    if let Err(e) = apply(&shared, &data_prefix, &resp) {
                        tracing::error!(error = %e, "etcd watch: a change could not be applied");
                    }
                }
                Ok(None) => {
                    tracing::warn!("etcd watch ended; resuming");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd watch broke; resuming");
                    break;
                }
            }
        }
        if sleep_or_stop(&stop, &mut pause).await {
            return;
        }
    }
}

/// Applies a watch response, one etcd revision at a time.
fn apply(
    shared: &Shared,
    data_prefix: &[u8],
    resp: &etcd_client::WatchResponse,
) -> Result<(), StoreError> {
    let mut current: Option<(i64, Changes)> = None;
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let Some(key) = kv.key().strip_prefix(data_prefix) else {
            continue;
        };
        let value = match event.event_type() {
            EventType::Put => Some(kv.value().to_vec()),
            EventType::Delete => None,
        };
        let revision = kv.mod_revision();
        match &mut current {
            Some((at, changes)) if *at == revision => changes.push((key.to_vec(), value)),
            _ => {
                if let Some((at, changes)) = current.take() {
                    shared.apply_revision(at, changes)?;
                }
                current = Some((revision, vec![(key.to_vec(), value)]));
            }
        }
    }
    if let Some((at, changes)) = current {
        shared.apply_revision(at, changes)?;
    }
    Ok(())
}

/// Sleeps `pause` (doubling it up to 2 s for next time); true if stopped.
async fn sleep_or_stop(stop: &CancellationToken, pause: &mut Duration) -> bool {
    let wait = *pause;
    *pause = (*pause * 2).min(Duration::from_secs(2));
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// Keeps the write lock's lease alive; grants a new one when etcd lost it
/// (it lapsed while etcd was out of reach).
async fn keep_lease(
    mut client: Client,
    lease: Arc<AtomicI64>,
    config: EtcdConfig,
    stop: CancellationToken,
) {
    let (ttl, timeout, observer) = (config.lease_ttl, config.timeout, &config.observer);
    let every = (ttl / 3).max(Duration::from_millis(500));
    let mut pause = Duration::from_millis(50);
    loop {
        let id = lease.load(Ordering::Acquire);
        let kept = async {
            let (mut keeper, mut answers) = bounded(
                timeout,
                "keeping the lease alive",
                client.lease_keep_alive(id),
            )
            .await?;
            loop {
                let answer = timed(observer, "lease_keepalive", async {
                    bounded(timeout, "keeping the lease alive", keeper.keep_alive()).await?;
                    bounded(timeout, "keeping the lease alive", answers.message()).await
                })
                .await?;
                if answer.is_none_or(|a| a.ttl() <= 0) {
                    return Err(StoreError::Unavailable(format!("lease {id:x} lapsed")));
                }
                tokio::time::sleep(every).await;
                // The writer replaced it (a failed lock attempt's lease):
                // the old one is left to lapse, the new one kept alive.
                if lease.load(Ordering::Acquire) != id {
                    return Ok(());
                }
            }
        };
        let failure: StoreError = tokio::select! {
            () = stop.cancelled() => return,
            kept = kept => match kept {
                Ok(()) => continue,
                Err(e) => e,
            },
        };
        tracing::warn!(error = %failure, "etcd: the write lock's lease");
        // A lease that lapsed is gone for good: take a new one.
        let alive = bounded(
            timeout,
            "reading the lease",
            client.lease_time_to_live(id, None),
        )
        .await
        .map(|t| t.ttl() > 0);
        if let Ok(false) = alive {
            match timed(
                observer,
                "lease_grant",
                bounded(
                    timeout,
                    "granting a lease",
                    client.lease_grant(lease_seconds(ttl), None),
                ),
            )
            .await
            {
                Ok(granted) => {
                    tracing::warn!(old = id, new = granted.id(), "etcd: took a new lease");
                    // Unless the writer replaced it meanwhile.
                    let _ = lease.compare_exchange(
                        id,
                        granted.id(),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                Err(e) => tracing::warn!(error = %e, "etcd: no new lease yet"),
            }
        }
        if sleep_or_stop(&stop, &mut pause).await {
            return;
        }
    }
}

/// The store revision etcd has committed (`m/revision`), read
/// linearizably: it needs a quorum (a serializable read would be answered
/// by a member cut off from the others).
async fn read_cluster_revision(
    client: &mut Client,
    revision_key: &[u8],
    timeout: Duration,
    observer: &Option<Arc<dyn CommitObserver>>,
) -> Result<u64, StoreError> {
    let resp = timed(
        observer,
        "range",
        bounded(
            timeout,
            "reading m/revision with a quorum",
            client.get(revision_key.to_vec(), None),
        ),
    )
    .await?;
    resp.kvs()
        .first()
        .map_or(Ok(0), |kv| codec::decode_u64(kv.value()))
}

/// Probes etcd's quorum every [`PROBE_EVERY`] with a linearizable read of
/// `m/revision` until `stop`: `quorum` says whether the last probe
/// succeeded (gRPC health follows it), `cluster_revision` keeps the newest
/// revision read. Logs each change once, with its reason.
async fn probe_quorum(
    mut client: Client,
    revision_key: Vec<u8>,
    config: EtcdConfig,
    quorum: watch::Sender<bool>,
    cluster_revision: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let timeout = config.timeout.min(PROBE_TIMEOUT);
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_at: Option<Instant> = None;
    loop {
        let probed = tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => tokio::select! {
                () = stop.cancelled() => return,
                probed = read_cluster_revision(&mut client, &revision_key, timeout, &config.observer) => probed,
            },
        };
        match probed {
            Ok(revision) => {
                cluster_revision.fetch_max(revision, Ordering::AcqRel);
                if let Some(since) = lost_at.take() {
                    tracing::info!(
                        revision,
                        unavailable_for = ?since.elapsed(),
                        "etcd quorum reachable again: health SERVING"
                    );
                    quorum.send_replace(true);
                }
            }
            Err(e) => {
                if lost_at.is_none() {
                    lost_at = Some(Instant::now());
                    tracing::warn!(
                        error = %e,
                        probe_timeout = ?timeout,
                        "etcd quorum unreachable: health NOT_SERVING until a probe succeeds; \
                         writes fail, reads answer from the local view"
                    );
                    quorum.send_replace(false);
                }
            }
        }
    }
}

impl Store for EtcdStore {
    fn app(&self, id: &AppId) -> Result<Option<Arc<App>>, StoreError> {
        Ok(self.shared.read()?.apps.get(id).cloned())
    }

    fn apps(&self, after: Option<&AppId>, limit: usize) -> Result<Vec<Arc<App>>, StoreError> {
        let replica = self.shared.read()?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(replica
            .apps
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, a)| a.clone())
            .collect())
    }

    fn decisions_after(
        &self,
        after: Option<&DecisionRow>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        let start = match after {
            Some(row) => Bound::Excluded(codec::decision_key(&row.app, &row.user, row.scope)),
            None => Bound::Included(codec::DECISION_PREFIX.to_vec()),
        };
        let replica = self.shared.read()?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for (key, value) in replica
            .kv
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
        {
            if !key.starts_with(codec::DECISION_PREFIX) {
                break;
            }
            let (app, user, scope) = codec::split_decision_key(key)?;
            let decision = codec::decode_decision(value)?;
            out.push(DecisionRow {
                app,
                user,
                scope,
                state: decision.state,
                lifetime: decision.lifetime,
            });
        }
        Ok(out)
    }

    fn subject(
        &self,
        app: &AppId,
        user: &UserId,
        query: &StateQuery,
    ) -> Result<SubjectState, StoreError> {
        sled_read::subject(&*self.shared.read()?, app, user, query)
    }

    fn user_apps(
        &self,
        user: &UserId,
        after: Option<&AppId>,
        limit: usize,
    ) -> Result<Vec<AppId>, StoreError> {
        let prefix = sled_users::user_prefix(user);
        let start = match after {
            // The first key after `<prefix><after>`.
            Some(app) => [&sled_users::user_app_key(user, app)[..], b"\0"].concat(),
            None => prefix.clone(),
        };
        let replica = self.shared.read()?;
        replica
            .kv
            .range::<Vec<u8>, _>((Bound::Included(start), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(&prefix))
            .take(limit)
            .map(|(key, _)| sled_users::split_user_app_key(key).map(|(_, app)| app))
            .collect()
    }

    fn finish_erasures(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            if !self.erasures_pending()? {
                return Ok(0);
            }
            self.scrub_erasures(false).await
        })
    }

    fn audit(&self, app: &AppId, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let replica = self.shared.read()?;
        let prefix = codec::audit_index_prefix(app);
        let start = match query.after_seq {
            Some(seq) => codec::audit_index_key(app, seq.saturating_add(1)),
            None => prefix.clone(),
        };
        let mut page = Vec::new();
        let mut scanned = 0usize;
        // Filters may skip many records: bound the work of one page too.
        let budget = query.limit.saturating_mul(16).max(1024);
        for key in replica.kv.range(start..).map(|(k, _)| k) {
            if !key.starts_with(&prefix) {
                return Ok((page, None));
            }
            let seq = codec::decode_u64(&key[prefix.len()..])?;
            scanned += 1;
            if let Some(raw) = replica.kv.get(codec::audit_key(seq).as_slice()) {
                let record = codec::decode_audit(raw)?;
                if query.matches(&record) {
                    page.push(record);
                }
            }
            if page.len() >= query.limit || scanned >= budget {
                return Ok((page, Some(seq)));
            }
        }
        Ok((page, None))
    }

    fn trim_audit(&self, retention: Retention) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.trim_audit_as(retention, false))
    }

    fn submit_detached(&self, job: Job) -> Result<(), StoreError> {
        let (reply, _) = oneshot::channel();
        self.sender()?
            .try_send(Request::Write {
                job,
                reply,
                duty: false,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Internal("the write queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })
    }

    fn next_timer(&self) -> Result<Option<u64>, StoreError> {
        let replica = self.shared.read()?;
        let first = replica.scan_prefix(codec::TIMER_PREFIX).next();
        first
            .map(|(key, _)| codec::split_timer_key(key).map(|(at, _)| at))
            .transpose()
    }

    fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    fn wait_for_revision(
        &self,
        revision: u64,
        within: Duration,
    ) -> BoxFuture<'_, Result<u64, RevisionWait>> {
        Box::pin(async move {
            let view = self.revision();
            if revision <= view {
                return Ok(view);
            }
            let started = Instant::now();
            let deadline = tokio::time::Instant::now() + within;
            // Whether the revision exists at all: only a quorum can say.
            let key = [self.config.prefix.as_bytes(), b"data/", codec::REVISION_KEY].concat();
            let check = self.config.timeout.min(within);
            let newest =
                read_cluster_revision(&mut self.client.clone(), &key, check, &self.config.observer)
                    .await
                    .map_err(|error| RevisionWait::Unreachable {
                        wanted: revision,
                        view: self.revision(),
                        error,
                    })?;
            self.cluster_revision.fetch_max(newest, Ordering::AcqRel);
            if revision > newest {
                return Err(RevisionWait::Ahead {
                    wanted: revision,
                    newest,
                });
            }
            // Subscribed before looking: no change is missed in between.
            let mut applied = self.shared.applied.subscribe();
            loop {
                let view = self.revision();
                if view >= revision {
                    return Ok(view);
                }
                match tokio::time::timeout_at(deadline, applied.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        return Err(RevisionWait::Unreachable {
                            wanted: revision,
                            view,
                            error: StoreError::Closed,
                        })
                    }
                    Err(_) => {
                        return Err(RevisionWait::Behind {
                            wanted: revision,
                            view: self.revision(),
                            waited: started.elapsed(),
                        })
                    }
                }
            }
        })
    }

    fn quorum(&self) -> Option<watch::Receiver<bool>> {
        Some(self.quorum.subscribe())
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.shared.read()?.events_after(after, limit)
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.shared.published.subscribe()
    }

    fn compacted_through(&self) -> u64 {
        self.shared.compacted_through.load(Ordering::Acquire)
    }

    fn stats(&self) -> StoreStats {
        let (events, apps) = self
            .shared
            .read()
            .map_or((0, 0), |r| (r.events, r.apps.len() as u64));
        let revision = self.revision();
        StoreStats {
            revision,
            // The view may be ahead of the last probe, never behind etcd's
            // for long: the larger of the two is the newest known.
            cluster_revision: self.cluster_revision.load(Ordering::Acquire).max(revision),
            compacted_through: self.compacted_through(),
            events,
            apps,
            // The daemon keeps nothing on its own disk in etcd mode.
            size_on_disk: 0,
        }
    }

    fn compact(&self, retention: Retention) -> BoxFuture<'_, Result<Compaction, StoreError>> {
        Box::pin(self.compact_as(retention, false))
    }

    fn verify(&self) -> BoxFuture<'_, Result<Verification, StoreError>> {
        Box::pin(async move { verify(&*self.shared.read()?) })
    }

    fn submit(&self, job: Job) -> BoxFuture<'_, Result<Committed, TxnError>> {
        Box::pin(self.submit_as(job, false))
    }

    fn recover(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        // Nothing to reopen: the etcd client reconnects by itself, and a
        // failed commit leaves nothing behind on this daemon. An erasure
        // whose scrub failed with the write resumes here: a cluster-wide
        // duty, so only on the daemon that holds the duties.
        Box::pin(async move {
            if self.duties.fence().is_some() && self.erasures_pending()? {
                let renamed = self.scrub_erasures(true).await?;
                tracing::info!(renamed, "pending erasure finished on recovery");
            }
            Ok(false)
        })
    }

    fn duties(&self) -> tokio::sync::watch::Receiver<bool> {
        self.duties.subscribe()
    }

    fn submit_duty(&self, job: Job) -> BoxFuture<'_, Result<Committed, TxnError>> {
        Box::pin(self.submit_as(job, true))
    }

    fn compact_duty(&self, retention: Retention) -> BoxFuture<'_, Result<Compaction, StoreError>> {
        Box::pin(self.compact_as(retention, true))
    }

    fn trim_audit_duty(&self, retention: Retention) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.trim_audit_as(retention, true))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let writer = self
                .writer
                .lock()
                .map_err(|_| StoreError::Internal("writer handle poisoned".into()))?
                .take();
            if let Some((tx, handle)) = writer {
                // The writer ends once the queued jobs are committed.
                drop(tx);
                handle
                    .await
                    .map_err(|e| StoreError::Internal(format!("joining the writer: {e}")))?;
            }
            self.stop.cancel();
            let tasks = std::mem::take(
                &mut *self
                    .tasks
                    .lock()
                    .map_err(|_| StoreError::Internal("task handles poisoned".into()))?,
            );
            for task in tasks {
                let _ = task.await;
            }
            if let Some(snapshots) = &self.snapshots {
                match write_snapshot(self.shared.clone(), snapshots.clone()).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd: the view's snapshot not written at close")
                    }
                }
            }
            let mut client = self.client.clone();
            for lease in [&self.lease, &self.duty_lease] {
                let lease = lease.load(Ordering::Acquire);
                let revoke = bounded(
                    self.config.timeout,
                    "revoking the lease",
                    client.lease_revoke(lease),
                );
                if let Err(e) = timed(&self.config.observer, "lease_revoke", revoke).await {
                    // It lapses by itself after its TTL.
                    tracing::warn!(error = %e, "etcd: lease not revoked");
                }
            }
            tracing::info!(revision = self.revision(), "etcd store closed");
            Ok(())
        })
    }
}

impl EtcdStore {
    async fn submit_as(&self, job: Job, duty: bool) -> Result<Committed, TxnError> {
        let tx = self.sender()?;
        let (reply, rx) = oneshot::channel();
        tx.send(Request::Write { job, reply, duty })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // The watcher and the lease keeper end with the store; the writer
        // ends when its queue's last sender (here) goes.
        self.stop.cancel();
    }
}

/// Plans trimming up to `limit` audit records that `retention` no longer
/// keeps (oldest first), with their index entries: the keys to delete, how
/// many records go, and whether nothing more is to trim.
fn trim_audit_plan(
    replica: &Replica,
    retention: Retention,
    now_ms: u64,
    limit: usize,
) -> Result<(Overlay, u64, bool), StoreError> {
    let last = replica.audit_seq;
    let cutoff = retention.age_cutoff(now_ms);
    let mut overlay = Overlay::new();
    let mut removed = 0u64;
    let mut done = true;
    for (key, value) in replica.scan_prefix(codec::AUDIT_PREFIX) {
        if removed as usize == limit {
            done = false;
            break;
        }
        let record = codec::decode_audit(value)?;
        let remaining = last.saturating_sub(record.seq) + 1;
        if !retention.drops(remaining, record.time_ms, cutoff) {
            break;
        }
        overlay.insert(key.clone(), None);
        overlay.insert(codec::audit_index_key(&record.entry.app, record.seq), None);
        removed += 1;
    }
    Ok((overlay, removed, done))
}

/// Plans trimming up to `limit` events that `retention` no longer keeps,
/// folding them into the checkpoint (`b/` keys), in one transaction with
/// the new horizon: what to write, what it did, and whether it is done.
fn compact_plan(
    replica: &Replica,
    retention: Retention,
    now_ms: u64,
    limit: usize,
) -> Result<(Overlay, Compaction, bool), StoreError> {
    let horizon = replica.compacted_through;
    // A pending erasure's scrub finds the user's checkpoint entries through
    // the user's retained events (between its bounded steps, too): folding
    // those into the checkpoint first would leave entries naming the user.
    if replica
        .scan_prefix(sled_users::ERASURE_PREFIX)
        .next()
        .is_some()
    {
        tracing::info!("compaction postponed: an erasure's scrub is pending");
        let unchanged = Compaction {
            removed: 0,
            compacted_through: horizon,
        };
        return Ok((Overlay::new(), unchanged, true));
    }
    let total = replica.events;
    let cutoff = retention.age_cutoff(now_ms);
    let mut base: BTreeMap<Vec<u8>, DecisionState> = BTreeMap::new();
    let mut removed: Vec<Vec<u8>> = Vec::new();
    let mut new_horizon = horizon;
    let mut done = true;
    for (seen, (key, value)) in replica.scan_prefix(codec::EVENT_PREFIX).enumerate() {
        if seen == limit {
            done = false;
            break;
        }
        let revision = codec::decode_u64(&key[codec::EVENT_PREFIX.len()..])?;
        if revision > horizon {
            let remaining = total - removed.len() as u64;
            let event = codec::decode_event(revision, value)?;
            if !retention.drops(remaining, event.time_ms, cutoff) {
                break;
            }
            let decision_key = codec::decision_key(&event.app, &event.user, event.scope);
            base.insert(codec::base_key_of(&decision_key), event.new);
            new_horizon = revision;
        }
        removed.push(key.clone());
    }
    let mut overlay = Overlay::new();
    if removed.is_empty() {
        return Ok((
            overlay,
            Compaction {
                removed: 0,
                compacted_through: horizon,
            },
            true,
        ));
    }
    for (key, state) in base {
        let value = match state {
            DecisionState::NotDetermined => None,
            s => Some(vec![codec::state_code(s)]),
        };
        overlay.insert(key, value);
    }
    overlay.insert(
        codec::COMPACTED_KEY.to_vec(),
        Some(codec::encode_u64(new_horizon).to_vec()),
    );
    let n = removed.len() as u64;
    for key in removed {
        overlay.insert(key, None);
    }
    Ok((
        overlay,
        Compaction {
            removed: n,
            compacted_through: new_horizon,
        },
        done,
    ))
}

/// Folds the retained log over the checkpoint and compares the result with
/// the stored decisions, on one consistent view; also checks that every
/// event starts from the state the previous one left.
fn verify(replica: &Replica) -> Result<Verification, StoreError> {
    let horizon = replica.compacted_through;
    let mut report = Verification {
        compacted_through: horizon,
        revision: replica.revision,
        ..Verification::default()
    };
    let note = |report: &mut Verification, m: String| {
        if report.mismatches.len() < MAX_MISMATCHES {
            report.mismatches.push(m);
        }
    };
    // Keyed by the shared tail `<app>\0<user>\0<scope>`.
    let mut folded: BTreeMap<Vec<u8>, DecisionState> = BTreeMap::new();
    for (key, value) in replica.scan_prefix(codec::BASE_PREFIX) {
        let state = value
            .first()
            .copied()
            .map(codec::state_from)
            .transpose()?
            .unwrap_or_default();
        folded.insert(key[codec::BASE_PREFIX.len()..].to_vec(), state);
    }
    let mut last = horizon;
    for e in replica.events_after(horizon, usize::MAX)? {
        report.retained_events += 1;
        let revision = e.revision;
        if revision <= last {
            note(
                &mut report,
                format!("event {revision} is out of order after {last}"),
            );
        }
        last = revision;
        let tail =
            codec::decision_key(&e.app, &e.user, e.scope)[codec::DECISION_PREFIX.len()..].to_vec();
        let before = folded.get(&tail).copied().unwrap_or_default();
        if before != e.old {
            note(
                &mut report,
                format!(
                    "event {revision} ({} {} {}) starts from {:?} but the log left {before:?}",
                    e.app, e.user, e.scope, e.old
                ),
            );
        }
        match e.new {
            DecisionState::NotDetermined => folded.remove(&tail),
            s => folded.insert(tail, s),
        };
    }
    if last > report.revision {
        let revision = report.revision;
        note(
            &mut report,
            format!("event {last} is beyond the store revision {revision}"),
        );
    }
    for (key, value) in replica.scan_prefix(codec::DECISION_PREFIX) {
        report.decisions += 1;
        let stored = codec::decode_decision(value)?.state;
        let tail = &key[codec::DECISION_PREFIX.len()..];
        match folded.remove(tail) {
            Some(f) if f == stored => {}
            other => note(
                &mut report,
                format!(
                    "{} is {stored:?} but the log folds to {:?}",
                    describe(tail),
                    other.unwrap_or_default()
                ),
            ),
        }
    }
    for (tail, state) in folded {
        note(
            &mut report,
            format!(
                "{} is not stored but the log folds to {state:?}",
                describe(&tail)
            ),
        );
    }
    verify_index(replica, |m| note(&mut report, m))?;
    Ok(report)
}

/// One transaction of an erasure's scrub.
struct ScrubStep {
    overlay: Overlay,
    renamed: u64,
    /// Whether an erasure is still pending after this step.
    more: bool,
}

/// Plans the next transaction of the first pending erasure's scrub on the
/// current view: at most `max_ops` keys and about `max_bytes`. The work
/// comes in units, in this order: for each (app, scope) of the user's
/// retained events up to the erasure, its checkpoint entry and those
/// events (so that checkpoint + log keeps folding to the stored decisions
/// between steps, unless one unit alone exceeds a transaction); then each
/// audit record up to the erasure's sequence number; then each timer whose
/// key names the user (stale ones; the erasure cleared the live ones). The
/// marker is removed in the step that takes the last unit. A step only
/// rewrites what still names the user, so a scrub interrupted by a crash or
/// a lost lock is resumed by planning again, on any daemon.
fn scrub_plan(
    replica: &Replica,
    max_ops: usize,
    max_bytes: usize,
) -> Result<ScrubStep, StoreError> {
    let mut markers = replica.scan_prefix(sled_users::ERASURE_PREFIX);
    let Some((key, value)) = markers.next() else {
        return Ok(ScrubStep {
            overlay: Overlay::new(),
            renamed: 0,
            more: false,
        });
    };
    let others = markers.next().is_some();
    let m = sled_users::decode_marker(key, value)?;
    type Unit = Vec<(Vec<u8>, Option<Vec<u8>>)>;
    let mut units: Vec<Unit> = Vec::new();
    // Retained events up to the erasure that name the user, by (app, scope).
    let mut pairs: BTreeMap<(AppId, crate::domain::Scope), Unit> = BTreeMap::new();
    let first = replica.compacted_through.saturating_add(1);
    if first <= m.revision {
        let range = (
            Bound::Included(codec::event_key(first).to_vec()),
            Bound::Included(codec::event_key(m.revision).to_vec()),
        );
        for (key, value) in replica.kv.range::<Vec<u8>, _>(range) {
            let revision = codec::decode_u64(&key[codec::EVENT_PREFIX.len()..])?;
            let mut event = codec::decode_event(revision, value)?;
            if event.user == m.user {
                let unit = pairs.entry((event.app.clone(), event.scope)).or_default();
                event.user = m.pseudonym.clone();
                unit.push((key.clone(), Some(codec::encode_event(&event))));
            }
        }
    }
    for ((app, scope), events) in pairs {
        let mut unit = Vec::new();
        let from = codec::base_key_of(&codec::decision_key(&app, &m.user, scope));
        if let Some(state) = replica.kv.get(&from) {
            let to = codec::base_key_of(&codec::decision_key(&app, &m.pseudonym, scope));
            unit.push((to, Some(state.clone())));
            unit.push((from, None));
        }
        // A unit larger than a transaction is split, checkpoint first.
        for chunk in unit
            .into_iter()
            .chain(events)
            .collect::<Vec<_>>()
            .chunks(max_ops.max(2))
        {
            units.push(chunk.to_vec());
        }
    }
    let audit = (
        Bound::Included(codec::audit_key(0).to_vec()),
        Bound::Included(codec::audit_key(m.audit_seq).to_vec()),
    );
    for (key, value) in replica.kv.range::<Vec<u8>, _>(audit) {
        let mut record = codec::decode_audit(value)?;
        if record.entry.user.as_ref() == Some(&m.user) {
            record.entry.user = Some(m.pseudonym.clone());
            units.push(vec![(key.clone(), Some(codec::encode_audit(&record)))]);
        }
    }
    for (key, _) in replica.scan_prefix(codec::TIMER_PREFIX) {
        let (_, decision) = codec::split_timer_key(key)?;
        if codec::split_decision_key(&decision)?.1 == m.user {
            units.push(vec![(key.clone(), None)]);
        }
    }
    let mut overlay = Overlay::new();
    let (mut ops, mut bytes, mut renamed) = (0usize, 0usize, 0u64);
    let mut all = true;
    for unit in units {
        let unit_bytes: usize = unit
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum();
        if !overlay.is_empty() && (ops + unit.len() > max_ops || bytes + unit_bytes > max_bytes) {
            all = false;
            break;
        }
        ops += unit.len();
        bytes += unit_bytes;
        for (key, value) in unit {
            // A checkpoint move counts once (its delete is not a record).
            if value.is_some() || key.starts_with(codec::TIMER_PREFIX) {
                renamed += 1;
            }
            overlay.insert(key, value);
        }
    }
    if all {
        overlay.insert(sled_users::marker_key(&m.pseudonym), None);
    }
    Ok(ScrubStep {
        overlay,
        renamed,
        more: !all || others,
    })
}

/// The per-user index as the stored decisions, privacy answers and
/// anti-nag states imply it (the keys it should hold).
fn derived_index(replica: &Replica) -> Result<std::collections::BTreeSet<Vec<u8>>, StoreError> {
    let mut pairs = std::collections::BTreeSet::new();
    for prefix in [
        codec::DECISION_PREFIX,
        codec::NAG_PREFIX,
        codec::PRIVACY_PREFIX,
    ] {
        for (key, _) in replica.scan_prefix(prefix) {
            // `<app>\0<user>` then, for decisions and anti-nag, `\0<scope>`.
            let mut parts = key[prefix.len()..].splitn(3, |b| *b == 0);
            let (Some(app), Some(user)) = (parts.next(), parts.next()) else {
                return Err(StoreError::Corrupt(format!(
                    "bad key {:?}",
                    String::from_utf8_lossy(key)
                )));
            };
            pairs.insert([sled_users::USER_INDEX_PREFIX, user, b"\0", app].concat());
        }
    }
    Ok(pairs)
}

/// Plans at most `max_ops` index keys that the stored state implies but the
/// index lacks (or the reverse); when that is all of them, also records
/// layout [`ETCD_FORMAT`]. Returns the keys, how many, and whether done.
fn index_build_plan(replica: &Replica, max_ops: usize) -> Result<(Overlay, u64, bool), StoreError> {
    let mut derived = derived_index(replica)?;
    let mut overlay = Overlay::new();
    for (key, _) in replica.scan_prefix(sled_users::USER_INDEX_PREFIX) {
        if !derived.remove(key) {
            overlay.insert(key.clone(), None);
        }
    }
    for key in derived {
        overlay.insert(key, Some(Vec::new()));
    }
    let total = overlay.len();
    let mut overlay: Overlay = overlay.into_iter().take(max_ops.max(1)).collect();
    let n = overlay.len() as u64;
    let done = overlay.len() == total;
    if done {
        overlay.insert(
            ETCD_FORMAT_KEY.to_vec(),
            Some(codec::encode_u64(ETCD_FORMAT).to_vec()),
        );
    }
    Ok((overlay, n, done))
}

/// Compares the per-user index with the state it follows, both ways.
fn verify_index(replica: &Replica, mut note: impl FnMut(String)) -> Result<(), StoreError> {
    let mut derived = derived_index(replica)?;
    for (key, _) in replica.scan_prefix(sled_users::USER_INDEX_PREFIX) {
        if !derived.remove(key) {
            let (user, app) = sled_users::split_user_app_key(key)?;
            note(format!(
                "user index names {user} in {app}, but the user has no stored state there"
            ));
        }
    }
    for key in derived {
        let (user, app) = sled_users::split_user_app_key(&key)?;
        note(format!(
            "{user} has stored state in {app}, but the user index lacks it"
        ));
    }
    Ok(())
}

fn describe(tail: &[u8]) -> String {
    String::from_utf8_lossy(tail).replace('\0', " ")
}

#[cfg(test)]
mod contract_tests {
    use std::sync::{atomic::Ordering, Arc};

    use super::{codec, EtcdConfig, EtcdStore, ETCD_FORMAT_KEY};
    use crate::{
        clock::SystemClock,
        store::{
            contract::{store_contract_tests, Backend},
            etcd_cluster::shared_endpoints,
            Store, StoreError, TxnError,
        },
    };

    /// Stores under one key prefix per backend, a sub-prefix per name.
    struct Etcd(String);

    impl Etcd {
        fn new() -> Self {
            let mut id = [0u8; 8];
            getrandom::getrandom(&mut id).expect("random bytes");
            Self(format!("/consentd-test/{}/", hex::encode(id)))
        }
    }

    impl Backend for Etcd {
        fn open(&self, name: &str) -> Arc<dyn Store> {
            self.open_lagging(name, std::time::Duration::ZERO)
        }
    }

    impl Etcd {
        /// A store whose view applies each watch response `lag` late.
        fn open_lagging(&self, name: &str, lag: std::time::Duration) -> Arc<dyn Store> {
            self.open_with(name, lag, 10_000)
        }

        /// A store whose config `tweak` changed.
        fn open_tweaked(&self, name: &str, tweak: impl FnOnce(&mut EtcdConfig)) -> Arc<EtcdStore> {
            let mut config = EtcdConfig::new(
                shared_endpoints().to_vec(),
                format!("{}{name}/", self.0),
                SystemClock::shared(),
            );
            config.max_txn_ops = 10_000;
            tweak(&mut config);
            let store = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(EtcdStore::open(&config))
            })
            .expect("the etcd store opens");
            Arc::new(store)
        }

        /// A store whose transactions hold at most `max_txn_ops` keys.
        fn open_with(
            &self,
            name: &str,
            lag: std::time::Duration,
            max_txn_ops: usize,
        ) -> Arc<EtcdStore> {
            let mut config = EtcdConfig::new(
                shared_endpoints().to_vec(),
                format!("{}{name}/", self.0),
                SystemClock::shared(),
            );
            // The test cluster runs with --max-txn-ops 10000.
            config.max_txn_ops = max_txn_ops;
            config.watch_delay = lag;
            let store = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(EtcdStore::open(&config))
            })
            .expect("the etcd store opens");
            Arc::new(store)
        }
    }

    store_contract_tests!(
        ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)",
        Etcd::new()
    );

    /// Two daemons' stores on one prefix flip one decision at once: every
    /// flip reads the state the previous one (from either daemon) left, the
    /// log is one gapless chain, both views end equal, and a subscriber on
    /// one daemon sees the other daemon's commits as contiguous groups.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_two_stores_share_one_log_without_lost_updates() {
        use crate::{
            domain::{AppId, Cause, Change, DecisionState, Scope, StateQuery, Subject, UserId},
            store::WriteSet,
        };
        let backend = Etcd::new();
        // b's view lags: b must catch up before its jobs read.
        let a = backend.open("shared");
        let b = backend.open_lagging("shared", std::time::Duration::from_millis(30));
        let mut on_b = b.subscribe();
        const FLIPS: u64 = 24;
        let flip = |store: Arc<dyn Store>| {
            tokio::spawn(async move {
                store
                    .submit(Box::new(|view| {
                        let u = Subject {
                            app: AppId::parse("wxshared").unwrap(),
                            user: UserId::parse("u").unwrap(),
                        };
                        let state = view.subject(&u.app, &u.user, &StateQuery::decisions())?;
                        let old = state
                            .records
                            .get(&Scope::Camera)
                            .map_or(DecisionState::NotDetermined, |d| d.state);
                        let new = match old {
                            DecisionState::Granted => DecisionState::Denied,
                            _ => DecisionState::Granted,
                        };
                        let change = Change {
                            scope: Scope::Camera,
                            old,
                            new,
                            cause: Cause::Popup,
                        };
                        Ok(WriteSet {
                            changes: vec![(u, change)],
                            ..WriteSet::default()
                        })
                    }))
                    .await
                    .expect("the flip commits")
            })
        };
        let flips: Vec<_> = (0..FLIPS)
            .map(|i| flip(if i % 2 == 0 { a.clone() } else { b.clone() }))
            .collect();
        let mut acknowledged = Vec::new();
        for f in flips {
            acknowledged.push(f.await.unwrap().revision);
        }
        acknowledged.sort_unstable();
        assert_eq!(
            acknowledged,
            (1..=FLIPS).collect::<Vec<_>>(),
            "one revision each"
        );

        // b has applied what a acknowledged once its revision got there.
        let mut last = 0;
        let mut seen = Vec::new();
        while last < FLIPS {
            let group = tokio::time::timeout(std::time::Duration::from_secs(10), on_b.recv())
                .await
                .expect("b publishes every commit")
                .expect("b's subscriber keeps up");
            assert_eq!(group.prev_revision, last, "contiguous on b");
            seen.extend(group.events.iter().map(|e| e.revision));
            last = group.revision;
        }
        assert_eq!(seen, (1..=FLIPS).collect::<Vec<_>>());
        let (log_a, log_b) = (
            a.events_after(0, 1000).unwrap(),
            b.events_after(0, 1000).unwrap(),
        );
        assert_eq!(log_a, log_b, "both views hold one log");
        let mut state = DecisionState::NotDetermined;
        for e in &log_a {
            assert_eq!(e.old, state, "each flip saw the one before: {e:?}");
            state = e.new;
        }
        for store in [&a, &b] {
            let v = store.verify().await.unwrap();
            assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
            assert_eq!(v.revision, FLIPS);
        }
        a.close().await.unwrap();
        b.close().await.unwrap();
    }

    /// Without a quorum (two of three members stopped) a write fails with
    /// UNAVAILABLE within its deadline and takes no revision, reads go on
    /// from the local view, and once the members run again writes resume
    /// where the log was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_no_quorum_fails_writes_keeps_reads_and_recovers() {
        use crate::{
            domain::{AppId, Cause, Change, DecisionState, Scope, StateQuery, Subject, UserId},
            store::{etcd_cluster::EtcdCluster, RevisionWait, StoreError, TxnError, WriteSet},
        };
        use std::time::{Duration, Instant};
        let mut cluster = tokio::task::block_in_place(|| EtcdCluster::start(3)).expect("cluster");
        let mut config = EtcdConfig::new(
            cluster.endpoints()[..1].to_vec(),
            "/quorum/",
            SystemClock::shared(),
        );
        config.timeout = Duration::from_secs(2);
        let store = EtcdStore::open(&config).await.expect("opens");
        let u = Subject {
            app: AppId::parse("wxq").unwrap(),
            user: UserId::parse("u").unwrap(),
        };
        let write = |old, new| {
            let u = u.clone();
            Box::new(move |_: &dyn crate::store::View| {
                let change = Change {
                    scope: Scope::Camera,
                    old,
                    new,
                    cause: Cause::Popup,
                };
                Ok(WriteSet {
                    changes: vec![(u, change)],
                    ..WriteSet::default()
                })
            })
        };
        let (n, g, d) = (
            DecisionState::NotDetermined,
            DecisionState::Granted,
            DecisionState::Denied,
        );
        assert_eq!(store.submit(write(n, g)).await.unwrap().revision, 1);

        cluster.pause(1);
        cluster.pause(2);
        let started = Instant::now();
        let failed = store.submit(write(g, d)).await;
        assert!(
            matches!(failed, Err(TxnError::Store(StoreError::Unavailable(_)))),
            "{failed:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "failed within its deadline: {:?}",
            started.elapsed()
        );
        let read = store
            .subject(&u.app, &u.user, &StateQuery::decisions())
            .expect("reads go on from the view");
        assert_eq!(read.records[&Scope::Camera].state, g);
        assert_eq!(store.revision(), 1);
        // Health follows the quorum probe.
        let mut quorum = store.quorum().expect("an etcd store follows its quorum");
        tokio::time::timeout(Duration::from_secs(8), quorum.wait_for(|up| !*up))
            .await
            .expect("the lost quorum is seen within seconds")
            .unwrap();
        // A token the view has is met without etcd; one above it cannot be
        // checked without a quorum.
        assert_eq!(
            store
                .wait_for_revision(1, Duration::from_secs(1))
                .await
                .unwrap(),
            1
        );
        match store.wait_for_revision(2, Duration::from_secs(1)).await {
            Err(RevisionWait::Unreachable {
                wanted: 2, view: 1, ..
            }) => {}
            other => panic!("no quorum: the token cannot be checked: {other:?}"),
        }

        cluster.resume(1);
        cluster.resume(2);
        tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(20)))
            .expect("healthy again");
        tokio::time::timeout(Duration::from_secs(10), quorum.wait_for(|up| *up))
            .await
            .expect("the quorum is seen back within seconds")
            .unwrap();
        // The client may take a moment to find the leader again.
        let deadline = Instant::now() + Duration::from_secs(20);
        let next = loop {
            match store.submit(write(g, d)).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "not yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("writes did not resume: {e}"),
            }
        };
        assert_eq!(next.revision, 2, "the failed write took no revision");
        let v = store.verify().await.unwrap();
        assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
        assert_eq!(store.events_after(0, 10).unwrap().len(), 2);
        store.close().await.unwrap();
    }

    /// A consistency token sent to a daemon whose view lags (its watch
    /// applies each response late) waits until that view has the revision,
    /// then is met; a short bound is `Behind` naming both revisions; the
    /// daemon's cluster revision shows the lag meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_a_consistency_token_waits_for_a_lagging_view() {
        use crate::{
            domain::{AppId, Cause, Change, DecisionState, Scope, StateQuery, Subject, UserId},
            store::{RevisionWait, WriteSet},
        };
        use std::time::{Duration, Instant};
        let backend = Etcd::new();
        let a = backend.open("tokens");
        let b = backend.open_lagging("tokens", Duration::from_millis(700));
        let u = Subject {
            app: AppId::parse("wxtok").unwrap(),
            user: UserId::parse("u").unwrap(),
        };
        let grant = |scope| {
            let u = u.clone();
            Box::new(move |_: &dyn crate::store::View| {
                let change = Change {
                    scope,
                    old: DecisionState::NotDetermined,
                    new: DecisionState::Granted,
                    cause: Cause::Popup,
                };
                Ok(WriteSet {
                    changes: vec![(u, change)],
                    ..WriteSet::default()
                })
            })
        };
        let first = a.submit(grant(Scope::Camera)).await.unwrap().revision;
        assert!(
            b.revision() < first,
            "b's view lags: the wait below is real"
        );
        match b.wait_for_revision(first, Duration::from_millis(50)).await {
            Err(RevisionWait::Behind { wanted, view, .. }) => {
                assert_eq!(wanted, first);
                assert!(view < first, "{view}");
            }
            other => panic!("a short bound ends Behind: {other:?}"),
        }
        let stats = b.stats();
        assert!(
            stats.cluster_revision >= first && stats.revision < first,
            "the lag is visible: {stats:?}"
        );
        let second = a.submit(grant(Scope::Record)).await.unwrap().revision;
        let started = Instant::now();
        let view = b
            .wait_for_revision(second, Duration::from_secs(10))
            .await
            .expect("the view gets there");
        assert!(view >= second, "{view} < {second}");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "it waited: {:?}",
            started.elapsed()
        );
        // Once met, reads on b reflect it.
        let read = b
            .subject(&u.app, &u.user, &StateQuery::decisions())
            .unwrap();
        assert_eq!(read.records[&Scope::Record].state, DecisionState::Granted);
        match b
            .wait_for_revision(second + 5, Duration::from_secs(1))
            .await
        {
            Err(RevisionWait::Ahead { wanted, newest }) => {
                assert_eq!((wanted, newest), (second + 5, second));
            }
            other => panic!("beyond etcd's m/revision: {other:?}"),
        }
        a.close().await.unwrap();
        b.close().await.unwrap();
    }

    /// A daemon that died holding the write lock (its lease no longer kept
    /// alive) holds up the others only until its lease lapses; the lapsed
    /// holder's key cannot be used to write any more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_a_dead_lock_holder_stalls_writes_only_until_its_lease_lapses() {
        use std::time::{Duration, Instant};
        let backend = Etcd::new();
        let prefix = format!("{}dead/", backend.0);
        let mut dead = etcd_client::Client::connect(shared_endpoints(), None)
            .await
            .unwrap();
        let lease = dead.lease_grant(2, None).await.unwrap().id();
        let held = dead
            .lock(
                format!("{prefix}lock"),
                Some(etcd_client::LockOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        // Nobody keeps that lease alive: the holder is dead.
        let store = backend.open("dead");
        let started = Instant::now();
        let committed = store
            .submit(Box::new(|_| {
                Ok(crate::store::WriteSet {
                    privacy: Some((
                        crate::domain::Subject {
                            app: crate::domain::AppId::parse("wxdead").unwrap(),
                            user: crate::domain::UserId::parse("u").unwrap(),
                        },
                        None,
                    )),
                    ..crate::store::WriteSet::default()
                })
            }))
            .await
            .expect("writes once the dead holder's lease lapsed");
        let waited = started.elapsed();
        assert_eq!(committed.revision, 1);
        assert!(
            waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
            "waited for the lease (2 s), not longer: {waited:?}"
        );
        // The lapsed holder's fence is gone with its key.
        let fenced = etcd_client::Txn::new()
            .when([etcd_client::Compare::create_revision(
                held.key().to_vec(),
                etcd_client::CompareOp::Greater,
                0,
            )])
            .and_then([etcd_client::TxnOp::put(
                format!("{prefix}data/x"),
                "stale",
                None,
            )]);
        assert!(!dead.txn(fenced).await.unwrap().succeeded());
        store.close().await.unwrap();
    }

    /// An erasure's scrub in transactions of at most 24 keys, interrupted
    /// after its first one (the daemon "dies"): the marker is still there
    /// and the log partly renamed; another daemon opening the prefix
    /// finishes it; a third daemon that watched throughout picks every
    /// rewrite up through its watch, its Watch subscribers get no event
    /// twice, and Verify (log, checkpoint, index) holds on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_an_interrupted_scrub_resumes_on_another_daemon_and_reaches_every_view() {
        use crate::{
            domain::{
                AppId, AuditAction, AuditEntry, AuditQuery, Cause, Change, DecisionState, Scope,
                Subject, UserId,
            },
            store::{Erasure, Retention, WriteSet},
        };
        let backend = Etcd::new();
        let a = backend.open_with("scrub", std::time::Duration::ZERO, 24);
        let watcher = backend.open_with("scrub", std::time::Duration::from_millis(20), 10_000);
        let mut on_watcher = watcher.subscribe();
        let subject = |app: &str, user: &str| Subject {
            app: AppId::parse(app).unwrap(),
            user: UserId::parse(user).unwrap(),
        };
        let (n, g) = (DecisionState::NotDetermined, DecisionState::Granted);
        let change = |scope, old, new, cause| Change {
            scope,
            old,
            new,
            cause,
        };
        let apps = ["wxa", "wxb", "wxc", "wxd"];
        let scopes = [Scope::Camera, Scope::Record];
        for app in apps {
            for scope in scopes {
                let entry = move |user: &str| AuditEntry {
                    app: AppId::parse(app).unwrap(),
                    user: Some(UserId::parse(user).unwrap()),
                    scope: Some(scope),
                    action: AuditAction::SettingsChanged,
                    principal: "p".into(),
                    client: None,
                };
                a.submit(Box::new(move |_| {
                    Ok(WriteSet {
                        changes: vec![
                            (subject(app, "gone"), change(scope, n, g, Cause::Popup)),
                            (subject(app, "stays"), change(scope, n, g, Cause::Popup)),
                        ],
                        audit: vec![entry("gone"), entry("stays")],
                        ..WriteSet::default()
                    })
                }))
                .await
                .unwrap();
            }
        }
        // The first 4 events go into the checkpoint, which then names the user.
        a.compact(Retention {
            max_events: Some(12),
            max_age: None,
        })
        .await
        .unwrap();
        let pseudonym = UserId::parse("erased-00aa").unwrap();
        let erasure = Erasure {
            user: UserId::parse("gone").unwrap(),
            pseudonym: pseudonym.clone(),
        };
        let erased = a
            .submit(Box::new(move |_| {
                let changes = apps
                    .iter()
                    .flat_map(|app| {
                        scopes.map(|scope| {
                            (subject(app, "gone"), change(scope, g, n, Cause::UserErased))
                        })
                    })
                    .collect();
                Ok(WriteSet {
                    changes,
                    erasure: Some(erasure),
                    ..WriteSet::default()
                })
            }))
            .await
            .unwrap();
        assert_eq!(erased.events.len(), 8);
        assert!(a
            .user_apps(&UserId::parse("gone").unwrap(), None, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            a.user_apps(&UserId::parse("stays").unwrap(), None, 10)
                .unwrap()
                .len(),
            4
        );

        // One transaction of the scrub, then the daemon is gone.
        let (renamed, more) = a.scrub_step(10, false).await.unwrap();
        assert!(renamed > 0 && more, "{renamed} {more}");
        let named = |store: &EtcdStore| {
            store
                .events_after(0, usize::MAX)
                .unwrap()
                .iter()
                .filter(|e| e.user.as_str() == "gone")
                .count()
        };
        let partly = named(&a);
        assert!(partly > 0 && partly < 14, "partly renamed: {partly} of 14");
        assert!(
            a.erasures_pending().unwrap(),
            "the marker stays until the end"
        );
        a.close().await.unwrap();
        drop(a);

        // Another daemon opens the prefix: the scrub finishes first.
        let b = backend.open("scrub");
        assert_eq!(b.finish_erasures().await.unwrap(), 0, "nothing pending");
        let audit = |store: &dyn Store, app: &str| {
            store
                .audit(
                    &AppId::parse(app).unwrap(),
                    &AuditQuery {
                        limit: 100,
                        ..AuditQuery::default()
                    },
                )
                .unwrap()
                .0
        };
        for store in [&*b, &*watcher as &dyn Store] {
            // The watcher's view applies each rewrite through its watch.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while store
                .events_after(0, usize::MAX)
                .unwrap()
                .iter()
                .any(|e| e.user.as_str() == "gone")
                || watcher.erasures_pending().unwrap()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the view never got the scrub"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let events = store
                .events_after(store.compacted_through(), usize::MAX)
                .unwrap();
            assert_eq!(events.len(), 12 + 8, "retained: 12 kept, 8 revocations");
            assert_eq!(events.iter().filter(|e| e.user == pseudonym).count(), 6 + 8);
            for app in apps {
                let records = audit(store, app);
                assert_eq!(records.len(), 4);
                assert!(records
                    .iter()
                    .all(|r| r.entry.user.as_ref().map(UserId::as_str) != Some("gone")));
                assert_eq!(
                    records
                        .iter()
                        .filter(|r| r.entry.user.as_ref() == Some(&pseudonym))
                        .count(),
                    2
                );
            }
            let v = store.verify().await.unwrap();
            assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
        }
        assert_eq!(named(&watcher), 0);
        // The watcher's subscribers saw each revision once, the rewrites never.
        let mut seen = Vec::new();
        while let Ok(group) = on_watcher.try_recv() {
            seen.extend(group.events.iter().map(|e| e.revision));
        }
        assert_eq!(seen, (1..=watcher.revision()).collect::<Vec<_>>());
        b.close().await.unwrap();
        watcher.close().await.unwrap();
    }

    /// Verify covers the per-user index on etcd: an entry nothing backs and
    /// state the index lacks (keys changed behind consentd's back) are both
    /// reported, on a daemon that only saw them through its watch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_verify_reports_an_index_out_of_line_both_ways() {
        use crate::{
            domain::{AppId, Cause, Change, DecisionState, Scope, Subject, UserId},
            store::WriteSet,
        };
        let backend = Etcd::new();
        let store = backend.open_with("index", std::time::Duration::ZERO, 10_000);
        for app in ["wxa", "wxb"] {
            store
                .submit(Box::new(move |_| {
                    Ok(WriteSet {
                        changes: vec![(
                            Subject {
                                app: AppId::parse(app).unwrap(),
                                user: UserId::parse("u").unwrap(),
                            },
                            Change {
                                scope: Scope::Camera,
                                old: DecisionState::NotDetermined,
                                new: DecisionState::Granted,
                                cause: Cause::Popup,
                            },
                        )],
                        ..WriteSet::default()
                    })
                }))
                .await
                .unwrap();
        }
        assert!(store.verify().await.unwrap().mismatches.is_empty());
        let mut client = store.client.clone();
        let data = format!("{}data/", store.config.prefix);
        client
            .delete(format!("{data}u/u\0wxa"), None)
            .await
            .unwrap();
        client
            .put(format!("{data}u/ghost\0wxb"), "", None)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = store.verify().await.unwrap().mismatches.join("\n");
            if text.contains("ghost in wxb") && text.contains("u has stored state in wxa") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{text}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        store.close().await.unwrap();
    }

    /// A prefix written by layout 1 (no per-user index): the next daemon
    /// to open it builds the index in bounded fenced transactions and
    /// records layout 2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_opening_a_layout_1_prefix_builds_the_user_index() {
        use crate::{
            domain::{AppId, Cause, Change, DecisionState, Scope, Subject, UserId},
            store::WriteSet,
        };
        let backend = Etcd::new();
        let store = backend.open_with("layout1", std::time::Duration::ZERO, 10_000);
        let apps = ["wxa", "wxb", "wxc", "wxd", "wxe"];
        for app in apps {
            store
                .submit(Box::new(move |_| {
                    Ok(WriteSet {
                        changes: ["u", "v"]
                            .map(|user| {
                                (
                                    Subject {
                                        app: AppId::parse(app).unwrap(),
                                        user: UserId::parse(user).unwrap(),
                                    },
                                    Change {
                                        scope: Scope::Camera,
                                        old: DecisionState::NotDetermined,
                                        new: DecisionState::Granted,
                                        cause: Cause::Popup,
                                    },
                                )
                            })
                            .into(),
                        ..WriteSet::default()
                    })
                }))
                .await
                .unwrap();
        }
        // What a layout-1 daemon leaves: no `u/` keys, layout 1.
        let mut client = store.client.clone();
        let data = format!("{}data/", store.config.prefix);
        client
            .delete(
                format!("{data}u/"),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        client
            .put(
                format!("{data}m/etcd_format"),
                codec::encode_u64(1).to_vec(),
                None,
            )
            .await
            .unwrap();
        store.close().await.unwrap();
        // Small transactions: the build takes several.
        let store = backend.open_with("layout1", std::time::Duration::ZERO, 8);
        for user in ["u", "v"] {
            let listed: Vec<String> = store
                .user_apps(&UserId::parse(user).unwrap(), None, 100)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(listed, apps);
        }
        let v = store.verify().await.unwrap();
        assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
        let layout = store
            .shared
            .read()
            .unwrap()
            .kv
            .get(ETCD_FORMAT_KEY)
            .cloned();
        assert_eq!(layout, Some(codec::encode_u64(2).to_vec()));
        store.close().await.unwrap();
    }

    /// A write of one privacy answer for (wxduty, `user`): one revision.
    fn privacy_job(user: &str) -> crate::store::Job {
        let user = crate::domain::UserId::parse(user).unwrap();
        Box::new(move |_| {
            Ok(crate::store::WriteSet {
                privacy: Some((
                    crate::domain::Subject {
                        app: crate::domain::AppId::parse("wxduty").unwrap(),
                        user,
                    },
                    None,
                )),
                ..crate::store::WriteSet::default()
            })
        })
    }

    /// Waits (10 s at most) until `store` says it holds the duties (`held`).
    async fn duties_become(store: &EtcdStore, held: bool) {
        let mut duties = store.duties();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            duties.wait_for(|h| *h == held),
        )
        .await
        .unwrap_or_else(|_| panic!("the duties held = {held} in time"))
        .unwrap();
    }

    /// Fencing: daemon A holds the duties; its lease lapses (revoked here,
    /// as etcd does when a paused daemon stops keeping it alive) and B
    /// takes the duties over, while A, which looks at its holding only
    /// hourly in this test, still believes it holds them. A's duty commit
    /// is refused by etcd (the fence in its transaction), nothing is
    /// written, and A steps down; B's duty commits go through. A daemon
    /// that never held them runs no duty at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_a_stale_duty_holder_commits_no_duty() {
        use std::time::Duration;
        let backend = Etcd::new();
        let a = backend.open_tweaked("fence", |c| {
            c.lease_ttl = Duration::from_secs(2);
            c.duty_check = Duration::from_secs(3600);
        });
        duties_become(&a, true).await;
        a.submit_duty(privacy_job("u1"))
            .await
            .expect("the holder runs its duties");
        let b = backend.open_tweaked("fence", |c| {
            c.lease_ttl = Duration::from_secs(2);
            c.duty_check = Duration::from_millis(100);
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!*b.duties().borrow(), "one holder at a time");
        let refused = b.submit_duty(privacy_job("u2")).await;
        assert!(
            matches!(&refused, Err(TxnError::Store(StoreError::Unavailable(m))) if m.contains("does not hold")),
            "{refused:?}"
        );
        // A's duty lease lapses: etcd deletes its duty key; B takes over.
        let mut etcd = etcd_client::Client::connect(shared_endpoints(), None)
            .await
            .unwrap();
        etcd.lease_revoke(a.duty_lease.load(Ordering::Acquire))
            .await
            .unwrap();
        duties_become(&b, true).await;
        assert!(*a.duties().borrow(), "A has not looked yet");
        let before = a.revision();
        let stale = a.submit_duty(privacy_job("u3")).await;
        assert!(
            matches!(&stale, Err(TxnError::Store(StoreError::Unavailable(m))) if m.contains("no longer holds")),
            "a stale holder's duty commit is refused: {stale:?}"
        );
        assert!(!*a.duties().borrow(), "A stepped down");
        let committed = b.submit_duty(privacy_job("u4")).await.unwrap();
        assert_eq!(
            committed.revision,
            before + 1,
            "A's refused duty took no revision"
        );
        // Ordinary writes do not depend on the duties.
        a.submit(privacy_job("u5")).await.unwrap();
        a.close().await.unwrap();
        b.close().await.unwrap();
    }

    /// The Lock race: a lock attempt times out on the daemon (another
    /// holder keeps the lock), the daemon gives up, and etcd carries out
    /// the attempt later anyway (here replayed: the put of the lock key on
    /// the attempt's lease, which is what etcd's Lock does first). The
    /// daemon revoked that lease when it gave up, so etcd refuses the late
    /// key; had it only deleted its key (the old way), the late key would
    /// stay, held by a lease the daemon keeps alive, and every other
    /// daemon's writes would stall behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
    async fn etcd_a_lock_granted_after_the_writer_gave_up_stalls_nobody() {
        use std::time::Duration;
        let backend = Etcd::new();
        let prefix = format!("{}late/", backend.0);
        let mut etcd = etcd_client::Client::connect(shared_endpoints(), None)
            .await
            .unwrap();
        let holder_lease = etcd.lease_grant(60, None).await.unwrap().id();
        let held = etcd
            .lock(
                format!("{prefix}lock"),
                Some(etcd_client::LockOptions::new().with_lease(holder_lease)),
            )
            .await
            .unwrap();
        let timeout = Duration::from_secs(2);
        let late = backend.open_tweaked("late", |c| c.timeout = timeout);
        let attempt_lease = late.lease.load(Ordering::Acquire);
        let gave_up = late.submit(privacy_job("u1")).await;
        assert!(
            matches!(&gave_up, Err(TxnError::Store(StoreError::Unavailable(m))) if m.contains("write lock")),
            "{gave_up:?}"
        );
        // etcd carries the attempt out late: its key on the attempt's lease.
        let late_key = format!("{prefix}lock/{attempt_lease:x}");
        let put = etcd
            .put(
                late_key.clone(),
                "",
                Some(etcd_client::PutOptions::new().with_lease(attempt_lease)),
            )
            .await;
        assert!(put.is_err(), "the attempt's lease is revoked: {put:?}");
        assert!(
            etcd.get(late_key, None).await.unwrap().kvs().is_empty(),
            "no late lock key"
        );
        // The idle writer takes a fresh lease for its next attempt.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while late.lease.load(Ordering::Acquire) == attempt_lease {
            assert!(std::time::Instant::now() < deadline, "a fresh lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        etcd.unlock(held.key().to_vec()).await.unwrap();
        // Another daemon writes at once, and so does the one that gave up.
        let other = backend.open_tweaked("late", |c| c.timeout = timeout);
        other
            .submit(privacy_job("u2"))
            .await
            .expect("nobody stalls");
        late.submit(privacy_job("u3"))
            .await
            .expect("the daemon writes again");
        other.close().await.unwrap();
        late.close().await.unwrap();
    }
}
