//! `agent-server`: the control server, and its administration commands.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edge_agent::server::store::StoreConfig;
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
    Rollout(Box<RolloutCommand>),
}

#[derive(Args)]
struct RolloutCommand {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: RolloutAction,
}

#[derive(Args)]
struct ApiArgs {
    /// The server's URL
    #[arg(long, env = "EDGE_AGENT_SERVER_URL", default_value = "http://127.0.0.1:8103/", global = true)]
    url: String,
    /// An admin client's id
    #[arg(long, env = "EDGE_AGENT_SERVER_CLIENT_ID", global = true)]
    client_id: Option<String>,
    /// An admin client's secret
    #[arg(long, env = "EDGE_AGENT_SERVER_CLIENT_SECRET", hide_env_values = true, global = true)]
    client_secret: Option<String>,
}

#[derive(Args)]
struct StartArgs {
    /// Target version, or `latest` when the server hosts releases
    #[arg(long, default_value = "latest")]
    version: String,
    /// An Agent search parameter, e.g. `name=clinic-` or `identifier=urn:site|7` (repeatable; none: every agent)
    #[arg(long = "select", value_name = "PARAM=VALUE")]
    select: Vec<String>,
    /// Agents upgraded alone first [default: 1]
    #[arg(long)]
    canary: Option<u64>,
    /// Growth factor of each wave [default: 2]
    #[arg(long)]
    growth: Option<f64>,
    /// At most this many agents upgrading at once [default: 10]
    #[arg(long)]
    max_in_flight: Option<u64>,
    /// Seconds between waves [default: 0]
    #[arg(long)]
    bake: Option<u64>,
    /// Halt when more than this many agents have failed
    #[arg(long)]
    max_failures: Option<u64>,
    /// Halt when more than this percentage of finished agents have failed [default: 10]
    #[arg(long)]
    max_failure_percent: Option<f64>,
    /// ...once at least this many have finished [default: 1]
    #[arg(long)]
    min_finished: Option<u64>,
    /// Per-agent timeout in milliseconds [default: 45000, at most 56000]
    #[arg(long)]
    timeout: Option<u64>,
    /// Seconds an offline agent may take to come back before it counts as expired [default: 86400]
    #[arg(long)]
    offline_deadline: Option<u64>,
    /// Daily maintenance window, e.g. 02:00-04:00
    #[arg(long)]
    window: Option<String>,
    /// Time zone of the window, e.g. Europe/Berlin [default: UTC]
    #[arg(long)]
    time_zone: Option<String>,
    /// Reinstall on agents already on the version
    #[arg(long)]
    force: bool,
    /// Follow the rollout until it ends
    #[arg(long)]
    watch: bool,
}

#[derive(Subcommand)]
enum RolloutAction {
    /// Start a rollout of every agent the selection finds
    Start(Box<StartArgs>),
    /// List rollouts, newest first
    List,
    /// Show a rollout's progress
    Show {
        id: String,
        /// Redraw until the rollout ends (exit code 1 if it halted or was cancelled)
        #[arg(long)]
        watch: bool,
    },
    /// Pause a rollout: agents upgrading finish, no new ones are asked
    Pause { id: String },
    /// Resume a paused rollout
    Resume { id: String },
    /// Cancel a rollout: agents upgrading finish, the others are skipped
    Cancel { id: String },
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
        Some(Command::Rollout(cmd)) => return rollout(cmd.api, cmd.action),
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
        max_message_bytes: edge_agent::protocol::DEFAULT_MAX_MESSAGE_BYTES,
        releases: args.releases,
        metrics_listen: args.metrics_listen,
        session_ttl: Duration::from_secs(args.session_ttl.max(1)),
    };
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

/// `https://host/prefix` → `https://host/prefix/`; only http and https URLs.
fn normalize_base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?} must be an http:// or https:// URL with a host"));
    }
    let text = url.to_string();
    Ok(if text.ends_with('/') { text } else { format!("{text}/") })
}

fn rollout(api: ApiArgs, action: RolloutAction) -> ExitCode {
    use edge_agent::server::rollout::cli::{self, Client};
    let (Some(client_id), Some(client_secret)) = (api.client_id, api.client_secret) else {
        eprintln!(
            "agent-server rollout: needs an admin client: --client-id and --client-secret, or \
             EDGE_AGENT_SERVER_CLIENT_ID and EDGE_AGENT_SERVER_CLIENT_SECRET"
        );
        return ExitCode::from(64);
    };
    let client = Client { url: api.url, client_id, client_secret };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async move {
        match action {
            RolloutAction::List => client.get("Rollout").await.map(|v| (cli::render_list(&v), 0)),
            RolloutAction::Show { id, watch } => client.show(&id, watch).await.map(|code| (String::new(), code)),
            RolloutAction::Pause { id } => {
                client.post(&format!("Rollout/{id}/$pause")).await.map(|v| (cli::render(&v), 0))
            }
            RolloutAction::Resume { id } => {
                client.post(&format!("Rollout/{id}/$resume")).await.map(|v| (cli::render(&v), 0))
            }
            RolloutAction::Cancel { id } => {
                client.post(&format!("Rollout/{id}/$cancel")).await.map(|v| (cli::render(&v), 0))
            }
            RolloutAction::Start(start) => start_rollout(&client, *start).await,
        }
    });
    match result {
        Ok((text, code)) => {
            print!("{text}");
            ExitCode::from(code as u8)
        }
        Err(e) => {
            eprintln!("agent-server rollout: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start_rollout(
    client: &edge_agent::server::rollout::cli::Client,
    start: StartArgs,
) -> Result<(String, i32), edge_agent::server::rollout::cli::CliError> {
    use edge_agent::server::rollout::cli::{render, CliError};
    let StartArgs {
        version,
        select,
        canary,
        growth,
        max_in_flight,
        bake,
        max_failures,
        max_failure_percent,
        min_finished,
        timeout,
        offline_deadline,
        window,
        time_zone,
        force,
        watch,
    } = start;
    let mut selection = Vec::new();
    for s in select {
        let Some((k, v)) = s.split_once('=') else {
            return Err(CliError::Refused(format!("--select {s:?}: expected PARAM=VALUE, e.g. name=clinic-")));
        };
        selection.push((k.to_string(), v.to_string()));
    }
    let params: Vec<(String, String)> = [
        ("version", Some(version)),
        ("canary", canary.map(|v| v.to_string())),
        ("growth", growth.map(|v| v.to_string())),
        ("maxInFlight", max_in_flight.map(|v| v.to_string())),
        ("bake", bake.map(|v| v.to_string())),
        ("maxFailures", max_failures.map(|v| v.to_string())),
        ("maxFailurePercent", max_failure_percent.map(|v| v.to_string())),
        ("minFinished", min_finished.map(|v| v.to_string())),
        ("timeout", timeout.map(|v| v.to_string())),
        ("offlineDeadline", offline_deadline.map(|v| v.to_string())),
        ("window", window),
        ("timeZone", time_zone),
        ("force", force.then(|| "true".to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
    .collect();
    let status = client.start(&selection, &params).await?;
    let id = status["id"].as_str().unwrap_or_default().to_string();
    if watch {
        return client.show(&id, true).await.map(|code| (String::new(), code));
    }
    Ok((format!("{}follow it: agent-server rollout show {id} --watch\n", render(&status)), 0))
}
