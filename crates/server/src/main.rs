//! `agent-server`: the control server, and its administration commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use edge_agent_server::cli::admin;
use edge_agent_server::cli::credentials::{self, CredentialError};
use edge_agent_server::cli::policy::PolicyCommand;
use edge_agent_server::cli::rollout::RolloutCommand;
use edge_agent_server::config::{Flags, PublicFlags, StoreFlags, EXIT_CONFIG};
use edge_agent_server::model::access::Role;
use edge_agent_server::serve;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Without a subcommand: run the server with these options. The admin subcommands take only the
/// options they use, after them or (as the server's own) before them.
#[derive(Parser)]
#[command(name = "agent-server", version = edge_agent_base::build_info::version_str(), about = "edge-agent control server")]
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
    /// The update policy: show, set, suspend, resume it (a client of a running server)
    Policy(Box<PolicyCommand>),
    /// The audit trail
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Write the events recorded since DATE to stdout as NDJSON, one FHIR AuditEvent a line
    Export {
        /// A date or an instant (2026-11-29, 2026-11-29T07:00:00Z)
        #[arg(long)]
        since: String,
        #[command(flatten)]
        store: StoreFlags,
    },
}

/// The store options alone, given after the subcommand (or before it, as the server's own).
#[derive(Args)]
struct Store {
    #[command(flatten)]
    store: StoreFlags,
}

/// One client or agent, by id, in the store.
#[derive(Args)]
struct One {
    /// Its id (as `list` shows it)
    id: String,
    #[command(flatten)]
    store: StoreFlags,
}

#[derive(Subcommand)]
enum ClientAction {
    /// Create a client and print its id and secret
    Add {
        /// An administrator (the same as --role admin)
        #[arg(long, conflicts_with = "role")]
        admin: bool,
        /// viewer (sees the fleet), operator (also acts on it) or admin (also manages clients and
        /// agents, and reads the audit trail)
        #[arg(long, required_unless_present = "admin")]
        role: Option<String>,
        /// A name for the client, shown to whoever signs in with it and in the audit trail
        /// [default: its role's, Administrator, Operator or Viewer]
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        store: StoreFlags,
    },
    /// List every client: id, role, name (and the agent it acts for)
    List(Store),
    /// Show one client
    Show(One),
    /// Remove a client: its secret, tokens and page sessions stop on every node within a second
    Remove(One),
    /// Give a client a new secret, printed once; the old one and its tokens stop at once
    RotateSecret(One),
    /// Change a client's role (viewer, operator or admin); it applies to its next request
    SetRole {
        id: String,
        role: String,
        #[command(flatten)]
        store: StoreFlags,
    },
}

#[derive(Subcommand)]
enum AgentAction {
    /// Create an Agent with its own credentials and write its agent configuration
    Add {
        /// The agent's name, shown in searches and on the page (not empty; a name already in use is
        /// allowed, with a warning)
        #[arg(long)]
        name: String,
        /// An identifier of the fleet's own, as SYSTEM|VALUE (e.g. urn:acme:site|clinic-7), unique
        /// among agents (repeatable)
        #[arg(long, value_name = "SYSTEM|VALUE")]
        identifier: Vec<String>,
        /// Write the configuration to this file, readable by its owner only (0600), instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace the --out file if it exists
        #[arg(long, requires = "out")]
        force: bool,
        #[command(flatten)]
        public: PublicFlags,
        #[command(flatten)]
        store: StoreFlags,
    },
    /// List every agent: id, status, name
    List(Store),
    /// Show one agent and its clients
    Show(One),
    /// Remove an agent: its socket closes, its credentials stop, and it answers 410 Gone after
    Remove(One),
    /// Give an agent new credentials, printed once; the old secret and its tokens stop at once
    RotateSecret(One),
}

fn main() -> ExitCode {
    edge_agent_base::stamp_version!();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let printed = match cli.command {
        Some(Command::Client { action: ClientAction::Add { name, admin, role, store } }) => {
            let store = store.or(cli.serve.store).store();
            let role = if admin { Ok(Role::Admin) } else { Role::parse(role.as_deref().unwrap_or_default()) };
            match role {
                Ok(role) => {
                    // A viewer named "Administrator" in the audit trail would mislead its readers.
                    let name = name.unwrap_or_else(|| role.title().to_string());
                    rt.block_on(admin::add_client(&store, role, &name)).map_err(CredentialError::from)
                }
                Err(e) => Err(CredentialError::from(e)),
            }
        }
        Some(Command::Client { action }) => rt.block_on(client_command(cli.serve.store, action)),
        Some(Command::Agent { action: AgentAction::Add { name, identifier, out, force, public, store } }) => {
            let (public, store) = (public.or(cli.serve.public), store.or(cli.serve.store));
            let add = AddAgent { name: &name, identifiers: &identifier, out: out.as_deref(), force };
            return add_agent(rt, &public, &store, add);
        }
        Some(Command::Agent { action }) => rt.block_on(agent_command(cli.serve.store, action)),
        Some(Command::Rollout(cmd)) => return edge_agent_server::cli::rollout::main(*cmd),
        Some(Command::Audit { action: AuditAction::Export { since, store } }) => {
            let store = store.or(cli.serve.store).store();
            let mut out = std::io::stdout().lock();
            return match rt.block_on(edge_agent_server::cli::audit::export(&store, &since, &mut out)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agent-server: {}", edge_agent_base::error::error_chain(&e));
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Policy(cmd)) => return edge_agent_server::cli::policy::main(*cmd),
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

async fn client_command(before: StoreFlags, action: ClientAction) -> Result<String, CredentialError> {
    let at = |s: StoreFlags| s.or(before.clone()).store();
    match action {
        ClientAction::Add { .. } => unreachable!("made by admin::add_admin"),
        ClientAction::List(Store { store }) => credentials::list_clients(&at(store)).await,
        ClientAction::Show(One { id, store }) => credentials::show_client(&at(store), &id).await,
        ClientAction::Remove(One { id, store }) => credentials::remove_client(&at(store), &id).await,
        ClientAction::RotateSecret(One { id, store }) => credentials::rotate_client(&at(store), &id).await,
        ClientAction::SetRole { id, role, store } => credentials::set_role(&at(store), &id, Role::parse(&role)?).await,
    }
}

async fn agent_command(before: StoreFlags, action: AgentAction) -> Result<String, CredentialError> {
    let at = |s: StoreFlags| s.or(before.clone()).store();
    match action {
        AgentAction::Add { .. } => unreachable!("made by add_agent"),
        AgentAction::List(Store { store }) => credentials::list_agents(&at(store)).await,
        AgentAction::Show(One { id, store }) => credentials::show_agent(&at(store), &id).await,
        AgentAction::Remove(One { id, store }) => credentials::remove_agent(&at(store), &id).await,
        AgentAction::RotateSecret(One { id, store }) => credentials::rotate_agent(&at(store), &id).await,
    }
}

/// What `agent add` was asked for.
struct AddAgent<'a> {
    name: &'a str,
    identifiers: &'a [String],
    out: Option<&'a Path>,
    force: bool,
}

/// `agent-server agent add`: the configuration to `--out` (0600) or stdout, with a warning on
/// stderr when it will refuse upgrades, when the name is already in use, or when stdout is a file
/// others can read.
fn add_agent(rt: tokio::runtime::Runtime, public: &PublicFlags, store: &StoreFlags, add: AddAgent<'_>) -> ExitCode {
    let base_url = public.base_url.as_deref().unwrap_or("http://127.0.0.1:8103/");
    let base_url = format!("{}/", base_url.trim_end_matches('/'));
    let setup = admin::AgentSetup {
        base_url: &base_url,
        release_keys: &public.release_key,
        releases: public.releases.as_deref(),
    };
    let out = add.out;
    let written = (|| -> Result<admin::Added, admin::AdminError> {
        let new = admin::NewAgent::parse(add.name, add.identifiers)?;
        if let Some(path) = out {
            admin::check_out(path, add.force)?;
        }
        let added = rt.block_on(admin::add_agent(&store.store(), &new, &setup))?;
        match out {
            Some(path) => admin::write_out(path, &added.config, add.force)?,
            None => print!("{}", added.config),
        }
        Ok(added)
    })();
    match written {
        Ok(added) => {
            let exposed = if out.is_none() { admin::stdout_exposed() } else { None };
            for warning in added.warnings.iter().chain(exposed.iter()) {
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
