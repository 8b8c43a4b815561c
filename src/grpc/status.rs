//! The one mapping from the broker's errors to gRPC statuses.

use tonic::{Code, Status};

use crate::{
    broker::BrokerError,
    domain::{Denied, DomainError},
    store::StoreError,
    watch::WatchError,
};

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
        Status::new(code, bounded(e.to_string()))
    }
}

/// Longest status message sent. The message travels in the `grpc-message`
/// header, and a header list over the client's limit (16 KiB in hyper)
/// kills the whole connection, not just the call.
pub const MAX_STATUS_MESSAGE: usize = 4096;

/// `message`, cut at a character boundary under [`MAX_STATUS_MESSAGE`].
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE - 32;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = message.len();
        message.truncate(cut);
        message.push_str(&format!("... ({total} bytes in all)"));
    }
    message
}

fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::Full(_) => Code::ResourceExhausted,
        StoreError::Closed | StoreError::Unavailable(_) => Code::Unavailable,
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
        Status::new(code, bounded(e.to_string()))
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

/// A refusal by the role x RPC matrix or the app binding. The access layer
/// logs it (rate limited) with the principal and the peer, never a
/// credential.
impl From<Denied> for Status {
    fn from(denied: Denied) -> Self {
        Status::permission_denied(bounded(denied.to_string()))
    }
}

/// The access layer's refusals.
impl From<super::access::Refusal> for Status {
    fn from(r: super::access::Refusal) -> Self {
        use super::access::Refusal as R;
        let code = match &r {
            R::NoCaller => Code::Internal,
            R::Unauthenticated(_) | R::Revoked(_) => Code::Unauthenticated,
            R::Quota { .. } | R::Reserved { .. } | R::InFlight { .. } => Code::ResourceExhausted,
            R::MessageLate { .. } | R::Timeout { .. } => Code::DeadlineExceeded,
        };
        Status::new(code, bounded(r.to_string()))
    }
}

/// A consistency token that was malformed or not met.
impl From<super::consistency::TokenRefusal> for Status {
    fn from(r: super::consistency::TokenRefusal) -> Self {
        use super::consistency::TokenRefusal as T;
        use crate::store::RevisionWait as W;
        let code = match &r {
            T::Malformed { .. } => Code::InvalidArgument,
            T::Wait(W::Ahead { .. }) => Code::OutOfRange,
            T::Wait(W::Behind { .. } | W::Unreachable { .. }) => Code::Unavailable,
        };
        Status::new(code, bounded(r.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(10_000);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_STATUS_MESSAGE, "{}", cut.len());
        assert!(cut.ends_with("... (20000 bytes in all)"), "{cut}");
    }
}
