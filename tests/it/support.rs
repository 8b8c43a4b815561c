//! Plumbing shared by both suites: the project's fixture (`fixture`) and the
//! spec suite's (`util`) are thin layers over this module. It holds only
//! mechanics (starting a daemon on a temp data dir, connecting, building
//! requests, collecting an Export, comparing events); what a test expects
//! stays in each suite's own helpers and assertions.

use std::{net::SocketAddr, path::PathBuf};

use consentd::{
    clock::{SharedClock, SystemClock},
    config::Config,
    pb,
    server::Daemon,
};
use tempfile::TempDir;
use tonic::transport::Channel;

// --- A daemon on a temp data dir -------------------------------------------

/// The daemon's defaults, listening on `127.0.0.1:0` over `data_dir`, on
/// the store `CONSENTD_TEST_STORE` names (see [`use_test_store`]).
pub fn loopback_config(data_dir: PathBuf) -> Config {
    let mut config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir,
        ..Config::default()
    };
    use_test_store(&mut config);
    config
}

/// `CONSENTD_TEST_STORE=etcd` (a build with `--features etcd`) runs every
/// in-process daemon of the suite on the test etcd cluster, under a key
/// prefix named after its data dir (so a restart on the same data dir finds
/// its store again); unset or `sled`: the sled default.
#[cfg_attr(not(feature = "etcd"), allow(unused_variables))]
pub fn use_test_store(config: &mut Config) {
    match std::env::var("CONSENTD_TEST_STORE").as_deref() {
        Err(_) | Ok("" | "sled") => {}
        #[cfg(feature = "etcd")]
        Ok("etcd") => {
            let prefix = format!("/consentd-it{}/", config.data_dir.display());
            use_etcd(config, &prefix);
        }
        Ok(other) => panic!(
            "CONSENTD_TEST_STORE={other:?}: expected sled or etcd (etcd needs a build with \
             --features etcd)"
        ),
    }
}

/// Pins `config` to the sled store whatever `CONSENTD_TEST_STORE` says:
/// for tests of the sled data dir itself (its files, locks, formats,
/// crashes of a sled daemon), which mean nothing on etcd.
pub fn on_sled(mut config: Config) -> Config {
    config.store = consentd::config::StoreKind::Sled;
    config.etcd = consentd::config::EtcdSettings::default();
    config
}

/// Points `config` at the shared test etcd cluster under `prefix`.
#[cfg(feature = "etcd")]
pub fn use_etcd(config: &mut Config, prefix: &str) {
    config.store = consentd::config::StoreKind::Etcd;
    config.etcd.endpoints = crate::etcd_cluster::shared_endpoints().to_vec();
    config.etcd.prefix = prefix.into();
    // The test cluster runs with --max-txn-ops 10000, --max-request-bytes 8 MiB.
    config.etcd.max_txn_ops = 10_000;
    config.etcd.max_txn_bytes = 4 << 20;
}

/// An in-process daemon that owns its temp data dir. Dropping it aborts the
/// daemon before the dir is removed; [`Served::stop`] shuts it down gracefully.
pub struct Served {
    // Field order matters: the daemon goes before its data dir is removed.
    daemon: Option<Daemon>,
    config: Config,
    /// The clock every start of this daemon gets.
    clock: SharedClock,
    _dir: TempDir,
}

impl Served {
    /// Starts a daemon on a fresh temp data dir: `base` builds the config
    /// from the data dir's path, then `tweak` adjusts it. `Daemon::start`
    /// returns once it listens, so no waiting is needed.
    pub async fn start(base: fn(PathBuf) -> Config, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_clock(base, tweak, SystemClock::shared()).await
    }

    /// [`Served::start`] on `clock` (kept for every restart).
    pub async fn start_with_clock(
        base: fn(PathBuf) -> Config,
        tweak: impl FnOnce(&mut Config),
        clock: SharedClock,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = base(dir.path().join("data"));
        tweak(&mut config);
        let daemon = Daemon::start_with_clock(config.clone(), clock.clone())
            .await
            .expect("daemon starts");
        Self {
            daemon: Some(daemon),
            config,
            clock,
            _dir: dir,
        }
    }

    /// The daemon's clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.daemon().local_addr().unwrap()
    }

    /// The config the next [`Served::start_again`] uses.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Takes the daemon out, e.g. to shut it down concurrently.
    pub fn take(&mut self) -> Daemon {
        self.daemon.take().expect("daemon running")
    }

    /// Graceful shutdown of the running daemon; the data dir stays.
    pub async fn shutdown(&mut self) {
        self.take().shutdown().await.expect("graceful shutdown");
    }

    /// Starts a daemon on the same data dir (after [`Served::take`] or
    /// [`Served::shutdown`]); returns its address.
    pub async fn start_again(&mut self) -> SocketAddr {
        let daemon = Daemon::start_with_clock(self.config.clone(), self.clock.clone())
            .await
            .expect("daemon restarts on the same data dir");
        let addr = daemon.local_addr().unwrap();
        self.daemon = Some(daemon);
        addr
    }

    /// Graceful shutdown if a daemon runs, then the data dir is removed.
    pub async fn stop(mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown().await.expect("graceful shutdown");
        }
    }
}

/// A connected plaintext channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the daemon")
}

// --- Request builders --------------------------------------------------------

pub fn client_info(
    platform: pb::Platform,
    host_version: &str,
    sdk_version: &str,
) -> pb::ClientInfo {
    pb::ClientInfo {
        platform: platform.into(),
        host_version: host_version.into(),
        sdk_version: sdk_version.into(),
    }
}

/// A current Android client: every popup exists, every minimum is met.
pub fn android() -> pb::ClientInfo {
    client_info(pb::Platform::Android, "8.0.5", "3.0.0")
}

/// An app of `kind` without declarations.
pub fn bare_app(app_id: &str, kind: pb::AppKind) -> pb::App {
    pb::App {
        app_id: app_id.into(),
        kind: kind.into(),
        ..Default::default()
    }
}

/// Declarations, chained onto [`bare_app`] or any other app.
pub trait Declare: Sized {
    /// A `permission` desc for `scope`.
    fn desc(self, scope: &str, desc: &str) -> Self;
    fn background_modes(self, modes: &[&str]) -> Self;
    fn private_infos(self, infos: &[&str]) -> Self;
}

impl Declare for pb::App {
    fn desc(mut self, scope: &str, desc: &str) -> Self {
        self.permission.insert(
            scope.into(),
            pb::PermissionDesc {
                desc: desc.to_string(),
            },
        );
        self
    }

    fn background_modes(mut self, modes: &[&str]) -> Self {
        self.required_background_modes = modes.iter().map(|m| m.to_string()).collect();
        self
    }

    fn private_infos(mut self, infos: &[&str]) -> Self {
        self.required_private_infos = infos.iter().map(|i| i.to_string()).collect();
        self
    }
}

pub fn authorize_req(
    app: &str,
    user: &str,
    scope: &str,
    client: pb::ClientInfo,
) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        app_id: app.into(),
        user_id: user.into(),
        scope: scope.into(),
        client: Some(client),
    }
}

pub fn check_req(app: &str, user: &str, api: &str, client: pb::ClientInfo) -> pb::CheckApiRequest {
    pb::CheckApiRequest {
        app_id: app.into(),
        user_id: user.into(),
        api: api.into(),
        client: Some(client),
    }
}

/// A popup answer without a lifetime; `answer` may be any number, so
/// hostile tests can send values outside the enum.
pub fn record_req(
    app: &str,
    user: &str,
    scope: &str,
    answer: impl Into<i32>,
    client: pb::ClientInfo,
) -> pb::RecordDecisionRequest {
    pb::RecordDecisionRequest {
        lifetime: None,
        app_id: app.into(),
        user_id: user.into(),
        scope: scope.into(),
        answer: answer.into(),
        client: Some(client),
    }
}

/// The settings page without a lifetime: `toggles` (scope -> on) and the
/// location item (any number, as for [`record_req`]).
pub fn update_req(
    app: &str,
    user: &str,
    toggles: &[(&str, bool)],
    location: impl Into<i32>,
) -> pb::UpdateSettingRequest {
    pb::UpdateSettingRequest {
        lifetime: None,
        app_id: app.into(),
        user_id: user.into(),
        auth_setting: toggles.iter().map(|(s, on)| (s.to_string(), *on)).collect(),
        location: location.into(),
    }
}

// --- Reading the store back ---------------------------------------------------

/// Every record Admin/Export streams, in order (with the event log when
/// `include_events`).
pub async fn export(channel: &Channel, include_events: bool) -> Vec<pb::ExportRecord> {
    let mut admin = pb::admin_client::AdminClient::new(channel.clone());
    let mut stream = admin
        .export(pb::ExportRequest { include_events })
        .await
        .expect("Export")
        .into_inner();
    let mut records = Vec::new();
    while let Some(r) = stream.message().await.expect("Export stream") {
        records.push(r);
    }
    records
}

/// What event comparisons look at: (revision, app, user, scope, old, new, cause).
pub type EventKey = (u64, String, String, String, i32, i32, i32);

pub fn key_of_event(e: &pb::DecisionEvent) -> EventKey {
    (
        e.revision,
        e.app_id.clone(),
        e.user_id.clone(),
        e.scope.clone(),
        e.old_state,
        e.new_state,
        e.cause,
    )
}

/// The key of the event a committed change of (app, user) publishes.
pub fn key_of_change(app: &str, user: &str, c: &pb::DecisionChange) -> EventKey {
    (
        c.revision,
        app.into(),
        user.into(),
        c.scope.clone(),
        c.old_state,
        c.new_state,
        c.cause,
    )
}

// --- The real binaries as child processes -------------------------------------

/// The real `consentd` and `consentctl` binaries as child processes: a daemon
/// whose JSON log is collected as it comes (and which is found serving
/// before the test goes on), and a command run to its end.
pub mod child {
    use std::{
        io::{BufRead as _, BufReader},
        net::SocketAddr,
        process::{Child, Command, ExitStatus, Stdio},
        sync::{
            mpsc::{self, RecvTimeoutError},
            Arc, Mutex,
        },
        time::{Duration, Instant},
    };

    /// How long [`Consentd::wait_for`] waits for a log line.
    pub const LOG_WAIT: Duration = Duration::from_secs(10);

    /// How long a spawned daemon may take to log "consentd serving" (a
    /// loaded 2-core machine included).
    pub const SERVING_WAIT: Duration = Duration::from_secs(60);

    /// The `consentd` binary under test, not yet run.
    pub fn consentd() -> Command {
        Command::new(env!("CARGO_BIN_EXE_consentd"))
    }

    /// The `consentctl` binary under test, not yet run. It sees none of the
    /// `CONSENTCTL_` variables of the environment the tests run in: only
    /// those a test sets.
    pub fn consentctl() -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_consentctl"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CONSENTCTL_") {
                command.env_remove(name);
            }
        }
        command
    }

    /// What a command that ran to its end left: its exit code (-1 when a
    /// signal ended it) and its output as text.
    pub struct Run {
        pub code: i32,
        pub stdout: String,
        pub stderr: String,
    }

    /// Runs `command` to its end, its output captured.
    pub fn run(command: &mut Command) -> Run {
        let out = command.output().expect("the binary runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `consentctl args` with `env` set, run to its end.
    pub fn run_consentctl(args: &[&str], env: &[(&str, &str)]) -> Run {
        run(consentctl().args(args).envs(env.iter().copied()))
    }

    /// A `consentd` child whose JSON log lines (stderr) are collected as
    /// they come. Dropping it kills the daemon, so a failed test never
    /// leaves one behind.
    pub struct Consentd {
        child: Child,
        lines: Arc<Mutex<Vec<String>>>,
        new_line: mpsc::Receiver<()>,
    }

    /// Starts `consentd args --log-format json` with `env` set and waits
    /// until it logs "consentd serving".
    pub fn spawn_consentd(args: &[&str], env: &[(&str, &str)]) -> Consentd {
        spawn_consentd_under(&[], args, env)
    }

    /// Like [`spawn_consentd`], run through `wrapper` (e.g. `prlimit ...`).
    pub fn spawn_consentd_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Consentd {
        let mut command = match wrapper.split_first() {
            None => consentd(),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_consentd"));
                c
            }
        };
        let mut child = command
            .args(args)
            .args(["--log-format", "json"])
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("consentd starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, new_line) = mpsc::channel();
        let sink = lines.clone();
        // Reads to the end, so the child never blocks on a full pipe; the
        // sender goes with the last line, which tells a waiter the log ended.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
                let _ = tx.send(());
            }
        });
        let daemon = Consentd {
            child,
            lines,
            new_line,
        };
        daemon.wait_for_within("consentd serving", SERVING_WAIT);
        daemon
    }

    impl Consentd {
        /// Waits ([`LOG_WAIT`] at most) for a log line containing `needle`;
        /// returns the first one.
        pub fn wait_for(&self, needle: &str) -> String {
            self.wait_for_within(needle, LOG_WAIT)
        }

        /// Waits `within` at most for a log line containing `needle`. Fails
        /// with the log so far, at once when the log has ended without it.
        pub fn wait_for_within(&self, needle: &str, within: Duration) -> String {
            let deadline = Instant::now() + within;
            loop {
                if let Some(line) = self.find(needle) {
                    return line;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match self.new_line.recv_timeout(left) {
                    Ok(()) => continue,
                    Err(RecvTimeoutError::Timeout) => {
                        panic!(
                            "no log line with {needle:?} within {within:?}; the log:\n{}",
                            self.log()
                        )
                    }
                    // Every line is in: look once more.
                    Err(RecvTimeoutError::Disconnected) => {
                        return self.find(needle).unwrap_or_else(|| {
                            panic!(
                                "the log ended without a line with {needle:?}; the log:\n{}",
                                self.log()
                            )
                        })
                    }
                }
            }
        }

        /// The first log line so far containing `needle`.
        fn find(&self, needle: &str) -> Option<String> {
            let lines = self.lines.lock().unwrap();
            lines.iter().find(|l| l.contains(needle)).cloned()
        }

        /// The TCP address of the first "consentd serving" line that names one.
        pub fn addr(&self) -> SocketAddr {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|log| log["fields"]["message"] == "consentd serving")
                .find_map(|log| log["fields"]["addr"].as_str()?.parse().ok())
                .unwrap_or_else(|| {
                    panic!("consentd logged no TCP address; its log:\n{}", self.log())
                })
        }

        /// The log so far, one line a record.
        pub fn log(&self) -> String {
            self.lines.lock().unwrap().join("\n")
        }

        /// Sends signal `name` (e.g. "HUP", "TERM").
        pub fn signal(&self, name: &str) {
            let ok = Command::new("kill")
                .args([&format!("-{name}"), &self.child.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{name}");
        }

        /// Waits for the daemon to exit.
        pub fn wait(&mut self) -> ExitStatus {
            self.child.wait().unwrap()
        }

        /// SIGKILL, and the daemon is gone.
        pub fn kill9(mut self) {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }
    }

    impl Drop for Consentd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
