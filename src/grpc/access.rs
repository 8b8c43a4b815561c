//! The access layer: before any request body is read, find the RPC,
//! authenticate the caller (bearer token or client certificate), apply the
//! role check and the global call limits, and hand the principal to the
//! handler, which checks the app binding once it has parsed the request.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Semaphore;
use tonic::Status;

use super::convert::{ForSubject, Rejected};
use crate::{
    auth::{Authenticator, Presentation},
    domain::{AppId, EventFilter, Principal, Rpc},
    transport::{LogLimiter, PeerInfo, PeerLabel, RequestGuard},
};

/// The authenticated caller and the RPC it called, in every request's
/// extensions: a handler checks the app binding without restating its own
/// name.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub rpc: Rpc,
}

impl Caller {
    /// The call may touch `app`'s data (the app binding).
    pub fn may_touch(&self, app: &AppId) -> Result<(), Status> {
        Ok(self.principal.may_touch(self.rpc, app)?)
    }

    /// The call spans every app (operators' calls).
    pub fn may_span_all_apps(&self) -> Result<(), Status> {
        Ok(self.principal.may_span_all_apps(self.rpc)?)
    }

    /// A converted request, admitted once its app binding holds. A request
    /// that failed to convert after its subject parsed is checked against
    /// the binding first: a caller learns nothing about requests for apps
    /// it may not touch.
    pub fn admit<T: ForSubject>(&self, parsed: Result<T, Rejected>) -> Result<T, Status> {
        match parsed {
            Ok(call) => {
                self.may_touch(&call.subject().app)?;
                Ok(call)
            }
            Err(Rejected { subject, error }) => {
                if let Some(s) = subject {
                    self.may_touch(&s.app)?;
                }
                Err(error.into())
            }
        }
    }

    /// Narrows a Watch filter to the apps the caller is bound to.
    pub fn narrow_watch(&self, filter: &mut EventFilter) -> Result<(), Status> {
        Ok(self.principal.narrow_watch(filter)?)
    }
}

impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

/// The caller of a request that went through [`AccessLayer`].
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Refusal::NoCaller.into())
}

/// Why the access layer refused a call before (or instead of) its
/// handler; `status.rs` maps each to its gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the access layer did not run for this call")]
    NoCaller,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("principal {principal:?} has {open} {what} open, its quota; retry with backoff")]
    Quota {
        principal: String,
        open: usize,
        what: &'static str,
    },
    #[error(
        "server busy: {open} {what} are open, all but the operators' reserve; retry with backoff"
    )]
    Reserved { open: usize, what: &'static str },
    #[error("server busy: {max} calls in flight; retry with backoff")]
    InFlight { max: usize },
    #[error(
        "the {rpc} request message did not arrive within {limit:?} (limits.message_timeout_secs)"
    )]
    MessageLate { rpc: Rpc, limit: Duration },
    #[error("{rpc} did not finish within the server's request timeout of {limit:?}")]
    Timeout { rpc: Rpc, limit: Duration },
    #[error("the credential this stream was opened with (principal {0:?}) was revoked or changed")]
    Revoked(String),
}

/// Limits every call shares.
#[derive(Clone, Debug)]
pub struct CallLimits {
    /// Unary calls (and the start of streams) must finish within this.
    pub request_timeout: Duration,
    /// Calls in flight over every connection; more get RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// Calls in flight of one non-operator principal.
    pub max_in_flight_per_principal: usize,
    /// Watch streams of one non-operator principal.
    pub max_watch_streams_per_principal: usize,
    /// A request message must arrive within this (for Import: each
    /// message within this of the one before).
    pub message_timeout: Duration,
}

/// Defaults of the per-principal quotas and the message deadline.
pub const DEFAULT_MAX_IN_FLIGHT_PER_PRINCIPAL: usize = 2048;
pub const DEFAULT_MAX_WATCH_STREAMS_PER_PRINCIPAL: usize = 2500;
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The share of a cap only operators may use: an eighth, at least one.
pub fn operator_reserve(cap: usize) -> usize {
    (cap / 8).max(1)
}

/// Slots of one kind (calls in flight, Watch streams) held by non-operator
/// principals: together at most the cap less the operators' reserve, each
/// at most its quota. Operators take only the global caps.
struct Pool {
    what: &'static str,
    shared: usize,
    per_principal: usize,
    held: Mutex<(usize, HashMap<String, usize>)>,
}

impl Pool {
    fn new(what: &'static str, cap: usize, per_principal: usize) -> Arc<Self> {
        let shared = cap.saturating_sub(operator_reserve(cap)).max(1);
        Arc::new(Self {
            what,
            shared,
            per_principal: per_principal.min(shared).max(1),
            held: Mutex::default(),
        })
    }

    fn take(self: &Arc<Self>, principal: &Arc<Principal>) -> Result<Option<Quota>, Status> {
        if principal.role == crate::domain::Role::Operator {
            return Ok(None);
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.1.get(&principal.name).copied().unwrap_or(0);
        if mine >= self.per_principal {
            return Err(Refusal::Quota {
                principal: principal.name.clone(),
                open: mine,
                what: self.what,
            }
            .into());
        }
        if held.0 >= self.shared {
            return Err(Refusal::Reserved {
                open: held.0,
                what: self.what,
            }
            .into());
        }
        held.0 += 1;
        // The name is copied only for a principal's first open slot.
        match held.1.get_mut(&principal.name) {
            Some(n) => *n += 1,
            None => {
                held.1.insert(principal.name.clone(), 1);
            }
        }
        Ok(Some(Quota {
            pool: self.clone(),
            principal: Arc::clone(principal),
        }))
    }
}

/// One slot of a [`Pool`], given back on drop.
struct Quota {
    pool: Arc<Pool>,
    principal: Arc<Principal>,
}

impl Drop for Quota {
    fn drop(&mut self) {
        let mut held = self.pool.held.lock().unwrap_or_else(|e| e.into_inner());
        held.0 -= 1;
        if let Some(n) = held.1.get_mut(&self.principal.name) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.principal.name);
            }
        }
    }
}

#[derive(Clone)]
pub struct AccessLayer {
    auth: Arc<Authenticator>,
    timeout: Duration,
    message_timeout: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    calls: Arc<Pool>,
    streams: Arc<Pool>,
    /// Rate limit of the refusal log lines.
    log: Arc<LogLimiter>,
}

impl AccessLayer {
    /// `max_watch_streams` is the watcher's global cap, of which the
    /// operators' reserve is kept from other principals.
    pub fn new(auth: Arc<Authenticator>, limits: &CallLimits, max_watch_streams: u64) -> Self {
        let max_streams = usize::try_from(max_watch_streams).unwrap_or(usize::MAX);
        Self {
            auth,
            timeout: limits.request_timeout,
            message_timeout: limits.message_timeout,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            max_in_flight: limits.max_in_flight,
            calls: Pool::new(
                "calls in flight",
                limits.max_in_flight,
                limits.max_in_flight_per_principal,
            ),
            streams: Pool::new(
                "watch streams",
                max_streams,
                limits.max_watch_streams_per_principal,
            ),
            log: Arc::new(LogLimiter::default()),
        }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    layer: AccessLayer,
}

fn presented<B>(request: &http::Request<B>) -> Result<Presentation, crate::auth::AuthError> {
    let token = match request.headers().get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| crate::auth::AuthError::Malformed)?;
            let (scheme, token) = value
                .split_once(' ')
                .ok_or(crate::auth::AuthError::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(crate::auth::AuthError::Malformed);
            }
            Some(token.trim())
        }
    };
    let cert = request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.cert.clone());
    Ok(Presentation::new(token, cert))
}

/// What the caller of a Watch request presented (a stream must
/// authenticate it again after a reload; only Watch requests carry it).
pub fn presentation<T>(request: &tonic::Request<T>) -> Presentation {
    request
        .extensions()
        .get::<Presentation>()
        .cloned()
        .unwrap_or_default()
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a call holds until its response body ends: its place among the
/// connection's open requests (for the idle timer) and its quota slots.
#[derive(Default)]
struct Held {
    _request: Option<RequestGuard>,
    _call: Option<Quota>,
    _stream: Option<Quota>,
}

/// A response body that keeps [`Held`] until it is dropped.
struct HeldBody<B> {
    inner: B,
    _held: Held,
}

impl<B> http_body::Body for HeldBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with DEADLINE_EXCEEDED when the client stops
/// sending: the whole message within `limit`, or (client streams) each
/// frame within `limit` of the one before. The timer is made only when the
/// body has to wait: a unary request whose message has arrived with its
/// headers (the common case) never registers one.
struct DeadlineBody {
    inner: tonic::body::Body,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
    per_frame: bool,
    rpc: Rpc,
}

impl DeadlineBody {
    fn new(inner: tonic::body::Body, limit: Duration, per_frame: bool, rpc: Rpc) -> Self {
        Self {
            inner,
            deadline: tokio::time::Instant::now() + limit,
            sleep: None,
            limit,
            per_frame,
            rpc,
        }
    }

    /// The timer, made on first use.
    fn sleep(self: Pin<&mut Self>) -> Pin<&mut tokio::time::Sleep> {
        let this = self.get_mut();
        let deadline = this.deadline;
        this.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)))
            .as_mut()
    }
}

impl http_body::Body for DeadlineBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if self.per_frame {
                    let next = tokio::time::Instant::now() + self.limit;
                    self.deadline = next;
                    if let Some(sleep) = self.sleep.as_mut() {
                        sleep.as_mut().reset(next);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match self.as_mut().sleep().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => Poll::Ready(Some(Err(Refusal::MessageLate {
                    rpc: self.rpc,
                    limit: self.limit,
                }
                .into()))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` header, made once (a `&str` key is parsed on every
/// lookup).
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The gRPC status code of a trailers-only response, if it is one.
pub(crate) fn status_code<B>(response: &http::Response<B>) -> Option<tonic::Code> {
    response
        .headers()
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

impl<S, R> tower::Service<http::Request<tonic::body::Body>> for AccessService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: http_body::Body<Data = tonic::codegen::Bytes> + Send + Unpin + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let rpc = Rpc::from_path(request.uri().path());
        let peer = request.extensions().get::<PeerInfo>();
        // For log lines: copied, formatted only if one is written.
        let shown_peer = peer.map_or_else(PeerLabel::default, PeerInfo::label);
        // Only calls of the API keep a connection open past its idle
        // timeout: health and reflection need no credentials, so a health
        // Watch must not pin a connection. They count as activity when
        // they start.
        let mut held = Held {
            _request: peer.map(|p| p.activity.begin()).filter(|_| rpc.is_some()),
            ..Held::default()
        };
        let Some(rpc) = rpc else {
            let response = self.inner.call(request);
            return Box::pin(async move {
                Ok(response.await?.map(|body| {
                    tonic::body::Body::new(HeldBody {
                        inner: body,
                        _held: held,
                    })
                }))
            });
        };
        let log = self.layer.log.clone();
        let reject = move |status: Status, held: Held| -> Self::Future {
            let response = status.into_http::<tonic::body::Body>();
            drop(held);
            Box::pin(std::future::ready(Ok(response)))
        };
        let auth = &self.layer.auth;
        let presented = if auth.is_on() {
            presented(&request)
        } else {
            Ok(Presentation::default())
        };
        let principal = match presented.and_then(|p| auth.authenticate(&p).map(|a| (a, p))) {
            Ok((principal, presented)) => {
                // Only a Watch stream authenticates again (after a
                // credentials reload); other calls need not carry it.
                if rpc == Rpc::Watch {
                    request.extensions_mut().insert(presented);
                }
                principal
            }
            Err(error) => {
                if let Some(suppressed) = log.admit() {
                    tracing::warn!(%rpc, peer = %shown_peer, %error, suppressed, "unauthenticated call refused");
                }
                return reject(Refusal::Unauthenticated(error.to_string()).into(), held);
            }
        };
        // For the log lines below: the principal, not a copy of its name.
        let name = Arc::clone(&principal);
        let denied = |status: &Status| {
            if let Some(suppressed) = log.admit() {
                tracing::warn!(%rpc, principal = %name.name, peer = %shown_peer, error = %status.message(), suppressed, "permission denied");
            }
        };
        if let Err(refused) = principal.may_call(rpc) {
            let status = Status::from(refused);
            denied(&status);
            return reject(status, held);
        }
        let busy = |status: Status| {
            if let Some(suppressed) = log.admit() {
                tracing::warn!(%rpc, principal = %name.name, peer = %shown_peer, error = %status.message(), suppressed, "call refused: limit reached");
            }
            status
        };
        let permit = match self.layer.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let status = busy(
                    Refusal::InFlight {
                        max: self.layer.max_in_flight,
                    }
                    .into(),
                );
                return reject(status, held);
            }
        };
        let call_quota = match self.layer.calls.take(&principal) {
            Ok(q) => q,
            Err(status) => return reject(busy(status), held),
        };
        if rpc == Rpc::Watch {
            match self.layer.streams.take(&principal) {
                Ok(q) => held._stream = q,
                Err(status) => return reject(busy(status), held),
            }
        }
        request.extensions_mut().insert(Caller { principal, rpc });
        let limit = self.layer.message_timeout;
        let request = request.map(|body| {
            tonic::body::Body::new(DeadlineBody::new(body, limit, rpc == Rpc::Import, rpc))
        });
        let response = self.inner.call(request);
        // A client stream (Import) is read inside the call: only the
        // message deadline (per message) bounds it.
        let timeout = (rpc != Rpc::Import).then_some(self.layer.timeout);
        Box::pin(async move {
            let _permit = permit;
            let _call_quota = call_quota;
            let response = match timeout {
                None => response.await?,
                Some(limit) => match tokio::time::timeout(limit, response).await {
                    Ok(result) => result?,
                    Err(_) => {
                        if let Some(suppressed) = log.admit() {
                            tracing::warn!(%rpc, principal = %name.name, peer = %shown_peer, ?limit, suppressed, "call exceeded the request timeout");
                        }
                        return Ok(Status::from(Refusal::Timeout { rpc, limit }).into_http());
                    }
                },
            };
            if status_code(&response) == Some(tonic::Code::PermissionDenied) {
                if let Some(suppressed) = log.admit() {
                    let message = Status::from_header_map(response.headers())
                        .map(|s| s.message().to_owned())
                        .unwrap_or_default();
                    tracing::warn!(%rpc, principal = %name.name, peer = %shown_peer, error = %message, suppressed, "permission denied");
                }
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(HeldBody {
                    inner: body,
                    _held: held,
                })
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use tower::{Layer as _, Service as _};

    use super::*;

    /// The access layer over a handler that never answers.
    fn stuck(
        limits: CallLimits,
    ) -> impl tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future = BoxFuture<Result<http::Response<tonic::body::Body>, std::convert::Infallible>>,
    > {
        let never = tower::service_fn(|_req: http::Request<tonic::body::Body>| {
            std::future::pending::<
                Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            >()
        });
        AccessLayer::new(Arc::new(Authenticator::off()), &limits, 100).layer(never)
    }

    fn limits() -> CallLimits {
        crate::config::Config::default().limits
    }

    fn request(path: &str) -> http::Request<tonic::body::Body> {
        http::Request::builder()
            .uri(path)
            .body(tonic::body::Body::empty())
            .unwrap()
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Status {
        Status::from_header_map(response.headers()).expect("a trailers-only status")
    }

    #[tokio::test(start_paused = true)]
    async fn unary_calls_are_cut_at_the_request_timeout_and_import_is_not() {
        let limits = CallLimits {
            request_timeout: Duration::from_secs(5),
            max_in_flight: 10,
            ..limits()
        };
        let mut service = stuck(limits);
        let response = service
            .call(request("/consent.v1.Authorization/RecordDecision"))
            .await
            .unwrap();
        let status = grpc_status(&response);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            status.message(),
            "RecordDecision did not finish within the server's request timeout of 5s"
        );
        let import = service.call(request("/consent.v1.Admin/Import"));
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), import)
                .await
                .is_err(),
            "a client stream is not cut by the unary timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_max_in_flight_are_refused_until_one_ends() {
        let limits = CallLimits {
            request_timeout: Duration::from_secs(5),
            max_in_flight: 2,
            ..limits()
        };
        let mut service = stuck(limits);
        let first = service.call(request("/consent.v1.Authorization/Authorize"));
        let _second = service.call(request("/consent.v1.Authorization/Authorize"));
        let refused = service
            .call(request("/consent.v1.Authorization/Authorize"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&refused).code(), tonic::Code::ResourceExhausted);
        // Health checks and reflection are not counted: with one of them
        // in flight too, ending one call admits the next.
        let _health = service.call(request("/grpc.health.v1.Health/Check"));
        drop(first);
        let admitted = service.call(request("/consent.v1.Authorization/Authorize"));
        let answered = admitted.await.unwrap();
        assert_eq!(grpc_status(&answered).code(), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn every_consent_method_maps_to_its_rpc() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let rpc = Rpc::from_path(&path).unwrap_or_else(|| panic!("{path} has no Rpc"));
                    assert_eq!(rpc.to_string(), method.name());
                    seen.push(rpc);
                }
            }
        }
        assert_eq!(seen.len(), Rpc::ALL.len());
        assert!(Rpc::ALL.iter().all(|r| seen.contains(r)));
        assert_eq!(Rpc::from_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(Rpc::from_path("/consent.v1.Authorization/Nope"), None);
    }
}
