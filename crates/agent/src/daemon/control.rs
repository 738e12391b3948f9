//! The daemon's control socket (`control.sock` in the state directory, owner only): `agent
//! upgrade` on the host asks the running daemon to upgrade, follows its download progress, and
//! learns the outcome. The client side is [`crate::host::upgrade`]; the messages are
//! [`crate::control`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::shared::Shared;
use crate::control::{Said, UpgradeAsk};
use crate::platform::{ControlListener, ControlStream};
use crate::state_dir::StateDir;
use crate::upgrade::pipeline::Progress;
use crate::upgrade::runner::Outcome;
use edge_agent_base::build_info::version;
use edge_agent_wire::Target;

/// Accepts `agent upgrade` requests for as long as the daemon runs.
pub async fn serve(shared: Arc<Shared>) {
    let path = StateDir::new(&shared.config().state_dir).control_socket();
    let listener = match ControlListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            return tracing::warn!(path = %path.display(), "no control socket, `agent upgrade` will work alone: {e}")
        }
    };
    while let Ok(stream) = listener.accept().await {
        tokio::spawn(handle(shared.clone(), stream));
    }
}

/// One request, answered with progress lines and then the outcome.
async fn handle(shared: Arc<Shared>, stream: ControlStream) {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let ask: UpgradeAsk = serde_json::from_str(&line).unwrap_or_default();
    let target = Target::from(ask.version);
    tracing::info!(%target, ask.force, "upgrade requested on the host");
    let mut send = async |said: Said| write.write_all(said.line().as_bytes()).await.is_ok();
    let started = shared.upgrade_context().map_err(|e| e.to_string());
    let mut done = match started.and_then(|ctx| shared.runner.start(ctx, target, ask.force, None)) {
        Ok(done) => done,
        Err(text) => {
            send(Said::Error(text)).await;
            return;
        }
    };
    let progress = |p: &Progress| Said::Progress { bytes: p.bytes, total: p.total };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last = Progress::default();
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => {
                let p = shared.runner.progress.borrow().clone();
                if p != last && !send(progress(&p)).await {
                    return;
                }
                last = p;
            }
            outcome = &mut done => break outcome,
        }
    };
    let p = shared.runner.progress.borrow().clone();
    if p != last {
        send(progress(&p)).await;
    }
    match outcome {
        Ok(Outcome::UpToDate) => send(Said::UpToDate(version().clone())).await,
        Ok(Outcome::Installed(v)) => {
            send(Said::Installed(v)).await;
            shared.restart.cancel();
            true
        }
        Ok(Outcome::Failed(text)) => send(Said::Error(text)).await,
        Err(_) => send(Said::Error("the upgrade task stopped".into())).await,
    };
}
