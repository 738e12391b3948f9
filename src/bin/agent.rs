//! `agent`: the daemon (`agent run`) and its local commands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_agent::agent::{self, Exit, COMMIT, TARGET, VERSION};
use edge_agent::config::{ConfigSource, LogFormat, RawConfig, EXIT_CONFIG};
use edge_agent::logbuf::{LogBuffer, DEFAULT_CAPACITY};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Exit code that asks the supervisor to start the (new) installed binary at once.
const EXIT_RESTART: u8 = 75;

#[derive(Parser)]
#[command(name = "agent", version = VERSION, about = "edge-agent: a self-upgrading agent daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon: connect to the control server and serve it until stopped
    Run {
        /// Configuration file (TOML, or a Medplum agent.properties)
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: RawConfig,
    },
    /// Print the version of this binary
    Version {
        /// As JSON: version, target triple, commit
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Version { json } => {
            if json {
                println!("{}", serde_json::json!({"version": VERSION, "target": TARGET, "commit": COMMIT}));
            } else {
                println!("agent {VERSION} ({TARGET}, {COMMIT})");
            }
            ExitCode::SUCCESS
        }
        Command::Run { config, overrides } => run(ConfigSource::new(config, std::env::vars(), overrides)),
    }
}

fn init_logging(format: LogFormat, buffer: LogBuffer) {
    let filter = EnvFilter::try_from_env("EDGE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr))),
    };
    tracing_subscriber::registry().with(filter).with(text).with(json).with(buffer).init();
}

fn run(source: ConfigSource) -> ExitCode {
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let logs = LogBuffer::new(DEFAULT_CAPACITY);
    init_logging(config.log_format, logs.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let (shared, outbox) = match agent::prepare(source, config, logs) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        match agent::run(shared, outbox, shutdown).await {
            Exit::Shutdown => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Exit::Restart => ExitCode::from(EXIT_RESTART),
        }
    })
}

/// SIGTERM or SIGINT cancel `shutdown`.
async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
