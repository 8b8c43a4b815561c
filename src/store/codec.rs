//! Key and value encoding of the single sled tree.
//!
//! Keys (ids never contain NUL: they are validated printable):
//! - `a/<app>`                        -> app registration (JSON)
//! - `d/<app>\0<user>\0<scope>`       -> decision (fixed 19 bytes)
//! - `e/<revision: u64 BE>`           -> event (binary)
//! - `b/<app>\0<user>\0<scope>`       -> checkpoint: the decision as of
//!   `m/compacted_through` (one state byte); the log folds on top of it
//! - `m/revision`, `m/format`, `m/compacted_through`, `m/events` -> metadata (u64 BE)

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{
    App, AppId, AppKind, Cause, Decision, DecisionState, Declarations, Event, Scope, UserId,
};

pub const APP_PREFIX: &[u8] = b"a/";
pub const DECISION_PREFIX: &[u8] = b"d/";
pub const EVENT_PREFIX: &[u8] = b"e/";
pub const BASE_PREFIX: &[u8] = b"b/";
pub const COMPACTED_KEY: &[u8] = b"m/compacted_through";
/// How many events the log holds (kept with every commit and compaction, so
/// opening does not have to count them).
pub const EVENTS_KEY: &[u8] = b"m/events";
pub const REVISION_KEY: &[u8] = b"m/revision";
pub const FORMAT_KEY: &[u8] = b"m/format";

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

const VALUE_VERSION: u8 = 1;

pub fn app_key(app: &AppId) -> Vec<u8> {
    [APP_PREFIX, app.as_str().as_bytes()].concat()
}

/// Prefix of every decision of `app`.
pub fn app_decisions_prefix(app: &AppId) -> Vec<u8> {
    [DECISION_PREFIX, app.as_str().as_bytes(), b"\0"].concat()
}

/// Prefix of every decision of (`app`, `user`).
pub fn user_decisions_prefix(app: &AppId, user: &UserId) -> Vec<u8> {
    [
        &app_decisions_prefix(app)[..],
        user.as_str().as_bytes(),
        b"\0",
    ]
    .concat()
}

pub fn decision_key(app: &AppId, user: &UserId, scope: Scope) -> Vec<u8> {
    [
        &user_decisions_prefix(app, user)[..],
        scope.name().as_bytes(),
    ]
    .concat()
}

/// The checkpoint key of a decision key: same tail, `b/` prefix.
pub fn base_key_of(decision_key: &[u8]) -> Vec<u8> {
    [BASE_PREFIX, &decision_key[DECISION_PREFIX.len()..]].concat()
}

pub fn event_key(revision: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(EVENT_PREFIX);
    key[2..].copy_from_slice(&revision.to_be_bytes());
    key
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
    }
}

fn cause_from(code: u8) -> Result<Cause, StoreError> {
    match code {
        1 => Ok(Cause::Popup),
        2 => Ok(Cause::Settings),
        3 => Ok(Cause::AppRemoved),
        4 => Ok(Cause::Operator),
        other => Err(StoreError::Corrupt(format!("unknown cause code {other}"))),
    }
}

pub fn encode_decision(d: &Decision) -> [u8; 19] {
    let mut v = [0u8; 19];
    v[0] = VALUE_VERSION;
    v[1] = state_code(d.state);
    v[2] = cause_code(d.cause);
    v[3..11].copy_from_slice(&d.updated_at_ms.to_be_bytes());
    v[11..19].copy_from_slice(&d.revision.to_be_bytes());
    v
}

pub fn decode_decision(raw: &[u8]) -> Result<Decision, StoreError> {
    if raw.len() != 19 || raw[0] != VALUE_VERSION {
        return Err(StoreError::Corrupt(format!(
            "bad decision value of {} bytes",
            raw.len()
        )));
    }
    Ok(Decision {
        state: state_from(raw[1])?,
        cause: cause_from(raw[2])?,
        updated_at_ms: decode_u64(&raw[3..11])?,
        revision: decode_u64(&raw[11..19])?,
    })
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
    Ok(App {
        id: AppId::parse(&r.id).map_err(|_| corrupt("bad id"))?,
        kind,
        declarations: Declarations {
            permission,
            background_modes: r.background_modes,
            private_infos: r.private_infos,
        },
        revision: r.revision,
        updated_at_ms: r.updated_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        assert_eq!(decode_decision(&encode_decision(&d)).unwrap(), d);
        let (a, u) = (AppId::parse("a").unwrap(), UserId::parse("u").unwrap());
        let key = decision_key(&a, &u, Scope::Camera);
        assert!(key.starts_with(&user_decisions_prefix(&a, &u)));
        let tail = &key[app_decisions_prefix(&a).len()..];
        assert_eq!(split_user_scope(tail).unwrap(), (u, Scope::Camera));
    }

    #[test]
    fn event_keys_sort_by_revision() {
        assert!(event_key(255) < event_key(256));
        assert!(event_key(1) < event_key(u64::MAX));
    }
}
