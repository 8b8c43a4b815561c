//! Test support: a real etcd cluster on loopback ports, started from the
//! `etcd` binary (Debian `etcd-server`) in a temp dir, owned by the test.
//!
//! Self-contained (std and libc only) so that `tests/it` can include it as
//! source too. Members are killed and reaped when the [`EtcdCluster`] drops;
//! every member also gets SIGKILL when the thread that started it ends
//! (`PR_SET_PDEATHSIG`), so a test process that dies leaves no etcd behind.
//! For fault tests: [`EtcdCluster::kill`] (kill -9), [`EtcdCluster::pause`]
//! (SIGSTOP), [`EtcdCluster::resume`] (SIGCONT), [`EtcdCluster::restart`],
//! [`EtcdCluster::restart_all`], and [`EtcdCluster::leader`] to aim at.
//! [`EtcdCluster::start_with`] takes [`Options`]: TLS with client
//! certificates on the client URLs, a short auth token TTL, or each member
//! in a network namespace of its own (the caller owns the namespaces).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The binary the harness runs: `$CONSENTD_ETCD` or `etcd` on the PATH.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("CONSENTD_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// Why etcd tests cannot run here, if they cannot: the binary is missing
/// or does not start.
pub fn etcd_unavailable() -> Option<String> {
    let bin = etcd_binary();
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{} --version failed ({}): install Debian etcd-server (scripts/etcd-tools)",
            bin.display(),
            out.status
        )),
        Err(e) => Some(format!(
            "{} cannot be run ({e}): install Debian etcd-server (scripts/etcd-tools)",
            bin.display()
        )),
    }
}

/// The PEM files of TLS on the members' client URLs (`https://`): their
/// certificate (valid for the members' addresses) and key, and the CA
/// client certificates must chain to (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the members run, beyond the defaults of [`EtcdCluster::start`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// TLS with client certificates on the client URLs.
    pub tls: Option<ServerTls>,
    /// `--auth-token simple --auth-token-ttl SECS`: how long an idle auth
    /// token lives (etcd's default is 300 s).
    pub auth_token_ttl: Option<u64>,
    /// Member `i` runs in network namespace `netns[i].0` (through
    /// `ip netns exec`), listening on `netns[i].1` (ports 2379: client,
    /// 2380: peer, 2381: health and metrics). Empty: loopback ports.
    pub netns: Vec<(String, Ipv4Addr)>,
}

/// One member: its process (None once killed) and its addresses.
struct Member {
    name: String,
    client_url: String,
    /// Where `/health` and `/metrics` answer in plain HTTP
    /// (`--listen-metrics-urls`), whatever the client URLs are.
    metrics_addr: SocketAddr,
    peer_url: String,
    netns: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster; every member is killed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    options: Options,
    // Removed on drop, after the members are gone.
    dir: tempfile::TempDir,
}

/// How long a cluster may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The temp dirs of test clusters start with this.
const DIR_PREFIX: &str = "consentd-etcd-";

/// Removes the temp dirs of test clusters whose process is gone (each
/// member pre-allocates a 62 MB WAL).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join("owner.pid")).unwrap_or_default();
        // A dir without an owner yet may be one being made right now.
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(60));
        let alive = if owner.is_empty() {
            young
        } else {
            Path::new("/proc").join(owner.trim()).exists()
        };
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A loopback port free right now (bound, then released).
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl EtcdCluster {
    /// Starts `n` members on free loopback ports and waits until every one
    /// reports healthy. Errors say what failed (with the member's log tail).
    pub fn start(n: usize) -> Result<Self, String> {
        Self::start_with(n, Options::default())
    }

    /// Like [`EtcdCluster::start`], the members run as `options` say.
    pub fn start_with(n: usize, options: Options) -> Result<Self, String> {
        if !options.netns.is_empty() && options.netns.len() != n {
            return Err(format!(
                "{} network namespaces for {n} members",
                options.netns.len()
            ));
        }
        // A port taken between probing and etcd's bind fails the start: retry.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(n, &options) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start(n: usize, options: &Options) -> Result<Self, String> {
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // Who owns it: a cluster held until its process ends is never
        // dropped, so a later run removes its dir (see sweep_stale_dirs).
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut members = Vec::with_capacity(n);
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        for i in 1..=n {
            let (client_addr, peer, metrics_addr, netns) = match options.netns.get(i - 1) {
                Some((netns, ip)) => (
                    SocketAddr::from((*ip, 2379)),
                    SocketAddr::from((*ip, 2380)),
                    SocketAddr::from((*ip, 2381)),
                    Some(netns.clone()),
                ),
                None => {
                    let port = || free_port().map_err(|e| format!("free port: {e}"));
                    (port()?, port()?, port()?, None)
                }
            };
            members.push(Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://{client_addr}"),
                metrics_addr,
                peer_url: format!("http://{peer}"),
                netns,
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            options: options.clone(),
            dir,
        };
        for i in 0..n {
            cluster.spawn(i, "new")?;
        }
        cluster.wait_healthy(START_TIMEOUT)?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), String> {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("{}: {e}", m.log.display()))?;
        let mut command = match &m.netns {
            None => Command::new(etcd_binary()),
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(etcd_binary());
                c
            }
        };
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "consentd-test"])
            // What consentd's docs ask of a production cluster too: group
            // commits of many keys in one transaction.
            .args(["--max-txn-ops", "10000"])
            .args(["--max-request-bytes", "8388608"])
            // Short timeouts: faults resolve within a test's patience.
            .args(["--heartbeat-interval", "50"])
            .args(["--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}", m.metrics_addr));
        if let Some(tls) = &self.options.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        if let Some(ttl) = self.options.auth_token_ttl {
            command
                .args(["--auth-token", "simple"])
                .arg(format!("--auth-token-ttl={ttl}"));
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", etcd_binary().display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// The client URLs, one per member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Waits until every running member answers `/health` with true.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            loop {
                if let Some(status) = self.members[i]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    return Err(format!(
                        "etcd member {} exited ({status}); log: {}",
                        self.members[i].name,
                        self.log_tail(i)
                    ));
                }
                if healthy(self.members[i].metrics_addr) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "etcd member {} not healthy after {timeout:?}; log: {}",
                        self.members[i].name,
                        self.log_tail(i)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        if let Some(pid) = self.pid(i) {
            // SAFETY: a plain kill(2) of our own child.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// kill -9 member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP member `i` (it stays a member, but answers nothing).
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONT member `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// Starts a killed member again on its data dir and waits until it is
    /// healthy.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i, "existing")?;
        self.wait_healthy(START_TIMEOUT)
    }

    /// The member that is the Raft leader right now, by its own metrics
    /// (`etcd_server_is_leader 1`); None while there is none (an election,
    /// no quorum).
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.members[i].child.is_some()
                && http_get(self.members[i].metrics_addr, "/metrics")
                    .is_some_and(|m| m.lines().any(|l| l.trim() == "etcd_server_is_leader 1"))
        })
    }

    /// kill -9 every member, then starts them all again on their data dirs
    /// at once (one alone has no quorum, so none would become healthy) and
    /// waits until each is healthy.
    pub fn restart_all(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            self.resume(i);
            self.kill(i);
        }
        for i in 0..self.members.len() {
            self.spawn(i, "existing")?;
        }
        self.wait_healthy(START_TIMEOUT)
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A paused member must run again to die promptly.
            self.resume(i);
            self.kill(i);
        }
    }
}

/// Whether the member at `addr` answers `GET /health` with `"health":"true"`.
fn healthy(addr: SocketAddr) -> bool {
    http_get(addr, "/health").is_some_and(|r| r.contains("\"health\":\"true\""))
}

/// The response (headers and body) of `GET path` on the member at `addr`,
/// if it answers within a few seconds.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    Some(response)
}

/// The client URLs of one 3-member cluster shared by every test of this
/// test binary, started on first use by a thread that holds it until the
/// process ends (its members die with that thread: PR_SET_PDEATHSIG; a
/// later run removes its temp dir). Panics, saying why, when etcd cannot
/// run here.
pub fn shared_endpoints() -> &'static [String] {
    static ENDPOINTS: std::sync::OnceLock<Result<Vec<String>, String>> = std::sync::OnceLock::new();
    let endpoints = ENDPOINTS.get_or_init(|| {
        if let Some(why) = etcd_unavailable() {
            return Err(why);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("etcd-cluster".into())
            .spawn(move || match EtcdCluster::start(3) {
                Ok(cluster) => {
                    let _ = tx.send(Ok(cluster.endpoints()));
                    // Hold the cluster for good; never dropped.
                    let _cluster = cluster;
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    });
    match endpoints {
        Ok(e) => e,
        Err(why) => panic!("cannot run the etcd tests: {why}"),
    }
}
