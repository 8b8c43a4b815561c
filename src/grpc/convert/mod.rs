//! The only place that knows both the wire types and the domain types:
//! requests are parsed into typed values (ids, scopes, clients, answers),
//! answers are rendered back into protobuf messages. Whole request
//! messages are converted in [`requests`].

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    broker::Subject,
    domain::{
        gates::Verdict, quoted, Answer, App, AppId, AppKind, AuditAction, AuditQuery, AuditRecord,
        Availability, Cause, Client, DecisionState, DomainError, Event, EventFilter, Lifetime,
        LifetimeRequest, LocationOption, MinSdkTarget, OperatorAction, Outcome, Platform,
        RawDeclarations, Reason, RuleSet, Scope, ScopeInfo, SessionId, SettingItem, UserId,
        Version,
    },
    pb,
    watch::Item,
};

mod requests;
pub use requests::*;

pub(super) fn invalid(field: &str, message: String) -> DomainError {
    DomainError::InvalidArgument {
        field: field.to_owned(),
        message,
    }
}

pub fn subject(app_id: &str, user_id: &str) -> Result<Subject, DomainError> {
    subject_of(app_id.to_owned(), user_id.to_owned())
}

/// [`subject`] keeping a request's own strings (no copies).
pub fn subject_of(app_id: String, user_id: String) -> Result<Subject, DomainError> {
    Ok(Subject {
        app: AppId::from_string(app_id)?,
        user: UserId::from_string(user_id)?,
    })
}

pub fn scope(field: &str, raw: &str) -> Result<Scope, DomainError> {
    Scope::parse_field(field, raw)
}

fn version(field: &str, raw: &str) -> Result<Version, DomainError> {
    raw.parse().map_err(|e| {
        invalid(
            field,
            format!("{field} {} is not a version: it {e}", quoted(raw)),
        )
    })
}

pub fn client(client: Option<pb::ClientInfo>) -> Result<Client, DomainError> {
    let c = client.ok_or_else(|| {
        invalid(
            "client",
            "client is required (platform, host_version, sdk_version)".into(),
        )
    })?;
    let platform = match pb::Platform::try_from(c.platform) {
        Ok(pb::Platform::Unspecified) => {
            return Err(invalid(
                "client.platform",
                "client.platform is required (PLATFORM_UNSPECIFIED)".into(),
            ))
        }
        Ok(pb::Platform::Ios) => Platform::Ios,
        Ok(pb::Platform::Android) => Platform::Android,
        Ok(pb::Platform::Ohos) => Platform::Ohos,
        Ok(pb::Platform::Windows) => Platform::Windows,
        Ok(pb::Platform::Mac) => Platform::Mac,
        Ok(pb::Platform::Devtools) => Platform::Devtools,
        Err(_) => {
            return Err(invalid(
                "client.platform",
                format!("client.platform {} is not a known platform", c.platform),
            ))
        }
    };
    Ok(Client {
        platform,
        host_version: version("client.host_version", &c.host_version)?,
        sdk_version: version("client.sdk_version", &c.sdk_version)?,
    })
}

pub fn answer(raw: i32) -> Result<Answer, DomainError> {
    match pb::Answer::try_from(raw) {
        Ok(pb::Answer::Allow) => Ok(Answer::Allow),
        Ok(pb::Answer::Deny) => Ok(Answer::Deny),
        Ok(pb::Answer::Cancel) => Ok(Answer::Cancel),
        Ok(pb::Answer::AllowWhileUsing) => Ok(Answer::AllowWhileUsing),
        Ok(pb::Answer::Unspecified) => Err(invalid(
            "answer",
            "answer is required (ANSWER_UNSPECIFIED)".into(),
        )),
        Err(_) => Err(invalid(
            "answer",
            format!("answer {raw} is not a known answer"),
        )),
    }
}

/// UNSPECIFIED means "not changing the location item".
pub fn location_option(raw: i32) -> Result<Option<LocationOption>, DomainError> {
    match pb::LocationOption::try_from(raw) {
        Ok(pb::LocationOption::Unspecified) => Ok(None),
        Ok(pb::LocationOption::NotAllowed) => Ok(Some(LocationOption::NotAllowed)),
        Ok(pb::LocationOption::WhileUsing) => Ok(Some(LocationOption::WhileUsing)),
        Ok(pb::LocationOption::WhileUsingAndAfterLeaving) => {
            Ok(Some(LocationOption::WhileUsingAndAfterLeaving))
        }
        Err(_) => Err(invalid(
            "location",
            format!("location {raw} is not a known location option"),
        )),
    }
}

/// `required`: whether UNSPECIFIED is an error (app registration) or means
/// "any kind" (catalog listing).
pub fn app_kind(field: &str, raw: i32, required: bool) -> Result<Option<AppKind>, DomainError> {
    match pb::AppKind::try_from(raw) {
        Ok(pb::AppKind::MiniProgram) => Ok(Some(AppKind::MiniProgram)),
        Ok(pb::AppKind::MiniGame) => Ok(Some(AppKind::MiniGame)),
        Ok(pb::AppKind::Unspecified) if !required => Ok(None),
        Ok(pb::AppKind::Unspecified) => Err(invalid(
            field,
            format!("{field} is required (APP_KIND_UNSPECIFIED)"),
        )),
        Err(_) => Err(invalid(
            field,
            format!("{field} {raw} is not a known app kind"),
        )),
    }
}

/// An app registration request: id, kind and raw declarations (the
/// output-only fields a client may echo back are ignored).
pub fn app_request(app: Option<pb::App>) -> Result<(AppId, AppKind, RawDeclarations), DomainError> {
    let pb::App {
        app_id,
        kind: raw_kind,
        permission,
        required_background_modes,
        required_private_infos,
        revision: _,
        updated_at: _,
        privacy,
    } = app.ok_or_else(|| invalid("app", "app is required".into()))?;
    let id = AppId::parse_field("app.app_id", &app_id)?;
    let kind = app_kind("app.kind", raw_kind, true)?
        .ok_or_else(|| invalid("app.kind", "app.kind is required".into()))?;
    let raw = RawDeclarations {
        permission: permission.into_iter().map(|(k, v)| (k, v.desc)).collect(),
        background_modes: required_background_modes,
        private_infos: required_private_infos,
        privacy: privacy.map(
            |pb::PrivacyGuide {
                 name,
                 info_types,
                 version: _,
             }| (name, info_types),
        ),
    };
    Ok((id, kind, raw))
}

// ---------------------------------------------------------------------------
// Domain -> wire
// ---------------------------------------------------------------------------

pub fn state(s: DecisionState) -> pb::DecisionState {
    match s {
        DecisionState::NotDetermined => pb::DecisionState::NotDetermined,
        DecisionState::Granted => pb::DecisionState::Granted,
        DecisionState::Denied => pb::DecisionState::Denied,
    }
}

pub fn outcome(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Granted => pb::Outcome::Granted,
        Outcome::Denied => pb::Outcome::Denied,
        Outcome::Prompt => pb::Outcome::Prompt,
        Outcome::SettingsRequired => pb::Outcome::SettingsRequired,
        Outcome::NoAuthNeeded => pb::Outcome::NoAuthNeeded,
        Outcome::NotDeclared => pb::Outcome::NotDeclared,
        Outcome::Unsupported => pb::Outcome::Unsupported,
        Outcome::PrivacyRequired => pb::Outcome::PrivacyRequired,
        Outcome::PrivacyDenied => pb::Outcome::PrivacyDenied,
        Outcome::Embargoed => pb::Outcome::Embargoed,
    }
}

fn reason(r: Reason) -> pb::Reason {
    match r {
        Reason::ScopeNotForAppKind => pb::Reason::ScopeNotForAppKind,
        Reason::BaseLibraryTooOld => pb::Reason::BaseLibraryTooOld,
        Reason::AuthorizationAbolished => pb::Reason::AuthorizationAbolished,
        Reason::AnonymousProfile => pb::Reason::AnonymousProfile,
        Reason::MissingPermissionDesc => pb::Reason::MissingPermissionDesc,
        Reason::MissingBackgroundMode => pb::Reason::MissingBackgroundMode,
        Reason::MissingPrivateInfo => pb::Reason::MissingPrivateInfo,
        Reason::StoredGrant => pb::Reason::StoredGrant,
        Reason::StoredDenial => pb::Reason::StoredDenial,
        Reason::PopupAvailable => pb::Reason::PopupAvailable,
        Reason::PopupUnavailable => pb::Reason::PopupUnavailable,
        Reason::PrivacyNotDeclared => pb::Reason::PrivacyNotDeclared,
        Reason::PrivacyAgreementNeeded => pb::Reason::PrivacyAgreementNeeded,
        Reason::PrivacyDisagreed => pb::Reason::PrivacyDisagreed,
        Reason::PromptEmbargoed => pb::Reason::PromptEmbargoed,
    }
}

pub fn cause(c: Cause) -> pb::Cause {
    match c {
        Cause::Popup => pb::Cause::Popup,
        Cause::Settings => pb::Cause::Settings,
        Cause::AppRemoved => pb::Cause::AppRemoved,
        Cause::Operator => pb::Cause::Operator,
        Cause::Expired => pb::Cause::Expired,
        Cause::UserReset => pb::Cause::UserReset,
        Cause::UserErased => pb::Cause::UserErased,
    }
}

fn platform(p: Platform) -> pb::Platform {
    match p {
        Platform::Ios => pb::Platform::Ios,
        Platform::Android => pb::Platform::Android,
        Platform::Ohos => pb::Platform::Ohos,
        Platform::Windows => pb::Platform::Windows,
        Platform::Mac => pb::Platform::Mac,
        Platform::Devtools => pb::Platform::Devtools,
    }
}

fn location(o: LocationOption) -> pb::LocationOption {
    match o {
        LocationOption::NotAllowed => pb::LocationOption::NotAllowed,
        LocationOption::WhileUsing => pb::LocationOption::WhileUsing,
        LocationOption::WhileUsingAndAfterLeaving => pb::LocationOption::WhileUsingAndAfterLeaving,
    }
}

fn kind(k: AppKind) -> pb::AppKind {
    match k {
        AppKind::MiniProgram => pb::AppKind::MiniProgram,
        AppKind::MiniGame => pb::AppKind::MiniGame,
    }
}

fn availability(a: Availability) -> pb::Availability {
    match a {
        Availability::Unsupported => pb::Availability::Unsupported,
        Availability::Popup => pb::Availability::Popup,
        Availability::NoAuthNeeded => pb::Availability::NoAuthNeeded,
        Availability::Anonymous => pb::Availability::Anonymous,
    }
}

pub fn decision(v: Verdict) -> pb::Decision {
    let (expires_at, session_id) = stored_lifetime(&v.lifetime);
    pb::Decision {
        scope: v.scope.name().to_owned(),
        outcome: outcome(v.outcome).into(),
        state: state(v.state).into(),
        err_msg: v.err_msg,
        reason: reason(v.reason).into(),
        rule: v.rule.unwrap_or_default(),
        prompt: v.prompt.map(|p| pb::Prompt {
            scope: p.scope.name().to_owned(),
            scope_description: p.scope_description.to_owned(),
            app_desc: p.app_desc.unwrap_or_default(),
            background_location: p.background_location,
        }),
        expires_at,
        session_id,
        err_no: v.err_no,
        embargo_until: v.embargo_until_ms.map(timestamp),
    }
}

/// A ListAudit request: the app and the query.
pub fn audit_query(r: pb::ListAuditRequest) -> Result<(AppId, AuditQuery), DomainError> {
    let pb::ListAuditRequest {
        app_id,
        user_id,
        scope: raw_scope,
        since,
        page_size,
        page_token,
    } = r;
    let app = AppId::parse(&app_id)?;
    let user = match user_id.as_str() {
        "" => None,
        u => Some(UserId::parse(u)?),
    };
    let scope = match raw_scope.as_str() {
        "" => None,
        s => Some(scope("scope", s)?),
    };
    let since_ms = since.map(|t| timestamp_ms("since", t)).transpose()?;
    let after_seq = match page_token.as_str() {
        "" => None,
        t => Some(t.parse::<u64>().map_err(|_| {
            invalid(
                "page_token",
                format!("page_token {} is not one this server gave out", quoted(t)),
            )
        })?),
    };
    // As asked: the broker applies the default and the cap.
    let limit = usize::try_from(page_size).unwrap_or(usize::MAX);
    Ok((
        app,
        AuditQuery {
            user,
            scope,
            since_ms,
            after_seq,
            limit,
        },
    ))
}

fn audit_action(a: AuditAction) -> pb::AuditAction {
    use pb::AuditAction as W;
    match a {
        AuditAction::PromptShown => W::PromptShown,
        AuditAction::Answered(Answer::Allow) => W::AnsweredAllow,
        AuditAction::Answered(Answer::AllowWhileUsing) => W::AnsweredAllowWhileUsing,
        AuditAction::Answered(Answer::Deny) => W::AnsweredDeny,
        AuditAction::Answered(Answer::Cancel) => W::AnsweredCancel,
        AuditAction::SettingsChanged => W::SettingsChanged,
        AuditAction::AppRemoved => W::AppRemoved,
        AuditAction::Expired => W::Expired,
        AuditAction::SessionEnded => W::SessionEnded,
        AuditAction::PrivacyAnswered { agreed: true } => W::PrivacyAgreed,
        AuditAction::PrivacyAnswered { agreed: false } => W::PrivacyDisagreed,
        AuditAction::PromptSuppressed => W::PromptSuppressed,
        AuditAction::Operator(OperatorAction::RegisterApp) => W::OperatorRegisterApp,
        AuditAction::Operator(OperatorAction::UpdateApp) => W::OperatorUpdateApp,
        AuditAction::Operator(OperatorAction::DeleteApp) => W::OperatorDeleteApp,
        AuditAction::Operator(OperatorAction::Import) => W::OperatorImport,
        AuditAction::UserReset => W::UserReset,
        AuditAction::UserErased => W::UserErased,
    }
}

pub fn audit_record(r: AuditRecord) -> pb::AuditRecord {
    let e = r.entry;
    pb::AuditRecord {
        seq: r.seq,
        time: Some(timestamp(r.time_ms)),
        revision: r.revision,
        app_id: e.app.as_str().to_owned(),
        user_id: e.user.map(|u| u.as_str().to_owned()).unwrap_or_default(),
        scope: e.scope.map(|s| s.name().to_owned()).unwrap_or_default(),
        action: audit_action(e.action).into(),
        principal: e.principal,
        client: e.client.map(|c| pb::ClientInfo {
            platform: platform(c.platform).into(),
            host_version: c.host_version.to_string(),
            sdk_version: c.sdk_version.to_string(),
        }),
    }
}

/// A lifetime as decisions and export records carry it: the deadline and,
/// for a one-time grant, its session.
pub fn stored_lifetime(l: &Lifetime) -> (Option<prost_types::Timestamp>, String) {
    match l {
        Lifetime::Permanent => (None, String::new()),
        Lifetime::Until { expires_at_ms } => (Some(timestamp(*expires_at_ms)), String::new()),
        Lifetime::Session {
            session,
            expires_at_ms,
        } => (Some(timestamp(*expires_at_ms)), session.as_str().to_owned()),
    }
}

/// An imported record's lifetime (a lapsed one is imported as it is and
/// lapses at once).
pub fn lifetime_of_stored(
    expires_at: Option<prost_types::Timestamp>,
    session_id: &str,
) -> Result<Lifetime, DomainError> {
    let expires_at_ms = match expires_at {
        None if session_id.is_empty() => return Ok(Lifetime::Permanent),
        None => {
            return Err(invalid(
                "decision.expires_at",
                "decision.session_id needs decision.expires_at".into(),
            ))
        }
        Some(t) => timestamp_ms("decision.expires_at", t)?,
    };
    if session_id.is_empty() {
        Ok(Lifetime::Until { expires_at_ms })
    } else {
        Ok(Lifetime::Session {
            session: SessionId::parse_field("decision.session_id", session_id)?,
            expires_at_ms,
        })
    }
}

/// A wire timestamp as Unix milliseconds; `field` names it in errors.
/// Times before 1970, out-of-range nanos and overflows are refused.
fn timestamp_ms(field: &str, t: prost_types::Timestamp) -> Result<u64, DomainError> {
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(t.seconds), u64::try_from(t.nanos)) else {
        return Err(invalid(
            field,
            format!("{field} {}s {}ns is before 1970", t.seconds, t.nanos),
        ));
    };
    if nanos >= 1_000_000_000 {
        return Err(invalid(
            field,
            format!("{field} has {nanos} nanos; at most 999999999"),
        ));
    }
    seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(nanos / 1_000_000))
        .ok_or_else(|| invalid(field, format!("{field} is too far away")))
}

/// A request's grant lifetime.
pub fn lifetime(raw: Option<pb::GrantLifetime>) -> Result<LifetimeRequest, DomainError> {
    use pb::grant_lifetime::Kind;
    match raw.and_then(|l| l.kind) {
        None => Ok(LifetimeRequest::Permanent),
        Some(Kind::Until(t)) => Ok(LifetimeRequest::Until {
            expires_at_ms: timestamp_ms("lifetime.until", t)?,
        }),
        Some(Kind::SessionId(id)) => Ok(LifetimeRequest::Session(SessionId::parse_field(
            "lifetime.session_id",
            &id,
        )?)),
    }
}

pub fn step(s: crate::domain::gates::Step) -> pb::ExplainStep {
    pb::ExplainStep {
        gate: s.gate.into(),
        check: s.check,
        passed: s.passed,
    }
}

pub fn change(e: &Event) -> pb::DecisionChange {
    pb::DecisionChange {
        scope: e.scope.name().to_owned(),
        old_state: state(e.old).into(),
        new_state: state(e.new).into(),
        cause: cause(e.cause).into(),
        revision: e.revision,
    }
}

pub fn changes(events: &[Event]) -> Vec<pb::DecisionChange> {
    events.iter().map(change).collect()
}

pub fn auth_setting(map: &BTreeMap<Scope, bool>) -> std::collections::HashMap<String, bool> {
    map.iter().map(|(s, g)| (s.name().to_owned(), *g)).collect()
}

pub fn setting_item(item: SettingItem) -> pb::SettingItem {
    match item {
        SettingItem::Toggle { scope, enabled } => pb::SettingItem {
            scope: scope.name().to_owned(),
            title: scope.info().description.to_owned(),
            enabled,
            ..Default::default()
        },
        SettingItem::Location { current, options } => pb::SettingItem {
            scope: Scope::UserLocation.name().to_owned(),
            title: "Location".to_owned(),
            enabled: current != LocationOption::NotAllowed,
            location: true,
            location_option: location(current).into(),
            location_options: options.into_iter().map(|o| location(o).into()).collect(),
        },
    }
}

pub fn scope_info(info: &ScopeInfo) -> pb::ScopeInfo {
    use crate::domain::LocationKind;
    pb::ScopeInfo {
        scope: info.name.to_owned(),
        description: info.description.to_owned(),
        interfaces: info.interfaces.iter().map(|s| (*s).to_owned()).collect(),
        mini_program: availability(info.mini_program).into(),
        mini_game: availability(info.mini_game).into(),
        desc_required: info.location != LocationKind::None,
        background_mode_required: info.location == LocationKind::Background,
    }
}

pub fn rules(rules: &RuleSet, revision: u64) -> pb::GetRulesResponse {
    pb::GetRulesResponse {
        popup_rules: rules
            .popup
            .iter()
            .map(|r| pb::PopupRule {
                id: r.id.clone(),
                scope: r.scope.name().to_owned(),
                platforms: r.platforms.iter().map(|p| platform(*p).into()).collect(),
                min_host_version: r.min_host_version.to_string(),
            })
            .collect(),
        min_sdk_rules: rules
            .min_sdk
            .iter()
            .map(|r| pb::MinSdkRule {
                id: r.id.clone(),
                target: Some(match &r.target {
                    MinSdkTarget::Api(api) => pb::min_sdk_rule::Target::Api(api.clone()),
                    MinSdkTarget::Scope(s) => pb::min_sdk_rule::Target::Scope(s.name().to_owned()),
                }),
                min_sdk_version: r.min_sdk_version.to_string(),
            })
            .collect(),
        revision,
    }
}

pub fn app(app: &Arc<App>) -> pb::App {
    let d = &app.declarations;
    let ms = app.updated_at_ms;
    pb::App {
        app_id: app.id.as_str().to_owned(),
        kind: kind(app.kind).into(),
        permission: d
            .permission
            .iter()
            .map(|(s, desc)| {
                (
                    s.name().to_owned(),
                    pb::PermissionDesc { desc: desc.clone() },
                )
            })
            .collect(),
        required_background_modes: d.background_modes.iter().cloned().collect(),
        required_private_infos: d.private_infos.iter().cloned().collect(),
        revision: app.revision,
        updated_at: Some(timestamp(ms)),
        privacy: d.privacy.as_ref().map(|g| pb::PrivacyGuide {
            name: g.name.clone(),
            info_types: g.info_types.iter().map(|t| t.name().to_owned()).collect(),
            version: app.privacy_version,
        }),
    }
}

pub fn watch_request(r: pb::WatchRequest) -> Result<(EventFilter, Option<u64>), DomainError> {
    let pb::WatchRequest {
        app_ids,
        user_ids,
        scopes,
        start_revision,
    } = r;
    let limit = |field: &str, n: usize| {
        if n > MAX_WATCH_FILTER {
            Err(invalid(
                field,
                format!("{field} holds {n} entries; the limit is {MAX_WATCH_FILTER}"),
            ))
        } else {
            Ok(())
        }
    };
    limit("app_ids", app_ids.len())?;
    limit("user_ids", user_ids.len())?;
    limit("scopes", scopes.len())?;
    let mut filter = EventFilter::default();
    for (i, id) in app_ids.iter().enumerate() {
        filter
            .apps
            .insert(AppId::parse_field(&format!("app_ids[{i}]"), id)?);
    }
    for (i, id) in user_ids.iter().enumerate() {
        filter
            .users
            .insert(UserId::parse_field(&format!("user_ids[{i}]"), id)?);
    }
    for (i, s) in scopes.iter().enumerate() {
        filter.scopes.insert(scope(&format!("scopes[{i}]"), s)?);
    }
    Ok((filter, start_revision))
}

/// Most entries in each Watch filter list.
pub const MAX_WATCH_FILTER: usize = 1000;

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// One page of a user's decisions across apps.
pub fn user_decisions(
    page: &crate::broker::UserDecisionsPage,
    revision: u64,
) -> pb::ListUserDecisionsResponse {
    pb::ListUserDecisionsResponse {
        apps: page
            .apps
            .iter()
            .map(|(app, rows)| pb::UserAppDecisions {
                app_id: app.as_str().to_owned(),
                decisions: rows
                    .iter()
                    .map(|(scope, d)| {
                        let (expires_at, session_id) = stored_lifetime(&d.lifetime);
                        pb::UserScopeDecision {
                            scope: scope.name().to_owned(),
                            state: state(d.state).into(),
                            cause: cause(d.cause).into(),
                            updated_at: Some(timestamp(d.updated_at_ms)),
                            revision: d.revision,
                            expires_at,
                            session_id,
                        }
                    })
                    .collect(),
            })
            .collect(),
        next_page_token: page
            .next
            .as_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        revision,
    }
}

pub fn event(e: &Event) -> pb::DecisionEvent {
    pb::DecisionEvent {
        revision: e.revision,
        app_id: e.app.as_str().to_owned(),
        user_id: e.user.as_str().to_owned(),
        scope: e.scope.name().to_owned(),
        old_state: state(e.old).into(),
        new_state: state(e.new).into(),
        cause: cause(e.cause).into(),
        time: Some(timestamp(e.time_ms)),
    }
}

/// The wire form of one Watch item. A live event is lent from the group
/// every subscriber shares: the message's strings are the only copy made.
pub fn watch_item(item: Item<'_>) -> pb::WatchResponse {
    let kind = match item {
        Item::Live(e) => pb::watch_response::Kind::Event(event(e)),
        Item::Logged(e) => pb::watch_response::Kind::Event(event(&e)),
        Item::Progress(revision) => pb::watch_response::Kind::Progress(pb::Progress { revision }),
    };
    pb::WatchResponse { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_audit_action_has_the_wire_value_of_its_name() {
        for action in AuditAction::ALL {
            let name = format!("AUDIT_ACTION_{}", action.name());
            assert_eq!(audit_action(action).as_str_name(), name);
        }
    }
}
