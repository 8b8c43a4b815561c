//! The sled backend: one tree, one writer thread, an in-memory app index,
//! and a broadcast of committed groups for watchers.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    codec::{self, FORMAT_KEY, FORMAT_VERSION, REVISION_KEY},
    sled_durability::Durability,
    sled_maintenance, sled_read,
    sled_shared::Shared,
    sled_users,
    sled_writer::{self, Request},
    AuditPage, BoxFuture, CommitObserver, Committed, Compaction, DecisionRow, Job, Published,
    Retention, RevisionWait, Store, StoreError, StoreStats, TxnError, Verification,
};
use crate::{
    clock::SharedClock,
    domain::{App, AppId, AuditQuery, Event, StateQuery, SubjectState, UserId},
};

/// sled's errors, classified: a full disk, an I/O failure (sled then keeps
/// failing until reopened), corruption, or a bug.
impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match &e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                StoreError::Full(e.to_string())
            }
            sled::Error::Io(_) => StoreError::Unavailable(e.to_string()),
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            sled::Error::CollectionNotFound(_)
            | sled::Error::Unsupported(_)
            | sled::Error::ReportableBug(_) => StoreError::Internal(e.to_string()),
        }
    }
}

/// Tuning of the sled backend.
#[derive(Clone, Debug)]
pub struct SledConfig {
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// Most jobs committed by one group commit.
    pub max_batch: usize,
    /// Jobs waiting for the writer before submitters wait.
    pub queue_depth: usize,
    /// Committed groups buffered for watchers before a slow one lags.
    pub publish_capacity: usize,
    /// Told about every group commit.
    pub observer: Option<Arc<dyn CommitObserver>>,
    /// Flush every group commit before acknowledging it. `false` acknowledges
    /// writes that a crash may lose: for measuring what durability costs only.
    pub flush_on_commit: bool,
    /// Event and record times, retention by age.
    pub clock: SharedClock,
}

impl std::fmt::Debug for dyn CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

/// The sled-backed [`Store`].
pub struct SledStore {
    /// The sled handles, taken out on close so the data dir's lock is
    /// released even while something still holds this store.
    handles: RwLock<Option<(sled::Db, sled::Tree)>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<WriterHandle>>,
    config: SledConfig,
}

struct WriterHandle {
    tx: mpsc::Sender<Request>,
    thread: JoinHandle<()>,
}

impl SledStore {
    /// Opens (or creates) the store at `config.path` and starts its writer.
    pub fn open(config: &SledConfig) -> Result<Self, StoreError> {
        let (db, tree, loaded) = open_handles(config)?;
        let (published, _) = broadcast::channel(config.publish_capacity.max(1));
        let shared = Arc::new(Shared {
            apps: RwLock::new(loaded.apps),
            revision: AtomicU64::new(loaded.revision),
            compacted_through: AtomicU64::new(loaded.compacted_through),
            event_count: AtomicU64::new(loaded.events),
            audit_seq: AtomicU64::new(loaded.audit_seq),
            published,
            observer: config.observer.clone(),
            failed: AtomicBool::new(false),
            clock: config.clock.clone(),
        });
        if !config.flush_on_commit {
            tracing::warn!("flush_on_commit is off: acknowledged writes may be lost in a crash");
        }
        let writer = start_writer(tree.clone(), shared.clone(), config)?;
        Ok(Self {
            handles: RwLock::new(Some((db, tree))),
            shared,
            writer: Mutex::new(Some(writer)),
            config: config.clone(),
        })
    }

    /// The tree, unless the store is closed.
    fn tree(&self) -> Result<sled::Tree, StoreError> {
        let handles = self
            .handles
            .read()
            .map_err(|_| StoreError::Internal("store handles poisoned".into()))?;
        handles
            .as_ref()
            .map(|(_, tree)| tree.clone())
            .ok_or(StoreError::Closed)
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Internal("writer handle poisoned".into()))?
            .as_ref()
            .map(|w| w.tx.clone())
            .ok_or(StoreError::Closed)
    }

    /// Runs `task` on the writer between two group commits.
    async fn exclusive<T: Send + 'static>(
        &self,
        task: impl FnOnce(&sled_writer::Writer) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Exclusive(Box::new(move |w| {
            let _ = reply.send(task(w));
        }));
        self.sender()?
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// What opening reads back from a store.
struct Loaded {
    revision: u64,
    compacted_through: u64,
    apps: BTreeMap<AppId, Arc<App>>,
    events: u64,
    audit_seq: u64,
}

/// Creates the data dir (and missing parents) with mode 0700, or makes an
/// existing one 0700 (with a WARN): it holds user ids and their decisions,
/// and sled creates its files with the process umask.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the data dir was open to other users; making it 0700");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens sled at `config.path`, checks the format and reads the state back.
fn open_handles(config: &SledConfig) -> Result<(sled::Db, sled::Tree, Loaded), StoreError> {
    let path = config.path.display().to_string();
    let open_err = |source: sled::Error| StoreError::Open {
        path: path.clone(),
        message: source.to_string(),
    };
    create_private_dir(&config.path).map_err(|e| open_err(e.into()))?;
    // A store that was there before must still carry our format marker
    // after sled's recovery; otherwise it was damaged, not empty.
    let existed = config.path.join("db").exists();
    let db = sled::Config::new()
        .path(&config.path)
        .cache_capacity(config.cache_capacity)
        // Every commit flushes itself; without that, sled's own flusher
        // must run or dirty pages would pile up in memory without bound.
        .flush_every_ms(if config.flush_on_commit {
            None
        } else {
            Some(200)
        })
        .open()
        .map_err(open_err)?;
    let tree = db.open_tree("consent").map_err(open_err)?;
    check_format(&tree, &config.path, existed)?;

    let meta = |key| -> Result<u64, StoreError> {
        tree.get(key)?.map_or(Ok(0), |raw| codec::decode_u64(&raw))
    };
    let revision = meta(REVISION_KEY)?;
    let compacted_through = meta(codec::COMPACTED_KEY)?;
    let audit_seq = meta(codec::AUDIT_SEQ_KEY)?;
    let mut apps = BTreeMap::new();
    for item in tree.scan_prefix(codec::APP_PREFIX) {
        let (_, value) = item?;
        let app = codec::decode_app(&value)?;
        apps.insert(app.id.clone(), Arc::new(app));
    }
    let events = match tree.get(codec::EVENTS_KEY)? {
        Some(raw) => codec::decode_u64(&raw)?,
        // Written by every commit since; count once for older data dirs.
        None => {
            let mut n = 0u64;
            for item in tree.scan_prefix(codec::EVENT_PREFIX).values() {
                n += codec::decode_event_chunk(&item?)?.len() as u64;
            }
            n
        }
    };
    // An erasure interrupted by a crash finishes before anything is served.
    sled_users::scrub_pending(&tree, compacted_through)?;
    tracing::info!(path = %path, revision, compacted_through, apps = apps.len(), events, "store opened");
    Ok((
        db,
        tree,
        Loaded {
            revision,
            compacted_through,
            apps,
            events,
            audit_seq,
        },
    ))
}

fn start_writer(
    tree: sled::Tree,
    shared: Arc<Shared>,
    config: &SledConfig,
) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
    let durability = config
        .flush_on_commit
        .then(|| Durability::open(&config.path))
        .transpose()
        .map_err(|e| StoreError::Open {
            path: config.path.display().to_string(),
            message: format!("opening sled's log file for fdatasync: {e}"),
        })?;
    let state = sled_writer::Writer::new(tree, shared, config.max_batch.max(1), durability);
    let thread = std::thread::Builder::new()
        .name("consentd-writer".into())
        .spawn(move || state.run(rx))
        .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
    Ok(WriterHandle { tx, thread })
}

/// Whether `dir` can take a small write now (a probe file, removed again).
fn has_room(dir: &Path) -> bool {
    let probe = dir.join(".consentd-space-probe");
    let ok = std::fs::write(&probe, vec![0u8; 1 << 20]).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn check_format(tree: &sled::Tree, path: &Path, existed: bool) -> Result<(), StoreError> {
    let format_err = |message: String| StoreError::Format {
        path: path.display().to_string(),
        message,
    };
    match tree.get(FORMAT_KEY)? {
        Some(raw) => {
            let found = codec::decode_u64(&raw)?;
            if found > FORMAT_VERSION {
                return Err(format_err(format!(
                    "has data format {found}; this consentd reads format {FORMAT_VERSION}"
                )));
            }
            migrate(tree, found).map_err(format_err)?;
        }
        None if existed => {
            return Err(format_err(
                "holds a store, but none of consentd's data could be read from it (damaged or \
                 truncated files?); refusing to start on an empty store: restore a backup or \
                 move the directory away"
                    .into(),
            ))
        }
        None if tree.is_empty() => {
            tree.insert(FORMAT_KEY, &codec::encode_u64(FORMAT_VERSION))?;
            tree.flush()?;
        }
        None => return Err(format_err("holds data without a format marker".into())),
    }
    Ok(())
}

/// A step that rewrites a data dir from format `from` to `from + 1`.
type Migration = fn(&sled::Tree) -> Result<(), StoreError>;

/// Every format upgrade, in order: entry `i` upgrades format `i + 1` to
/// `i + 2`.
const MIGRATIONS: &[Migration] = &[to_format_2, to_format_3, to_format_4, to_format_5];

/// Format 2 adds keys and value versions (grant lifetimes and timers,
/// privacy guides and answers, the audit trail, anti-nag state, the
/// EXPIRED cause) that a format-1 build would misread or drop. Nothing in a
/// format-1 data dir changes: the step only raises the marker, so an older
/// build refuses the data dir instead of half-reading it.
fn to_format_2(_: &sled::Tree) -> Result<(), StoreError> {
    Ok(())
}

/// Format 3 writes audit records in a binary encoding that a format-2 build
/// cannot read. The JSON records already stored stay as they are (this build
/// reads both), so the step only raises the marker.
fn to_format_3(_: &sled::Tree) -> Result<(), StoreError> {
    Ok(())
}

/// Format 4 packs the log into chunks (see the codec): every `e/<revision>`
/// event becomes part of an `E/` chunk, every `l/<seq>` audit record (JSON
/// or binary) part of an `A/` chunk with one `I/` index entry per (app,
/// chunk), and the per-record `i/` index goes. Each slice of the old keys is
/// moved in one atomic batch (new chunk in, old keys out), so a migration
/// cut short by a crash resumes where it stopped (the marker still says 3).
/// Events at or below the compaction horizon (leftovers of an interrupted
/// compaction, already in the checkpoint) are dropped, and `m/events`
/// counts what is kept.
fn to_format_4(tree: &sled::Tree) -> Result<(), StoreError> {
    /// Old keys moved per batch.
    const SLICE: usize = 4096;
    let horizon = tree
        .get(codec::COMPACTED_KEY)?
        .map_or(Ok(0), |raw| codec::decode_u64(&raw))?;
    let mut kept = 0u64;
    loop {
        let mut events = Vec::with_capacity(SLICE);
        let mut batch = sled::Batch::default();
        let mut moved = 0usize;
        for item in tree.scan_prefix(codec::OLD_EVENT_PREFIX).take(SLICE) {
            let (key, value) = item?;
            moved += 1;
            let revision = codec::key_u64(&key)?;
            if revision > horizon {
                events.push(codec::decode_event(revision, &value)?);
            }
            batch.remove(key);
        }
        if moved == 0 {
            break;
        }
        kept += events.len() as u64;
        for (last, value) in codec::event_chunks(&events) {
            batch.insert(&codec::event_key(last), value);
        }
        tree.apply_batch(batch)?;
    }
    // Counted afresh: an old count may include leftovers dropped above.
    let mut retained = kept;
    for value in tree.scan_prefix(codec::EVENT_PREFIX).values() {
        retained += codec::decode_event_chunk(&value?)?.len() as u64;
    }
    // The events just moved were counted twice.
    retained -= kept;
    tree.insert(codec::EVENTS_KEY, &codec::encode_u64(retained))?;
    loop {
        let mut records = Vec::with_capacity(SLICE);
        let mut batch = sled::Batch::default();
        for item in tree.scan_prefix(codec::OLD_AUDIT_PREFIX).take(SLICE) {
            let (key, value) = item?;
            let record = codec::decode_audit(&value)?;
            batch.remove(codec::old_audit_index_key(&record.entry.app, record.seq));
            batch.remove(key);
            records.push(record);
        }
        if records.is_empty() {
            break;
        }
        for (chunk, value) in codec::audit_chunks(&records) {
            let last = chunk[chunk.len() - 1].seq;
            batch.insert(&codec::audit_key(last), value);
            for app in chunk.iter().map(|r| &r.entry.app).collect::<BTreeSet<_>>() {
                batch.insert(codec::audit_index_key(app, last), &[][..]);
            }
        }
        tree.apply_batch(batch)?;
    }
    // Index entries that outlived their record (a trim cut short).
    let mut batch = sled::Batch::default();
    for key in tree.scan_prefix(codec::OLD_AUDIT_INDEX_PREFIX).keys() {
        batch.remove(key?);
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// Format 5 adds the per-user index (`u/<user>\0<app>`, kept by every
/// write since) and erasure markers: a format-3 build would leave the index
/// stale. The step builds the index from the stored decisions, privacy
/// answers and anti-nag states; an interrupted run is simply redone.
fn to_format_5(tree: &sled::Tree) -> Result<(), StoreError> {
    let entries = sled_users::build_index(tree)?;
    tracing::info!(entries, "per-user index built");
    Ok(())
}

/// Brings a data dir of format `from` up to [`FORMAT_VERSION`], one step at a
/// time, recording each finished step.
fn migrate(tree: &sled::Tree, from: u64) -> Result<(), String> {
    let mut format = from;
    while format < FORMAT_VERSION {
        let step = format
            .checked_sub(1)
            .and_then(|i| MIGRATIONS.get(usize::try_from(i).ok()?))
            .ok_or_else(|| format!("has data format {format}, and no migration from it to format {FORMAT_VERSION} exists"))?;
        step(tree).map_err(|e| format!("migrating from format {format}: {e}"))?;
        format += 1;
        tree.insert(FORMAT_KEY, &codec::encode_u64(format))
            .map_err(|e| e.to_string())?;
        tree.flush().map_err(|e| e.to_string())?;
        tracing::info!(format, "data dir migrated");
    }
    Ok(())
}

/// sled releases the data dir's lock (a flock on `db`) when the last
/// reference to its internals goes, which its own background I/O threads
/// may hold a moment after the handles are dropped. Waits (bounded) until
/// the lock is free, so a closed store is one the next process can open.
fn wait_for_lock_release(path: &std::path::Path) {
    let Ok(file) = std::fs::File::open(path.join("db")) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                return;
            }
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the data dir's lock is still held after close");
                return;
            }
        }
    }
}

impl Store for SledStore {
    fn app(&self, id: &AppId) -> Result<Option<Arc<App>>, StoreError> {
        let apps = self
            .shared
            .apps
            .read()
            .map_err(|_| StoreError::Internal("app index poisoned".into()))?;
        Ok(apps.get(id).cloned())
    }

    fn apps(&self, after: Option<&AppId>, limit: usize) -> Result<Vec<Arc<App>>, StoreError> {
        use std::ops::Bound;
        let apps = self
            .shared
            .apps
            .read()
            .map_err(|_| StoreError::Internal("app index poisoned".into()))?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(apps
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, a)| a.clone())
            .collect())
    }

    fn subject(
        &self,
        app: &AppId,
        user: &UserId,
        query: &StateQuery,
    ) -> Result<SubjectState, StoreError> {
        sled_read::subject(&self.tree()?, app, user, query)
    }

    fn user_apps(
        &self,
        user: &UserId,
        after: Option<&AppId>,
        limit: usize,
    ) -> Result<Vec<AppId>, StoreError> {
        sled_users::user_apps_committed(&self.tree()?, user, after, limit)
    }

    fn finish_erasures(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            // Reading the log for the user's records needs no exclusive
            // turn; only the rewrite of what was found does.
            let tree = self.tree()?;
            let horizon = self.compacted_through();
            let plans =
                tokio::task::spawn_blocking(move || sled_users::plan_scrubs(&tree, horizon))
                    .await
                    .map_err(|e| StoreError::Internal(format!("planning a scrub: {e}")))??;
            let mut renamed = 0;
            for plan in plans {
                renamed += self
                    .exclusive(move |w| sled_users::apply_scrub(&w.tree, &plan))
                    .await?;
            }
            Ok(renamed)
        })
    }

    fn decisions_after(
        &self,
        after: Option<&DecisionRow>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(row) => Bound::Excluded(codec::decision_key(&row.app, &row.user, row.scope)),
            None => Bound::Included(codec::DECISION_PREFIX.to_vec()),
        };
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in self
            .tree()?
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
        {
            let (key, value) = item?;
            let Some(rest) = key.strip_prefix(codec::DECISION_PREFIX) else {
                break;
            };
            let nul = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| StoreError::Corrupt("decision key without app".into()))?;
            let app = std::str::from_utf8(&rest[..nul])
                .ok()
                .and_then(|a| AppId::parse(a).ok())
                .ok_or_else(|| StoreError::Corrupt("bad app in decision key".into()))?;
            let (user, scope) = codec::split_user_scope(&rest[nul + 1..])?;
            let decision = codec::decode_decision(&value)?;
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

    fn audit(&self, app: &AppId, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let tree = self.tree()?;
        let prefix = codec::audit_index_prefix(app);
        let start = match query.after_seq {
            Some(seq) => codec::audit_index_key(app, seq.saturating_add(1)),
            None => prefix.clone(),
        };
        let after = query.after_seq.unwrap_or(0);
        let mut page = Vec::new();
        let mut scanned = 0usize;
        // Filters may skip many records: bound the work of one page too.
        let budget = query.limit.saturating_mul(16).max(1024);
        // Each index entry names a chunk ending at or after `after + 1`
        // that holds records of `app` (among others').
        for key in tree.range(start..).keys() {
            let key = key?;
            if !key.starts_with(&prefix) {
                return Ok((page, None));
            }
            let last = codec::decode_u64(&key[prefix.len()..])?;
            // The index may briefly outlive a trimmed chunk.
            let Some(raw) = tree.get(codec::audit_key(last))? else {
                continue;
            };
            for record in codec::decode_audit_chunk(&raw)? {
                if record.seq <= after || record.entry.app != *app {
                    continue;
                }
                scanned += 1;
                let seq = record.seq;
                if query.matches(&record) {
                    page.push(record);
                }
                if page.len() >= query.limit || scanned >= budget {
                    return Ok((page, Some(seq)));
                }
            }
        }
        Ok((page, None))
    }

    fn trim_audit(&self, retention: Retention) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let now = self.shared.clock.now_ms();
            let mut removed = 0;
            loop {
                let (n, done) = self
                    .exclusive(move |w| {
                        sled_maintenance::trim_audit_chunk(
                            w,
                            retention,
                            now,
                            sled_maintenance::COMPACT_CHUNK,
                        )
                    })
                    .await?;
                removed += n;
                if done {
                    break;
                }
            }
            if removed > 0 {
                tracing::info!(removed, "audit trail trimmed");
            }
            Ok(removed)
        })
    }

    fn submit_detached(&self, job: Job) -> Result<(), StoreError> {
        let (reply, _) = oneshot::channel();
        self.sender()?
            .try_send(Request::Write { job, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Internal("the write queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })
    }

    fn next_timer(&self) -> Result<Option<u64>, StoreError> {
        match self.tree()?.scan_prefix(codec::TIMER_PREFIX).next() {
            Some(item) => Ok(Some(codec::split_timer_key(&item?.0)?.0)),
            None => Ok(None),
        }
    }

    fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    fn wait_for_revision(
        &self,
        revision: u64,
        _within: Duration,
    ) -> BoxFuture<'_, Result<u64, RevisionWait>> {
        // One writer, and a write is acknowledged only after its revision
        // is readable: a revision above this one was never given out.
        let newest = self.revision();
        Box::pin(std::future::ready(if revision <= newest {
            Ok(newest)
        } else {
            Err(RevisionWait::Ahead {
                wanted: revision,
                newest,
            })
        }))
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // The first chunk whose last event is at or after `start` holds it
        // (or the first retained event after it); `start` may fall inside.
        for value in self
            .tree()?
            .range(codec::event_key(start)..=codec::event_key(u64::MAX))
            .values()
        {
            for event in codec::decode_event_chunk(&value?)? {
                if event.revision < start {
                    continue;
                }
                out.push(event);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.shared.published.subscribe()
    }

    fn compacted_through(&self) -> u64 {
        self.shared.compacted_through.load(Ordering::Acquire)
    }

    fn stats(&self) -> StoreStats {
        let revision = self.revision();
        StoreStats {
            revision,
            // A local store is the whole store.
            cluster_revision: revision,
            compacted_through: self.compacted_through(),
            events: self.shared.event_count.load(Ordering::Acquire),
            apps: self.shared.apps.read().map_or(0, |a| a.len() as u64),
            size_on_disk: self
                .handles
                .read()
                .ok()
                .and_then(|h| h.as_ref().and_then(|(db, _)| db.size_on_disk().ok()))
                .unwrap_or(0),
        }
    }

    fn compact(&self, retention: Retention) -> BoxFuture<'_, Result<Compaction, StoreError>> {
        Box::pin(async move {
            let now = self.shared.clock.now_ms();
            let mut total = Compaction {
                removed: 0,
                compacted_through: self.compacted_through(),
            };
            // Chunks keep each exclusive turn on the writer short.
            loop {
                let (chunk, done) = self
                    .exclusive(move |w| {
                        sled_maintenance::compact_chunk(
                            w,
                            retention,
                            now,
                            sled_maintenance::COMPACT_CHUNK,
                        )
                    })
                    .await?;
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
        })
    }

    fn verify(&self) -> BoxFuture<'_, Result<Verification, StoreError>> {
        Box::pin(self.exclusive(sled_maintenance::verify))
    }

    fn submit(&self, job: Job) -> BoxFuture<'_, Result<Committed, TxnError>> {
        Box::pin(async move {
            let tx = self.sender()?;
            let (reply, rx) = oneshot::channel();
            tx.send(Request::Write { job, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn recover(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            if !self.shared.failed.load(Ordering::Acquire) || !has_room(&self.config.path) {
                return Ok(false);
            }
            tracing::warn!("a write failed earlier and there is room again: reopening the store");
            let poisoned = || StoreError::Internal("store handles poisoned".into());
            let writer = self.writer.lock().map_err(|_| poisoned())?.take();
            if let Some(WriterHandle { tx, thread }) = writer {
                drop(tx);
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_err(|e| StoreError::Internal(format!("joining the writer: {e}")))?
                    .map_err(|_| StoreError::Internal("the writer thread panicked".into()))?;
            }
            let old = self.handles.write().map_err(|_| poisoned())?.take();
            let config = self.config.clone();
            // Drop the failed handles and wait until sled's threads let go of
            // the data dir's lock (as close does), then open again.
            let (db, tree, loaded) = tokio::task::spawn_blocking(move || {
                drop(old);
                wait_for_lock_release(&config.path);
                open_handles(&config)
            })
            .await
            .map_err(|e| StoreError::Internal(format!("reopening: {e}")))??;
            // A group whose flush failed was already published: its revisions
            // must never be handed out again.
            let published = self.shared.revision.load(Ordering::Acquire);
            let revision = loaded.revision.max(published);
            if revision > loaded.revision {
                tree.insert(REVISION_KEY, &codec::encode_u64(revision))?;
                tree.flush()?;
            }
            self.shared.revision.store(revision, Ordering::Release);
            self.shared
                .compacted_through
                .store(loaded.compacted_through, Ordering::Release);
            self.shared
                .event_count
                .store(loaded.events, Ordering::Release);
            // Like the revision: sequence numbers already handed out (and
            // seen as page tokens) must never be handed out again.
            let audit_seq = loaded
                .audit_seq
                .max(self.shared.audit_seq.load(Ordering::Acquire));
            self.shared.audit_seq.store(audit_seq, Ordering::Release);
            *self.shared.apps.write().map_err(|_| poisoned())? = loaded.apps;
            let writer = start_writer(tree.clone(), self.shared.clone(), &self.config)?;
            *self.handles.write().map_err(|_| poisoned())? = Some((db, tree));
            *self.writer.lock().map_err(|_| poisoned())? = Some(writer);
            self.shared.failed.store(false, Ordering::Release);
            tracing::info!(revision, "store reopened; writes resume");
            Ok(true)
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let handle = self
                .writer
                .lock()
                .map_err(|_| StoreError::Internal("writer handle poisoned".into()))?
                .take();
            if let Some(WriterHandle { tx, thread }) = handle {
                // Dropping the last sender ends the writer once the queue is drained.
                drop(tx);
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_err(|e| StoreError::Internal(format!("joining the writer: {e}")))?
                    .map_err(|_| StoreError::Internal("the writer thread panicked".into()))?;
            }
            // Take the handles out: the last sled handle flushes and releases
            // the data dir's lock when dropped here, not whenever the last
            // holder of this store lets go.
            let handles = self
                .handles
                .write()
                .map_err(|_| StoreError::Internal("store handles poisoned".into()))?
                .take();
            if let Some((db, tree)) = handles {
                let path = self.config.path.clone();
                tokio::task::spawn_blocking(move || {
                    let flushed = db.flush();
                    drop(tree);
                    drop(db);
                    wait_for_lock_release(&path);
                    flushed
                })
                .await
                .map_err(|e| StoreError::Internal(format!("final flush: {e}")))??;
            }
            tracing::info!(revision = self.revision(), "store closed");
            Ok(())
        })
    }
}

#[cfg(test)]
mod contract_tests {
    use std::sync::Arc;

    use super::{SledConfig, SledStore};
    use crate::{
        clock::SystemClock,
        store::{
            contract::{store_contract_tests, Backend},
            Store,
        },
    };

    /// sled stores under one temp dir, a directory per name.
    struct Sled(tempfile::TempDir);

    impl Backend for Sled {
        fn open(&self, name: &str) -> Arc<dyn Store> {
            let store = SledStore::open(&SledConfig {
                path: self.0.path().join(name),
                cache_capacity: 8 << 20,
                max_batch: 64,
                queue_depth: 256,
                publish_capacity: 1024,
                observer: None,
                flush_on_commit: true,
                clock: SystemClock::shared(),
            })
            .expect("the sled store opens");
            Arc::new(store)
        }
    }

    store_contract_tests!(Sled(tempfile::tempdir().unwrap()));
}

#[cfg(test)]
mod format_tests {
    use std::sync::Arc;

    use super::{codec, SledConfig, SledStore};
    use crate::{
        clock::SystemClock,
        domain::{
            AppId, AuditAction, AuditEntry, AuditQuery, AuditRecord, Cause, Decision,
            DecisionState, Event, Lifetime, Scope, Subject, UserId,
        },
        store::{Retention, Store, WriteSet},
    };

    fn config(path: &std::path::Path) -> SledConfig {
        SledConfig {
            path: path.to_owned(),
            cache_capacity: 8 << 20,
            max_batch: 64,
            queue_depth: 256,
            publish_capacity: 1024,
            observer: None,
            flush_on_commit: true,
            clock: SystemClock::shared(),
        }
    }

    /// Opens the store over a data dir the test wrote with sled directly.
    /// sled releases the directory's lock from its own background threads
    /// after the last handle is dropped, so for a moment it may be held.
    fn open_when_released(path: &std::path::Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(&config(path)) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            app: AppId::parse(if i.is_multiple_of(3) { "wxa" } else { "wxb" }).unwrap(),
            user: Some(UserId::parse(&format!("user-{i}")).unwrap()),
            scope: Some(Scope::Camera),
            action: AuditAction::SettingsChanged,
            principal: format!("settings-{i}"),
            client: None,
        }
    }

    fn audit(store: &SledStore, app: &str, limit: usize) -> Vec<AuditRecord> {
        let app = AppId::parse(app).unwrap();
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let query = AuditQuery {
                after_seq: after,
                limit,
                ..AuditQuery::default()
            };
            let (page, next) = store.audit(&app, &query).unwrap();
            out.extend(page);
            match next {
                Some(seq) => after = Some(seq),
                None => return out,
            }
        }
    }

    /// A data dir written in format 3 (a key per event, per audit record
    /// and per index entry; one JSON record of format 2 among them) opens
    /// in format 4 with the same log and trail, and no old key left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_format_3_log_and_audit_trail_migrate_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut events, mut records) = (Vec::new(), Vec::new());
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("consent").unwrap();
            for revision in 1..=1000u64 {
                let e = Event {
                    revision,
                    app: AppId::parse("wxa").unwrap(),
                    user: UserId::parse(&format!("user-{revision}")).unwrap(),
                    scope: Scope::Camera,
                    old: DecisionState::NotDetermined,
                    new: DecisionState::Granted,
                    cause: Cause::Popup,
                    time_ms: 1_790_000_000_000 + revision,
                };
                let decision = Decision {
                    state: e.new,
                    cause: e.cause,
                    updated_at_ms: e.time_ms,
                    revision,
                    lifetime: Lifetime::Permanent,
                };
                let key = codec::decision_key(&e.app, &e.user, e.scope);
                tree.insert(key, codec::encode_decision(&decision)).unwrap();
                tree.insert(codec::old_event_key(revision), codec::encode_event(&e))
                    .unwrap();
                events.push(e);
            }
            for seq in 1..=300u64 {
                let r = AuditRecord {
                    seq,
                    time_ms: 1_790_000_000_000 + seq,
                    revision: seq,
                    entry: entry(seq),
                };
                let raw = if seq == 7 {
                    // Format 2 wrote JSON; format 3 still read it.
                    format!(r#"{{"seq":7,"time_ms":{},"revision":7,"app":"wxb","user":"user-7","scope":"scope.camera","action":"SETTINGS_CHANGED","principal":"settings-7"}}"#, r.time_ms).into_bytes()
                } else {
                    codec::encode_audit(&r)
                };
                tree.insert(codec::old_audit_key(seq), raw).unwrap();
                tree.insert(codec::old_audit_index_key(&r.entry.app, seq), &[][..])
                    .unwrap();
                records.push(r);
            }
            // An index entry whose record a trim removed.
            tree.insert(
                codec::old_audit_index_key(&AppId::parse("wxa").unwrap(), 0),
                &[][..],
            )
            .unwrap();
            for (key, n) in [
                (codec::FORMAT_KEY, 3),
                (codec::REVISION_KEY, 1000),
                (codec::EVENTS_KEY, 1000),
                (codec::AUDIT_SEQ_KEY, 300),
            ] {
                tree.insert(key, &codec::encode_u64(n)).unwrap();
            }
            db.flush().unwrap();
        }

        let store = open_when_released(dir.path());
        assert_eq!(store.events_after(0, 10_000).unwrap(), events);
        assert_eq!(store.events_after(500, 3).unwrap(), events[500..503]);
        assert_eq!(store.stats().events, 1000);
        let v = store.verify().await.unwrap();
        assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
        assert_eq!((v.decisions, v.retained_events), (1000, 1000));
        for (app, limit) in [("wxa", 7), ("wxb", 1000)] {
            let want: Vec<_> = records
                .iter()
                .filter(|r| r.entry.app.as_str() == app)
                .cloned()
                .collect();
            assert_eq!(audit(&store, app, limit), want, "{app}");
        }
        {
            let tree = store.tree().unwrap();
            for old in [
                codec::OLD_EVENT_PREFIX,
                codec::OLD_AUDIT_PREFIX,
                codec::OLD_AUDIT_INDEX_PREFIX,
            ] {
                assert_eq!(tree.scan_prefix(old).count(), 0, "{old:?}");
            }
            let format = tree.get(codec::FORMAT_KEY).unwrap().unwrap();
            assert_eq!(codec::decode_u64(&format).unwrap(), codec::FORMAT_VERSION);
            // 1,000 events and 300 records in a few dozen chunks.
            assert!(tree.scan_prefix(codec::EVENT_PREFIX).count() < 30);
            assert!(tree.scan_prefix(codec::AUDIT_PREFIX).count() < 30);
        }
        // New records go on after the migrated ones.
        let next = entry(301);
        let set = WriteSet {
            audit: vec![next.clone()],
            ..WriteSet::default()
        };
        store.submit(Box::new(move |_| Ok(set))).await.unwrap();
        let listed = audit(&store, "wxb", 1000);
        assert_eq!(listed.last().unwrap().seq, 301);
        assert_eq!(listed.last().unwrap().entry, next);
        store.close().await.unwrap();
    }

    /// Audit chunks: pages of any size across chunks, filters, and a trim
    /// that cuts through a chunk (the boundary chunk is rewritten; the
    /// index keeps only apps still in it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_pages_across_chunks_and_trims_inside_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&config(dir.path())).unwrap());
        // 1,500 records in one job (several chunks), then 10 in another.
        for range in [1..=1500u64, 1501..=1510] {
            let set = WriteSet {
                audit: range.map(entry).collect(),
                ..WriteSet::default()
            };
            store.submit(Box::new(move |_| Ok(set))).await.unwrap();
        }
        let seqs = |records: Vec<AuditRecord>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
        let want = |app: u64| -> Vec<u64> {
            (1..=1510)
                .filter(|i: &u64| i.is_multiple_of(3) == (app == 0))
                .collect()
        };
        for limit in [1, 13, 1000] {
            assert_eq!(seqs(audit(&store, "wxa", limit)), want(0), "limit {limit}");
            assert_eq!(seqs(audit(&store, "wxb", limit)), want(1), "limit {limit}");
        }
        let user = AuditQuery {
            user: Some(UserId::parse("user-999").unwrap()),
            limit: 10,
            ..AuditQuery::default()
        };
        let (page, _) = store.audit(&AppId::parse("wxa").unwrap(), &user).unwrap();
        assert_eq!(seqs(page), [999]);

        let trimmed = store
            .trim_audit(Retention {
                max_events: Some(700),
                max_age: None,
            })
            .await
            .unwrap();
        assert_eq!(trimmed, 810);
        for app in [0, 1] {
            let name = if app == 0 { "wxa" } else { "wxb" };
            let kept: Vec<u64> = want(app).into_iter().filter(|s| *s > 810).collect();
            assert_eq!(seqs(audit(&store, name, 50)), kept);
        }
        store.close().await.unwrap();
    }

    /// Chunks stay small enough that sled never writes a page of them to a
    /// blob file (which it does not fsync, so a power cut could lose it):
    /// many large groups, every leaf of chunks consolidated, no blob.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_chunks_never_make_sled_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&config(dir.path())).unwrap();
        let app = AppId::parse("wxblob").unwrap();
        for job in 0..8u64 {
            let changes = (0..3000)
                .map(|i| {
                    let subject = Subject {
                        app: app.clone(),
                        user: UserId::parse(&format!("user-{job}-{i}")).unwrap(),
                    };
                    let change = crate::domain::Change {
                        scope: Scope::Camera,
                        old: DecisionState::NotDetermined,
                        new: DecisionState::Granted,
                        cause: Cause::Popup,
                    };
                    (subject, change)
                })
                .collect();
            let set = WriteSet {
                changes,
                audit: (0..3000).map(|i| entry(job * 3000 + i)).collect(),
                ..WriteSet::default()
            };
            store.submit(Box::new(move |_| Ok(set))).await.unwrap();
        }
        store.close().await.unwrap();
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(blobs.is_empty(), "{blobs:?}");
    }
}
