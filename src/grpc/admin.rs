//! `consent.v1.Admin`: log maintenance, for operators.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    pb::{self, admin_server::Admin},
    store::{Retention, Store},
};

pub struct AdminService {
    store: Arc<dyn Store>,
    retention: Retention,
}

impl AdminService {
    pub fn new(store: Arc<dyn Store>, retention: Retention) -> Self {
        Self { store, retention }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn compact(
        &self,
        _request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let done = self.store.compact(self.retention).await?;
        Ok(Response::new(pb::CompactResponse {
            removed_events: done.removed,
            compacted_through: done.compacted_through,
            revision: self.store.revision(),
        }))
    }

    async fn verify(
        &self,
        _request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let v = self.store.verify().await?;
        Ok(Response::new(pb::VerifyResponse {
            consistent: v.mismatches.is_empty(),
            decisions: v.decisions,
            retained_events: v.retained_events,
            compacted_through: v.compacted_through,
            mismatches: v.mismatches,
            revision: v.revision,
        }))
    }
}
