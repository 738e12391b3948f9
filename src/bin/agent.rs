//! `agent`: the daemon (`agent run`) and its local commands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use edge_agent::agent::{self, Exit};
use edge_agent::build_info::{COMMIT, TARGET, VERSION};
use edge_agent::config::{ConfigSource, LogFormat, RawConfig, EXIT_CONFIG};
use edge_agent::host::service::ServiceCommand;
use edge_agent::host::{self, HostError};
use edge_agent::logbuf::{LogBuffer, DEFAULT_CAPACITY};
use edge_agent::platform;
use edge_agent::publish::{self, keys, variants, Artifact, Publish, PublishError};
use edge_agent::state_dir::StateDir;
use edge_agent::supervisor::{self, Supervisor};
use edge_agent::upgrade::store::Store;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

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
        /// Internal: run the daemon itself, under the supervisor that `agent run` starts
        #[arg(long, hide = true)]
        worker: bool,
        /// Internal: a re-executed supervisor adopts this running worker
        #[arg(long, hide = true)]
        adopt_worker: Option<u32>,
        /// Append the logs to this file instead of writing them to stderr
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Install, remove, start or stop the agent as a Windows service
    Service {
        #[command(subcommand)]
        action: ServiceCommand,
    },
    /// Show this agent: version, daemon and connection, previous binary, upgrades
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// As JSON
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file and try the server's token endpoint with it
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Upgrade this agent from the host: through the running daemon, or alone when none runs
    Upgrade {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The version to install (default: the latest release)
        #[arg(long)]
        version: Option<String>,
        /// Reinstall the same version, or retry one that failed here before
        #[arg(long)]
        force: bool,
    },
    /// Put the previous binary back and restart the running daemon into it
    Rollback {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Publish releases: signing keys and the release directory
    Release {
        #[command(subcommand)]
        action: ReleaseAction,
    },
    /// Print shell completions (bash, zsh, fish, …) to stdout
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout
    #[command(hide = true)]
    Man,
    /// Print the version of this binary
    Version {
        /// As JSON: version, target triple, commit
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ReleaseAction {
    /// Create a minisign key pair (minisign.pub, minisign.key) for signing releases
    Keygen {
        /// Directory to write the key pair to
        #[arg(long)]
        out: PathBuf,
        /// Leave the secret key unencrypted (otherwise: password from EDGE_AGENT_KEY_PASSWORD or a prompt)
        #[arg(long)]
        no_password: bool,
    },
    /// Add a version to a release directory: assets, checksums, signatures, manifests
    Publish {
        /// The release directory (served as the agents' releases_url)
        #[arg(long)]
        dir: PathBuf,
        /// The version being published (X.Y.Z, optionally with a pre-release)
        #[arg(long)]
        version: String,
        /// Minisign secret key to sign the assets with
        #[arg(long)]
        key: Option<PathBuf>,
        /// Asset name prefix: assets are named <name>-<version>-<os>-<arch>
        #[arg(long, default_value = "agent")]
        name: String,
        /// Also write zstd patches from the binaries of this many previous versions (0: none)
        #[arg(long, default_value_t = variants::DEFAULT_PATCHES)]
        patches: usize,
        /// zstd level of the compressed copies and patches (1-22; lower is faster to publish)
        #[arg(long, default_value_t = variants::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Built binaries, as PATH or PATH:<os>-<arch>
        #[arg(required = true)]
        artifacts: Vec<Artifact>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Version { json } => {
            if json {
                let features: &[&str] = if platform::CAN_REEXEC { &[supervisor::ADOPT_FEATURE] } else { &[] };
                println!(
                    "{}",
                    serde_json::json!({"version": VERSION, "target": TARGET, "commit": COMMIT, "features": features})
                );
            } else {
                println!("agent {VERSION} ({TARGET}, {COMMIT})");
            }
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "agent", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status { config, json } => local_command(config, |cfg| {
            let s = host::status::status(cfg);
            Ok(if json { format!("{s:#}\n") } else { host::status::status_text(&s) })
        }),
        Command::CheckConfig { config } => {
            let source = ConfigSource::new(config, std::env::vars(), RawConfig::default());
            finish(runtime().block_on(host::check_config::check_config(&source)).map(|said| said + "\n"))
        }
        Command::Rollback { config } => local_command(config, host::rollback::rollback),
        Command::Upgrade { config, version, force } => {
            let source = ConfigSource::new(config, std::env::vars(), RawConfig::default());
            finish(runtime().block_on(host::upgrade::upgrade_command(&source, version, force)))
        }
        Command::Release { action } => match release(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent release: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, overrides, worker, adopt_worker, log_file } => {
            let source = ConfigSource::new(config, std::env::vars(), overrides);
            if worker {
                run_worker(source, log_file)
            } else {
                let own_args = own_args();
                ExitCode::from(supervise(source, adopt_worker, own_args, log_file, None) as u8)
            }
        }
        Command::Service { action: ServiceCommand::Run { config, name } } => run_service(name, config),
        Command::Service { action } => finish(host::service::command(action)),
    }
}

/// Loads the configuration and runs one local command; its text goes to stdout.
fn local_command(
    config: Option<PathBuf>,
    f: impl FnOnce(&edge_agent::config::Config) -> Result<String, HostError>,
) -> ExitCode {
    let source = ConfigSource::new(config, std::env::vars(), RawConfig::default());
    let cfg = match load(&source) {
        Ok(c) => c,
        Err(code) => return code,
    };
    finish(f(&cfg))
}

/// Prints what a local command said, or its error; the exit code (64 for configuration errors).
fn finish(result: Result<String, HostError>) -> ExitCode {
    match result {
        Ok(said) => {
            print!("{said}");
            ExitCode::SUCCESS
        }
        Err(e @ HostError::Config(_)) => {
            eprintln!("agent: invalid configuration: {e}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(e) => {
            eprintln!("agent: {}", edge_agent::util::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn release(action: ReleaseAction) -> Result<(), PublishError> {
    let password = std::env::var(keys::PASSWORD_ENV).ok();
    match action {
        ReleaseAction::Keygen { out, no_password } => {
            let (pk, sk) = keys::keygen(&out, no_password, password)?;
            println!("public key:  {}\nsecret key:  {}", pk.display(), sk.display());
            println!("trust it in agent.toml as: trusted_keys = [\"{}\"]", public_key_line(&pk));
        }
        ReleaseAction::Publish { dir, version, key, name, artifacts, patches, level } => {
            let sk = key.as_deref().map(|k| keys::load_secret(k, password)).transpose()?;
            let variants = variants::Options { level, patches };
            let p = Publish {
                dir: &dir,
                version: &version,
                name: &name,
                artifacts: &artifacts,
                key: sk.as_ref(),
                variants,
            };
            let report = publish::publish(p)?;
            for a in &report.added {
                println!("published {a}{}", if sk.is_some() { " (signed)" } else { "" });
            }
            for v in &report.variants {
                println!("  {v}");
            }
            for a in &report.unchanged {
                println!("unchanged {a}: already published with the same bytes");
            }
            if report.latest_moved {
                println!("latest.json now points at {version}");
            }
        }
    }
    Ok(())
}

/// The base64 line of a minisign public key file.
fn public_key_line(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default().lines().last().unwrap_or_default().trim().to_string()
}

/// Logs to stderr, or appended to `file`.
fn init_logging(format: LogFormat, buffer: LogBuffer, file: Option<&std::path::Path>) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = EnvFilter::try_from_env("EDGE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let opened = file.map(|f| {
        std::fs::create_dir_all(f.parent().unwrap_or(std::path::Path::new(".")))?;
        std::fs::OpenOptions::new().create(true).append(true).open(f)
    });
    let (writer, ansi) = match opened {
        Some(Ok(f)) => (BoxMakeWriter::new(std::sync::Mutex::new(f)), false),
        Some(Err(e)) => {
            eprintln!("agent: cannot open the log file {}: {e}; logging to stderr", file.unwrap().display());
            (BoxMakeWriter::new(std::io::stderr), false)
        }
        None => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal()),
    };
    let (text, json) = match format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer)), None),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json().with_writer(writer))),
    };
    tracing_subscriber::registry().with(filter).with(text).with(json).with(buffer).init();
}

fn load(source: &ConfigSource) -> Result<edge_agent::config::Config, ExitCode> {
    source.load().map_err(|e| {
        eprintln!("agent: invalid configuration: {e}");
        ExitCode::from(EXIT_CONFIG as u8)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// This process's arguments, less [`supervisor::ADOPT_FLAG`] and its value: what a re-executed
/// supervisor runs with.
fn own_args() -> Vec<std::ffi::OsString> {
    let mut own_args = vec![];
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == supervisor::ADOPT_FLAG {
            args.next();
        } else {
            own_args.push(a);
        }
    }
    own_args
}

/// `agent run`: the supervisor, which starts `own_args --worker` (or, re-executed after an
/// upgrade, adopts the worker that runs) until `shutdown` (by default: a stop signal).
fn supervise(
    source: ConfigSource,
    adopt: Option<u32>,
    own_args: Vec<std::ffi::OsString>,
    log_file: Option<PathBuf>,
    shutdown: Option<CancellationToken>,
) -> i32 {
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: invalid configuration: {e}");
            return EXIT_CONFIG;
        }
    };
    init_logging(config.log_format, LogBuffer::new(1), log_file.as_deref());
    let installed = match edge_agent::upgrade::install::installed_path() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot locate this binary: {e}");
            return 1;
        }
    };
    let mut worker_args = own_args.clone();
    worker_args.push("--worker".into());
    let store = Store::new(StateDir::new(&config.state_dir));
    let mut sup = Supervisor { installed, worker_args, own_args, store, health_window: config.health_window, adopt };
    runtime().block_on(async move {
        let shutdown = shutdown.unwrap_or_else(|| {
            let token = CancellationToken::new();
            tokio::spawn(on_signal(token.clone()));
            token
        });
        sup.run(shutdown).await
    })
}

/// `agent service run`: the supervisor under the service control manager, which stops it with
/// its stop control. Logs go to `agent.log` in the state directory; the worker runs as
/// `agent run --config … --log-file … --worker`.
fn run_service(name: String, config: Option<PathBuf>) -> ExitCode {
    let body = move |shutdown: CancellationToken| {
        let source = ConfigSource::new(config, std::env::vars(), RawConfig::default());
        let state = source.load().map(|c| c.state_dir).unwrap_or_else(|_| platform::default_state_dir());
        let log = host::service::log_file(&state);
        let own_args = [
            "run".into(),
            "--config".into(),
            source.path.clone().into_os_string(),
            "--log-file".into(),
            log.clone().into_os_string(),
        ];
        supervise(source, None, own_args.into(), Some(log), Some(shutdown))
    };
    match platform::service::run(&name, Box::new(body)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {}", edge_agent::util::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `agent run --worker`: the daemon itself.
fn run_worker(source: ConfigSource, log_file: Option<PathBuf>) -> ExitCode {
    let config = match load(&source) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let logs = LogBuffer::new(DEFAULT_CAPACITY);
    init_logging(config.log_format, logs.clone(), log_file.as_deref());
    supervisor::bind_to_supervisor();
    runtime().block_on(async move {
        let (shared, outbox) = match agent::prepare(source, config, logs) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot start: {}", edge_agent::util::error_chain(&e));
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        let restart = shared.restart.clone();
        tokio::spawn(async move {
            edge_agent::platform::restart_requested().await;
            tracing::info!("SIGHUP: restarting into the installed binary");
            restart.cancel();
        });
        match agent::run(shared, outbox, shutdown).await {
            Exit::Shutdown => {
                tracing::info!("stopped");
                // Exit here, without tearing the runtime down: an upgrade in flight keeps its
                // partial download for the next worker to resume.
                std::process::exit(0)
            }
            Exit::Restart => ExitCode::from(supervisor::EXIT_RESTART as u8),
        }
    })
}

/// SIGTERM or SIGINT cancel `shutdown`.
async fn on_signal(shutdown: CancellationToken) {
    edge_agent::platform::stop_requested().await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
