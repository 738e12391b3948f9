//! `agent-server`: the control server, and its administration commands.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edge_agent_server::store::StoreConfig;
use edge_agent_server::{self as server, admin, ServerConfig};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "agent-server", version = edge_agent_base::build_info::VERSION, about = "edge-agent control server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

/// The server's options; each works before or after a subcommand.
#[derive(Args)]
struct Serve {
    /// Address to listen on (port 0: any free port, printed at start)
    #[arg(long, global = true, env = "AGENT_SERVER_LISTEN", default_value = "127.0.0.1:8103")]
    listen: SocketAddr,
    /// Data directory of the embedded SQLite database (unused with --database)
    #[arg(long, global = true, env = "AGENT_SERVER_DATA", default_value = "/var/lib/edge-agent-server")]
    data: PathBuf,
    /// Store everything in this PostgreSQL database instead of SQLite (postgres://user:pass@host/db)
    #[arg(long, global = true, env = "AGENT_SERVER_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Join the other nodes sharing this Redis (redis://host:6379/0), for several nodes behind a
    /// load balancer; requires --database
    #[arg(long, global = true, env = "AGENT_SERVER_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// Seconds an agent stays "connected" after the node holding its socket stopped renewing it
    #[arg(long, global = true, default_value_t = 30)]
    presence_ttl: u64,
    /// Lifetime of issued access tokens, in seconds
    #[arg(long, global = true, default_value_t = 3600)]
    token_ttl: u64,
    /// Seconds between the server's heartbeats to each agent
    #[arg(long, global = true, default_value_t = 10.0)]
    heartbeat_interval: f64,
    /// A release directory (as `agent release publish` lays out) to serve at /releases/
    #[arg(long, global = true)]
    releases: Option<PathBuf>,
    /// Also serve /metrics without a token on this address (for a scraper on a private network)
    #[arg(long, global = true, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Lifetime of a web page session after sign-in, in seconds
    #[arg(long, global = true, default_value_t = 28800)]
    session_ttl: u64,
    /// The URL clients reach this server at: for absolute links in search results (default: from
    /// each request's Host and X-Forwarded-Proto headers), and the URL `agent add` writes into
    /// the agent's configuration (default there: http://127.0.0.1:8103/)
    #[arg(long, global = true)]
    base_url: Option<String>,
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
    Rollout(Box<edge_agent_server::rollout::cli::RolloutCommand>),
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
    /// Create an Agent with its own credentials and print its agent configuration
    Add {
        #[arg(long)]
        name: String,
    },
}

fn store_config(args: &Serve) -> StoreConfig {
    match &args.database {
        Some(url) => StoreConfig::Postgres(url.clone()),
        None => StoreConfig::Sqlite(args.data.clone()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let store = store_config(&cli.serve);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let printed = match cli.command {
        Some(Command::Client { action: ClientAction::Add { name, .. } }) => {
            rt.block_on(admin::add_admin(&store, &name))
        }
        Some(Command::Agent { action: AgentAction::Add { name } }) => {
            let base_url = cli.serve.base_url.as_deref().unwrap_or("http://127.0.0.1:8103/");
            rt.block_on(admin::add_agent(&store, &name, base_url))
        }
        Some(Command::Rollout(cmd)) => return edge_agent_server::rollout::cli::main(*cmd),
        None => return serve(rt, cli.serve),
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

fn serve(rt: tokio::runtime::Runtime, args: Serve) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("EDGE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if !(args.heartbeat_interval.is_finite() && args.heartbeat_interval > 0.0) {
        eprintln!("agent-server: --heartbeat-interval must be a positive number of seconds");
        return ExitCode::from(64);
    }
    let base_url = match args.base_url.as_deref().map(normalize_base_url).transpose() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("agent-server: --base-url: {why}");
            return ExitCode::from(64);
        }
    };
    if args.redis.is_some() && args.database.is_none() {
        eprintln!("agent-server: --redis needs --database: nodes joined by Redis must share one PostgreSQL database");
        return ExitCode::from(64);
    }
    if args.presence_ttl < 3 {
        eprintln!("agent-server: --presence-ttl must be at least 3 seconds");
        return ExitCode::from(64);
    }
    let config = ServerConfig {
        base_url,
        listen: args.listen,
        store: store_config(&args),
        redis: args.redis,
        presence_ttl: Duration::from_secs(args.presence_ttl),
        token_ttl: Duration::from_secs(args.token_ttl.max(1)),
        heartbeat_interval: Duration::from_secs_f64(args.heartbeat_interval),
        max_message_bytes: edge_agent_wire::message::DEFAULT_MAX_MESSAGE_BYTES,
        releases: args.releases,
        metrics_listen: args.metrics_listen,
        session_ttl: Duration::from_secs(args.session_ttl.max(1)),
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            stop_requested().await;
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

/// `https://host/prefix` → `https://host/prefix/`; only http and https URLs.
fn normalize_base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?} must be an http:// or https:// URL with a host"));
    }
    let text = url.to_string();
    Ok(if text.ends_with('/') { text } else { format!("{text}/") })
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
