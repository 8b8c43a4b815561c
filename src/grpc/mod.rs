//! The gRPC edge. Only this module (and the generated `pb`) touches wire
//! types: requests are converted into domain values in [`convert`], errors
//! into statuses in `status`.

pub mod access;
mod admin;
mod apps;
mod authorization;
pub mod consistency;
pub mod convert;
mod status;
mod stream;

pub use access::{AccessLayer, CallLimits};
pub use admin::AdminService;
pub use apps::AppsService;
pub use authorization::AuthorizationService;
pub use consistency::{ConsistencyLayer, MIN_REVISION_HEADER};
pub use convert::MAX_BATCH_SCOPES;
pub use stream::WatchStream;
