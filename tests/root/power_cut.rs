//! A power cut under load: the data dir is on a filesystem that forgets
//! every write no fsync covered (`lazyfs`). 64 writers write until at least
//! [`MIN_ACKS`] calls are acknowledged and a random moment after; then the
//! daemon is killed and the power cut, the disk "rebooted", the daemon
//! restarted: every change it acknowledged must still be there, and the log
//! must still explain the state. This proves "acknowledged => synced to
//! stable storage", which a SIGKILL alone (`tests/it/crash.rs`) cannot.
//!
//! `CONSENTD_POWER_CUT_CYCLES` sets the cycles (default 3),
//! `CONSENTD_CRASH_SEED` replays a run.

use crate::{
    crash_support::{
        check_after_restart, kill_moments, run_cycle, seed, ChildDaemon, Cycle, APP, MIN_ACKS,
    },
    fixture::{connect, location_app, Client},
    lazyfs::LazyDisk,
};

pub async fn a_power_cut_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("CONSENTD_POWER_CUT_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = seed();
    eprintln!("power-cut test: {cycles} cycles, CONSENTD_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // The harness checked that FUSE can be mounted here.
    let disk = std::sync::Mutex::new(LazyDisk::mount(&mnt).expect("the lazy disk mounts"));
    let data = mnt.join("data");
    // The config lives off the lazy disk: only the data dir is under test.
    let config = dir.path().join("consentd.toml");
    let mut previous: Option<Cycle> = None;
    let mut checked = 0;
    for (n, after) in kill_moments(seed, cycles).into_iter().enumerate() {
        let daemon = ChildDaemon::spawn_with_config(&data, &config);
        let client = Client {
            channel: connect(daemon.addr).await,
        };
        match &previous {
            None => drop(client.register(location_app(APP)).await),
            Some(cycle) => checked += check_after_restart(&client, cycle).await,
        }
        let cut = std::cell::Cell::new(None);
        let cycle = run_cycle(daemon, after, || {
            let mut disk = disk.lock().unwrap();
            cut.set(Some(disk.cut().expect("the lazy disk mounts again")));
        })
        .await;
        let cut = cut.get().expect("the power was cut");
        let stats = disk.lock().unwrap().stats();
        eprintln!(
            "power cut {n} ({after:?} after {MIN_ACKS} acks): dropped {} unsynced bytes in {} files; the disk saw {} writes and {} syncs so far",
            cut.bytes, cut.files, stats.writes, stats.syncs
        );
        cycle
            .written
            .assert_sound(&format!("power-cut cycle {n}"), MIN_ACKS);
        previous = Some(cycle);
    }
    let daemon = ChildDaemon::spawn_with_config(&data, &config);
    let client = Client {
        channel: connect(daemon.addr).await,
    };
    let last = previous.expect("at least one cycle");
    checked += check_after_restart(&client, &last).await;
    eprintln!("power-cut test: {cycles} cuts survived, {checked} logged events checked");
    daemon.kill9();
}
