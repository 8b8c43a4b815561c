//! The Watch response stream: a subscription's items, then its ending.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use std::sync::Arc;

use tonic::Status;

use super::convert;
use crate::{
    auth::{Authenticator, Presentation},
    domain::Principal,
    pb,
    watch::{Outcome, Subscription},
};

/// Who a stream serves and the credential it was opened with: after every
/// credentials reload that credential is authenticated again, and the
/// stream ends unless it still maps to an equal principal.
pub struct Holder {
    pub auth: Arc<Authenticator>,
    pub principal: Arc<Principal>,
    pub presented: Presentation,
    pub generation: u64,
}

/// Polls the subscription for its items (it has no task of its own: this
/// stream drives it); once it ends, yields the error that ended it
/// (UNAVAILABLE on shutdown, OUT_OF_RANGE when it fell behind retention) so
/// a stream never ends with a misleading OK.
pub struct WatchStream {
    subscription: Subscription,
    outcome: Outcome,
    done: bool,
    holder: Option<Holder>,
}

impl WatchStream {
    pub fn new(subscription: Subscription, outcome: Outcome) -> Self {
        Self {
            subscription,
            outcome,
            done: false,
            holder: None,
        }
    }

    /// Ends the stream with UNAUTHENTICATED at its next item (events or the
    /// idle progress marker) once a reload revoked the credential it was
    /// opened with (a token digest removed, a certificate subject moved) or
    /// changed its principal.
    pub fn held_by(mut self, holder: Holder) -> Self {
        self.holder = Some(holder);
        self
    }

    fn revoked(&mut self) -> Option<Status> {
        let holder = self.holder.as_mut()?;
        let now = holder.auth.generation();
        if now == holder.generation {
            return None;
        }
        holder.generation = now;
        match holder.auth.authenticate(&holder.presented) {
            Ok(now) if *now == *holder.principal => return None,
            _ => {}
        }
        tracing::warn!(principal = %holder.principal.name, "watch stream ended: its credentials were revoked");
        Some(super::access::Refusal::Revoked(holder.principal.name.clone()).into())
    }
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<pb::WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.subscription.poll_item(cx, convert::watch_item) {
            Poll::Ready(Some(response)) => {
                if let Some(status) = self.revoked() {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(response)))
            }
            Poll::Ready(None) => {
                self.done = true;
                let ended = self.outcome.lock().ok().and_then(|mut slot| slot.take());
                Poll::Ready(ended.map(|e| Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
