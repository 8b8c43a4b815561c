//! The domain's error: a request the rules reject. Messages name the field
//! and the value; the gRPC edge maps each variant to a status code.

/// Why the domain refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A malformed field.
    #[error("{message}")]
    InvalidArgument { field: String, message: String },
    /// A referenced entity (an app) does not exist.
    #[error("{message}")]
    NotFound { message: String },
    /// Creating something that already exists.
    #[error("{message}")]
    AlreadyExists { message: String },
    /// Well-formed, but not allowed in the current state.
    #[error("{message}")]
    FailedPrecondition { message: String },
}

impl DomainError {
    pub fn app_not_found(app: &super::AppId) -> Self {
        DomainError::NotFound {
            message: format!("app {:?} is not registered", app.as_str()),
        }
    }
}

/// Most characters of a rejected value an error message quotes: whole ids
/// (and then some), but never so much that the status message outgrows the
/// 16 KiB HTTP/2 header list clients accept (which kills the connection).
pub const MAX_QUOTED_CHARS: usize = 256;

/// `raw` quoted as `{:?}` does, cut after `MAX_QUOTED_CHARS` characters
/// (then followed by `... (N bytes)`).
pub fn quoted(raw: &str) -> String {
    match raw.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{raw:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &raw[..cut], raw.len()),
    }
}
