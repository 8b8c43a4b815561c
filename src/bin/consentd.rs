//! The consentd daemon: flags -> config, logging, serve until SIGINT/SIGTERM;
//! SIGHUP reloads the credentials file and the TLS certificates.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use consentd::{
    config::{Args, Config, LogFormat},
    server::Daemon,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("consentd: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "consentd failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before serving, so an early SIGHUP cannot kill the daemon.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let daemon = Daemon::start(config).await.context("cannot start")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("installing the SIGINT handler")?;
                break;
            }
            _ = term.recv() => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading credentials and certificates");
                let failed = daemon.reload().len();
                if failed > 0 {
                    tracing::warn!(failed, "reload incomplete; the previous files stay in force");
                }
            }
        }
    }
    tracing::info!("signal received");
    daemon.shutdown().await.context("unclean shutdown")
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
