//! Security through the real binaries: consentd reloading its credentials
//! on SIGHUP and logging refusals by principal (never by token), refusing
//! an exposed listener at start, and consentctl over a unix socket, TLS and
//! mTLS with --token / CONSENTCTL_TOKEN.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use consentd::auth::hash_token;

use crate::{
    fixture::TestDaemon,
    security::{token_of, write_credentials, Pki},
    support::child::{
        consentctl, consentd, run, run_consentctl, spawn_consentd, spawn_consentd_under, Run,
    },
};

fn ctl(args: &[&str], token: Option<&str>) -> Run {
    let env: Vec<(&str, &str)> = token.map(|t| ("CONSENTCTL_TOKEN", t)).into_iter().collect();
    run_consentctl(args, &env)
}

#[test]
fn sighup_reloads_credentials_and_refusals_are_logged_by_principal_only() {
    let dir = tempfile::tempdir().unwrap();
    let creds = write_credentials(dir.path(), "");
    let sock = dir.path().join("consentd.sock");
    let unix = format!("unix:{}", sock.display());
    let data = dir.path().join("data");
    let mut daemon = spawn_consentd(
        &[
            "--listen",
            &unix,
            "--data-dir",
            data.to_str().unwrap(),
            "--credentials",
            creds.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!daemon.log().contains("AUTHENTICATION IS OFF"));

    let observer = token_of("all-observer");
    let ops = token_of("ops");
    let ok = ctl(&["--addr", &unix, "rules"], Some(&observer));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let denied = ctl(&["--addr", &unix, "compact"], Some(&observer));
    assert_eq!(denied.code, 2);
    assert!(
        denied.stderr.contains("PermissionDenied"),
        "{}",
        denied.stderr
    );
    assert!(
        denied.stderr.contains("may not call Compact"),
        "{}",
        denied.stderr
    );
    let unknown = ctl(&["--addr", &unix, "rules"], Some("guessed-token-0000"));
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("Unauthenticated"),
        "{}",
        unknown.stderr
    );
    let missing = ctl(&["--addr", &unix, "rules"], None);
    assert!(
        missing.stderr.contains("missing credentials"),
        "{}",
        missing.stderr
    );
    assert_eq!(ctl(&["--addr", &unix, "compact"], Some(&ops)).code, 0);

    let refusal = daemon.wait_for("permission denied");
    assert!(
        refusal.contains("principal \\\"all-observer\\\""),
        "{refusal}"
    );
    daemon.wait_for("unauthenticated call refused");

    // Rotate the observer's token and reload with SIGHUP.
    let rotated = "rotated-observer-token-42";
    let text = std::fs::read_to_string(&creds)
        .unwrap()
        .replace(&hash_token(&observer), &hash_token(rotated));
    std::fs::write(&creds, text).unwrap();
    daemon.signal("HUP");
    daemon.wait_for("credentials reloaded");
    assert_eq!(ctl(&["--addr", &unix, "rules"], Some(rotated)).code, 0);
    assert_eq!(ctl(&["--addr", &unix, "rules"], Some(&observer)).code, 2);

    // A broken file on SIGHUP: logged, and the old credentials stay.
    std::fs::write(&creds, "not toml [").unwrap();
    daemon.signal("HUP");
    daemon.wait_for("credentials reload failed");
    assert_eq!(ctl(&["--addr", &unix, "rules"], Some(rotated)).code, 0);

    daemon.signal("TERM");
    assert!(daemon.wait().success());
    daemon.wait_for("shutdown complete");
    assert!(!sock.exists(), "the socket is removed on shutdown");
    let log = daemon.log();
    for secret in [
        observer.as_str(),
        ops.as_str(),
        rotated,
        "guessed-token-0000",
    ] {
        assert!(!log.contains(secret), "the log shows a token: {log}");
    }
}

#[test]
fn an_exposed_listener_without_credentials_and_tls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(consentd()
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data")));
    let stderr = out.stderr;
    assert_eq!(out.code, 2, "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without credentials and TLS"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
}

fn tls_args<'a>(pki: &'a Pki, addr: &'a str, client: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--addr".to_string(),
        addr.to_string(),
        "--tls-ca".into(),
        pki.path("ca.pem").display().to_string(),
        "--tls-domain".into(),
        "localhost".into(),
    ];
    if let Some(name) = client {
        args.push("--tls-cert".into());
        args.push(pki.path(&format!("{name}.pem")).display().to_string());
        args.push("--tls-key".into());
        args.push(pki.path(&format!("{name}.key")).display().to_string());
    }
    args
}

async fn ctl_async(args: Vec<String>, token: Option<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl(&args, token.as_deref())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consentctl_speaks_tls_and_mtls() {
    let pki = Pki::new("ctl");
    let files = pki.server_files(true);
    pki.issue("ops-client", "ops-cert", &[]);
    let dir = tempfile::tempdir().unwrap();
    let creds = write_credentials(
        dir.path(),
        "[[principal]]\nname = \"ops-by-cert\"\nrole = \"operator\"\ncert_subject = \"ops-cert\"\n",
    );
    let h = TestDaemon::with_unconnected(|c| {
        c.credentials = Some(creds);
        c.tls = Some(files);
    })
    .await;
    let addr: SocketAddr = h.addr();
    let addr = addr.to_string();

    // The client certificate alone authenticates.
    let mut args = tls_args(&pki, &addr, Some("ops-client"));
    args.extend([
        "--json".into(),
        "apps".into(),
        "register".into(),
        "wxtls".into(),
    ]);
    args.extend(["--kind".into(), "mini-program".into()]);
    let reg = ctl_async(args, None).await;
    assert_eq!(reg.code, 0, "{}", reg.stderr);
    assert!(reg.stdout.contains("wxtls"), "{}", reg.stdout);

    // No client certificate: the handshake is refused. (Depending on timing
    // the client sees the server's alert, and then hints at it, or only the
    // connection closing: a transport error or a cancelled call.)
    let mut args = tls_args(&pki, &addr, None);
    args.push("rules".into());
    let refused = ctl_async(args, Some(token_of("ops"))).await;
    assert_eq!(
        refused.code, 2,
        "stdout {} stderr {}",
        refused.stdout, refused.stderr
    );
    assert!(
        [
            "requires a client certificate",
            "transport error",
            "Cancelled"
        ]
        .iter()
        .any(|m| refused.stderr.contains(m)),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);

    // Certificate and token: the token names the principal.
    let mut args = tls_args(&pki, &addr, Some("ops-client"));
    args.push("compact".into());
    let observer = ctl_async(args, Some(token_of("all-observer"))).await;
    assert_eq!(observer.code, 2);
    assert!(
        observer.stderr.contains("all-observer"),
        "{}",
        observer.stderr
    );
    h.stop().await;
}

#[test]
fn token_new_and_hash_agree_with_the_daemon() {
    let new = ctl(&["token", "new"], None);
    assert_eq!(new.code, 0, "{}", new.stderr);
    let token = new
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token        = "))
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 64);
    assert!(new
        .stdout
        .contains(&format!("token_sha256 = \"{}\"", hash_token(&token))));

    let mut hash = consentctl()
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    hash.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let out = hash.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "token_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\""
    );
}

/// Finding 3: under a 128-file limit, idle TCP connections without
/// credentials used to exhaust the descriptors (`accept failed ... Too many
/// open files`) and lock the operator out. Now the connection caps stay
/// below the limit and refused connections are closed at once: the
/// operator still gets in over the unix socket, and accept never fails.
#[test]
fn idle_connections_cannot_exhaust_file_descriptors() {
    std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .expect("this test needs prlimit (util-linux)");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("consentd.sock");
    let unix = format!("unix:{}", sock.display());
    let data = dir.path().join("data");
    let daemon = spawn_consentd_under(
        &["prlimit", "--nofile=128:128", "--"],
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            &unix,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let addr = daemon.addr();
    let mut held = Vec::new();
    for _ in 0..140 {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => held.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let ok = ctl(&["--addr", &unix, "rules"], None);
    assert_eq!(ok.code, 0, "the operator is locked out: {}", ok.stderr);
    let lowered = daemon.wait_for("connection caps lowered");
    assert!(lowered.contains("\"max_connections\":64"), "{lowered}");
    daemon.wait_for("connection refused");
    let log = daemon.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    // Refusals are logged, but not one line per connection.
    let refused = log.matches("connection refused").count();
    assert!((1..=25).contains(&refused), "{refused} refusal lines");
    drop(held);
}

/// Finding 8: refusals are logged with the principal and the peer, and a
/// flood of them does not become a flood of log lines: a burst, then what
/// was held back is counted on the next line.
#[test]
fn refusal_logs_name_the_peer_and_are_rate_limited() {
    use consentd::pb::{self, authorization_client::AuthorizationClient};
    let dir = tempfile::tempdir().unwrap();
    let creds = write_credentials(dir.path(), "");
    let data = dir.path().join("data");
    let daemon = spawn_consentd(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--credentials",
            creds.to_str().unwrap(),
        ],
        &[],
    );
    let addr = daemon.addr();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let call = |token: &str| {
        let token = token.to_owned();
        runtime.block_on(async move {
            let channel = crate::fixture::connect(addr).await;
            let mut client = AuthorizationClient::new(channel);
            let mut request = tonic::Request::new(pb::ListScopesRequest::default());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            usize::from(client.list_scopes(request).await.is_err())
        })
    };
    // A runtime may not list scopes: the line names principal and peer.
    assert_eq!(call(&token_of("shop-runtime")), 1);
    let denied = daemon.wait_for("permission denied");
    assert!(
        denied.contains("\"principal\":\"shop-runtime\""),
        "{denied}"
    );
    assert!(denied.contains("\"peer\":\"127.0.0.1:"), "{denied}");
    // A refusal by the app binding (decided in the handler) is logged the
    // same way.
    let bound = runtime.block_on(async move {
        let channel = crate::fixture::connect(addr).await;
        let mut client = AuthorizationClient::new(channel);
        let mut request = tonic::Request::new(pb::GetSettingRequest {
            app_id: "wxother".into(),
            user_id: "u1".into(),
        });
        let token = token_of("shop-runtime");
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        client.get_setting(request).await.unwrap_err()
    });
    assert_eq!(bound.code(), tonic::Code::PermissionDenied, "{bound:?}");
    let by_binding = daemon.wait_for("\"rpc\":\"GetSetting\"");
    assert!(by_binding.contains("permission denied"), "{by_binding}");
    assert!(by_binding.contains("wxother"), "{by_binding}");
    assert!(by_binding.contains("\"peer\":\"127.0.0.1:"), "{by_binding}");
    // 300 unknown tokens.
    let started = std::time::Instant::now();
    let flood = runtime.block_on(async move {
        let channel = crate::fixture::connect(addr).await;
        let mut client = AuthorizationClient::new(channel);
        let mut refused = 0;
        for i in 0..300 {
            let mut request = tonic::Request::new(pb::ListScopesRequest::default());
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer guessed-{i}-0123456789").parse().unwrap(),
            );
            refused += usize::from(client.list_scopes(request).await.is_err());
        }
        refused
    });
    assert_eq!(flood, 300);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(call("one-more-guess-0123456789"), 1);
    std::thread::sleep(Duration::from_millis(300));
    let elapsed = started.elapsed().as_secs();
    let log = daemon.log();
    let summary = log
        .lines()
        .rev()
        .find(|l| l.contains("unauthenticated call refused"))
        .expect("refusals are logged")
        .to_owned();
    assert!(
        summary.contains("\"suppressed\":"),
        "no count of suppressed lines: {summary}"
    );
    // Every refusal is either a line or counted in a later line's
    // `suppressed`; lines come at most in a burst of 20, then 1 a second
    // (however long the flood took on a loaded machine).
    let suppressed: u64 = log
        .lines()
        .filter_map(|l| l.split("\"suppressed\":").nth(1))
        .filter_map(|rest| rest.split([',', '}']).next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    let lines = log.matches("unauthenticated call refused").count() as u64;
    assert!(
        lines + suppressed >= 301,
        "{lines} lines and {suppressed} held back for 301 refused calls"
    );
    assert!(
        (2..=22 + elapsed).contains(&lines),
        "{lines} WARN lines for 301 refused calls in {elapsed} s"
    );
    assert!(daemon.log().contains("\"peer\":\"127.0.0.1:"));
}
