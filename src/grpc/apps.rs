//! `consent.v1.Apps`: app registrations, for operators.

use tonic::{Request, Response, Status};

use super::{access::caller, convert};
use crate::{
    broker::Broker,
    pb::{self, apps_server::Apps},
};

pub struct AppsService {
    broker: Broker,
}

impl AppsService {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl Apps for AppsService {
    async fn register_app(
        &self,
        request: Request<pb::RegisterAppRequest>,
    ) -> Result<Response<pb::RegisterAppResponse>, Status> {
        let who = caller(&request)?;
        let convert::AppCall { id, kind, raw } = request.into_inner().try_into()?;
        who.may_touch(&id)?;
        let read = self.broker.register_app(id, kind, raw, &who).await?;
        Ok(Response::new(pb::RegisterAppResponse {
            app: Some(convert::app(&read.value)),
            revision: read.revision,
        }))
    }

    async fn update_app(
        &self,
        request: Request<pb::UpdateAppRequest>,
    ) -> Result<Response<pb::UpdateAppResponse>, Status> {
        let who = caller(&request)?;
        let convert::AppCall { id, kind, raw } = request.into_inner().try_into()?;
        who.may_touch(&id)?;
        let read = self.broker.update_app(id, kind, raw, &who).await?;
        Ok(Response::new(pb::UpdateAppResponse {
            app: Some(convert::app(&read.value)),
            revision: read.revision,
        }))
    }

    async fn get_app(
        &self,
        request: Request<pb::GetAppRequest>,
    ) -> Result<Response<pb::GetAppResponse>, Status> {
        let who = caller(&request)?;
        let convert::AppIdCall(id) = request.into_inner().try_into()?;
        who.may_touch(&id)?;
        let read = self.broker.get_app(&id)?;
        Ok(Response::new(pb::GetAppResponse {
            app: Some(convert::app(&read.value)),
            revision: read.revision,
        }))
    }

    async fn list_apps(
        &self,
        request: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
        caller(&request)?.may_span_all_apps()?;
        let call: convert::ListAppsCall = request.into_inner().try_into()?;
        let read = self.broker.list_apps(call.after.as_ref(), call.page_size)?;
        let crate::broker::AppPage { apps, next } = read.value;
        Ok(Response::new(pb::ListAppsResponse {
            apps: apps.iter().map(convert::app).collect(),
            next_page_token: next.map(|id| id.as_str().to_owned()).unwrap_or_default(),
            revision: read.revision,
        }))
    }

    async fn delete_app(
        &self,
        request: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppResponse>, Status> {
        let who = caller(&request)?;
        let convert::AppIdCall(id) = request.into_inner().try_into()?;
        who.may_touch(&id)?;
        let written = self.broker.delete_app(id, &who).await?;
        Ok(Response::new(pb::DeleteAppResponse {
            revoked_decisions: written.value,
            revision: written.revision,
        }))
    }
}
