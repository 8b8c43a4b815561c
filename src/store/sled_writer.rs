//! The single writer: runs write jobs in arrival order, stages their changes
//! in one sled batch, commits and flushes once per group, then acknowledges.

use std::{
    collections::BTreeMap,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{atomic::Ordering, Arc},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    codec,
    sled_durability::Durability,
    sled_read::{self, read_due_timers, Kv, Overlay, Staged},
    sled_shared::Shared,
    sled_users, AppWrite, Committed, Job, Published, StoreError, Timer, TxnError, View, WriteSet,
};
use crate::domain::{
    App, AppId, AuditRecord, Decision, DecisionState, Event, Lifetime, StateQuery, Subject,
    SubjectState, UserDecisions, UserId,
};

pub(super) enum Request {
    /// A write job, group-committed with its neighbours.
    Write {
        job: Job,
        reply: oneshot::Sender<Result<Committed, TxnError>>,
    },
    /// Maintenance that must see no concurrent write (compaction, verify);
    /// it replies through its own channel.
    Exclusive(Box<dyn FnOnce(&Writer) + Send>),
}

pub(super) struct Writer {
    pub(super) tree: sled::Tree,
    pub(super) shared: Arc<Shared>,
    max_batch: usize,
    /// `Some` when every group commit is made durable before it is
    /// acknowledged (`flush_on_commit`): sled's flush, then an `fdatasync`.
    durability: Option<Durability>,
}

/// What one group commit has staged so far.
struct Group {
    batch: sled::Batch,
    overlay: Overlay,
    /// App index updates to publish after the commit.
    apps: Vec<(AppId, Option<Arc<App>>)>,
    /// The group's events: written as event chunks, and published to
    /// watchers.
    events: Vec<Event>,
    /// The group's audit records, written as audit chunks.
    audit: Vec<AuditRecord>,
    /// The last revision handed out.
    revision: u64,
    /// The last audit sequence number handed out.
    audit_seq: u64,
    dirty: bool,
}

impl Writer {
    pub fn new(
        tree: sled::Tree,
        shared: Arc<Shared>,
        max_batch: usize,
        durability: Option<Durability>,
    ) -> Self {
        Self {
            tree,
            shared,
            max_batch,
            durability,
        }
    }

    /// Serves requests until every sender is gone.
    pub fn run(self, mut rx: mpsc::Receiver<Request>) {
        let mut pending = Vec::with_capacity(self.max_batch);
        let mut exclusive = None;
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Write { job, reply } => pending.push((job, reply)),
                    Request::Exclusive(task) => {
                        // Runs after the writes that arrived before it.
                        exclusive = Some(task);
                        break;
                    }
                }
                if pending.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !pending.is_empty() {
                self.commit_group(&mut pending);
            }
            if let Some(task) = exclusive.take() {
                if catch_unwind(AssertUnwindSafe(|| task(&self))).is_err() {
                    tracing::error!("a maintenance task panicked");
                }
            }
        }
        tracing::debug!("writer stopped");
    }

    fn commit_group(&self, pending: &mut Vec<(Job, oneshot::Sender<Result<Committed, TxnError>>)>) {
        let prev_revision = self.shared.revision.load(Ordering::Acquire);
        let mut group = Group {
            batch: sled::Batch::default(),
            overlay: Overlay::new(),
            apps: Vec::new(),
            events: Vec::new(),
            audit: Vec::new(),
            revision: prev_revision,
            audit_seq: self.shared.audit_seq.load(Ordering::Acquire),
            dirty: false,
        };
        let now = self.shared.clock.now_ms();
        let mut replies = Vec::with_capacity(pending.len());
        for (job, reply) in pending.drain(..) {
            let view = GroupView {
                writer: self,
                overlay: &group.overlay,
            };
            let planned = catch_unwind(AssertUnwindSafe(|| job(&view))).unwrap_or_else(|_| {
                Err(StoreError::Internal("a write job panicked".into()).into())
            });
            let result =
                planned.and_then(|set| self.stage(&mut group, set, now).map_err(TxnError::from));
            replies.push((reply, result));
        }

        let jobs = replies.len();
        let mut failure = None;
        if group.dirty {
            group
                .batch
                .insert(codec::REVISION_KEY, &codec::encode_u64(group.revision));
            let events =
                self.shared.event_count.load(Ordering::Acquire) + group.events.len() as u64;
            group
                .batch
                .insert(codec::EVENTS_KEY, &codec::encode_u64(events));
            group
                .batch
                .insert(codec::AUDIT_SEQ_KEY, &codec::encode_u64(group.audit_seq));
            let audit_seq = group.audit_seq;
            // The log: a few chunk values for the whole group, not a key per
            // event and two per audit record.
            for (last, value) in codec::event_chunks(&group.events) {
                group.batch.insert(&codec::event_key(last), value);
            }
            for (records, value) in codec::audit_chunks(&group.audit) {
                let last = records[records.len() - 1].seq;
                group.batch.insert(&codec::audit_key(last), value);
                let mut apps: Vec<&AppId> = records.iter().map(|r| &r.entry.app).collect();
                apps.sort_unstable();
                apps.dedup();
                for app in apps {
                    group
                        .batch
                        .insert(codec::audit_index_key(app, last), &[][..]);
                }
            }
            let started = std::time::Instant::now();
            if let Err(e) = self.tree.apply_batch(group.batch) {
                // Nothing of the group was applied: its revisions can be handed out again.
                tracing::error!(error = %e, jobs, "group commit failed");
                self.shared.failed.store(true, Ordering::Release);
                failure = Some(e);
            } else {
                // Applied: the changes are visible, so publish them even if the flush
                // fails (their callers then learn the outcome is unknown).
                if let Err(e) = self.make_durable() {
                    tracing::error!(error = %e, jobs, "flush failed; writes not acknowledged");
                    self.shared.failed.store(true, Ordering::Release);
                    failure = Some(e);
                }
                self.shared.audit_seq.store(audit_seq, Ordering::Release);
                if let Some(observer) = &self.shared.observer {
                    observer.group_committed(jobs, group.events.len(), started.elapsed());
                }
                self.publish(
                    group.apps,
                    Published {
                        prev_revision,
                        revision: group.revision,
                        events: group.events,
                    },
                );
                tracing::trace!(jobs, revision = group.revision, "group committed");
            }
        }
        for (reply, result) in replies {
            let result = match &failure {
                Some(e) => result.and_then(|_| Err(StoreError::from(e.clone()).into())),
                None => result,
            };
            // A caller that went away no longer needs its answer; the write stands.
            let _ = reply.send(result);
        }
    }

    /// sled's flush (its log written, ended by `sync_file_range`), then an
    /// `fdatasync` of the log so the group survives a power cut too. Nothing
    /// when `flush_on_commit` is off.
    fn make_durable(&self) -> Result<(), sled::Error> {
        let Some(durability) = &self.durability else {
            return Ok(());
        };
        self.tree.flush()?;
        durability.sync().map_err(sled::Error::Io)
    }

    /// Makes a committed group visible to readers.
    fn publish(&self, apps: Vec<(AppId, Option<Arc<App>>)>, group: Published) {
        match self.shared.apps.write() {
            Ok(mut index) => {
                for (id, app) in apps {
                    match app {
                        Some(app) => index.insert(id, app),
                        None => index.remove(&id),
                    };
                }
            }
            Err(_) => tracing::error!("app index poisoned; app changes not visible until restart"),
        }
        self.shared
            .event_count
            .fetch_add(group.events.len() as u64, Ordering::AcqRel);
        self.shared
            .revision
            .store(group.revision, Ordering::Release);
        // No receivers is fine: nobody is watching.
        let _ = self.shared.published.send(Arc::new(group));
    }

    /// Stages one job's write set, giving each change the next revision.
    fn stage(&self, group: &mut Group, set: WriteSet, now: u64) -> Result<Committed, StoreError> {
        let mut committed = Committed {
            revision: group.revision,
            ..Committed::default()
        };
        let put = |group: &mut Group, key: Vec<u8>, value: Option<Vec<u8>>| {
            match &value {
                Some(v) => group.batch.insert(key.as_slice(), v.as_slice()),
                None => group.batch.remove(key.as_slice()),
            }
            group.overlay.insert(key, value);
            group.dirty = true;
        };
        // Whose stored state this job may create or remove: the per-user
        // index is brought in line for them once the job is staged.
        let touched = touched_subjects(&set);
        let erasure = set.erasure.clone();
        let next = |group: &mut Group| -> Result<u64, StoreError> {
            group.revision = group
                .revision
                .checked_add(1)
                .ok_or_else(|| StoreError::Internal("revision counter exhausted".into()))?;
            Ok(group.revision)
        };

        match set.app {
            Some(AppWrite::Put(mut app)) => {
                app.revision = next(group)?;
                app.updated_at_ms = now;
                put(
                    group,
                    codec::app_key(&app.id),
                    Some(codec::encode_app(&app)),
                );
                let app = Arc::new(app);
                group.apps.push((app.id.clone(), Some(app.clone())));
                committed.app = Some(app);
                committed.revision = group.revision;
            }
            Some(AppWrite::Delete(id)) => {
                next(group)?;
                put(group, codec::app_key(&id), None);
                group.apps.push((id, None));
                committed.revision = group.revision;
            }
            None => {}
        }

        for Subject { app, user } in set.forget {
            put(group, codec::privacy_key(&app, &user), None);
            for key in self.keys_under(group, &codec::user_nag_prefix(&app, &user))? {
                put(group, key, None);
            }
        }
        if let Some((Subject { app, user }, answer)) = set.privacy {
            committed.revision = next(group)?;
            put(
                group,
                codec::privacy_key(&app, &user),
                answer.as_ref().map(codec::encode_privacy),
            );
        }
        for timer in &set.cleared_timers {
            let key = codec::decision_key(&timer.subject.app, &timer.subject.user, timer.scope);
            put(group, codec::timer_key(timer.expires_at_ms, &key), None);
        }
        for (subject, change) in set.changes {
            let revision = next(group)?;
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
                // The old timer, if any, goes stale: the decision changed.
                put(group, codec::timer_key(at, &key), Some(Vec::new()));
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
            put(group, key, value);
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
            group.events.push(event.clone());
            committed.events.push(event);
            committed.revision = revision;
        }
        for (subject, scope, lifetime) in set.renew {
            let key = codec::decision_key(&subject.app, &subject.user, scope);
            let Some(raw) = self.staged_or_stored_in(group, &key)? else {
                continue;
            };
            let mut decision = codec::decode_decision(&raw)?;
            if let Some(at) = lifetime.expires_at_ms() {
                // The old timer goes stale: it no longer matches the decision.
                put(group, codec::timer_key(at, &key), Some(Vec::new()));
            }
            decision.lifetime = lifetime;
            put(group, key, Some(codec::encode_decision(&decision)));
        }
        if let Some((subject, scope, state)) = set.nag {
            put(
                group,
                codec::nag_key(&subject.app, &subject.user, scope),
                state.as_ref().map(codec::encode_nag),
            );
        }
        for entry in set.audit {
            group.audit_seq += 1;
            group.audit.push(AuditRecord {
                seq: group.audit_seq,
                time_ms: now,
                revision: committed.revision,
                entry,
            });
            group.dirty = true;
        }
        for (key, value) in sled_users::index_updates(&self.tree, &group.overlay, &touched)? {
            put(group, key, value);
        }
        if let Some(e) = erasure {
            let marker = sled_users::Marker {
                user: e.user,
                pseudonym: e.pseudonym,
                revision: group.revision,
                audit_seq: group.audit_seq,
            };
            put(
                group,
                sled_users::marker_key(&marker.pseudonym),
                Some(sled_users::encode_marker(&marker)),
            );
        }
        Ok(committed)
    }
}

/// The subjects whose decisions, privacy answer or anti-nag state `set` writes.
fn touched_subjects(set: &WriteSet) -> std::collections::BTreeSet<Subject> {
    let mut touched: std::collections::BTreeSet<Subject> =
        set.changes.iter().map(|(s, _)| s.clone()).collect();
    touched.extend(set.forget.iter().cloned());
    touched.extend(set.privacy.iter().map(|(s, _)| s.clone()));
    touched.extend(set.nag.iter().map(|(s, _, _)| s.clone()));
    touched
}

impl Writer {
    /// Every key under `prefix` as a group being staged sees it.
    fn keys_under(&self, group: &Group, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys: Vec<Vec<u8>> = self
            .tree
            .scan_prefix(prefix)
            .keys()
            .map(|k| k.map(|k| k.to_vec()))
            .collect::<Result<_, _>>()?;
        for (key, value) in group.overlay.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match value {
                Some(_) => keys.push(key.clone()),
                None => keys.retain(|k| k != key),
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// A key's value as a group being staged sees it.
    fn staged_or_stored_in(
        &self,
        group: &Group,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        staged_or_stored(&self.tree, &group.overlay, key)
    }
}

/// Committed state plus the group's staged overlay.
struct GroupView<'a> {
    writer: &'a Writer,
    overlay: &'a Overlay,
}

impl GroupView<'_> {
    /// Applies staged entries under `prefix` on top of committed decisions.
    fn overlay_decisions(
        &self,
        prefix: &[u8],
        mut apply: impl FnMut(&[u8], Option<DecisionState>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for (key, value) in self.overlay.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            let state = value
                .as_deref()
                .map(codec::decode_decision)
                .transpose()?
                .map(|d| d.state);
            apply(&key[prefix.len()..], state)?;
        }
        Ok(())
    }
}

impl View for GroupView<'_> {
    fn subject(
        &self,
        app: &AppId,
        user: &UserId,
        query: &StateQuery,
    ) -> Result<SubjectState, StoreError> {
        let staged = Staged {
            tree: &self.writer.tree,
            overlay: self.overlay,
        };
        sled_read::subject(&staged, app, user, query)
    }

    fn due_timers(&self, now_ms: u64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        // Timers staged in this group are not due yet in practice; a stale or
        // cleared one is checked against the decision by the job anyway.
        let mut timers = read_due_timers(&self.writer.tree, now_ms, limit)?;
        timers.retain(|t| {
            let key = codec::decision_key(&t.subject.app, &t.subject.user, t.scope);
            !matches!(
                self.overlay.get(&codec::timer_key(t.expires_at_ms, &key)),
                Some(None)
            )
        });
        Ok(timers)
    }

    fn app(&self, id: &AppId) -> Result<Option<Arc<App>>, StoreError> {
        if let Some(staged) = self.overlay.get(&codec::app_key(id)) {
            return staged
                .as_deref()
                .map(|raw| codec::decode_app(raw).map(Arc::new))
                .transpose();
        }
        let apps = self
            .writer
            .shared
            .apps
            .read()
            .map_err(|_| StoreError::Internal("app index poisoned".into()))?;
        Ok(apps.get(id).cloned())
    }

    fn subjects_with_user_state(&self, app: &AppId) -> Result<Vec<Subject>, StoreError> {
        let staged = Staged {
            tree: &self.writer.tree,
            overlay: self.overlay,
        };
        let mut users = std::collections::BTreeSet::new();
        for prefix in [codec::app_privacy_prefix(app), codec::app_nag_prefix(app)] {
            staged.scan(&prefix, &mut |key, _| {
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

    fn user_apps(&self, user: &UserId) -> Result<Vec<AppId>, StoreError> {
        let staged = Staged {
            tree: &self.writer.tree,
            overlay: self.overlay,
        };
        sled_users::user_apps(&staged, user, None, usize::MAX)
    }

    fn app_decisions(&self, app: &AppId) -> Result<Vec<(UserId, UserDecisions)>, StoreError> {
        let prefix = codec::app_decisions_prefix(app);
        let mut users: BTreeMap<UserId, UserDecisions> = BTreeMap::new();
        for item in self.writer.tree.scan_prefix(&prefix) {
            let (key, value) = item?;
            let (user, scope) = codec::split_user_scope(&key[prefix.len()..])?;
            users
                .entry(user)
                .or_default()
                .insert(scope, codec::decode_decision(&value)?.state);
        }
        self.overlay_decisions(&prefix, |tail, state| {
            let (user, scope) = codec::split_user_scope(tail)?;
            let decisions = users.entry(user).or_default();
            match state {
                Some(s) => decisions.insert(scope, s),
                None => decisions.remove(&scope),
            };
            Ok(())
        })?;
        users.retain(|_, d| !d.is_empty());
        Ok(users.into_iter().collect())
    }
}

/// A key's value as a group sees it: staged by an earlier job, else committed.
fn staged_or_stored(
    tree: &sled::Tree,
    overlay: &Overlay,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    match overlay.get(key) {
        Some(staged) => Ok(staged.clone()),
        None => Ok(tree.get(key)?.map(|v| v.to_vec())),
    }
}
