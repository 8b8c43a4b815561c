//! Shared by the benches: the bare tonic ceiling server. It answers
//! Authorize and CheckApi with fixed responses of the same shape, and serves
//! RecordDecision + Watch as a bare `tokio::sync::broadcast` of ready
//! `WatchResponse`s (no store, no filter, no commit). A bench runs it by
//! re-executing itself with `--echo-server` (see [`spawn`]) and calling
//! [`run`] when it sees that flag.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use consentd::pb::{self, authorization_server::Authorization};
use tokio::sync::broadcast;
use tokio_stream::{wrappers::BroadcastStream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::process::Proc;

/// The echo ceiling: this binary with `--echo-server`.
#[allow(dead_code)] // not every bench that includes this file uses it
pub fn spawn() -> Proc {
    spawn_via(&[])
}

/// [`spawn`] under a wrapper: `wrapper` (e.g. `valgrind --tool=callgrind`)
/// runs this binary with `--echo-server`.
#[allow(dead_code)] // not every bench that includes this file wraps it
pub fn spawn_via(wrapper: &[String]) -> Proc {
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let mut command = match wrapper.split_first() {
        None => Command::new(&exe),
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
    };
    command.arg("--echo-server").stdout(Stdio::piped());
    let mut child = super::process::pin_server(&mut command).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Proc {
        child,
        addr: line.trim().parse().unwrap(),
        ready_after: started.elapsed(),
    }
}

pub struct Echo {
    pub answer: pb::AuthorizeResponse,
    pub api_answer: pb::CheckApiResponse,
    pub events: broadcast::Sender<pb::WatchResponse>,
    /// Numbers the broadcast events, as consentd's revisions do.
    pub revision: AtomicU64,
}

type R<T> = Result<Response<T>, Status>;

fn none<T>() -> R<T> {
    Err(Status::unimplemented("echo server"))
}

#[tonic::async_trait]
impl Authorization for Echo {
    type WatchStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send>,
    >;

    async fn authorize(&self, _: Request<pb::AuthorizeRequest>) -> R<pb::AuthorizeResponse> {
        Ok(Response::new(self.answer.clone()))
    }
    async fn record_decision(
        &self,
        r: Request<pb::RecordDecisionRequest>,
    ) -> R<pb::RecordDecisionResponse> {
        let r = r.into_inner();
        // The same shape as consentd's events, so both encode the same bytes.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let event = pb::DecisionEvent {
            revision: self.revision.fetch_add(1, Ordering::Relaxed) + 1,
            app_id: r.app_id,
            user_id: r.user_id,
            scope: r.scope,
            old_state: pb::DecisionState::NotDetermined.into(),
            new_state: pb::DecisionState::Granted.into(),
            cause: pb::Cause::Popup.into(),
            time: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: (now.subsec_millis() * 1_000_000) as i32,
            }),
        };
        let _ = self.events.send(pb::WatchResponse {
            kind: Some(pb::watch_response::Kind::Event(event)),
        });
        Ok(Response::new(pb::RecordDecisionResponse::default()))
    }
    async fn watch(&self, _: Request<pb::WatchRequest>) -> R<Self::WatchStream> {
        let stream =
            BroadcastStream::new(self.events.subscribe()).filter_map(|item| item.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
    async fn get_rules(&self, _: Request<pb::GetRulesRequest>) -> R<pb::GetRulesResponse> {
        Ok(Response::new(pb::GetRulesResponse::default()))
    }
    async fn batch_authorize(
        &self,
        _: Request<pb::BatchAuthorizeRequest>,
    ) -> R<pb::BatchAuthorizeResponse> {
        none()
    }
    async fn check_api(&self, _: Request<pb::CheckApiRequest>) -> R<pb::CheckApiResponse> {
        Ok(Response::new(self.api_answer.clone()))
    }
    async fn explain(&self, _: Request<pb::AuthorizeRequest>) -> R<pb::ExplainResponse> {
        none()
    }
    async fn end_session(&self, _: Request<pb::EndSessionRequest>) -> R<pb::EndSessionResponse> {
        none()
    }
    async fn get_privacy_setting(
        &self,
        _: Request<pb::GetPrivacySettingRequest>,
    ) -> R<pb::GetPrivacySettingResponse> {
        none()
    }
    async fn record_privacy_decision(
        &self,
        _: Request<pb::RecordPrivacyDecisionRequest>,
    ) -> R<pb::RecordPrivacyDecisionResponse> {
        none()
    }
    async fn list_audit(&self, _: Request<pb::ListAuditRequest>) -> R<pb::ListAuditResponse> {
        none()
    }
    async fn get_setting(&self, _: Request<pb::GetSettingRequest>) -> R<pb::GetSettingResponse> {
        none()
    }
    async fn open_setting(&self, _: Request<pb::OpenSettingRequest>) -> R<pb::OpenSettingResponse> {
        none()
    }
    async fn update_setting(
        &self,
        _: Request<pb::UpdateSettingRequest>,
    ) -> R<pb::UpdateSettingResponse> {
        none()
    }
    async fn remove_app(&self, _: Request<pb::RemoveAppRequest>) -> R<pb::RemoveAppResponse> {
        none()
    }
    async fn list_scopes(&self, _: Request<pb::ListScopesRequest>) -> R<pb::ListScopesResponse> {
        none()
    }
    async fn list_user_decisions(
        &self,
        _: Request<pb::ListUserDecisionsRequest>,
    ) -> R<pb::ListUserDecisionsResponse> {
        none()
    }
    async fn reset_user(&self, _: Request<pb::ResetUserRequest>) -> R<pb::ResetUserResponse> {
        none()
    }
}

/// Serves on an ephemeral loopback port (printed on stdout) until killed.
pub fn run() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let decision = pb::Decision {
            scope: "scope.camera".into(),
            outcome: pb::Outcome::Granted.into(),
            state: pb::DecisionState::Granted.into(),
            err_msg: "authorize:ok".into(),
            reason: pb::Reason::StoredGrant.into(),
            ..Default::default()
        };
        let answer = pb::AuthorizeResponse {
            decision: Some(decision.clone()),
            revision: 123_456,
        };
        // CheckApi's shape: the interface, the combined answer and one
        // decision per scope (the interfaces of the bench need one scope).
        let api_answer = pb::CheckApiResponse {
            api: "camera".into(),
            outcome: pb::Outcome::Granted.into(),
            err_msg: "camera:ok".into(),
            decisions: vec![decision],
            revision: 123_456,
        };
        let (events, _) = broadcast::channel(1024);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(pb::authorization_server::AuthorizationServer::new(Echo {
                answer,
                api_answer,
                events,
                revision: AtomicU64::new(0),
            }))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
}
