//! consentd: a permission broker for mini programs.
//!
//! Layers, outermost first (see ARCHITECTURE.md):
//! - [`grpc`]: the wire. Generated protobuf types ([`pb`]), proto <-> domain
//!   conversion, the tonic services and the one error -> `Status` mapping.
//! - [`broker`]: the use cases (authorize, record, settings, apps) composing
//!   the domain with a store.
//! - [`domain`]: scopes, rules, gates and the decision state machine. Pure.
//! - [`store`]: the `Store` trait and its sled backend: decisions, apps and
//!   the event log, written by one group-committing writer.
//! - [`server`]: wiring: opens the store, binds listeners, serves gRPC
//!   (with health and reflection) and shuts everything down in order.
//! - [`auth`]: who is calling (the credentials file: token digests and
//!   certificate subjects -> principals); what they may do is
//!   [`domain::access`], enforced by [`grpc::access`].
//! - [`transport`]: TCP, TLS and unix-socket listeners.
//! - [`config`]: typed configuration from flags, env and a TOML file.

pub mod auth;
pub mod broker;
pub mod client;
pub mod clock;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod metrics;
pub mod server;
pub mod store;
pub mod transport;
pub mod watch;

/// The version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CONSENTD_GIT_REV"),
    ")"
);

/// Generated protobuf and gRPC types (package `consent.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("consent.v1");

    /// The encoded descriptor set, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("consent_descriptor");
}
