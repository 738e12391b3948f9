//! `agent-server`: the control server, and its administration commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_agent_server::cli::admin;
use edge_agent_server::cli::rollout::RolloutCommand;
use edge_agent_server::config::{Flags, EXIT_CONFIG};
use edge_agent_server::serve;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "agent-server", version = edge_agent_base::build_info::VERSION, about = "edge-agent control server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Flags,
}

#[derive(Subcommand)]
enum Command {
    /// Manage API clients
    Client {
        #[command(subcommand)]
        action: ClientAction,
    },
    /// Manage agents
    Agent {
        #[command(subcommand)]
        action: AgentAction,
    },
    /// Staged fleet upgrades: start, follow and steer them (a client of a running server)
    Rollout(Box<RolloutCommand>),
}

#[derive(Subcommand)]
enum ClientAction {
    /// Create a client and print its id and secret
    Add {
        /// An administrator, who may call the REST API (required: the only kind made here)
        #[arg(long, required = true)]
        admin: bool,
        /// A name for the client, shown to whoever signs in with it
        #[arg(long, default_value = "Administrator")]
        name: String,
    },
}

#[derive(Subcommand)]
enum AgentAction {
    /// Create an Agent with its own credentials and write its agent configuration
    Add {
        #[arg(long)]
        name: String,
        /// Write the configuration to this file, readable by its owner only (0600), instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace the --out file if it exists
        #[arg(long, requires = "out")]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let store = cli.serve.store();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let printed = match cli.command {
        Some(Command::Client { action: ClientAction::Add { name, .. } }) => {
            rt.block_on(admin::add_admin(&store, &name))
        }
        Some(Command::Agent { action: AgentAction::Add { name, out, force } }) => {
            return add_agent(rt, &cli.serve, &name, out.as_deref(), force);
        }
        Some(Command::Rollout(cmd)) => return edge_agent_server::cli::rollout::main(*cmd),
        None => return serve(rt, cli.serve),
    };
    match printed {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent-server: {}", edge_agent_base::error::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `agent-server agent add`: the configuration to `--out` (0600) or stdout, with a warning on
/// stderr when it will refuse upgrades or when stdout is a file others can read.
fn add_agent(rt: tokio::runtime::Runtime, flags: &Flags, name: &str, out: Option<&Path>, force: bool) -> ExitCode {
    let base_url = flags.base_url.as_deref().unwrap_or("http://127.0.0.1:8103/");
    let base_url = format!("{}/", base_url.trim_end_matches('/'));
    let setup = admin::AgentSetup {
        base_url: &base_url,
        release_keys: &flags.release_key,
        releases: flags.releases.as_deref(),
    };
    let written = (|| -> Result<admin::Added, admin::AdminError> {
        if let Some(path) = out {
            admin::check_out(path, force)?;
        }
        let added = rt.block_on(admin::add_agent(&flags.store(), name, &setup))?;
        match out {
            Some(path) => admin::write_out(path, &added.config, force)?,
            None => print!("{}", added.config),
        }
        Ok(added)
    })();
    match written {
        Ok(added) => {
            let exposed = if out.is_none() { admin::stdout_exposed() } else { None };
            for warning in added.warning.iter().chain(exposed.iter()) {
                eprintln!("agent-server: warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent-server: {}", edge_agent_base::error::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn serve(rt: tokio::runtime::Runtime, flags: Flags) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("EDGE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let config = match flags.validate() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("agent-server: {why}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            stop_requested().await;
            on_signal.cancel();
        });
        match serve::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent-server: {}", edge_agent_base::error::error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves when the operator asks the server to stop (SIGTERM, SIGINT).
async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
