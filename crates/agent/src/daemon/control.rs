//! The daemon's control socket (`control.sock` in the state directory, owner only): `agent
//! upgrade` on the host asks the running daemon to upgrade (from the release source, or from an
//! offline bundle it sends after its request), follows its download progress, and learns the
//! outcome. The client side is [`crate::host::upgrade`]; the messages are
//! [`crate::control`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

use super::shared::Shared;
use crate::control::{Said, UpgradeAsk, MAX_BUNDLE};
use crate::platform::{ControlListener, ControlStream};
use crate::state_dir::StateDir;
use crate::upgrade::pipeline::{Origin, Progress};
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
    let mut reader = BufReader::new(read);
    let mut send = async |said: Said| write.write_all(said.line().as_bytes()).await.is_ok();
    let ask = match read_ask(&mut reader).await {
        Ok(ask) => ask,
        Err(text) => {
            tracing::warn!("a request on the control socket refused: {text}");
            send(Said::Error(text)).await;
            return;
        }
    };
    let target = Target::from(ask.version);
    tracing::info!(%target, ask.force, bundle_bytes = ask.bundle, "upgrade requested on the host");
    let origin = match ask.bundle {
        None => Ok(Origin::ReleaseSource),
        Some(size) => receive_bundle(&shared, &mut reader, size).await.map(Origin::Bundle),
    };
    let started = origin.and_then(|origin| {
        let ctx = shared.upgrade_context().map_err(|e| e.to_string())?;
        shared.runner.start_from(ctx, target, ask.force, None, origin)
    });
    let mut done = match started {
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
    if ask.bundle.is_some() {
        let _ = tokio::fs::remove_file(StateDir::new(&shared.config().state_dir).incoming_bundle()).await;
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

/// The longest request line taken (a request is a version, a flag and a size: under 200 bytes).
pub const MAX_ASK: u64 = 4096;

/// The request's line, read up to [`MAX_ASK`] bytes: a line that is longer, missing or not a
/// request is refused with why, and nothing is done (public for the fuzz target `agent_control`).
pub async fn read_ask(reader: &mut (impl AsyncBufReadExt + Unpin)) -> Result<UpgradeAsk, String> {
    let mut line = Vec::new();
    let n = reader.take(MAX_ASK).read_until(b'\n', &mut line).await;
    let n = n.map_err(|e| format!("cannot read the request: {e}"))?;
    if n == 0 {
        return Err("no request: the connection ended before its line".into());
    }
    if !line.ends_with(b"\n") {
        return Err(match n as u64 >= MAX_ASK {
            true => format!("the request's line is longer than {MAX_ASK} bytes"),
            false => "the request's line did not end: the connection ended before its newline".into(),
        });
    }
    serde_json::from_slice(&line).map_err(|e| {
        format!("not an upgrade request ({e}): send one JSON object such as {{\"version\":\"1.2.3\"}} on a line")
    })
}

/// Receives a bundle of `size` bytes into the state directory; its path, or why not.
async fn receive_bundle(
    shared: &Shared,
    from: &mut (impl AsyncRead + Unpin),
    size: u64,
) -> Result<std::path::PathBuf, String> {
    if size > MAX_BUNDLE {
        return Err(format!("a bundle of {size} bytes is larger than the {MAX_BUNDLE} bytes this agent accepts"));
    }
    let state = StateDir::new(&shared.config().state_dir);
    let path = state.incoming_bundle();
    if let Some(free) = crate::platform::available_space(state.path()).filter(|free| *free < size) {
        return Err(format!(
            "not enough disk space in {} for the bundle: {size} bytes needed, {free} available",
            state.path().display()
        ));
    }
    let received = async {
        let mut file = tokio::fs::File::create(&path).await?;
        let n = tokio::io::copy(&mut from.take(size), &mut file).await?;
        file.sync_all().await?;
        Ok::<u64, std::io::Error>(n)
    };
    match received.await {
        Ok(n) if n == size => Ok(path),
        Ok(n) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(format!("the bundle ended after {n} of {size} bytes"))
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(format!("cannot receive the bundle into {}: {e}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(bytes: &[u8]) -> Result<UpgradeAsk, String> {
        read_ask(&mut BufReader::new(bytes)).await
    }

    #[tokio::test]
    async fn a_request_is_one_bounded_line_of_json_and_anything_else_is_refused() {
        let v = semver::Version::new(1, 2, 3);
        let want = UpgradeAsk { version: Some(v), force: true, bundle: None };
        assert_eq!(ask(b"{\"version\":\"1.2.3\",\"force\":true}\nmore").await.unwrap(), want);
        assert_eq!(ask(b"{}\n").await.unwrap(), UpgradeAsk::default(), "the latest, as `agent upgrade` asks");

        let refused = [
            (&b""[..], "no request"),
            (b"{}", "did not end"),
            (b"garbage\n", "not an upgrade request"),
            (b"{\"version\":\"not semver\"}\n", "not an upgrade request"),
            (b"{\"bundle\":-1}\n", "not an upgrade request"),
        ];
        for (bytes, why) in refused {
            let e = ask(bytes).await.unwrap_err();
            assert!(e.contains(why), "{:?}: {e}", String::from_utf8_lossy(bytes));
        }
        let long = vec![b' '; 1 << 20];
        let e = ask(&long).await.unwrap_err();
        assert_eq!(e, format!("the request's line is longer than {MAX_ASK} bytes"));
    }
}
