//! TLS and authentication towards etcd (issue 14, item 1): the real
//! `consentd` binary, configured by its flags and environment, on a real
//! etcd cluster that requires client certificates, or has authentication
//! on with short-lived tokens. Ignored unless asked for: `scripts/test`
//! runs them (`--ignored etcd`).

use std::time::{Duration, Instant};

use consentd::pb;
use etcd_client::{Client as EtcdClient, Permission};

use crate::{
    etcd::{fresh_prefix, from},
    etcd_cluster::{EtcdCluster, Options, ServerTls},
    etcd_faults::{collect, log_of, settle},
    fixture::{connect, heavy, location_app, Client},
    security::Pki,
    support::{
        child::{consentd, run, spawn_consentd, Consentd},
        key_of_change, EventKey,
    },
};

fn start(options: Options) -> EtcdCluster {
    tokio::task::block_in_place(|| EtcdCluster::start_with(3, options))
        .unwrap_or_else(|e| panic!("cannot run the etcd TLS/auth tests: {e}"))
}

/// The arguments of a daemon on `endpoints` under `prefix`, plus `extra`.
fn daemon_args(
    dir: &std::path::Path,
    endpoints: &[String],
    prefix: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints.join(","),
        "--etcd-prefix",
        prefix,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn spawn(args: &[String], env: &[(&str, &str)]) -> Consentd {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_consentd(&args, env)
}

async fn client_of(d: &Consentd) -> Client {
    Client {
        channel: connect(d.addr()).await,
    }
}

/// `consentd args` must refuse to start: exit code 2 and one line on stderr
/// containing each of `says`; returns that line.
fn refused(args: &[String], env: &[(&str, &str)], says: &[&str]) -> String {
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| run(consentd().args(args).envs(env.iter().copied())));
    assert_eq!(out.code, 2, "refused to start; stderr:\n{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("consentd: "))
        .unwrap_or_else(|| panic!("a `consentd: ` line on stderr:\n{}", out.stderr))
        .to_owned();
    eprintln!("refused: {line}");
    for s in says {
        assert!(line.contains(s), "{line:?} says {s:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused within 30 s, not {:?}",
        started.elapsed()
    );
    line
}

/// One answer through `c`; the events it committed.
async fn answer(c: &Client, user: &str, scope: &str) -> Vec<EventKey> {
    c.answer("wxsec", user, scope, pb::Answer::Allow)
        .await
        .iter()
        .map(|ch| key_of_change("wxsec", user, ch))
        .collect()
}

/// etcd serving TLS and requiring client certificates: a daemon given the
/// CA and a client certificate by flags (another by the environment)
/// serves writes, reads and Watch across both; a daemon with the wrong CA,
/// without a client certificate, or with a certificate from another CA
/// refuses to start saying what failed; bad files are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_tls_client_certificates() {
    let _heavy = heavy().await;
    let pki = Pki::new("etcd");
    pki.issue("member", "etcd", &["localhost", "127.0.0.1"]);
    pki.issue("consentd", "consentd", &[]);
    let other = Pki::new("other");
    other.issue("consentd", "consentd", &[]);
    let cluster = start(Options {
        tls: Some(ServerTls {
            ca: pki.path("ca.pem"),
            cert: pki.path("member.pem"),
            key: pki.path("member.key"),
        }),
        ..Options::default()
    });
    let endpoints = cluster.endpoints();
    assert!(endpoints.iter().all(|e| e.starts_with("https://")));
    let prefix = fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (ca, cert, key) = (
        path(&pki.path("ca.pem")),
        path(&pki.path("consentd.pem")),
        path(&pki.path("consentd.key")),
    );

    let a = spawn(
        &daemon_args(
            &dir.path().join("a"),
            &endpoints,
            &prefix,
            &["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key],
        ),
        &[],
    );
    let b = spawn(
        &daemon_args(&dir.path().join("b"), &endpoints, &prefix, &[]),
        &[
            ("CONSENTD_ETCD_CA", &ca),
            ("CONSENTD_ETCD_CERT", &cert),
            ("CONSENTD_ETCD_KEY", &key),
        ],
    );
    let clients = [client_of(&a).await, client_of(&b).await];
    clients[0].register(location_app("wxsec")).await;
    let watch = collect(clients[1].watch(from(0)).await.unwrap());
    let mut acked = answer(&clients[0], "u1", "scope.camera").await;
    acked.extend(answer(&clients[1], "u2", "scope.record").await);
    let end = settle(&clients).await;
    let log = log_of(&clients[0], end).await;
    assert_eq!(log, acked, "both writes, over TLS, in the one log");
    assert_eq!(
        watch.until(end).await,
        log,
        "Watch over TLS on the other daemon"
    );
    for c in &clients {
        assert_eq!(c.assert_consistent().await.revision, end);
    }
    drop((a, b));

    let args = |extra: &[&str]| daemon_args(&dir.path().join("c"), &endpoints, &prefix, extra);
    let wrong_ca = path(&other.path("ca.pem"));
    refused(
        &args(&[
            "--etcd-ca",
            &wrong_ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
        ]),
        &[],
        &[
            "invalid peer certificate",
            "etcd's server certificate does not verify against --etcd-ca",
        ],
    );
    refused(
        &args(&["--etcd-ca", &ca]),
        &[],
        &["wants a client certificate: give --etcd-cert and --etcd-key"],
    );
    refused(
        &args(&[
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &path(&other.path("consentd.pem")),
            "--etcd-key",
            &path(&other.path("consentd.key")),
        ]),
        &[],
        &["refused the client certificate of --etcd-cert"],
    );
    // Bad files: named, with what is wrong with them.
    refused(
        &args(&["--etcd-ca", &cert, "--etcd-cert", &cert, "--etcd-key", &ca]),
        &[],
        &["etcd client key", "ca.pem", "no PEM private key"],
    );
    refused(
        &args(&["--etcd-ca", "/nonexistent/ca.pem"]),
        &[],
        &["etcd CA /nonexistent/ca.pem"],
    );
    // http:// endpoints of a TLS cluster, and https:// without a CA.
    let plain: Vec<String> = endpoints
        .iter()
        .map(|e| e.replace("https://", "http://"))
        .collect();
    let mut no_ca = daemon_args(&dir.path().join("c"), &endpoints, &prefix, &[]);
    refused(&no_ca, &[], &["https:// etcd endpoints need --etcd-ca"]);
    no_ca = daemon_args(&dir.path().join("c"), &plain, &prefix, &["--etcd-ca", &ca]);
    refused(&no_ca, &[], &["are for https:// endpoints"]);
}

/// etcd with authentication on (a root user, and a `consentd` user whose
/// role may read and write the store's prefix only) and auth tokens that
/// expire after 2 idle seconds: daemons given the password by file and by
/// environment serve writes and Watch, and go on doing so after their
/// tokens expired; a wrong password, or a user without access to the
/// prefix, stops the daemon at start with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and the etcd feature: scripts/test runs it (--ignored etcd)"]
async fn etcd_auth_user_password_and_token_expiry() {
    let _heavy = heavy().await;
    const TTL: Duration = Duration::from_secs(2);
    let cluster = start(Options {
        auth_token_ttl: Some(TTL.as_secs()),
        ..Options::default()
    });
    let endpoints = cluster.endpoints();
    let prefix = fresh_prefix();
    {
        let mut etcd = EtcdClient::connect(&endpoints, None).await.unwrap();
        etcd.user_add("root", "rootpw", None).await.unwrap();
        etcd.role_add("root").await.unwrap();
        etcd.user_grant_role("root", "root").await.unwrap();
        etcd.role_add("consentd").await.unwrap();
        etcd.role_grant_permission(
            "consentd",
            Permission::read_write(prefix.as_str()).with_prefix(),
        )
        .await
        .unwrap();
        etcd.user_add("consentd", "s3cret pw", None).await.unwrap();
        etcd.user_grant_role("consentd", "consentd").await.unwrap();
        etcd.user_add("stranger", "pw", None).await.unwrap();
        etcd.auth_enable().await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret pw\n").unwrap();
    let password_file = password_file.to_str().unwrap();

    let a = spawn(
        &daemon_args(
            &dir.path().join("a"),
            &endpoints,
            &prefix,
            &[
                "--etcd-user",
                "consentd",
                "--etcd-password-file",
                password_file,
            ],
        ),
        &[],
    );
    let b = spawn(
        &daemon_args(
            &dir.path().join("b"),
            &endpoints,
            &prefix,
            &["--etcd-user", "consentd"],
        ),
        &[("CONSENTD_ETCD_PASSWORD", "s3cret pw")],
    );
    assert!(
        !a.log().contains("s3cret") && !b.log().contains("s3cret"),
        "the password is never logged"
    );
    let clients = [client_of(&a).await, client_of(&b).await];
    clients[0].register(location_app("wxsec")).await;
    let watch = collect(clients[1].watch(from(0)).await.unwrap());
    let mut acked = answer(&clients[0], "u1", "scope.camera").await;
    acked.extend(answer(&clients[1], "u2", "scope.camera").await);
    // Idle past the tokens' lifetime (twice, to be sure): every token the
    // daemons hold has expired; writes and the watch go on.
    tokio::time::sleep(TTL * 2 + Duration::from_secs(1)).await;
    acked.extend(answer(&clients[0], "u1", "scope.record").await);
    acked.extend(answer(&clients[1], "u2", "scope.record").await);
    tokio::time::sleep(TTL * 2 + Duration::from_secs(1)).await;
    acked.extend(answer(&clients[1], "u3", "scope.camera").await);
    acked.extend(answer(&clients[0], "u3", "scope.record").await);
    let end = settle(&clients).await;
    let log = log_of(&clients[0], end).await;
    assert_eq!(
        log, acked,
        "every write, across token expiry, in the one log"
    );
    assert_eq!(
        watch.until(end).await,
        log,
        "the watch survived token expiry"
    );
    for c in &clients {
        assert_eq!(c.assert_consistent().await.revision, end);
    }
    drop((a, b));

    let args = |extra: &[&str]| daemon_args(&dir.path().join("c"), &endpoints, &prefix, extra);
    refused(
        &args(&["--etcd-user", "consentd"]),
        &[("CONSENTD_ETCD_PASSWORD", "wrong")],
        &[
            "authentication failed",
            "check --etcd-user \"consentd\" and its password",
        ],
    );
    refused(
        &args(&["--etcd-user", "stranger"]),
        &[("CONSENTD_ETCD_PASSWORD", "pw")],
        &[
            "permission denied",
            "etcd user \"stranger\" needs a role with readwrite permission",
        ],
    );
    refused(
        &args(&["--etcd-user", "consentd"]),
        &[],
        &["--etcd-user \"consentd\" needs a password"],
    );
    refused(
        &args(&[
            "--etcd-user",
            "consentd",
            "--etcd-password-file",
            "/nonexistent/pw",
        ]),
        &[],
        &["--etcd-password-file /nonexistent/pw"],
    );
}
