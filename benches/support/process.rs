//! Shared by the benches: a consentd (or any server) child process, its
//! address, CPU time and memory.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// From spawn to the log line saying it serves.
    pub ready_after: Duration,
}

impl Proc {
    /// The release daemon on `data_dir`; returns once it logs that it serves.
    pub fn daemon(data_dir: &Path, extra: &[&str]) -> Proc {
        Proc::daemon_bin(Path::new(env!("CARGO_BIN_EXE_consentd")), data_dir, extra)
    }

    /// Another build of the daemon (e.g. an older commit, to compare in one run).
    pub fn daemon_bin(binary: &Path, data_dir: &Path, extra: &[&str]) -> Proc {
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn,consentd::server=info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("consentd exited").unwrap();
            let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if log["fields"]["message"] == "consentd serving" {
                break log["fields"]["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        let ready_after = started.elapsed();
        std::thread::spawn(move || lines.for_each(drop));
        Proc {
            child,
            addr,
            ready_after,
        }
    }

    /// utime + stime, in clock ticks (USER_HZ = 100).
    pub fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&format!("/proc/{}/stat", self.child.id()))
    }

    pub fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn stop(mut self) {
        // SIGTERM: a graceful shutdown (flush) before the temp dir goes.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a /proc/PID/stat file: fields 14 and 15, i.e. 11 and 12
/// after the parenthesised command name.
fn cpu_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

pub fn self_cpu_ticks() -> u64 {
    cpu_ticks("/proc/self/stat")
}
