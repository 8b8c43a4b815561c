//! `consent.v1.Authorization`: parse, call the broker, render.

use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::{
    access::caller,
    convert,
    stream::{Holder, WatchStream},
};
use crate::{
    auth::Authenticator,
    broker::Broker,
    domain::{gates::msg, Api, Scope, SessionId, SettingsUpdate},
    metrics::Metrics,
    pb::{self, authorization_server::Authorization},
    watch::Watcher,
};

/// Most scopes one BatchAuthorize may ask about.
pub const MAX_BATCH_SCOPES: usize = 64;

pub struct AuthorizationService {
    broker: Broker,
    watcher: Arc<Watcher>,
    metrics: Arc<Metrics>,
    auth: Arc<Authenticator>,
}

impl AuthorizationService {
    pub fn new(
        broker: Broker,
        watcher: Arc<Watcher>,
        metrics: Arc<Metrics>,
        auth: Arc<Authenticator>,
    ) -> Self {
        Self {
            broker,
            watcher,
            metrics,
            auth,
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = caller(&request)?;
        let presented = super::access::presentation(&request);
        let (mut filter, start) = convert::watch_request(request.into_inner())?;
        who.narrow_watch(&mut filter)?;
        let (items, outcome) = self.watcher.subscribe(filter, start)?;
        let holder = Holder {
            generation: self.auth.generation(),
            auth: self.auth.clone(),
            principal: who.principal,
            presented,
        };
        Ok(Response::new(
            WatchStream::new(items, outcome).held_by(holder),
        ))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let scope = convert::scope("scope", &r.scope)?;
        let client = convert::client(r.client)?;
        let read = self.broker.authorize(&subject, scope, &client, &who)?;
        self.metrics.observe_verdict(&read.value);
        Ok(Response::new(pb::AuthorizeResponse {
            decision: Some(convert::decision(read.value)),
            revision: read.revision,
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let scope = convert::scope("scope", &r.scope)?;
        let client = convert::client(r.client)?;
        let read = self.broker.explain(&subject, scope, &client)?;
        let (verdict, steps) = read.value;
        Ok(Response::new(pb::ExplainResponse {
            decision: Some(convert::decision(verdict)),
            steps: steps.into_iter().map(convert::step).collect(),
            revision: read.revision,
        }))
    }

    async fn batch_authorize(
        &self,
        request: Request<pb::BatchAuthorizeRequest>,
    ) -> Result<Response<pb::BatchAuthorizeResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        if r.scopes.is_empty() || r.scopes.len() > MAX_BATCH_SCOPES {
            return Err(Status::invalid_argument(format!(
                "scopes must hold 1 to {MAX_BATCH_SCOPES} scopes, not {}",
                r.scopes.len()
            )));
        }
        let scopes = r
            .scopes
            .iter()
            .enumerate()
            .map(|(i, s)| convert::scope(&format!("scopes[{i}]"), s))
            .collect::<Result<Vec<Scope>, _>>()?;
        let client = convert::client(r.client)?;
        let read = self
            .broker
            .batch_authorize(&subject, &scopes, &client, &who)?;
        read.value
            .iter()
            .for_each(|v| self.metrics.observe_verdict(v));
        Ok(Response::new(pb::BatchAuthorizeResponse {
            decisions: read.value.into_iter().map(convert::decision).collect(),
            revision: read.revision,
        }))
    }

    async fn check_api(
        &self,
        request: Request<pb::CheckApiRequest>,
    ) -> Result<Response<pb::CheckApiResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let api = Api::parse_field("api", &r.api)?;
        let client = convert::client(r.client)?;
        let read = self.broker.check_api(&subject, api, &client, &who)?;
        read.value
            .verdicts
            .iter()
            .for_each(|v| self.metrics.observe_verdict(v));
        let v = read.value;
        Ok(Response::new(pb::CheckApiResponse {
            api: v.api.name().to_owned(),
            outcome: convert::outcome(v.outcome).into(),
            err_msg: v.err_msg,
            decisions: v.verdicts.into_iter().map(convert::decision).collect(),
            revision: read.revision,
        }))
    }

    async fn record_decision(
        &self,
        request: Request<pb::RecordDecisionRequest>,
    ) -> Result<Response<pb::RecordDecisionResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let scope = convert::scope("scope", &r.scope)?;
        let answer = convert::answer(r.answer)?;
        let client = convert::client(r.client)?;
        let lifetime = convert::lifetime(r.lifetime)?;
        let written = self
            .broker
            .record(&subject, scope, client.clone(), answer, lifetime, &who)
            .await?;
        Ok(Response::new(pb::RecordDecisionResponse {
            err_msg: written.value.err_msg,
            state: convert::state(written.value.state).into(),
            changes: convert::changes(&written.events),
            revision: written.revision,
        }))
    }

    async fn get_setting(
        &self,
        request: Request<pb::GetSettingRequest>,
    ) -> Result<Response<pb::GetSettingResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let read = self.broker.get_setting(&subject)?;
        Ok(Response::new(pb::GetSettingResponse {
            auth_setting: convert::auth_setting(&read.value),
            err_msg: format!("getSetting:{}", msg::OK),
            revision: read.revision,
        }))
    }

    async fn open_setting(
        &self,
        request: Request<pb::OpenSettingRequest>,
    ) -> Result<Response<pb::OpenSettingResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let read = self.broker.open_setting(&subject)?;
        Ok(Response::new(pb::OpenSettingResponse {
            items: read
                .value
                .items
                .into_iter()
                .map(convert::setting_item)
                .collect(),
            auth_setting: convert::auth_setting(&read.value.auth_setting),
            err_msg: format!("openSetting:{}", msg::OK),
            revision: read.revision,
        }))
    }

    async fn update_setting(
        &self,
        request: Request<pb::UpdateSettingRequest>,
    ) -> Result<Response<pb::UpdateSettingResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let mut toggles = std::collections::BTreeMap::new();
        for (name, enabled) in &r.auth_setting {
            toggles.insert(convert::scope("auth_setting", name)?, *enabled);
        }
        let location = convert::location_option(r.location)?;
        let lifetime = convert::lifetime(r.lifetime)?;
        if toggles.is_empty() && location.is_none() {
            return Err(Status::invalid_argument(
                "auth_setting and location are both empty: nothing to change",
            ));
        }
        let written = self
            .broker
            .update_setting(
                &subject,
                SettingsUpdate { toggles, location },
                lifetime,
                &who,
            )
            .await?;
        Ok(Response::new(pb::UpdateSettingResponse {
            auth_setting: convert::auth_setting(&written.value),
            changes: convert::changes(&written.events),
            err_msg: format!("openSetting:{}", msg::OK),
            revision: written.revision,
        }))
    }

    async fn remove_app(
        &self,
        request: Request<pb::RemoveAppRequest>,
    ) -> Result<Response<pb::RemoveAppResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let written = self.broker.remove_app(&subject, &who).await?;
        Ok(Response::new(pb::RemoveAppResponse {
            changes: convert::changes(&written.events),
            revision: written.revision,
        }))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let session = SessionId::parse_field("session_id", &r.session_id)?;
        let written = self.broker.end_session(&subject, session, &who).await?;
        Ok(Response::new(pb::EndSessionResponse {
            changes: convert::changes(&written.events),
            revision: written.revision,
        }))
    }

    async fn get_privacy_setting(
        &self,
        request: Request<pb::GetPrivacySettingRequest>,
    ) -> Result<Response<pb::GetPrivacySettingResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let read = self.broker.get_privacy_setting(&subject)?;
        let (need_authorization, privacy_contract_name) = read.value;
        Ok(Response::new(pb::GetPrivacySettingResponse {
            need_authorization,
            privacy_contract_name,
            err_msg: format!("getPrivacySetting:{}", msg::OK),
            revision: read.revision,
        }))
    }

    async fn record_privacy_decision(
        &self,
        request: Request<pb::RecordPrivacyDecisionRequest>,
    ) -> Result<Response<pb::RecordPrivacyDecisionResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let subject = convert::subject(&r.app_id, &r.user_id)?;
        who.may_touch(&subject.app)?;
        let read = self
            .broker
            .record_privacy_decision(&subject, r.agree, &who)
            .await?;
        let (need_authorization, version) = read.value;
        Ok(Response::new(pb::RecordPrivacyDecisionResponse {
            need_authorization,
            version,
            revision: read.revision,
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let who = caller(&request)?;
        let (app, query) = convert::audit_query(request.into_inner())?;
        who.may_touch(&app)?;
        let read = self.broker.audit(&app, &query)?;
        let (records, next) = read.value;
        Ok(Response::new(pb::ListAuditResponse {
            records: records.into_iter().map(convert::audit_record).collect(),
            next_page_token: next.map(|seq| seq.to_string()).unwrap_or_default(),
            revision: read.revision,
        }))
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        let kind = convert::app_kind("kind", request.into_inner().kind, false)?;
        let read = self.broker.scopes(kind);
        Ok(Response::new(pb::ListScopesResponse {
            scopes: read.value.into_iter().map(convert::scope_info).collect(),
            revision: read.revision,
        }))
    }

    async fn get_rules(
        &self,
        _request: Request<pb::GetRulesRequest>,
    ) -> Result<Response<pb::GetRulesResponse>, Status> {
        Ok(Response::new(convert::rules(
            self.broker.rules(),
            self.broker.revision(),
        )))
    }
}
