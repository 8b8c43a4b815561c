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
