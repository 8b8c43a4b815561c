//! The real `consentctl` binary against a real daemon: tables, JSON, exit
//! codes, and the watch tail resuming across a daemon restart.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::Stdio,
};

use serde_json::Value;

use crate::{
    fixture::TestDaemon,
    support::child::{consentctl, run, Run},
};

/// A 64-bit number of the canonical JSON mapping (a string).
fn num(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a 64-bit number: {v}"))
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", self.stdout))
    }
}

async fn ctl(addr: SocketAddr, args: &[&str]) -> Run {
    let mut command = consentctl();
    command.arg("--addr").arg(addr.to_string()).args(args);
    tokio::task::spawn_blocking(move || run(&mut command))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_authorize_record_and_settings() {
    let h = TestDaemon::start().await;
    let addr = h.addr();
    let reg = ctl(
        addr,
        &[
            "--json",
            "apps",
            "register",
            "wxdemo",
            "--kind",
            "mini-program",
            "--permission",
            "scope.userLocation=to find shops",
            "--background-mode",
            "location",
            "--private-info",
            "getLocation",
        ],
    )
    .await;
    assert_eq!(reg.code, 0, "{}", reg.stderr);
    let app = reg.json();
    assert_eq!(app["app"]["kind"], "APP_KIND_MINI_PROGRAM");
    assert_eq!(
        app["app"]["permission"]["scope.userLocation"]["desc"],
        "to find shops"
    );
    assert_eq!(app["app"]["requiredPrivateInfos"][0], "getLocation");

    let table = ctl(addr, &["apps", "get", "wxdemo"]).await;
    assert_eq!(table.code, 0);
    assert!(
        table.stdout.contains("MINI_PROGRAM")
            && table.stdout.contains("scope.userLocation  to find shops"),
        "{}",
        table.stdout
    );

    let ask = ctl(
        addr,
        &["--json", "authorize", "wxdemo", "u1", "scope.userLocation"],
    )
    .await;
    assert_eq!(
        (
            ask.json()["decision"]["outcome"].as_str(),
            ask.json()["decision"]["prompt"]["appDesc"].as_str()
        ),
        (Some("OUTCOME_PROMPT"), Some("to find shops"))
    );
    let old = ctl(
        addr,
        &[
            "--json",
            "authorize",
            "wxdemo",
            "u1",
            "scope.userLocationBackground",
            "--platform",
            "ios",
            "--host-version",
            "7.0.20",
        ],
    )
    .await;
    assert_eq!(
        old.json()["decision"]["outcome"],
        "OUTCOME_SETTINGS_REQUIRED"
    );

    let rec = ctl(
        addr,
        &[
            "--json",
            "record",
            "wxdemo",
            "u1",
            "scope.userLocation",
            "allow",
        ],
    )
    .await;
    assert_eq!(rec.json()["errMsg"], "authorize:ok");
    assert_eq!(
        rec.json()["changes"][0]["newState"],
        "DECISION_STATE_GRANTED"
    );
    let check = ctl(
        addr,
        &["--json", "check-api", "wxdemo", "u1", "wx.getLocation"],
    )
    .await;
    assert_eq!(
        (
            check.json()["outcome"].as_str(),
            check.json()["errMsg"].as_str()
        ),
        (Some("OUTCOME_GRANTED"), Some("getLocation:ok"))
    );

    let up = ctl(
        addr,
        &[
            "--json",
            "update-settings",
            "wxdemo",
            "u1",
            "--location",
            "always",
        ],
    )
    .await;
    assert_eq!(up.code, 0, "{}", up.stderr);
    assert_eq!(
        up.json()["authSetting"],
        serde_json::json!({"scope.userLocation": true, "scope.userLocationBackground": true})
    );
    let settings = ctl(addr, &["settings", "wxdemo", "u1"]).await;
    assert!(
        settings
            .stdout
            .contains("scope.userLocationBackground  true"),
        "{}",
        settings.stdout
    );
    let page = ctl(addr, &["--json", "settings-page", "wxdemo", "u1"]).await;
    assert_eq!(
        page.json()["items"][0]["locationOption"],
        "LOCATION_OPTION_WHILE_USING_AND_AFTER_LEAVING"
    );

    let scopes = ctl(addr, &["--json", "scopes", "--kind", "mini-game"]).await;
    assert_eq!(scopes.json()["scopes"].as_array().unwrap().len(), 10);
    let rules = ctl(addr, &["--json", "rules"]).await;
    assert_eq!(
        rules.json()["popupRules"][0]["platforms"],
        serde_json::json!(["PLATFORM_ANDROID", "PLATFORM_IOS"])
    );
    let verify = ctl(addr, &["--json", "verify"]).await;
    assert_eq!(verify.json()["consistent"], true);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_2_with_the_status_and_a_hint() {
    let h = TestDaemon::start().await;
    let missing = ctl(h.addr(), &["authorize", "nope", "u1", "scope.camera"]).await;
    assert_eq!(missing.code, 2);
    assert!(
        missing
            .stderr
            .contains(r#"error: NotFound: app "nope" is not registered"#),
        "{}",
        missing.stderr
    );
    let bad = ctl(h.addr(), &["record", "nope", "u1", "scope.camera", "maybe"]).await;
    assert_eq!(bad.code, 2, "clap rejects unknown answers");
    assert!(
        bad.stderr.contains("invalid value 'maybe'"),
        "{}",
        bad.stderr
    );
    let addr = h.addr();
    h.stop().await;
    let down = ctl(addr, &["rules"]).await;
    assert_eq!(down.code, 2);
    assert!(
        down.stderr.starts_with("error: Unavailable: ")
            && down
                .stderr
                .contains(&format!("hint: is consentd running at {addr}?")),
        "{}",
        down.stderr
    );
}

/// The next JSON line the tail printed.
async fn next(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.recv())
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tails_and_resumes_across_a_restart() {
    let mut h = TestDaemon::start().await;
    let c = h.client();
    c.register(crate::fixture::location_app("wxloc")).await;
    c.answer("wxloc", "u1", "scope.camera", consentd::pb::Answer::Allow)
        .await;
    // A fixed port, so the tail can reconnect to the restarted daemon.
    let addr = h.addr();
    let mut tail = consentctl()
        .args([
            "--addr",
            &addr.to_string(),
            "--json",
            "watch",
            "--from",
            "0",
            "--app",
            "wxloc",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    assert_eq!(next(&mut lines).await["revision"], "2");
    h.take().shutdown().await.unwrap();
    // Same port again: the tail's retries reach the new daemon.
    h.start_again_at(addr).await;
    let c = h.client();
    c.answer("wxloc", "u2", "scope.record", consentd::pb::Answer::Deny)
        .await;
    let event = next(&mut lines).await;
    assert_eq!(
        (
            event["revision"].as_str(),
            event["userId"].as_str(),
            event["newState"].as_str()
        ),
        (Some("3"), Some("u2"), Some("DECISION_STATE_DENIED"))
    );
    tail.kill().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut stderr).unwrap();
    tail.wait().unwrap();
    assert!(stderr.contains("resuming from revision 2"), "{stderr}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_apps_from_their_app_json() {
    let h = TestDaemon::start().await;
    let addr = h.addr();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let app_json = write(
        "app.json",
        r#"{"pages": ["pages/index/index"], "window": {"navigationBarTitleText": "Demo"},
            "permission": {"scope.userLocation": {"desc": "to show shops near you"}},
            "requiredBackgroundModes": ["location", "audio"],
            "requiredPrivateInfos": ["getLocation", "chooseAddress"]}"#,
    );
    let reg = ctl(
        addr,
        &[
            "--json",
            "apps",
            "register",
            "wxdemo",
            "--app-json",
            &app_json,
        ],
    )
    .await;
    assert_eq!(reg.code, 0, "{}", reg.stderr);
    let app = &reg.json()["app"];
    assert_eq!(app["kind"], "APP_KIND_MINI_PROGRAM");
    assert_eq!(
        app["permission"]["scope.userLocation"]["desc"],
        "to show shops near you"
    );
    assert_eq!(
        app["requiredBackgroundModes"],
        serde_json::json!(["audio", "location"])
    );

    // Registering the same app from an edited file updates it.
    let edited = write(
        "app2.json",
        r#"{"requiredPrivateInfos": ["getFuzzyLocation"], "permission": {"scope.userFuzzyLocation": {"desc": "city"}}}"#,
    );
    let again = ctl(
        addr,
        &[
            "--json",
            "apps",
            "register",
            "wxdemo",
            "--app-json",
            &edited,
        ],
    )
    .await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.json()["app"]["requiredPrivateInfos"],
        serde_json::json!(["getFuzzyLocation"])
    );
    assert!(num(&again.json()["app"]["revision"]) > num(&app["revision"]));

    let game = write(
        "game.json",
        r#"{"deviceOrientation": "portrait", "permission": {"scope.userLocation": {"desc": "leaderboards"}}}"#,
    );
    let reg = ctl(
        addr,
        &["--json", "apps", "register", "wxgame", "--game-json", &game],
    )
    .await;
    assert_eq!(
        reg.json()["app"]["kind"],
        "APP_KIND_MINI_GAME",
        "{}",
        reg.stderr
    );

    // Invalid files are refused before anything is sent, naming the app.json field.
    let cases = [
        (
            "bad1.json",
            r#"{"requiredPrivateInfos": ["getFuzzyLocation", "getLocation"]}"#,
            "requiredPrivateInfos declares getFuzzyLocation together with getLocation",
        ),
        (
            "bad2.json",
            r#"{"requiredPrivateInfos": ["getlocation"]}"#,
            "requiredPrivateInfos contains unknown value \"getlocation\"",
        ),
        (
            "bad3.json",
            r#"{"requiredBackgroundModes": "location"}"#,
            "requiredBackgroundModes must be an array of strings",
        ),
        (
            "bad4.json",
            r#"{"permission": {"scope.userLocation": "nearby"}}"#,
            "permission[\"scope.userLocation\"] needs a string \"desc\"",
        ),
        (
            "bad5.json",
            r#"{"permission": {"scope.nope": {"desc": "x"}}}"#,
            "permission \"scope.nope\" is not a known scope",
        ),
        ("bad6.json", "{ not json", "is not valid JSON"),
    ];
    for (name, text, needle) in cases {
        let path = write(name, text);
        let run = ctl(addr, &["apps", "register", "wxbad", "--app-json", &path]).await;
        assert_eq!(run.code, 2, "{name}");
        assert!(
            run.stderr.contains(needle) && run.stderr.contains(name),
            "{name}: {}",
            run.stderr
        );
    }
    let missing = ctl(
        addr,
        &[
            "apps",
            "register",
            "wxbad",
            "--app-json",
            "/nonexistent/app.json",
        ],
    )
    .await;
    assert!(
        missing.code == 2 && missing.stderr.contains("cannot read /nonexistent/app.json"),
        "{}",
        missing.stderr
    );
    assert_eq!(
        ctl(addr, &["--json", "apps", "list"]).await.json()["apps"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "nothing bad registered"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_exit_codes() {
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(crate::fixture::location_app("wxloc")).await;
    c.answer("wxloc", "u1", "scope.camera", consentd::pb::Answer::Deny)
        .await;
    let addr = h.addr();
    let explain = ctl(
        addr,
        &[
            "--json",
            "explain",
            "wxloc",
            "u2",
            "scope.userLocationBackground",
            "--platform",
            "ios",
            "--host-version",
            "7.0.20",
        ],
    )
    .await;
    assert_eq!(
        explain.code, 1,
        "SETTINGS_REQUIRED is a no: {}",
        explain.stderr
    );
    let steps = explain.json()["steps"].as_array().unwrap().clone();
    // The canonical mapping leaves `passed: false` out.
    assert_eq!(steps.last().unwrap()["gate"], 5);
    assert_eq!(steps.last().unwrap().get("passed"), None);
    assert!(steps[..steps.len() - 1].iter().all(|s| s["passed"] == true));
    assert_eq!(
        explain.json()["decision"]["rule"],
        "background-location-popup"
    );
    let table = ctl(addr, &["explain", "wxloc", "u1", "scope.camera"]).await;
    assert!(
        table.stdout.contains("the stored decision is Denied") && table.stdout.contains("DECIDES"),
        "{}",
        table.stdout
    );

    for (args, code) in [
        (vec!["authorize", "wxloc", "u1", "scope.camera"], 1),
        (vec!["authorize", "wxloc", "u2", "scope.camera"], 0),
        (vec!["authorize", "wxloc", "u2", "scope.address"], 0),
        (vec!["check-api", "wxloc", "u1", "camera"], 1),
        (vec!["check-api", "wxloc", "u2", "wx.getFuzzyLocation"], 1),
        (vec!["verify"], 0),
    ] {
        assert_eq!(ctl(addr, &args).await.code, code, "{args:?}");
    }
    let completions = ctl(addr, &["completions", "bash"]).await;
    assert!(
        completions.code == 0 && completions.stdout.contains("consentctl"),
        "{}",
        completions.stderr
    );
    let version = ctl(addr, &["--version"]).await;
    assert!(
        version
            .stdout
            .starts_with(&format!("consentctl {} (", env!("CARGO_PKG_VERSION"))),
        "{}",
        version.stdout
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_reproduces_every_answer() {
    use consentd::pb::Answer;
    let source = TestDaemon::start().await;
    let c = source.client();
    let mut pairs = Vec::new();
    for app in ["wxa", "wxb"] {
        c.register(crate::fixture::location_app(app)).await;
        for u in 0..6 {
            let user = format!("u{u}");
            match u % 3 {
                0 => drop(
                    c.answer(app, &user, "scope.userLocationBackground", Answer::Allow)
                        .await,
                ),
                1 => drop(c.answer(app, &user, "scope.camera", Answer::Deny).await),
                _ => {
                    c.answer(app, &user, "scope.record", Answer::Allow).await;
                    c.answer(app, &user, "scope.userLocation", Answer::Deny)
                        .await;
                }
            }
            pairs.push((app, user));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.jsonl");
    let dump_arg = dump.to_str().unwrap();
    let export = ctl(source.addr(), &["export", "--events", "--output", dump_arg]).await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    assert!(
        export
            .stderr
            .contains("exported 2 apps, 20 decisions, 20 events"),
        "{}",
        export.stderr
    );

    let target = TestDaemon::start().await;
    let first = ctl(target.addr(), &["--json", "import", dump_arg]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        first.json(),
        serde_json::json!({"apps": "2", "decisions": "20", "changed": "20", "revision": first.json()["revision"]})
    );
    for (app, user) in &pairs {
        assert_eq!(
            target.client().setting(app, user).await.auth_setting,
            c.setting(app, user).await.auth_setting,
            "{app} {user}"
        );
    }
    target.client().assert_consistent().await;
    // Idempotent: nothing changes the second time, not even the revision.
    let again = ctl(target.addr(), &["--json", "import", dump_arg]).await;
    assert_eq!(
        (
            again.json().get("changed"),
            again.json()["revision"].clone()
        ),
        (None, first.json()["revision"].clone())
    );

    // A damaged file is refused with the line it broke on.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"type\":\"header\",\"revision\":1,\"format\":1}\n{\"type\":\"decision\",\"app_id\":\"wxa\"}\n").unwrap();
    let refused = ctl(target.addr(), &["import", bad.to_str().unwrap()]).await;
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("line 2: not an export record"),
        "{}",
        refused.stderr
    );
    source.stop().await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_lifetimes_from_the_shell() {
    let h = TestDaemon::start().await;
    let addr = h.addr();
    let reg = ctl(
        addr,
        &["apps", "register", "wxcli", "--kind", "mini-program"],
    )
    .await;
    assert_eq!(reg.code, 0, "{}", reg.stderr);
    let rec = ctl(
        addr,
        &[
            "--json",
            "record",
            "wxcli",
            "u1",
            "scope.camera",
            "allow",
            "--session",
            "s1",
        ],
    )
    .await;
    assert_eq!(rec.code, 0, "{}", rec.stderr);
    let auth = ctl(
        addr,
        &["--json", "authorize", "wxcli", "u1", "scope.camera"],
    )
    .await;
    assert!(
        auth.stdout.contains("\"sessionId\":\"s1\""),
        "{}",
        auth.stdout
    );
    let ended = ctl(addr, &["--json", "end-session", "wxcli", "u1", "s1"]).await;
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    assert_eq!(ended.json()["changes"][0]["cause"], "CAUSE_EXPIRED");

    let audit = ctl(addr, &["--json", "audit", "wxcli", "--user", "u1"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let actions: Vec<String> = audit.json()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        [
            "AUDIT_ACTION_ANSWERED_ALLOW",
            "AUDIT_ACTION_SESSION_ENDED",
            "AUDIT_ACTION_EXPIRED"
        ]
    );
    let table = ctl(addr, &["audit", "wxcli"]).await;
    assert!(
        table.stdout.contains("OPERATOR_REGISTER_APP") && table.stdout.contains("ANSWERED_ALLOW"),
        "{}",
        table.stdout
    );
    h.stop().await;
}

/// A dump keeps each app's privacy guide: importing it elsewhere gives the
/// app the same guide (and the same version), not an app without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_keeps_privacy_guides() {
    let source = TestDaemon::start().await;
    let guided = consentd::pb::App {
        privacy: Some(consentd::pb::PrivacyGuide {
            name: "Shop Privacy Guide".into(),
            info_types: vec!["location".into(), "camera".into()],
            version: 0,
        }),
        ..crate::fixture::location_app("wxguided")
    };
    source.client().register(guided).await;
    source
        .client()
        .register(crate::fixture::location_app("wxplain"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.jsonl");
    let dump_arg = dump.to_str().unwrap();
    let export = ctl(source.addr(), &["export", "--output", dump_arg]).await;
    assert_eq!(export.code, 0, "{}", export.stderr);

    let target = TestDaemon::start().await;
    let import = ctl(target.addr(), &["import", dump_arg]).await;
    assert_eq!(import.code, 0, "{}", import.stderr);
    for app_id in ["wxguided", "wxplain"] {
        let (kept, before) = (guide(&target, app_id).await, guide(&source, app_id).await);
        assert_eq!(kept, before, "{app_id}");
    }
    let kept = guide(&target, "wxguided").await;
    assert_eq!(
        kept.expect("the guide survives").info_types,
        ["location", "camera"]
    );
    source.stop().await;
    target.stop().await;
}

async fn guide(h: &TestDaemon, app_id: &str) -> Option<consentd::pb::PrivacyGuide> {
    let request = consentd::pb::GetAppRequest {
        app_id: app_id.into(),
    };
    let app = h.client().apps().get_app(request).await.unwrap();
    app.into_inner().app.unwrap().privacy
}

/// Runs consentctl with stdout read by a reader that has already gone away
/// (`| head` that exited): the first write gets EPIPE.
fn closed_stdout(args: &[&str]) -> (i32, String) {
    let mut child = consentctl()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_quietly_not_in_a_panic() {
    let (code, stderr) = closed_stdout(&["completions", "bash"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "completions");
    let (code, stderr) = closed_stdout(&["token", "new"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "token new");

    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(crate::fixture::location_app("wxpipe")).await;
    c.answer("wxpipe", "u1", "scope.camera", consentd::pb::Answer::Allow)
        .await;
    let addr = h.addr().to_string();
    let (code, stderr) = closed_stdout(&["--addr", &addr, "scopes"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "a table");
    // `watch --json | head -1`: the tail reads one event, then the reader
    // leaves; the next event ends the tail cleanly.
    let mut tail = consentctl()
        .args(["--addr", &addr, "--json", "watch", "--from", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(tail.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("wxpipe"), "{first}");
    c.answer("wxpipe", "u2", "scope.camera", consentd::pb::Answer::Deny)
        .await;
    let out = tokio::task::spawn_blocking(move || tail.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_against_a_wrong_address_hints_and_backs_off_with_jitter() {
    // A port nothing listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut tail = consentctl()
        .args(["--addr", &addr.to_string(), "watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = tail.stderr.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take(5)
            .collect::<Vec<String>>()
    })
    .await
    .unwrap();
    tail.kill().unwrap();
    tail.wait().unwrap();
    let text = lines.join("\n");
    assert!(
        lines[1] == format!("hint: is consentd running at {addr}?"),
        "the hint follows the first failure:\n{text}"
    );
    assert_eq!(text.matches("hint:").count(), 1, "once per outage:\n{text}");
    // Delays grow from 0.2 s, each with its own jitter: not the fixed
    // 0.2, 0.4, 0.8 s of a plain doubling.
    let delays: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.rsplit_once(" in ")?.1.strip_suffix('s')?.parse().ok())
        .collect();
    assert_eq!(delays.len(), 4, "{text}");
    assert!(delays.iter().all(|d| (0.2..=10.0).contains(d)), "{text}");
    assert_ne!(delays[..3], [0.2, 0.4, 0.8], "jittered:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_health_and_the_connection_conventions() {
    let h = TestDaemon::start().await;
    let addr = h.addr().to_string();
    let version = ctl(h.addr(), &["version"]).await;
    assert_eq!(version.code, 0, "{}", version.stderr);
    assert_eq!(
        version.stdout,
        format!("consentctl {v}\nconsentd   {v}\n", v = consentd::VERSION),
    );
    let health = ctl(h.addr(), &["--json", "health"]).await;
    assert_eq!(
        (health.code, health.json()["status"].as_str()),
        (0, Some("SERVING"))
    );
    let unknown = ctl(h.addr(), &["health", "--service", "no.such.Service"]).await;
    assert_eq!(unknown.code, 2, "NOT_FOUND is an error: {}", unknown.stderr);

    // Every connection flag has a CONSENTCTL_ variable.
    let out = consentctl()
        .args(["--json", "health"])
        .env("CONSENTCTL_ADDR", &addr)
        .env("CONSENTCTL_TIMEOUT", "5")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = consentctl().args(["authorize", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let connection = help
        .split("Connection:")
        .nth(1)
        .expect("a Connection heading");
    for flag in [
        "addr",
        "token",
        "tls-ca",
        "tls-cert",
        "tls-key",
        "tls-domain",
        "timeout",
    ] {
        let env = format!("CONSENTCTL_{}", flag.to_uppercase().replace('-', "_"));
        assert!(connection.contains(&format!("--{flag}")), "{flag}: {help}");
        assert!(connection.contains(&env), "{env}: {help}");
    }
    assert!(
        help.contains("<SCOPE>  The scope"),
        "positionals are described: {help}"
    );
    // The offline commands show no connection flags.
    for command in [&["completions", "--help"][..], &["token", "new", "--help"]] {
        let out = consentctl().args(command).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !help.contains("--addr"),
            "{command:?}: {help}"
        );
    }
    // --timeout 0 could never succeed.
    let zero = ctl(h.addr(), &["--timeout", "0", "rules"]).await;
    assert_eq!(zero.code, 2);
    assert!(
        zero.stderr.contains("0 would let no call finish"),
        "{}",
        zero.stderr
    );
    h.stop().await;
}

#[test]
fn man_pages_come_from_the_same_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let out = consentctl().arg("man").arg(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let main = std::fs::read_to_string(dir.path().join("consentctl.1")).unwrap();
    assert!(
        main.contains("consentctl") && main.contains("authorize"),
        "{main}"
    );
    let page = std::fs::read_to_string(dir.path().join("consentctl-authorize.1")).unwrap();
    assert!(
        page.contains("CONSENTCTL_ADDR") || page.contains("\\-\\-addr"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_scope_or_interface_suggests_the_near_one() {
    let h = TestDaemon::start().await;
    h.client()
        .register(crate::fixture::location_app("wxnear"))
        .await;
    let scope = ctl(h.addr(), &["authorize", "wxnear", "u1", "camera"]).await;
    assert_eq!(scope.code, 2);
    assert!(
        scope.stderr.contains(r#"did you mean "scope.camera"?"#)
            && scope.stderr.contains("`consentctl scopes`"),
        "{}",
        scope.stderr
    );
    let api = ctl(h.addr(), &["check-api", "wxnear", "u1", "getLocation"]).await;
    assert_eq!(api.code, 2);
    assert!(
        api.stderr.contains(r#"did you mean "wx.getLocation"?"#)
            && api.stderr.contains("`consentctl scopes`"),
        "{}",
        api.stderr
    );
    h.stop().await;
}

#[test]
fn token_new_prints_256_random_bits_and_their_digest() {
    let run = || {
        let out = consentctl().args(["token", "new"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    let token = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("token        = "))
            .unwrap()
            .to_owned()
    };
    let t = token(&a);
    assert_eq!(t.len(), 64, "{a}");
    assert!(t.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(t, token(&b), "fresh randomness each time");
    assert!(
        a.contains(&format!(
            "token_sha256 = \"{}\"",
            consentd::auth::hash_token(&t)
        )),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_fit_100_columns_and_hide_empty_rows() {
    let h = TestDaemon::start().await;
    h.client()
        .register(crate::fixture::location_app("wxwide"))
        .await;
    for args in [
        &["scopes"][..],
        &["rules"],
        &["check-api", "wxwide", "u1", "live-pusher"],
        &["explain", "wxwide", "u1", "scope.userLocationBackground"],
        &["apps", "list"],
    ] {
        let run = ctl(h.addr(), args).await;
        assert!(run.code <= 1, "{args:?}: {}", run.stderr);
        let widest = run
            .stdout
            .lines()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0);
        assert!(widest <= 100, "{args:?}: {widest} columns:\n{}", run.stdout);
        // No key without a value, no column without a value.
        assert!(
            run.stdout
                .lines()
                .all(|l| !l.trim_start().starts_with("rule ") && l.trim() != "rule"),
            "{args:?}: an empty rule is shown:\n{}",
            run.stdout
        );
    }
    let scopes = ctl(h.addr(), &["scopes"]).await;
    assert!(
        scopes.stdout.contains("  scope.userLocation\n")
            && scopes
                .stdout
                .contains("interfaces                wx.getLocation, "),
        "{}",
        scopes.stdout
    );
    h.stop().await;
}
