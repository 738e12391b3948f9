//! Where a download's bytes go, on a thread of its own so that the network, the disk and the
//! hash overlap: the download's staging file and its sha256 and, for a compressed copy or a
//! patch, the decoder that rebuilds the binary from them ([`super::decode`]). Bytes already in
//! the staging file (a download that a dead process left half done) are replayed first, so the
//! download resumes with `Range` whatever it decodes to.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::decode::Decoder;
use super::error::UpgradeError;
use super::mapped;
use edge_agent_base::id::hex;

/// What a download decodes to, besides its own file.
#[derive(Debug, Clone)]
pub struct Decode {
    /// For messages: "the patch", "the compressed file".
    pub what: &'static str,
    /// The binary being rebuilt, and its length once whole.
    pub output: PathBuf,
    pub len: u64,
    /// A patch's reference: the running binary.
    pub reference: Option<PathBuf>,
}

/// What the network side sends.
pub enum Msg {
    /// The next bytes of the file.
    Data(Bytes),
    /// The server sends the whole file again: start over.
    Restart,
    /// The file is complete.
    Done,
}

/// A finished download: its sha256 and, when it was decoded, the sha256 of what it decoded to;
/// when its last byte was written and hashed, and how long flushing it to disk took.
#[derive(Debug)]
pub struct Fetched {
    pub sha256: String,
    pub decoded_sha256: Option<String>,
    pub written: std::time::Instant,
    pub fsync: std::time::Duration,
}

/// Writes what arrives on `rx` to `file` (at `path`, already holding `have` bytes, replayed
/// first) until [`Msg::Done`]. Runs on a blocking thread. Without `Done` (the channel closed:
/// the download failed), what was written stays for a later resume.
pub fn run(
    file: File,
    path: PathBuf,
    have: u64,
    decode: Option<Decode>,
    rx: mpsc::Receiver<Msg>,
) -> Result<Option<Fetched>, UpgradeError> {
    let reference = match decode.as_ref().and_then(|d| d.reference.as_ref()) {
        Some(r) => {
            let f = File::open(r).map_err(|e| UpgradeError::io("the running binary", r, e))?;
            Some(mapped::reference(&f).map_err(|e| UpgradeError::io("the running binary", r, e))?)
        }
        None => None,
    };
    let output = match &decode {
        Some(d) => Some(
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&d.output)
                .map_err(|e| UpgradeError::io("the rebuilt binary", &d.output, e))?,
        ),
        None => None,
    };
    let decoder = || match (&decode, &output) {
        (Some(d), Some(out)) => Decoder::new(d.what, out, &d.output, d.len, reference.as_ref()).map(Some),
        _ => Ok(None),
    };
    let flusher = Flusher::start(&file);
    let mut sink = Sink { file, path, hasher: Sha256::new(), decoder: decoder()?, flusher };
    sink.replay(have)?;
    let mut rx = rx;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(bytes) => sink.write(&bytes)?,
            Msg::Restart => {
                sink.restart()?;
                sink.decoder = decoder()?;
            }
            Msg::Done => return sink.finish(output.as_ref()).map(Some),
        }
    }
    Ok(None)
}

struct Sink<'r> {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    decoder: Option<Decoder<'r>>,
    flusher: Option<Flusher>,
}

/// Writes a long download to disk while it still arrives, so that the fsync at its end has
/// little left to do: every [`FLUSH_EVERY`] bytes, a thread of its own syncs what is written.
/// Its errors are not reported: the final fsync's are.
struct Flusher {
    tick: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
    since: usize,
}

const FLUSH_EVERY: usize = 16 << 20;

impl Flusher {
    fn start(file: &File) -> Option<Flusher> {
        let file = file.try_clone().ok()?;
        let (tick, ticks) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("download-flush".into())
            .spawn(move || {
                while ticks.recv().is_ok() {
                    let _ = file.sync_data();
                }
            })
            .ok()?;
        Some(Flusher { tick, thread, since: 0 })
    }

    fn wrote(&mut self, n: usize) {
        self.since += n;
        if self.since >= FLUSH_EVERY {
            self.since = 0;
            let _ = self.tick.try_send(()); // one already pending will do
        }
    }

    fn stop(self) {
        drop(self.tick);
        let _ = self.thread.join();
    }
}

impl Sink<'_> {
    fn io(&self, e: std::io::Error) -> UpgradeError {
        UpgradeError::io("the downloaded file", &self.path, e)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), UpgradeError> {
        self.file.write_all(bytes).map_err(|e| self.io(e))?;
        self.hasher.update(bytes);
        if let Some(f) = &mut self.flusher {
            f.wrote(bytes.len());
        }
        match &mut self.decoder {
            Some(d) => d.feed(bytes),
            None => Ok(()),
        }
    }

    /// Hashes (and decodes) the first `have` bytes of the file, leaving it positioned after them.
    fn replay(&mut self, have: u64) -> Result<(), UpgradeError> {
        if have == 0 {
            return Ok(());
        }
        tracing::info!(path = %self.path.display(), bytes = have, "found a partial download: resuming it");
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        self.file.rewind().map_err(|e| self.io(e))?;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.file.read(&mut buf[..want]).map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            if let Some(d) = &mut self.decoder {
                d.feed(&buf[..n])?;
            }
            left -= n as u64;
        }
        Ok(())
    }

    fn restart(&mut self) -> Result<(), UpgradeError> {
        self.file.set_len(0).and_then(|_| self.file.rewind()).map_err(|e| self.io(e))?;
        self.hasher = Sha256::new();
        Ok(())
    }

    fn finish(mut self, output: Option<&File>) -> Result<Fetched, UpgradeError> {
        let written = std::time::Instant::now();
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
        self.file.sync_all().map_err(|e| self.io(e))?;
        let decoded_sha256 = match (self.decoder, output) {
            (Some(d), Some(out)) => Some(d.finish(out)?),
            _ => None,
        };
        let sha256 = hex(&self.hasher.finalize());
        Ok(Fetched { sha256, decoded_sha256, written, fsync: written.elapsed() })
    }
}
