//! The daemon's control channel on Windows: a named pipe whose name is derived from the control
//! socket's path in the state directory (`\\.\pipe\edge-agent-<hash>`), so every state directory
//! has its own. Only local clients, and only SYSTEM, administrators and the owner, may open it.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions};
use tokio::sync::Mutex;

/// `ERROR_PIPE_BUSY`: every instance is taken; the server creates the next one in a moment.
const PIPE_BUSY: i32 = 231;

/// The pipe that stands for the control socket at `path`.
pub fn pipe_name(path: &Path) -> String {
    let key = path.to_string_lossy().to_lowercase();
    let digest = Sha256::digest(key.as_bytes());
    format!(r"\\.\pipe\edge-agent-{}", edge_agent_base::id::hex(&digest[..12]))
}

/// One end of the control pipe: the daemon's, or `agent upgrade`'s.
pub enum ControlStream {
    Server(NamedPipeServer),
    Client(NamedPipeClient),
}

pub struct ControlListener {
    name: String,
    /// The instance waiting for the next client.
    next: Mutex<NamedPipeServer>,
}

fn instance(name: &str, first: bool) -> io::Result<NamedPipeServer> {
    let mut options = ServerOptions::new();
    options.first_pipe_instance(first).reject_remote_clients(true);
    super::ffi::create_pipe(&options, name)
}

impl ControlListener {
    /// Creates the pipe for `path`. Fails when another process holds that name already.
    pub fn bind(path: &Path) -> io::Result<ControlListener> {
        let name = pipe_name(path);
        let first = instance(&name, true)?;
        Ok(ControlListener { name, next: Mutex::new(first) })
    }

    pub async fn accept(&self) -> io::Result<ControlStream> {
        let mut next = self.next.lock().await;
        next.connect().await?;
        let connected = std::mem::replace(&mut *next, instance(&self.name, false)?);
        Ok(ControlStream::Server(connected))
    }
}

/// Opens the control pipe of the daemon whose control socket path is `path`.
pub async fn control_connect(path: &Path) -> io::Result<ControlStream> {
    let name = pipe_name(path);
    for _ in 0..50 {
        match ClientOptions::new().open(&name) {
            Err(e) if e.raw_os_error() == Some(PIPE_BUSY) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => return other.map(ControlStream::Client),
        }
    }
    ClientOptions::new().open(&name).map(ControlStream::Client)
}

impl AsyncRead for ControlStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlStream::Server(s) => Pin::new(s).poll_read(cx, buf),
            ControlStream::Client(c) => Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ControlStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ControlStream::Server(s) => Pin::new(s).poll_write(cx, buf),
            ControlStream::Client(c) => Pin::new(c).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlStream::Server(s) => Pin::new(s).poll_flush(cx),
            ControlStream::Client(c) => Pin::new(c).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlStream::Server(s) => Pin::new(s).poll_shutdown(cx),
            ControlStream::Client(c) => Pin::new(c).poll_shutdown(cx),
        }
    }
}
