//! Log maintenance, run exclusively on the writer: compaction folds trimmed
//! events into the checkpoint (`b/` keys), verification checks
//! checkpoint + log == decisions.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::Ordering,
};

use super::{
    codec, sled_users, sled_writer::Writer, Compaction, Retention, StoreError, Verification,
    MAX_MISMATCHES,
};
use crate::domain::{AppId, DecisionState};

/// Events trimmed per exclusive turn on the writer.
pub const COMPACT_CHUNK: usize = 4096;

/// Trims up to about `limit` audit records that `retention` no longer keeps
/// (oldest first), a chunk at a time: a chunk trimmed whole goes with its
/// index entries; the chunk at the boundary is rewritten with the records it
/// keeps (and loses the index entries of apps it no longer holds). Returns
/// how many went and whether nothing more is to trim.
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
        if removed as usize >= limit {
            done = false;
            break;
        }
        let (key, value) = item?;
        let chunk_last = codec::key_u64(&key)?;
        let records = codec::decode_audit_chunk(&value)?;
        // Records after each one, itself included.
        let kept: Vec<_> = records
            .iter()
            .filter(|r| !retention.drops(last.saturating_sub(r.seq) + 1, r.time_ms, cutoff))
            .cloned()
            .collect();
        let gone = records.len() - kept.len();
        if gone == 0 {
            break;
        }
        removed += gone as u64;
        let apps_kept: BTreeSet<&AppId> = kept.iter().map(|r| &r.entry.app).collect();
        for app in records
            .iter()
            .map(|r| &r.entry.app)
            .collect::<BTreeSet<_>>()
        {
            if !apps_kept.contains(app) {
                batch.remove(codec::audit_index_key(app, chunk_last));
            }
        }
        if kept.is_empty() {
            batch.remove(key);
        } else {
            // The boundary: older records go, newer ones stay.
            batch.insert(key, codec::encode_audit_chunk(&kept));
            break;
        }
    }
    if removed > 0 {
        w.tree.apply_batch(batch)?;
        w.tree.flush()?;
    }
    Ok((removed, done))
}

/// Trims up to about `limit` events that `retention` no longer keeps, a
/// chunk at a time (the chunk at the boundary is rewritten with the events
/// it keeps). Returns what it did and whether nothing more is to trim.
pub fn compact_chunk(
    w: &Writer,
    retention: Retention,
    now_ms: u64,
    limit: usize,
) -> Result<(Compaction, bool), StoreError> {
    let shared = &w.shared;
    let horizon = shared.compacted_through.load(Ordering::Acquire);
    // A pending erasure's scrub finds the user's checkpoint entries through
    // the user's retained events: folding those into the checkpoint before
    // the scrub ran would leave entries naming the user. Compaction waits.
    if w.tree
        .scan_prefix(sled_users::ERASURE_PREFIX)
        .next()
        .is_some()
    {
        tracing::info!("compaction postponed: an erasure's scrub is pending");
        let unchanged = Compaction {
            removed: 0,
            compacted_through: horizon,
        };
        return Ok((unchanged, true));
    }
    let total = shared.event_count.load(Ordering::Acquire);
    let cutoff = retention.age_cutoff(now_ms);

    let mut base: BTreeMap<Vec<u8>, DecisionState> = BTreeMap::new();
    // Chunks to delete, and the boundary chunk to rewrite.
    let mut removed_keys = Vec::new();
    let mut rewrite = None;
    let mut removed = 0u64;
    let mut trimmed = 0u64;
    let mut new_horizon = horizon;
    let mut done = true;
    let chunks = w
        .tree
        .range(codec::event_key(0)..=codec::event_key(u64::MAX));
    'chunks: for item in chunks {
        if removed as usize >= limit {
            done = false;
            break;
        }
        let (key, value) = item?;
        let events = codec::decode_event_chunk(&value)?;
        for (i, event) in events.iter().enumerate() {
            if event.revision > horizon {
                // Events still counted from this one on.
                let remaining = total.saturating_sub(trimmed);
                if !retention.drops(remaining, event.time_ms, cutoff) {
                    if i > 0 {
                        rewrite = Some((key, codec::encode_event_chunk(&events[i..])));
                    }
                    break 'chunks;
                }
                let decision_key = codec::decision_key(&event.app, &event.user, event.scope);
                base.insert(codec::base_key_of(&decision_key), event.new);
                new_horizon = event.revision;
                trimmed += 1;
            }
            // Events at or below the horizon are leftovers of an interrupted
            // compaction: already in the checkpoint (and no longer counted),
            // only to be deleted.
        }
        removed += events.len() as u64;
        removed_keys.push(key);
    }
    if removed_keys.is_empty() && rewrite.is_none() {
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
    checkpoint.insert(
        codec::EVENTS_KEY,
        &codec::encode_u64(total.saturating_sub(trimmed)),
    );
    w.tree.apply_batch(checkpoint)?;
    shared
        .compacted_through
        .store(new_horizon, Ordering::Release);
    shared.event_count.fetch_sub(trimmed, Ordering::AcqRel);

    let mut deletions = sled::Batch::default();
    for key in &removed_keys {
        deletions.remove(key);
    }
    if let Some((key, value)) = rewrite {
        deletions.insert(key, value);
    }
    w.tree.apply_batch(deletions)?;
    w.tree.flush()?;
    Ok((
        Compaction {
            removed: trimmed,
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
    let events = w
        .tree
        .range(codec::event_key(horizon.saturating_add(1))..=codec::event_key(u64::MAX))
        .values()
        .map(|chunk| codec::decode_event_chunk(&chunk?))
        .flat_map(|chunk| match chunk {
            Ok(events) => events.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
        // A chunk at the horizon may still hold compacted events.
        .filter(|e| e.as_ref().map_or(true, |e| e.revision > horizon));
    for e in events {
        let e = e?;
        let revision = e.revision;
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
