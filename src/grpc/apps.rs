//! `consent.v1.Apps`: app registrations, for operators.

use tonic::{Request, Response, Status};

use super::{access::caller, convert};
use crate::{
    broker::Broker,
    domain::AppId,
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
        let (id, kind, raw) = convert::app_request(request.into_inner().app)?;
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
        let (id, kind, raw) = convert::app_request(request.into_inner().app)?;
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
        let id = AppId::parse(&request.into_inner().app_id)?;
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
        let r = request.into_inner();
        let after = match r.page_token.as_str() {
            "" => None,
            token => Some(AppId::parse_field("page_token", token)?),
        };
        let page_size = usize::try_from(r.page_size).unwrap_or(usize::MAX);
        let read = self.broker.list_apps(after.as_ref(), page_size)?;
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
        let id = AppId::parse(&request.into_inner().app_id)?;
        who.may_touch(&id)?;
        let written = self.broker.delete_app(id, &who).await?;
        Ok(Response::new(pb::DeleteAppResponse {
            revoked_decisions: written.value,
            revision: written.revision,
        }))
    }
}
