//! The consentd daemon: flags -> config, logging, serve until SIGINT/SIGTERM;
//! SIGHUP reloads the credentials file and the TLS certificates.
//!
//! Every error that stops it, from the flags, the config file or starting
//! up, is one line on stderr, `consentd: <what went wrong>`, and exit code 2;
//! a failure while shutting down exits 1. Under systemd (`Type=notify`) it
//! reports readiness once every listener is bound and the store is open.

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use consentd::{
    config::{Args, Config, LogFormat, DEFAULT_LOG_LEVEL},
    server::Daemon,
};
use sd_notify::NotifyState;
use tracing_subscriber::{
    filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Exit code of every error that keeps the daemon from starting.
const CANNOT_START: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_args(args)
        .map_err(anyhow::Error::from)
        .and_then(absolute_data_dir)
    {
        Ok(config) => config,
        Err(e) => return fail(&e, CANNOT_START),
    };
    if let Err(e) = init_logging(&config) {
        return fail(&e, CANNOT_START);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &anyhow::Error::new(e).context("cannot start the async runtime"),
                CANNOT_START,
            )
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Start(e)) => fail(&e, CANNOT_START),
        Err(Failure::Stop(e)) => fail(&e, 1),
    }
}

/// Prints the error once, as `consentd: cause: cause...`, and returns `code`.
fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    eprintln!("consentd: {}", one_line(e));
    ExitCode::from(code)
}

/// The error and its causes on one line, each cause once: many errors repeat
/// their source in their own message ("cannot listen on X: Address already
/// in use"), and the source then follows again in the chain.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

/// The data dir as an absolute path, so messages and logs name it exactly.
fn absolute_data_dir(mut config: Config) -> anyhow::Result<Config> {
    config.data_dir = std::path::absolute(&config.data_dir)
        .with_context(|| format!("data dir {}", config.data_dir.display()))?;
    Ok(config)
}

enum Failure {
    Start(anyhow::Error),
    Stop(anyhow::Error),
}

async fn run(config: Config) -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before serving, so an early SIGHUP cannot kill the daemon.
    let mut term = signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")
        .map_err(Failure::Start)?;
    let mut hangup = signal(SignalKind::hangup())
        .context("installing the SIGHUP handler")
        .map_err(Failure::Start)?;
    let daemon = Daemon::start(config)
        .await
        .context("cannot start")
        .map_err(Failure::Start)?;
    notify(&[NotifyState::Ready]);
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("installing the SIGINT handler").map_err(Failure::Stop)?;
                break;
            }
            _ = term.recv() => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading credentials and certificates");
                notify(&[NotifyState::Reloading]);
                let failed = daemon.reload().len();
                if failed > 0 {
                    tracing::warn!(failed, "reload incomplete; the previous files stay in force");
                }
                notify(&[NotifyState::Ready]);
            }
        }
    }
    tracing::info!("signal received");
    notify(&[NotifyState::Stopping]);
    daemon
        .shutdown()
        .await
        .context("unclean shutdown")
        .map_err(Failure::Stop)
}

/// Tells the service manager (systemd `Type=notify`, `NOTIFY_SOCKET`) about
/// a state change; without a manager this does nothing.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// `LEVEL` or `TARGET=LEVEL` directives, comma-separated. A bare word that
/// is no level is refused: as a filter it would mean "everything from the
/// module of that name", which is never what a mistyped level meant.
fn log_filter(filter: &str) -> Option<Targets> {
    use tracing_subscriber::filter::LevelFilter;
    let valid = filter.split(',').all(|directive| {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        level.trim().parse::<LevelFilter>().is_ok()
    });
    valid.then(|| filter.parse().ok()).flatten()
}

/// stderr logging: `--log-level` (else `RUST_LOG`, else info) as a filter of
/// `target=level` directives; colour only for `auto` on a terminal.
fn init_logging(config: &Config) -> anyhow::Result<()> {
    let (filter, source) = match (&config.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => (level.clone(), "--log-level"),
        (None, Ok(level)) if !level.is_empty() => (level, "RUST_LOG"),
        _ => (DEFAULT_LOG_LEVEL.to_owned(), "the default"),
    };
    let targets = log_filter(&filter).ok_or_else(|| {
        anyhow::anyhow!(
            "{source} {filter:?} is not a log filter: use off, error, warn, info, debug or trace, \
             optionally with per-module directives like warn,consentd=debug"
        )
    })?;
    let colour = config.log_format == LogFormat::Auto
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let registry = tracing_subscriber::registry().with(targets);
    match config.log_format {
        LogFormat::Auto | LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json()).try_init(),
    }
    .context("installing the logger")
}
