//! The integration test binary: every test starts the real daemon on
//! `127.0.0.1:0` with a temp data dir and talks gRPC to it.

mod crash;
mod watch;
