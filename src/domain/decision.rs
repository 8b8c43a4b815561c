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

/// Which events a watcher wants; an empty set matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub apps: std::collections::HashSet<AppId>,
    pub users: std::collections::HashSet<UserId>,
    pub scopes: std::collections::HashSet<Scope>,
}

impl EventFilter {
    pub fn matches(&self, e: &Event) -> bool {
        (self.apps.is_empty() || self.apps.contains(&e.app))
            && (self.users.is_empty() || self.users.contains(&e.user))
            && (self.scopes.is_empty() || self.scopes.contains(&e.scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_combine_with_and_and_empty_matches_all() {
        let e = Event {
            revision: 1,
            app: AppId::parse("a").unwrap(),
            user: UserId::parse("u").unwrap(),
            scope: Scope::Camera,
            old: DecisionState::NotDetermined,
            new: DecisionState::Granted,
            cause: Cause::Popup,
            time_ms: 0,
        };
        let app = |s: &str| AppId::parse(s).unwrap();
        let mut f = EventFilter::default();
        assert!(f.matches(&e));
        f.apps.insert(app("b"));
        assert!(!f.matches(&e));
        f.apps.insert(app("a"));
        assert!(f.matches(&e));
        f.scopes.insert(Scope::Record);
        assert!(!f.matches(&e));
        f.scopes.insert(Scope::Camera);
        f.users.insert(UserId::parse("u").unwrap());
        assert!(f.matches(&e));
    }
}
