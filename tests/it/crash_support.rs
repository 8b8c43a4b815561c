//! What the crash tests share (`crash.rs` here, the power-cut test in the
//! `root` test binary): the real `consentd` as a child process, 64 writers
//! that record every acknowledgement and every error, and the checks after a
//! restart.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use consentd::pb::{self, authorization_client::AuthorizationClient, watch_response::Kind};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic::{transport::Channel, Code};

use crate::{
    fixture::{client_info, connect, Client},
    support::{
        child::{spawn_consentd, Consentd},
        key_of_change, key_of_event, EventKey,
    },
};

/// The real `consentd` binary on a port of its choosing.
pub struct ChildDaemon {
    child: Consentd,
    pub addr: SocketAddr,
}

impl ChildDaemon {
    /// A daemon on `data_dir`, its config file next to it.
    pub fn spawn(data_dir: &Path) -> Self {
        Self::spawn_with_config(data_dir, &data_dir.with_extension("toml"))
    }

    /// A daemon on `data_dir` with its (test) config written at `config`.
    pub fn spawn_with_config(data_dir: &Path, config: &Path) -> Self {
        // Fast progress markers: the checks wait for one at the current revision.
        std::fs::write(config, "[watch]\nprogress_interval_ms = 100\n").unwrap();
        let child = spawn_consentd(
            &[
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data_dir.to_str().unwrap(),
            ],
            &[("RUST_LOG", "info")],
        );
        let addr = child.addr();
        Self { child, addr }
    }

    pub fn kill9(self) {
        self.child.kill9();
    }

    /// SIGTERM; returns the exit code once the daemon has drained and stopped.
    pub fn terminate(mut self) -> Option<i32> {
        self.child.signal("TERM");
        self.child.wait().code()
    }
}

fn client() -> pb::ClientInfo {
    client_info(pb::Platform::Ios, "8.0.5", "3.0.0")
}

/// The app every crash writer writes to.
pub const APP: &str = "wxcrash";

/// Set just before the daemon is stopped: errors after it are the stop's.
#[derive(Default)]
pub struct Stop {
    stopping: AtomicBool,
}

impl Stop {
    pub fn now(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
    fn started(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// What one writer saw: every acknowledged change and every error.
#[derive(Debug, Default)]
pub struct Written {
    /// Calls the daemon acknowledged (some change nothing).
    pub acks: usize,
    pub changes: Vec<EventKey>,
    /// Business refusals (an answer over a stored decision): expected.
    pub refused: usize,
    /// Errors once the stop had begun, by code: how the calls in flight ended.
    pub at_stop: BTreeMap<String, usize>,
    /// Anything else: each one fails the test.
    pub unexpected: Vec<String>,
}

impl Written {
    pub fn merge(&mut self, other: Written) {
        self.acks += other.acks;
        self.changes.extend(other.changes);
        self.refused += other.refused;
        for (code, n) in other.at_stop {
            *self.at_stop.entry(code).or_default() += n;
        }
        self.unexpected.extend(other.unexpected);
    }

    /// Fails on any unexpected error and on fewer than `min_acks` acknowledgements.
    pub fn assert_sound(&self, what: &str, min_acks: usize) {
        eprintln!(
            "{what}: {} calls acknowledged, {} changes, {} refused (FAILED_PRECONDITION), errors at the stop {:?}, unexpected errors {}",
            self.acks,
            self.changes.len(),
            self.refused,
            self.at_stop,
            self.unexpected.len()
        );
        assert!(
            self.unexpected.is_empty(),
            "{what}: {} unexpected errors: {:#?}",
            self.unexpected.len(),
            self.unexpected
        );
        assert!(
            self.acks >= min_acks,
            "{what}: only {} calls acknowledged, at least {min_acks} required",
            self.acks
        );
        assert!(!self.changes.is_empty(), "{what}: no acknowledged change");
    }
}

/// Errors a call in flight may end with once the daemon is being stopped:
/// the connection goes (UNAVAILABLE, or UNKNOWN/CANCELLED from the transport
/// when the stream is cut mid-call; INTERNAL "h2 protocol error" when the
/// client's HTTP/2 connection is torn down under it), or a draining daemon
/// refuses new calls (UNAVAILABLE). Any other INTERNAL is the daemon's and
/// counts as unexpected.
fn is_stop_error(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        Code::Internal => status.message().contains("h2 protocol error"),
        _ => false,
    }
}

/// One writer: flips decisions until the daemon stops; returns what it saw.
pub async fn write_until_dead(
    channel: Channel,
    writer: usize,
    acks: Arc<AtomicUsize>,
    stop: Arc<Stop>,
) -> Written {
    let mut auth = AuthorizationClient::new(channel);
    let mut out = Written::default();
    for i in 0.. {
        let user = format!("w{writer}-u{}", i % 5);
        let scope = [
            "scope.camera",
            "scope.record",
            "scope.userLocationBackground",
        ][i % 3];
        let call = match i % 4 {
            0 | 1 => "RecordDecision",
            2 => "UpdateSetting",
            _ => "RemoveApp",
        };
        let result = match i % 4 {
            0 | 1 => auth
                .record_decision(pb::RecordDecisionRequest {
                    lifetime: None,
                    app_id: APP.into(),
                    user_id: user.clone(),
                    scope: scope.into(),
                    answer: if i % 4 == 0 {
                        pb::Answer::Allow
                    } else {
                        pb::Answer::Deny
                    }
                    .into(),
                    client: Some(client()),
                })
                .await
                .map(|r| r.into_inner().changes),
            2 => auth
                .update_setting(pb::UpdateSettingRequest {
                    app_id: APP.into(),
                    user_id: user.clone(),
                    location: pb::LocationOption::NotAllowed.into(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().changes),
            _ => auth
                .remove_app(pb::RemoveAppRequest {
                    app_id: APP.into(),
                    user_id: user.clone(),
                })
                .await
                .map(|r| r.into_inner().changes),
        };
        match result {
            Ok(changes) => {
                acks.fetch_add(1, Ordering::Relaxed);
                out.acks += 1;
                out.changes
                    .extend(changes.iter().map(|c| key_of_change(APP, &user, c)));
            }
            // The answer conflicts with a stored decision (e.g. DENY over a
            // grant), or the settings change has nothing decided to apply to.
            Err(s) if s.code() == Code::FailedPrecondition => out.refused += 1,
            Err(s) if stop.started() && is_stop_error(&s) => {
                *out.at_stop.entry(format!("{:?}", s.code())).or_default() += 1;
                break;
            }
            Err(s) => {
                out.unexpected.push(format!(
                    "writer {writer} call {i} {call}{}: {:?}: {}",
                    if stop.started() {
                        " (during the stop)"
                    } else {
                        ""
                    },
                    s.code(),
                    s.message()
                ));
                if stop.started() {
                    break;
                }
            }
        }
    }
    out
}

/// Waits until the writers have `n` acknowledgements, so a stop always lands
/// under load, with real work behind it, however slow the machine is.
pub async fn acks_reach(acks: &AtomicUsize, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acks.load(Ordering::Relaxed) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} writes acknowledged in 120 s",
            acks.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writers per cycle, as the reliability issue asks.
pub const WRITERS: usize = 64;

/// Acknowledged calls each cycle needs before its daemon is stopped (and
/// must have at the end).
pub const MIN_ACKS: usize = 200;

/// Starts [`WRITERS`] writers on `channel` and returns once they have
/// [`MIN_ACKS`] acknowledgements; [`Stop::now`] marks the stop that ends them.
pub async fn writers_under_way(channel: &Channel) -> (Vec<JoinHandle<Written>>, Arc<Stop>) {
    let acks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(Stop::default());
    let writers = (0..WRITERS)
        .map(|w| {
            tokio::spawn(write_until_dead(
                channel.clone(),
                w,
                acks.clone(),
                stop.clone(),
            ))
        })
        .collect();
    acks_reach(&acks, MIN_ACKS).await;
    (writers, stop)
}

/// What one cycle saw before its daemon was stopped.
pub struct Cycle {
    /// The revision when the cycle's writers started.
    pub start: u64,
    pub written: Written,
    /// What a subscriber following from `start` received.
    pub seen: Vec<EventKey>,
}

/// Runs writers and a subscriber against `daemon` until it is killed
/// `after` its writers reached [`MIN_ACKS`] acknowledgements. `cut` runs
/// right after the kill, before anything else touches the data dir.
pub async fn run_cycle(daemon: ChildDaemon, after: Duration, cut: impl FnOnce()) -> Cycle {
    let channel = connect(daemon.addr).await;
    let client = Client {
        channel: channel.clone(),
    };
    let start = client.revision().await;
    let mut stream = client
        .watch(pb::WatchRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(item)) = stream.next().await {
            if let Some(Kind::Event(e)) = item.kind {
                seen.push(key_of_event(&e));
            }
        }
        seen
    });
    let (writers, stop) = writers_under_way(&channel).await;
    tokio::time::sleep(after).await;
    stop.now();
    daemon.kill9();
    cut();
    let mut written = Written::default();
    for w in writers {
        written.merge(w.await.unwrap());
    }
    Cycle {
        start,
        written,
        seen: watcher.await.unwrap(),
    }
}

/// After a restart: nothing acknowledged was lost, the log explains the
/// state, the pre-crash stream was a prefix of the log, and resuming from its
/// last revision yields exactly the rest.
pub async fn check_after_restart(client: &Client, cycle: &Cycle) -> u64 {
    let verify = client.assert_consistent().await;
    let revision = verify.revision;
    let mut stream = client
        .watch(pb::WatchRequest {
            start_revision: Some(cycle.start),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut log: Vec<EventKey> = Vec::new();
    // A progress marker at the current revision ends the replay.
    loop {
        match stream.next().await.unwrap().unwrap().kind {
            Some(Kind::Event(e)) => log.push(key_of_event(&e)),
            Some(Kind::Progress(p)) if p.revision >= revision => break,
            _ => {}
        }
    }
    for pair in log.windows(2) {
        assert!(pair[0].0 < pair[1].0, "revisions strictly increase");
    }
    let logged: std::collections::HashSet<&EventKey> = log.iter().collect();
    let lost: Vec<&EventKey> = cycle
        .written
        .changes
        .iter()
        .filter(|a| !logged.contains(a))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged changes were lost (log after restart: {} events from revision {}); first lost: {:?}",
        lost.len(),
        cycle.written.changes.len(),
        log.len(),
        cycle.start,
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        cycle.seen[..],
        log[..cycle.seen.len()],
        "the stream never ran ahead of the durable log"
    );
    let resume = cycle.seen.last().map_or(cycle.start, |k| k.0);
    let mut resumed = client
        .watch(pb::WatchRequest {
            start_revision: Some(resume),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut rest = Vec::new();
    while cycle.seen.len() + rest.len() < log.len() {
        if let Some(Kind::Event(e)) = resumed.next().await.unwrap().unwrap().kind {
            rest.push(key_of_event(&e));
        }
    }
    assert_eq!(
        [cycle.seen.clone(), rest].concat(),
        log,
        "resume from the last seen revision misses nothing"
    );
    log.len() as u64
}

/// A small deterministic generator for kill moments (the seed is printed).
pub fn kill_moments(seed: u64, cycles: usize) -> Vec<Duration> {
    let mut x = seed | 1;
    (0..cycles)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(100 + x % 500)
        })
        .collect()
}

/// `CONSENTD_CRASH_SEED`, or a fresh seed.
pub fn seed() -> u64 {
    std::env::var("CONSENTD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}
