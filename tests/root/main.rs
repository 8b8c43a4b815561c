//! Tests that need root: a tmpfs to fill (`disk`) and a FUSE filesystem
//! that forgets unsynced writes at a simulated power cut (`power_cut`).
//!
//! A separate binary with its own harness (libtest-mimic), so that a test
//! this machine cannot run is reported as ignored, with the reason, instead
//! of passing: before the tests run, each one's requirement is probed (a real
//! mount). CI runs as root and runs them all; `cargo test --test root --
//! --include-ignored` would make a missing requirement fail loudly.

use std::{path::Path, process::ExitCode};

use libtest_mimic::{Arguments, Failed, Trial};

// The integration tests' fixture and crash helpers, shared as source.
#[allow(dead_code)]
#[path = "../it/crash_support.rs"]
mod crash_support;
#[allow(dead_code, unused_imports)]
#[path = "../it/fixture.rs"]
mod fixture;
#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;
// support.rs runs daemons on etcd when CONSENTD_TEST_STORE=etcd.
#[cfg(feature = "etcd")]
#[allow(dead_code)]
#[path = "../../src/store/etcd_cluster.rs"]
mod etcd_cluster;

mod disk;
mod lazyfs;
mod power_cut;

/// A test's body: runs on a fresh two-thread runtime.
fn trial(
    name: &str,
    unavailable: Option<String>,
    test: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
) -> Trial {
    let ignored = unavailable.is_some();
    if let Some(why) = &unavailable {
        eprintln!("{name}: cannot run here, reported as ignored: {why}");
    }
    Trial::test(name, move || {
        if let Some(why) = unavailable {
            return Err(Failed::from(format!("cannot run here: {why}")));
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failed::from(e.to_string()))?
            .block_on(test());
        Ok(())
    })
    .with_kind(if ignored { "skipped: see stderr" } else { "" })
    .with_ignored_flag(ignored)
}

/// Whether a tmpfs can be mounted here; the reason if not.
fn tmpfs_unavailable(scratch: &Path) -> Option<String> {
    match disk::Tmpfs::mount(scratch.join("tmpfs-probe"), "1m") {
        Ok(_mounted) => None,
        Err(why) => Some(format!("cannot mount a tmpfs (needs root): {why}")),
    }
}

/// Whether a FUSE filesystem can be mounted here; the reason if not.
fn fuse_unavailable(scratch: &Path) -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    let at = scratch.join("fuse-probe");
    if let Err(e) = std::fs::create_dir_all(&at) {
        return Some(e.to_string());
    }
    match lazyfs::LazyDisk::mount(&at) {
        Ok(_mounted) => None,
        Err(why) => Some(format!(
            "cannot mount a FUSE filesystem (needs root): {why}"
        )),
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let scratch = tempfile::tempdir().expect("a temp dir");
    let tests = vec![
        trial(
            "disk::a_full_disk_fails_writes_keeps_reads_and_recovers",
            tmpfs_unavailable(scratch.path()),
            || Box::pin(disk::a_full_disk_fails_writes_keeps_reads_and_recovers()),
        ),
        trial(
            "power_cut::a_power_cut_loses_nothing_acknowledged",
            fuse_unavailable(scratch.path()),
            || Box::pin(power_cut::a_power_cut_loses_nothing_acknowledged()),
        ),
    ];
    libtest_mimic::run(&args, tests).exit_code()
}
