//! Prometheus metrics: registries per daemon (no global recorder), an RPC
//! layer for the gRPC server, and a text endpoint on its own HTTP listener
//! (`/metrics`, `/healthz`, `/readyz`).
//!
//! gRPC calls follow the names dashboards for grpc-go and go-grpc-prometheus
//! already use (`grpc_server_handled_total`, `grpc_server_handling_seconds`
//! with `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code`); the process
//! metrics are the standard `process_*`; everything else is `consentd_*`.

use std::{
    borrow::Cow,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::Ordering, Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::{
    domain::{gates::Verdict, Rpc, Scope},
    store::{CommitObserver, Store},
    watch::WatchStats,
};

/// Every metric the daemon exports.
pub struct Metrics {
    /// `consentd_*`.
    registry: Registry,
    /// The conventional names: `grpc_server_*` and `process_*`.
    standard: Registry,
    rpc_requests: IntCounterVec,
    rpc_seconds: HistogramVec,
    outcomes: IntCounterVec,
    /// Per-method handles, made on first use (an unused method stays out of
    /// the exposition): a call then costs two atomic adds, not two label
    /// hashes and map lookups.
    methods: Box<[MethodMetrics]>,
    /// Per (scope, outcome, reason) counters, made on first use.
    verdicts: Box<[OnceLock<IntCounter>]>,
    group_jobs: Histogram,
    group_events: Histogram,
    flush_seconds: Histogram,
    revision: IntGauge,
    cluster_revision: IntGauge,
    view_lag: IntGauge,
    backend_seconds: HistogramVec,
    watch_max_lag: IntGauge,
    compacted_through: IntGauge,
    events_retained: IntGauge,
    apps: IntGauge,
    store_bytes: IntGauge,
    watch_active: IntGauge,
    watch_started: IntCounter,
    watch_lagged: IntCounter,
    watch_catch_ups: IntCounter,
    user_resets: IntCounter,
    user_reset_decisions: IntCounter,
    user_erasures: IntCounter,
    user_erasure_rewrites: IntCounter,
    user_erasures_pending: IntCounter,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metrics: {0}")]
    Register(#[from] prometheus::Error),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn pow2_buckets(max: f64) -> Vec<f64> {
    std::iter::successors(Some(1.0), |b| Some(b * 2.0))
        .take_while(|b| *b <= max)
        .collect()
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("consentd".into()), None)?;
        let standard = Registry::new();
        macro_rules! register {
            ($metric:expr) => {{
                register!(registry, $metric)
            }};
            ($registry:expr, $metric:expr) => {{
                let m = $metric;
                $registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        #[cfg(target_os = "linux")]
        standard.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build_info = register!(prometheus::IntGaugeVec::new(
            Opts::new(
                "build_info",
                "1, labelled with the version and git revision consentd was built from"
            ),
            &["version", "revision"]
        )?);
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CONSENTD_GIT_REV")])
            .set(1);
        Ok(Self {
            rpc_requests: register!(
                standard,
                IntCounterVec::new(
                    Opts::new(
                        "grpc_server_handled_total",
                        "gRPC calls completed on the server, by method and status code"
                    ),
                    &["grpc_type", "grpc_service", "grpc_method", "grpc_code"]
                )?
            ),
            rpc_seconds: register!(
                standard,
                HistogramVec::new(
                    HistogramOpts::new(
                        "grpc_server_handling_seconds",
                        "gRPC call latency until the response head (for streams: until \
                         the stream starts)"
                    )
                    .buckets(prometheus::exponential_buckets(25e-6, 2.0, 16)?),
                    &["grpc_type", "grpc_service", "grpc_method"]
                )?
            ),
            outcomes: register!(IntCounterVec::new(
                Opts::new(
                    "outcomes_total",
                    "Authorize/CheckApi answers by scope, outcome and reason"
                ),
                &["scope", "outcome", "reason"]
            )?),
            group_jobs: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "store_group_commit_jobs",
                    "write jobs per group commit (one flush each)"
                )
                .buckets(pow2_buckets(4096.0))
            )?),
            group_events: register!(Histogram::with_opts(
                HistogramOpts::new("store_group_commit_events", "events per group commit")
                    .buckets(pow2_buckets(4096.0))
            )?),
            flush_seconds: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "store_commit_seconds",
                    "apply + flush time of one group commit"
                )
                .buckets(prometheus::exponential_buckets(25e-6, 2.0, 16)?)
            )?),
            revision: register!(IntGauge::new(
                "store_revision",
                "the last durable revision this daemon's view has applied"
            )?),
            cluster_revision: register!(IntGauge::new(
                "store_cluster_revision",
                "the newest revision this daemon knows the whole store to have (etcd: read with a \
                 quorum about once a second; sled: store_revision)"
            )?),
            view_lag: register!(IntGauge::new(
                "store_view_lag_revisions",
                "store_cluster_revision - store_revision: how far this daemon's view is behind"
            )?),
            backend_seconds: register!(HistogramVec::new(
                HistogramOpts::new(
                    "etcd_request_seconds",
                    "etcd calls by operation (txn, range, lock, unlock, lease_keepalive, \
                     lease_grant, lease_revoke, watch), failures and time-outs included"
                )
                .buckets(prometheus::exponential_buckets(100e-6, 2.0, 16)?),
                &["op"]
            )?),
            watch_max_lag: register!(IntGauge::new(
                "watch_lag_revisions_max",
                "the most revisions any Watch stream was behind this daemon's store as it took \
                 its next batch, since the previous scrape"
            )?),
            compacted_through: register!(IntGauge::new(
                "event_log_compacted_through",
                "events up to this revision were trimmed (the retention horizon)"
            )?),
            events_retained: register!(IntGauge::new(
                "event_log_events",
                "events retained in the log"
            )?),
            apps: register!(IntGauge::new("apps", "registered apps")?),
            store_bytes: register!(IntGauge::new(
                "store_size_bytes",
                "the store's size on disk"
            )?),
            watch_active: register!(IntGauge::new("watch_subscribers", "open Watch streams")?),
            watch_started: register!(IntCounter::new(
                "watch_subscriptions_total",
                "Watch streams started"
            )?),
            watch_lagged: register!(IntCounter::new(
                "watch_lagged_total",
                "times a subscriber fell behind the live buffer (it then reads the log)"
            )?),
            watch_catch_ups: register!(IntCounter::new(
                "watch_catch_ups_total",
                "reads of the durable log by subscribers (replays and lag recovery)"
            )?),
            user_resets: register!(IntCounter::new(
                "user_resets_total",
                "ResetUser calls that committed"
            )?),
            user_reset_decisions: register!(IntCounter::new(
                "user_reset_decisions_total",
                "decisions moved back to never asked by ResetUser (one USER_RESET event each)"
            )?),
            user_erasures: register!(IntCounter::new(
                "user_erasures_total",
                "EraseUser calls that committed"
            )?),
            user_erasure_rewrites: register!(IntCounter::new(
                "user_erasure_rewritten_records_total",
                "retained events, checkpoint entries and audit records rewritten to an erasure's pseudonym"
            )?),
            user_erasures_pending: register!(IntCounter::new(
                "user_erasures_left_pending_total",
                "erasures whose rewrite failed and was left pending until the store reopens"
            )?),
            methods: (0..=METHOD_COUNT)
                .map(|_| MethodMetrics::default())
                .collect(),
            verdicts: (0..Scope::all().count() * OUTCOME_SLOTS * REASON_SLOTS)
                .map(|_| OnceLock::new())
                .collect(),
            registry,
            standard,
        })
    }

    /// A committed ResetUser that moved `decisions` decisions.
    pub fn observe_user_reset(&self, decisions: usize) {
        self.user_resets.inc();
        self.user_reset_decisions.inc_by(decisions as u64);
    }

    /// A committed EraseUser whose scrub rewrote `rewritten` records (or
    /// was left `pending`).
    pub fn observe_user_erasure(&self, rewritten: u64, pending: bool) {
        self.user_erasures.inc();
        self.user_erasure_rewrites.inc_by(rewritten);
        if pending {
            self.user_erasures_pending.inc();
        }
    }

    /// One finished call of the method at `method` (from [`method_index`]);
    /// `code` is the gRPC status name, `None` for OK.
    pub fn observe_rpc(&self, method: usize, code: Option<&str>, elapsed: Duration) {
        let method = method.min(METHOD_COUNT);
        // The labels are made only for a handle's first use (and for
        // error codes, which have no cached handle).
        let counter = |code: &str| {
            let (kind, service, name) = method_labels(method);
            self.rpc_requests
                .with_label_values(&[kind, service.as_ref(), name, code])
        };
        let handles = &self.methods[method];
        match code {
            None => handles.ok.get_or_init(|| counter("OK")).inc(),
            Some(code) => counter(code).inc(),
        }
        handles
            .seconds
            .get_or_init(|| {
                let (kind, service, name) = method_labels(method);
                self.rpc_seconds
                    .with_label_values(&[kind, service.as_ref(), name])
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_verdict(&self, v: &Verdict) {
        let labels = || {
            [
                v.scope.name().to_owned(),
                enum_label("OUTCOME_", v.outcome.name()),
                enum_label("REASON_", v.reason.name()),
            ]
        };
        let (outcome, reason) = (v.outcome as usize, v.reason as usize);
        // A variant beyond the table (one added later) takes the slow path.
        let slot = (outcome < OUTCOME_SLOTS && reason < REASON_SLOTS)
            .then(|| (v.scope as usize * OUTCOME_SLOTS + outcome) * REASON_SLOTS + reason)
            .and_then(|i| self.verdicts.get(i));
        match slot {
            Some(slot) => slot
                .get_or_init(|| self.outcomes.with_label_values(&labels()))
                .inc(),
            None => self.outcomes.with_label_values(&labels()).inc(),
        }
    }

    /// The text exposition, with the scrape-time values read now.
    pub fn render(&self, store: &dyn Store, watch: &WatchStats) -> String {
        let s = store.stats();
        let gauge = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.revision, s.revision);
        gauge(&self.cluster_revision, s.cluster_revision);
        gauge(
            &self.view_lag,
            s.cluster_revision.saturating_sub(s.revision),
        );
        gauge(
            &self.watch_max_lag,
            watch.max_lag.swap(0, Ordering::Relaxed),
        );
        gauge(&self.compacted_through, s.compacted_through);
        gauge(&self.events_retained, s.events);
        gauge(&self.apps, s.apps);
        gauge(&self.store_bytes, s.size_on_disk);
        gauge(&self.watch_active, watch.active.load(Ordering::Relaxed));
        let counter = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        counter(&self.watch_started, watch.started.load(Ordering::Relaxed));
        counter(&self.watch_lagged, watch.lagged.load(Ordering::Relaxed));
        counter(
            &self.watch_catch_ups,
            watch.catch_ups.load(Ordering::Relaxed),
        );
        let mut out = Vec::new();
        let mut families = self.standard.gather();
        families.extend(self.registry.gather());
        match TextEncoder::new().encode(&families, &mut out) {
            Ok(()) => String::from_utf8_lossy(&out).into_owned(),
            Err(e) => format!("# encoding metrics failed: {e}\n"),
        }
    }
}

impl CommitObserver for Metrics {
    fn group_committed(&self, jobs: usize, events: usize, flush: Duration) {
        self.group_jobs.observe(jobs as f64);
        self.group_events.observe(events as f64);
        self.flush_seconds.observe(flush.as_secs_f64());
    }

    fn backend_call(&self, op: &'static str, elapsed: Duration) {
        self.backend_seconds
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }
}

/// Serves `GET /metrics` on `addr` until `stop`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    watch: Arc<crate::watch::Watcher>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "metrics are served on a non-loopback address without authentication");
    }
    let ready = stop.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (metrics, store, watch) = (metrics.clone(), store.clone(), watch.clone());
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics.render(store.as_ref(), watch.stats()),
                    )
                }
            }),
        )
        // Alive: the process answers.
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        // Ready: this endpoint starts once every gRPC listener is bound and
        // the store is open; 503 once shutdown began.
        .route(
            "/readyz",
            axum::routing::get(move || {
                let shutting_down = ready.is_cancelled();
                async move {
                    if shutting_down {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                    } else {
                        (http::StatusCode::OK, "ready\n")
                    }
                }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    tracing::info!(addr = %bound, "metrics at /metrics, /healthz, /readyz");
    Ok((bound, task))
}

/// Served paths besides consentd's own RPCs (those come from the one table
/// of RPCs, [`Rpc`]), with their `grpc_type`; any other path is counted as
/// `other` (unbounded paths must not become labels).
const INFRA_METHODS: &[(&str, &str)] = &[
    ("/grpc.health.v1.Health/Check", "unary"),
    ("/grpc.health.v1.Health/Watch", "server_stream"),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "bidi_stream",
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "bidi_stream",
    ),
];

/// Methods with labels of their own; index `METHOD_COUNT` is every other
/// path.
const METHOD_COUNT: usize = Rpc::ALL.len() + INFRA_METHODS.len();

/// How an RPC streams, as grpc-go's interceptors label it.
fn grpc_type(rpc: Rpc) -> &'static str {
    match rpc {
        Rpc::Watch | Rpc::Export => "server_stream",
        Rpc::Import => "client_stream",
        _ => "unary",
    }
}

/// (`grpc_type`, `grpc_service`, `grpc_method`) of the method at `index`.
fn method_labels(index: usize) -> (&'static str, Cow<'static, str>, &'static str) {
    if let Some(&rpc) = Rpc::ALL.get(index) {
        let (service, method) = rpc.service_method();
        return (
            grpc_type(rpc),
            format!("consent.v1.{service}").into(),
            method,
        );
    }
    // Past consentd's own RPCs: the index is at least Rpc::ALL.len().
    match INFRA_METHODS.get(index - Rpc::ALL.len()) {
        Some((path, kind)) => {
            let (service, method) = split_path(path);
            (kind, service.into(), method)
        }
        _ => ("unknown", "other".into(), "other"),
    }
}

/// `/pkg.Service/Method` -> (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("other", "other"))
}

/// A domain enum variant's name as the API spells it: `Granted` ->
/// `OUTCOME_GRANTED`, `PopupAvailable` -> `REASON_POPUP_AVAILABLE`.
fn enum_label(prefix: &str, variant: &str) -> String {
    let mut out = String::from(prefix);
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// grpc-go's spelling of a status code (`codes.Code.String()`), which
/// dashboards match on.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

/// Room per scope for every [`crate::domain::gates::Outcome`] and per
/// outcome for every [`crate::domain::gates::Reason`].
const OUTCOME_SLOTS: usize = 12;
const REASON_SLOTS: usize = 16;

/// A method's handles, each made on first use (a method that never
/// answered OK has no OK series): calls answered OK, the latency histogram.
#[derive(Default)]
struct MethodMetrics {
    ok: OnceLock<IntCounter>,
    seconds: OnceLock<Histogram>,
}

/// The index of a request path's labels ([`method_labels`]), or
/// `METHOD_COUNT` for any other path.
fn method_index(path: &str) -> usize {
    if let Some(rpc) = Rpc::from_path(path) {
        return Rpc::ALL
            .iter()
            .position(|r| *r == rpc)
            .unwrap_or(METHOD_COUNT);
    }
    INFRA_METHODS
        .iter()
        .position(|(m, _)| *m == path)
        .map_or(METHOD_COUNT, |i| Rpc::ALL.len() + i)
}

/// The response header carrying the daemon's version on every gRPC call.
pub const VERSION_HEADER: &str = "consentd-version";

/// [`VERSION_HEADER`] as a header name, made once: inserting by `&str`
/// parses the name on every call.
const VERSION_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(VERSION_HEADER);

/// A tower layer counting and timing every gRPC call by method and status.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_index(request.uri().path());
        RpcFuture {
            metrics: self.metrics.clone(),
            started: Instant::now(),
            method,
            inner: self.inner.call(request),
        }
    }
}

/// [`RpcService`]'s response future: the inner one, counted and timed
/// when it completes (no box of its own: the inner future is `Unpin`).
pub struct RpcFuture<F> {
    inner: F,
    metrics: Arc<Metrics>,
    started: Instant,
    method: usize,
}

impl<F, R, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        // Errors come back trailers-only, with grpc-status in the head; a
        // head without it starts a successful response.
        let code = match &response {
            Ok(r) => crate::grpc::access::status_code(r).map(code_label),
            // The call never got a status: counted as grpc-go counts
            // a broken transport.
            Err(_) => Some(code_label(tonic::Code::Unavailable)),
        };
        self.metrics
            .observe_rpc(self.method, code, self.started.elapsed());
        // Every response names the daemon's version (`consentctl version`).
        Poll::Ready(response.map(|mut r| {
            r.headers_mut().insert(
                VERSION_HEADER_NAME,
                http::HeaderValue::from_static(crate::VERSION),
            );
            r
        }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::{
        enum_label, method_index, method_labels, split_path, Metrics, METHOD_COUNT, OUTCOME_SLOTS,
        REASON_SLOTS,
    };
    use crate::domain::{
        gates::{Outcome, Reason, Verdict},
        DecisionState, Lifetime, Scope,
    };

    #[test]
    fn each_verdict_label_set_has_its_own_counter() {
        use Outcome as O;
        use Reason as R;
        let outcomes = [
            O::Granted,
            O::Denied,
            O::Prompt,
            O::SettingsRequired,
            O::NoAuthNeeded,
            O::NotDeclared,
            O::Unsupported,
            O::PrivacyRequired,
            O::PrivacyDenied,
            O::Embargoed,
        ];
        let reasons = [
            R::ScopeNotForAppKind,
            R::BaseLibraryTooOld,
            R::AuthorizationAbolished,
            R::AnonymousProfile,
            R::MissingPermissionDesc,
            R::MissingBackgroundMode,
            R::MissingPrivateInfo,
            R::StoredGrant,
            R::StoredDenial,
            R::PopupAvailable,
            R::PopupUnavailable,
            R::PrivacyNotDeclared,
            R::PrivacyAgreementNeeded,
            R::PrivacyDisagreed,
            R::PromptEmbargoed,
        ];
        // Every variant known today takes the fast path.
        assert!(outcomes.iter().all(|o| (*o as usize) < OUTCOME_SLOTS));
        assert!(reasons.iter().all(|r| (*r as usize) < REASON_SLOTS));
        let metrics = Metrics::new().unwrap();
        let times = |i: usize, j: usize, k: usize| (i * 7 + j * 3 + k) % 4 + 1;
        let mut all = Vec::new();
        for (i, scope) in Scope::all().enumerate() {
            for (j, outcome) in outcomes.iter().enumerate() {
                for (k, reason) in reasons.iter().enumerate() {
                    all.push((scope, *outcome, *reason, times(i, j, k)));
                }
            }
        }
        for &(scope, outcome, reason, n) in &all {
            let verdict = Verdict {
                scope,
                outcome,
                state: DecisionState::NotDetermined,
                reason,
                rule: None,
                err_msg: String::new(),
                prompt: None,
                lifetime: Lifetime::Permanent,
                err_no: 0,
                embargo_until_ms: None,
            };
            for _ in 0..n {
                metrics.observe_verdict(&verdict);
            }
        }
        for &(scope, outcome, reason, n) in &all {
            let labels = [
                scope.name().to_owned(),
                enum_label("OUTCOME_", outcome.name()),
                enum_label("REASON_", reason.name()),
            ];
            // The labels are the API's names for the same values.
            assert!(
                crate::pb::Outcome::from_str_name(&labels[1]).is_some(),
                "{labels:?}"
            );
            assert!(
                crate::pb::Reason::from_str_name(&labels[2]).is_some(),
                "{labels:?}"
            );
            let counted = metrics.outcomes.with_label_values(&labels).get();
            assert_eq!(counted, n as u64, "{labels:?}");
        }
    }

    #[test]
    fn every_served_method_has_its_own_label() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let kind = match (method.client_streaming(), method.server_streaming()) {
                        (false, false) => "unary",
                        (false, true) => "server_stream",
                        (true, false) => "client_stream",
                        (true, true) => "bidi_stream",
                    };
                    let index = method_index(&path);
                    assert!(index < METHOD_COUNT, "{path} has no labels of its own");
                    let (grpc_type, service, name) = method_labels(index);
                    assert_eq!((format!("/{service}/{name}"), grpc_type), (path, kind));
                    seen += 1;
                }
            }
        }
        assert!(seen >= 19);
        assert_eq!(method_index("/evil/unbounded-1234"), METHOD_COUNT);
        assert_eq!(
            method_labels(METHOD_COUNT),
            ("unknown", "other".into(), "other")
        );
        assert_eq!(
            split_path("/consent.v1.Authorization/Authorize"),
            ("consent.v1.Authorization", "Authorize")
        );
    }
}
