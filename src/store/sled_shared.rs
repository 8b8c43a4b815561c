//! What the sled store's readers, its writer and its maintenance share:
//! the in-memory state next to the tree. Its own module, so that none of
//! them imports another in a loop.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64},
        Arc, RwLock,
    },
};

use tokio::sync::broadcast;

use super::{CommitObserver, Published};
use crate::{
    clock::SharedClock,
    domain::{App, AppId},
};

/// Apps by id: every registration, kept in memory (apps are few and read
/// on every call).
pub(super) type AppIndex = RwLock<BTreeMap<AppId, Arc<App>>>;

/// State shared by the readers and the writer.
pub(super) struct Shared {
    pub apps: AppIndex,
    /// The last durable (published) revision.
    pub revision: AtomicU64,
    pub compacted_through: AtomicU64,
    /// Event keys present in the log.
    pub event_count: AtomicU64,
    pub published: broadcast::Sender<Arc<Published>>,
    pub observer: Option<Arc<dyn CommitObserver>>,
    /// The last audit sequence number committed.
    pub audit_seq: AtomicU64,
    /// Set by the writer when sled failed a write: sled keeps failing after
    /// that until it is reopened (see [`Store::recover`]).
    pub failed: AtomicBool,
    pub clock: SharedClock,
}
