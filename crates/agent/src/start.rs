//! The processes `agent run` is made of, each started here with its configuration and logging:
//! the supervisor ([`supervisor`]), the worker that is the daemon ([`worker`]), and on Windows the
//! service that runs the supervisor ([`service`]). Each returns the process's exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use edge_agent_base::error::error_chain;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigSource, RawConfig};
use crate::daemon;
use crate::daemon::shared::{prepare, Exit};
use crate::logbuf::{LogBuffer, DEFAULT_CAPACITY};
use crate::state_dir::StateDir;
use crate::supervisor::{self, Supervisor};
use crate::upgrade::store::Store;
use crate::{exit, host, logging, platform};

/// A current-thread runtime: the agent's work is I/O on a few sockets and files.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// This process's arguments, less [`supervisor::ADOPT_FLAG`] and its value: what a re-executed
/// supervisor runs with.
pub fn own_args() -> Vec<OsString> {
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
pub fn supervisor(
    source: ConfigSource,
    adopt: Option<u32>,
    own_args: Vec<OsString>,
    log_file: Option<PathBuf>,
    shutdown: Option<CancellationToken>,
) -> i32 {
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: invalid configuration: {e}");
            return exit::CONFIG;
        }
    };
    logging::init(config.log_format, LogBuffer::new(1), log_file.as_deref());
    let installed = match crate::upgrade::install::installed_path() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot locate this binary: {e}");
            return 1;
        }
    };
    // Which file this process runs is taken now, before any swap (an emulator cannot tell later).
    let _ = crate::platform::runs_file(&installed);
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
pub fn service(name: String, config: Option<PathBuf>) -> ExitCode {
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
        supervisor(source, None, own_args.into(), Some(log), Some(shutdown))
    };
    match platform::service::run(&name, Box::new(body)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `agent run --worker`: the daemon itself.
pub fn worker(source: ConfigSource, log_file: Option<PathBuf>) -> ExitCode {
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: invalid configuration: {e}");
            return ExitCode::from(exit::CONFIG as u8);
        }
    };
    let logs = LogBuffer::new(DEFAULT_CAPACITY);
    logging::init(config.log_format, logs.clone(), log_file.as_deref());
    supervisor::bind_to_supervisor();
    runtime().block_on(async move {
        let (shared, outbox) = match prepare(source, config, logs) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot start: {}", error_chain(&e));
                return ExitCode::from(exit::CONFIG as u8);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        let restart = shared.restart.clone();
        tokio::spawn(async move {
            platform::restart_requested().await;
            tracing::info!("SIGHUP: restarting into the installed binary");
            restart.cancel();
        });
        match daemon::run(shared, outbox, shutdown).await {
            Exit::Shutdown => {
                tracing::info!("stopped");
                // Exit here, without tearing the runtime down: an upgrade in flight keeps its
                // partial download for the next worker to resume.
                std::process::exit(0)
            }
            Exit::Restart => ExitCode::from(exit::RESTART as u8),
        }
    })
}

/// SIGTERM or SIGINT cancel `shutdown`.
async fn on_signal(shutdown: CancellationToken) {
    platform::stop_requested().await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
