//! The broker's error: a rejected request or a failed store.

use crate::{
    domain::DomainError,
    store::{StoreError, TxnError},
};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<TxnError> for BrokerError {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Rejected(d) => BrokerError::Domain(d),
            TxnError::Store(s) => BrokerError::Store(s),
        }
    }
}
