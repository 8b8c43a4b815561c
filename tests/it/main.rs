//! The integration test binary: every test starts the real daemon on
//! `127.0.0.1:0` with a temp data dir and talks gRPC to it.

mod apps;
mod bad_input;
mod catalog;
mod churn;
mod cli;
mod crash;
mod docs;
mod fixture;
mod gates;
mod grpcurl;
mod metrics;
mod model;
mod persistence;
mod record;
mod settings;
mod startup;
mod versions;
mod watch;
