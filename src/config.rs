//! Configuration: typed, validated once, passed down explicitly.
//!
//! Precedence: command-line flags, then `CONSENTD_*` environment variables
//! (clap reads both), then the TOML file given with `--config`, then the
//! defaults below.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    domain::NagPolicy,
    grpc::CallLimits,
    transport::{ConnectionLimits, ListenAddr, TlsFiles},
};

use serde::Deserialize;

use crate::{
    domain::{MinSdkRule, MinSdkTarget, Platform, PopupRule, RuleSet, Scope, Version},
    store::{Retention, DEFAULT_RETENTION},
    watch::WatchConfig,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "./consentd-data";
pub const DEFAULT_CACHE_CAPACITY: u64 = 128 * 1024 * 1024;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest wait for a consistency token (`consentd-min-revision`).
pub const DEFAULT_MIN_REVISION_MAX_WAIT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
pub const DEFAULT_MAX_BATCH: usize = 1024;
pub const DEFAULT_QUEUE_DEPTH: usize = 4096;
pub const DEFAULT_PUBLISH_CAPACITY: usize = 1024;
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_UNIX_SOCKET_MODE: u32 = 0o600;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8192;
/// Every key of an etcd-backed store starts with this unless
/// `--etcd-prefix` says otherwise.
pub const DEFAULT_ETCD_PREFIX: &str = "/consentd/";
/// etcd's own default `--max-txn-ops` and `--max-request-bytes` (about).
pub const DEFAULT_ETCD_MAX_TXN_OPS: usize = 128;
pub const DEFAULT_ETCD_MAX_TXN_BYTES: usize = 1 << 20;
pub const DEFAULT_ETCD_LEASE_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_ETCD_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);

/// The environment variable holding the etcd password (the alternative to
/// `--etcd-password-file`).
pub const ETCD_PASSWORD_ENV: &str = "CONSENTD_ETCD_PASSWORD";

/// A secret (a password) that never shows in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which store the daemon runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// An embedded sled store in `data_dir` (one daemon).
    #[default]
    Sled,
    /// An etcd cluster shared by any number of daemons (needs a build with
    /// the cargo feature `etcd`).
    Etcd,
}

/// Where the etcd-backed store lives and how to write to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs of the members (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Every key of the store starts with it.
    pub prefix: String,
    /// etcd user, when etcd has authentication on; the password is read
    /// from `password_file`, or given in `CONSENTD_ETCD_PASSWORD` (never a
    /// flag: it would show in `ps`).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password: Option<Secret>,
    /// TLS towards etcd (`https://` endpoints): the CA bundle (PEM) etcd's
    /// server certificates chain to, and a client certificate and key
    /// (PEM) when etcd asks for one (`--client-cert-auth`).
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Must not exceed the members' `--max-txn-ops` / `--max-request-bytes`.
    pub max_txn_ops: usize,
    pub max_txn_bytes: usize,
    /// A dead daemon holds the write lock at most this long.
    pub lease_ttl: Duration,
    /// Bound on each etcd call.
    pub timeout: Duration,
    /// How often the local view's snapshot in `data_dir` is rewritten while
    /// it moves (a restart catches up from it); `None`: no snapshot.
    pub snapshot_interval: Option<Duration>,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: DEFAULT_ETCD_PREFIX.into(),
            user: None,
            password_file: None,
            password: None,
            ca: None,
            cert: None,
            key: None,
            max_txn_ops: DEFAULT_ETCD_MAX_TXN_OPS,
            max_txn_bytes: DEFAULT_ETCD_MAX_TXN_BYTES,
            lease_ttl: DEFAULT_ETCD_LEASE_TTL,
            timeout: DEFAULT_ETCD_TIMEOUT,
            snapshot_interval: Some(DEFAULT_ETCD_SNAPSHOT_INTERVAL),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text, coloured only when stderr is a terminal (and NO_COLOR is unset).
    Auto,
    /// Text without colour.
    Text,
    /// One JSON object per line.
    Json,
}

/// The log filter when neither `--log-level` nor `RUST_LOG` sets one.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The daemon's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// TCP addresses and `unix:` sockets; at least one.
    pub listen: Vec<ListenAddr>,
    /// Mode of the unix sockets (default 0600: the daemon's user only).
    pub unix_socket_mode: u32,
    /// The credentials file; authentication is off without one.
    pub credentials: Option<PathBuf>,
    /// TLS for the TCP listeners.
    pub tls: Option<TlsFiles>,
    /// Allow non-loopback listeners without credentials and TLS.
    pub insecure: bool,
    /// Largest request message, bytes.
    pub max_message_bytes: usize,
    pub limits: CallLimits,
    /// Connection caps and deadlines (`[limits]`).
    pub connections: ConnectionLimits,
    /// Prometheus endpoint (`GET /metrics`); off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// sled (the default, in `data_dir`) or etcd (`etcd`).
    pub store: StoreKind,
    pub data_dir: PathBuf,
    /// The etcd cluster, for `store = etcd`.
    pub etcd: EtcdSettings,
    pub log_format: LogFormat,
    /// Log filter (`info`, `warn,consentd=debug`); `None`: `RUST_LOG`, else
    /// [`DEFAULT_LOG_LEVEL`].
    pub log_level: Option<String>,
    /// sled page cache, bytes.
    pub cache_capacity: u64,
    /// How long in-flight calls may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Longest wait for the view to reach a caller's consistency token
    /// (`consentd-min-revision`), within the call's own deadline.
    pub min_revision_max_wait: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Most write jobs in one group commit.
    pub max_batch: usize,
    /// Write jobs queued for the writer before callers wait.
    pub queue_depth: usize,
    /// Flush before acknowledging a write (the default). Off only to measure
    /// what durability costs.
    pub flush_on_commit: bool,
    /// Committed groups buffered for watchers before a slow one must read the log.
    pub publish_capacity: usize,
    pub watch: WatchConfig,
    /// How much of the event log to keep.
    pub retention: Retention,
    /// How often the log is compacted to the retention policy.
    pub compaction_interval: Duration,
    pub rules: RuleSet,
    pub grants: GrantsConfig,
    pub audit: AuditConfig,
    /// The anti-nag policy; off (`None`) by default.
    pub anti_nag: Option<NagPolicy>,
}

/// The consent audit trail.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// How much of the trail to keep (independent of the event log's).
    pub retention: Retention,
    /// Record every prompt shown (and suppressed), not only answers.
    pub record_prompts: bool,
}

/// Default audit retention: 90 days, at most ten million records.
pub const DEFAULT_AUDIT_RETENTION: Retention = Retention {
    max_events: Some(10_000_000),
    max_age: Some(Duration::from_secs(90 * 24 * 3600)),
};

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_AUDIT_RETENTION,
            record_prompts: true,
        }
    }
}

/// Timed and one-time grants.
#[derive(Clone, Debug)]
pub struct GrantsConfig {
    /// A one-time grant lapses after this long unused, unless its session
    /// ends first.
    pub session_idle_timeout: Duration,
    /// How often due grant timers are checked.
    pub expiry_check_interval: Duration,
    /// After a user disagrees with a privacy guide, calls fail without a
    /// popup this long before the agreement is asked for again.
    pub privacy_disagree_gap: Duration,
}

impl Default for GrantsConfig {
    fn default() -> Self {
        Self {
            session_idle_timeout: crate::broker::DEFAULT_SESSION_IDLE_TIMEOUT,
            expiry_check_interval: Duration::from_secs(1),
            privacy_disagree_gap: crate::broker::DEFAULT_PRIVACY_GAP,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![DEFAULT_LISTEN
                .parse()
                .expect("the default listen address parses")],
            unix_socket_mode: DEFAULT_UNIX_SOCKET_MODE,
            credentials: None,
            tls: None,
            insecure: false,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            limits: CallLimits {
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
                max_in_flight_per_principal:
                    crate::grpc::access::DEFAULT_MAX_IN_FLIGHT_PER_PRINCIPAL,
                max_watch_streams_per_principal:
                    crate::grpc::access::DEFAULT_MAX_WATCH_STREAMS_PER_PRINCIPAL,
                message_timeout: crate::grpc::access::DEFAULT_MESSAGE_TIMEOUT,
            },
            connections: ConnectionLimits::default(),
            metrics_listen: None,
            store: StoreKind::Sled,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            etcd: EtcdSettings::default(),
            log_format: LogFormat::Auto,
            log_level: None,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            min_revision_max_wait: DEFAULT_MIN_REVISION_MAX_WAIT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_batch: DEFAULT_MAX_BATCH,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            flush_on_commit: true,
            publish_capacity: DEFAULT_PUBLISH_CAPACITY,
            watch: WatchConfig::default(),
            retention: DEFAULT_RETENTION,
            compaction_interval: DEFAULT_COMPACTION_INTERVAL,
            rules: RuleSet::default(),
            grants: GrantsConfig::default(),
            audit: AuditConfig::default(),
            anti_nag: None,
        }
    }
}

/// Command-line flags (each also settable as `CONSENTD_<NAME>`).
#[derive(Clone, Debug, Default, clap::Parser)]
#[command(
    name = "consentd",
    version = crate::VERSION,
    about = "The consent broker daemon: remembers every user's authorization decisions for mini programs and serves them over gRPC."
)]
pub struct Args {
    /// Where to listen: IP:PORT or unix:/path/to.sock; repeat for several
    /// [default: 127.0.0.1:50051].
    #[arg(
        long,
        env = "CONSENTD_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<ListenAddr>,
    /// Credentials file (TOML) mapping token digests and certificate
    /// subjects to principals; authentication is off without one.
    #[arg(long, env = "CONSENTD_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Server certificate chain (PEM): serve TLS on the TCP listeners.
    #[arg(
        long,
        env = "CONSENTD_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "CONSENTD_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates: require mTLS.
    #[arg(
        long,
        env = "CONSENTD_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Accept non-loopback listeners without credentials and TLS. Dangerous.
    #[arg(long, env = "CONSENTD_INSECURE")]
    pub insecure: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (and /healthz,
    /// /readyz): IP:PORT or localhost:PORT [default: off].
    #[arg(
        long,
        env = "CONSENTD_METRICS_LISTEN",
        value_name = "ADDR",
        value_parser = crate::transport::parse_tcp_addr
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory holding the store [default: ./consentd-data].
    #[arg(long, env = "CONSENTD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store backend: sled (embedded, in --data-dir) or etcd (a cluster
    /// shared by several daemons; see --etcd-endpoints) [default: sled].
    #[arg(long, env = "CONSENTD_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// etcd client URLs, comma-separated (http://host:2379,...), for
    /// --store etcd.
    #[arg(
        long,
        env = "CONSENTD_ETCD_ENDPOINTS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of the store in etcd [default: /consentd/].
    #[arg(long, env = "CONSENTD_ETCD_PREFIX", value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// CA bundle (PEM) etcd's server certificates chain to: needed for
    /// https:// endpoints.
    #[arg(long, env = "CONSENTD_ETCD_CA", value_name = "PEM")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) to present to etcd (etcd with
    /// --client-cert-auth).
    #[arg(
        long,
        env = "CONSENTD_ETCD_CERT",
        value_name = "PEM",
        requires = "etcd_key"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(
        long,
        env = "CONSENTD_ETCD_KEY",
        value_name = "PEM",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, when etcd has authentication on; the password comes from
    /// --etcd-password-file or the environment variable
    /// CONSENTD_ETCD_PASSWORD.
    #[arg(long, env = "CONSENTD_ETCD_USER", value_name = "NAME")]
    pub etcd_user: Option<String>,
    /// File holding the password of --etcd-user (a trailing newline is
    /// ignored).
    #[arg(long, env = "CONSENTD_ETCD_PASSWORD_FILE", value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// The etcd password from CONSENTD_ETCD_PASSWORD (read by
    /// [`Config::from_args`]; never a flag).
    #[arg(skip)]
    pub etcd_password: Option<Secret>,
    /// TOML configuration file.
    #[arg(long, env = "CONSENTD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: auto is text, coloured only when stderr is a terminal
    /// [default: auto].
    #[arg(long, env = "CONSENTD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or filter: error, warn, info, debug, trace, or
    /// per-module directives like warn,consentd=debug [default: RUST_LOG,
    /// else info].
    #[arg(long, env = "CONSENTD_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// sled page cache size in bytes [default: 134217728].
    #[arg(long, env = "CONSENTD_CACHE_CAPACITY", value_name = "BYTES")]
    pub cache_capacity: Option<u64>,
    /// Seconds in-flight calls get to finish on shutdown [default: 10].
    #[arg(long, env = "CONSENTD_DRAIN_TIMEOUT", value_name = "SECS")]
    pub drain_timeout: Option<u64>,
    /// Longest wait, in milliseconds, for this daemon's view to reach the
    /// revision a caller sent in `consentd-min-revision` [default: 5000].
    #[arg(long, env = "CONSENTD_MIN_REVISION_MAX_WAIT_MS", value_name = "MS")]
    pub min_revision_max_wait_ms: Option<u64>,
}

/// The TOML file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<FileListen>,
    pub unix_socket_mode: Option<u32>,
    pub credentials: Option<PathBuf>,
    pub tls: Option<FileTls>,
    pub insecure: Option<bool>,
    pub limits: Option<FileLimits>,
    #[serde(default, deserialize_with = "tcp_addr")]
    pub metrics_listen: Option<SocketAddr>,
    pub store: Option<StoreKind>,
    pub data_dir: Option<PathBuf>,
    pub etcd: Option<FileEtcd>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub cache_capacity: Option<u64>,
    pub drain_timeout_secs: Option<u64>,
    pub min_revision_max_wait_ms: Option<u64>,
    pub max_concurrent_streams: Option<u32>,
    pub max_batch: Option<usize>,
    pub queue_depth: Option<usize>,
    pub flush_on_commit: Option<bool>,
    pub publish_capacity: Option<usize>,
    pub watch: Option<FileWatch>,
    pub retention: Option<FileRetention>,
    pub rules: Option<FileRules>,
    pub grants: Option<FileGrants>,
    pub privacy: Option<FilePrivacy>,
    pub audit: Option<FileAudit>,
    pub anti_nag: Option<FileAntiNag>,
}

/// `[etcd]`: the cluster of `store = "etcd"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEtcd {
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub max_txn_ops: Option<usize>,
    pub max_txn_bytes: Option<usize>,
    pub lease_ttl_secs: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// 0: no snapshot of the view (every start reads the whole prefix).
    pub snapshot_interval_secs: Option<u64>,
}

/// An optional `IP:PORT` or `localhost:PORT`, with `--listen`'s message.
fn tcp_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| crate::transport::parse_tcp_addr(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// `[audit]`: 0 disables a limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    pub max_records: Option<u64>,
    pub max_age_secs: Option<u64>,
    pub record_prompts: Option<bool>,
}

/// `[anti_nag]`: on when `max_cancels` is set (> 0).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAntiNag {
    pub max_cancels: Option<u32>,
    pub embargo_secs: Option<u64>,
}

/// `[grants]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrants {
    pub session_idle_timeout_secs: Option<u64>,
    pub expiry_check_interval_ms: Option<u64>,
}

/// `[privacy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePrivacy {
    pub disagree_gap_secs: Option<u64>,
}

/// `listen = "127.0.0.1:50051"` or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileListen {
    One(ListenAddr),
    Many(Vec<ListenAddr>),
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// `[limits]`: bounds on what one caller can make the daemon hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_message_bytes: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub max_in_flight: Option<usize>,
    pub max_watch_streams: Option<u64>,
    pub max_in_flight_per_principal: Option<usize>,
    pub max_watch_streams_per_principal: Option<usize>,
    pub message_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub first_request_timeout_secs: Option<u64>,
    pub idle_connection_timeout_secs: Option<u64>,
}

/// `[watch]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWatch {
    pub progress_interval_ms: Option<u64>,
    pub stream_buffer: Option<usize>,
    pub catch_up_page: Option<usize>,
}

/// A retention from the file's count and age (seconds) limits: an absent
/// limit keeps `default`'s, 0 disables it.
fn retention(max: Option<u64>, max_age_secs: Option<u64>, default: Retention) -> Retention {
    Retention {
        max_events: max.map_or(default.max_events, |n| (n > 0).then_some(n)),
        max_age: max_age_secs.map_or(default.max_age, |s| (s > 0).then(|| Duration::from_secs(s))),
    }
}

/// `[retention]`: 0 disables a limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetention {
    pub max_events: Option<u64>,
    pub max_age_secs: Option<u64>,
    pub compaction_interval_secs: Option<u64>,
}

/// `[rules]`: rules with an id of a built-in rule replace it, others are
/// added; `replace_defaults = true` drops the built-in rules first.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRules {
    #[serde(default)]
    pub replace_defaults: bool,
    #[serde(default)]
    pub popup: Vec<FilePopupRule>,
    #[serde(default)]
    pub min_sdk: Vec<FileMinSdkRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePopupRule {
    pub id: String,
    pub scope: String,
    pub platforms: Vec<String>,
    pub min_host_version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMinSdkRule {
    pub id: String,
    pub api: Option<String>,
    pub scope: Option<String>,
    pub min_sdk_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Resolves flags, env, the optional file and the defaults.
    pub fn from_args(mut args: Args) -> Result<Self, ConfigError> {
        if args.etcd_password.is_none() {
            args.etcd_password = std::env::var(ETCD_PASSWORD_ENV).ok().map(Secret);
        }
        let file = match &args.config {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: shown.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: shown,
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };
        Self::resolve(args, file)
    }

    pub fn resolve(args: Args, file: FileConfig) -> Result<Self, ConfigError> {
        let d = Config::default();
        let config = Config {
            listen: match (args.listen, file.listen) {
                (flags, _) if !flags.is_empty() => flags,
                (_, Some(FileListen::One(a))) => vec![a],
                (_, Some(FileListen::Many(list))) => list,
                (_, None) => d.listen,
            },
            unix_socket_mode: file.unix_socket_mode.unwrap_or(d.unix_socket_mode),
            credentials: args.credentials.or(file.credentials),
            tls: match (args.tls_cert, args.tls_key, file.tls) {
                (Some(cert), Some(key), file_tls) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca: args.tls_client_ca.or(file_tls.and_then(|t| t.client_ca)),
                }),
                (None, None, Some(t)) => Some(TlsFiles {
                    cert: t.cert,
                    key: t.key,
                    client_ca: args.tls_client_ca.or(t.client_ca),
                }),
                (None, None, None) => None,
                _ => {
                    return Err(ConfigError::Invalid(
                        "--tls-cert and --tls-key go together".into(),
                    ))
                }
            },
            insecure: args.insecure || file.insecure.unwrap_or(false),
            max_message_bytes: file
                .limits
                .as_ref()
                .and_then(|l| l.max_message_bytes)
                .unwrap_or(d.max_message_bytes),
            limits: {
                let l = file.limits.as_ref();
                CallLimits {
                    request_timeout: l
                        .and_then(|l| l.request_timeout_secs)
                        .map_or(d.limits.request_timeout, Duration::from_secs),
                    max_in_flight: l
                        .and_then(|l| l.max_in_flight)
                        .unwrap_or(d.limits.max_in_flight),
                    max_in_flight_per_principal: l
                        .and_then(|l| l.max_in_flight_per_principal)
                        .unwrap_or(d.limits.max_in_flight_per_principal),
                    max_watch_streams_per_principal: l
                        .and_then(|l| l.max_watch_streams_per_principal)
                        .unwrap_or(d.limits.max_watch_streams_per_principal),
                    message_timeout: l
                        .and_then(|l| l.message_timeout_secs)
                        .map_or(d.limits.message_timeout, Duration::from_secs),
                }
            },
            connections: {
                let l = file.limits.as_ref();
                let dc = d.connections.clone();
                ConnectionLimits {
                    max_connections: l
                        .and_then(|l| l.max_connections)
                        .unwrap_or(dc.max_connections),
                    max_per_source: l
                        .and_then(|l| l.max_connections_per_source)
                        .unwrap_or(dc.max_per_source),
                    first_request_timeout: l
                        .and_then(|l| l.first_request_timeout_secs)
                        .map_or(dc.first_request_timeout, Duration::from_secs),
                    idle_timeout: l
                        .and_then(|l| l.idle_connection_timeout_secs)
                        .map_or(dc.idle_timeout, Duration::from_secs),
                }
            },
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            store: args.store.or(file.store).unwrap_or(d.store),
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            etcd: {
                let f = file.etcd.unwrap_or_default();
                let de = d.etcd;
                EtcdSettings {
                    endpoints: if args.etcd_endpoints.is_empty() {
                        f.endpoints.unwrap_or(de.endpoints)
                    } else {
                        args.etcd_endpoints
                    },
                    prefix: args.etcd_prefix.or(f.prefix).unwrap_or(de.prefix),
                    user: args.etcd_user.or(f.user),
                    password_file: args.etcd_password_file.or(f.password_file),
                    password: args.etcd_password,
                    ca: args.etcd_ca.or(f.ca),
                    cert: args.etcd_cert.or(f.cert),
                    key: args.etcd_key.or(f.key),
                    max_txn_ops: f.max_txn_ops.unwrap_or(de.max_txn_ops),
                    max_txn_bytes: f.max_txn_bytes.unwrap_or(de.max_txn_bytes),
                    lease_ttl: f.lease_ttl_secs.map_or(de.lease_ttl, Duration::from_secs),
                    timeout: f.timeout_ms.map_or(de.timeout, Duration::from_millis),
                    snapshot_interval: match f.snapshot_interval_secs {
                        None => de.snapshot_interval,
                        Some(0) => None,
                        Some(secs) => Some(Duration::from_secs(secs)),
                    },
                }
            },
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            log_level: args.log_level.or(file.log_level),
            cache_capacity: args
                .cache_capacity
                .or(file.cache_capacity)
                .unwrap_or(d.cache_capacity),
            drain_timeout: args
                .drain_timeout
                .or(file.drain_timeout_secs)
                .map_or(d.drain_timeout, Duration::from_secs),
            min_revision_max_wait: args
                .min_revision_max_wait_ms
                .or(file.min_revision_max_wait_ms)
                .map_or(d.min_revision_max_wait, Duration::from_millis),
            max_concurrent_streams: file
                .max_concurrent_streams
                .unwrap_or(d.max_concurrent_streams),
            max_batch: file.max_batch.unwrap_or(d.max_batch),
            queue_depth: file.queue_depth.unwrap_or(d.queue_depth),
            flush_on_commit: file.flush_on_commit.unwrap_or(d.flush_on_commit),
            publish_capacity: file.publish_capacity.unwrap_or(d.publish_capacity),
            watch: {
                let w = file.watch.unwrap_or_default();
                WatchConfig {
                    progress_interval: w
                        .progress_interval_ms
                        .map_or(d.watch.progress_interval, Duration::from_millis),
                    stream_buffer: w.stream_buffer.unwrap_or(d.watch.stream_buffer),
                    catch_up_page: w.catch_up_page.unwrap_or(d.watch.catch_up_page),
                    max_streams: file
                        .limits
                        .as_ref()
                        .and_then(|l| l.max_watch_streams)
                        .unwrap_or(d.watch.max_streams),
                }
            },
            retention: {
                let r = file.retention.as_ref();
                retention(
                    r.and_then(|r| r.max_events),
                    r.and_then(|r| r.max_age_secs),
                    d.retention,
                )
            },
            compaction_interval: file
                .retention
                .as_ref()
                .and_then(|r| r.compaction_interval_secs)
                .map_or(d.compaction_interval, Duration::from_secs),
            rules: match file.rules {
                Some(rules) => rules.resolve()?,
                None => d.rules,
            },
            audit: {
                let a = file.audit.unwrap_or_default();
                AuditConfig {
                    retention: retention(a.max_records, a.max_age_secs, d.audit.retention),
                    record_prompts: a.record_prompts.unwrap_or(d.audit.record_prompts),
                }
            },
            anti_nag: match file.anti_nag {
                None => None,
                Some(n) => match n.max_cancels {
                    None | Some(0) => None,
                    Some(max_cancels) => Some(NagPolicy {
                        max_cancels,
                        embargo_ms: n.embargo_secs.unwrap_or(86_400).saturating_mul(1000),
                    }),
                },
            },
            grants: {
                let g = file.grants.unwrap_or_default();
                GrantsConfig {
                    session_idle_timeout: g
                        .session_idle_timeout_secs
                        .map_or(d.grants.session_idle_timeout, Duration::from_secs),
                    expiry_check_interval: g
                        .expiry_check_interval_ms
                        .map_or(d.grants.expiry_check_interval, Duration::from_millis),
                    privacy_disagree_gap: file
                        .privacy
                        .and_then(|p| p.disagree_gap_secs)
                        .map_or(d.grants.privacy_disagree_gap, Duration::from_secs),
                }
            },
        };
        for (name, value) in [
            ("max_batch", config.max_batch),
            ("queue_depth", config.queue_depth),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if config.watch.progress_interval.is_zero() || config.compaction_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "watch.progress_interval_ms and retention.compaction_interval_secs must be positive".into(),
            ));
        }
        config.check_exposure()?;
        for (name, zero) in [
            ("limits.max_message_bytes", config.max_message_bytes == 0),
            (
                "limits.request_timeout_secs",
                config.limits.request_timeout.is_zero(),
            ),
            ("limits.max_in_flight", config.limits.max_in_flight == 0),
            ("limits.max_watch_streams", config.watch.max_streams == 0),
            (
                "limits.max_in_flight_per_principal",
                config.limits.max_in_flight_per_principal == 0,
            ),
            (
                "limits.max_watch_streams_per_principal",
                config.limits.max_watch_streams_per_principal == 0,
            ),
            (
                "limits.message_timeout_secs",
                config.limits.message_timeout.is_zero(),
            ),
            (
                "limits.max_connections",
                config.connections.max_connections == 0,
            ),
            (
                "limits.max_connections_per_source",
                config.connections.max_per_source == 0,
            ),
            (
                "limits.first_request_timeout_secs",
                config.connections.first_request_timeout.is_zero(),
            ),
            (
                "limits.idle_connection_timeout_secs",
                config.connections.idle_timeout.is_zero(),
            ),
            (
                "grants.session_idle_timeout_secs",
                config.grants.session_idle_timeout.is_zero(),
            ),
            (
                "grants.expiry_check_interval_ms",
                config.grants.expiry_check_interval.is_zero(),
            ),
        ] {
            if zero {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        if config.unix_socket_mode > 0o777 {
            return Err(ConfigError::Invalid(format!(
                "unix_socket_mode {:o} is not a file mode (write it as 0o600)",
                config.unix_socket_mode
            )));
        }
        if config.max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_streams must be at least 1".into(),
            ));
        }
        config.check_store()?;
        Ok(config)
    }
}

impl Config {
    /// The etcd settings make sense, and are only given for `store = etcd`.
    fn check_store(&self) -> Result<(), ConfigError> {
        let e = &self.etcd;
        if self.store == StoreKind::Sled {
            if *e != EtcdSettings::default() {
                return Err(ConfigError::Invalid(
                    "etcd settings (--etcd-endpoints, --etcd-prefix, --etcd-ca, --etcd-user, \
                     CONSENTD_ETCD_PASSWORD, [etcd]) are given but the store is sled: add --store etcd (or store = \"etcd\"), or remove them"
                        .into(),
                ));
            }
            return Ok(());
        }
        if e.endpoints.is_empty() {
            return Err(ConfigError::Invalid(
                "--store etcd needs --etcd-endpoints (or [etcd] endpoints in the config file)"
                    .into(),
            ));
        }
        let mut tls_endpoints = 0;
        for url in &e.endpoints {
            let rest = if let Some(rest) = url.strip_prefix("https://") {
                tls_endpoints += 1;
                rest
            } else if let Some(rest) = url.strip_prefix("http://") {
                rest
            } else {
                return Err(ConfigError::Invalid(format!(
                    "etcd endpoint {url:?} is not an http:// or https:// URL (http://host:port, \
                     or https://host:port with --etcd-ca)"
                )));
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(ConfigError::Invalid(format!(
                    "etcd endpoint {url:?}: expected http://host:port or https://host:port"
                )));
            }
        }
        if e.prefix.is_empty() {
            return Err(ConfigError::Invalid(
                "--etcd-prefix must not be empty (the store's keys start with it)".into(),
            ));
        }
        self.check_etcd_security(tls_endpoints)?;
        if e.max_txn_ops < 8 {
            return Err(ConfigError::Invalid(format!(
                "etcd.max_txn_ops {} is too small (at least 8; etcd's default is 128)",
                e.max_txn_ops
            )));
        }
        if e.max_txn_bytes < 4096 {
            return Err(ConfigError::Invalid(format!(
                "etcd.max_txn_bytes {} is too small (at least 4096)",
                e.max_txn_bytes
            )));
        }
        if e.lease_ttl < Duration::from_secs(2) || e.timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "etcd.lease_ttl_secs must be at least 2 and etcd.timeout_ms positive".into(),
            ));
        }
        Ok(())
    }

    /// TLS and authentication towards etcd: all endpoints https:// (with a
    /// CA) or none; a client certificate with its key; a user with exactly
    /// one password source.
    fn check_etcd_security(&self, tls_endpoints: usize) -> Result<(), ConfigError> {
        let e = &self.etcd;
        if tls_endpoints > 0 && tls_endpoints < e.endpoints.len() {
            return Err(ConfigError::Invalid(format!(
                "etcd endpoints mix http:// and https:// ({}): use https:// for all or none",
                e.endpoints.join(",")
            )));
        }
        let tls_files = e.ca.is_some() || e.cert.is_some() || e.key.is_some();
        if tls_endpoints == 0 && tls_files {
            return Err(ConfigError::Invalid(
                "--etcd-ca, --etcd-cert and --etcd-key ([etcd] ca, cert, key) are for https:// \
                 endpoints, but --etcd-endpoints are http://: use https:// URLs"
                    .into(),
            ));
        }
        if tls_endpoints > 0 && e.ca.is_none() {
            return Err(ConfigError::Invalid(
                "https:// etcd endpoints need --etcd-ca (or [etcd] ca): the CA bundle (PEM) \
                 etcd's server certificates chain to"
                    .into(),
            ));
        }
        if e.cert.is_some() != e.key.is_some() {
            return Err(ConfigError::Invalid(
                "--etcd-cert and --etcd-key ([etcd] cert and key) go together".into(),
            ));
        }
        match (&e.user, &e.password_file, &e.password) {
            (None, None, None) | (Some(_), Some(_), None) | (Some(_), None, Some(_)) => Ok(()),
            (Some(user), None, None) => Err(ConfigError::Invalid(format!(
                "--etcd-user {user:?} needs a password: --etcd-password-file FILE or the \
                 environment variable {ETCD_PASSWORD_ENV}"
            ))),
            (Some(_), Some(file), Some(_)) => Err(ConfigError::Invalid(format!(
                "the etcd password is given twice, by --etcd-password-file {} and by \
                 {ETCD_PASSWORD_ENV}: give one",
                file.display()
            ))),
            (None, Some(_), _) | (None, None, Some(_)) => Err(ConfigError::Invalid(format!(
                "an etcd password is given (--etcd-password-file or {ETCD_PASSWORD_ENV}) but no \
                 --etcd-user"
            ))),
        }
    }

    /// The safe default: without credentials and TLS, listen on loopback
    /// and unix sockets only, unless `insecure` says otherwise. Checked when
    /// the config is resolved and again when a daemon starts.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::Invalid(
                "listen is empty: give at least one address".into(),
            ));
        }
        if self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) && self.credentials.is_none() {
            return Err(ConfigError::Invalid(
                "tls client_ca needs a credentials file: client certificates map to principals through cert_subject".into(),
            ));
        }
        if self.credentials.is_none() && !self.insecure {
            let shared = self.listen.iter().any(|a| matches!(a, ListenAddr::Unix(_)))
                && self.unix_socket_mode & 0o077 != 0;
            if shared {
                return Err(ConfigError::Invalid(format!(
                    "refusing unix_socket_mode {:o} without credentials: group and other users \
                     would all be operators; set credentials, use 0o600, or pass --insecure to \
                     accept the risk",
                    self.unix_socket_mode
                )));
            }
            if let Some(addr) = self.metrics_listen.filter(|a| !a.ip().is_loopback()) {
                return Err(ConfigError::Invalid(format!(
                    "refusing to serve metrics on {addr} without credentials: listen on loopback, \
                     set credentials, or pass --insecure to accept the risk"
                )));
            }
        }
        let exposed = self.listen.iter().find_map(|a| match a {
            ListenAddr::Tcp(addr) if !addr.ip().is_loopback() => Some(*addr),
            _ => None,
        });
        let Some(addr) = exposed else { return Ok(()) };
        let missing = match (self.credentials.is_some(), self.tls.is_some()) {
            (true, true) => return Ok(()),
            (false, false) => "credentials and TLS",
            (false, true) => "credentials",
            (true, false) => "TLS",
        };
        if self.insecure {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "refusing to listen on {addr} without {missing}: set credentials and tls (cert, key), listen on loopback or a unix socket, or pass --insecure to accept the risk"
        )))
    }
}

fn parse_version(at: &str, raw: &str) -> Result<Version, ConfigError> {
    raw.parse()
        .map_err(|e| ConfigError::Invalid(format!("{at}: version {raw:?} {e}")))
}

fn parse_scope(at: &str, raw: &str) -> Result<Scope, ConfigError> {
    raw.parse()
        .map_err(|()| ConfigError::Invalid(format!("{at}: unknown scope {raw:?}")))
}

impl FileRules {
    fn resolve(self) -> Result<RuleSet, ConfigError> {
        let mut rules = if self.replace_defaults {
            RuleSet {
                popup: Vec::new(),
                min_sdk: Vec::new(),
            }
        } else {
            RuleSet::default()
        };
        for (i, r) in self.popup.into_iter().enumerate() {
            let at = format!("rules.popup[{i}] ({})", r.id);
            let platforms = r
                .platforms
                .iter()
                .map(|p| {
                    p.parse::<Platform>()
                        .map_err(|e| ConfigError::Invalid(format!("{at}: {e}")))
                })
                .collect::<Result<_, _>>()?;
            let rule = PopupRule {
                scope: parse_scope(&at, &r.scope)?,
                platforms,
                min_host_version: parse_version(&at, &r.min_host_version)?,
                id: r.id,
            };
            upsert(&mut rules.popup, rule, |a, b| a.id == b.id);
        }
        for (i, r) in self.min_sdk.into_iter().enumerate() {
            let at = format!("rules.min_sdk[{i}] ({})", r.id);
            let target = match (r.api, r.scope) {
                (Some(api), None) => MinSdkTarget::Api(api),
                (None, Some(scope)) => MinSdkTarget::Scope(parse_scope(&at, &scope)?),
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{at}: set exactly one of `api` and `scope`"
                    )))
                }
            };
            let rule = MinSdkRule {
                target,
                min_sdk_version: parse_version(&at, &r.min_sdk_version)?,
                id: r.id,
            };
            upsert(&mut rules.min_sdk, rule, |a, b| a.id == b.id);
        }
        Ok(rules)
    }
}

fn upsert<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T, &T) -> bool) {
    match list.iter_mut().find(|x| same(x, &item)) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let args = Args {
            listen: vec!["127.0.0.1:1".parse().unwrap()],
            ..Args::default()
        };
        let c = Config::resolve(args, file("listen = \"127.0.0.1:2\"\ndata_dir = \"/d\"")).unwrap();
        assert_eq!(
            c.listen,
            vec![ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())]
        );
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.cache_capacity, DEFAULT_CACHE_CAPACITY);
    }

    #[test]
    fn the_etcd_view_snapshot_interval_defaults_to_a_minute_and_0_turns_it_off() {
        let on = |text: &str| {
            let text = format!("store = \"etcd\"\n[etcd]\nendpoints = [\"http://h:2379\"]\n{text}");
            Config::resolve(Args::default(), file(&text))
                .unwrap()
                .etcd
                .snapshot_interval
        };
        assert_eq!(on(""), Some(DEFAULT_ETCD_SNAPSHOT_INTERVAL));
        assert_eq!(
            on("snapshot_interval_secs = 5"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(on("snapshot_interval_secs = 0"), None);
    }

    #[test]
    fn store_is_sled_unless_etcd_is_chosen_with_its_endpoints() {
        let c = Config::resolve(Args::default(), FileConfig::default()).unwrap();
        assert_eq!(c.store, StoreKind::Sled);

        let args = Args {
            store: Some(StoreKind::Etcd),
            etcd_endpoints: vec![
                "http://127.0.0.1:2379".into(),
                "http://10.0.0.2:2379".into(),
            ],
            etcd_prefix: Some("/p/".into()),
            ..Args::default()
        };
        let c = Config::resolve(
            args,
            file("[etcd]\nprefix = \"/file/\"\nmax_txn_ops = 1000"),
        )
        .unwrap();
        assert_eq!(c.store, StoreKind::Etcd);
        assert_eq!(c.etcd.endpoints.len(), 2);
        assert_eq!(c.etcd.prefix, "/p/", "the flag beats the file");
        assert_eq!(c.etcd.max_txn_ops, 1000);

        let c = Config::resolve(
            Args::default(),
            file("store = \"etcd\"\n[etcd]\nendpoints = [\"http://h:2379\"]"),
        )
        .unwrap();
        assert_eq!(
            (c.store, c.etcd.prefix.as_str()),
            (StoreKind::Etcd, DEFAULT_ETCD_PREFIX)
        );

        let refused =
            |args: Args, text: &str| Config::resolve(args, file(text)).unwrap_err().to_string();
        let etcd = || Args {
            store: Some(StoreKind::Etcd),
            ..Args::default()
        };
        assert!(refused(etcd(), "").contains("--store etcd needs --etcd-endpoints"));
        let bad = refused(
            Args {
                etcd_endpoints: vec!["127.0.0.1:2379".into()],
                ..etcd()
            },
            "",
        );
        assert!(
            bad.contains("\"127.0.0.1:2379\" is not an http:// or https:// URL"),
            "{bad}"
        );
        let ignored = refused(
            Args {
                etcd_endpoints: vec!["http://h:2379".into()],
                ..Args::default()
            },
            "",
        );
        assert!(ignored.contains("but the store is sled"), "{ignored}");
        assert!(refused(
            Args {
                etcd_endpoints: vec!["http://h:2379".into()],
                ..etcd()
            },
            "[etcd]\nuser = \"u\"",
        )
        .contains("--etcd-user \"u\" needs a password"));
    }

    #[test]
    fn etcd_tls_and_auth_settings_resolve_and_are_checked() {
        let https = || Args {
            store: Some(StoreKind::Etcd),
            etcd_endpoints: vec!["https://a:2379".into(), "https://b:2379".into()],
            ..Args::default()
        };
        let c = Config::resolve(
            Args {
                etcd_ca: Some("/flag/ca.pem".into()),
                etcd_user: Some("consentd".into()),
                etcd_password: Some(Secret("pw".into())),
                ..https()
            },
            file("[etcd]\nca = \"/file/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\""),
        )
        .unwrap();
        assert_eq!(
            c.etcd.ca,
            Some("/flag/ca.pem".into()),
            "the flag beats the file"
        );
        assert_eq!(
            (c.etcd.cert.clone(), c.etcd.key.clone()),
            (Some("/c.pem".into()), Some("/k.pem".into()))
        );
        assert_eq!(c.etcd.user.as_deref(), Some("consentd"));
        assert_eq!(c.etcd.password, Some(Secret("pw".into())));
        assert!(
            !format!("{:?}", c.etcd).contains("pw"),
            "the password never shows in Debug output"
        );

        let refused =
            |args: Args, text: &str| Config::resolve(args, file(text)).unwrap_err().to_string();
        let cases: [(Args, &str, &str); 7] = [
            (https(), "", "https:// etcd endpoints need --etcd-ca"),
            (
                Args {
                    etcd_endpoints: vec!["https://a:2379".into(), "http://b:2379".into()],
                    etcd_ca: Some("/ca".into()),
                    ..https()
                },
                "",
                "mix http:// and https://",
            ),
            (
                Args {
                    etcd_endpoints: vec!["http://a:2379".into()],
                    etcd_ca: Some("/ca".into()),
                    ..https()
                },
                "",
                "are for https:// endpoints",
            ),
            (
                Args {
                    etcd_ca: Some("/ca".into()),
                    ..https()
                },
                "[etcd]\ncert = \"/c.pem\"",
                "--etcd-cert and --etcd-key ([etcd] cert and key) go together",
            ),
            (
                Args {
                    etcd_ca: Some("/ca".into()),
                    etcd_user: Some("u".into()),
                    etcd_password_file: Some("/pw".into()),
                    etcd_password: Some(Secret("x".into())),
                    ..https()
                },
                "",
                "the etcd password is given twice, by --etcd-password-file /pw and by \
                 CONSENTD_ETCD_PASSWORD",
            ),
            (
                Args {
                    etcd_ca: Some("/ca".into()),
                    etcd_password: Some(Secret("x".into())),
                    ..https()
                },
                "",
                "but no --etcd-user",
            ),
            (
                Args {
                    etcd_password: Some(Secret("x".into())),
                    ..Args::default()
                },
                "",
                "but the store is sled",
            ),
        ];
        for (args, text, expected) in cases {
            let message = refused(args, text);
            assert!(message.contains(expected), "{message:?} says {expected:?}");
        }
    }

    #[test]
    fn file_rules_override_by_id_and_add() {
        let c = Config::resolve(
            Args::default(),
            file(
                r#"
                [[rules.popup]]
                id = "background-location-popup"
                scope = "scope.userLocationBackground"
                platforms = ["android", "ios", "ohos"]
                min_host_version = "8.0.10"

                [[rules.min_sdk]]
                id = "camera-min"
                scope = "scope.camera"
                min_sdk_version = "2.0"
                "#,
            ),
        )
        .unwrap();
        assert_eq!(c.rules.popup.len(), 1);
        assert_eq!(c.rules.popup[0].platforms.len(), 3);
        assert_eq!(c.rules.popup[0].min_host_version, "8.0.10".parse().unwrap());
        assert_eq!(c.rules.min_sdk.len(), 4);
    }

    #[test]
    fn the_example_production_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/consentd.toml");
        let args = Args {
            config: Some(path.into()),
            ..Args::default()
        };
        let c = Config::from_args(args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/consentd"));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.retention.max_events, Some(5_000_000));
        assert_eq!(c.retention.max_age, Some(Duration::from_secs(604_800)));
        assert_eq!(c.rules, RuleSet::default());
    }

    #[test]
    fn exposure_beyond_loopback_needs_credentials_and_tls() {
        let both = "credentials = '/c.toml'\n[tls]\ncert = '/c.pem'\nkey = '/k.pem'\n";
        let c = Config::resolve(
            Args::default(),
            file(&format!(
                "listen = ['0.0.0.0:1', 'unix:/run/c.sock']\n{both}"
            )),
        )
        .unwrap();
        assert_eq!(c.listen[1], ListenAddr::Unix("/run/c.sock".into()));
        assert_eq!(c.unix_socket_mode, 0o600);
        for (text, needle) in [
            ("listen = '0.0.0.0:1'", "without credentials and TLS"),
            ("listen = '[::]:1'\ncredentials = '/c.toml'", "without TLS"),
            (
                "listen = '10.0.0.1:1'\n[tls]\ncert = '/c'\nkey = '/k'",
                "without credentials",
            ),
            ("listen = []", "listen is empty"),
            (
                "[tls]\ncert = '/c'\nkey = '/k'\nclient_ca = '/ca'",
                "needs a credentials file",
            ),
            ("unix_socket_mode = 0o1777", "not a file mode"),
            (
                "listen = 'unix:/run/c.sock'\nunix_socket_mode = 0o666",
                "refusing unix_socket_mode 666 without credentials",
            ),
            (
                "listen = 'unix:/run/c.sock'\nunix_socket_mode = 0o660",
                "group and other users would all be operators",
            ),
            (
                "metrics_listen = '0.0.0.0:9464'",
                "refusing to serve metrics on 0.0.0.0:9464 without credentials",
            ),
            ("[limits]\nmax_message_bytes = 0", "must be positive"),
        ] {
            let err = Config::resolve(Args::default(), file(text))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let insecure = Args {
            insecure: true,
            ..Args::default()
        };
        assert!(Config::resolve(insecure, file("listen = '0.0.0.0:1'")).is_ok());
        // With credentials (or --insecure), shared sockets and exposed
        // metrics are the operator's choice.
        for text in [
            "credentials = '/c.toml'\nlisten = 'unix:/s'\nunix_socket_mode = 0o660\nmetrics_listen = '0.0.0.0:9464'",
            "listen = 'unix:/s'\nunix_socket_mode = 0o600\nmetrics_listen = '127.0.0.1:9464'",
        ] {
            assert!(Config::resolve(Args::default(), file(text)).is_ok(), "{text}");
        }
        let insecure = Args {
            insecure: true,
            ..Args::default()
        };
        assert!(Config::resolve(
            insecure,
            file("listen = 'unix:/s'\nunix_socket_mode = 0o666")
        )
        .is_ok());
        // Loopback and unix sockets need nothing.
        assert!(Config::resolve(Args::default(), file("listen = ['[::1]:1', 'unix:/s']")).is_ok());
    }

    #[test]
    fn the_hardened_example_config_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/consentd-hardened.toml"
        );
        let c = Config::from_args(Args {
            config: Some(path.into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(
            c.listen,
            vec![
                ListenAddr::Tcp("0.0.0.0:50051".parse().unwrap()),
                ListenAddr::Unix("/run/consentd/consentd.sock".into())
            ]
        );
        assert_eq!(c.unix_socket_mode, 0o660);
        let tls = c.tls.unwrap();
        assert_eq!(
            tls.client_ca,
            Some(PathBuf::from("/etc/consentd/tls/clients-ca.pem"))
        );
        assert_eq!(c.limits.request_timeout, Duration::from_secs(10));
        assert_eq!(c.max_message_bytes, 262_144);
        assert_eq!(c.watch.max_streams, 5000);
        assert_eq!(c.limits.max_in_flight_per_principal, 512);
        assert_eq!(c.limits.max_watch_streams_per_principal, 1000);
        assert_eq!(c.limits.message_timeout, Duration::from_secs(5));
        assert_eq!(
            c.connections,
            ConnectionLimits {
                max_connections: 4096,
                max_per_source: 256,
                first_request_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(300),
            }
        );
        assert!(!c.insecure);
    }

    #[test]
    fn grants_and_privacy_keys() {
        let c = Config::resolve(
            Args::default(),
            file("[grants]\nsession_idle_timeout_secs = 60\nexpiry_check_interval_ms = 250\n[privacy]\ndisagree_gap_secs = 3"),
        )
        .unwrap();
        assert_eq!(c.grants.session_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.grants.expiry_check_interval, Duration::from_millis(250));
        assert_eq!(c.grants.privacy_disagree_gap, Duration::from_secs(3));
        let d = Config::resolve(Args::default(), file("")).unwrap();
        assert_eq!(d.grants.privacy_disagree_gap, Duration::from_secs(10));
        assert!(Config::resolve(
            Args::default(),
            file("[grants]\nexpiry_check_interval_ms = 0")
        )
        .is_err());
    }

    #[test]
    fn bad_files_name_the_problem() {
        for (text, needle) in [
            ("[[rules.popup]]\nid='x'\nscope='scope.nope'\nplatforms=[]\nmin_host_version='1'", "unknown scope"),
            ("[[rules.popup]]\nid='x'\nscope='scope.camera'\nplatforms=['symbian']\nmin_host_version='1'", "unknown platform"),
            ("[[rules.min_sdk]]\nid='x'\nmin_sdk_version='1'", "exactly one"),
            ("[[rules.min_sdk]]\nid='x'\napi='wx.a'\nmin_sdk_version='1..2'", "empty segment"),
            ("max_batch = 0", "max_batch"),
        ] {
            let err = Config::resolve(Args::default(), file(text)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(toml::from_str::<FileConfig>("listn = '1'").is_err());
    }
}
