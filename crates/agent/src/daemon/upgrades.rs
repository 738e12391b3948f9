//! The daemon's side of upgrades: an `agent:upgrade:request` is answered at once when the journal
//! already knows its callback (the server redelivered it) or when it is refused; otherwise the
//! upgrade runs and its answer goes out through the outbox, or the daemon restarts into the new
//! binary, which reports. At start, an upgrade a dead worker left before its swap is taken over.

use std::sync::Arc;

use tokio::sync::oneshot;

use edge_agent_wire::{Callback, Envelope, Message, Target};

use super::shared::Shared;
use crate::upgrade::report::{self, Known};
use crate::upgrade::runner::Outcome;
use crate::upgrade::wire::{self, WireText};

/// The immediate reply to an upgrade request, if it has one.
pub fn request(
    shared: &Arc<Shared>,
    version: Option<String>,
    force: bool,
    callback: Option<Callback>,
) -> Option<Envelope> {
    let asked = callback.as_ref().map_or("", |c| c.as_str());
    tracing::info!(
        callback = asked,
        version = version.as_deref().unwrap_or("latest"),
        force,
        "upgrade requested by the server"
    );
    // Where the request's version text becomes a target, or is answered as no version.
    let target = match Target::parse(version.as_deref()) {
        Ok(target) => target,
        Err(e) => return Some(Message::error(wire::text(WireText::InvalidVersion(&e.text))).reply_to(callback)),
    };
    let ctx = match shared.upgrade_context() {
        Ok(ctx) => ctx,
        Err(e) => {
            return Some(Message::error(wire::text(WireText::Failed { target: &target, error: &e })).reply_to(callback))
        }
    };
    if let Some(cb) = &callback {
        match report::known(&ctx.store.load(), cb) {
            Known::Answered(reply) => {
                tracing::info!(callback = %cb, "a request already answered came again: the same answer");
                return Some(report::message(&reply).reply_to(callback));
            }
            Known::Running => {
                tracing::info!(callback = %cb, "a request whose upgrade runs came again: its answer follows");
                return None;
            }
            Known::New => {}
        }
    }
    match shared.runner.start(ctx, target, force, callback.clone()) {
        Ok(done) => {
            forward(shared, done, callback);
            None
        }
        Err(text) => Some(Message::error(text).reply_to(callback)),
    }
}

/// Takes over an upgrade that a dead worker left before its swap.
pub fn resume(shared: &Arc<Shared>) {
    let Ok(ctx) = shared.upgrade_context() else { return };
    let journal = ctx.store.load();
    if !journal.state.before_swap() {
        // Nothing to take over: any staging file is a leftover.
        crate::upgrade::download::clean_staging(ctx.install_dir(), None);
    }
    if let Some(done) = shared.runner.resume(ctx, &journal) {
        forward(shared, done, journal.callback);
    }
}

/// Sends the outcome with `callback` once it is known; restarts into an installed version (the
/// new process reports).
fn forward(shared: &Arc<Shared>, done: oneshot::Receiver<Outcome>, callback: Option<Callback>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let reply = match done.await {
            Ok(Outcome::UpToDate) => Message::UpgradeResponse { status_code: 200 },
            Ok(Outcome::Installed(_)) => return shared.restart.cancel(),
            Ok(Outcome::Failed(text)) => Message::error(text),
            Err(_) => return,
        };
        if callback.is_some() {
            let _ = shared.outbox.send(reply.reply_to(callback)).await;
        }
    });
}
