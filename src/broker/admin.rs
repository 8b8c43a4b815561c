//! Operator maintenance and exports: what the Admin service asks of the
//! store goes through here like every other call.

use std::sync::Arc;

use super::{Broker, BrokerError};
use crate::{
    domain::{App, AppId, Event},
    store::{Compaction, DecisionRow, Retention, StoreStats, Verification},
};

impl Broker {
    /// Trims the event log to `retention`, folding what goes into the
    /// checkpoint.
    pub async fn compact(&self, retention: Retention) -> Result<Compaction, BrokerError> {
        Ok(self.store.compact(retention).await?)
    }

    /// The periodic compaction: [`Broker::compact`] as a cluster-wide duty
    /// (only on the daemon that holds the duties, fenced).
    pub async fn compact_duty(&self, retention: Retention) -> Result<Compaction, BrokerError> {
        Ok(self.store.compact_duty(retention).await?)
    }

    /// Trims the audit trail to `retention`; returns how many records went.
    /// A cluster-wide duty (only on the daemon that holds the duties).
    pub async fn trim_audit(&self, retention: Retention) -> Result<u64, BrokerError> {
        Ok(self.store.trim_audit_duty(retention).await?)
    }

    /// Checks checkpoint + retained log == stored decisions.
    pub async fn verify(&self) -> Result<Verification, BrokerError> {
        Ok(self.store.verify().await?)
    }

    /// Apps in id order after `after`, at most `limit` (exports).
    pub fn apps_after(
        &self,
        after: Option<&AppId>,
        limit: usize,
    ) -> Result<Vec<Arc<App>>, BrokerError> {
        Ok(self.store.apps(after, limit)?)
    }

    /// Every stored decision after `after`, a page at a time (exports).
    pub fn decisions_after(
        &self,
        after: Option<&DecisionRow>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>, BrokerError> {
        Ok(self.store.decisions_after(after, limit)?)
    }

    /// Retained events after revision `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, BrokerError> {
        Ok(self.store.events_after(after, limit)?)
    }

    /// Events up to this revision have been trimmed from the log.
    pub fn compacted_through(&self) -> u64 {
        self.store.compacted_through()
    }

    /// Sizes of the store (metrics).
    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }
}
