//! Consistency tokens: a caller that sends the revision it last saw in the
//! `consentd-min-revision` request header is answered only from a view
//! that includes it (the model: `store/mod.rs`, "Consistency tokens").
//! This layer is the one place that reads the header; it runs after the
//! access layer (only authenticated consentd RPCs get here with a
//! [`Caller`]) and before the handler, so no message carries the token and
//! `grpcurl -H 'consentd-min-revision: 42'` works.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderMap;
use tonic::Status;

use super::access::Caller;
use crate::store::{RevisionWait, Store};

/// The request metadata header carrying a consistency token.
pub const MIN_REVISION_HEADER: &str = "consentd-min-revision";

/// Why a call with a consistency token was not served; `status.rs` maps
/// each to its gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefusal {
    #[error(
        "request header {MIN_REVISION_HEADER}: {value:?} is not a revision (one decimal number, \
         as a write's or GetRevision's answer gives it)"
    )]
    Malformed { value: String },
    #[error(transparent)]
    Wait(#[from] RevisionWait),
}

/// The token in `headers`: `None` without the header.
pub fn min_revision(headers: &HeaderMap) -> Result<Option<u64>, TokenRefusal> {
    let Some(raw) = headers.get(MIN_REVISION_HEADER) else {
        return Ok(None);
    };
    let text = raw.to_str().map_err(|_| TokenRefusal::Malformed {
        value: String::from_utf8_lossy(raw.as_bytes()).into_owned(),
    })?;
    let digits = text.trim();
    // `u64::from_str` takes a leading `+`: a revision is digits alone.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenRefusal::Malformed { value: text.into() });
    }
    digits
        .parse()
        .map(Some)
        .map_err(|_| TokenRefusal::Malformed { value: text.into() })
}

/// The call's deadline as the client sent it (`grpc-timeout`: at most 8
/// digits and a unit), if it sent a valid one.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get("grpc-timeout")?.to_str().ok()?;
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Waits for a call's consistency token before its handler runs.
#[derive(Clone)]
pub struct ConsistencyLayer {
    store: Arc<dyn Store>,
    max_wait: Duration,
}

impl ConsistencyLayer {
    /// `max_wait` caps every wait (the call's own deadline may cut it
    /// shorter).
    pub fn new(store: Arc<dyn Store>, max_wait: Duration) -> Self {
        Self { store, max_wait }
    }
}

impl<S> tower::Layer<S> for ConsistencyLayer {
    type Service = ConsistencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsistencyService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ConsistencyService<S> {
    inner: S,
    layer: ConsistencyLayer,
}

type Waiting<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The handler's future at once (no token, or one the view has
    /// reached), or the wait and then the handler.
    #[project = Projected]
    pub enum ConsistencyFuture<F, R, E> {
        Now { #[pin] call: F },
        Later { wait: Waiting<R, E> },
    }
}

impl<F, R, E> Future for ConsistencyFuture<F, R, E>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Now { call } => call.poll(cx),
            Projected::Later { wait } => wait.as_mut().poll(cx),
        }
    }
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for ConsistencyService<S>
where
    S: tower::Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ConsistencyFuture<S::Future, Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refuse = |refusal: TokenRefusal| ConsistencyFuture::Later {
            wait: Box::pin(std::future::ready(Ok(Status::from(refusal).into_http()))),
        };
        // Health and reflection (no caller) take no token.
        let Some(caller) = request.extensions().get::<Caller>() else {
            return ConsistencyFuture::Now {
                call: self.inner.call(request),
            };
        };
        let wanted = match min_revision(request.headers()) {
            Ok(None) => {
                return ConsistencyFuture::Now {
                    call: self.inner.call(request),
                }
            }
            Ok(Some(n)) if n <= self.layer.store.revision() => {
                return ConsistencyFuture::Now {
                    call: self.inner.call(request),
                }
            }
            Ok(Some(n)) => n,
            Err(refusal) => {
                tracing::debug!(rpc = %caller.rpc, error = %refusal, "malformed consistency token");
                return refuse(refusal);
            }
        };
        let rpc = caller.rpc;
        let within = grpc_timeout(request.headers())
            .map_or(self.layer.max_wait, |t| t.min(self.layer.max_wait));
        // The service that was made ready goes with this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = self.layer.store.clone();
        ConsistencyFuture::Later {
            wait: Box::pin(async move {
                match store.wait_for_revision(wanted, within).await {
                    Ok(_) => inner.call(request).await,
                    Err(e) => {
                        tracing::info!(%rpc, wanted, error = %e, "consistency token not met");
                        Ok(Status::from(TokenRefusal::Wait(e)).into_http())
                    }
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn tokens_are_decimal_revisions() {
        assert_eq!(min_revision(&headers(&[])).unwrap(), None);
        let token = |v: &str| min_revision(&headers(&[(MIN_REVISION_HEADER, v)]));
        assert_eq!(token("42").unwrap(), Some(42));
        assert_eq!(token(" 7 ").unwrap(), Some(7));
        assert_eq!(token("0").unwrap(), Some(0));
        for bad in ["", "-1", "+3", "1e3", "0x10", "abc", "18446744073709551616"] {
            let e = token(bad).expect_err(bad).to_string();
            assert!(e.contains(MIN_REVISION_HEADER), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn deadlines_follow_the_grpc_timeout_format() {
        let t = |v: &str| grpc_timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("5S"), Some(Duration::from_secs(5)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("100u"), Some(Duration::from_micros(100)));
        assert_eq!(t("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&headers(&[])), None);
    }
}
