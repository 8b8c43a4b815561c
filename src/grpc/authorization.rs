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
    domain::gates::msg,
    metrics::Metrics,
    pb::{self, authorization_server::Authorization},
    watch::Watcher,
};

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
        let call: convert::AuthorizeCall = who.admit(request.into_inner().try_into())?;
        let read = self
            .broker
            .authorize(&call.subject, call.scope, &call.client, &who)?;
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
        let call: convert::AuthorizeCall = who.admit(request.into_inner().try_into())?;
        let read = self
            .broker
            .explain(&call.subject, call.scope, &call.client)?;
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
        let call: convert::BatchAuthorizeCall = who.admit(request.into_inner().try_into())?;
        let read = self
            .broker
            .batch_authorize(&call.subject, &call.scopes, &call.client, &who)?;
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
        let call: convert::CheckApiCall = who.admit(request.into_inner().try_into())?;
        let read = self
            .broker
            .check_api(&call.subject, call.api, &call.client, &who)?;
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
        let c: convert::RecordCall = who.admit(request.into_inner().try_into())?;
        let written = self
            .broker
            .record(&c.subject, c.scope, c.client, c.answer, c.lifetime, &who)
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
        let call: convert::SubjectCall = who.admit(request.into_inner().try_into())?;
        let read = self.broker.get_setting(&call.subject)?;
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
        let call: convert::SubjectCall = who.admit(request.into_inner().try_into())?;
        let read = self.broker.open_setting(&call.subject)?;
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
        let call: convert::UpdateSettingCall = who.admit(request.into_inner().try_into())?;
        let written = self
            .broker
            .update_setting(&call.subject, call.update, call.lifetime, &who)
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
        let call: convert::SubjectCall = who.admit(request.into_inner().try_into())?;
        let written = self.broker.remove_app(&call.subject, &who).await?;
        Ok(Response::new(pb::RemoveAppResponse {
            changes: convert::changes(&written.events),
            revision: written.revision,
        }))
    }

    async fn list_user_decisions(
        &self,
        request: Request<pb::ListUserDecisionsRequest>,
    ) -> Result<Response<pb::ListUserDecisionsResponse>, Status> {
        let who = caller(&request)?;
        let call: convert::ListUserCall = request.into_inner().try_into()?;
        // A principal bound to some apps sees only their rows.
        let read = self.broker.list_user(
            &call.user,
            call.scope,
            call.after.as_ref(),
            call.page_size,
            &who.apps,
        )?;
        Ok(Response::new(convert::user_decisions(
            &read.value,
            read.revision,
        )))
    }

    async fn reset_user(
        &self,
        request: Request<pb::ResetUserRequest>,
    ) -> Result<Response<pb::ResetUserResponse>, Status> {
        let who = caller(&request)?;
        let convert::UserCall(user) = request.into_inner().try_into()?;
        // A principal bound to some apps resets only their decisions.
        let written = self.broker.reset_user(&user, &who).await?;
        self.metrics.observe_user_reset(written.events.len());
        Ok(Response::new(pb::ResetUserResponse {
            events: written.events.iter().map(convert::event).collect(),
            apps: written.value.apps,
            revision: written.revision,
        }))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let who = caller(&request)?;
        let call: convert::EndSessionCall = who.admit(request.into_inner().try_into())?;
        let written = self
            .broker
            .end_session(&call.subject, call.session, &who)
            .await?;
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
        let call: convert::SubjectCall = who.admit(request.into_inner().try_into())?;
        let read = self.broker.get_privacy_setting(&call.subject)?;
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
        let call: convert::PrivacyAnswerCall = who.admit(request.into_inner().try_into())?;
        let read = self
            .broker
            .record_privacy_decision(&call.subject, call.agree, &who)
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
