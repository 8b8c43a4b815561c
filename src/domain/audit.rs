//! The consent audit trail: who did what to whose consent, when, from
//! which client. Records are written in the same commit as the change they
//! describe; the log of decision events says what changed, the audit trail
//! says who asked and how.
//!
//! Also the anti-nag policy (off by default): after N cancelled prompts for
//! one scope, further prompts are suppressed for a while.

use super::{
    gates::{err_msg, msg, Outcome, Reason, Verdict},
    machine::Answer,
    rules::Target,
    AppId, Client, DomainError, Scope, UserId,
};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// Authorize / CheckApi told the runtime to show a popup.
    PromptShown,
    /// The user answered a popup.
    Answered(Answer),
    /// The user changed the settings page.
    SettingsChanged,
    /// The user deleted the mini program.
    AppRemoved,
    /// Timed or one-time grants lapsed.
    Expired,
    /// The runtime ended a session (its one-time grants lapse).
    SessionEnded,
    /// The user answered the privacy agreement.
    PrivacyAnswered { agreed: bool },
    /// A prompt was suppressed by the anti-nag policy.
    PromptSuppressed,
    /// An operator action: register / update / delete an app, import.
    Operator(OperatorAction),
    /// Every decision of the user in this app went back to never asked
    /// (ResetUser); one record per app.
    UserReset,
    /// The user was erased (EraseUser); one record per app, naming the
    /// erasure's pseudonym, never the user.
    UserErased,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    RegisterApp,
    UpdateApp,
    DeleteApp,
    Import,
}

impl AuditAction {
    /// A stable name (wire enums and filters use it).
    pub fn name(&self) -> &'static str {
        match self {
            AuditAction::PromptShown => "PROMPT_SHOWN",
            AuditAction::Answered(Answer::Allow) => "ANSWERED_ALLOW",
            AuditAction::Answered(Answer::AllowWhileUsing) => "ANSWERED_ALLOW_WHILE_USING",
            AuditAction::Answered(Answer::Deny) => "ANSWERED_DENY",
            AuditAction::Answered(Answer::Cancel) => "ANSWERED_CANCEL",
            AuditAction::SettingsChanged => "SETTINGS_CHANGED",
            AuditAction::AppRemoved => "APP_REMOVED",
            AuditAction::Expired => "EXPIRED",
            AuditAction::SessionEnded => "SESSION_ENDED",
            AuditAction::PrivacyAnswered { agreed: true } => "PRIVACY_AGREED",
            AuditAction::PrivacyAnswered { agreed: false } => "PRIVACY_DISAGREED",
            AuditAction::PromptSuppressed => "PROMPT_SUPPRESSED",
            AuditAction::Operator(OperatorAction::RegisterApp) => "OPERATOR_REGISTER_APP",
            AuditAction::Operator(OperatorAction::UpdateApp) => "OPERATOR_UPDATE_APP",
            AuditAction::Operator(OperatorAction::DeleteApp) => "OPERATOR_DELETE_APP",
            AuditAction::Operator(OperatorAction::Import) => "OPERATOR_IMPORT",
            AuditAction::UserReset => "USER_RESET",
            AuditAction::UserErased => "USER_ERASED",
        }
    }

    /// Every action, in the order of their names.
    pub const ALL: [AuditAction; 18] = [
        AuditAction::PromptShown,
        AuditAction::Answered(Answer::Allow),
        AuditAction::Answered(Answer::AllowWhileUsing),
        AuditAction::Answered(Answer::Deny),
        AuditAction::Answered(Answer::Cancel),
        AuditAction::SettingsChanged,
        AuditAction::AppRemoved,
        AuditAction::Expired,
        AuditAction::SessionEnded,
        AuditAction::PrivacyAnswered { agreed: true },
        AuditAction::PrivacyAnswered { agreed: false },
        AuditAction::PromptSuppressed,
        AuditAction::Operator(OperatorAction::RegisterApp),
        AuditAction::Operator(OperatorAction::UpdateApp),
        AuditAction::Operator(OperatorAction::DeleteApp),
        AuditAction::Operator(OperatorAction::Import),
        AuditAction::UserReset,
        AuditAction::UserErased,
    ];

    pub fn from_name(name: &str) -> Option<AuditAction> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// One audit record, before the store numbers and timestamps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub app: AppId,
    pub user: Option<UserId>,
    pub scope: Option<Scope>,
    pub action: AuditAction,
    /// The principal that made the call (see the security model).
    pub principal: String,
    /// The client the call came from, when it named one.
    pub client: Option<Client>,
}

/// A stored audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the audit trail (its own sequence, not a revision).
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The store revision after the commit that wrote it.
    pub revision: u64,
    pub entry: AuditEntry,
}

/// What ListAudit asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub user: Option<UserId>,
    pub scope: Option<Scope>,
    /// Only records at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Continue after this sequence number (a page token).
    pub after_seq: Option<u64>,
    pub limit: usize,
}

impl AuditQuery {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.user
            .as_ref()
            .is_none_or(|u| r.entry.user.as_ref() == Some(u))
            && self.scope.is_none_or(|s| r.entry.scope == Some(s))
            && self.since_ms.is_none_or(|t| r.time_ms >= t)
    }
}

/// The anti-nag policy: after `max_cancels` cancelled prompts in a row for
/// one scope, prompts are suppressed for `embargo_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NagPolicy {
    pub max_cancels: u32,
    pub embargo_ms: u64,
}

/// Per (app, user, scope): cancels in a row, and an embargo's end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NagState {
    pub cancels: u32,
    pub embargo_until_ms: u64,
}

impl NagState {
    /// The state after a popup answer for `scope` at `now_ms`; `None` when
    /// nothing is left to remember (a real answer resets the count). An
    /// answer during an embargo is refused: no popup could have been shown.
    pub fn after_answer(
        current: Option<NagState>,
        scope: Scope,
        answer: Answer,
        policy: NagPolicy,
        now_ms: u64,
    ) -> Result<Option<NagState>, DomainError> {
        if let Some(n) = current.filter(|n| n.embargoed(now_ms)) {
            return Err(DomainError::FailedPrecondition {
                message: format!(
                    "cannot record answer {answer:?} for {scope}: the anti-nag policy answers EMBARGOED until {} ms, so no popup could have been shown",
                    n.embargo_until_ms
                ),
            });
        }
        if answer != Answer::Cancel {
            return Ok(None);
        }
        let cancels = current.map_or(0, |s| s.cancels) + 1;
        Ok(Some(if cancels >= policy.max_cancels {
            NagState {
                cancels: 0,
                embargo_until_ms: now_ms.saturating_add(policy.embargo_ms),
            }
        } else {
            NagState {
                cancels,
                embargo_until_ms: current.map_or(0, |s| s.embargo_until_ms),
            }
        }))
    }

    /// Whether prompts are suppressed at `now_ms`.
    pub fn embargoed(&self, now_ms: u64) -> bool {
        now_ms < self.embargo_until_ms
    }
}

/// A PROMPT verdict under an embargo becomes EMBARGOED (fail without a
/// popup, `<p>:fail auth cancel`, with the embargo's end); anything else
/// passes unchanged.
pub fn embargo(
    verdict: Verdict,
    target: Target<'_>,
    nag: Option<&NagState>,
    now_ms: u64,
) -> Verdict {
    match nag {
        Some(n) if verdict.outcome == Outcome::Prompt && n.embargoed(now_ms) => Verdict {
            outcome: Outcome::Embargoed,
            reason: Reason::PromptEmbargoed,
            err_msg: err_msg(target, msg::AUTH_CANCEL),
            prompt: None,
            embargo_until_ms: Some(n.embargo_until_ms),
            ..verdict
        },
        _ => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::from_name(action.name()), Some(action));
        }
        let mut names: Vec<_> = AuditAction::ALL.iter().map(|a| a.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditAction::ALL.len(), "names are distinct");
        assert_eq!(AuditAction::from_name("NOPE"), None);
    }

    #[test]
    fn cancels_in_a_row_start_an_embargo_and_a_real_answer_resets() {
        let policy = NagPolicy {
            max_cancels: 3,
            embargo_ms: 1000,
        };
        let answer = |state, a, now| NagState::after_answer(state, Scope::Camera, a, policy, now);
        let mut state = None;
        for _ in 0..2 {
            state = answer(state, Answer::Cancel, 50).unwrap();
            assert!(!state.unwrap().embargoed(50));
        }
        assert_eq!(state.unwrap().cancels, 2);
        state = answer(state, Answer::Cancel, 100).unwrap();
        let s = state.unwrap();
        assert!(s.embargoed(100) && s.embargoed(1099) && !s.embargoed(1100));
        assert_eq!(s.cancels, 0);
        assert!(
            answer(state, Answer::Allow, 500).is_err(),
            "refused during the embargo"
        );
        assert_eq!(answer(state, Answer::Deny, 2000).unwrap(), None);
    }
}
