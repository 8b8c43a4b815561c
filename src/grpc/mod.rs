//! The gRPC edge. Only this module (and the generated `pb`) touches wire
//! types: requests are converted into domain values in [`convert`], broker
//! errors into statuses in `status`.

mod apps;
mod authorization;
pub mod convert;
mod status;

pub use apps::AppsService;
pub use authorization::{AuthorizationService, MAX_BATCH_SCOPES};
