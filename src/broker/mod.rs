//! The use cases: each gRPC call is one method here, composing the pure
//! domain with the store. Reads go straight to the store; every write is a
//! job the store runs on its single writer, so it reads and writes
//! atomically with respect to other writes.
//!
//! - [`reads`]: Authorize, Explain, BatchAuthorize, CheckApi, the settings
//!   page, the privacy setting, the audit trail, the catalog.
//! - [`decisions`]: popup answers, settings changes, removals, privacy
//!   answers, session ends and grant lapses.
//! - [`apps`]: registrations, imports, exports.
//! - [`admin`]: compaction, verification, the log and store statistics.

mod admin;
mod apps;
mod decisions;
mod error;
mod reads;
mod trail;
mod users;

use std::{collections::BTreeMap, sync::Arc};

pub use apps::Imported;
pub use error::BrokerError;
use trail::Actor;
use trail::PromptLog;
pub use users::{UserDecisionsPage, UserErased, UserReset};

pub use crate::domain::{ApiVerdict, Subject};
use crate::{
    clock::{SharedClock, SystemClock},
    domain::{
        machine::SettingItem, App, AppId, AuditEntry, DomainError, Event, NagPolicy, Policy,
        RuleSet, Scope, StateQuery, SubjectState,
    },
    store::{Committed, Store, View, WriteSet},
};

/// A runtime asking again within this long while the same popup is up is
/// the same prompt: one audit record.
pub const PROMPT_AUDIT_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a one-time grant lasts without its session ending, by default.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(30 * 60);
/// After a user disagrees with a privacy guide, calls fail without a popup
/// this long, by default.
pub const DEFAULT_PRIVACY_GAP: std::time::Duration = std::time::Duration::from_secs(10);

/// Most apps (ListApps) or audit records (ListAudit) one page returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Items per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// A page size as asked (0: the default), capped at [`MAX_PAGE_SIZE`].
pub fn page_size(requested: usize) -> usize {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The result of a write that changes decisions.
#[derive(Clone, Debug)]
pub struct Written<T> {
    pub value: T,
    pub events: Vec<Event>,
    pub revision: u64,
}

/// A read and the revision it reflects (every change up to it is included).
#[derive(Clone, Debug)]
pub struct Read<T> {
    pub value: T,
    pub revision: u64,
}

/// The recorded answer to a popup.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub err_msg: String,
    pub state: crate::domain::DecisionState,
}

/// One page of apps and the id to continue after, if more follow.
#[derive(Clone, Debug)]
pub struct AppPage {
    pub apps: Vec<Arc<App>>,
    pub next: Option<AppId>,
}

/// The settings page.
#[derive(Clone, Debug)]
pub struct SettingsPage {
    pub items: Vec<SettingItem>,
    pub auth_setting: BTreeMap<Scope, bool>,
}

/// The broker: cheap to clone, shared by every service.
#[derive(Clone)]
pub struct Broker {
    store: Arc<dyn Store>,
    rules: Arc<RuleSet>,
    policy: Policy,
    session_idle_ms: u64,
    audit_prompts: bool,
    prompt_log: Arc<PromptLog>,
    clock: SharedClock,
}

impl Broker {
    pub fn new(store: Arc<dyn Store>, rules: RuleSet) -> Self {
        Self {
            store,
            rules: Arc::new(rules),
            policy: Policy {
                nag: None,
                privacy_gap_ms: millis(DEFAULT_PRIVACY_GAP),
            },
            session_idle_ms: millis(DEFAULT_SESSION_IDLE_TIMEOUT),
            audit_prompts: true,
            prompt_log: Arc::new(PromptLog::new(millis(PROMPT_AUDIT_WINDOW))),
            clock: SystemClock::shared(),
        }
    }

    /// The clock lifetimes, embargoes and privacy gaps are measured by.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The anti-nag policy (off: `None`, the default).
    pub fn with_nag_policy(mut self, policy: Option<NagPolicy>) -> Self {
        self.policy.nag = policy;
        self
    }

    /// Whether prompts shown (and suppressed) go into the audit trail.
    pub fn with_prompt_audit(mut self, on: bool) -> Self {
        self.audit_prompts = on;
        self
    }

    /// How long calls fail without a popup after a privacy disagreement.
    pub fn with_privacy_gap(mut self, gap: std::time::Duration) -> Self {
        self.policy.privacy_gap_ms = millis(gap);
        self
    }

    /// How long one-time grants last when their session does not end.
    pub fn with_session_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.session_idle_ms = millis(timeout);
        self
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Unix milliseconds now, by the broker's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The revision every read from now on reflects at least.
    pub fn revision(&self) -> u64 {
        self.store.revision()
    }

    fn app(&self, id: &AppId) -> Result<Arc<App>, BrokerError> {
        self.store
            .app(id)?
            .ok_or_else(|| DomainError::app_not_found(id).into())
    }

    /// What verdicts for `scopes` of `s` need, in one store read.
    fn subject_state(
        &self,
        app: &App,
        s: &Subject,
        scopes: &[Scope],
    ) -> Result<SubjectState, BrokerError> {
        let query = StateQuery::for_verdicts(app, scopes, &self.policy);
        Ok(self.store.subject(&s.app, &s.user, &query)?)
    }

    /// Every decision of `s` with its lifetime (no privacy or anti-nag
    /// state), in one store read.
    fn decisions_of(&self, s: &Subject) -> Result<SubjectState, BrokerError> {
        Ok(self
            .store
            .subject(&s.app, &s.user, &StateQuery::decisions())?)
    }

    /// Queues a write without waiting for it; `what` names it in the log
    /// line if the queue is full.
    fn submit_detached(&self, set: WriteSet, what: &'static str, records: usize) {
        let job = Box::new(move |_: &dyn View| Ok(set));
        if let Err(e) = self.store.submit_detached(job) {
            tracing::warn!(error = %e, records, "{what}");
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn written<T>(committed: Committed, value: T) -> Written<T> {
    Written {
        value,
        events: committed.events,
        revision: committed.revision,
    }
}

/// An operator action's audit record (about an app, no user).
fn operator_entry(
    who: &crate::domain::Principal,
    app: &AppId,
    action: crate::domain::OperatorAction,
) -> AuditEntry {
    AuditEntry {
        app: app.clone(),
        user: None,
        scope: None,
        action: crate::domain::AuditAction::Operator(action),
        principal: who.name.clone(),
        client: None,
    }
}
