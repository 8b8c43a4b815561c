//! Key and value encoding of the single sled tree.
//!
//! Keys (ids never contain NUL: they are validated printable):
//! - `a/<app>`                        -> app registration (JSON)
//! - `d/<app>\0<user>\0<scope>`       -> decision (19 bytes; longer with a lifetime)
//! - `t/<expires_at: u64 BE><app>\0<user>\0<scope>` -> (empty) timer of a
//!   timed or one-time grant; stale timers (the decision changed since) are
//!   dropped when they come due
//! - `E/<last revision: u64 BE>`      -> event chunk: the events of one group
//!   commit (or a slice of a large one), in revision order, keyed by the
//!   last one's revision (see [`encode_event_chunk`])
//! - `b/<app>\0<user>\0<scope>`       -> checkpoint: the decision as of
//!   `m/compacted_through` (one state byte); the log folds on top of it
//! - `p/<app>\0<user>`               -> the user's privacy-guide answer (18 bytes)
//! - `A/<last seq: u64 BE>`           -> audit chunk: the audit records of one
//!   group commit (or a slice), in sequence order, keyed by the last one's
//!   sequence number (see [`encode_audit_chunk`])
//! - `I/<app>\0<last seq: u64 BE>`    -> (empty) the audit chunk `A/<last seq>`
//!   holds records of `app`: one entry per (app, chunk), not per record
//! - `n/<app>\0<user>\0<scope>`       -> anti-nag state (12 bytes)
//! - `u/<user>\0<app>`, `x/<pseudonym>` -> the per-user index and pending
//!   erasures (format 5; see `sled_users.rs`)
//! - `m/revision`, `m/format`, `m/compacted_through`, `m/events`,
//!   `m/audit_seq` -> metadata (u64 BE)
//!
//! Format 4 packs the log: up to format 3 every event was a key of its own
//! (`e/<revision>`), and so was every audit record (`l/<seq>`, binary since
//! format 3, JSON before) with its index entry (`i/<app>\0<seq>`): four sled
//! inserts per recorded answer (decision, event, record, index) where format
//! 4 makes one plus a few per group commit. Opening a format-3 data dir
//! migrates those keys into chunks ([`OLD_EVENT_PREFIX`] and friends are kept
//! for that).
//!
//! Chunks are at most [`CHUNK_BYTES`] (a single item may make one larger).
//! sled 0.34 writes a log item over a quarter of a segment (128 KiB) to a
//! blob file of its own, which it never fsyncs and the commit's `fdatasync`
//! of the log does not cover; a leaf page holds up to 17 entries and is
//! rewritten whole to the log when it is consolidated (every 10 updates) or
//! cleaned, so 17 chunks must stay well under 128 KiB.
//!
//! A chunk is rewritten in place (same key) when retention trims part of it,
//! and by whoever must change logged records without renumbering them (a
//! user's erasure): [`rewrite_event_chunk`] and [`rewrite_audit_chunk`]
//! decode a chunk, let the caller change each record, and encode it again.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{
    App, AppId, AppKind, AuditAction, AuditEntry, AuditRecord, Cause, Client, Decision,
    DecisionState, Declarations, Event, Lifetime, NagState, PrivacyGuide, PrivacyState, Scope,
    SessionId, UserId, Version, MAX_VERSION_SEGMENTS,
};

pub const APP_PREFIX: &[u8] = b"a/";
pub const DECISION_PREFIX: &[u8] = b"d/";
/// Event chunks (format 4).
pub const EVENT_PREFIX: &[u8] = b"E/";
/// One event per key, up to format 3 (read by the migration only).
pub const OLD_EVENT_PREFIX: &[u8] = b"e/";
pub const BASE_PREFIX: &[u8] = b"b/";
pub const TIMER_PREFIX: &[u8] = b"t/";
pub const PRIVACY_PREFIX: &[u8] = b"p/";
/// Audit chunks (format 4).
pub const AUDIT_PREFIX: &[u8] = b"A/";
/// Audit index: one entry per (app, audit chunk) (format 4).
pub const AUDIT_INDEX_PREFIX: &[u8] = b"I/";
/// One audit record per key, up to format 3 (read by the migration only).
pub const OLD_AUDIT_PREFIX: &[u8] = b"l/";
/// One index entry per audit record, up to format 3 (migration only).
pub const OLD_AUDIT_INDEX_PREFIX: &[u8] = b"i/";
pub const NAG_PREFIX: &[u8] = b"n/";
/// The last audit sequence number handed out.
pub const AUDIT_SEQ_KEY: &[u8] = b"m/audit_seq";
pub const COMPACTED_KEY: &[u8] = b"m/compacted_through";
/// How many events the log holds (kept with every commit and compaction, so
/// opening does not have to count them).
pub const EVENTS_KEY: &[u8] = b"m/events";
pub const REVISION_KEY: &[u8] = b"m/revision";
pub const FORMAT_KEY: &[u8] = b"m/format";

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u64 = 5;

const VALUE_VERSION: u8 = 1;
/// Decision values with a lifetime (permanent ones keep version 1, which
/// every earlier build reads).
const DECISION_WITH_LIFETIME: u8 = 2;
/// Binary audit records (format 3); earlier ones are JSON and start with `{`.
const AUDIT_BINARY: u8 = 2;

pub fn app_key(app: &AppId) -> Vec<u8> {
    [APP_PREFIX, app.as_str().as_bytes()].concat()
}

/// Prefix of every decision of `app`.
pub fn app_decisions_prefix(app: &AppId) -> Vec<u8> {
    [DECISION_PREFIX, app.as_str().as_bytes(), b"\0"].concat()
}

/// Prefix of every decision of (`app`, `user`).
pub fn user_decisions_prefix(app: &AppId, user: &UserId) -> Vec<u8> {
    decision_key_parts(app, user, b"")
}

/// One allocation: every Authorize builds one of these.
pub fn decision_key(app: &AppId, user: &UserId, scope: Scope) -> Vec<u8> {
    decision_key_parts(app, user, scope.name().as_bytes())
}

fn decision_key_parts(app: &AppId, user: &UserId, scope: &[u8]) -> Vec<u8> {
    [
        DECISION_PREFIX,
        app.as_str().as_bytes(),
        b"\0",
        user.as_str().as_bytes(),
        b"\0",
        scope,
    ]
    .concat()
}

/// The checkpoint key of a decision key: same tail, `b/` prefix.
pub fn base_key_of(decision_key: &[u8]) -> Vec<u8> {
    [BASE_PREFIX, &decision_key[DECISION_PREFIX.len()..]].concat()
}

/// The key of the event chunk whose last event has `revision`.
pub fn event_key(revision: u64) -> [u8; 10] {
    prefixed_u64(EVENT_PREFIX, revision)
}

fn prefixed_u64(prefix: &[u8], n: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(prefix);
    key[2..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The number after a two-byte prefix (event and audit chunk keys).
pub fn key_u64(key: &[u8]) -> Result<u64, StoreError> {
    decode_u64(key.get(2..).unwrap_or_default())
}

/// Splits the tail of a decision key after `app\0` into (user, scope).
pub fn split_user_scope(tail: &[u8]) -> Result<(UserId, Scope), StoreError> {
    let corrupt = || {
        StoreError::Corrupt(format!(
            "bad decision key tail {:?}",
            String::from_utf8_lossy(tail)
        ))
    };
    let nul = tail.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
    let user = std::str::from_utf8(&tail[..nul]).map_err(|_| corrupt())?;
    let scope = decode_scope(&tail[nul + 1..])?;
    Ok((UserId::parse(user).map_err(|_| corrupt())?, scope))
}

pub fn decode_scope(raw: &[u8]) -> Result<Scope, StoreError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!("unknown scope {:?}", String::from_utf8_lossy(raw)))
        })
}

pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn decode_u64(raw: &[u8]) -> Result<u64, StoreError> {
    raw.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("expected 8 bytes, got {}", raw.len())))
}

pub fn state_code(s: DecisionState) -> u8 {
    match s {
        DecisionState::NotDetermined => 0,
        DecisionState::Granted => 1,
        DecisionState::Denied => 2,
    }
}

pub fn state_from(code: u8) -> Result<DecisionState, StoreError> {
    match code {
        0 => Ok(DecisionState::NotDetermined),
        1 => Ok(DecisionState::Granted),
        2 => Ok(DecisionState::Denied),
        other => Err(StoreError::Corrupt(format!(
            "unknown decision state code {other}"
        ))),
    }
}

fn cause_code(c: Cause) -> u8 {
    match c {
        Cause::Popup => 1,
        Cause::Settings => 2,
        Cause::AppRemoved => 3,
        Cause::Operator => 4,
        Cause::Expired => 5,
        Cause::UserReset => 6,
        Cause::UserErased => 7,
    }
}

fn cause_from(code: u8) -> Result<Cause, StoreError> {
    match code {
        1 => Ok(Cause::Popup),
        2 => Ok(Cause::Settings),
        3 => Ok(Cause::AppRemoved),
        4 => Ok(Cause::Operator),
        5 => Ok(Cause::Expired),
        6 => Ok(Cause::UserReset),
        7 => Ok(Cause::UserErased),
        other => Err(StoreError::Corrupt(format!("unknown cause code {other}"))),
    }
}

pub fn encode_decision(d: &Decision) -> Vec<u8> {
    let mut v = Vec::with_capacity(19);
    v.push(VALUE_VERSION);
    v.push(state_code(d.state));
    v.push(cause_code(d.cause));
    v.extend_from_slice(&d.updated_at_ms.to_be_bytes());
    v.extend_from_slice(&d.revision.to_be_bytes());
    match &d.lifetime {
        Lifetime::Permanent => {}
        Lifetime::Until { expires_at_ms } => {
            v[0] = DECISION_WITH_LIFETIME;
            v.push(1);
            v.extend_from_slice(&expires_at_ms.to_be_bytes());
        }
        Lifetime::Session {
            session,
            expires_at_ms,
        } => {
            v[0] = DECISION_WITH_LIFETIME;
            v.push(2);
            v.extend_from_slice(&expires_at_ms.to_be_bytes());
            // Session ids are at most 128 bytes: one length byte.
            v.push(session.as_str().len() as u8);
            v.extend_from_slice(session.as_str().as_bytes());
        }
    }
    v
}

pub fn decode_decision(raw: &[u8]) -> Result<Decision, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("bad decision value of {} bytes", raw.len()));
    let lifetime = match (raw.first(), raw.get(19)) {
        (Some(&VALUE_VERSION), None) if raw.len() == 19 => Lifetime::Permanent,
        (Some(&DECISION_WITH_LIFETIME), Some(1)) if raw.len() == 28 => Lifetime::Until {
            expires_at_ms: decode_u64(&raw[20..28])?,
        },
        (Some(&DECISION_WITH_LIFETIME), Some(2)) if raw.len() > 29 => {
            let len = usize::from(raw[28]);
            let session = raw
                .get(29..)
                .filter(|s| s.len() == len)
                .ok_or_else(corrupt)?;
            let session = std::str::from_utf8(session).map_err(|_| corrupt())?;
            Lifetime::Session {
                session: SessionId::parse(session).map_err(|_| corrupt())?,
                expires_at_ms: decode_u64(&raw[20..28])?,
            }
        }
        _ => return Err(corrupt()),
    };
    Ok(Decision {
        state: state_from(raw[1])?,
        cause: cause_from(raw[2])?,
        updated_at_ms: decode_u64(&raw[3..11])?,
        revision: decode_u64(&raw[11..19])?,
        lifetime,
    })
}

/// The key of the audit chunk whose last record has sequence number `seq`.
pub fn audit_key(seq: u64) -> [u8; 10] {
    prefixed_u64(AUDIT_PREFIX, seq)
}

/// Prefix of the audit index of `app`.
pub fn audit_index_prefix(app: &AppId) -> Vec<u8> {
    [AUDIT_INDEX_PREFIX, app.as_str().as_bytes(), b"\0"].concat()
}

/// The index entry: the audit chunk ending at `last_seq` holds records of `app`.
pub fn audit_index_key(app: &AppId, last_seq: u64) -> Vec<u8> {
    [&audit_index_prefix(app)[..], &last_seq.to_be_bytes()].concat()
}

/// A format-3 audit record's key (the migration tests write old stores).
#[cfg(test)]
pub fn old_audit_key(seq: u64) -> [u8; 10] {
    prefixed_u64(OLD_AUDIT_PREFIX, seq)
}

/// A format-3 event's key (the migration tests write old stores).
#[cfg(test)]
pub fn old_event_key(revision: u64) -> [u8; 10] {
    prefixed_u64(OLD_EVENT_PREFIX, revision)
}

/// A format-3 audit index entry's key (migration).
pub fn old_audit_index_key(app: &AppId, seq: u64) -> Vec<u8> {
    [
        OLD_AUDIT_INDEX_PREFIX,
        app.as_str().as_bytes(),
        b"\0",
        &seq.to_be_bytes(),
    ]
    .concat()
}

/// Most bytes of a chunk value, unless one item alone is larger: a leaf of
/// 17 chunks (sled splits leaves past 16 entries) stays near 70 KiB, under
/// the 128 KiB past which sled writes a page to an unsynced blob file. A
/// group commit at c=64 makes one event chunk and two audit chunks.
pub const CHUNK_BYTES: usize = 4 * 1024;
const CHUNK_VERSION: u8 = 1;

/// Packs items into chunk values of at most [`CHUNK_BYTES`]: a version byte,
/// then each item as a u32 BE length and its bytes. Returns, per chunk, the
/// range of `items` it holds and its value.
fn pack<T>(
    items: &[T],
    mut encode: impl FnMut(&T, &mut Vec<u8>),
) -> Vec<(std::ops::Range<usize>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut value = vec![CHUNK_VERSION];
    for (i, item) in items.iter().enumerate() {
        let at = value.len();
        value.extend_from_slice(&[0; 4]);
        encode(item, &mut value);
        let len = value.len() - at - 4;
        value[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
        if value.len() > CHUNK_BYTES && i > start {
            // This item starts the next chunk.
            let item = value.split_off(at);
            out.push((start..i, std::mem::replace(&mut value, vec![CHUNK_VERSION])));
            value.extend_from_slice(&item);
            start = i;
        }
    }
    if start < items.len() {
        out.push((start..items.len(), value));
    }
    out
}

/// The items of a chunk value, in order.
fn unpack<'a>(raw: &'a [u8], what: &str) -> Result<Vec<&'a [u8]>, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("bad {what} chunk of {} bytes", raw.len()));
    let mut rest = match raw.split_first() {
        Some((&CHUNK_VERSION, rest)) => rest,
        _ => return Err(corrupt()),
    };
    let mut items = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(4).ok_or_else(corrupt)?;
        let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt())?) as usize;
        let (item, tail) = tail.split_at_checked(len).ok_or_else(corrupt)?;
        items.push(item);
        rest = tail;
    }
    Ok(items)
}

fn encode_event_item(e: &Event, v: &mut Vec<u8>) {
    v.extend_from_slice(&e.revision.to_be_bytes());
    v.extend_from_slice(&encode_event(e));
}

/// The events of a group commit as chunk values, each with its key's
/// revision (its last event's). Events are in revision order.
pub fn event_chunks(events: &[Event]) -> Vec<(u64, Vec<u8>)> {
    pack(events, encode_event_item)
        .into_iter()
        .map(|(range, value)| (events[range.end - 1].revision, value))
        .collect()
}

/// One chunk value holding `events` (a rewrite: no split).
pub fn encode_event_chunk(events: &[Event]) -> Vec<u8> {
    let mut v = vec![CHUNK_VERSION];
    for e in events {
        let at = v.len();
        v.extend_from_slice(&[0; 4]);
        encode_event_item(e, &mut v);
        let len = v.len() - at - 4;
        v[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
    }
    v
}

pub fn decode_event_chunk(raw: &[u8]) -> Result<Vec<Event>, StoreError> {
    unpack(raw, "event")?
        .into_iter()
        .map(|item| {
            let (revision, body) = item
                .split_at_checked(8)
                .ok_or_else(|| StoreError::Corrupt("bad event in a chunk".into()))?;
            decode_event(decode_u64(revision)?, body)
        })
        .collect()
}

/// The audit records of a group commit as chunk values, each with the
/// records it holds (for the index). Records are in sequence order.
pub fn audit_chunks(records: &[AuditRecord]) -> Vec<(&[AuditRecord], Vec<u8>)> {
    pack(records, |r, v| v.extend_from_slice(&encode_audit(r)))
        .into_iter()
        .map(|(range, value)| (&records[range], value))
        .collect()
}

/// One chunk value holding `records` (a rewrite: no split).
pub fn encode_audit_chunk(records: &[AuditRecord]) -> Vec<u8> {
    let mut v = vec![CHUNK_VERSION];
    for r in records {
        let raw = encode_audit(r);
        v.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        v.extend_from_slice(&raw);
    }
    v
}

pub fn decode_audit_chunk(raw: &[u8]) -> Result<Vec<AuditRecord>, StoreError> {
    unpack(raw, "audit")?
        .into_iter()
        .map(decode_audit)
        .collect()
}

/// Decodes an event chunk, lets `change` edit each event in place, and
/// encodes it again, to be written back under the same key. Revisions (and
/// so the key) must not change: `change` may rewrite ids, e.g. a user's
/// erasure replacing the user id by a pseudonym.
pub fn rewrite_event_chunk(
    raw: &[u8],
    mut change: impl FnMut(&mut Event),
) -> Result<Vec<u8>, StoreError> {
    let mut events = decode_event_chunk(raw)?;
    for e in &mut events {
        let revision = e.revision;
        change(e);
        e.revision = revision;
    }
    Ok(encode_event_chunk(&events))
}

/// Like [`rewrite_event_chunk`] for an audit chunk. Sequence numbers and
/// apps must not change (the key and the `I/` index entries stay); both are
/// kept whatever `change` does.
pub fn rewrite_audit_chunk(
    raw: &[u8],
    mut change: impl FnMut(&mut AuditRecord),
) -> Result<Vec<u8>, StoreError> {
    let mut records = decode_audit_chunk(raw)?;
    for r in &mut records {
        let (seq, app) = (r.seq, r.entry.app.clone());
        change(r);
        (r.seq, r.entry.app) = (seq, app);
    }
    Ok(encode_audit_chunk(&records))
}

/// Prefix of every anti-nag state of `app`.
pub fn app_nag_prefix(app: &AppId) -> Vec<u8> {
    [NAG_PREFIX, app.as_str().as_bytes(), b"\0"].concat()
}

/// Prefix of every anti-nag state of (`app`, `user`).
pub fn user_nag_prefix(app: &AppId, user: &UserId) -> Vec<u8> {
    [&app_nag_prefix(app)[..], user.as_str().as_bytes(), b"\0"].concat()
}

pub fn nag_key(app: &AppId, user: &UserId, scope: Scope) -> Vec<u8> {
    [&user_nag_prefix(app, user)[..], scope.name().as_bytes()].concat()
}

pub fn encode_nag(n: &NagState) -> Vec<u8> {
    [
        &n.cancels.to_be_bytes()[..],
        &n.embargo_until_ms.to_be_bytes(),
    ]
    .concat()
}

pub fn decode_nag(raw: &[u8]) -> Result<NagState, StoreError> {
    if raw.len() != 12 {
        return Err(StoreError::Corrupt(format!(
            "bad nag value of {} bytes",
            raw.len()
        )));
    }
    Ok(NagState {
        cancels: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
        embargo_until_ms: decode_u64(&raw[4..12])?,
    })
}

/// An audit record as format 2 stored it (JSON), still read.
#[derive(Serialize, Deserialize)]
struct AuditRow {
    seq: u64,
    time_ms: u64,
    revision: u64,
    app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    action: String,
    principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<(String, String, String)>,
}

/// `AUDIT_BINARY`, seq, time, revision (u64 BE each), a flags byte (user,
/// scope, client present), then strings with a one-byte length: action, app,
/// [user], [scope], [platform, then host and sdk version each as a segment
/// count and u32 BE segments], and last the principal with a four-byte
/// length (principal names have no bound).
/// Half the size of the JSON and without its formatting cost, on every
/// decision's write.
pub fn encode_audit(r: &AuditRecord) -> Vec<u8> {
    const USER: u8 = 1;
    const SCOPE: u8 = 2;
    const CLIENT: u8 = 4;
    let e = &r.entry;
    let mut v = Vec::with_capacity(64 + e.principal.len());
    v.push(AUDIT_BINARY);
    for n in [r.seq, r.time_ms, r.revision] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    let flags = (e.user.is_some() as u8 * USER)
        | (e.scope.is_some() as u8 * SCOPE)
        | (e.client.is_some() as u8 * CLIENT);
    v.push(flags);
    // Ids are at most 128 bytes; names, tokens and versions are shorter.
    let short = |v: &mut Vec<u8>, s: &str| {
        v.push(s.len() as u8);
        v.extend_from_slice(s.as_bytes());
    };
    short(&mut v, e.action.name());
    short(&mut v, e.app.as_str());
    if let Some(user) = &e.user {
        short(&mut v, user.as_str());
    }
    if let Some(scope) = e.scope {
        short(&mut v, scope.name());
    }
    if let Some(c) = &e.client {
        short(&mut v, c.platform.token());
        for version in [&c.host_version, &c.sdk_version] {
            // A segment count, then each segment (u32 BE): no formatting.
            let segments = version.segments();
            v.push(segments.len() as u8);
            for s in segments {
                v.extend_from_slice(&s.to_be_bytes());
            }
        }
    }
    let principal = e.principal.as_bytes();
    v.extend_from_slice(&(principal.len() as u32).to_be_bytes());
    v.extend_from_slice(principal);
    v
}

pub fn decode_audit(raw: &[u8]) -> Result<AuditRecord, StoreError> {
    match raw.first() {
        Some(&AUDIT_BINARY) => decode_audit_binary(raw),
        Some(b'{') => decode_audit_json(raw),
        _ => Err(StoreError::Corrupt("bad audit record".into())),
    }
}

fn decode_audit_binary(raw: &[u8]) -> Result<AuditRecord, StoreError> {
    let mut r = Cursor(raw.get(1..).unwrap_or_default());
    let (seq, time_ms, revision) = (r.u64("seq")?, r.u64("time")?, r.u64("revision")?);
    let flags = r.take(1, "flags")?[0];
    let action = r.text(1, "action")?;
    let action = AuditAction::from_name(action).ok_or_else(|| bad_audit("action"))?;
    let app = AppId::parse(r.text(1, "app")?).map_err(|_| bad_audit("app"))?;
    let user = match flags & 1 {
        0 => None,
        _ => Some(UserId::parse(r.text(1, "user")?).map_err(|_| bad_audit("user"))?),
    };
    let scope = match flags & 2 {
        0 => None,
        _ => Some(decode_scope(r.text(1, "scope")?.as_bytes())?),
    };
    let client = match flags & 4 {
        0 => None,
        _ => Some(Client {
            platform: r
                .text(1, "platform")?
                .parse()
                .map_err(|_| bad_audit("platform"))?,
            host_version: r.version("host version")?,
            sdk_version: r.version("sdk version")?,
        }),
    };
    let principal = r.text(4, "principal")?.to_owned();
    if flags & !7 != 0 || !r.0.is_empty() {
        return Err(bad_audit("trailing bytes or unknown flags"));
    }
    Ok(AuditRecord {
        seq,
        time_ms,
        revision,
        entry: AuditEntry {
            app,
            user,
            scope,
            action,
            principal,
            client,
        },
    })
}

fn bad_audit(what: &str) -> StoreError {
    StoreError::Corrupt(format!("bad audit record: {what}"))
}

/// Reads a binary audit record front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], StoreError> {
        let (head, tail) = self.0.split_at_checked(n).ok_or_else(|| bad_audit(what))?;
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self, what: &str) -> Result<u64, StoreError> {
        let bytes = self.take(8, what)?;
        Ok(u64::from_be_bytes(
            bytes.try_into().map_err(|_| bad_audit(what))?,
        ))
    }

    /// A string after its big-endian length of `len_bytes` bytes.
    fn text(&mut self, len_bytes: usize, what: &str) -> Result<&'a str, StoreError> {
        let len = self
            .take(len_bytes, what)?
            .iter()
            .fold(0usize, |n, b| n << 8 | usize::from(*b));
        std::str::from_utf8(self.take(len, what)?).map_err(|_| bad_audit(what))
    }

    /// A segment count, then the segments (u32 BE).
    fn version(&mut self, what: &str) -> Result<Version, StoreError> {
        let n = usize::from(self.take(1, what)?[0]);
        if n > MAX_VERSION_SEGMENTS {
            return Err(bad_audit(what));
        }
        let raw = self.take(4 * n, what)?;
        let mut segments = [0u32; MAX_VERSION_SEGMENTS];
        for (slot, bytes) in segments.iter_mut().zip(raw.chunks_exact(4)) {
            *slot = u32::from_be_bytes(bytes.try_into().map_err(|_| bad_audit(what))?);
        }
        Version::new(&segments[..n]).ok_or_else(|| bad_audit(what))
    }
}

fn decode_audit_json(raw: &[u8]) -> Result<AuditRecord, StoreError> {
    let r: AuditRow = serde_json::from_slice(raw)
        .map_err(|e| StoreError::Corrupt(format!("bad audit record: {e}")))?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("audit record {}: {what}", r.seq));
    let client = match &r.client {
        None => None,
        Some((platform, host, sdk)) => Some(Client {
            platform: platform.parse().map_err(|_| corrupt("platform"))?,
            host_version: host.parse().map_err(|_| corrupt("host version"))?,
            sdk_version: sdk.parse().map_err(|_| corrupt("sdk version"))?,
        }),
    };
    Ok(AuditRecord {
        seq: r.seq,
        time_ms: r.time_ms,
        revision: r.revision,
        entry: AuditEntry {
            app: AppId::parse(&r.app).map_err(|_| corrupt("app"))?,
            user: r
                .user
                .as_deref()
                .map(UserId::parse)
                .transpose()
                .map_err(|_| corrupt("user"))?,
            scope: r
                .scope
                .as_deref()
                .map(|s| decode_scope(s.as_bytes()))
                .transpose()?,
            action: AuditAction::from_name(&r.action).ok_or_else(|| corrupt("action"))?,
            principal: r.principal.clone(),
            client,
        },
    })
}

/// Prefix of every privacy answer of `app`.
pub fn app_privacy_prefix(app: &AppId) -> Vec<u8> {
    [PRIVACY_PREFIX, app.as_str().as_bytes(), b"\0"].concat()
}

pub fn privacy_key(app: &AppId, user: &UserId) -> Vec<u8> {
    [&app_privacy_prefix(app)[..], user.as_str().as_bytes()].concat()
}

pub fn encode_privacy(p: &PrivacyState) -> Vec<u8> {
    let mut v = Vec::with_capacity(18);
    v.push(VALUE_VERSION);
    v.push(u8::from(p.agreed));
    v.extend_from_slice(&p.version.to_be_bytes());
    v.extend_from_slice(&p.at_ms.to_be_bytes());
    v
}

pub fn decode_privacy(raw: &[u8]) -> Result<PrivacyState, StoreError> {
    if raw.len() != 18 || raw[0] != VALUE_VERSION || raw[1] > 1 {
        return Err(StoreError::Corrupt(format!(
            "bad privacy value of {} bytes",
            raw.len()
        )));
    }
    Ok(PrivacyState {
        agreed: raw[1] == 1,
        version: decode_u64(&raw[2..10])?,
        at_ms: decode_u64(&raw[10..18])?,
    })
}

/// The timer key of a decision key lapsing at `expires_at_ms`.
pub fn timer_key(expires_at_ms: u64, decision_key: &[u8]) -> Vec<u8> {
    [
        TIMER_PREFIX,
        &expires_at_ms.to_be_bytes(),
        &decision_key[DECISION_PREFIX.len()..],
    ]
    .concat()
}

/// Every timer due at `now_ms` sorts below this key.
pub fn timers_due_bound(now_ms: u64) -> Vec<u8> {
    [TIMER_PREFIX, &now_ms.saturating_add(1).to_be_bytes()].concat()
}

/// A timer key's (expires_at_ms, decision key).
pub fn split_timer_key(key: &[u8]) -> Result<(u64, Vec<u8>), StoreError> {
    let corrupt = || StoreError::Corrupt("bad timer key".into());
    let rest = key.strip_prefix(TIMER_PREFIX).ok_or_else(corrupt)?;
    if rest.len() < 9 {
        return Err(corrupt());
    }
    let at = decode_u64(&rest[..8])?;
    Ok((at, [DECISION_PREFIX, &rest[8..]].concat()))
}

/// Splits a decision key into (app, user, scope).
pub fn split_decision_key(key: &[u8]) -> Result<(AppId, UserId, Scope), StoreError> {
    let corrupt = || StoreError::Corrupt("bad decision key".into());
    let rest = key.strip_prefix(DECISION_PREFIX).ok_or_else(corrupt)?;
    let nul = rest.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
    let app = std::str::from_utf8(&rest[..nul]).map_err(|_| corrupt())?;
    let (user, scope) = split_user_scope(&rest[nul + 1..])?;
    Ok((AppId::parse(app).map_err(|_| corrupt())?, user, scope))
}

pub fn encode_event(e: &Event) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + e.app.as_str().len() + e.user.as_str().len());
    v.push(VALUE_VERSION);
    v.push(state_code(e.old));
    v.push(state_code(e.new));
    v.push(cause_code(e.cause));
    v.extend_from_slice(&e.time_ms.to_be_bytes());
    for s in [e.app.as_str(), e.user.as_str(), e.scope.name()] {
        // Ids are at most 128 bytes, scope names shorter: one length byte.
        v.push(s.len() as u8);
        v.extend_from_slice(s.as_bytes());
    }
    v
}

pub fn decode_event(revision: u64, raw: &[u8]) -> Result<Event, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("bad event value at revision {revision}"));
    if raw.len() < 12 || raw[0] != VALUE_VERSION {
        return Err(corrupt());
    }
    let mut rest = &raw[12..];
    let mut next = || -> Result<&str, StoreError> {
        let (&len, tail) = rest.split_first().ok_or_else(corrupt)?;
        let len = usize::from(len);
        if tail.len() < len {
            return Err(corrupt());
        }
        let (s, tail) = tail.split_at(len);
        rest = tail;
        std::str::from_utf8(s).map_err(|_| corrupt())
    };
    let app = AppId::parse(next()?).map_err(|_| corrupt())?;
    let user = UserId::parse(next()?).map_err(|_| corrupt())?;
    let scope = decode_scope(next()?.as_bytes())?;
    Ok(Event {
        revision,
        app,
        user,
        scope,
        old: state_from(raw[1])?,
        new: state_from(raw[2])?,
        cause: cause_from(raw[3])?,
        time_ms: decode_u64(&raw[4..12])?,
    })
}

/// An app registration as stored.
#[derive(Serialize, Deserialize)]
struct AppRecord {
    id: String,
    kind: String,
    permission: Vec<(String, String)>,
    background_modes: BTreeSet<String>,
    private_infos: BTreeSet<String>,
    revision: u64,
    updated_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    privacy: Option<PrivacyRecord>,
    /// Kept when the guide is dropped: versions never go down.
    #[serde(default, skip_serializing_if = "is_zero")]
    privacy_version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Serialize, Deserialize)]
struct PrivacyRecord {
    name: String,
    info_types: Vec<String>,
    version: u64,
}

pub fn encode_app(app: &App) -> Vec<u8> {
    let record = AppRecord {
        id: app.id.as_str().to_owned(),
        kind: match app.kind {
            AppKind::MiniProgram => "mini_program".into(),
            AppKind::MiniGame => "mini_game".into(),
        },
        permission: app
            .declarations
            .permission
            .iter()
            .map(|(s, d)| (s.name().to_owned(), d.clone()))
            .collect(),
        background_modes: app.declarations.background_modes.clone(),
        private_infos: app.declarations.private_infos.clone(),
        revision: app.revision,
        updated_at_ms: app.updated_at_ms,
        privacy: app.declarations.privacy.as_ref().map(|g| PrivacyRecord {
            name: g.name.clone(),
            info_types: g.info_types.iter().map(|t| t.name().to_owned()).collect(),
            version: app.privacy_version,
        }),
        privacy_version: app.privacy_version,
    };
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

pub fn decode_app(raw: &[u8]) -> Result<App, StoreError> {
    let r: AppRecord = serde_json::from_slice(raw)
        .map_err(|e| StoreError::Corrupt(format!("bad app record: {e}")))?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("app record {:?}: {what}", r.id));
    let kind = match r.kind.as_str() {
        "mini_program" => AppKind::MiniProgram,
        "mini_game" => AppKind::MiniGame,
        _ => return Err(corrupt("unknown kind")),
    };
    let permission = r
        .permission
        .iter()
        .map(|(s, d)| Ok((decode_scope(s.as_bytes())?, d.clone())))
        .collect::<Result<_, StoreError>>()?;
    let (privacy, privacy_version) = match &r.privacy {
        None => (None, r.privacy_version),
        Some(p) => (
            Some(PrivacyGuide::parse(&p.name, &p.info_types).map_err(|e| corrupt(&e.to_string()))?),
            p.version.max(r.privacy_version),
        ),
    };
    Ok(App {
        id: AppId::parse(&r.id).map_err(|_| corrupt("bad id"))?,
        kind,
        declarations: Declarations {
            permission,
            background_modes: r.background_modes,
            private_infos: r.private_infos,
            privacy,
        },
        revision: r.revision,
        updated_at_ms: r.updated_at_ms,
        privacy_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit_record(full: bool, principal: &str) -> AuditRecord {
        AuditRecord {
            seq: 7,
            time_ms: 1_790_000_000_123,
            revision: u64::MAX - 1,
            entry: AuditEntry {
                app: AppId::parse("wx0123").unwrap(),
                user: full.then(|| UserId::parse("user-ü").unwrap()),
                scope: full.then_some(Scope::UserLocationBackground),
                action: AuditAction::Answered(crate::domain::Answer::AllowWhileUsing),
                principal: principal.to_owned(),
                client: full.then(|| Client {
                    platform: crate::domain::Platform::Android,
                    host_version: "8.0.5".parse().unwrap(),
                    sdk_version: "2.25.0.1".parse().unwrap(),
                }),
            },
        }
    }

    #[test]
    fn audit_records_round_trip_in_binary() {
        let long = "p".repeat(70_000);
        for record in [
            audit_record(true, "runtime-1"),
            audit_record(false, ""),
            audit_record(true, &long),
        ] {
            let raw = encode_audit(&record);
            assert_eq!(raw[0], AUDIT_BINARY);
            assert_eq!(decode_audit(&raw).unwrap(), record);
            // Every truncation and any trailing byte is corruption, not a
            // different record.
            for cut in 0..raw.len().min(120) {
                assert!(decode_audit(&raw[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = raw.clone();
            longer.push(0);
            assert!(decode_audit(&longer).is_err());
        }
    }

    #[test]
    fn format_2_json_audit_records_still_read() {
        let raw = br#"{"seq":7,"time_ms":1790000000123,"revision":18446744073709551614,"app":"wx0123","user":"user-\u00fc","scope":"scope.userLocationBackground","action":"ANSWERED_ALLOW_WHILE_USING","principal":"runtime-1","client":["android","8.0.5","2.25.0.1"]}"#;
        assert_eq!(decode_audit(raw).unwrap(), audit_record(true, "runtime-1"));
        let bare = br#"{"seq":7,"time_ms":1790000000123,"revision":18446744073709551614,"app":"wx0123","action":"ANSWERED_ALLOW_WHILE_USING","principal":""}"#;
        assert_eq!(decode_audit(bare).unwrap(), audit_record(false, ""));
        assert!(decode_audit(b"").is_err());
        assert!(decode_audit(b"\x09junk").is_err());
    }

    #[test]
    fn event_round_trips() {
        let e = Event {
            revision: 42,
            app: AppId::parse("wxapp").unwrap(),
            user: UserId::parse(&"u".repeat(128)).unwrap(),
            scope: Scope::UserLocationBackground,
            old: DecisionState::Granted,
            new: DecisionState::NotDetermined,
            cause: Cause::AppRemoved,
            time_ms: 1_700_000_000_123,
        };
        assert_eq!(decode_event(42, &encode_event(&e)).unwrap(), e);
        assert!(decode_event(42, &encode_event(&e)[..20]).is_err());
    }

    #[test]
    fn decision_round_trips_and_keys_nest() {
        let d = Decision {
            state: DecisionState::Denied,
            cause: Cause::Settings,
            updated_at_ms: 7,
            revision: 9,
            lifetime: Lifetime::Permanent,
        };
        assert_eq!(
            encode_decision(&d).len(),
            19,
            "permanent values stay version 1"
        );
        assert_eq!(decode_decision(&encode_decision(&d)).unwrap(), d);
        for lifetime in [
            Lifetime::Until {
                expires_at_ms: 1_800_000_000_000,
            },
            Lifetime::Session {
                session: SessionId::parse(&"s".repeat(128)).unwrap(),
                expires_at_ms: 5,
            },
        ] {
            let timed = Decision {
                state: DecisionState::Granted,
                cause: Cause::Expired,
                lifetime,
                ..d.clone()
            };
            let raw = encode_decision(&timed);
            assert_eq!(decode_decision(&raw).unwrap(), timed);
            assert!(decode_decision(&raw[..raw.len() - 1]).is_err());
        }
        let (a, u) = (AppId::parse("a").unwrap(), UserId::parse("u").unwrap());
        let key = decision_key(&a, &u, Scope::Camera);
        assert!(key.starts_with(&user_decisions_prefix(&a, &u)));
        let tail = &key[app_decisions_prefix(&a).len()..];
        assert_eq!(split_user_scope(tail).unwrap(), (u, Scope::Camera));
    }

    #[test]
    fn timer_keys_sort_by_time_and_name_their_decision() {
        let (a, u) = (AppId::parse("a").unwrap(), UserId::parse("u").unwrap());
        let key = decision_key(&a, &u, Scope::Camera);
        let early = timer_key(10, &key);
        let late = timer_key(256, &key);
        assert!(early < late);
        assert!(early < timers_due_bound(10) && late >= timers_due_bound(10));
        assert_eq!(split_timer_key(&late).unwrap(), (256, key.clone()));
        assert_eq!(split_decision_key(&key).unwrap(), (a, u, Scope::Camera));
    }

    #[test]
    fn event_keys_sort_by_revision() {
        assert!(event_key(255) < event_key(256));
        assert!(event_key(1) < event_key(u64::MAX));
    }

    fn event(revision: u64, user: &str) -> Event {
        Event {
            revision,
            app: AppId::parse("wxapp").unwrap(),
            user: UserId::parse(user).unwrap(),
            scope: Scope::Camera,
            old: DecisionState::NotDetermined,
            new: DecisionState::Granted,
            cause: Cause::Popup,
            time_ms: 1_700_000_000_000 + revision,
        }
    }

    #[test]
    fn chunks_round_trip_split_by_size_and_reject_damage() {
        let events: Vec<Event> = (1..=2000).map(|r| event(r, &format!("u{r}"))).collect();
        let chunks = event_chunks(&events);
        assert!(chunks.len() > 1, "2,000 events need several chunks");
        let mut back = Vec::new();
        for (last, raw) in &chunks {
            assert!(raw.len() <= CHUNK_BYTES, "{} bytes", raw.len());
            let decoded = decode_event_chunk(raw).unwrap();
            assert_eq!(decoded.last().unwrap().revision, *last);
            back.extend(decoded);
            assert!(decode_event_chunk(&raw[..raw.len() - 1]).is_err());
        }
        assert_eq!(back, events);
        assert!(event_chunks(&[]).is_empty());
        // One item larger than a chunk makes a chunk of its own.
        let long = audit_record(true, &"p".repeat(CHUNK_BYTES * 2));
        let records = vec![
            audit_record(true, "a"),
            long.clone(),
            audit_record(false, ""),
        ];
        let chunks = audit_chunks(&records);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].0, std::slice::from_ref(&long));
        let back: Vec<AuditRecord> = chunks
            .iter()
            .flat_map(|(_, raw)| decode_audit_chunk(raw).unwrap())
            .collect();
        assert_eq!(back, records);
        assert!(decode_audit_chunk(b"").is_err());
        assert!(decode_audit_chunk(&[9, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn a_chunk_is_rewritten_record_by_record_keeping_positions() {
        let events = vec![event(5, "alice"), event(6, "bob"), event(7, "alice")];
        let raw = encode_event_chunk(&events);
        let pseudonym = UserId::parse(&format!("erased-{}", "0".repeat(32))).unwrap();
        let rewritten = rewrite_event_chunk(&raw, |e| {
            if e.user.as_str() == "alice" {
                e.user = pseudonym.clone();
            }
            e.revision = 99; // ignored: positions stay
        })
        .unwrap();
        let back = decode_event_chunk(&rewritten).unwrap();
        assert_eq!(
            back.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [5, 6, 7]
        );
        assert_eq!(
            back.iter().map(|e| e.user.as_str()).collect::<Vec<_>>(),
            [pseudonym.as_str(), "bob", pseudonym.as_str()]
        );
        let records = vec![audit_record(true, "x")];
        let rewritten = rewrite_audit_chunk(&encode_audit_chunk(&records), |r| {
            r.entry.user = Some(pseudonym.clone());
            r.seq = 1;
            r.entry.app = AppId::parse("other").unwrap();
        })
        .unwrap();
        let back = decode_audit_chunk(&rewritten).unwrap();
        assert_eq!(
            (back[0].seq, &back[0].entry.app),
            (7, &records[0].entry.app)
        );
        assert_eq!(back[0].entry.user.as_ref(), Some(&pseudonym));
    }
}
