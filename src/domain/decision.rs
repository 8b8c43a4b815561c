//! Stored decisions, the changes that move them and the events that record them.

use super::{AppId, DomainError, Scope, SessionId, UserId};

/// One (app, user) pair: the subject of every decision.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    pub app: AppId,
    pub user: UserId,
}

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
    /// A timed or one-time grant lapsed; consentd itself made the change.
    Expired,
    /// The user reset every decision in every app (ResetUser).
    UserReset,
    /// The user was erased (EraseUser): every decision revoked.
    UserErased,
}

/// How long a grant lasts. Denials are always permanent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lifetime {
    #[default]
    Permanent,
    /// Until this instant (Unix milliseconds).
    Until { expires_at_ms: u64 },
    /// One-time: until the runtime ends `session`, or `expires_at_ms` (the
    /// idle timeout) passes, whichever comes first.
    Session {
        session: SessionId,
        expires_at_ms: u64,
    },
}

impl Lifetime {
    /// When the grant lapses by itself, if ever.
    pub fn expires_at_ms(&self) -> Option<u64> {
        match self {
            Lifetime::Permanent => None,
            Lifetime::Until { expires_at_ms } | Lifetime::Session { expires_at_ms, .. } => {
                Some(*expires_at_ms)
            }
        }
    }

    /// A one-time grant in use, renewed for another `idle_ms` once half of
    /// its idle timeout has passed (one write per half timeout, not per
    /// read); `None` otherwise.
    pub fn renewed(&self, now_ms: u64, idle_ms: u64) -> Option<Lifetime> {
        match self {
            Lifetime::Session {
                session,
                expires_at_ms,
            } if expires_at_ms.saturating_sub(now_ms) < idle_ms / 2 => Some(Lifetime::Session {
                session: session.clone(),
                expires_at_ms: now_ms.saturating_add(idle_ms),
            }),
            _ => None,
        }
    }

    /// Whether the grant has lapsed at `now_ms`.
    pub fn lapsed(&self, now_ms: u64) -> bool {
        self.expires_at_ms().is_some_and(|at| at <= now_ms)
    }

    /// Whether this renewal may replace the stored `current` lifetime: the
    /// same session, a later deadline, and `current` still live at `now_ms`
    /// (a lapsed grant stays lapsed, even if its lapse is not recorded yet).
    pub fn extends(&self, current: &Lifetime, now_ms: u64) -> bool {
        match (current, self) {
            (
                Lifetime::Session {
                    session: old,
                    expires_at_ms: before,
                },
                Lifetime::Session {
                    session: new,
                    expires_at_ms: after,
                },
            ) => old == new && after > before && *before > now_ms,
            _ => false,
        }
    }
}

/// The lifetime a request asks for, before consentd fixes its deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LifetimeRequest {
    #[default]
    Permanent,
    Until {
        expires_at_ms: u64,
    },
    Session(SessionId),
}

impl LifetimeRequest {
    /// The stored lifetime of a grant made at `now_ms`; a one-time grant
    /// lapses after `session_idle_ms` unless its session ends first.
    pub fn resolve(self, now_ms: u64, session_idle_ms: u64) -> Result<Lifetime, DomainError> {
        match self {
            LifetimeRequest::Permanent => Ok(Lifetime::Permanent),
            LifetimeRequest::Until { expires_at_ms } if expires_at_ms <= now_ms => {
                Err(DomainError::InvalidArgument {
                    field: "lifetime.until".into(),
                    message: format!(
                        "lifetime.until ({expires_at_ms} ms) is not in the future (now: {now_ms} ms)"
                    ),
                })
            }
            LifetimeRequest::Until { expires_at_ms } => Ok(Lifetime::Until { expires_at_ms }),
            LifetimeRequest::Session(session) => Ok(Lifetime::Session {
                session,
                expires_at_ms: now_ms.saturating_add(session_idle_ms),
            }),
        }
    }
}

/// A stored, determined decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Granted or Denied; NotDetermined is never stored.
    pub state: DecisionState,
    pub cause: Cause,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
    pub revision: u64,
    /// Permanent unless a grant was given for a time or a session.
    pub lifetime: Lifetime,
}

impl Decision {
    /// The state a reader sees at `now_ms`: a lapsed grant reads as never
    /// asked, even before consentd has recorded the lapse.
    pub fn effective_state(&self, now_ms: u64) -> DecisionState {
        if self.lifetime.lapsed(now_ms) {
            DecisionState::NotDetermined
        } else {
            self.state
        }
    }
}

/// One stored decision, as exports and imports list them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionRow {
    pub app: AppId,
    pub user: UserId,
    pub scope: Scope,
    pub state: DecisionState,
    pub lifetime: Lifetime,
}

/// One user's stored decisions for one app, with their lifetimes.
pub type DecisionRecords = std::collections::BTreeMap<Scope, Decision>;

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
    fn only_a_later_deadline_of_the_same_live_session_extends() {
        let session = |id: &str, at| Lifetime::Session {
            session: SessionId::parse(id).unwrap(),
            expires_at_ms: at,
        };
        let current = session("s1", 100);
        assert!(session("s1", 150).extends(&current, 50));
        assert!(!session("s1", 100).extends(&current, 50), "not later");
        assert!(!session("s1", 90).extends(&current, 50), "earlier");
        assert!(!session("s2", 150).extends(&current, 50), "another session");
        assert!(
            !session("s1", 150).extends(&current, 100),
            "lapsed at its deadline"
        );
        let until = Lifetime::Until { expires_at_ms: 100 };
        assert!(!session("s1", 150).extends(&until, 50));
        assert!(!session("s1", 150).extends(&Lifetime::Permanent, 50));
        assert!(!Lifetime::Until { expires_at_ms: 150 }.extends(&until, 50));
    }

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
