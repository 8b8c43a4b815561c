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

/// The daemon's defaults, listening on `127.0.0.1:0` over `data_dir`.
pub fn loopback_config(data_dir: PathBuf) -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir,
        ..Config::default()
    }
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
