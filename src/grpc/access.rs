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

use tokio::sync::Semaphore;
use tonic::Status;

use crate::{
    auth::{Authenticator, Presentation},
    domain::{Denied, Principal, Rpc},
    transport::PeerInfo,
};

/// The RPC a request path names; `None` for health, reflection and unknown
/// paths (which need no credentials: they reveal nothing but the schema).
pub fn rpc_for_path(path: &str) -> Option<Rpc> {
    let (service, method) = path.strip_prefix("/consent.v1.")?.split_once('/')?;
    let rpc = match (service, method) {
        ("Authorization", "Authorize") => Rpc::Authorize,
        ("Authorization", "BatchAuthorize") => Rpc::BatchAuthorize,
        ("Authorization", "CheckApi") => Rpc::CheckApi,
        ("Authorization", "Explain") => Rpc::Explain,
        ("Authorization", "RecordDecision") => Rpc::RecordDecision,
        ("Authorization", "GetSetting") => Rpc::GetSetting,
        ("Authorization", "OpenSetting") => Rpc::OpenSetting,
        ("Authorization", "UpdateSetting") => Rpc::UpdateSetting,
        ("Authorization", "RemoveApp") => Rpc::RemoveApp,
        ("Authorization", "ListScopes") => Rpc::ListScopes,
        ("Authorization", "GetRules") => Rpc::GetRules,
        ("Authorization", "Watch") => Rpc::Watch,
        ("Authorization", "EndSession") => Rpc::EndSession,
        ("Authorization", "GetPrivacySetting") => Rpc::GetPrivacySetting,
        ("Authorization", "RecordPrivacyDecision") => Rpc::RecordPrivacyDecision,
        ("Authorization", "ListAudit") => Rpc::ListAudit,
        ("Apps", "RegisterApp") => Rpc::RegisterApp,
        ("Apps", "UpdateApp") => Rpc::UpdateApp,
        ("Apps", "GetApp") => Rpc::GetApp,
        ("Apps", "ListApps") => Rpc::ListApps,
        ("Apps", "DeleteApp") => Rpc::DeleteApp,
        ("Admin", "Compact") => Rpc::Compact,
        ("Admin", "Verify") => Rpc::Verify,
        ("Admin", "Export") => Rpc::Export,
        ("Admin", "Import") => Rpc::Import,
        _ => return None,
    };
    Some(rpc)
}

/// The authenticated caller, in every request's extensions.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Principal>);

/// The caller of a request that went through [`AccessLayer`].
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .ok_or_else(|| Status::internal("the access layer did not run for this call"))
}

/// Logs a refusal with the principal (never a credential) and makes the
/// status.
pub fn refuse(denied: Denied) -> Status {
    tracing::warn!(error = %denied, "permission denied");
    Status::permission_denied(denied.to_string())
}

/// Limits every call shares.
#[derive(Clone, Debug)]
pub struct CallLimits {
    /// Unary calls (and the start of streams) must finish within this.
    pub request_timeout: Duration,
    /// Calls in flight over every connection; more get RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
}

#[derive(Clone)]
pub struct AccessLayer {
    auth: Arc<Authenticator>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl AccessLayer {
    pub fn new(auth: Arc<Authenticator>, limits: &CallLimits) -> Self {
        Self {
            auth,
            timeout: limits.request_timeout,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            max_in_flight: limits.max_in_flight,
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

/// What the caller of a request presented (for streams that must
/// authenticate it again after a reload).
pub fn presentation<T>(request: &tonic::Request<T>) -> Presentation {
    request
        .extensions()
        .get::<Presentation>()
        .cloned()
        .unwrap_or_default()
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(rpc) = rpc_for_path(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let reject = |status: Status| -> Self::Future {
            Box::pin(std::future::ready(Ok(status.into_http())))
        };
        let auth = &self.layer.auth;
        let presented = if auth.is_on() {
            presented(&request)
        } else {
            Ok(Presentation::default())
        };
        let principal = match presented.and_then(|p| auth.authenticate(&p).map(|a| (a, p))) {
            Ok((principal, presented)) => {
                request.extensions_mut().insert(presented);
                principal
            }
            Err(error) => {
                let peer = request.extensions().get::<PeerInfo>();
                let peer = peer.map_or_else(|| "unknown peer".to_owned(), ToString::to_string);
                tracing::warn!(%rpc, %peer, %error, "unauthenticated call refused");
                return reject(Status::unauthenticated(error.to_string()));
            }
        };
        if let Err(denied) = principal.may_call(rpc) {
            return reject(refuse(denied));
        }
        let Ok(permit) = self.layer.in_flight.clone().try_acquire_owned() else {
            tracing::warn!(%rpc, limit = self.layer.max_in_flight, "call refused: too many in flight");
            return reject(Status::resource_exhausted(format!(
                "server busy: {} calls in flight; retry with backoff",
                self.layer.max_in_flight
            )));
        };
        request.extensions_mut().insert(Caller(principal));
        let response = self.inner.call(request);
        // A client stream (Import) is read inside the call: only the
        // stream's own limits bound it.
        let timeout = (rpc != Rpc::Import).then_some(self.layer.timeout);
        Box::pin(async move {
            let _permit = permit;
            match timeout {
                None => response.await,
                Some(limit) => match tokio::time::timeout(limit, response).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(%rpc, ?limit, "call exceeded the request timeout");
                        Ok(Status::deadline_exceeded(format!(
                            "{rpc} did not finish within the server's request timeout of {limit:?}"
                        ))
                        .into_http())
                    }
                },
            }
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
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future = BoxFuture<Result<http::Response<tonic::body::Body>, std::convert::Infallible>>,
    > {
        let never = tower::service_fn(|_req: http::Request<()>| {
            std::future::pending::<
                Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            >()
        });
        AccessLayer::new(Arc::new(Authenticator::off()), &limits).layer(never)
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Status {
        Status::from_header_map(response.headers()).expect("a trailers-only status")
    }

    #[tokio::test(start_paused = true)]
    async fn unary_calls_are_cut_at_the_request_timeout_and_import_is_not() {
        let limits = CallLimits {
            request_timeout: Duration::from_secs(5),
            max_in_flight: 10,
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
                    let rpc = rpc_for_path(&path).unwrap_or_else(|| panic!("{path} has no Rpc"));
                    assert_eq!(rpc.to_string(), method.name());
                    seen.push(rpc);
                }
            }
        }
        assert_eq!(seen.len(), Rpc::ALL.len());
        assert!(Rpc::ALL.iter().all(|r| seen.contains(r)));
        assert_eq!(rpc_for_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(rpc_for_path("/consent.v1.Authorization/Nope"), None);
    }
}
