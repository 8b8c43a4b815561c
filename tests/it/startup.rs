//! A data dir consentd cannot use: a clear error and a non-zero exit, never a
//! silent empty store.

use std::{path::Path, process::Command};

use crate::{
    fixture::TestDaemon,
    support::child::{consentd, run},
};

/// Runs the real daemon on `data_dir`; it must exit on its own (it cannot start).
fn start_fails(data_dir: &Path) -> (i32, String) {
    let out = run(consentd()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("NO_COLOR", "1"));
    (out.code, out.stderr)
}

/// Opens a data dir a stopped daemon used. sled releases the directory's
/// lock from its own background thread after the last handle is dropped,
/// so right after a shutdown the lock can still be held for a moment.
pub(crate) fn open_when_released(data: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(data) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("data dir still locked ({e}); retrying");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open {}: {e}", data.display()),
        }
    }
}

/// A data dir holding one registered app, written by a real daemon.
async fn populated() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestDaemon::with(|c| {
        // The sled data dir itself is under test.
        *c = crate::support::on_sled(c.clone());
        c.data_dir = data.clone();
    })
    .await;
    h.client()
        .register(crate::fixture::location_app("wxkeep"))
        .await;
    h.stop().await;
    (dir, data)
}

/// The format marker of a stopped daemon's data dir.
pub(crate) fn stored_format(data: &Path) -> u64 {
    let db = open_when_released(data);
    let format = db
        .open_tree("consent")
        .unwrap()
        .get(b"m/format")
        .unwrap()
        .unwrap();
    u64::from_be_bytes(format.as_ref().try_into().unwrap())
}

#[test]
fn unusable_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for (path, needle) in [
        (file.as_path(), "cannot open the data dir"),
        (
            Path::new("/proc/consentd-test"),
            "cannot open the data dir /proc/consentd-test",
        ),
    ] {
        let (code, stderr) = start_fails(path);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_format_is_refused() {
    let (_dir, data) = populated().await;
    {
        let db = open_when_released(&data);
        db.open_tree("consent")
            .unwrap()
            .insert(b"m/format", &99u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let (code, stderr) = start_fails(&data);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "has data format 99; this consentd reads format {}",
            consentd::store::FORMAT_VERSION
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_not_served_empty() {
    for damage in ["zeroed", "truncated"] {
        let (_dir, data) = populated().await;
        let db = data.join("db");
        let len = std::fs::metadata(&db).unwrap().len() as usize;
        match damage {
            "zeroed" => std::fs::write(&db, vec![0u8; len]).unwrap(),
            _ => std::fs::write(&db, b"").unwrap(),
        }
        let (code, stderr) = start_fails(&data);
        assert_eq!(code, 2, "{damage}: {stderr}");
        assert!(
            stderr.contains("none of consentd's data could be read")
                || stderr.contains("corrupted"),
            "{damage}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_data_dir_is_migrated_and_keeps_its_data() {
    let (_dir, data) = populated().await;
    {
        let db = open_when_released(&data);
        let tree = db.open_tree("consent").unwrap();
        tree.insert(b"m/format", &1u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let h = TestDaemon::with(|c| {
        // The sled data dir itself is under test.
        *c = crate::support::on_sled(c.clone());
        c.data_dir = data.clone();
    })
    .await;
    let app = h
        .client()
        .apps()
        .get_app(consentd::pb::GetAppRequest {
            app_id: "wxkeep".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(app.app.unwrap().app_id, "wxkeep");
    h.stop().await;
    assert_eq!(stored_format(&data), consentd::store::FORMAT_VERSION);
}

/// Format 2 stored audit records as JSON; format 3 reads them as they are
/// and writes new ones in binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_2_json_audit_records_are_still_listed() {
    let (_dir, data) = populated().await;
    {
        let db = open_when_released(&data);
        let tree = db.open_tree("consent").unwrap();
        let seq = u64::from_be_bytes(
            tree.get(b"m/audit_seq")
                .unwrap()
                .unwrap()
                .as_ref()
                .try_into()
                .unwrap(),
        );
        assert_eq!(seq, 1, "registering the app is the one record");
        let json = r#"{"seq":1,"time_ms":1790000000123,"revision":1,"app":"wxkeep","user":"u-json","scope":"scope.camera","action":"ANSWERED_DENY","principal":"format-2","client":["ios","8.0.5","2.25.0"]}"#;
        tree.insert([&b"l/"[..], &1u64.to_be_bytes()].concat(), json)
            .unwrap();
        tree.insert(b"m/format", &2u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let h = TestDaemon::with(|c| {
        // The sled data dir itself is under test.
        *c = crate::support::on_sled(c.clone());
        c.data_dir = data.clone();
    })
    .await;
    // A new record after the old one, in the new encoding.
    h.client()
        .record(
            "wxkeep",
            "u-binary",
            "scope.userLocation",
            consentd::pb::Answer::Allow,
            crate::fixture::android(),
        )
        .await
        .unwrap();
    let list = |h: &TestDaemon| {
        let mut auth = h.client().auth();
        async move {
            auth.list_audit(consentd::pb::ListAuditRequest {
                app_id: "wxkeep".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records
        }
    };
    let records = list(&h).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let old = records.iter().find(|r| r.seq == 1).unwrap();
    assert_eq!(
        (
            old.user_id.as_str(),
            old.scope.as_str(),
            old.principal.as_str()
        ),
        ("u-json", "scope.camera", "format-2")
    );
    assert_eq!(old.action(), consentd::pb::AuditAction::AnsweredDeny);
    assert_eq!(old.client.as_ref().unwrap().host_version, "8.0.5");
    assert_eq!(old.time.as_ref().unwrap().seconds, 1_790_000_000);
    let new = records.iter().find(|r| r.seq == 2).unwrap();
    assert_eq!(new.action(), consentd::pb::AuditAction::AnsweredAllow);
    assert_eq!(
        (new.user_id.as_str(), new.scope.as_str()),
        ("u-binary", "scope.userLocation")
    );
    assert_eq!(new.client.as_ref().unwrap().sdk_version, "3.0.0");
    // Both still read after a restart, and the marker says the current format.
    h.stop().await;
    let h = TestDaemon::with(|c| {
        // The sled data dir itself is under test.
        *c = crate::support::on_sled(c.clone());
        c.data_dir = data.clone();
    })
    .await;
    assert_eq!(list(&h).await, records);
    h.stop().await;
    assert_eq!(stored_format(&data), consentd::store::FORMAT_VERSION);
}

/// Runs the daemon with `args` in `dir`; it must exit by itself.
fn daemon_fails_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = run(consentd()
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG"));
    (out.code, out.stderr)
}

/// One line, `consentd: ...`, exit 2, no Debug forms.
fn assert_one_clean_line(code: i32, stderr: &str) {
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "printed once: {stderr}");
    assert!(stderr.starts_with("consentd: "), "{stderr}");
    assert!(
        !stderr.contains("Os {") && !stderr.contains("kind:"),
        "Display, not Debug: {stderr}"
    );
}

#[test]
fn a_taken_port_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = daemon_fails_in(dir.path(), &["--listen", &addr, "--data-dir", "data"]);
    assert_one_clean_line(code, &stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: Address already in use")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_data_dir_says_another_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestDaemon::with(|c| {
        // The sled data dir itself is under test.
        *c = crate::support::on_sled(c.clone());
        c.data_dir = data.clone();
    })
    .await;
    let cwd = dir.path().to_owned();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        daemon_fails_in(&cwd, &["--listen", "127.0.0.1:0", "--data-dir", "data"])
    })
    .await
    .unwrap();
    h.stop().await;
    assert_one_clean_line(code, &stderr);
    // The relative --data-dir is shown as the absolute path it names.
    let absolute = dir.path().canonicalize().unwrap().join("data");
    assert!(
        stderr.contains(&format!(
            "another consentd holds this data dir {}",
            absolute.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_unix_socket_in_a_missing_directory_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let sock = format!("unix:{}/c.sock", missing.display());
    let (code, stderr) = daemon_fails_in(dir.path(), &["--listen", &sock, "--data-dir", "data"]);
    assert_one_clean_line(code, &stderr);
    assert!(
        stderr.contains(&format!("directory {} does not exist", missing.display())),
        "{stderr}"
    );
    assert!(
        !stderr.contains(".c.sock."),
        "no internal temp name: {stderr}"
    );
}

#[test]
fn bad_addresses_and_log_levels_get_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = daemon_fails_in(dir.path(), &["--metrics-listen", "9464"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("\"9464\" is not an IP address with a port (e.g. 127.0.0.1:9464"),
        "{stderr}"
    );
    let (code, stderr) = daemon_fails_in(dir.path(), &["--listen", "example.com:50051"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("e.g. 127.0.0.1:50051, [::1]:50051, localhost:50051"),
        "{stderr}"
    );
    let (code, stderr) =
        daemon_fails_in(dir.path(), &["--log-level", "loud", "--data-dir", "data"]);
    assert_one_clean_line(code, &stderr);
    assert!(
        stderr.contains("--log-level \"loud\" is not a log filter"),
        "{stderr}"
    );
}

/// A notify socket at `path`, as systemd's, that waits 20 s at most for a
/// message.
fn notify_socket(path: &Path) -> std::os::unix::net::UnixDatagram {
    let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    socket
}

/// A daemon child that reports readiness to a notify socket the test owns,
/// as systemd's `Type=notify` does.
struct Notified {
    child: std::process::Child,
    socket: std::os::unix::net::UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Notified {
    fn start(args: &[&str]) -> Notified {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = notify_socket(&path);
        let child = consentd()
            .args(args)
            .args(["--data-dir"])
            .arg(dir.path().join("data"))
            .env("NOTIFY_SOCKET", &path)
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Notified {
            child,
            socket,
            _dir: dir,
        }
    }

    fn next_message(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// SIGTERM; returns (exit code, stderr).
    fn stop(self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        assert_eq!(self.next_message().trim(), "STOPPING=1");
        let out = self.child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn readiness_is_notified_once_serving_and_localhost_is_accepted() {
    let d = Notified::start(&["--listen", "localhost:0"]);
    assert_eq!(d.next_message().trim(), "READY=1");
    let (code, stderr) = d.stop();
    assert_eq!(code, Some(0), "{stderr}");
    // localhost is the IPv4 loopback.
    assert!(
        stderr.contains("consentd serving addr=127.0.0.1:"),
        "{stderr}"
    );
}

#[test]
fn logs_have_no_colour_off_a_terminal_and_follow_log_level() {
    let d = Notified::start(&["--listen", "127.0.0.1:0"]);
    assert_eq!(d.next_message().trim(), "READY=1");
    let (_, stderr) = d.stop();
    assert!(stderr.contains("consentd serving"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "auto: no escape codes into a pipe: {stderr:?}"
    );

    let d = Notified::start(&["--listen", "127.0.0.1:0", "--log-level", "warn"]);
    assert_eq!(d.next_message().trim(), "READY=1");
    let (_, stderr) = d.stop();
    assert!(!stderr.contains(" INFO "), "{stderr}");
    assert!(
        stderr.contains(" WARN "),
        "the auth-off warning stays: {stderr}"
    );
}

/// contrib/consentd.service with its `/usr/local/bin/consentd` replaced by
/// the binary under test.
fn unit_text() -> String {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/consentd.service"),
    )
    .unwrap();
    unit.replace("/usr/local/bin/consentd", env!("CARGO_BIN_EXE_consentd"))
}

fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The unit's ExecStart, as systemd runs it: the config comes from the
/// credentials directory (readable by the transient user whatever the mode of
/// /etc/consentd/consentd.toml), with the unit's environment, and readiness
/// reaches the notify socket (Type=notify).
#[test]
fn the_systemd_unit_starts_consentd_from_its_credential_and_gets_ready() {
    let unit = unit_text();
    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    let [credential] = unit_values(&unit, "LoadCredential")[..] else {
        panic!("one LoadCredential= for the config: {unit}")
    };
    let (name, source) = credential.split_once(':').unwrap();
    assert_eq!(source, "/etc/consentd/consentd.toml");
    let [exec] = unit_values(&unit, "ExecStart")[..] else {
        panic!("one ExecStart=")
    };
    assert!(
        exec.contains(&format!("--config ${{CREDENTIALS_DIRECTORY}}/{name}")),
        "{exec}"
    );

    let credentials = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/consentd.toml"),
        credentials.path().join(name),
    )
    .unwrap();
    let exec = exec.replace(
        "${CREDENTIALS_DIRECTORY}",
        credentials.path().to_str().unwrap(),
    );
    let mut words = exec.split_whitespace();
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let socket = notify_socket(&notify);
    let mut command = Command::new(words.next().unwrap());
    command.args(words);
    for env in unit_values(&unit, "Environment") {
        let (k, v) = env.split_once('=').unwrap();
        command.env(k, v);
    }
    // The shipped config's ports and data dir, moved out of the way.
    let child = command
        .env("CONSENTD_LISTEN", "127.0.0.1:0")
        .env("CONSENTD_METRICS_LISTEN", "127.0.0.1:0")
        .env("CONSENTD_DATA_DIR", dir.path().join("data"))
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let got = socket
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        got.ok().as_deref().map(str::trim),
        Some("READY=1"),
        "{stderr}"
    );
    assert!(out.status.success(), "{stderr}");
}

/// `systemd-analyze verify` finds nothing to say about the unit. Ignored by
/// plain `cargo test`: scripts/test runs it where systemd-analyze exists.
#[test]
#[ignore = "needs systemd-analyze: scripts/test runs it where available"]
fn systemd_analyze_verifies_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consentd.service");
    std::fs::write(&path, unit_text()).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("consentd")).collect();
    assert!(about_unit.is_empty(), "{stderr}");
    // Documentation= names a file the install comment puts there.
    let unit = unit_text();
    for doc in unit_values(&unit, "Documentation") {
        let file = doc.strip_prefix("file://").expect("a file:// URL");
        assert!(
            unit.contains(&format!("install -D -m 0644 README.md {file}")),
            "{file} is installed by the comment"
        );
    }
}
