//! `agent-server`: the control server, and its administration commands.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edge_agent::server::{self, admin, ServerConfig};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "agent-server", version = edge_agent::agent::VERSION, about = "edge-agent control server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Args)]
struct Serve {
    /// Address to listen on (port 0: any free port, printed at start)
    #[arg(long, default_value = "127.0.0.1:8103")]
    listen: SocketAddr,
    /// Data directory (holds the SQLite database)
    #[arg(long, default_value = "/var/lib/edge-agent-server")]
    data: PathBuf,
    /// Lifetime of issued access tokens, in seconds
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// Seconds between the server's heartbeats to each agent
    #[arg(long, default_value_t = 10.0)]
    heartbeat_interval: f64,
    /// A release directory (as `agent release publish` lays out) to serve at /releases/
    #[arg(long)]
    releases: Option<PathBuf>,
    /// Also serve /metrics without a token on this address (for a scraper on a private network)
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Lifetime of a web page session after sign-in, in seconds
    #[arg(long, default_value_t = 28800)]
    session_ttl: u64,
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
}

#[derive(Subcommand)]
enum ClientAction {
    /// Create a client and print its id and secret
    Add {
        /// An administrator, who may call the REST API (required: the only kind made here)
        #[arg(long, required = true)]
        admin: bool,
        #[arg(long, default_value = "/var/lib/edge-agent-server")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum AgentAction {
    /// Create an Agent with its own credentials and print its agent configuration
    Add {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "/var/lib/edge-agent-server")]
        data: PathBuf,
        /// The server URL the agent should use, written into the printed config
        #[arg(long, default_value = "http://127.0.0.1:8103/")]
        base_url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let printed = match cli.command {
        Some(Command::Client { action: ClientAction::Add { data, .. } }) => admin::add_admin(&data),
        Some(Command::Agent { action: AgentAction::Add { name, data, base_url } }) => {
            admin::add_agent(&data, &name, &base_url)
        }
        None => return serve(cli.serve),
    };
    match printed {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Serve) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("EDGE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if !(args.heartbeat_interval.is_finite() && args.heartbeat_interval > 0.0) {
        eprintln!("agent-server: --heartbeat-interval must be a positive number of seconds");
        return ExitCode::from(64);
    }
    let config = ServerConfig {
        listen: args.listen,
        data_dir: args.data,
        token_ttl: Duration::from_secs(args.token_ttl.max(1)),
        heartbeat_interval: Duration::from_secs_f64(args.heartbeat_interval),
        max_message_bytes: edge_agent::protocol::DEFAULT_MAX_MESSAGE_BYTES,
        releases: args.releases,
        metrics_listen: args.metrics_listen,
        session_ttl: Duration::from_secs(args.session_ttl.max(1)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
            on_signal.cancel();
        });
        match server::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent-server: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
