//! The domain: scopes, rules, gates and the decision state machine.
//!
//! Plain Rust: nothing here knows about gRPC, protobuf or the store. Values
//! arrive already typed (ids, scopes, versions are parsed at the edge), and
//! every function is pure, so it is unit-tested directly.

pub mod access;
pub mod app;
pub mod audit;
pub mod authorize;
pub mod catalog;
pub mod decision;
mod error;
pub mod gates;
mod ids;
pub mod import;
pub mod machine;
mod platform;
pub mod privacy;
pub mod rules;
pub mod users;
mod version;

pub use access::{AppBinding, Denied, Principal, Role, Rpc};
pub use app::{App, AppKind, Declarations, RawDeclarations};
pub use audit::{
    AuditAction, AuditEntry, AuditQuery, AuditRecord, NagPolicy, NagState, OperatorAction,
};
pub use authorize::{ApiVerdict, Policy, Question, StateQuery, SubjectState};
pub use catalog::{Api, Availability, LocationKind, Scope, ScopeInfo, CATALOG};
pub use decision::{
    Cause, Change, Decision, DecisionRecords, DecisionRow, DecisionState, Event, EventFilter,
    Lifetime, LifetimeRequest, Subject, UserDecisions,
};
pub use error::{quoted, DomainError};
pub use gates::{Outcome, Prompt, Reason, Verdict};
pub use ids::{AppId, SessionId, UserId, MAX_ID_LEN};
pub use machine::{Answer, LocationOption, SettingItem, SettingsUpdate};
pub use platform::{Client, Platform};
pub use privacy::{InfoType, PrivacyGuide, PrivacyState};
pub use rules::{MinSdkRule, MinSdkTarget, PopupRule, RuleSet, Target};
pub use version::{Version, VersionError, MAX_SEGMENTS as MAX_VERSION_SEGMENTS};
