//! Whole request messages, one conversion each, destructured field by
//! field: a field added to the proto is a compile error here, not an input
//! silently ignored.

use std::collections::BTreeMap;

use super::{
    answer, app_request, client, invalid, lifetime, lifetime_of_stored, location_option, scope,
    subject_of,
};
use crate::{
    domain::{
        Answer, AppId, AppKind, Client, DecisionState, DomainError, LifetimeRequest,
        RawDeclarations, Scope, SessionId, Subject, UserId,
    },
    pb,
};

/// Most scopes one BatchAuthorize may ask about.
pub const MAX_BATCH_SCOPES: usize = 64;

/// A request refused while converting. `subject` is set when the subject
/// parsed before the failing field: the caller's app binding is checked
/// against it first ([`super::access::Caller::admit`]), as it always was.
#[derive(Debug)]
pub struct Rejected {
    pub subject: Option<Subject>,
    pub error: DomainError,
}

impl From<DomainError> for Rejected {
    fn from(error: DomainError) -> Self {
        Rejected {
            subject: None,
            error,
        }
    }
}

/// A converted request about one (app, user).
pub trait ForSubject {
    fn subject(&self) -> &Subject;
}

/// Parses the subject, then the rest of the request with it.
fn about<T>(
    app_id: String,
    user_id: String,
    rest: impl FnOnce() -> Result<T, DomainError>,
) -> Result<(Subject, T), Rejected> {
    let s = subject_of(app_id, user_id)?;
    match rest() {
        Ok(t) => Ok((s, t)),
        Err(error) => Err(Rejected {
            subject: Some(s),
            error,
        }),
    }
}

macro_rules! for_subject {
    ($($t:ty),*) => {
        $(impl ForSubject for $t {
            fn subject(&self) -> &Subject {
                &self.subject
            }
        })*
    };
}
for_subject!(
    AuthorizeCall,
    BatchAuthorizeCall,
    CheckApiCall,
    RecordCall,
    UpdateSettingCall,
    EndSessionCall,
    PrivacyAnswerCall,
    SubjectCall
);

/// Authorize and Explain.
pub struct AuthorizeCall {
    pub subject: Subject,
    pub scope: Scope,
    pub client: Client,
}

impl TryFrom<pb::AuthorizeRequest> for AuthorizeCall {
    type Error = Rejected;

    fn try_from(r: pb::AuthorizeRequest) -> Result<Self, Rejected> {
        let pb::AuthorizeRequest {
            app_id,
            user_id,
            scope: raw_scope,
            client: raw_client,
        } = r;
        let (subject, (scope, client)) = about(app_id, user_id, || {
            Ok((scope("scope", &raw_scope)?, client(raw_client)?))
        })?;
        Ok(Self {
            subject,
            scope,
            client,
        })
    }
}

pub struct BatchAuthorizeCall {
    pub subject: Subject,
    pub scopes: Vec<Scope>,
    pub client: Client,
}

impl TryFrom<pb::BatchAuthorizeRequest> for BatchAuthorizeCall {
    type Error = Rejected;

    fn try_from(r: pb::BatchAuthorizeRequest) -> Result<Self, Rejected> {
        let pb::BatchAuthorizeRequest {
            app_id,
            user_id,
            scopes: raw_scopes,
            client: raw_client,
        } = r;
        let (subject, (scopes, client)) = about(app_id, user_id, || {
            if raw_scopes.is_empty() || raw_scopes.len() > MAX_BATCH_SCOPES {
                return Err(invalid(
                    "scopes",
                    format!(
                        "scopes must hold 1 to {MAX_BATCH_SCOPES} scopes, not {}",
                        raw_scopes.len()
                    ),
                ));
            }
            let scopes = raw_scopes
                .iter()
                .enumerate()
                .map(|(i, s)| scope(&format!("scopes[{i}]"), s))
                .collect::<Result<Vec<Scope>, _>>()?;
            Ok((scopes, client(raw_client)?))
        })?;
        Ok(Self {
            subject,
            scopes,
            client,
        })
    }
}

pub struct CheckApiCall {
    pub subject: Subject,
    pub api: crate::domain::Api,
    pub client: Client,
}

impl TryFrom<pb::CheckApiRequest> for CheckApiCall {
    type Error = Rejected;

    fn try_from(r: pb::CheckApiRequest) -> Result<Self, Rejected> {
        let pb::CheckApiRequest {
            app_id,
            user_id,
            api,
            client: raw_client,
        } = r;
        let (subject, (api, client)) = about(app_id, user_id, || {
            Ok((
                crate::domain::Api::parse_field("api", &api)?,
                client(raw_client)?,
            ))
        })?;
        Ok(Self {
            subject,
            api,
            client,
        })
    }
}

pub struct RecordCall {
    pub subject: Subject,
    pub scope: Scope,
    pub answer: Answer,
    pub client: Client,
    pub lifetime: LifetimeRequest,
}

impl TryFrom<pb::RecordDecisionRequest> for RecordCall {
    type Error = Rejected;

    fn try_from(r: pb::RecordDecisionRequest) -> Result<Self, Rejected> {
        let pb::RecordDecisionRequest {
            app_id,
            user_id,
            scope: raw_scope,
            answer: raw_answer,
            client: raw_client,
            lifetime: raw_lifetime,
        } = r;
        let (subject, (scope, answer, client, lifetime)) = about(app_id, user_id, || {
            Ok((
                scope("scope", &raw_scope)?,
                answer(raw_answer)?,
                client(raw_client)?,
                lifetime(raw_lifetime)?,
            ))
        })?;
        Ok(Self {
            subject,
            scope,
            answer,
            client,
            lifetime,
        })
    }
}

pub struct UpdateSettingCall {
    pub subject: Subject,
    pub update: crate::domain::SettingsUpdate,
    pub lifetime: LifetimeRequest,
}

impl TryFrom<pb::UpdateSettingRequest> for UpdateSettingCall {
    type Error = Rejected;

    fn try_from(r: pb::UpdateSettingRequest) -> Result<Self, Rejected> {
        let pb::UpdateSettingRequest {
            app_id,
            user_id,
            auth_setting,
            location: raw_location,
            lifetime: raw_lifetime,
        } = r;
        let (subject, (update, lifetime)) = about(app_id, user_id, || {
            let mut toggles = BTreeMap::new();
            for (name, enabled) in &auth_setting {
                toggles.insert(scope("auth_setting", name)?, *enabled);
            }
            let location = location_option(raw_location)?;
            let lifetime = lifetime(raw_lifetime)?;
            if toggles.is_empty() && location.is_none() {
                return Err(invalid(
                    "auth_setting",
                    "auth_setting and location are both empty: nothing to change".into(),
                ));
            }
            let update = crate::domain::SettingsUpdate { toggles, location };
            Ok((update, lifetime))
        })?;
        Ok(Self {
            subject,
            update,
            lifetime,
        })
    }
}

pub struct EndSessionCall {
    pub subject: Subject,
    pub session: SessionId,
}

impl TryFrom<pb::EndSessionRequest> for EndSessionCall {
    type Error = Rejected;

    fn try_from(r: pb::EndSessionRequest) -> Result<Self, Rejected> {
        let pb::EndSessionRequest {
            app_id,
            user_id,
            session_id,
        } = r;
        let (subject, session) = about(app_id, user_id, || {
            SessionId::parse_field("session_id", &session_id)
        })?;
        Ok(Self { subject, session })
    }
}

pub struct PrivacyAnswerCall {
    pub subject: Subject,
    pub agree: bool,
}

impl TryFrom<pb::RecordPrivacyDecisionRequest> for PrivacyAnswerCall {
    type Error = Rejected;

    fn try_from(r: pb::RecordPrivacyDecisionRequest) -> Result<Self, Rejected> {
        let pb::RecordPrivacyDecisionRequest {
            app_id,
            user_id,
            agree,
        } = r;
        let (subject, ()) = about(app_id, user_id, || Ok(()))?;
        Ok(Self { subject, agree })
    }
}

/// GetSetting, OpenSetting, RemoveApp, GetPrivacySetting: the subject only.
pub struct SubjectCall {
    pub subject: Subject,
}

macro_rules! subject_only {
    ($($req:ident),*) => {
        $(impl TryFrom<pb::$req> for SubjectCall {
            type Error = Rejected;

            fn try_from(r: pb::$req) -> Result<Self, Rejected> {
                let pb::$req { app_id, user_id } = r;
                let (subject, ()) = about(app_id, user_id, || Ok(()))?;
                Ok(Self { subject })
            }
        })*
    };
}
subject_only!(
    GetSettingRequest,
    OpenSettingRequest,
    RemoveAppRequest,
    GetPrivacySettingRequest
);

/// One record of an import; a decision row is checked on its own here
/// (ids, scope, state, lifetime), the import as a whole by
/// [`crate::domain::import::plan`].
pub fn import_record(
    record: pb::export_record::Record,
) -> Result<crate::domain::import::ImportRecord, DomainError> {
    use crate::domain::import::ImportRecord;
    use pb::export_record::Record;
    Ok(match record {
        Record::Header(pb::ExportHeader {
            format,
            revision: _,
        }) => ImportRecord::Header { format },
        Record::App(app) => {
            let (id, kind, raw) = app_request(Some(app))?;
            ImportRecord::App { id, kind, raw }
        }
        Record::Decision(d) => ImportRecord::Decision(stored_decision(d)?),
        Record::Event(_) => ImportRecord::Ignored,
    })
}

/// An exported decision row.
fn stored_decision(d: pb::StoredDecision) -> Result<crate::domain::DecisionRow, DomainError> {
    let pb::StoredDecision {
        app_id,
        user_id,
        scope: raw_scope,
        state: raw_state,
        expires_at,
        session_id,
    } = d;
    // Ids first: the state's message quotes them, so they must be sane.
    let app = AppId::parse_field("decision.app_id", &app_id)?;
    let user = UserId::parse_field("decision.user_id", &user_id)?;
    let scope = scope("decision.scope", &raw_scope)?;
    let state = match pb::DecisionState::try_from(raw_state) {
        Ok(pb::DecisionState::Granted) => DecisionState::Granted,
        Ok(pb::DecisionState::Denied) => DecisionState::Denied,
        _ => {
            return Err(invalid(
                "decision.state",
                format!(
                    "decision.state {raw_state} for {app_id} {user_id} {raw_scope} must be GRANTED or DENIED"
                ),
            ))
        }
    };
    let lifetime = lifetime_of_stored(expires_at, &session_id)?;
    let row = crate::domain::DecisionRow {
        app,
        user,
        scope,
        state,
        lifetime,
    };
    crate::domain::import::check_row(&row)?;
    Ok(row)
}

/// RegisterApp and UpdateApp.
pub struct AppCall {
    pub id: AppId,
    pub kind: AppKind,
    pub raw: RawDeclarations,
}

impl TryFrom<pb::RegisterAppRequest> for AppCall {
    type Error = DomainError;

    fn try_from(r: pb::RegisterAppRequest) -> Result<Self, DomainError> {
        let pb::RegisterAppRequest { app } = r;
        let (id, kind, raw) = app_request(app)?;
        Ok(Self { id, kind, raw })
    }
}

impl TryFrom<pb::UpdateAppRequest> for AppCall {
    type Error = DomainError;

    fn try_from(r: pb::UpdateAppRequest) -> Result<Self, DomainError> {
        let pb::UpdateAppRequest { app } = r;
        let (id, kind, raw) = app_request(app)?;
        Ok(Self { id, kind, raw })
    }
}

/// GetApp and DeleteApp.
pub struct AppIdCall(pub AppId);

impl TryFrom<pb::GetAppRequest> for AppIdCall {
    type Error = DomainError;

    fn try_from(r: pb::GetAppRequest) -> Result<Self, DomainError> {
        let pb::GetAppRequest { app_id } = r;
        Ok(Self(AppId::parse(&app_id)?))
    }
}

impl TryFrom<pb::DeleteAppRequest> for AppIdCall {
    type Error = DomainError;

    fn try_from(r: pb::DeleteAppRequest) -> Result<Self, DomainError> {
        let pb::DeleteAppRequest { app_id } = r;
        Ok(Self(AppId::parse(&app_id)?))
    }
}

/// ListApps: the id to continue after, and the page size as asked (the
/// broker applies the default and the cap).
pub struct ListAppsCall {
    pub after: Option<AppId>,
    pub page_size: usize,
}

impl TryFrom<pb::ListAppsRequest> for ListAppsCall {
    type Error = DomainError;

    fn try_from(r: pb::ListAppsRequest) -> Result<Self, DomainError> {
        let pb::ListAppsRequest {
            page_size,
            page_token,
        } = r;
        let after = match page_token.as_str() {
            "" => None,
            token => Some(AppId::parse_field("page_token", token)?),
        };
        Ok(Self {
            after,
            page_size: usize::try_from(page_size).unwrap_or(usize::MAX),
        })
    }
}

/// ListUserDecisions: the user, an optional scope, the app to continue
/// after (the page token) and the page size as asked.
pub struct ListUserCall {
    pub user: UserId,
    pub scope: Option<Scope>,
    pub after: Option<AppId>,
    pub page_size: usize,
}

impl TryFrom<pb::ListUserDecisionsRequest> for ListUserCall {
    type Error = DomainError;

    fn try_from(r: pb::ListUserDecisionsRequest) -> Result<Self, DomainError> {
        let pb::ListUserDecisionsRequest {
            user_id,
            scope: raw_scope,
            page_size,
            page_token,
        } = r;
        let user = UserId::parse_field("user_id", &user_id)?;
        let scope = match raw_scope.as_str() {
            "" => None,
            raw => Some(scope("scope", raw)?),
        };
        let after = match page_token.as_str() {
            "" => None,
            token => Some(AppId::parse_field("page_token", token)?),
        };
        Ok(Self {
            user,
            scope,
            after,
            page_size: usize::try_from(page_size).unwrap_or(usize::MAX),
        })
    }
}

/// ResetUser and EraseUser: the user.
pub struct UserCall(pub UserId);

impl TryFrom<pb::ResetUserRequest> for UserCall {
    type Error = DomainError;

    fn try_from(r: pb::ResetUserRequest) -> Result<Self, DomainError> {
        let pb::ResetUserRequest { user_id } = r;
        Ok(Self(UserId::parse_field("user_id", &user_id)?))
    }
}

impl TryFrom<pb::EraseUserRequest> for UserCall {
    type Error = DomainError;

    fn try_from(r: pb::EraseUserRequest) -> Result<Self, DomainError> {
        let pb::EraseUserRequest { user_id } = r;
        Ok(Self(UserId::parse_field("user_id", &user_id)?))
    }
}
