//! Hardening (issue #15): what a hostile review found, each with the
//! failure it proves fixed. Every daemon is real; every call goes over gRPC
//! (or raw sockets, for the connection-level findings).

use std::time::Duration;

use consentd::{auth::hash_token, pb};
use tonic::{Code, Streaming};

use crate::{
    fixture::TestDaemon,
    security::{credentials_toml, seed, token_of, write_credentials, As},
};

/// The next item of a stream, or the status that ended it.
async fn next_or_end(stream: &mut Streaming<pb::WatchResponse>) -> Result<(), tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream neither sent nor ended within 10 s")
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => panic!("the stream ended with OK"),
        Err(status) => Err(status),
    }
}

/// Finding 2: removing one of a principal's digests (token rotation) ends
/// the streams opened with that token, not those opened with the new one,
/// and unary calls with it are refused.
#[tokio::test]
async fn rotating_a_token_ends_the_streams_opened_with_the_old_one() {
    let creds = tempfile::tempdir().unwrap();
    let old = token_of("shop-runtime");
    let new = "shop-runtime-next-token-0123456789";
    let path = write_credentials(creds.path(), "");
    // The runtime holds two digests while its token is rotated.
    let both = credentials_toml("").replace(
        &format!("token_sha256 = \"{}\"", hash_token(&old)),
        &format!(
            "token_sha256 = [\"{}\", \"{}\"]",
            hash_token(&old),
            hash_token(new)
        ),
    );
    assert_ne!(both, credentials_toml(""));
    std::fs::write(&path, &both).unwrap();
    let h = TestDaemon::with(|c| c.credentials = Some(path.clone())).await;
    let ops = As::new(h.client().channel, Some(&token_of("ops")));
    seed(&ops).await;
    let with_old = As::new(h.client().channel, Some(&old));
    let with_new = As::new(h.client().channel, Some(new));
    let mut old_stream = with_old
        .auth()
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut new_stream = with_new
        .auth()
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    next_or_end(&mut old_stream).await.unwrap();
    next_or_end(&mut new_stream).await.unwrap();

    // Drop the old digest: same principal, one credential fewer.
    let rotated = credentials_toml("").replace(&hash_token(&old), &hash_token(new));
    std::fs::write(&path, rotated).unwrap();
    assert!(h.daemon().reload().is_empty());

    let unary = crate::security::call(&with_old, "GetSetting", "wxown").await;
    assert_eq!(unary.unwrap_err().code(), Code::Unauthenticated);
    crate::security::call(&with_new, "GetSetting", "wxown")
        .await
        .unwrap();
    // It ends at its next item: the progress marker (100 ms here) at the latest.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(status) = next_or_end(&mut old_stream).await {
                break status;
            }
        }
    })
    .await
    .expect("the stream opened with the revoked token still delivers after the reload");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("was revoked"), "{ended:?}");
    assert!(ended.message().contains("shop-runtime"), "{ended:?}");
    // The stream opened with the new token keeps delivering.
    for _ in 0..3 {
        next_or_end(&mut new_stream).await.unwrap();
    }
    h.stop().await;
}

/// Finding 9: the identity rule for client certificates. SANs (URI, then
/// DNS) come before the CN; a certificate naming two principals, or with
/// two CNs, is refused; a bearer token sent with a certificate must name a
/// principal within the certificate's.
#[tokio::test]
async fn mtls_identity_prefers_sans_refuses_ambiguity_and_bounds_tokens() {
    use crate::security::{tls_channel, Pki};
    let pki = Pki::new("identity");
    let files = pki.server_files(true);
    let uri = |u: &str| rcgen::SanType::URI(u.try_into().unwrap());
    let dns = |d: &str| rcgen::SanType::DnsName(d.try_into().unwrap());
    pki.issue("ops", "ops-cert", &[]);
    // Its CN names the operator, its URI SAN the shop's runtime: the SAN wins.
    pki.issue_with("san-over-cn", "ops-cert", &[], |p| {
        p.subject_alt_names.push(uri("spiffe://consentd/shop"));
    });
    pki.issue_with("two-principals", "nobody", &[], |p| {
        p.subject_alt_names.push(uri("spiffe://consentd/shop"));
        p.subject_alt_names.push(dns("dash.consentd.internal"));
    });
    pki.issue_with("two-cns", "ops-cert", &[], |p| {
        // A second CN attribute (OID 2.5.4.3).
        p.distinguished_name.push(
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]),
            "someone-else",
        );
    });
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(
        creds.path(),
        "[[principal]]\nname = \"ops-mtls\"\nrole = \"operator\"\ncert_subject = \"ops-cert\"\n\n\
         [[principal]]\nname = \"shop-by-san\"\nrole = \"runtime\"\napps = [\"wxown\"]\ncert_subject = \"spiffe://consentd/shop\"\n\n\
         [[principal]]\nname = \"dash-by-dns\"\nrole = \"observer\"\napps = [\"*\"]\ncert_subject = \"dash.consentd.internal\"\n",
    );
    let h = TestDaemon::with_unconnected(|c| {
        c.credentials = Some(path);
        c.tls = Some(files);
    })
    .await;
    let addr = h.addr();
    let with = |cert: &'static str, token: Option<String>| {
        let tls = pki.client_tls(Some(cert));
        async move { As::new(tls_channel(addr, tls).await.unwrap(), token.as_deref()) }
    };
    let ops = with("ops", None).await;
    seed(&ops).await;
    let call = crate::security::call;

    // SAN before CN: the runtime, not the operator its CN names.
    let by_san = with("san-over-cn", None).await;
    call(&by_san, "Authorize", "wxown").await.unwrap();
    let denied = call(&by_san, "Compact", "").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("\"shop-by-san\""), "{denied:?}");

    // Ambiguous certificates are refused outright.
    for (cert, needle) in [
        ("two-principals", "its SANs name several principals"),
        ("two-cns", "several common names"),
    ] {
        let status = call(&with(cert, None).await, "GetRules", "")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{cert}: {status:?}");
        assert!(status.message().contains("ambiguous"), "{cert}: {status:?}");
        assert!(status.message().contains(needle), "{cert}: {status:?}");
    }

    // A token wider than the certificate is refused, whatever it allows.
    let wider = with("san-over-cn", Some(token_of("ops"))).await;
    let status = call(&wider, "Compact", "").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("\"ops\" is not within the client certificate's principal \"shop-by-san\""),
        "{status:?}"
    );
    // A narrower one is used: the operator's certificate with a runtime's
    // token acts as that runtime.
    let narrower = with("ops", Some(token_of("shop-runtime"))).await;
    call(&narrower, "Authorize", "wxown").await.unwrap();
    let denied = call(&narrower, "Compact", "").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("\"shop-runtime\""), "{denied:?}");
    // Same role and a subset of the apps is within too.
    let same = with("san-over-cn", Some(token_of("shop-runtime"))).await;
    call(&same, "RecordDecision", "wxown").await.unwrap();
    h.stop().await;
}

/// Finding 5: without credentials every caller is an operator, so a unix
/// socket other users can reach, or metrics beyond loopback, are refused at
/// start (like an exposed TCP listener), before anything is created.
#[tokio::test]
async fn shared_sockets_and_exposed_metrics_need_credentials() {
    use consentd::{config::Config, server::Daemon, transport::ListenAddr};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let base = Config {
        listen: vec![ListenAddr::Unix(sock.clone())],
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    for (config, needle) in [
        (
            Config {
                unix_socket_mode: 0o666,
                ..base.clone()
            },
            "refusing unix_socket_mode 666 without credentials",
        ),
        (
            Config {
                unix_socket_mode: 0o660,
                ..base.clone()
            },
            "refusing unix_socket_mode 660 without credentials",
        ),
        (
            Config {
                metrics_listen: Some("0.0.0.0:0".parse().unwrap()),
                ..base.clone()
            },
            "refusing to serve metrics on 0.0.0.0:0 without credentials",
        ),
    ] {
        let err = Daemon::start(config)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(needle), "{err}");
        assert!(!sock.exists(), "refused before binding");
        assert!(
            !dir.path().join("data").exists(),
            "refused before the store"
        );
    }
    // The private default still starts.
    Daemon::start(base).await.unwrap().shutdown().await.unwrap();
}

/// Finding 7: the data dir is created 0700 (an existing one is made
/// 0700), and `consentctl export -o` writes a 0600 file, even over an
/// existing world-readable one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_exports_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    let daemon = consentd::server::Daemon::start(crate::support::on_sled(
        crate::fixture::test_config(data.clone()),
    ))
    .await
    .unwrap();
    let client = crate::fixture::Client {
        channel: crate::fixture::connect(daemon.local_addr().unwrap()).await,
    };
    client
        .register(crate::fixture::location_app("wxprivate"))
        .await;
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    assert_eq!(mode(&dir.path().join("nested")), 0o700);

    let out = tempfile::tempdir().unwrap();
    let dump = out.path().join("dump.jsonl");
    std::fs::write(&dump, "old").unwrap();
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o644)).unwrap();
    let addr = daemon.local_addr().unwrap().to_string();
    let dump_arg = dump.clone();
    let run = tokio::task::spawn_blocking(move || {
        crate::support::child::consentctl()
            .args(["--addr", &addr, "export", "--output"])
            .arg(&dump_arg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(mode(&dump), 0o600);
    assert!(std::fs::read_to_string(&dump)
        .unwrap()
        .contains("wxprivate"));
    daemon.shutdown().await.unwrap();

    // A data dir made by someone else with the umask's 0755 is tightened.
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("data");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = crate::support::on_sled(crate::fixture::test_config(loose.clone()));
    let daemon = consentd::server::Daemon::start(config).await.unwrap();
    assert_eq!(mode(&loose), 0o700);
    daemon.shutdown().await.unwrap();
}

/// Starts a call of the unary method at `path` whose request message never
/// comes: the HTTP/2 HEADERS go out, the body stays open and empty.
pub async fn headers_without_body(
    channel: tonic::transport::Channel,
    token: Option<&str>,
    path: &'static str,
) -> Result<tonic::Response<tonic::codec::Streaming<pb::GetRulesResponse>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::pending::<pb::GetRulesRequest>());
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    grpc.streaming(
        request,
        http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
}

/// Finding 4: calls whose request message never arrives are cut at the
/// message deadline, and one principal cannot take the operators' share of
/// the calls in flight meanwhile.
#[tokio::test]
async fn headers_without_a_body_are_cut_at_the_message_deadline_and_operators_keep_a_slot() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with(|c| {
        c.credentials = Some(path);
        c.limits.max_in_flight = 4;
        c.limits.message_timeout = Duration::from_millis(700);
    })
    .await;
    let observer = token_of("all-observer");
    let started = tokio::time::Instant::now();
    let mut stuck = Vec::new();
    for _ in 0..3 {
        let channel = h.client().channel;
        let token = observer.clone();
        stuck.push(tokio::spawn(async move {
            headers_without_body(channel, Some(&token), "/consent.v1.Authorization/GetRules").await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Four slots, one reserved: the observer's fourth is refused, the
    // operator still gets in.
    let fourth = headers_without_body(
        h.client().channel,
        Some(&observer),
        "/consent.v1.Authorization/GetRules",
    )
    .await
    .unwrap_err();
    assert_eq!(fourth.code(), Code::ResourceExhausted, "{fourth:?}");
    assert!(
        fourth
            .message()
            .contains("\"all-observer\" has 3 calls in flight"),
        "{fourth:?}"
    );
    let ops = As::new(h.client().channel, Some(&token_of("ops")));
    crate::security::call(&ops, "GetRules", "").await.unwrap();
    for call in stuck {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(
            status
                .message()
                .contains("the GetRules request message did not arrive within 700ms"),
            "{status:?}"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "cut after {took:?}, not at the 700 ms message deadline"
    );
    // The slots are back.
    for _ in 0..3 {
        crate::security::call(
            &As::new(h.client().channel, Some(&observer)),
            "GetRules",
            "",
        )
        .await
        .unwrap();
    }
    h.stop().await;
}

/// Finding 4: Watch streams have a quota per principal, and the last
/// slots are the operators'.
#[tokio::test]
async fn one_principal_cannot_take_every_watch_slot() {
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with(|c| {
        c.credentials = Some(path);
        c.watch.max_streams = 4;
        c.limits.max_watch_streams_per_principal = 2;
    })
    .await;
    let ops = As::new(h.client().channel, Some(&token_of("ops")));
    seed(&ops).await;
    let runtime = As::new(h.client().channel, Some(&token_of("shop-runtime")));
    let observer = As::new(h.client().channel, Some(&token_of("all-observer")));
    let watch = |who: &As| {
        let mut client = who.auth();
        async move { client.watch(pb::WatchRequest::default()).await }
    };
    let mut open = vec![
        watch(&runtime).await.unwrap(),
        watch(&runtime).await.unwrap(),
    ];
    let third = watch(&runtime).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(
        third
            .message()
            .contains("\"shop-runtime\" has 2 watch streams open, its quota"),
        "{third:?}"
    );
    open.push(watch(&observer).await.unwrap());
    // Three of four taken: the last is the operators'.
    let reserved = watch(&observer).await.unwrap_err();
    assert_eq!(reserved.code(), Code::ResourceExhausted, "{reserved:?}");
    assert!(
        reserved.message().contains("operators' reserve"),
        "{reserved:?}"
    );
    open.push(watch(&ops).await.unwrap());
    // A stream that ends gives its slot back.
    drop(open.remove(0));
    let mut again = None;
    for _ in 0..100 {
        match watch(&runtime).await {
            Ok(s) => {
                again = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(again.is_some(), "the runtime's slot came back");
    h.stop().await;
}

/// Whether the server closes `stream` within `within` (EOF or reset).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // The server's SETTINGS frame, pings: not a close.
            Ok(Ok(_)) => {}
        }
    }
}

/// Finding 3: connections are capped per source and in total, one that
/// never starts a request is closed at the first-request deadline (plain
/// TCP, after the HTTP/2 preface, after a TLS handshake), and one without
/// open requests at the idle timeout, while a Watch stream keeps its.
#[tokio::test]
async fn idle_and_excess_connections_are_closed() {
    use tokio::{io::AsyncWriteExt as _, net::TcpStream};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let sock_for_config = sock.clone();
    let h = TestDaemon::with(|c| {
        c.listen
            .push(consentd::transport::ListenAddr::Unix(sock_for_config));
        c.connections.max_connections = 16;
        c.connections.max_per_source = 4;
        c.connections.first_request_timeout = Duration::from_millis(800);
        c.connections.idle_timeout = Duration::from_millis(800);
    })
    .await;
    let addr = h.addr();
    // The fixture's own channel holds one connection from 127.0.0.1.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // A fifth connection from the same source is closed at once.
    let mut excess = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut excess, Duration::from_millis(300)).await,
        "the per-source cap let a fifth connection stay"
    );
    // Another source (a unix-socket peer) still gets in.
    let path = sock.clone();
    let local = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    crate::security::call(&As::new(local, None), "GetRules", "")
        .await
        .unwrap();

    // The idle ones never sent a byte: closed at the first-request deadline.
    let started = tokio::time::Instant::now();
    for stream in &mut idle {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "a connection that never sent a request stayed open"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    // The HTTP/2 preface alone is not a request.
    let mut preface = TcpStream::connect(addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_within(&mut preface, Duration::from_secs(3)).await,
        "a connection that sent only the preface stayed open"
    );
    h.stop().await;
}

/// Finding 3, over TLS: a client that finishes the handshake and then
/// sends nothing is closed at the first-request deadline.
#[tokio::test]
async fn an_idle_tls_connection_is_closed_after_the_handshake() {
    use tokio_rustls::rustls;
    let pki = crate::security::Pki::new("idle-tls");
    let files = pki.server_files(false);
    let creds = tempfile::tempdir().unwrap();
    let path = write_credentials(creds.path(), "");
    let h = TestDaemon::with_unconnected(|c| {
        c.credentials = Some(path);
        c.tls = Some(files);
        c.connections.first_request_timeout = Duration::from_millis(800);
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    use rustls::pki_types::pem::PemObject as _;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(&ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("the handshake completes");
    let started = tokio::time::Instant::now();
    assert!(
        closed_within(&mut tls, Duration::from_secs(4)).await,
        "an idle TLS connection stayed open"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    h.stop().await;
}

/// Finding 3: a connection with no request open is closed at the idle
/// timeout (the client then reconnects); one with an open Watch is not.
#[tokio::test]
async fn connections_without_open_requests_are_closed_at_the_idle_timeout() {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let h = TestDaemon::with(|c| {
        c.connections.idle_timeout = Duration::from_millis(600);
        c.watch.progress_interval = Duration::from_millis(100);
    })
    .await;
    let addr = h.addr();
    let dialed = Arc::new(AtomicUsize::new(0));
    let counter = dialed.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let client = As::new(channel, None);
    let mut stream = client
        .auth()
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Three idle timeouts with the stream open: same connection, still
    // delivering.
    let until = tokio::time::Instant::now() + Duration::from_millis(1800);
    while tokio::time::Instant::now() < until {
        next_or_end(&mut stream).await.unwrap();
    }
    assert_eq!(dialed.load(Ordering::SeqCst), 1);
    drop(stream);
    // No request open: closed; the next call dials again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut answered = false;
    for _ in 0..3 {
        if crate::security::call(&client, "GetRules", "").await.is_ok() {
            answered = true;
            break;
        }
    }
    assert!(answered);
    assert_eq!(
        dialed.load(Ordering::SeqCst),
        2,
        "the idle connection was not closed"
    );

    // A health Watch needs no credentials: it does not pin the connection.
    let mut health = tonic_health::pb::health_client::HealthClient::new(client.channel());
    let mut watching = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    watching.message().await.unwrap().unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(5), watching.message())
        .await
        .expect("a health Watch kept its connection past the idle timeout");
    assert!(cut.is_err(), "{cut:?}");
    h.stop().await;
}

fn row(app: &str, user: &str, scope: &str, state: pb::DecisionState) -> pb::ExportRecord {
    pb::ExportRecord {
        record: Some(pb::export_record::Record::Decision(pb::StoredDecision {
            app_id: app.into(),
            user_id: user.into(),
            scope: scope.into(),
            state: state.into(),
            ..Default::default()
        })),
    }
}

fn app_record(app: pb::App) -> pb::ExportRecord {
    pb::ExportRecord {
        record: Some(pb::export_record::Record::App(app)),
    }
}

/// Finding 6: an import is checked as a whole before the first write: a
/// bad row after an app record leaves nothing behind; conflicting
/// duplicates, expiries beyond the timestamp range and grants of scopes the
/// app does not declare are refused; an import that stops sending is cut
/// at the message deadline.
#[tokio::test]
async fn imports_are_checked_whole_before_anything_is_written() {
    use crate::fixture::{assert_status, bare_app, location_app};
    use pb::DecisionState::{Denied, Granted};
    let h = TestDaemon::with(|c| c.limits.message_timeout = Duration::from_millis(700)).await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.register(bare_app("wxbare", pb::AppKind::MiniProgram))
        .await;
    let before = c.revision().await;
    let import = |records: Vec<pb::ExportRecord>| {
        let mut admin = c.admin();
        async move { admin.import(tokio_stream::iter(records)).await }
    };
    let far = pb::ExportRecord {
        record: Some(pb::export_record::Record::Decision(pb::StoredDecision {
            app_id: "wxloc".into(),
            user_id: "u1".into(),
            scope: "scope.userLocation".into(),
            state: Granted.into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: i64::MAX / 1000,
                nanos: 0,
            }),
            ..Default::default()
        })),
    };
    for (label, records, code, needle) in [
        (
            "a bad row after an app",
            vec![
                app_record(location_app("wxnew")),
                row("wxnew", "u1", "scope.camera", Granted),
                row("wxnew", "u1", "scope.nope", Granted),
            ],
            Code::InvalidArgument,
            "scope.nope",
        ),
        (
            "conflicting duplicates",
            vec![
                row("wxloc", "u1", "scope.camera", Granted),
                row("wxloc", "u1", "scope.camera", Denied),
            ],
            Code::InvalidArgument,
            "two rows disagree",
        ),
        (
            "an expiry that never comes",
            vec![far],
            Code::InvalidArgument,
            "beyond 9999-12-31",
        ),
        (
            "a grant of an undeclared scope",
            vec![
                row("wxloc", "u1", "scope.camera", Granted),
                row("wxbare", "u1", "scope.userLocation", Granted),
            ],
            Code::InvalidArgument,
            "a grant of a scope the app does not declare",
        ),
        (
            "a row for an app that is nowhere",
            vec![
                app_record(location_app("wxnew")),
                row("wxghost", "u1", "scope.camera", Granted),
            ],
            Code::NotFound,
            "wxghost",
        ),
    ] {
        let result = import(records).await;
        let status = result.expect_err(label);
        assert_eq!(status.code(), code, "{label}: {status:?}");
        assert!(status.message().contains(needle), "{label}: {status:?}");
        assert_eq!(c.revision().await, before, "{label}: something was written");
    }
    assert_status(
        c.apps()
            .get_app(pb::GetAppRequest {
                app_id: "wxnew".into(),
            })
            .await,
        Code::NotFound,
        "wxnew",
    );
    // Identical repeats are one row; a good import goes through.
    let done = import(vec![
        app_record(location_app("wxnew")),
        row("wxnew", "u1", "scope.camera", Granted),
        row("wxnew", "u1", "scope.camera", Granted),
        row("wxloc", "u2", "scope.userLocation", Granted),
    ])
    .await
    .unwrap()
    .into_inner();
    assert_eq!((done.apps, done.decisions, done.changed), (1, 2, 2));

    // An import that stops sending holds its slot only until the deadline.
    let started = tokio::time::Instant::now();
    let status = c
        .admin()
        .import(tokio_stream::pending::<pb::ExportRecord>())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("Import request message"),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    h.stop().await;
}
