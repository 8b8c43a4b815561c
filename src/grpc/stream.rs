//! The Watch response stream: a subscription's items, then its ending.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::mpsc;
use tonic::Status;

use super::convert;
use crate::{
    pb,
    watch::{Outcome, WatchItem},
};

/// Yields the subscription's items; once the task is gone, yields the error
/// that ended it (UNAVAILABLE on shutdown, OUT_OF_RANGE when it fell behind
/// retention) so a stream never ends with a misleading OK.
pub struct WatchStream {
    items: mpsc::Receiver<WatchItem>,
    outcome: Outcome,
    done: bool,
}

impl WatchStream {
    pub fn new(items: mpsc::Receiver<WatchItem>, outcome: Outcome) -> Self {
        Self {
            items,
            outcome,
            done: false,
        }
    }
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<pb::WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.items.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(convert::watch_item(item)))),
            Poll::Ready(None) => {
                self.done = true;
                let ended = self.outcome.lock().ok().and_then(|mut slot| slot.take());
                Poll::Ready(ended.map(|e| Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
