//! The integration test binary: every test starts the real daemon on
//! `127.0.0.1:0` with a temp data dir and talks gRPC to it.

mod apps;
mod audit;
mod bad_input;
mod catalog;
mod churn;
mod cli;
mod crash;
mod crash_support;
mod docs;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
mod etcd_catchup;
#[cfg(feature = "etcd")]
mod etcd_duties;
#[cfg(feature = "etcd")]
mod etcd_export;
#[cfg(feature = "etcd")]
mod etcd_faults;
#[cfg(feature = "etcd")]
mod etcd_partition;
#[cfg(feature = "etcd")]
mod etcd_sec;
// The etcd test cluster harness, shared as source with the library's tests.
#[cfg(feature = "etcd")]
#[allow(dead_code)]
#[path = "../../src/store/etcd_cluster.rs"]
mod etcd_cluster;
mod fixture;
mod gates;
mod grants;
mod grpcurl;
mod hardening;
mod hostile;
mod metrics;
mod model;
mod persistence;
mod privacy;
mod record;
mod security;
mod security_process;
mod settings;
mod startup;
mod support;
mod tokens;
mod users;
mod versions;
mod watch;

// The independent spec suite, written from SPEC.md by a second author. It has
// its own fixture (`util`) and assertions on purpose: sharing no expectations
// with the tests above, a misreading in one is not copied into the other. Both
// fixtures share only mechanics (`support`: starting a daemon, connecting,
// building requests, collecting an Export).
mod spec_apps;
mod spec_bad_input;
mod spec_beyond;
mod spec_catalog;
mod spec_concurrency;
mod spec_gates;
mod spec_grpcurl;
mod spec_health;
mod spec_persistence;
mod spec_record;
mod spec_revisions;
mod spec_settings;
mod spec_versions;
mod util;
