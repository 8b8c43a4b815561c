//! Reads shared by the store's readers (the committed tree) and the
//! writer's jobs (the tree plus what earlier jobs of the group staged):
//! one decoder per record kind, whichever side reads.

use std::collections::BTreeMap;

use super::{codec, StoreError, Timer};
use crate::domain::{AppId, StateQuery, Subject, SubjectState, UserId};

/// Told each (key, value) of a scan.
pub(super) type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// Raw keys and values, committed or as a group being staged sees them.
pub(super) trait Kv {
    /// Decodes the value of `key`, if there is one.
    fn read<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError>;
    /// Visits every (key, value) under `prefix`, in key order.
    fn scan(&self, prefix: &[u8], visit: &mut Visit<'_>) -> Result<(), StoreError>;
}

impl Kv for sled::Tree {
    fn read<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.get(key)?.map(|raw| decode(&raw)).transpose()
    }

    fn scan(&self, prefix: &[u8], visit: &mut Visit<'_>) -> Result<(), StoreError> {
        for item in self.scan_prefix(prefix) {
            let (key, value) = item?;
            visit(&key, &value)?;
        }
        Ok(())
    }
}

/// Raw key -> new value (None = removed), staged by earlier jobs of a group.
pub(super) type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Committed state (`tree`: the sled tree, or any other [`Kv`], e.g. the
/// etcd writer's view of its group) with staged writes on top.
pub(super) struct Staged<'a, K = sled::Tree> {
    pub tree: &'a K,
    pub overlay: &'a Overlay,
}

impl<K: Kv> Kv for Staged<'_, K> {
    fn read<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match self.overlay.get(key) {
            Some(staged) => staged.as_deref().map(decode).transpose(),
            None => self.tree.read(key, decode),
        }
    }

    fn scan(&self, prefix: &[u8], visit: &mut Visit<'_>) -> Result<(), StoreError> {
        let staged_here = self
            .overlay
            .range(prefix.to_vec()..)
            .next()
            .is_some_and(|(key, _)| key.starts_with(prefix));
        if !staged_here {
            // Nothing staged under the prefix (the common case): no copies.
            return self.tree.scan(prefix, visit);
        }
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        self.tree.scan(prefix, &mut |key, value| {
            merged.insert(key.to_vec(), Some(value.to_vec()));
            Ok(())
        })?;
        for (key, value) in self.overlay.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            merged.insert(key.clone(), value.clone());
        }
        for (key, value) in &merged {
            if let Some(value) = value {
                visit(key, value)?;
            }
        }
        Ok(())
    }
}

/// Everything `query` asks for about (`app`, `user`).
pub(super) fn subject(
    kv: &impl Kv,
    app: &AppId,
    user: &UserId,
    query: &StateQuery,
) -> Result<SubjectState, StoreError> {
    let mut state = SubjectState::default();
    match &query.scopes {
        Some(scopes) => {
            for &scope in scopes {
                let key = codec::decision_key(app, user, scope);
                if let Some(d) = kv.read(&key, codec::decode_decision)? {
                    state.records.insert(scope, d);
                }
                if query.nag {
                    if let Some(n) =
                        kv.read(&codec::nag_key(app, user, scope), codec::decode_nag)?
                    {
                        state.nag.insert(scope, n);
                    }
                }
            }
        }
        None => {
            let prefix = codec::user_decisions_prefix(app, user);
            kv.scan(&prefix, &mut |key, value| {
                let scope = codec::decode_scope(&key[prefix.len()..])?;
                state.records.insert(scope, codec::decode_decision(value)?);
                Ok(())
            })?;
            if query.nag {
                let prefix = codec::user_nag_prefix(app, user);
                kv.scan(&prefix, &mut |key, value| {
                    let scope = codec::decode_scope(&key[prefix.len()..])?;
                    state.nag.insert(scope, codec::decode_nag(value)?);
                    Ok(())
                })?;
            }
        }
    }
    if query.privacy {
        state.privacy = kv.read(&codec::privacy_key(app, user), codec::decode_privacy)?;
    }
    Ok(state)
}

/// Timers due at `now_ms`, earliest first.
pub(super) fn read_due_timers(
    tree: &sled::Tree,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<Timer>, StoreError> {
    let mut out = Vec::new();
    for item in tree
        .range(codec::TIMER_PREFIX.to_vec()..codec::timers_due_bound(now_ms))
        .take(limit)
    {
        let (key, _) = item?;
        let (expires_at_ms, decision_key) = codec::split_timer_key(&key)?;
        let (app, user, scope) = codec::split_decision_key(&decision_key)?;
        out.push(Timer {
            expires_at_ms,
            subject: Subject { app, user },
            scope,
        });
    }
    Ok(out)
}
