//! A full disk: writes fail with RESOURCE_EXHAUSTED and a clear message,
//! reads keep working, nothing is corrupted, and writes succeed again once
//! space is freed. Needs to mount a small tmpfs (root): the harness reports
//! it ignored, with the reason, where it cannot.

use std::{path::PathBuf, process::Command, time::Duration};

use consentd::pb;
use tonic::Code;

use crate::fixture::{android, location_app, TestDaemon};

/// A tmpfs mounted for the test, unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: PathBuf, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Self(at))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub async fn a_full_disk_fails_writes_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // The harness checked that a tmpfs can be mounted here.
    let disk = Tmpfs::mount(dir.path().join("mnt"), "2m").expect("a tmpfs");
    let data = disk.0.join("data");
    let h = TestDaemon::with(|c| c.data_dir = data.clone()).await;
    let c = h.client();
    c.register(location_app("wxfull")).await;
    let user = |i: usize| format!("user-{i}-{}", "x".repeat(100));
    let mut acked = 0;
    let refused = loop {
        match c
            .record(
                "wxfull",
                &user(acked),
                "scope.camera",
                pb::Answer::Allow,
                android(),
            )
            .await
        {
            Ok(_) => acked += 1,
            Err(status) => break status,
        }
        assert!(acked < 100_000, "a 2 MiB disk never filled");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("No space left on device"),
        "{}",
        refused.message()
    );
    assert!(acked > 100);
    // Reads go on while the disk is full; so do refusals of further writes.
    assert_eq!(c.setting("wxfull", &user(0)).await.auth_setting.len(), 1);
    let again = c
        .record(
            "wxfull",
            "later",
            "scope.camera",
            pb::Answer::Allow,
            android(),
        )
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted);

    // Free space: the daemon reopens its store by itself and writes resume.
    disk.resize("64m");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c
            .record(
                "wxfull",
                "after",
                "scope.camera",
                pb::Answer::Allow,
                android(),
            )
            .await
        {
            Ok(_) => break,
            Err(s) => assert!(
                tokio::time::Instant::now() < deadline,
                "writes did not resume: {s:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verify = c.assert_consistent().await;
    assert_eq!(
        verify.decisions,
        acked as u64 + 1,
        "every acknowledged write and the new one, nothing else"
    );
    assert_eq!(
        c.setting("wxfull", &user(acked - 1))
            .await
            .auth_setting
            .len(),
        1
    );
    h.stop().await;
    drop(disk);
}
