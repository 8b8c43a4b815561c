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
        let mut child = Command::new(binary);
        child
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
            .stderr(Stdio::piped());
        let mut child = pin_server(&mut child).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // The last lines, for the panic message if it exits instead.
        let mut tail = std::collections::VecDeque::new();
        let addr = loop {
            let Some(line) = lines.next() else {
                let tail: Vec<String> = tail.into_iter().collect();
                panic!(
                    "consentd exited before serving; its last log lines:\n{}",
                    tail.join("\n")
                );
            };
            let line = line.unwrap();
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line.clone());
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
        pid_status_kib(self.child.id(), key)
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

/// utime + stime of any process (e.g. an etcd member), in clock ticks.
pub fn pid_cpu_ticks(pid: u32) -> u64 {
    cpu_ticks(&format!("/proc/{pid}/stat"))
}

/// A `/proc/PID/status` value in KiB (`VmRSS:`, `VmHWM:`), 0 if gone.
pub fn pid_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The CPU servers run on and the CPU the load generator runs on with
/// `BENCH_PIN=1`, so that neither takes the other's core.
pub const SERVER_CPU: usize = 0;
pub const CLIENT_CPU: usize = 1;

/// Whether `BENCH_PIN=1` asks for servers and the load generator on CPUs of
/// their own.
pub fn pinned() -> bool {
    match std::env::var("BENCH_PIN").as_deref() {
        Ok("1") => true,
        Ok("0") | Err(_) => false,
        Ok(other) => panic!("BENCH_PIN must be 0 or 1, not {other:?}"),
    }
}

fn set_affinity(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // within it and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// With `BENCH_PIN=1`, `command` starts on [`SERVER_CPU`] (set before exec,
/// so every thread it makes inherits it).
pub fn pin_server(command: &mut Command) -> &mut Command {
    if pinned() {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: the closure makes one system call, which is
        // async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(|| set_affinity(SERVER_CPU));
        }
    }
    command
}

/// With `BENCH_PIN=1`, this process (call it before starting threads) moves
/// to [`CLIENT_CPU`].
pub fn pin_self() {
    if pinned() {
        set_affinity(CLIENT_CPU).expect("BENCH_PIN=1: pinning the load generator");
    }
}
