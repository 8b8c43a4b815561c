//! The per-user index and user erasure in the sled backend.
//!
//! Keys:
//! - `u/<user>\0<app>` -> (empty): the user has stored state in the app (a
//!   decision, a privacy answer or an anti-nag state). The writer keeps it
//!   exact in the batch of the write that creates or removes the last such
//!   state ([`index_updates`]); `Admin/Verify` checks it both ways
//!   ([`verify_index`]); format 4's migration builds it ([`build_index`]).
//! - `x/<pseudonym>` -> an erasure whose scrub is pending: the revision and
//!   the audit sequence number of the erasing write (u64 BE each), then the
//!   erased user id. Written in the erasing write's batch; [`scrub_pending`]
//!   renames the user to the pseudonym in every retained event, checkpoint
//!   entry and audit record up to those numbers, drops the user's stale
//!   timers, and removes the marker in the same batch.

use std::collections::BTreeSet;

use super::{
    codec,
    sled_read::{Kv, Overlay, Staged},
    StoreError,
};
use crate::domain::{AppId, AuditRecord, Event, Subject, UserId};

/// A key to write (`Some` value) or remove (`None`).
pub type Staging = (Vec<u8>, Option<Vec<u8>>);

pub const USER_INDEX_PREFIX: &[u8] = b"u/";
pub const ERASURE_PREFIX: &[u8] = b"x/";

/// Prefix of every index entry of `user`.
pub fn user_prefix(user: &UserId) -> Vec<u8> {
    [USER_INDEX_PREFIX, user.as_str().as_bytes(), b"\0"].concat()
}

pub fn user_app_key(user: &UserId, app: &AppId) -> Vec<u8> {
    [&user_prefix(user)[..], app.as_str().as_bytes()].concat()
}

/// An index key's (user, app).
pub fn split_user_app_key(key: &[u8]) -> Result<(UserId, AppId), StoreError> {
    let corrupt = || {
        StoreError::Corrupt(format!(
            "bad user index key {:?}",
            String::from_utf8_lossy(key)
        ))
    };
    let rest = key.strip_prefix(USER_INDEX_PREFIX).ok_or_else(corrupt)?;
    let nul = rest.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
    let user = std::str::from_utf8(&rest[..nul]).map_err(|_| corrupt())?;
    let app = std::str::from_utf8(&rest[nul + 1..]).map_err(|_| corrupt())?;
    Ok((
        UserId::parse(user).map_err(|_| corrupt())?,
        AppId::parse(app).map_err(|_| corrupt())?,
    ))
}

/// Whether (`app`, `user`) has a decision, a privacy answer or an anti-nag
/// state, as `kv` sees it.
pub fn has_state(kv: &impl Kv, app: &AppId, user: &UserId) -> Result<bool, StoreError> {
    if kv
        .read(&codec::privacy_key(app, user), |_| Ok(()))?
        .is_some()
    {
        return Ok(true);
    }
    let mut found = false;
    for prefix in [
        codec::user_decisions_prefix(app, user),
        codec::user_nag_prefix(app, user),
    ] {
        kv.scan(&prefix, &mut |_, _| {
            found = true;
            Ok(())
        })?;
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `overlay` stages a value (not a removal) for any state of
/// (`app`, `user`): then the state exists without reading the tree.
fn staged_present(overlay: &Overlay, app: &AppId, user: &UserId) -> bool {
    if matches!(overlay.get(&codec::privacy_key(app, user)), Some(Some(_))) {
        return true;
    }
    [
        codec::user_decisions_prefix(app, user),
        codec::user_nag_prefix(app, user),
    ]
    .iter()
    .any(|prefix| {
        overlay
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .any(|(_, v)| v.is_some())
    })
}

/// The index entries to write (`Some`) or remove (`None`) so that the index
/// matches the state of each of `touched` after a job's writes (staged in
/// `overlay`). A write that creates state costs one point read of the
/// index; only one that removes state reads the subject's keys.
pub fn index_updates(
    tree: &sled::Tree,
    overlay: &Overlay,
    touched: &BTreeSet<Subject>,
) -> Result<Vec<Staging>, StoreError> {
    let staged = Staged { tree, overlay };
    let mut out = Vec::new();
    for Subject { app, user } in touched {
        let present = staged_present(overlay, app, user) || has_state(&staged, app, user)?;
        let key = user_app_key(user, app);
        let indexed = staged.read(&key, |_| Ok(()))?.is_some();
        if present != indexed {
            out.push((key, present.then(Vec::new)));
        }
    }
    Ok(out)
}

/// [`index_updates`] for a backend that reads through any [`Kv`] (the etcd
/// writer's in-memory view): every touched subject's keys are read.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub fn index_updates_kv(
    kv: &impl Kv,
    touched: &BTreeSet<Subject>,
) -> Result<Vec<Staging>, StoreError> {
    let mut out = Vec::new();
    for Subject { app, user } in touched {
        let present = has_state(kv, app, user)?;
        let key = user_app_key(user, app);
        let indexed = kv.read(&key, |_| Ok(()))?.is_some();
        if present != indexed {
            out.push((key, present.then(Vec::new)));
        }
    }
    Ok(out)
}

/// The apps `user` has stored state in, in id order, after `after`, at most
/// `limit`, as `kv` sees them.
pub fn user_apps(
    kv: &impl Kv,
    user: &UserId,
    after: Option<&AppId>,
    limit: usize,
) -> Result<Vec<AppId>, StoreError> {
    let prefix = user_prefix(user);
    let mut out = Vec::new();
    kv.scan(&prefix, &mut |key, _| {
        if out.len() < limit {
            let (_, app) = split_user_app_key(key)?;
            if after.is_none_or(|a| app > *a) {
                out.push(app);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// [`user_apps`] on the committed tree: a range read from `after` on.
pub fn user_apps_committed(
    tree: &sled::Tree,
    user: &UserId,
    after: Option<&AppId>,
    limit: usize,
) -> Result<Vec<AppId>, StoreError> {
    let prefix = user_prefix(user);
    let start = match after {
        // The next key after `<prefix><after>`.
        Some(app) => [&user_app_key(user, app)[..], b"\0"].concat(),
        None => prefix.clone(),
    };
    let mut out = Vec::new();
    for key in tree.range(start..).keys().take(limit) {
        let key = key?;
        if !key.starts_with(&prefix) {
            break;
        }
        out.push(split_user_app_key(&key)?.1);
    }
    Ok(out)
}

/// The (user, app) pairs with stored state, derived from the decision,
/// privacy and anti-nag keys.
fn derived_index(tree: &sled::Tree) -> Result<BTreeSet<Vec<u8>>, StoreError> {
    let mut pairs = BTreeSet::new();
    let bad =
        |key: &[u8]| StoreError::Corrupt(format!("bad key {:?}", String::from_utf8_lossy(key)));
    for prefix in [
        codec::DECISION_PREFIX,
        codec::NAG_PREFIX,
        codec::PRIVACY_PREFIX,
    ] {
        let mut last: Option<Vec<u8>> = None;
        for key in tree.scan_prefix(prefix).keys() {
            let key = key?;
            // `<app>\0<user>` then, for decisions and anti-nag, `\0<scope>`.
            let mut parts = key[prefix.len()..].splitn(3, |b| *b == 0);
            let app = parts.next().ok_or_else(|| bad(&key))?;
            let user = parts.next().ok_or_else(|| bad(&key))?;
            let index = [USER_INDEX_PREFIX, user, b"\0", app].concat();
            // Keys of one (app, user) are adjacent: insert each pair once.
            if last.as_ref() != Some(&index) {
                pairs.insert(index.clone());
                last = Some(index);
            }
        }
    }
    Ok(pairs)
}

/// Builds the index from the stored state (format 4's migration), removing
/// entries that no state backs. Idempotent: an interrupted run is redone.
pub fn build_index(tree: &sled::Tree) -> Result<u64, StoreError> {
    let derived = derived_index(tree)?;
    let mut batch = sled::Batch::default();
    let mut written = 0u64;
    for key in tree.scan_prefix(USER_INDEX_PREFIX).keys() {
        let key = key?;
        if !derived.contains(key.as_ref()) {
            batch.remove(key);
        }
    }
    for (i, key) in derived.iter().enumerate() {
        batch.insert(key.as_slice(), &[][..]);
        written += 1;
        if i % 65_536 == 65_535 {
            tree.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(written)
}

/// Compares the index with the state it is derived from, both ways; calls
/// `note` for each difference.
pub fn verify_index(tree: &sled::Tree, mut note: impl FnMut(String)) -> Result<(), StoreError> {
    let mut derived = derived_index(tree)?;
    for key in tree.scan_prefix(USER_INDEX_PREFIX).keys() {
        let key = key?;
        if !derived.remove(key.as_ref()) {
            let (user, app) = split_user_app_key(&key)?;
            note(format!(
                "user index names {user} in {app}, but the user has no stored state there"
            ));
        }
    }
    for key in derived {
        let (user, app) = split_user_app_key(&key)?;
        note(format!(
            "{user} has stored state in {app}, but the user index lacks it"
        ));
    }
    Ok(())
}

/// A pending erasure, as its marker holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub user: UserId,
    pub pseudonym: UserId,
    /// The erasing write's last revision: events up to it are scrubbed.
    pub revision: u64,
    /// The erasing write's last audit sequence number.
    pub audit_seq: u64,
}

pub fn marker_key(pseudonym: &UserId) -> Vec<u8> {
    [ERASURE_PREFIX, pseudonym.as_str().as_bytes()].concat()
}

pub fn encode_marker(m: &Marker) -> Vec<u8> {
    [
        &m.revision.to_be_bytes()[..],
        &m.audit_seq.to_be_bytes(),
        m.user.as_str().as_bytes(),
    ]
    .concat()
}

pub fn decode_marker(key: &[u8], raw: &[u8]) -> Result<Marker, StoreError> {
    let corrupt = || StoreError::Corrupt("bad erasure marker".into());
    let pseudonym = key.strip_prefix(ERASURE_PREFIX).ok_or_else(corrupt)?;
    let id = |raw: &[u8]| {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(corrupt)
    };
    if raw.len() < 17 {
        return Err(corrupt());
    }
    Ok(Marker {
        pseudonym: id(pseudonym)?,
        revision: codec::decode_u64(&raw[..8])?,
        audit_seq: codec::decode_u64(&raw[8..16])?,
        user: id(&raw[16..])?,
    })
}

/// The event chunk `raw` with `m.user` renamed to `m.pseudonym` in every
/// event up to the erasure, and how many; adds the (app, scope) of those
/// events to `pairs`. `None` when no event of the chunk names the user.
/// (The codec's `rewrite_event_chunk` knows the layout.)
fn renamed_events(
    raw: &[u8],
    m: &Marker,
    pairs: &mut BTreeSet<(AppId, crate::domain::Scope)>,
) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    let named = |e: &Event| e.user == m.user && e.revision <= m.revision;
    let events = codec::decode_event_chunk(raw)?;
    let mut n = 0u64;
    for e in events.iter().filter(|e| named(e)) {
        pairs.insert((e.app.clone(), e.scope));
        n += 1;
    }
    if n == 0 {
        return Ok(None);
    }
    let raw = codec::rewrite_event_chunk(raw, |e| {
        if named(e) {
            e.user = m.pseudonym.clone();
        }
    })?;
    Ok(Some((raw, n)))
}

/// Like [`renamed_events`] for an audit chunk: records up to the erasure's
/// audit sequence number; returns how many it renamed.
fn renamed_audit(raw: &[u8], m: &Marker) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    let named = |r: &AuditRecord| r.entry.user.as_ref() == Some(&m.user) && r.seq <= m.audit_seq;
    let n = codec::decode_audit_chunk(raw)?
        .iter()
        .filter(|r| named(r))
        .count() as u64;
    if n == 0 {
        return Ok(None);
    }
    let raw = codec::rewrite_audit_chunk(raw, |r| {
        if named(r) {
            r.entry.user = Some(m.pseudonym.clone());
        }
    })?;
    Ok(Some((raw, n)))
}

/// What one pending erasure's scrub must rewrite: found by reading the
/// whole retained log, audit trail and timers, which needs no exclusive
/// turn (the store keeps serving writes meanwhile).
pub struct ScrubPlan {
    marker: Marker,
    /// Event and audit chunk keys holding a record that names the user, and
    /// timer keys naming the user.
    keys: Vec<sled::IVec>,
}

/// Plans the scrub of every pending erasure. Records up to an erasure are
/// only ever removed or trimmed in place after it (compaction, audit
/// trimming), never moved to other keys, so the planned keys cover every
/// record to rename when the plan is applied later.
///
/// Cost: one read of the retained log up to the erasure, of the audit trail
/// and of the pending timers, bounded by the retention settings and the
/// timed grants, not by the number of users, apps or decisions.
pub fn plan_scrubs(
    tree: &sled::Tree,
    compacted_through: u64,
) -> Result<Vec<ScrubPlan>, StoreError> {
    let mut plans = Vec::new();
    for item in tree.scan_prefix(ERASURE_PREFIX) {
        let (key, value) = item?;
        plans.push(ScrubPlan {
            marker: decode_marker(&key, &value)?,
            keys: Vec::new(),
        });
    }
    for plan in &mut plans {
        let m = &plan.marker;
        // Event chunks are keyed by their last revision: from the first
        // chunk that may hold a retained event, to the one holding the
        // erasure's last event.
        let first = compacted_through.saturating_add(1);
        for item in tree.range(codec::event_key(first)..) {
            let (key, value) = item?;
            if !key.starts_with(codec::EVENT_PREFIX) {
                break;
            }
            if renamed_events(&value, m, &mut BTreeSet::new())?.is_some() {
                plan.keys.push(key.clone());
            }
            if codec::key_u64(&key)? >= m.revision {
                break;
            }
        }
        for item in tree.range(codec::audit_key(0)..) {
            let (key, value) = item?;
            if !key.starts_with(codec::AUDIT_PREFIX) {
                break;
            }
            if renamed_audit(&value, m)?.is_some() {
                plan.keys.push(key.clone());
            }
            if codec::key_u64(&key)? >= m.audit_seq {
                break;
            }
        }
        // Timers whose grant changed since are stale until they come due,
        // and their keys name the user: they go too (the erasure cleared
        // the live ones).
        for key in tree.scan_prefix(codec::TIMER_PREFIX).keys() {
            let key = key?;
            let (_, decision) = codec::split_timer_key(&key)?;
            if codec::split_decision_key(&decision)?.1 == m.user {
                plan.keys.push(key);
            }
        }
    }
    Ok(plans)
}

/// Applies a plan in one atomic batch with the marker's removal, flushed:
/// re-reads only the planned keys (they may have been trimmed since), so
/// the exclusive turn costs the user's records, not the log. Moves the
/// user's checkpoint entries: every one has a retained event of the user
/// (the erasure revoked every decision the checkpoint and log left).
/// Returns how many records were renamed or removed; 0 when the erasure
/// was finished already.
pub fn apply_scrub(tree: &sled::Tree, plan: &ScrubPlan) -> Result<u64, StoreError> {
    let m = &plan.marker;
    if tree.get(marker_key(&m.pseudonym))?.is_none() {
        return Ok(0);
    }
    let mut batch = sled::Batch::default();
    let mut n = 0u64;
    let mut pairs = BTreeSet::new();
    for key in &plan.keys {
        let Some(value) = tree.get(key)? else {
            continue;
        };
        let renamed = if key.starts_with(codec::EVENT_PREFIX) {
            renamed_events(&value, m, &mut pairs)?
        } else if key.starts_with(codec::AUDIT_PREFIX) {
            renamed_audit(&value, m)?
        } else {
            batch.remove(key.clone());
            n += 1;
            continue;
        };
        if let Some((raw, renamed)) = renamed {
            batch.insert(key.clone(), raw);
            n += renamed;
        }
    }
    for (app, scope) in &pairs {
        let from = codec::base_key_of(&codec::decision_key(app, &m.user, *scope));
        if let Some(state) = tree.get(&from)? {
            let to = codec::base_key_of(&codec::decision_key(app, &m.pseudonym, *scope));
            batch.remove(from);
            batch.insert(to, state);
            n += 1;
        }
    }
    batch.remove(marker_key(&m.pseudonym));
    tree.apply_batch(batch)?;
    tree.flush()?;
    tracing::info!(pseudonym = %m.pseudonym, renamed = n, "erasure scrubbed: the retained log and audit trail no longer name the user");
    Ok(n)
}

/// Plans and applies every pending erasure's scrub at once (opening the
/// store, before anything is served). Returns how many records went.
pub fn scrub_pending(tree: &sled::Tree, compacted_through: u64) -> Result<u64, StoreError> {
    let mut renamed = 0;
    for plan in plan_scrubs(tree, compacted_through)? {
        renamed += apply_scrub(tree, &plan)?;
    }
    Ok(renamed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_round_trip_and_nest_under_the_user() {
        let (u, a) = (UserId::parse("u-1").unwrap(), AppId::parse("wxa").unwrap());
        let key = user_app_key(&u, &a);
        assert!(key.starts_with(&user_prefix(&u)));
        assert_eq!(split_user_app_key(&key).unwrap(), (u.clone(), a));
        // Another user whose id extends this one's is not under its prefix.
        let longer = UserId::parse("u-10").unwrap();
        let other = user_app_key(&longer, &AppId::parse("wxa").unwrap());
        assert!(!other.starts_with(&user_prefix(&u)));
        assert!(split_user_app_key(b"u/no-nul").is_err());
    }

    #[test]
    fn markers_round_trip() {
        let m = Marker {
            user: UserId::parse("alice").unwrap(),
            pseudonym: UserId::parse("erased-0123").unwrap(),
            revision: 42,
            audit_seq: 7,
        };
        let raw = encode_marker(&m);
        assert_eq!(decode_marker(&marker_key(&m.pseudonym), &raw).unwrap(), m);
        assert!(decode_marker(&marker_key(&m.pseudonym), &raw[..16]).is_err());
    }
}
