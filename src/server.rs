//! Wiring: open the store, bind, serve gRPC (with health and reflection),
//! and shut down in order: NOT_SERVING, drain in-flight calls (bounded),
//! stop and flush the store.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{server::TcpIncoming, Server};

use crate::{
    broker::Broker,
    config::Config,
    grpc::{AppsService, AuthorizationService},
    pb::{self, apps_server::AppsServer, authorization_server::AuthorizationServer},
    store::{SledConfig, SledStore, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("internal: {0}")]
    Internal(String),
}

/// A running daemon. Dropping it without [`Daemon::shutdown`] aborts the
/// server task; the store then flushes when its last reference goes.
pub struct Daemon {
    addr: SocketAddr,
    store: Arc<dyn Store>,
    health: tonic_health::server::HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    drain_timeout: Duration,
}

impl Daemon {
    /// Opens the store, binds `config.listen` and starts serving. Returns
    /// once the listener is bound.
    pub async fn start(config: Config) -> Result<Daemon, ServerError> {
        let sled_config = SledConfig {
            path: config.data_dir.clone(),
            cache_capacity: config.cache_capacity,
            max_batch: config.max_batch,
            queue_depth: config.queue_depth,
        };
        let store = tokio::task::spawn_blocking(move || SledStore::open(&sled_config))
            .await
            .map_err(|e| ServerError::Internal(format!("opening the store: {e}")))??;
        let store: Arc<dyn Store> = Arc::new(store);
        let broker = Broker::new(store.clone(), config.rules.clone());

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<AuthorizationServer<AuthorizationService>>()
            .await;
        health.set_serving::<AppsServer<AppsService>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

        let router = Server::builder()
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(AuthorizationServer::new(AuthorizationService::new(
                broker.clone(),
            )))
            .add_service(AppsServer::new(AppsService::new(broker)));

        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            // Either an explicit stop or the Daemon being dropped.
            let _ = stopped.await;
        }));
        tracing::info!(%addr, data_dir = %config.data_dir.display(), revision = store.revision(), "consentd serving");
        Ok(Daemon {
            addr,
            store,
            health,
            stop: Some(stop),
            task: Some(task),
            drain_timeout: config.drain_timeout,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful shutdown: health NOT_SERVING, stop accepting, let in-flight
    /// calls finish within the drain timeout, then stop and flush the store.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        tracing::info!("shutting down");
        self.health
            .set_not_serving::<AuthorizationServer<AuthorizationService>>()
            .await;
        self.health
            .set_not_serving::<AppsServer<AppsService>>()
            .await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let mut served = Ok(());
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(self.drain_timeout, &mut task).await {
                Ok(Ok(result)) => served = result.map_err(ServerError::from),
                Ok(Err(e)) => served = Err(ServerError::Internal(format!("server task: {e}"))),
                Err(_) => {
                    tracing::warn!(timeout = ?self.drain_timeout, "drain timeout: aborting in-flight calls");
                    task.abort();
                    let _ = task.await;
                }
            }
        }
        self.store.close().await?;
        tracing::info!(revision = self.store.revision(), "shutdown complete");
        served
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
