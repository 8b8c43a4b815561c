//! The fixture layer of the spec suite (`spec_*` modules): a real daemon on
//! `127.0.0.1:0` over a temp data dir, connected clients, and helpers that
//! build requests, so the tests read as SPEC.md and notes/semantics.md do.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use consentd::{
    clock::{ManualClock, SharedClock, SystemClock},
    config::Config,
    pb::{
        self, apps_client::AppsClient, authorization_client::AuthorizationClient, Answer, AppKind,
        LocationOption,
    },
};
use tonic::{transport::Channel, Code, Status};
use tonic_health::pb::health_client::HealthClient;

use crate::support::{
    authorize_req, check_req, connect, loopback_config, record_req, update_req, Served,
};
// The spec suite's names for the shared request builders.
pub use crate::support::{android, bare_app as app, client_info as client, Declare};

pub type Rpc<T> = Result<T, Status>;

/// A running daemon that owns its data dir. Dropping it aborts the daemon;
/// [`TestDaemon::stop`] shuts it down gracefully.
pub struct TestDaemon {
    served: Served,
    pub auth: AuthorizationClient<Channel>,
    pub apps: AppsClient<Channel>,
    channel: Channel,
    /// Set when the test moves time itself
    /// ([`TestDaemon::start_with_manual_clock`]).
    manual: Option<Arc<ManualClock>>,
}

impl TestDaemon {
    /// Starts a daemon on port 0 with an empty data dir. `Daemon::start`
    /// returns once it listens, so no waiting is needed.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// Graceful shutdown, then a new daemon on the same data dir (and a new
    /// port), with fresh clients.
    pub async fn restart(&mut self) {
        self.served.shutdown().await;
        self.start_again().await;
    }

    /// A daemon on the same data dir, with fresh clients.
    async fn start_again(&mut self) {
        let addr = self.served.start_again().await;
        self.channel = connect(addr).await;
        self.auth = AuthorizationClient::new(self.channel.clone());
        self.apps = AppsClient::new(self.channel.clone());
    }

    pub async fn stop(self) {
        self.served.stop().await;
    }

    // --- Apps -----------------------------------------------------------

    /// Registers `app`; returns the stored registration.
    pub async fn register(&self, app: pb::App) -> pb::App {
        let id = app.app_id.clone();
        self.try_register(app)
            .await
            .unwrap_or_else(|s| panic!("registering {id}: {s:?}"))
            .app
            .expect("registered app")
    }

    pub async fn try_register(&self, app: pb::App) -> Rpc<pb::RegisterAppResponse> {
        let req = pb::RegisterAppRequest { app: Some(app) };
        Ok(self.apps.clone().register_app(req).await?.into_inner())
    }

    pub async fn update_app(&self, app: pb::App) -> Rpc<pb::UpdateAppResponse> {
        let req = pb::UpdateAppRequest { app: Some(app) };
        Ok(self.apps.clone().update_app(req).await?.into_inner())
    }

    pub async fn get_app(&self, app_id: &str) -> Rpc<pb::GetAppResponse> {
        let req = pb::GetAppRequest {
            app_id: app_id.into(),
        };
        Ok(self.apps.clone().get_app(req).await?.into_inner())
    }

    // --- Authorization --------------------------------------------------

    pub async fn authorize(
        &self,
        app: &str,
        user: &str,
        scope: &str,
        client: pb::ClientInfo,
    ) -> Rpc<pb::AuthorizeResponse> {
        let req = authorize_req(app, user, scope, client);
        Ok(self.auth.clone().authorize(req).await?.into_inner())
    }

    /// Authorize's decision for a current Android client (every popup exists).
    pub async fn decision(&self, app: &str, user: &str, scope: &str) -> pb::Decision {
        self.decision_for(app, user, scope, android()).await
    }

    pub async fn decision_for(
        &self,
        app: &str,
        user: &str,
        scope: &str,
        client: pb::ClientInfo,
    ) -> pb::Decision {
        self.authorize(app, user, scope, client)
            .await
            .unwrap_or_else(|s| panic!("Authorize {app}/{user}/{scope}: {s:?}"))
            .decision
            .expect("a decision")
    }

    pub async fn check_api(
        &self,
        app: &str,
        user: &str,
        api: &str,
        client: pb::ClientInfo,
    ) -> Rpc<pb::CheckApiResponse> {
        let req = check_req(app, user, api, client);
        Ok(self.auth.clone().check_api(req).await?.into_inner())
    }

    pub async fn record(
        &self,
        app: &str,
        user: &str,
        scope: &str,
        answer: Answer,
        client: pb::ClientInfo,
    ) -> Rpc<pb::RecordDecisionResponse> {
        let req = record_req(app, user, scope, answer, client);
        Ok(self.auth.clone().record_decision(req).await?.into_inner())
    }

    /// A popup answer from a current Android client that must succeed.
    pub async fn answer(
        &self,
        app: &str,
        user: &str,
        scope: &str,
        answer: Answer,
    ) -> pb::RecordDecisionResponse {
        self.record(app, user, scope, answer, android())
            .await
            .unwrap_or_else(|s| panic!("RecordDecision {app}/{user}/{scope} {answer:?}: {s:?}"))
    }

    /// wx.getSetting's map.
    pub async fn setting(&self, app: &str, user: &str) -> pb::GetSettingResponse {
        let req = pb::GetSettingRequest {
            app_id: app.into(),
            user_id: user.into(),
        };
        self.auth
            .clone()
            .get_setting(req)
            .await
            .unwrap_or_else(|s| panic!("GetSetting {app}/{user}: {s:?}"))
            .into_inner()
    }

    pub async fn open_setting(&self, app: &str, user: &str) -> pb::OpenSettingResponse {
        let req = pb::OpenSettingRequest {
            app_id: app.into(),
            user_id: user.into(),
        };
        self.auth
            .clone()
            .open_setting(req)
            .await
            .unwrap_or_else(|s| panic!("OpenSetting {app}/{user}: {s:?}"))
            .into_inner()
    }

    /// The settings page: `toggles` (scope -> on) and/or the location item.
    pub async fn update_setting(
        &self,
        app: &str,
        user: &str,
        toggles: &[(&str, bool)],
        location: LocationOption,
    ) -> Rpc<pb::UpdateSettingResponse> {
        let req = update_req(app, user, toggles, location);
        Ok(self.auth.clone().update_setting(req).await?.into_inner())
    }

    pub async fn remove_app(&self, app: &str, user: &str) -> Rpc<pb::RemoveAppResponse> {
        let req = pb::RemoveAppRequest {
            app_id: app.into(),
            user_id: user.into(),
        };
        Ok(self.auth.clone().remove_app(req).await?.into_inner())
    }

    pub async fn rules(&self) -> pb::GetRulesResponse {
        self.auth
            .clone()
            .get_rules(pb::GetRulesRequest {})
            .await
            .expect("GetRules")
            .into_inner()
    }

    /// The store's current revision, as a read reports it.
    pub async fn revision(&self) -> u64 {
        self.rules().await.revision
    }

    pub async fn list_scopes(&self, kind: AppKind) -> pb::ListScopesResponse {
        let req = pb::ListScopesRequest { kind: kind.into() };
        self.auth
            .clone()
            .list_scopes(req)
            .await
            .expect("ListScopes")
            .into_inner()
    }
}

// --- Request builders ---------------------------------------------------

pub const LOCATION: &str = "scope.userLocation";
pub const FUZZY: &str = "scope.userFuzzyLocation";
pub const BACKGROUND: &str = "scope.userLocationBackground";

pub const LOCATION_DESC: &str = "to show shops near you";
pub const FUZZY_DESC: &str = "to show your city";
pub const BACKGROUND_DESC: &str = "to track your run";

/// A mini program declaring everything precise and background location need.
pub fn location_app(app_id: &str) -> pb::App {
    app(app_id, AppKind::MiniProgram)
        .desc(LOCATION, LOCATION_DESC)
        .desc(FUZZY, FUZZY_DESC)
        .desc(BACKGROUND, BACKGROUND_DESC)
        .background_modes(&["location"])
        .private_infos(&[
            "getLocation",
            "onLocationChange",
            "startLocationUpdate",
            "startLocationUpdateBackground",
            "chooseLocation",
            "choosePoi",
            "chooseAddress",
        ])
}

/// An app of `kind` declaring fuzzy location (which excludes precise location).
pub fn fuzzy_app(app_id: &str, kind: AppKind) -> pb::App {
    app(app_id, kind)
        .desc(FUZZY, FUZZY_DESC)
        .private_infos(&["getFuzzyLocation"])
}

// --- Assertions ---------------------------------------------------------

/// Asserts the call failed with `code` and a message containing `needle`;
/// returns the status for further checks.
#[track_caller]
pub fn expect_status<T: std::fmt::Debug>(result: Rpc<T>, code: Code, needle: &str) -> Status {
    let status = match result {
        Ok(value) => panic!("expected {code:?} ({needle:?}), got a success: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {:?}",
        status.message()
    );
    assert!(
        status.message().contains(needle),
        "{code:?} message {:?} lacks {needle:?}",
        status.message()
    );
    status
}

/// Asserts outcome, reason and errMsg of a decision in one line.
#[track_caller]
pub fn assert_decision(d: &pb::Decision, outcome: pb::Outcome, reason: pb::Reason, err_msg: &str) {
    assert_eq!(
        (d.outcome(), d.reason(), d.err_msg.as_str()),
        (outcome, reason, err_msg),
        "decision for {}: {d:?}",
        d.scope
    );
}

/// `auth_setting` as a sorted list, for readable comparisons.
pub fn sorted(map: &HashMap<String, bool>) -> Vec<(String, bool)> {
    let mut v: Vec<_> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
    v.sort();
    v
}

/// The expected auth_setting, sorted like [`sorted`].
pub fn setting_of(pairs: &[(&str, bool)]) -> Vec<(String, bool)> {
    let mut v: Vec<_> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    v.sort();
    v
}

/// The (scope, new state) of each change, in order.
pub fn change_list(changes: &[pb::DecisionChange]) -> Vec<(String, pb::DecisionState)> {
    changes
        .iter()
        .map(|c| (c.scope.clone(), c.new_state()))
        .collect()
}

/// Applies `changes` one by one to `state` (scope -> decision) and asserts
/// after each that background GRANTED implies location GRANTED, that each
/// change starts from the state it claims, and that revisions increase.
#[track_caller]
pub fn assert_invariant_holds_after_each(
    state: &mut HashMap<String, pb::DecisionState>,
    changes: &[pb::DecisionChange],
) {
    use pb::DecisionState::{Granted, NotDetermined};
    let mut last_revision = 0;
    for c in changes {
        let old = state.get(&c.scope).copied().unwrap_or(NotDetermined);
        assert_eq!(old, c.old_state(), "change {c:?} starts from {old:?}");
        assert!(
            c.revision > last_revision,
            "revisions not increasing: {changes:?}"
        );
        last_revision = c.revision;
        state.insert(c.scope.clone(), c.new_state());
        if state.get(BACKGROUND) == Some(&Granted) {
            assert_eq!(
                state.get(LOCATION),
                Some(&Granted),
                "background granted without location after {c:?} in {changes:?}"
            );
        }
    }
}

/// Asserts FAILED_PRECONDITION whose message names `outcome` (in any
/// spelling: `NO_AUTH_NEEDED`, `NoAuthNeeded`, ...).
#[track_caller]
pub fn expect_refused<T: std::fmt::Debug>(result: Rpc<T>, outcome: pb::Outcome) -> Status {
    let status = expect_status(result, Code::FailedPrecondition, "");
    let squash = |s: &str| s.replace('_', "").to_lowercase();
    let name = outcome.as_str_name().trim_start_matches("OUTCOME_");
    assert!(
        squash(status.message()).contains(&squash(name)),
        "FAILED_PRECONDITION {:?} does not name the outcome {name}",
        status.message()
    );
    status
}

/// The id of the min-sdk rule on `target` (an api like "wx.authorize" or a scope).
pub fn min_sdk_rule(rules: &pb::GetRulesResponse, target: &str) -> String {
    use pb::min_sdk_rule::Target;
    rules
        .min_sdk_rules
        .iter()
        .find(|r| match &r.target {
            Some(Target::Api(t) | Target::Scope(t)) => t == target,
            None => false,
        })
        .unwrap_or_else(|| panic!("no min-sdk rule on {target}: {rules:?}"))
        .id
        .clone()
}

// --- Issue #8 helpers (spec_beyond) -------------------------------------

impl TestDaemon {
    /// Like [`TestDaemon::start`], with `configure` applied to the config
    /// first (timings, policies; the listener and data dir stay the fixture's).
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(configure, None).await
    }

    /// Like [`TestDaemon::start_with`], on a clock that stands still until
    /// the test calls [`TestDaemon::advance`] (it starts at the system
    /// time): lapses, embargoes, privacy gaps and retention by age without
    /// sleeping. Periodic tasks (grant expiry, compaction) still tick in
    /// real time and read this clock, so an effect that is due arrives
    /// within one tick after the advance: wait for it, do not sleep.
    pub async fn start_with_manual_clock(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(configure, Some(ManualClock::starting_now())).await
    }

    async fn start_on(
        configure: impl FnOnce(&mut Config),
        manual: Option<Arc<ManualClock>>,
    ) -> Self {
        let clock: SharedClock = match &manual {
            Some(m) => m.clone(),
            None => SystemClock::shared(),
        };
        let served = Served::start_with_clock(loopback_config, configure, clock).await;
        let channel = connect(served.addr()).await;
        Self {
            served,
            auth: AuthorizationClient::new(channel.clone()),
            apps: AppsClient::new(channel.clone()),
            channel,
            manual,
        }
    }

    /// Now, by the daemon's clock (the one deadlines are measured on).
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.served.clock().now_ms())
    }

    /// Moves the daemon's manual clock forward by `by`.
    #[track_caller]
    pub fn advance(&self, by: Duration) {
        self.manual
            .as_ref()
            .expect("advance needs TestDaemon::start_with_manual_clock")
            .advance(by);
    }

    /// Graceful shutdown, `down` with no daemon running, then a new daemon
    /// on the same data dir with fresh clients. On a manual clock, `down`
    /// passes by [`TestDaemon::advance`]; otherwise in real time.
    pub async fn restart_after(&mut self, down: Duration) {
        self.served.shutdown().await;
        match &self.manual {
            Some(clock) => clock.advance(down),
            None => tokio::time::sleep(down).await,
        }
        self.start_again().await;
    }

    /// The connection the fixture's clients share (for clients with
    /// interceptors, or other services).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn admin(&self) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.channel.clone())
    }

    pub async fn get_privacy(&self, app: &str, user: &str) -> Rpc<pb::GetPrivacySettingResponse> {
        let req = pb::GetPrivacySettingRequest {
            app_id: app.into(),
            user_id: user.into(),
        };
        Ok(self
            .auth
            .clone()
            .get_privacy_setting(req)
            .await?
            .into_inner())
    }

    pub async fn record_privacy(
        &self,
        app: &str,
        user: &str,
        agree: bool,
    ) -> Rpc<pb::RecordPrivacyDecisionResponse> {
        let req = pb::RecordPrivacyDecisionRequest {
            app_id: app.into(),
            user_id: user.into(),
            agree,
        };
        Ok(self
            .auth
            .clone()
            .record_privacy_decision(req)
            .await?
            .into_inner())
    }

    pub async fn list_audit(&self, req: pb::ListAuditRequest) -> Rpc<pb::ListAuditResponse> {
        Ok(self.auth.clone().list_audit(req).await?.into_inner())
    }

    pub async fn end_session(
        &self,
        app: &str,
        user: &str,
        session: &str,
    ) -> Rpc<pb::EndSessionResponse> {
        let req = pb::EndSessionRequest {
            app_id: app.into(),
            user_id: user.into(),
            session_id: session.into(),
        };
        Ok(self.auth.clone().end_session(req).await?.into_inner())
    }
}

/// A privacy guide named `name` covering `types`, chained onto [`app`].
pub fn with_privacy(mut app: pb::App, name: &str, types: &[&str]) -> pb::App {
    app.privacy = Some(pb::PrivacyGuide {
        name: name.into(),
        info_types: types.iter().map(|t| t.to_string()).collect(),
        version: 0,
    });
    app
}
