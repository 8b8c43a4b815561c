//! A data dir consentd cannot use: a clear error and a non-zero exit, never a
//! silent empty store.

use std::{path::Path, process::Command};

use crate::fixture::TestDaemon;

/// Runs the real daemon on `data_dir`; it must exit on its own (it cannot start).
fn start_fails(data_dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Opens a data dir a stopped daemon used. sled releases the directory's
/// lock from its own background thread after the last handle is dropped,
/// so right after a shutdown the lock can still be held for a moment.
fn open_when_released(data: &Path) -> sled::Db {
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
    let h = TestDaemon::with(|c| c.data_dir = data.clone()).await;
    h.client()
        .register(crate::fixture::location_app("wxkeep"))
        .await;
    h.stop().await;
    (dir, data)
}

/// The format marker of a stopped daemon's data dir.
fn stored_format(data: &Path) -> u64 {
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
        assert_eq!(code, 1, "{stderr}");
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
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("has data format 99; this consentd reads format 3"),
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
        assert_eq!(code, 1, "{damage}: {stderr}");
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
    let h = TestDaemon::with(|c| c.data_dir = data.clone()).await;
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
    assert_eq!(stored_format(&data), 3);
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
    let h = TestDaemon::with(|c| c.data_dir = data.clone()).await;
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
    // Both still read after a restart, and the marker says format 3.
    h.stop().await;
    let h = TestDaemon::with(|c| c.data_dir = data.clone()).await;
    assert_eq!(list(&h).await, records);
    h.stop().await;
    assert_eq!(stored_format(&data), 3);
}
