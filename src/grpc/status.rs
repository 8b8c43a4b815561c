//! The one mapping from the broker's errors to gRPC statuses.

use tonic::{Code, Status};

use crate::{broker::BrokerError, domain::DomainError, store::StoreError, watch::WatchError};

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let code = match &e {
            BrokerError::Domain(d) => match d {
                DomainError::InvalidArgument { .. } => Code::InvalidArgument,
                DomainError::NotFound { .. } => Code::NotFound,
                DomainError::AlreadyExists { .. } => Code::AlreadyExists,
                DomainError::FailedPrecondition { .. } => Code::FailedPrecondition,
            },
            BrokerError::Store(s) => store_code(s),
            BrokerError::Internal(_) => Code::Internal,
        };
        if code == Code::Internal || code == Code::Unavailable {
            tracing::error!(error = %e, ?code, "request failed");
        } else {
            tracing::debug!(error = %e, ?code, "request refused");
        }
        Status::new(code, e.to_string())
    }
}

fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::Io(sled::Error::Io(io)) if io.kind() == std::io::ErrorKind::StorageFull => {
            Code::ResourceExhausted
        }
        StoreError::Closed | StoreError::Io(_) => Code::Unavailable,
        StoreError::Open { .. }
        | StoreError::Format { .. }
        | StoreError::Corrupt(_)
        | StoreError::Internal(_) => Code::Internal,
    }
}

impl From<WatchError> for Status {
    fn from(e: WatchError) -> Self {
        let code = match &e {
            WatchError::OutOfRange { .. }
            | WatchError::Ahead { .. }
            | WatchError::FellBehind { .. } => Code::OutOfRange,
            WatchError::ShuttingDown { .. } => Code::Unavailable,
            WatchError::TooManyStreams { .. } => Code::ResourceExhausted,
            WatchError::Store(s) => store_code(s),
        };
        tracing::info!(error = %e, ?code, "watch stream ended");
        Status::new(code, e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        BrokerError::Store(e).into()
    }
}

impl From<DomainError> for Status {
    fn from(e: DomainError) -> Self {
        BrokerError::Domain(e).into()
    }
}
