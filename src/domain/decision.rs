//! Stored decisions, the changes that move them and the events that record them.

use super::{AppId, Scope, UserId};

/// The stored decision for one (app, user, scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DecisionState {
    #[default]
    NotDetermined,
    Granted,
    Denied,
}

/// Why a decision changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    Popup,
    Settings,
    AppRemoved,
    Operator,
}

/// A stored, determined decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Granted or Denied; NotDetermined is never stored.
    pub state: DecisionState,
    pub cause: Cause,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
    pub revision: u64,
}

/// One user's decisions for one app, scope -> state (decided scopes only).
pub type UserDecisions = std::collections::BTreeMap<Scope, DecisionState>;

/// A planned change of one scope, before the store gives it a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub scope: Scope,
    pub old: DecisionState,
    pub new: DecisionState,
    pub cause: Cause,
}

/// A committed change: the unit of the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub app: AppId,
    pub user: UserId,
    pub scope: Scope,
    pub old: DecisionState,
    pub new: DecisionState,
    pub cause: Cause,
    /// Unix milliseconds.
    pub time_ms: u64,
}
