//! `agent`: the daemon (`agent run`) and its local commands. Flags here; everything else in the
//! library (`edge_agent::start` for the processes of `agent run`, `edge_agent::host` for the
//! commands).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use edge_agent::config::{ConfigSource, RawConfig};
use edge_agent::host::release::ReleaseCommand;
use edge_agent::host::service::ServiceCommand;
use edge_agent::host::{self, HostError};
use edge_agent::{exit, platform, start, supervisor};
use edge_agent_base::build_info::{version_str, COMMIT, TARGET};
use edge_agent_base::error::error_chain;
use semver::Version;

#[derive(Parser)]
#[command(name = "agent", version = version_str(), about = "edge-agent: a self-upgrading agent daemon")]
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
        /// The version to install, 1.4.2 or v1.4.2 (default: the latest release)
        #[arg(long, value_parser = parse_version)]
        version: Option<Version>,
        /// Reinstall the same version, or retry one that failed here before
        #[arg(long)]
        force: bool,
        /// Upgrade from an offline bundle (`agent release bundle`) instead of the release source
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Put the previous binary back and restart the running daemon into it
    Rollback {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Publish releases: signing keys and the release directory
    Release {
        #[command(subcommand)]
        action: ReleaseCommand,
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

fn parse_version(text: &str) -> Result<Version, String> {
    edge_agent_wire::parse_version(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    edge_agent_base::stamp_version!();
    let source = |config| ConfigSource::new(config, std::env::vars(), RawConfig::default());
    match Cli::parse().command {
        Command::Version { json: true } => {
            let features: &[&str] = if platform::CAN_REEXEC { &[supervisor::ADOPT_FEATURE] } else { &[] };
            let said =
                serde_json::json!({"version": version_str(), "target": TARGET, "commit": COMMIT, "features": features});
            finish(Ok(format!("{said}\n")))
        }
        Command::Version { json: false } => finish(Ok(format!("agent {} ({TARGET}, {COMMIT})\n", version_str()))),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "agent", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let mut page = Vec::new();
            let rendered = clap_mangen::Man::new(Cli::command()).render(&mut page);
            finish(
                rendered
                    .map(|()| String::from_utf8_lossy(&page).into_owned())
                    .map_err(|e| HostError::Refused(e.to_string())),
            )
        }
        Command::Status { config, json } => finish(host::status::command(&source(config), json)),
        Command::CheckConfig { config } => {
            finish(start::runtime().block_on(host::check_config::check_config(&source(config))).map(|said| said + "\n"))
        }
        Command::Rollback { config } => {
            finish(source(config).load_local().map_err(HostError::from).and_then(|c| host::rollback::rollback(&c)))
        }
        Command::Upgrade { config, version, force, from_file } => {
            let source = source(config);
            finish(start::runtime().block_on(host::upgrade::upgrade_command(&source, version, force, from_file)))
        }
        Command::Release { action } => match host::release::command(action) {
            Ok(said) => finish(Ok(said)),
            Err(e) => {
                eprintln!("agent release: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, overrides, worker, adopt_worker, log_file } => {
            let source = ConfigSource::new(config, std::env::vars(), overrides);
            if worker {
                start::worker(source, log_file)
            } else {
                ExitCode::from(start::supervisor(source, adopt_worker, start::own_args(), log_file, None) as u8)
            }
        }
        Command::Service { action: ServiceCommand::Run { config, name } } => start::service(name, config),
        Command::Service { action } => finish(host::service::command(action)),
    }
}

/// Prints what a command said, or its error; the exit code (64 for configuration errors).
fn finish(result: Result<String, HostError>) -> ExitCode {
    match result {
        Ok(said) => {
            print!("{said}");
            ExitCode::SUCCESS
        }
        Err(e @ HostError::Config(_)) => {
            eprintln!("agent: invalid configuration: {e}");
            ExitCode::from(exit::CONFIG as u8)
        }
        Err(e) => {
            eprintln!("agent: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
