//! Where a download's bytes go, on a thread of its own so that the network, the disk and the
//! hash overlap: the download's staging file and its sha256 and, for a compressed copy or a
//! patch, the decoder that rebuilds the binary from them ([`super::decode`]). Bytes already in
//! the staging file (a download that a dead process left half done) are replayed first, so the
//! download resumes with `Range` whatever it decodes to. When the release's signature is known
//! before the download, a second thread checks it against the file as it is written
//! ([`SignatureCheck`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::decode::Decoder;
use super::error::UpgradeError;
use super::mapped;
use edge_agent_base::id::hex;
use edge_agent_release::signature::{SignatureError, Signed};

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
/// whether it matches the signature, when that was checked as it was written; when its last
/// byte was written and hashed, and how long flushing it to disk took.
#[derive(Debug)]
pub struct Fetched {
    pub sha256: String,
    pub decoded_sha256: Option<String>,
    pub signature: Option<Result<(), SignatureError>>,
    pub written: std::time::Instant,
    pub fsync: std::time::Duration,
    /// From the last byte written to the signature checked (the fsync included).
    pub signature_lag: std::time::Duration,
}

/// Writes what arrives on `rx` to `file` (at `path`, already holding `have` bytes, replayed
/// first) until [`Msg::Done`], checking it against `signed` when given. Runs on a blocking
/// thread. Without `Done` (the channel closed: the download failed), what was written stays for
/// a later resume.
pub fn run(
    file: File,
    path: PathBuf,
    have: u64,
    decode: Option<Decode>,
    signed: Option<Signed>,
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
    let signature = signed.and_then(|signed| SignatureCheck::start(signed, &path, have));
    let mut sink = Sink { file, path, hasher: Sha256::new(), decoder: decoder()?, flusher, signature };
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
    signature: Option<SignatureCheck>,
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

/// Checks a signature against the staging file on a thread of its own, reading each part back
/// (from the page cache) once it is written: its hash (minisign's BLAKE2b) overlaps the network,
/// the disk and the sha256 instead of reading the whole file once it is complete, and memory
/// stays one buffer whatever the download's pace.
struct SignatureCheck {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<Result<(), SignatureError>>>,
}

type Shared = (Mutex<Written>, Condvar);

/// How much of the file is written: bytes, and how many times it started over; whether it is
/// complete, or given up.
#[derive(Default, Clone, Copy, PartialEq)]
struct Written {
    bytes: u64,
    restarts: u64,
    done: bool,
    stopped: bool,
}

impl SignatureCheck {
    /// None when the file cannot be opened again or no thread started: the file is then checked
    /// once complete.
    fn start(signed: Signed, path: &Path, have: u64) -> Option<SignatureCheck> {
        let file = File::open(path).ok()?;
        let shared = Arc::new((Mutex::new(Written { bytes: have, ..Written::default() }), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("download-signature".into())
            .spawn(move || SignatureCheck::follow(&signed, file, &theirs))
            .ok()?;
        Some(SignatureCheck { shared, thread: Some(thread) })
    }

    /// Hashes `file` as far as it is written, until it is done.
    fn follow(signed: &Signed, mut file: File, shared: &Shared) -> Result<(), SignatureError> {
        let (mut hash, mut seen, mut hashed) = (signed.prehash(), Written::default(), 0u64);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let now = SignatureCheck::wait(shared, |w| *w != seen || w.bytes > hashed);
            if now.restarts != seen.restarts {
                (hash, hashed) = (signed.prehash(), 0);
                file.rewind().map_err(SignatureError::Read)?;
            }
            seen = now;
            while hashed < now.bytes {
                if shared.0.lock().unwrap_or_else(|e| e.into_inner()).stopped {
                    return Err(SignatureError::Refused("the download stopped".into()));
                }
                let want = buf.len().min(usize::try_from(now.bytes - hashed).unwrap_or(usize::MAX));
                match file.read(&mut buf[..want]).map_err(SignatureError::Read)? {
                    // Shorter than written: it starts over (the next round says so), or it
                    // changed under us.
                    0 if now.done => return Err(SignatureError::Read(std::io::ErrorKind::UnexpectedEof.into())),
                    0 => {
                        SignatureCheck::wait(shared, |w| w.restarts != now.restarts || w.done);
                        break;
                    }
                    n => {
                        hash.update(&buf[..n]);
                        hashed += n as u64;
                    }
                }
            }
            if now.done && hashed == now.bytes {
                return hash.finish();
            }
        }
    }

    /// Waits until `ready` holds, or the download is done; what is written then.
    fn wait(shared: &Shared, ready: impl Fn(&Written) -> bool) -> Written {
        let (lock, changed) = shared;
        let mut w = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !ready(&w) && !w.done {
            w = changed.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        *w
    }

    fn update(&self, f: impl FnOnce(&mut Written)) {
        let (lock, changed) = &*self.shared;
        f(&mut lock.lock().unwrap_or_else(|e| e.into_inner()));
        changed.notify_one();
    }

    fn finish(mut self) -> Result<(), SignatureError> {
        self.update(|w| w.done = true);
        let thread = self.thread.take().expect("finished once");
        thread.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for SignatureCheck {
    /// A download that stops unfinished stops the thread too, within one read, and closes its
    /// handle of the file before the file can be removed (on Windows a file open elsewhere is
    /// only marked for deletion, and its name cannot be used again until it is closed).
    fn drop(&mut self) {
        self.update(|w| (w.done, w.stopped) = (true, true));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
        if let Some(s) = &self.signature {
            s.update(|w| w.bytes += bytes.len() as u64);
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
        if let Some(s) = &self.signature {
            s.update(|w| (w.bytes, w.restarts) = (0, w.restarts + 1));
        }
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
        let fsync = written.elapsed();
        let signature = self.signature.take().map(SignatureCheck::finish);
        let signature_lag = written.elapsed();
        let sha256 = hex(&self.hasher.finalize());
        Ok(Fetched { sha256, decoded_sha256, signature, written, fsync, signature_lag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_agent_release::signature::{public_key_line, trusted_comment, MISMATCH};

    fn signed(bytes: &[u8]) -> Signed {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let version = semver::Version::new(1, 0, 0);
        let comment = trusted_comment("agent", &version, 0);
        let sig = minisign::sign(Some(&pair.pk), &pair.sk, bytes, Some(&comment), None).unwrap().into_string();
        let key = public_key_line(&pair.pk.to_box().unwrap().into_string());
        Signed::new(&[key], &sig, "agent", &version).unwrap()
    }

    /// Runs the sink over a staging file that holds `left` already, feeding it `msgs`.
    fn download(signed: Signed, left: &[u8], msgs: Vec<Msg>) -> Fetched {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staging");
        std::fs::write(&path, left).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let (tx, rx) = mpsc::channel(2);
        let have = left.len() as u64;
        let sink = std::thread::spawn(move || run(file, path, have, None, Some(signed), rx));
        for msg in msgs {
            tx.blocking_send(msg).unwrap();
        }
        sink.join().unwrap().unwrap().expect("done")
    }

    fn pieces(bytes: &[u8]) -> impl Iterator<Item = Msg> + '_ {
        bytes.chunks(300_001).map(|c| Msg::Data(Bytes::copy_from_slice(c)))
    }

    #[test]
    fn the_signature_follows_the_file_through_a_resume_and_a_restart() {
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let key = signed(&bytes);

        // Resumed: the first megabyte was left by a dead process.
        let (left, rest) = bytes.split_at(1 << 20);
        let fetched = download(key.clone(), left, pieces(rest).chain([Msg::Done]).collect());
        assert!(matches!(fetched.signature, Some(Ok(()))), "{:?}", fetched.signature);

        // What was left is not this file's: the server sends it all again.
        let junk = vec![7u8; 1 << 20];
        let msgs = [Msg::Restart].into_iter().chain(pieces(&bytes)).chain([Msg::Done]).collect();
        let fetched = download(key.clone(), &junk, msgs);
        assert!(matches!(fetched.signature, Some(Ok(()))), "{:?}", fetched.signature);

        // One byte changed on the way.
        let mut changed = bytes.clone();
        changed[2_000_000] ^= 1;
        let fetched = download(key, &[], pieces(&changed).chain([Msg::Done]).collect());
        match fetched.signature {
            Some(Err(SignatureError::Refused(why))) => assert_eq!(why, MISMATCH),
            other => panic!("{other:?}"),
        }
    }
}
