//! Wiring: open the store, bind, serve gRPC (with health and reflection),
//! run the housekeeping tasks (the cluster-wide duties only while the store
//! says this daemon holds them), and shut down in order: NOT_SERVING, end watch
//! streams with a resumable status, drain in-flight calls (bounded), stop
//! compaction, stop and flush the store.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Server;

use crate::{
    auth::{Authenticator, CredentialsError},
    broker::Broker,
    clock::{SharedClock, SystemClock},
    config::{Config, StoreKind},
    grpc::{AccessLayer, AdminService, AppsService, AuthorizationService, ConsistencyLayer},
    metrics::{self, Metrics, MetricsError, RpcLayer},
    pb::{
        self, admin_server::AdminServer, apps_server::AppsServer,
        authorization_server::AuthorizationServer,
    },
    store::{Retention, SledConfig, SledStore, Store, StoreError},
    transport::{self, ListenAddr, Listener, Tls, TransportError},
    watch::{WatchStats, Watcher},
};

/// Largest header block a client may send (HTTP/2 allows 16 MiB by default).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("another consentd holds this data dir {path}: stop it, or choose another --data-dir")]
    DataDirInUse { path: String },
    #[error("internal: {0}")]
    Internal(String),
}

/// A data dir whose lock another process holds gets its own message. sled
/// 0.34 reports the held lock only as an I/O error with this text.
fn data_dir_in_use(e: StoreError) -> ServerError {
    match e {
        StoreError::Open { path, message } if message.contains("could not acquire lock") => {
            ServerError::DataDirInUse { path }
        }
        e => e.into(),
    }
}

/// Opens the store `config.store` names: sled in `data_dir`, or etcd.
async fn open_store(
    config: &Config,
    metrics: Arc<Metrics>,
    clock: SharedClock,
) -> Result<Arc<dyn Store>, ServerError> {
    match config.store {
        StoreKind::Sled => {
            let sled_config = SledConfig {
                path: config.data_dir.clone(),
                cache_capacity: config.cache_capacity,
                max_batch: config.max_batch,
                queue_depth: config.queue_depth,
                publish_capacity: config.publish_capacity,
                observer: Some(metrics),
                flush_on_commit: config.flush_on_commit,
                clock,
            };
            let store = tokio::task::spawn_blocking(move || SledStore::open(&sled_config))
                .await
                .map_err(|e| ServerError::Internal(format!("opening the store: {e}")))?
                .map_err(data_dir_in_use)?;
            Ok(Arc::new(store))
        }
        StoreKind::Etcd => open_etcd(config, metrics, clock).await,
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(
    config: &Config,
    metrics: Arc<Metrics>,
    clock: SharedClock,
) -> Result<Arc<dyn Store>, ServerError> {
    use crate::{config::ConfigError, store::EtcdConfig};
    let e = &config.etcd;
    let mut etcd = EtcdConfig::new(e.endpoints.clone(), e.prefix.clone(), clock);
    if let Some(user) = &e.user {
        let password = match (&e.password_file, &e.password) {
            (Some(file), _) => std::fs::read_to_string(file)
                .map_err(|err| {
                    ConfigError::Invalid(format!("--etcd-password-file {}: {err}", file.display()))
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, Some(secret)) => secret.0.clone(),
            // Config::check_store refuses a user without a password.
            (None, None) => String::new(),
        };
        etcd.user = Some((user.clone(), password));
    }
    if let Some(ca) = &e.ca {
        let identity = e.cert.as_deref().zip(e.key.as_deref());
        let tls = crate::store::EtcdTls::load(ca, identity)
            .map_err(|err| ConfigError::Invalid(format!("TLS towards etcd: {err}")))?;
        etcd.tls = Some(tls);
    }
    etcd.max_batch = config.max_batch;
    etcd.queue_depth = config.queue_depth;
    etcd.publish_capacity = config.publish_capacity;
    etcd.max_txn_ops = e.max_txn_ops;
    etcd.max_txn_bytes = e.max_txn_bytes;
    etcd.lease_ttl = e.lease_ttl;
    etcd.timeout = e.timeout;
    etcd.observer = Some(metrics);
    if let Some(every) = e.snapshot_interval {
        etcd.snapshot_dir = Some(config.data_dir.clone());
        etcd.snapshot_interval = every;
    }
    Ok(Arc::new(crate::store::EtcdStore::open(&etcd).await?))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(
    _: &Config,
    _: Arc<Metrics>,
    _: SharedClock,
) -> Result<Arc<dyn Store>, ServerError> {
    Err(crate::config::ConfigError::Invalid(
        "--store etcd: this consentd was built without the etcd backend; build it with \
         `cargo build --release --features etcd` (needs protoc: Debian protobuf-compiler)"
            .into(),
    )
    .into())
}

/// A running daemon. Dropping it without [`Daemon::shutdown`] aborts its
/// tasks; the store then flushes when its last reference goes.
pub struct Daemon {
    addrs: Vec<ListenAddr>,
    auth: Arc<Authenticator>,
    tls: Option<Arc<Tls>>,
    listeners: TaskTracker,
    /// Export streams in progress.
    exports: TaskTracker,
    store: Arc<dyn Store>,
    watcher: Arc<Watcher>,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    compactor: Option<JoinHandle<()>>,
    recovery: Option<JoinHandle<()>>,
    expiry: Option<JoinHandle<()>>,
    /// Sets health from the store's quorum (etcd); none for sled.
    health_follower: Option<JoinHandle<()>>,
    metrics_endpoint: Option<(SocketAddr, JoinHandle<()>)>,
    drain_timeout: Duration,
}

impl Daemon {
    /// Opens the store, binds `config.listen` and starts serving. Returns
    /// once every listener is bound.
    pub async fn start(config: Config) -> Result<Daemon, ServerError> {
        Self::start_with_clock(config, SystemClock::shared()).await
    }

    /// [`Daemon::start`] with the clock every time-dependent rule reads
    /// (tests move a [`crate::clock::ManualClock`] instead of sleeping).
    pub async fn start_with_clock(
        config: Config,
        clock: SharedClock,
    ) -> Result<Daemon, ServerError> {
        config.check_exposure()?;
        if config.insecure {
            for addr in &config.listen {
                if matches!(addr, ListenAddr::Tcp(a) if !a.ip().is_loopback()) {
                    tracing::warn!(%addr, "INSECURE: listening beyond loopback without the protection of credentials and TLS, as --insecure asks");
                }
            }
        }
        let auth = Arc::new(match &config.credentials {
            Some(path) => Authenticator::from_file(path)?,
            None => Authenticator::off(),
        });
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(Tls::load(files.clone())?)),
            None => None,
        };
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for addr in &config.listen {
            let listener = Listener::bind(addr, config.unix_socket_mode).await?;
            addrs.push(listener.local_addr()?);
            listeners.push(listener);
        }
        let metrics = Arc::new(Metrics::new()?);
        let store = open_store(&config, metrics.clone(), clock.clone()).await?;
        let broker = Broker::new(store.clone(), config.rules.clone())
            .with_session_idle_timeout(config.grants.session_idle_timeout)
            .with_privacy_gap(config.grants.privacy_disagree_gap)
            .with_nag_policy(config.anti_nag)
            .with_prompt_audit(config.audit.record_prompts)
            .with_clock(clock.clone());
        let watcher = Arc::new(Watcher::new(store.clone(), config.watch.clone()));

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<AuthorizationServer<AuthorizationService>>()
            .await;
        health.set_serving::<AppsServer<AppsService>>().await;
        health.set_serving::<AdminServer<AdminService>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };

        let stop = CancellationToken::new();
        let exports = TaskTracker::new();
        let max_message = config.max_message_bytes;
        let router = Server::builder()
            .layer(RpcLayer::new(metrics.clone()))
            .layer(AccessLayer::new(
                auth.clone(),
                &config.limits,
                config.watch.max_streams,
            ))
            .layer(ConsistencyLayer::new(
                store.clone(),
                config.min_revision_max_wait,
            ))
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .trace_fn(|req| tracing::debug_span!("rpc", method = %req.uri().path()))
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(
                AuthorizationServer::new(AuthorizationService::new(
                    broker.clone(),
                    watcher.clone(),
                    metrics.clone(),
                    auth.clone(),
                ))
                .max_decoding_message_size(max_message),
            )
            .add_service(
                AppsServer::new(AppsService::new(broker.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                AdminServer::new(AdminService::new(
                    broker.clone(),
                    metrics.clone(),
                    config.retention,
                    exports.clone(),
                    stop.clone(),
                ))
                .max_decoding_message_size(max_message),
            );

        let listener_tasks = TaskTracker::new();
        let incoming = transport::accept_all(
            listeners,
            tls.clone(),
            &config.connections,
            stop.clone(),
            &listener_tasks,
        );
        listener_tasks.close();
        let metrics_endpoint = match config.metrics_listen {
            Some(addr) => Some(
                metrics::serve(addr, metrics, store.clone(), watcher.clone(), stop.clone()).await?,
            ),
            None => None,
        };
        let server = tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        let compactor = tokio::spawn(compact_periodically(
            broker.clone(),
            config.retention,
            config.audit.retention,
            config.compaction_interval,
            store.duties(),
            stop.clone(),
        ));
        let recovery = tokio::spawn(recover_when_possible(store.clone(), stop.clone()));
        let health_follower = store
            .quorum()
            .map(|quorum| tokio::spawn(follow_quorum(quorum, health.clone(), stop.clone())));
        let expiry = tokio::spawn(expire_grants(
            broker,
            clock,
            config.grants.expiry_check_interval,
            store.duties(),
            stop.clone(),
        ));
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        tracing::info!(
            addr = %shown[0],
            listen = ?shown,
            tls = tls.is_some(),
            mtls = tls.as_ref().is_some_and(|t| t.requires_client_certs()),
            store = ?config.store,
            data_dir = %config.data_dir.display(),
            revision = store.revision(),
            "consentd serving"
        );
        if !auth.is_on() {
            tracing::warn!(
                "AUTHENTICATION IS OFF: every caller is treated as an operator; this is only safe \
                 because consentd listens on loopback and unix sockets (set `credentials` to turn it on)"
            );
        }
        Ok(Daemon {
            addrs,
            auth,
            tls,
            listeners: listener_tasks,
            exports,
            store,
            watcher,
            health,
            stop,
            server: Some(server),
            compactor: Some(compactor),
            recovery: Some(recovery),
            expiry: Some(expiry),
            health_follower,
            metrics_endpoint,
            drain_timeout: config.drain_timeout,
        })
    }

    /// The first TCP address bound (the real port for port 0), if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addrs.iter().find_map(|a| match a {
            ListenAddr::Tcp(addr) => Some(*addr),
            ListenAddr::Unix(_) => None,
        })
    }

    /// Every address bound, in the order configured.
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.addrs
    }

    /// Re-reads the credentials file and the TLS files (SIGHUP). A file
    /// that fails to load leaves the old one in force; the errors are
    /// returned (and logged) one per file.
    pub fn reload(&self) -> Vec<ServerError> {
        let mut errors = Vec::new();
        if self.auth.is_on() {
            match self.auth.reload() {
                Ok(n) => tracing::info!(principals = n, "credentials reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "credentials reload failed; keeping the old ones");
                    errors.push(e.into());
                }
            }
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the old certificates");
                    errors.push(e.into());
                }
            }
        }
        errors
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(|(addr, _)| *addr)
    }

    /// Counters of the watch streams.
    pub fn watch_stats(&self) -> &WatchStats {
        self.watcher.stats()
    }

    /// Graceful shutdown: health NOT_SERVING, watch streams end with
    /// UNAVAILABLE carrying their resume revision, in-flight calls finish
    /// within the drain timeout, then the store stops and flushes.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        tracing::info!("shutting down");
        // Nothing sets SERVING again from here on.
        if let Some(follower) = self.health_follower.take() {
            follower.abort();
            let _ = follower.await;
        }
        self.health
            .set_not_serving::<AuthorizationServer<AuthorizationService>>()
            .await;
        self.health
            .set_not_serving::<AppsServer<AppsService>>()
            .await;
        self.health
            .set_not_serving::<AdminServer<AdminService>>()
            .await;
        self.watcher.shutdown();
        self.stop.cancel();
        let mut served = Ok(());
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(self.drain_timeout, &mut server).await {
                Ok(Ok(result)) => served = result.map_err(ServerError::from),
                Ok(Err(e)) => served = Err(ServerError::Internal(format!("server task: {e}"))),
                Err(_) => {
                    tracing::warn!(timeout = ?self.drain_timeout, "drain timeout: aborting in-flight calls");
                    server.abort();
                    let _ = server.await;
                }
            }
        }
        // The accept loops ended with `stop`; their unix sockets are gone.
        self.listeners.wait().await;
        // Exports end with `stop` too (with UNAVAILABLE to their client).
        self.exports.close();
        self.exports.wait().await;
        for (name, task) in [
            ("compaction", self.compactor.take()),
            ("recovery", self.recovery.take()),
            ("expiry", self.expiry.take()),
            ("metrics", self.metrics_endpoint.take().map(|(_, t)| t)),
        ] {
            if let Some(Err(e)) = match task {
                Some(task) => Some(task.await),
                None => None,
            } {
                tracing::error!(error = %e, task = name, "task failed");
            }
        }
        self.store.close().await?;
        tracing::info!(revision = self.store.revision(), "shutdown complete");
        served
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.cancel();
        for task in [
            self.server.take().map(|t| t.abort_handle()),
            self.compactor.take().map(|t| t.abort_handle()),
            self.recovery.take().map(|t| t.abort_handle()),
            self.expiry.take().map(|t| t.abort_handle()),
            self.health_follower.take().map(|t| t.abort_handle()),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

/// Keeps gRPC health (the overall `""` service and each service) SERVING
/// while the store can commit and NOT_SERVING while it cannot (etcd
/// without a quorum), until `stop`. The store logs each change.
async fn follow_quorum(
    mut quorum: tokio::sync::watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    use tonic::server::NamedService;
    use tonic_health::ServingStatus;
    loop {
        let status = if *quorum.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in [
            "",
            AuthorizationServer::<AuthorizationService>::NAME,
            AppsServer::<AppsService>::NAME,
            AdminServer::<AdminService>::NAME,
        ] {
            health.set_service_status(service, status).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = quorum.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Checks every second whether a failed store can be reopened, until `stop`.
async fn recover_when_possible(store: Arc<dyn Store>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = store.recover().await {
            tracing::error!(error = %e, "reopening the store failed; will retry");
        }
    }
}

/// Resolves when `duties` changes to held (never, when nobody sends: a
/// store that always holds them).
async fn acquired(duties: &mut watch::Receiver<bool>) {
    loop {
        if duties.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if *duties.borrow_and_update() {
            return;
        }
    }
}

/// Housekeeping until `stop`: writes the buffered prompt audit records
/// (every daemon: the buffer holds what this daemon served, which no other
/// daemon has), and, while this daemon holds the cluster-wide duties
/// (`duties`), lapses timed and one-time grants as their timers come due
/// (checked every `every` and when the duties arrive; the first check runs
/// at once, so grants that lapsed while no daemon ran lapse right after a
/// start or a takeover).
async fn expire_grants(
    broker: Broker,
    clock: SharedClock,
    every: Duration,
    mut duties: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                broker.flush_prompt_audit();
                return;
            }
            _ = ticks.tick() => {}
            () = acquired(&mut duties) => {}
        }
        broker.flush_prompt_audit();
        if !*duties.borrow() {
            continue;
        }
        loop {
            let now = clock.now_ms();
            match broker.next_lapse() {
                Ok(Some(at)) if at <= now => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "reading grant timers failed; will retry");
                    break;
                }
            }
            let done = tokio::select! {
                () = stop.cancelled() => return,
                done = broker.expire_due(now) => done,
            };
            match done {
                Ok(w) if w.value > 0 => {
                    tracing::info!(lapsed = w.value, revision = w.revision, "grants lapsed");
                }
                Ok(_) => {}
                Err(e) if !*duties.borrow() => {
                    tracing::info!(error = %e, "lapsing grants stopped: the cluster-wide duties moved to another daemon");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "lapsing grants failed; will retry");
                    break;
                }
            }
        }
    }
}

/// Trims the event log and the audit trail every `every` until `stop`,
/// while this daemon holds the cluster-wide duties (`duties`).
async fn compact_periodically(
    broker: Broker,
    retention: Retention,
    audit_retention: Retention,
    every: Duration,
    duties: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    // A failure after the duties moved away is expected, not an error.
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        if *duties.borrow() {
            tracing::error!(error = %e, "{what} failed; will retry");
        } else {
            tracing::info!(error = %e, "{what} stopped: the cluster-wide duties moved to another daemon");
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !*duties.borrow() {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            result = broker.compact_duty(retention) => {
                if let Err(e) = result {
                    failed("compaction", &e);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            result = broker.trim_audit(audit_retention) => {
                if let Err(e) = result {
                    failed("trimming the audit trail", &e);
                }
            }
        }
    }
}
