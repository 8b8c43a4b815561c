//! The etcd backend's local view: a copy of every key under the store's
//! prefix, kept current by one etcd watch, which every read is served from
//! (no etcd round trip on Authorize).
//!
//! Keys are those of `sled_codec` (`d/<app>\0<user>\0<scope>`, `e/<rev>`,
//! ...), so the sled backend's readers (`sled_read`) read this view too.
//! The view also keeps what readers ask for often, decoded: the apps, the
//! store revision, the compaction horizon, the event count.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use tokio::sync::{broadcast, watch};

use super::{
    codec,
    sled_read::{Kv, Overlay, Visit},
    CommitObserver, Published, StoreError,
};
use crate::{
    clock::SharedClock,
    domain::{App, AppId, Event},
};

/// Every key under the prefix (the prefix cut off) and what is decoded
/// from them.
#[derive(Default)]
pub(super) struct Replica {
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    pub apps: BTreeMap<AppId, Arc<App>>,
    /// The store revision (`m/revision`).
    pub revision: u64,
    pub compacted_through: u64,
    pub audit_seq: u64,
    /// Event keys present.
    pub events: u64,
    /// The etcd revision this view reflects.
    pub etcd_revision: i64,
    /// The etcd mod_revision of `m/revision`: what a commit compares on.
    pub revision_mod: i64,
}

impl Replica {
    /// Applies one put (`Some`) or delete (`None`) of `key`.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        if key.starts_with(codec::APP_PREFIX) {
            let id = std::str::from_utf8(&key[codec::APP_PREFIX.len()..])
                .ok()
                .and_then(|id| AppId::parse(id).ok())
                .ok_or_else(|| StoreError::Corrupt("bad app key in etcd".into()))?;
            match value {
                Some(raw) => {
                    self.apps.insert(id, Arc::new(codec::decode_app(raw)?));
                }
                None => {
                    self.apps.remove(&id);
                }
            }
        } else if key == codec::REVISION_KEY {
            self.revision = value.map_or(Ok(0), codec::decode_u64)?;
        } else if key == codec::COMPACTED_KEY {
            self.compacted_through = value.map_or(Ok(0), codec::decode_u64)?;
        } else if key == codec::AUDIT_SEQ_KEY {
            self.audit_seq = value.map_or(Ok(0), codec::decode_u64)?;
        }
        let is_event = key.starts_with(codec::EVENT_PREFIX);
        match value {
            Some(v) => {
                if self.kv.insert(key.to_vec(), v.to_vec()).is_none() && is_event {
                    self.events += 1;
                }
            }
            None => {
                if self.kv.remove(key).is_some() && is_event {
                    self.events = self.events.saturating_sub(1);
                }
            }
        }
        Ok(())
    }

    /// Events with revision > `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let range = (
            Bound::Included(codec::event_key(start).to_vec()),
            Bound::Included(codec::event_key(u64::MAX).to_vec()),
        );
        self.kv
            .range::<Vec<u8>, _>(range)
            .take(limit)
            .map(|(key, value)| {
                let revision = codec::decode_u64(&key[codec::EVENT_PREFIX.len()..])?;
                codec::decode_event(revision, value)
            })
            .collect()
    }

    /// Keys and values under `prefix`, in key order.
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a {
        self.kv
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
    }
}

impl Kv for Replica {
    fn read<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.kv.get(key).map(|raw| decode(raw)).transpose()
    }

    fn scan(&self, prefix: &[u8], visit: &mut Visit<'_>) -> Result<(), StoreError> {
        for (key, value) in self.scan_prefix(prefix) {
            visit(key, value)?;
        }
        Ok(())
    }
}

/// The view with a group's staged writes on top (what a write job sees).
pub(super) struct StagedReplica<'a> {
    pub replica: &'a Replica,
    pub overlay: &'a Overlay,
}

impl Kv for StagedReplica<'_> {
    fn read<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match self.overlay.get(key) {
            Some(staged) => staged.as_deref().map(decode).transpose(),
            None => self.replica.read(key, decode),
        }
    }

    fn scan(&self, prefix: &[u8], visit: &mut Visit<'_>) -> Result<(), StoreError> {
        let mut merged: BTreeMap<&[u8], Option<&[u8]>> = self
            .replica
            .scan_prefix(prefix)
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
            .collect();
        for (key, value) in self.overlay.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            merged.insert(key, value.as_deref());
        }
        for (key, value) in merged {
            if let Some(value) = value {
                visit(key, value)?;
            }
        }
        Ok(())
    }
}

/// The changes of one etcd revision: (key without the prefix, new value
/// or `None` for a delete).
pub(super) type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// What the store's readers, its watcher and its writer share.
pub(super) struct Shared {
    replica: RwLock<Replica>,
    /// `replica.revision`, readable without the lock.
    pub revision: AtomicU64,
    pub compacted_through: AtomicU64,
    /// The etcd revision applied so far (the writer waits on it).
    pub applied: watch::Sender<i64>,
    pub published: broadcast::Sender<Arc<Published>>,
    pub observer: Option<Arc<dyn CommitObserver>>,
    pub clock: SharedClock,
}

impl Shared {
    pub fn new(
        replica: Replica,
        publish_capacity: usize,
        observer: Option<Arc<dyn CommitObserver>>,
        clock: SharedClock,
    ) -> Self {
        let (published, _) = broadcast::channel(publish_capacity.max(1));
        let (applied, _) = watch::channel(replica.etcd_revision);
        Self {
            revision: AtomicU64::new(replica.revision),
            compacted_through: AtomicU64::new(replica.compacted_through),
            replica: RwLock::new(replica),
            applied,
            published,
            observer,
            clock,
        }
    }

    pub fn read(&self) -> Result<RwLockReadGuard<'_, Replica>, StoreError> {
        self.replica
            .read()
            .map_err(|_| StoreError::Internal("the local view is poisoned".into()))
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Replica>, StoreError> {
        self.replica
            .write()
            .map_err(|_| StoreError::Internal("the local view is poisoned".into()))
    }

    /// Applies the changes of one etcd revision (`etcd_revision`): keys
    /// already without the prefix, `None` for a delete. A change that moved
    /// the store revision is published as one group, with the events it
    /// wrote.
    pub fn apply_revision(&self, etcd_revision: i64, changes: Changes) -> Result<(), StoreError> {
        let published = {
            let mut replica = self.write()?;
            if etcd_revision <= replica.etcd_revision {
                // Already in the view (a watch restarted from an older revision).
                return Ok(());
            }
            let prev_revision = replica.revision;
            let mut commit = false;
            let mut new_events = Vec::new();
            for (key, value) in &changes {
                if key == codec::REVISION_KEY {
                    commit = true;
                    replica.revision_mod = etcd_revision;
                }
                if let (true, Some(v)) = (key.starts_with(codec::EVENT_PREFIX), value) {
                    let revision = codec::decode_u64(&key[codec::EVENT_PREFIX.len()..])?;
                    // An erasure's scrub rewrites retained events in place:
                    // the view takes the new values, but they were published
                    // when they were new and are not published again.
                    if revision > prev_revision {
                        new_events.push(codec::decode_event(revision, v)?);
                    }
                }
                replica.apply(key, value.as_deref())?;
            }
            replica.etcd_revision = etcd_revision;
            self.revision.store(replica.revision, Ordering::Release);
            self.compacted_through
                .store(replica.compacted_through, Ordering::Release);
            new_events.sort_by_key(|e| e.revision);
            commit.then(|| Published {
                prev_revision,
                revision: replica.revision,
                events: new_events,
            })
        };
        if let Some(group) = published {
            // No receivers is fine: nobody is watching.
            let _ = self.published.send(Arc::new(group));
        }
        self.applied.send_replace(etcd_revision);
        Ok(())
    }

    /// Replaces the whole view (after the watch could not resume: etcd
    /// compacted its history past it). Publishes nothing: subscribers see
    /// the next group's `prev_revision` jump and catch up from the log.
    pub fn replace(&self, fresh: Replica) -> Result<(), StoreError> {
        let etcd_revision = fresh.etcd_revision;
        {
            let mut replica = self.write()?;
            self.revision.store(fresh.revision, Ordering::Release);
            self.compacted_through
                .store(fresh.compacted_through, Ordering::Release);
            *replica = fresh;
        }
        self.applied.send_replace(etcd_revision);
        Ok(())
    }
}
