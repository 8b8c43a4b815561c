//! The one mapping from the broker's errors to gRPC statuses.

use tonic::{Code, Status};

use crate::{broker::BrokerError, domain::DomainError, store::StoreError};

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let code = match &e {
            BrokerError::Domain(d) => match d {
                DomainError::InvalidArgument { .. } => Code::InvalidArgument,
                DomainError::NotFound { .. } => Code::NotFound,
                DomainError::AlreadyExists { .. } => Code::AlreadyExists,
                DomainError::FailedPrecondition { .. } => Code::FailedPrecondition,
            },
            BrokerError::Store(s) => match s {
                StoreError::Closed => Code::Unavailable,
                StoreError::Io(_) => Code::Unavailable,
                StoreError::Open { .. }
                | StoreError::Format { .. }
                | StoreError::Corrupt(_)
                | StoreError::Internal(_) => Code::Internal,
            },
            BrokerError::Internal(_) => Code::Internal,
        };
        if code == Code::Internal || code == Code::Unavailable {
            tracing::error!(error = %e, "request failed");
        }
        Status::new(code, e.to_string())
    }
}

impl From<DomainError> for Status {
    fn from(e: DomainError) -> Self {
        BrokerError::Domain(e).into()
    }
}
