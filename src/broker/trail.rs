//! Who made a call, and the audit records a call leaves behind.

use super::Subject;
use crate::domain::{machine::Answer, AuditAction, AuditEntry, Change, Client, Lifetime, Scope};

/// The caller of a use case: its principal (from the access layer) and the
/// client it spoke for, when the request named one.
#[derive(Clone, Debug)]
pub struct Actor {
    pub principal: String,
    pub client: Option<Client>,
}

impl Actor {
    pub fn new(principal: impl Into<String>, client: Option<Client>) -> Self {
        Self {
            principal: principal.into(),
            client,
        }
    }

    /// consentd itself (lapses of timed grants).
    pub fn system() -> Self {
        Self::new("consentd", None)
    }

    pub(super) fn entry(
        &self,
        s: &Subject,
        scope: Option<Scope>,
        action: AuditAction,
    ) -> AuditEntry {
        AuditEntry {
            app: s.app.clone(),
            user: Some(s.user.clone()),
            scope,
            action,
            principal: self.principal.clone(),
            client: self.client.clone(),
        }
    }
}

/// The audit records of a decision write.
pub(super) enum AuditShape {
    /// A popup answer: one record for the asked scope, whatever changed.
    Answer(Scope, Answer),
    /// One record per changed scope (none when nothing changed).
    PerChange(AuditAction),
    /// One record about the subject.
    Subject(AuditAction),
}

impl AuditShape {
    pub(super) fn entries(
        &self,
        actor: &Actor,
        s: &Subject,
        changes: &[Change],
    ) -> Vec<AuditEntry> {
        match self {
            AuditShape::Answer(scope, answer) => {
                vec![actor.entry(s, Some(*scope), AuditAction::Answered(*answer))]
            }
            AuditShape::PerChange(action) => changes
                .iter()
                .map(|c| actor.entry(s, Some(c.scope), action.clone()))
                .collect(),
            AuditShape::Subject(action) => vec![actor.entry(s, None, action.clone())],
        }
    }
}

/// What a decision write records besides its changes.
pub(super) struct DecisionWrite {
    pub lifetime: Lifetime,
    /// Also forget the privacy answer and anti-nag state (the user deleted
    /// the mini program).
    pub forget_user_state: bool,
    pub actor: Actor,
    pub audit: AuditShape,
}

/// Prompts shown (or suppressed) waiting to be written: reads must not wait
/// for a write, and a runtime asking again while the same popup is up is
/// the same prompt. Entries for one (app, user, scope, action) within
/// `window_ms` are recorded once; the buffer is written in batches (when it
/// fills, and by the daemon's housekeeping tick).
pub(super) struct PromptLog {
    state: std::sync::Mutex<PromptLogState>,
    window_ms: u64,
}

#[derive(Default)]
struct PromptLogState {
    recent: std::collections::HashMap<PromptKey, u64>,
    pending: Vec<AuditEntry>,
}

/// What makes two prompt records the same: app, user, scope, and whether
/// the prompt was shown or suppressed.
pub(super) type PromptKey = (String, String, Scope, bool);

/// The key of a prompt `action` on `scope` for `s`.
pub(super) fn prompt_key(s: &Subject, scope: Scope, action: &AuditAction) -> PromptKey {
    (
        s.app.as_str().to_owned(),
        s.user.as_str().to_owned(),
        scope,
        *action == AuditAction::PromptSuppressed,
    )
}

/// Entries buffered before a batch is written without waiting for the tick.
pub(super) const PROMPT_BATCH: usize = 512;
/// Most (subject, scope) pairs remembered for deduplication.
const PROMPT_RECENT_MAX: usize = 100_000;

impl PromptLog {
    pub(super) fn new(window_ms: u64) -> Self {
        Self {
            state: std::sync::Mutex::default(),
            window_ms,
        }
    }

    /// Buffers the record `entry` builds unless the same prompt (`key`) was
    /// recorded within the window (a repeat builds nothing); returns a full
    /// batch to write, if any.
    pub(super) fn push(
        &self,
        key: PromptKey,
        now_ms: u64,
        entry: impl FnOnce() -> AuditEntry,
    ) -> Option<Vec<AuditEntry>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state
            .recent
            .get(&key)
            .is_some_and(|&at| now_ms < at.saturating_add(self.window_ms))
        {
            return None;
        }
        if state.recent.len() >= PROMPT_RECENT_MAX {
            let window = self.window_ms;
            state
                .recent
                .retain(|_, at| now_ms < at.saturating_add(window));
            if state.recent.len() >= PROMPT_RECENT_MAX {
                state.recent.clear();
            }
        }
        state.recent.insert(key, now_ms);
        state.pending.push(entry());
        (state.pending.len() >= PROMPT_BATCH).then(|| std::mem::take(&mut state.pending))
    }

    /// Everything buffered.
    pub(super) fn take(&self) -> Vec<AuditEntry> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppId, UserId};

    /// Pushes a shown prompt of `user` on `scope` to `log`.
    fn push(log: &PromptLog, user: &str, scope: Scope, now: u64) -> Option<Vec<AuditEntry>> {
        let s = Subject {
            app: AppId::parse("wxa").unwrap(),
            user: UserId::parse(user).unwrap(),
        };
        let action = AuditAction::PromptShown;
        log.push(prompt_key(&s, scope, &action), now, || AuditEntry {
            app: s.app.clone(),
            user: Some(s.user.clone()),
            scope: Some(scope),
            action,
            principal: "p".into(),
            client: None,
        })
    }

    #[test]
    fn the_same_prompt_within_the_window_is_recorded_once() {
        let log = PromptLog::new(1000);
        assert!(push(&log, "u1", Scope::Camera, 0).is_none());
        assert!(push(&log, "u1", Scope::Camera, 999).is_none());
        assert!(push(&log, "u1", Scope::Record, 999).is_none());
        assert!(push(&log, "u2", Scope::Camera, 999).is_none());
        assert_eq!(log.take().len(), 3);
        assert!(push(&log, "u1", Scope::Camera, 1000).is_none());
        assert_eq!(log.take().len(), 1);
        assert!(log.take().is_empty());
    }

    #[test]
    fn a_full_buffer_comes_back_as_a_batch() {
        let log = PromptLog::new(1000);
        let mut batch = None;
        for i in 0..PROMPT_BATCH {
            batch = push(&log, &format!("u{i}"), Scope::Camera, 0);
        }
        assert_eq!(batch.map(|b| b.len()), Some(PROMPT_BATCH));
        assert!(log.take().is_empty());
    }
}
