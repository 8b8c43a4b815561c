//! Security: the role x RPC matrix with app bindings, Watch filtering by
//! principal, unauthenticated callers, credential reload, TLS, mTLS and
//! unix sockets. Every daemon here is real and every call goes over gRPC.

use std::{path::Path, time::Duration};

use consentd::{
    auth::hash_token,
    config::Config,
    pb::{
        self, admin_client::AdminClient, apps_client::AppsClient,
        authorization_client::AuthorizationClient, export_record::Record,
    },
    transport::{ListenAddr, TlsFiles},
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request, Status,
};

use crate::fixture::{android, assert_status, connect, location_app, TestDaemon};

/// Adds `authorization: Bearer <token>` when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A channel plus the credential every call carries.
#[derive(Clone)]
pub struct As {
    channel: Channel,
    bearer: Bearer,
}

impl As {
    pub fn new(channel: Channel, token: Option<&str>) -> Self {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
        Self { channel, bearer }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn auth(&self) -> AuthorizationClient<Authed> {
        AuthorizationClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn apps(&self) -> AppsClient<Authed> {
        AppsClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn admin(&self) -> AdminClient<Authed> {
        AdminClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub async fn revision(&self) -> u64 {
        self.auth()
            .get_rules(pb::GetRulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .revision
    }
}

/// Makes one valid call of `rpc` about `app` (user "u1"): any refusal is
/// the access control's, not the request's.
pub async fn call(c: &As, rpc: &str, app: &str) -> Result<(), Status> {
    let user = "u1".to_string();
    let app = app.to_string();
    let scope = "scope.userLocation".to_string();
    match rpc {
        "Authorize" | "Explain" => {
            let req = pb::AuthorizeRequest {
                app_id: app,
                user_id: user,
                scope,
                client: Some(android()),
            };
            if rpc == "Authorize" {
                c.auth().authorize(req).await.map(drop)
            } else {
                c.auth().explain(req).await.map(drop)
            }
        }
        "BatchAuthorize" => c
            .auth()
            .batch_authorize(pb::BatchAuthorizeRequest {
                app_id: app,
                user_id: user,
                scopes: vec![scope],
                client: Some(android()),
            })
            .await
            .map(drop),
        "CheckApi" => c
            .auth()
            .check_api(pb::CheckApiRequest {
                app_id: app,
                user_id: user,
                api: "wx.getLocation".into(),
                client: Some(android()),
            })
            .await
            .map(drop),
        "RecordDecision" => c
            .auth()
            .record_decision(pb::RecordDecisionRequest {
                lifetime: None,
                app_id: app,
                user_id: user,
                scope,
                answer: pb::Answer::Allow.into(),
                client: Some(android()),
            })
            .await
            .map(drop),
        "GetSetting" => c
            .auth()
            .get_setting(pb::GetSettingRequest {
                app_id: app,
                user_id: user,
            })
            .await
            .map(drop),
        "OpenSetting" => c
            .auth()
            .open_setting(pb::OpenSettingRequest {
                app_id: app,
                user_id: user,
            })
            .await
            .map(drop),
        "UpdateSetting" => c
            .auth()
            .update_setting(pb::UpdateSettingRequest {
                lifetime: None,
                app_id: app,
                user_id: user,
                auth_setting: [(scope, false)].into(),
                location: 0,
            })
            .await
            .map(drop),
        "RemoveApp" => c
            .auth()
            .remove_app(pb::RemoveAppRequest {
                app_id: app,
                user_id: "u2".into(),
            })
            .await
            .map(drop),
        "ListScopes" => c
            .auth()
            .list_scopes(pb::ListScopesRequest::default())
            .await
            .map(drop),
        "GetRules" => c.auth().get_rules(pb::GetRulesRequest {}).await.map(drop),
        "Watch" => c
            .auth()
            .watch(pb::WatchRequest {
                app_ids: vec![app],
                ..Default::default()
            })
            .await
            .map(drop),
        "EndSession" => c
            .auth()
            .end_session(pb::EndSessionRequest {
                app_id: app,
                user_id: user,
                session_id: "s1".into(),
            })
            .await
            .map(drop),
        "GetPrivacySetting" => c
            .auth()
            .get_privacy_setting(pb::GetPrivacySettingRequest {
                app_id: app,
                user_id: user,
            })
            .await
            .map(drop),
        // The seeded apps declare no guide: an allowed call is refused for
        // that (FAILED_PRECONDITION), never for access.
        "RecordPrivacyDecision" => match c
            .auth()
            .record_privacy_decision(pb::RecordPrivacyDecisionRequest {
                app_id: app,
                user_id: user,
                agree: true,
            })
            .await
        {
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
            other => other.map(drop),
        },
        "ListAudit" => c
            .auth()
            .list_audit(pb::ListAuditRequest {
                app_id: app,
                ..Default::default()
            })
            .await
            .map(drop),
        "RegisterApp" => c
            .apps()
            .register_app(pb::RegisterAppRequest {
                app: Some(location_app(&format!("{app}new"))),
            })
            .await
            .map(drop),
        "UpdateApp" => c
            .apps()
            .update_app(pb::UpdateAppRequest {
                app: Some(location_app(&app)),
            })
            .await
            .map(drop),
        "GetApp" => c
            .apps()
            .get_app(pb::GetAppRequest { app_id: app })
            .await
            .map(drop),
        "ListApps" => c
            .apps()
            .list_apps(pb::ListAppsRequest::default())
            .await
            .map(drop),
        "DeleteApp" => c
            .apps()
            .delete_app(pb::DeleteAppRequest { app_id: app })
            .await
            .map(drop),
        "Compact" => c
            .admin()
            .compact(pb::CompactRequest::default())
            .await
            .map(drop),
        "Verify" => c
            .admin()
            .verify(pb::VerifyRequest::default())
            .await
            .map(drop),
        "Export" => {
            let mut stream = c
                .admin()
                .export(pb::ExportRequest {
                    include_events: false,
                })
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        }
        "Import" => {
            let records = vec![pb::ExportRecord {
                record: Some(Record::App(location_app(&app))),
            }];
            c.admin()
                .import(tokio_stream::iter(records))
                .await
                .map(drop)
        }
        "ListUserDecisions" => c
            .auth()
            .list_user_decisions(pb::ListUserDecisionsRequest {
                user_id: user,
                ..Default::default()
            })
            .await
            .map(drop),
        // A user with nothing stored: the matrix's other calls keep u1's
        // decisions (the binding's effect is checked on its own below).
        "ResetUser" => c
            .auth()
            .reset_user(pb::ResetUserRequest {
                user_id: "u-nothing".into(),
            })
            .await
            .map(drop),
        "EraseUser" => c
            .admin()
            .erase_user(pb::EraseUserRequest {
                user_id: "u-nothing".into(),
            })
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

/// The matrix, written out (not derived from the code under test). Per
/// role: `*` allowed whatever the binding, `A` allowed for the principal's
/// apps, `a` only for principals bound to every app, `-` refused.
const MATRIX: &[(&str, [char; 4])] = &[
    //                  operator runtime settings observer
    ("Authorize", ['*', 'A', '-', 'A']),
    ("BatchAuthorize", ['*', 'A', '-', 'A']),
    ("CheckApi", ['*', 'A', '-', 'A']),
    ("Explain", ['*', '-', '-', 'A']),
    ("RecordDecision", ['*', 'A', '-', '-']),
    ("GetSetting", ['*', 'A', 'A', 'A']),
    ("OpenSetting", ['*', '-', 'A', '-']),
    ("UpdateSetting", ['*', '-', 'A', '-']),
    ("RemoveApp", ['*', '-', 'A', '-']),
    ("ListScopes", ['*', '-', '-', '*']),
    ("GetRules", ['*', '-', '-', '*']),
    ("Watch", ['*', 'A', '-', 'A']),
    ("EndSession", ['*', 'A', '-', '-']),
    ("GetPrivacySetting", ['*', 'A', 'A', 'A']),
    ("RecordPrivacyDecision", ['*', 'A', '-', '-']),
    ("ListAudit", ['*', '-', '-', 'A']),
    ("RegisterApp", ['*', '-', '-', '-']),
    ("UpdateApp", ['*', '-', '-', '-']),
    ("GetApp", ['*', '-', '-', 'A']),
    // Spans every app: only for principals bound to all of them.
    ("ListApps", ['*', '-', '-', 'a']),
    ("DeleteApp", ['*', '-', '-', '-']),
    ("Compact", ['*', '-', '-', '-']),
    ("Verify", ['*', '-', '-', '-']),
    ("Export", ['*', '-', '-', '-']),
    ("Import", ['*', '-', '-', '-']),
    // The user's own view: settings and observers list (a bound principal
    // sees only its apps' rows), settings reset (only within its apps),
    // erasure spans every app: operators only.
    ("ListUserDecisions", ['*', '-', '*', '*']),
    ("ResetUser", ['*', '-', '*', '-']),
    ("EraseUser", ['*', '-', '-', '-']),
];

struct Who {
    name: &'static str,
    role: usize,
    /// Bound to "wxown" only (else to every app).
    bound: bool,
}

const PRINCIPALS: &[Who] = &[
    Who {
        name: "ops",
        role: 0,
        bound: false,
    },
    Who {
        name: "shop-runtime",
        role: 1,
        bound: true,
    },
    Who {
        name: "shop-settings",
        role: 2,
        bound: true,
    },
    Who {
        name: "all-settings",
        role: 2,
        bound: false,
    },
    Who {
        name: "shop-observer",
        role: 3,
        bound: true,
    },
    Who {
        name: "all-observer",
        role: 3,
        bound: false,
    },
];

pub fn token_of(name: &str) -> String {
    format!("tok-{name}-0123456789abcdef")
}

pub fn credentials_toml(extra: &str) -> String {
    let mut text = String::new();
    for who in PRINCIPALS {
        let role = ["operator", "runtime", "settings", "observer"][who.role];
        let apps = match (who.role, who.bound) {
            (0, _) => String::new(),
            (_, true) => "apps = [\"wxown\"]\n".into(),
            (_, false) => "apps = [\"*\"]\n".into(),
        };
        text += &format!(
            "[[principal]]\nname = \"{}\"\nrole = \"{role}\"\n{apps}token_sha256 = \"{}\"\n\n",
            who.name,
            hash_token(&token_of(who.name))
        );
    }
    text + extra
}

pub fn write_credentials(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("credentials.toml");
    std::fs::write(&path, credentials_toml(extra)).unwrap();
    path
}

pub async fn seed(ops: &As) {
    for app in ["wxown", "wxother"] {
        ops.apps()
            .register_app(pb::RegisterAppRequest {
                app: Some(location_app(app)),
            })
            .await
            .unwrap();
        // Asked once, so the settings page may change it.
        call(ops, "RecordDecision", app).await.unwrap();
    }
}

/// A connection-level failure (TLS alert, closed connection), as tonic
/// reports it. Which of them the client sees first depends on timing, so
/// any of `causes` in the error chain will do.
#[track_caller]
fn assert_transport_error(result: Result<(), Status>, causes: &[&str]) {
    let status = result.expect_err("the connection should fail");
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{status:?}"
    );
    let chain = format!("{status:?}");
    assert!(
        causes.iter().any(|c| chain.contains(c)),
        "{chain} has none of {causes:?}"
    );
}

#[tokio::test]
async fn every_role_times_every_rpc_with_the_app_binding() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with(|c| c.credentials = Some(path)).await;
    let ops = As::new(h.client().channel, Some(&token_of("ops")));
    seed(&ops).await;
    assert_eq!(MATRIX.len(), consentd::domain::Rpc::ALL.len());

    let mut checked = 0;
    for who in PRINCIPALS {
        let caller = As::new(h.client().channel, Some(&token_of(who.name)));
        for (rpc, row) in MATRIX {
            for app in ["wxown", "wxother"] {
                let rule = row[who.role];
                let allowed = match rule {
                    '*' => true,
                    'A' => !who.bound || app == "wxown",
                    'a' => !who.bound,
                    _ => false,
                };
                let before = ops.revision().await;
                let result = call(&caller, rpc, app).await;
                let context = format!("{} -> {rpc}({app})", who.name);
                if allowed {
                    result.unwrap_or_else(|e| panic!("{context}: refused: {e:?}"));
                } else {
                    let status = result.expect_err(&context);
                    assert_eq!(
                        status.code(),
                        Code::PermissionDenied,
                        "{context}: {status:?}"
                    );
                    assert!(
                        status
                            .message()
                            .contains(&format!("principal \"{}\"", who.name)),
                        "{context}: {}",
                        status.message()
                    );
                    assert_eq!(ops.revision().await, before, "{context} changed the store");
                }
                if allowed && *rpc == "DeleteApp" {
                    // Put the app back for the rest of the matrix.
                    ops.apps()
                        .register_app(pb::RegisterAppRequest {
                            app: Some(location_app(app)),
                        })
                        .await
                        .unwrap();
                    call(&ops, "RecordDecision", app).await.unwrap();
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, PRINCIPALS.len() * MATRIX.len() * 2);
    h.stop().await;
}

/// A settings principal bound to some apps lists and resets a user's
/// decisions in those apps only; an unbound one reaches every app.
#[tokio::test]
async fn the_users_own_view_follows_the_app_binding() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with(|c| c.credentials = Some(path)).await;
    let ops = As::new(h.client().channel, Some(&token_of("ops")));
    seed(&ops).await;
    let listed = |who: &'static str| {
        let c = As::new(h.client().channel, Some(&token_of(who)));
        async move {
            let page = c
                .auth()
                .list_user_decisions(pb::ListUserDecisionsRequest {
                    user_id: "u1".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            page.apps.into_iter().map(|a| a.app_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("shop-settings").await, ["wxown"]);
    assert_eq!(listed("shop-observer").await, ["wxown"]);
    assert_eq!(listed("all-settings").await, ["wxother", "wxown"]);
    let shop = As::new(h.client().channel, Some(&token_of("shop-settings")));
    let reset = shop
        .auth()
        .reset_user(pb::ResetUserRequest {
            user_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.apps, 1);
    assert!(reset.events.iter().all(|e| e.app_id == "wxown"));
    assert!(!reset.events.is_empty());
    assert_eq!(listed("all-settings").await, ["wxother"]);
    h.stop().await;
}

#[tokio::test]
async fn missing_or_unknown_credentials_are_unauthenticated_and_change_nothing() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with(|c| c.credentials = Some(path)).await;
    let ops = As::new(h.client().channel, Some(&token_of("ops")));
    seed(&ops).await;
    let before = ops.revision().await;
    let digest = hash_token(&token_of("ops"));
    for (token, needle) in [
        (None, "missing credentials"),
        (Some("not-a-token"), "unknown bearer token"),
        // The digest itself is not a credential.
        (Some(digest.as_str()), "unknown bearer token"),
    ] {
        let caller = As::new(h.client().channel, token);
        for (rpc, _) in MATRIX {
            let status = call(&caller, rpc, "wxown").await.expect_err(rpc);
            assert_eq!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
            assert!(status.message().contains(needle), "{rpc}: {status:?}");
        }
    }
    // A header that is not `Bearer <token>`.
    let mut raw = AuthorizationClient::new(h.client().channel);
    let mut req = Request::new(pb::GetRulesRequest {});
    req.metadata_mut()
        .insert("authorization", "Basic b3BzOnNlY3JldA==".parse().unwrap());
    assert_status(raw.get_rules(req).await, Code::Unauthenticated, "malformed");
    assert_eq!(ops.revision().await, before);

    // Health and reflection need no credentials.
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.client().channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "consent.v1.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    h.stop().await;
}

#[tokio::test]
async fn a_runtime_watch_sees_only_its_apps_whatever_it_asks() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with(|c| c.credentials = Some(path)).await;
    let ops = As::new(h.client().channel, Some(&token_of("ops")));
    seed(&ops).await;
    let runtime = As::new(h.client().channel, Some(&token_of("shop-runtime")));
    let start = ops.revision().await;
    let mut streams = Vec::new();
    for apps in [vec![], vec!["wxown".to_string(), "wxother".to_string()]] {
        let stream = runtime
            .auth()
            .watch(pb::WatchRequest {
                app_ids: apps,
                start_revision: Some(start),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        streams.push(stream);
    }
    // Asking only for another app is refused outright.
    let status = runtime
        .auth()
        .watch(pb::WatchRequest {
            app_ids: vec!["wxother".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Both apps start granted (seed): revoke, grant again, twice each.
    for app in ["wxother", "wxown", "wxother", "wxown"] {
        ops.auth()
            .remove_app(pb::RemoveAppRequest {
                app_id: app.into(),
                user_id: "u1".into(),
            })
            .await
            .unwrap();
        call(&ops, "RecordDecision", app).await.unwrap();
    }
    let end = ops.revision().await;
    for mut stream in streams {
        let mut apps = Vec::new();
        let mut seen_through = start;
        while seen_through < end {
            let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("stream stalled")
                .unwrap()
                .expect("stream ended");
            match item.kind.unwrap() {
                pb::watch_response::Kind::Event(e) => {
                    seen_through = e.revision;
                    apps.push(e.app_id);
                }
                pb::watch_response::Kind::Progress(p) => seen_through = p.revision,
            }
        }
        // Two removals and two grants of wxown; nothing of wxother.
        assert_eq!(apps, vec!["wxown"; 4]);
    }
    h.stop().await;
}

#[tokio::test]
async fn credentials_reload_swaps_tokens_and_a_bad_file_keeps_the_old() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with(|c| c.credentials = Some(path.clone())).await;
    let old = As::new(h.client().channel, Some(&token_of("shop-observer")));
    let new = As::new(h.client().channel, Some("rotated-token-abcdef0123456789"));
    call(&old, "GetRules", "wxown").await.unwrap();
    assert_status(
        call(&new, "GetRules", "wxown").await,
        Code::Unauthenticated,
        "unknown",
    );

    // Rotate: the observer gets a new token, the old one goes.
    let text = credentials_toml("").replace(
        &hash_token(&token_of("shop-observer")),
        &hash_token("rotated-token-abcdef0123456789"),
    );
    std::fs::write(&path, text).unwrap();
    assert!(h.daemon().reload().is_empty());
    call(&new, "GetRules", "wxown").await.unwrap();
    assert_status(
        call(&old, "GetRules", "wxown").await,
        Code::Unauthenticated,
        "unknown",
    );

    // A broken file is refused and the current credentials stay.
    std::fs::write(&path, "[[principal]]\nname = 'x'\nrole = 'root'\n").unwrap();
    let errors = h.daemon().reload();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().contains("unknown role"),
        "{}",
        errors[0]
    );
    call(&new, "GetRules", "wxown").await.unwrap();
    h.stop().await;
}

/// A CA, a server certificate for localhost/127.0.0.1 and client
/// certificates, all made at test time.
pub struct Pki {
    dir: tempfile::TempDir,
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_params: params,
            ca_key,
        }
    }

    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `<name>.pem` and `<name>.key`, signed by the CA.
    pub fn issue(&self, name: &str, common_name: &str, sans: &[&str]) {
        self.issue_with(name, common_name, sans, |_| {});
    }

    /// Like [`Pki::issue`], with the parameters changed by `tweak` first.
    pub fn issue_with(
        &self,
        name: &str,
        common_name: &str,
        sans: &[&str],
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        tweak(&mut params);
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    pub fn server_files(&self, client_ca: bool) -> TlsFiles {
        self.issue("server", "consentd", &["localhost", "127.0.0.1"]);
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.then(|| self.path("ca.pem")),
        }
    }

    pub fn client_tls(&self, identity: Option<&str>) -> ClientTlsConfig {
        let ca = Certificate::from_pem(std::fs::read(self.path("ca.pem")).unwrap());
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(ca)
            .domain_name("localhost");
        if let Some(name) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(self.path(&format!("{name}.pem"))).unwrap(),
                std::fs::read(self.path(&format!("{name}.key"))).unwrap(),
            ));
        }
        tls
    }
}

pub async fn tls_channel(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn tls_serves_token_callers_and_refuses_plaintext_and_reloads_certificates() {
    let pki = Pki::new("first");
    let files = pki.server_files(false);
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with_unconnected(|c: &mut Config| {
        c.credentials = Some(path);
        c.tls = Some(files);
    })
    .await;
    let addr = h.addr();

    let channel = tls_channel(addr, pki.client_tls(None)).await.unwrap();
    let ops = As::new(channel.clone(), Some(&token_of("ops")));
    seed(&ops).await;
    call(&ops, "Authorize", "wxown").await.unwrap();
    assert_status(
        call(&As::new(channel, None), "Authorize", "wxown").await,
        Code::Unauthenticated,
        "missing credentials",
    );

    // Plaintext HTTP/2 to the TLS port gets no answer.
    let plain = connect_plain(addr).await;
    assert_transport_error(
        call(&As::new(plain, Some(&token_of("ops"))), "GetRules", "").await,
        &["transport error", "operation was canceled"],
    );

    // A certificate from another CA is rejected until the files change and
    // the daemon reloads; then new connections get the new certificate.
    let second = Pki::new("second");
    assert!(tls_channel(addr, second.client_tls(None)).await.is_err());
    second.issue("server", "consentd", &["localhost", "127.0.0.1"]);
    std::fs::copy(second.path("server.pem"), pki.path("server.pem")).unwrap();
    std::fs::copy(second.path("server.key"), pki.path("server.key")).unwrap();
    assert!(h.daemon().reload().is_empty());
    let renewed = tls_channel(addr, second.client_tls(None)).await.unwrap();
    call(&As::new(renewed, Some(&token_of("ops"))), "GetRules", "")
        .await
        .unwrap();
    h.stop().await;
}

async fn connect_plain(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

#[tokio::test]
async fn mtls_maps_client_certificates_to_principals() {
    let pki = Pki::new("mtls");
    let files = pki.server_files(true);
    pki.issue("runtime", "shop-runtime-cert", &[]);
    pki.issue("ops-client", "ops-cert", &[]);
    pki.issue("stranger", "nobody-we-know", &[]);
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(
        creds.path(),
        "[[principal]]\nname = \"shop-runtime-mtls\"\nrole = \"runtime\"\napps = [\"wxown\"]\ncert_subject = \"shop-runtime-cert\"\n\n\
         [[principal]]\nname = \"ops-mtls\"\nrole = \"operator\"\ncert_subject = \"ops-cert\"\n",
    );
    let h = TestDaemon::with_unconnected(|c: &mut Config| {
        c.credentials = Some(path);
        c.tls = Some(files);
    })
    .await;
    let addr = h.addr();

    // Without a client certificate the server refuses the handshake with
    // the `certificate_required` alert: in the handshake, or (TLS 1.3: the
    // client finishes first) on the first call. Nothing else will do.
    let refused = match tls_channel(addr, pki.client_tls(None)).await {
        Err(error) => error,
        Ok(channel) => {
            let status = call(&As::new(channel, Some(&token_of("ops"))), "GetRules", "")
                .await
                .expect_err("a client without a certificate was served");
            // tonic reports a connection that failed mid-call as UNKNOWN.
            assert!(
                matches!(status.code(), Code::Unknown | Code::Unavailable),
                "{status:?}"
            );
            format!("{status:?}")
        }
    };
    assert!(
        refused.contains("received fatal alert: CertificateRequired")
            || refused.contains("AlertReceived(CertificateRequired)"),
        "not the missing-certificate alert: {refused}"
    );

    let runtime_channel = tls_channel(addr, pki.client_tls(Some("runtime")))
        .await
        .unwrap();
    let ops_channel = tls_channel(addr, pki.client_tls(Some("ops-client")))
        .await
        .unwrap();
    // The certificate alone authenticates: no token.
    let runtime = As::new(runtime_channel.clone(), None);
    let ops = As::new(ops_channel, None);
    seed(&ops).await;
    call(&runtime, "Authorize", "wxown").await.unwrap();
    call(&runtime, "RecordDecision", "wxown").await.unwrap();
    let denied = call(&runtime, "Authorize", "wxother").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("shop-runtime-mtls"), "{denied:?}");
    assert_status(
        call(&runtime, "UpdateSetting", "wxown").await,
        Code::PermissionDenied,
        "may not call UpdateSetting",
    );

    // A valid certificate whose subject is not in the file.
    let stranger = tls_channel(addr, pki.client_tls(Some("stranger")))
        .await
        .unwrap();
    assert_status(
        call(&As::new(stranger, None), "Authorize", "wxown").await,
        Code::Unauthenticated,
        "nobody-we-know",
    );
    h.stop().await;
}

#[tokio::test]
async fn unix_socket_listener_mode_stale_file_and_removal() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("consentd.sock");
    // A socket file left behind by a crashed daemon.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let sock_for_config = sock.clone();
    let h = TestDaemon::with_unconnected(move |c: &mut Config| {
        c.listen = vec![
            ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            ListenAddr::Unix(sock_for_config),
        ];
    })
    .await;
    assert_eq!(h.daemon().local_addrs()[1], ListenAddr::Unix(sock.clone()));
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let path = sock.clone();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let local = As::new(channel, None);
    seed(&local).await;
    call(&local, "RecordDecision", "wxown").await.unwrap();
    // The same store behind both listeners.
    let over_tcp = As::new(connect(h.addr()).await, None);
    assert_eq!(over_tcp.revision().await, local.revision().await);

    // A second daemon may not take over a live socket.
    let taken = sock.clone();
    let second = consentd::server::Daemon::start(Config {
        listen: vec![ListenAddr::Unix(taken)],
        data_dir: dir.path().join("other-data"),
        ..Config::default()
    })
    .await;
    let err = second
        .err()
        .expect("a live socket is not replaced")
        .to_string();
    assert!(err.contains("another process is listening"), "{err}");

    h.stop().await;
    assert!(!sock.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn non_loopback_listeners_need_credentials_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: vec![ListenAddr::Tcp("0.0.0.0:0".parse().unwrap())],
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let err = consentd::server::Daemon::start(config.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without credentials and TLS"),
        "{err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before opening the store"
    );
    let insecure = consentd::server::Daemon::start(Config {
        insecure: true,
        ..config
    })
    .await
    .unwrap();
    insecure.shutdown().await.unwrap();
}

#[tokio::test]
async fn call_limits_bound_streams_in_flight_calls_time_and_size() {
    let h = TestDaemon::with(|c| {
        c.watch.max_streams = 2;
        c.limits.max_in_flight = 3;
        c.max_message_bytes = 64 * 1024;
        c.limits.request_timeout = Duration::from_secs(1);
        c.limits.message_timeout = Duration::from_secs(30);
    })
    .await;
    let ops = As::new(h.client().channel, None);
    seed(&ops).await;

    // Watch streams over every connection: the third is refused until one ends.
    let other = As::new(connect(h.addr()).await, None);
    let first = ops.auth().watch(pb::WatchRequest::default()).await.unwrap();
    let _second = other
        .auth()
        .watch(pb::WatchRequest::default())
        .await
        .unwrap();
    assert_status(
        ops.auth().watch(pb::WatchRequest::default()).await,
        Code::ResourceExhausted,
        "watch streams are open",
    );
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        match ops.auth().watch(pb::WatchRequest::default()).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(reopened.is_some(), "a slot frees when a stream ends");

    // Calls in flight: two Imports held open plus one more fill the cap.
    let mut held = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::ExportRecord>(1);
        let mut admin = ops.admin();
        let call = tokio::spawn(async move {
            admin
                .import(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        held.push((tx, call));
    }
    let mut refused = None;
    for _ in 0..100 {
        match call(&other, "GetRules", "").await {
            Err(status) => {
                refused = Some(status);
                break;
            }
            Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let status = refused.expect("the cap is reached");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("server busy"), "{status:?}");
    for (tx, call) in held {
        drop(tx);
        call.await.unwrap().unwrap();
    }
    call(&other, "GetRules", "").await.unwrap();

    // A unary call that does not finish is cut at the request timeout
    // (1 s here), not sooner and not much later.
    let started = std::time::Instant::now();
    let status = crate::hardening::headers_without_body(
        connect(h.addr()).await,
        None,
        "/consent.v1.Authorization/GetRules",
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.message(),
        "GetRules did not finish within the server's request timeout of 1s"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "cut after {took:?}"
    );

    // Messages over the limit are refused before they are decoded.
    let huge = pb::BatchAuthorizeRequest {
        app_id: "wxown".into(),
        user_id: "u1".into(),
        scopes: vec!["x".repeat(1024); 80],
        client: Some(android()),
    };
    let status = ops.auth().batch_authorize(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_reload_that_revokes_a_principal_ends_its_open_watch_streams() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with(|c| c.credentials = Some(path.clone())).await;
    let ops = As::new(h.client().channel, Some(&token_of("ops")));
    seed(&ops).await;
    let runtime = As::new(h.client().channel, Some(&token_of("shop-runtime")));
    let observer = As::new(h.client().channel, Some(&token_of("all-observer")));
    let mut revoked = runtime
        .auth()
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut kept = observer
        .auth()
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The runtime's principal leaves the file; the observer's stays.
    let text =
        credentials_toml("").replace("name = \"shop-runtime\"", "name = \"shop-runtime-v2\"");
    std::fs::write(&path, text).unwrap();
    assert!(h.daemon().reload().is_empty());
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), revoked.message())
            .await
            .expect("the stream ends within a progress interval")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("shop-runtime"), "{ended:?}");
    // Unchanged principals keep streaming.
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), kept.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    h.stop().await;
}
