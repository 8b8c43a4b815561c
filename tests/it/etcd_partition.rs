//! Issue 14's network partition: each etcd member in a network namespace
//! of its own (veth pairs to a bridge in the root namespace), one consentd
//! in the leader's namespace reaching only the leader, two in the root
//! namespace reaching every member. The leader is cut off (the bridge end
//! of its veth goes down) while daemons write; then the partition heals. Built on the helpers of `etcd_faults`.
//!
//! Needs root and `ip` (iproute2): `scripts/test` runs it with the
//! other etcd tests when it can, and otherwise leaves it ignored, saying
//! why. The namespaces, veths and bridge are named after the test process
//! and removed on drop (a panic included); those of a test process that
//! was killed are removed by the next run.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use consentd::pb;
use tonic::{transport::Channel, Code};

use crate::{
    etcd::{fresh_prefix, from},
    etcd_cluster::{EtcdCluster, Options},
    etcd_faults::{
        all_acked, assert_failures_unavailable, assert_log, collect, daemon_on, fault_seconds,
        log_if_asked, log_of, settle, spawn_writer, write_once, write_until_acked, Collector,
        Tally, CALL_DEADLINE,
    },
    fixture::{heavy, location_app, Client},
    support::child::{spawn_consentd_under, Consentd},
};

/// Why this machine cannot run the partition test, if it cannot.
pub(crate) fn netns_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("`ip` (iproute2) is not installed".into()),
    }
}

/// Runs `program` (`ip`) with `args`; the error says which command failed and why.
fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What the network namespaces, veths and bridge of a test process are
/// called start with these (then the process id).
const NETNS_PREFIX: &str = "consentd-";
const BRIDGE_PREFIX: &str = "cdb";

/// One namespace a member: `consentd-<pid>-m<i>`, its veth `cdn<pid>m<i>`
/// inside and `cdh<pid>m<i>` on the bridge `cdb<pid>` (pid in hex: interface
/// names have at most 15 bytes).
pub(crate) struct Netns {
    bridge: String,
    /// (namespace, veth on the bridge, veth inside, address)
    members: Vec<(String, String, String, Ipv4Addr)>,
}

/// Removes the namespaces and bridges of test processes that are gone.
fn sweep_stale() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or_default();
            if !pid.is_empty() && !alive(pid) {
                let _ = sh("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let Some(hex) = name.strip_prefix(BRIDGE_PREFIX) else {
                continue;
            };
            if let Ok(pid) = u32::from_str_radix(hex, 16) {
                if !alive(&pid.to_string()) {
                    let _ = sh("ip", &["link", "del", name]);
                }
            }
        }
    }
}

impl Netns {
    /// `n` namespaces joined by a bridge, on a /24 of 10.0.0.0/8 chosen by
    /// the process id. Whatever was made is removed again when a step fails.
    pub(crate) fn create(n: usize) -> Result<Self, String> {
        sweep_stale();
        let pid = std::process::id();
        let net = [10, 100 + (pid >> 8) as u8 % 100, pid as u8];
        let mut made = Netns {
            bridge: format!("{BRIDGE_PREFIX}{pid:x}"),
            members: Vec::new(),
        };
        let gateway = format!("{}.{}.{}.1/24", net[0], net[1], net[2]);
        sh("ip", &["link", "add", &made.bridge, "type", "bridge"])?;
        sh("ip", &["addr", "add", &gateway, "dev", &made.bridge])?;
        sh("ip", &["link", "set", &made.bridge, "up"])?;
        for i in 1..=n {
            let ns = format!("{NETNS_PREFIX}{pid}-m{i}");
            let host = format!("cdh{pid:x}m{i}");
            let inside = format!("cdn{pid:x}m{i}");
            let ip = Ipv4Addr::new(net[0], net[1], net[2], 1 + i as u8);
            sh("ip", &["netns", "add", &ns])?;
            made.members
                .push((ns.clone(), host.clone(), inside.clone(), ip));
            sh(
                "ip",
                &[
                    "link", "add", &host, "type", "veth", "peer", "name", &inside,
                ],
            )?;
            sh("ip", &["link", "set", &inside, "netns", &ns])?;
            sh("ip", &["link", "set", &host, "master", &made.bridge])?;
            sh("ip", &["link", "set", &host, "up"])?;
            let cidr = format!("{ip}/24");
            sh("ip", &["-n", &ns, "addr", "add", &cidr, "dev", &inside])?;
            sh("ip", &["-n", &ns, "link", "set", &inside, "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(made)
    }

    /// For [`Options::netns`]: each member's namespace and address.
    pub(crate) fn placement(&self) -> Vec<(String, Ipv4Addr)> {
        self.members
            .iter()
            .map(|(ns, _, _, ip)| (ns.clone(), *ip))
            .collect()
    }

    /// Member `i`'s namespace.
    pub(crate) fn name(&self, i: usize) -> &str {
        &self.members[i].0
    }

    /// Member `i`'s namespace loses its link to the others: the bridge end
    /// of its veth goes down (`tc netem loss 100%` would do too, but
    /// kernels without `sch_netem`, like CI's, refuse it). Traffic inside
    /// the namespace goes on.
    pub(crate) fn cut(&self, i: usize) -> Result<(), String> {
        sh("ip", &["link", "set", &self.members[i].1, "down"])
    }

    /// Undoes [`Netns::cut`].
    pub(crate) fn heal(&self, i: usize) -> Result<(), String> {
        sh("ip", &["link", "set", &self.members[i].1, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth inside it and so its peer.
        for (ns, host, _, _) in &self.members {
            let _ = sh("ip", &["netns", "del", ns]);
            let _ = sh("ip", &["link", "del", host]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
    }
}

/// A channel to a daemon's unix socket (which reaches into any network
/// namespace: it is a file).
async fn connect_unix(path: &Path) -> Channel {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to the daemon's unix socket")
}

/// The real `consentd` in network namespace `ns`, on etcd at `endpoint`
/// only, listening on a unix socket in `dir`.
fn daemon_in(ns: &str, endpoint: &str, prefix: &str, dir: &Path) -> Consentd {
    let config = dir.join("consentd.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"etcd\"\n[etcd]\nendpoints = [\"{endpoint}\"]\nprefix = \"{prefix}\"\n\
             max_txn_ops = 10000\nmax_txn_bytes = 4194304\ntimeout_ms = 2000\n\
             lease_ttl_secs = 3\n"
        ),
    )
    .unwrap();
    let socket = format!("unix:{}", dir.join("consentd.sock").display());
    spawn_consentd_under(
        &["ip", "netns", "exec", ns],
        &[
            "--listen",
            &socket,
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info")],
    )
}

/// The etcd leader, waiting for one (10 s at most) that is not `not`.
async fn leader_other_than(cluster: &EtcdCluster, not: Option<usize>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = tokio::task::block_in_place(|| cluster.leader()) {
            if Some(l) != not {
                return l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no etcd leader other than {not:?} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader cut off from the network while daemons write: the daemon in
/// its namespace (reaching only it) stops acknowledging writes, answering
/// UNAVAILABLE within the deadline; the majority elects a new leader and the
/// daemons in the root namespace write on. After the partition heals the
/// cut-off daemon writes again, every acknowledged write is in the log,
/// the Watch streams opened before the cut (the cut-off daemon's too)
/// deliver exactly the log, and Admin/Verify passes on every daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, iproute2, etcd and the etcd feature: scripts/test runs it (--ignored etcd) as root"]
async fn etcd_fault_network_partition_cuts_the_leader_off() {
    if let Some(why) = netns_unavailable() {
        panic!("cannot run the partition test: {why} (scripts/test leaves it ignored then)");
    }
    log_if_asked();
    let _heavy = heavy().await;
    // Dropped last: after the daemons and the members in the namespaces.
    let netns = tokio::task::block_in_place(|| Netns::create(3))
        .unwrap_or_else(|e| panic!("cannot make the network namespaces: {e}"));
    let cluster = tokio::task::block_in_place(|| {
        EtcdCluster::start_with(
            3,
            Options {
                netns: netns.placement(),
                ..Options::default()
            },
        )
    })
    .unwrap_or_else(|e| panic!("cannot start etcd in the namespaces: {e}"));
    let endpoints = cluster.endpoints();
    let prefix = fresh_prefix();
    let leader = leader_other_than(&cluster, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cut_off = daemon_in(netns.name(leader), &endpoints[leader], &prefix, dir.path());
    let majority = [
        daemon_on(&endpoints, &prefix).await,
        daemon_on(&endpoints, &prefix).await,
    ];
    let minority = Client {
        channel: connect_unix(&dir.path().join("consentd.sock")).await,
    };
    let clients: Vec<Client> = std::iter::once(minority.clone())
        .chain(majority.iter().map(|d| d.client()))
        .collect();
    clients[1].register(location_app("wxnp")).await;
    settle(&clients).await;
    let watchers: Vec<Collector> = {
        let mut w = Vec::new();
        for c in &clients {
            w.push(collect(c.watch(from(0)).await.unwrap()));
        }
        w
    };

    // Writers through the majority's daemons for the whole run; the cut
    // comes a third of the way in.
    let run = fault_seconds().max(Duration::from_secs(6));
    let until = Instant::now() + run;
    let writers: Vec<_> = (0..8)
        .map(|w| spawn_writer(clients[1 + w % 2].clone(), "wxnp", w, until))
        .collect();
    let mut tallies: Vec<Tally> = Vec::new();
    let mut minority_tally = Tally::default();
    let mut r = 0;
    while Instant::now() < until - run * 2 / 3 {
        // The cut-off daemon writes too until the cut.
        match write_once(&minority, "wxnp", 100, r).await {
            Ok(events) => {
                minority_tally.ok += 1;
                minority_tally.acked.extend(events);
            }
            Err(status) => minority_tally.failed.push((Instant::now(), status)),
        }
        r += 1;
    }
    assert!(
        minority_tally.ok > 0,
        "the daemon in the leader's namespace wrote before the cut: {:?}",
        minority_tally.failed.last()
    );
    tokio::task::block_in_place(|| netns.cut(leader)).expect("cut the leader off");
    let cut_at = Instant::now();
    tracing::info!(leader, "cut the etcd leader off");

    // The majority elects another leader.
    let new_leader = leader_other_than(&cluster, Some(leader)).await;
    tracing::info!(new_leader, took = ?cut_at.elapsed(), "a new leader");
    // The cut-off side acknowledges nothing: each write fails UNAVAILABLE
    // within its deadline (one in flight at the cut may still succeed).
    let mut refused = 0;
    while Instant::now() < until || refused < 3 {
        let started = Instant::now();
        let mut req = tonic::Request::new(pb::RemoveAppRequest {
            app_id: "wxnp".into(),
            user_id: "u1".into(),
        });
        req.set_timeout(CALL_DEADLINE);
        let result = minority.auth().remove_app(req).await;
        let took = started.elapsed();
        match result {
            Ok(r) if started < cut_at + Duration::from_secs(1) => {
                let changes = r.into_inner().changes;
                minority_tally.acked.extend(
                    changes
                        .iter()
                        .map(|ch| crate::support::key_of_change("wxnp", "u1", ch)),
                );
            }
            Ok(r) => panic!(
                "the cut-off daemon acknowledged a write {:?} after the cut: {r:?}",
                started - cut_at
            ),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    took < CALL_DEADLINE,
                    "failed within its deadline, not after {took:?}"
                );
                minority_tally.failed.push((started, status));
                refused += 1;
            }
        }
    }
    let mut majority_writes = 0;
    for w in writers {
        let tally = w.await.unwrap();
        majority_writes += tally.ok;
        tallies.push(tally);
    }
    assert_failures_unavailable(&tallies);
    // The majority side writes during the partition, through both daemons.
    for (i, c) in clients[1..].iter().enumerate() {
        tallies.push(Tally {
            acked: write_until_acked(c, "wxnp", 200 + i).await,
            ok: 1,
            failed: Vec::new(),
        });
    }
    let during = Instant::now();
    assert!(during > cut_at, "still partitioned");

    tokio::task::block_in_place(|| netns.heal(leader)).expect("heal the partition");
    tracing::info!(partitioned = ?cut_at.elapsed(), "healed");
    // The cut-off daemon writes again.
    tallies.push(Tally {
        acked: write_until_acked(&minority, "wxnp", 300).await,
        ok: 1,
        failed: Vec::new(),
    });
    assert_failures_unavailable(std::slice::from_ref(&minority_tally));
    tallies.push(minority_tally);
    let (acked, failed) = all_acked(&tallies);
    let end = settle(&clients).await;
    let log = log_of(&clients[1], end).await;
    assert_log(&log, &acked, failed);
    for (i, w) in watchers.into_iter().enumerate() {
        assert_eq!(
            w.until(end).await,
            log,
            "daemon {i}'s stream opened before the cut is exactly the log"
        );
    }
    for c in &clients {
        assert_eq!(log_of(c, end).await, log, "one log on every daemon");
        assert_eq!(c.assert_consistent().await.revision, end);
    }
    tracing::info!(majority_writes, refused, failed, end, "partition survived");
    for d in majority {
        d.stop().await;
    }
    drop(cut_off);
    drop(cluster);
    drop(netns);
}
