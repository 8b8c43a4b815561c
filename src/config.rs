//! Configuration: typed, validated once, passed down explicitly.
//!
//! Precedence: command-line flags, then `CONSENTD_*` environment variables
//! (clap reads both), then the TOML file given with `--config`, then the
//! defaults below.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

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
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
pub const DEFAULT_MAX_BATCH: usize = 1024;
pub const DEFAULT_QUEUE_DEPTH: usize = 4096;
pub const DEFAULT_PUBLISH_CAPACITY: usize = 1024;
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The daemon's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Prometheus endpoint (`GET /metrics`); off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// sled page cache, bytes.
    pub cache_capacity: u64,
    /// How long in-flight calls may take to finish on shutdown.
    pub drain_timeout: Duration,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default listen address parses"),
            metrics_listen: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_format: LogFormat::Text,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_batch: DEFAULT_MAX_BATCH,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            flush_on_commit: true,
            publish_capacity: DEFAULT_PUBLISH_CAPACITY,
            watch: WatchConfig::default(),
            retention: DEFAULT_RETENTION,
            compaction_interval: DEFAULT_COMPACTION_INTERVAL,
            rules: RuleSet::default(),
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
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "CONSENTD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, env = "CONSENTD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory holding the store [default: ./consentd-data].
    #[arg(long, env = "CONSENTD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "CONSENTD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format [default: text]. The level comes from RUST_LOG (default info).
    #[arg(long, env = "CONSENTD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// sled page cache size in bytes [default: 134217728].
    #[arg(long, env = "CONSENTD_CACHE_CAPACITY", value_name = "BYTES")]
    pub cache_capacity: Option<u64>,
    /// Seconds in-flight calls get to finish on shutdown [default: 10].
    #[arg(long, env = "CONSENTD_DRAIN_TIMEOUT", value_name = "SECS")]
    pub drain_timeout: Option<u64>,
}

/// The TOML file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub cache_capacity: Option<u64>,
    pub drain_timeout_secs: Option<u64>,
    pub max_concurrent_streams: Option<u32>,
    pub max_batch: Option<usize>,
    pub queue_depth: Option<usize>,
    pub flush_on_commit: Option<bool>,
    pub publish_capacity: Option<usize>,
    pub watch: Option<FileWatch>,
    pub retention: Option<FileRetention>,
    pub rules: Option<FileRules>,
}

/// `[watch]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWatch {
    pub progress_interval_ms: Option<u64>,
    pub stream_buffer: Option<usize>,
    pub catch_up_page: Option<usize>,
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
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
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
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            cache_capacity: args
                .cache_capacity
                .or(file.cache_capacity)
                .unwrap_or(d.cache_capacity),
            drain_timeout: args
                .drain_timeout
                .or(file.drain_timeout_secs)
                .map_or(d.drain_timeout, Duration::from_secs),
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
                }
            },
            retention: {
                let r = file.retention.as_ref();
                Retention {
                    max_events: r
                        .and_then(|r| r.max_events)
                        .map_or(d.retention.max_events, |n| (n > 0).then_some(n)),
                    max_age: r
                        .and_then(|r| r.max_age_secs)
                        .map_or(d.retention.max_age, |s| {
                            (s > 0).then(|| Duration::from_secs(s))
                        }),
                }
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
        if config.max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_streams must be at least 1".into(),
            ));
        }
        Ok(config)
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
            listen: Some("127.0.0.1:1".parse().unwrap()),
            ..Args::default()
        };
        let c = Config::resolve(args, file("listen = \"127.0.0.1:2\"\ndata_dir = \"/d\"")).unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.cache_capacity, DEFAULT_CACHE_CAPACITY);
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
