//! The etcd test harness itself (`etcd_cluster`), against the real binary.

use std::time::Duration;

use super::etcd_cluster::{etcd_unavailable, EtcdCluster};

/// The harness itself: three members come up, one killed with -9 leaves
/// a cluster that still has a quorum, and it comes back.
#[test]
#[ignore = "needs the etcd binary: scripts/test runs it (--ignored etcd)"]
fn etcd_cluster_starts_kills_and_restarts_members() {
    if let Some(why) = etcd_unavailable() {
        panic!("cannot run: {why}");
    }
    let mut cluster = EtcdCluster::start(3).expect("the cluster starts");
    assert_eq!(cluster.endpoints().len(), 3);
    assert!(cluster.dir().join("m1").join("member").is_dir());
    let pid = cluster.pid(1).expect("member 2 runs");
    cluster.kill(1);
    assert!(cluster.pid(1).is_none());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "killed and reaped"
    );
    // A new leader within a few election timeouts, if it was the leader.
    cluster
        .wait_healthy(Duration::from_secs(10))
        .expect("2 of 3 members keep a quorum");
    cluster.restart(1).expect("member 2 rejoins");
    cluster.pause(2);
    cluster.resume(2);
    cluster
        .wait_healthy(Duration::from_secs(10))
        .expect("healthy after SIGCONT");
    let pids: Vec<u32> = (0..3).filter_map(|i| cluster.pid(i)).collect();
    drop(cluster);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "member {pid} gone after drop"
        );
    }
}
