//! Log maintenance, run exclusively on the writer: compaction folds trimmed
//! events into the checkpoint (`b/` keys), verification checks
//! checkpoint + log == decisions.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use super::{
    codec, sled_users, sled_writer::Writer, Compaction, Retention, StoreError, Verification,
    MAX_MISMATCHES,
};
use crate::domain::DecisionState;

/// Events trimmed per exclusive turn on the writer.
pub const COMPACT_CHUNK: usize = 4096;

/// Trims up to `limit` audit records that `retention` no longer keeps
/// (oldest first), with their index entries. Returns how many went and
/// whether nothing more is to trim.
pub fn trim_audit_chunk(
    w: &Writer,
    retention: Retention,
    now_ms: u64,
    limit: usize,
) -> Result<(u64, bool), StoreError> {
    let last = w.shared.audit_seq.load(Ordering::Acquire);
    let cutoff = retention.age_cutoff(now_ms);
    let mut batch = sled::Batch::default();
    let mut removed = 0u64;
    let mut done = true;
    for item in w
        .tree
        .range(codec::audit_key(0)..=codec::audit_key(u64::MAX))
    {
        if removed as usize == limit {
            done = false;
            break;
        }
        let (key, value) = item?;
        let record = codec::decode_audit(&value)?;
        // Records after this one, this one included.
        let remaining = last.saturating_sub(record.seq) + 1;
        if !retention.drops(remaining, record.time_ms, cutoff) {
            break;
        }
        batch.remove(key);
        batch.remove(codec::audit_index_key(&record.entry.app, record.seq));
        removed += 1;
    }
    if removed > 0 {
        w.tree.apply_batch(batch)?;
        w.tree.flush()?;
    }
    Ok((removed, done))
}

/// Trims up to `limit` events that `retention` no longer keeps. Returns what
/// it did and whether nothing more is to trim.
pub fn compact_chunk(
    w: &Writer,
    retention: Retention,
    now_ms: u64,
    limit: usize,
) -> Result<(Compaction, bool), StoreError> {
    let shared = &w.shared;
    let horizon = shared.compacted_through.load(Ordering::Acquire);
    let total = shared.event_count.load(Ordering::Acquire);
    let cutoff = retention.age_cutoff(now_ms);

    let mut base: BTreeMap<Vec<u8>, DecisionState> = BTreeMap::new();
    let mut removed_keys = Vec::new();
    let mut new_horizon = horizon;
    let mut done = true;
    let events = w
        .tree
        .range(codec::event_key(0)..=codec::event_key(u64::MAX));
    for (seen, item) in events.enumerate() {
        if seen == limit {
            done = false;
            break;
        }
        let (key, value) = item?;
        let revision = codec::decode_u64(&key[codec::EVENT_PREFIX.len()..])?;
        if revision > horizon {
            let remaining = total - removed_keys.len() as u64;
            let event = codec::decode_event(revision, &value)?;
            if !retention.drops(remaining, event.time_ms, cutoff) {
                break;
            }
            let decision_key = codec::decision_key(&event.app, &event.user, event.scope);
            base.insert(codec::base_key_of(&decision_key), event.new);
            new_horizon = revision;
        }
        // Events at or below the horizon are leftovers of an interrupted
        // compaction: already in the checkpoint, only to be deleted.
        removed_keys.push(key);
    }
    if removed_keys.is_empty() {
        return Ok((
            Compaction {
                removed: 0,
                compacted_through: horizon,
            },
            true,
        ));
    }

    // First the checkpoint and the new horizon, then the deletions: a reader
    // that sees an event missing also sees the horizon that explains it.
    let mut checkpoint = sled::Batch::default();
    for (key, state) in &base {
        match state {
            DecisionState::NotDetermined => checkpoint.remove(key.as_slice()),
            s => checkpoint.insert(key.as_slice(), &[codec::state_code(*s)]),
        }
    }
    checkpoint.insert(codec::COMPACTED_KEY, &codec::encode_u64(new_horizon));
    w.tree.apply_batch(checkpoint)?;
    shared
        .compacted_through
        .store(new_horizon, Ordering::Release);

    let mut deletions = sled::Batch::default();
    for key in &removed_keys {
        deletions.remove(key);
    }
    let remaining = total.saturating_sub(removed_keys.len() as u64);
    deletions.insert(codec::EVENTS_KEY, &codec::encode_u64(remaining));
    w.tree.apply_batch(deletions)?;
    w.tree.flush()?;
    let removed = removed_keys.len() as u64;
    shared.event_count.fetch_sub(removed, Ordering::AcqRel);
    Ok((
        Compaction {
            removed,
            compacted_through: new_horizon,
        },
        done,
    ))
}

/// Folds the retained log over the checkpoint and compares the result with
/// the stored decisions. Also checks that every event starts from the state
/// the previous one left.
pub fn verify(w: &Writer) -> Result<Verification, StoreError> {
    let horizon = w.shared.compacted_through.load(Ordering::Acquire);
    let mut report = Verification {
        compacted_through: horizon,
        revision: w.shared.revision.load(Ordering::Acquire),
        ..Verification::default()
    };
    let note = |report: &mut Verification, m: String| {
        if report.mismatches.len() < MAX_MISMATCHES {
            report.mismatches.push(m);
        }
    };

    // Keyed by the shared tail `<app>\0<user>\0<scope>`.
    let mut folded: BTreeMap<Vec<u8>, DecisionState> = BTreeMap::new();
    for item in w.tree.scan_prefix(codec::BASE_PREFIX) {
        let (key, value) = item?;
        let state = value
            .first()
            .copied()
            .map(codec::state_from)
            .transpose()?
            .unwrap_or_default();
        folded.insert(key[codec::BASE_PREFIX.len()..].to_vec(), state);
    }
    let mut last = horizon;
    for item in w
        .tree
        .range(codec::event_key(horizon.saturating_add(1))..=codec::event_key(u64::MAX))
    {
        let (key, value) = item?;
        let revision = codec::decode_u64(&key[codec::EVENT_PREFIX.len()..])?;
        let e = codec::decode_event(revision, &value)?;
        report.retained_events += 1;
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

    for item in w.tree.scan_prefix(codec::DECISION_PREFIX) {
        let (key, value) = item?;
        report.decisions += 1;
        let stored = codec::decode_decision(&value)?.state;
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
    sled_users::verify_index(&w.tree, |m| note(&mut report, m))?;
    Ok(report)
}

fn describe(tail: &[u8]) -> String {
    String::from_utf8_lossy(tail).replace('\0', " ")
}
