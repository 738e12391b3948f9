//! Rebuilds a release binary from a zstd stream as it downloads: a compressed copy, or a patch
//! decoded with the running binary as its reference (what `zstd --patch-from` writes). The
//! output is the binary's staging file, mapped and written in place by zstd (its stable output
//! buffer), hashed as it grows; the reference is mapped, not read into memory. Resident memory
//! stays flat: zstd's own buffers (a block in, none out) and the few megabytes of mapped pages
//! touched since they were last handed back ([`mapped::release`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zstd::zstd_safe::{get_error_name, DCtx, DParameter, InBuffer, OutBuffer};

use edge_agent_base::id::hex;

use super::error::UpgradeError;
use super::mapped::{self, Mmap, MmapMut};

/// How much output between two hand-backs of mapped pages.
const RELEASE_EVERY: usize = 2 << 20;

/// What zstd needs to read a frame's size and window: the first input it is given.
const FRAME_HEADER_PREFIX: usize = 5;

/// The largest window zstd knows: with a stable output buffer, the window lives in the output
/// file, so the window a patch asks for costs no memory.
const WINDOW_LOG_MAX: u32 = if cfg!(target_pointer_width = "64") { 31 } else { 30 };

/// A zstd stream being decoded into the file at `path`, `len` bytes long once whole.
pub struct Decoder<'r> {
    dctx: DCtx<'r>,
    reference: Option<&'r Mmap>,
    out: MmapMut,
    path: PathBuf,
    pos: usize,
    released: usize,
    /// How much input zstd asks for next.
    next: usize,
    hasher: Sha256,
    /// The frame is complete: zstd said so.
    ended: bool,
    /// What is decoded, for messages: "the patch", "the compressed file".
    what: &'static str,
}

impl<'r> Decoder<'r> {
    /// Opens the decoding of a stream into `file` (at `path`), which is set to `len` bytes; with
    /// a `reference`, the stream is a patch made against it.
    pub fn new(
        what: &'static str,
        file: &File,
        path: &Path,
        len: u64,
        reference: Option<&'r Mmap>,
    ) -> Result<Decoder<'r>, UpgradeError> {
        let io = |e| UpgradeError::io("the rebuilt binary", path, e);
        let out = mapped::output(file, len).map_err(io)?;
        let mut dctx = DCtx::try_create().ok_or_else(|| decode_error(what, "cannot allocate a zstd decoder".into()))?;
        let zstd = |code: usize| decode_error(what, get_error_name(code).to_string());
        dctx.set_parameter(DParameter::StableOutBuffer(true)).map_err(zstd)?;
        dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX)).map_err(zstd)?;
        if let Some(r) = reference {
            dctx.ref_prefix(&r[..]).map_err(zstd)?;
        }
        Ok(Decoder {
            dctx,
            reference,
            out,
            path: path.to_path_buf(),
            pos: 0,
            released: 0,
            next: FRAME_HEADER_PREFIX,
            hasher: Sha256::new(),
            ended: false,
            what,
        })
    }

    /// Decodes `input`, the next bytes of the stream. zstd decodes all it is given in one call,
    /// and a few bytes of a patch can stand for megabytes of output: so it is given no more than
    /// what it asks for next (its hint: the rest of a block and the next block's header), and
    /// each call writes at most one block (128 KiB); the pages are handed back between calls.
    pub fn feed(&mut self, input: &[u8]) -> Result<(), UpgradeError> {
        let mut at = 0;
        while at < input.len() {
            if self.ended {
                return Err(decode_error(self.what, "data after the end of the zstd frame".into()));
            }
            let end = input.len().min(at + self.next);
            let mut src = InBuffer::around(&input[..end]);
            src.set_pos(at);
            let before = self.pos;
            let mut dst = OutBuffer::around_pos(&mut self.out[..], self.pos);
            let hint = self
                .dctx
                .decompress_stream(&mut dst, &mut src)
                .map_err(|code| decode_error(self.what, get_error_name(code).to_string()))?;
            (self.pos, at) = (dst.pos(), src.pos());
            self.hasher.update(&self.out[before..self.pos]);
            self.ended = hint == 0;
            self.next = hint.max(1);
            if self.pos - self.released >= RELEASE_EVERY {
                self.hand_back();
            }
        }
        Ok(())
    }

    /// Hands the pages touched so far back to the page cache.
    fn hand_back(&mut self) {
        mapped::release_written(&self.out, self.pos);
        if let Some(r) = self.reference {
            mapped::release(r);
        }
        self.released = self.pos;
    }

    /// The stream is over: the frame must be complete and the file whole. Flushes the file to
    /// disk; returns the sha256 (lowercase hex) of what was written.
    pub fn finish(mut self, file: &File) -> Result<String, UpgradeError> {
        let len = self.out.len();
        if !self.ended || self.pos != len {
            let detail = format!("the stream ended after {} of {len} bytes", self.pos);
            return Err(decode_error(self.what, detail));
        }
        self.hand_back();
        let io = |e| UpgradeError::io("the rebuilt binary", &self.path, e);
        self.out.flush().map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(hex(&self.hasher.finalize()))
    }
}

fn decode_error(what: &'static str, detail: String) -> UpgradeError {
    UpgradeError::Decode { what, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zstd::zstd_safe::{CCtx, CParameter};

    fn encode(data: &[u8], reference: Option<&[u8]>) -> Vec<u8> {
        let mut cctx = CCtx::create();
        cctx.set_parameter(CParameter::ChecksumFlag(true)).unwrap();
        if let Some(r) = reference {
            cctx.set_parameter(CParameter::EnableLongDistanceMatching(true)).unwrap();
            cctx.set_parameter(CParameter::WindowLog(22)).unwrap();
            cctx.ref_prefix(r).unwrap();
        }
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        cctx.compress2(&mut out, data).unwrap();
        out
    }

    fn sample(seed: u8, len: usize) -> Vec<u8> {
        let mut x = seed as u32 | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 7) as u8 // compressible, not trivially
            })
            .collect()
    }

    /// Decodes `stream` in chunks of `chunk` into a new file; the result and the file's bytes.
    fn decode(
        stream: &[u8],
        len: usize,
        reference: Option<&[u8]>,
        chunk: usize,
    ) -> (Result<String, UpgradeError>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (path, ref_path) = (dir.path().join("out"), dir.path().join("ref"));
        std::fs::write(&ref_path, reference.unwrap_or(b"-")).unwrap();
        let ref_map = mapped::reference(&File::open(&ref_path).unwrap()).unwrap();
        let file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).unwrap();
        let mut d = Decoder::new("the patch", &file, &path, len as u64, reference.map(|_| &ref_map)).unwrap();
        let result = stream.chunks(chunk).try_for_each(|c| d.feed(c)).and_then(|_| d.finish(&file));
        (result, std::fs::read(&path).unwrap())
    }

    #[test]
    fn a_patch_decodes_against_its_reference_in_any_chunking() {
        let old = sample(3, 3 << 20);
        let mut new = old.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        new.extend_from_slice(&sample(9, 100_000));
        let patch = encode(&new, Some(&old));
        assert!(patch.len() < new.len() / 20, "a patch of {} bytes", patch.len());
        for chunk in [1, 7, 64 * 1024, patch.len()] {
            let (sha, bytes) = decode(&patch, new.len(), Some(&old), chunk);
            assert_eq!(sha.unwrap(), hex(&Sha256::digest(&new)));
            assert!(bytes == new, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_patch_against_another_reference_or_cut_short_fails() {
        let old = sample(3, 1 << 20);
        let mut new = old.clone();
        new[5] = 42;
        let patch = encode(&new, Some(&old));
        let other = sample(4, 1 << 20);
        let (result, _) = decode(&patch, new.len(), Some(&other), 4096);
        let text = result.unwrap_err().to_string();
        assert!(text.starts_with("cannot decode the patch: "), "{text}");
        let (result, _) = decode(&patch[..patch.len() - 3], new.len(), Some(&old), 4096);
        assert!(result.unwrap_err().to_string().contains("the stream ended after"));
        let (result, _) = decode(&patch, new.len() - 1, Some(&old), 4096);
        assert!(result.is_err(), "a stream larger than the published size is refused");
        let mut twice = patch.clone();
        twice.extend_from_slice(&patch);
        let (result, _) = decode(&twice, new.len(), Some(&old), 4096);
        assert!(result.unwrap_err().to_string().contains("after the end"));
    }

    /// The resident KiB of this process's maps of files under `dir` (from /proc/self/smaps, so
    /// that other tests' maps do not count).
    #[cfg(target_os = "linux")]
    fn resident_kib(dir: &Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                kib += if ours { rss.split_whitespace().next().unwrap().parse::<u64>().unwrap() } else { 0 };
            } else if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
                ours = line.contains(dir.to_str().unwrap());
            }
        }
        kib
    }

    /// The mapped pages are handed back as the output grows: a 64 MiB patch against a 64 MiB
    /// reference, given to the decoder whole, adds a few megabytes of resident pages at most.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_patch_keeps_resident_memory_flat() {
        let old = sample(7, 64 << 20);
        let mut new = old.clone();
        new[100] ^= 1;
        let patch = encode(&new, Some(&old));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ref"), &old).unwrap();
        drop((old, new));
        let ref_map = mapped::reference(&File::open(dir.path().join("ref")).unwrap()).unwrap();
        let path = dir.path().join("out");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).unwrap();
        let mut d = Decoder::new("the patch", &file, &path, 64 << 20, Some(&ref_map)).unwrap();
        let (mut peak, mut fed) = (0, 0);
        while fed < patch.len() {
            let n = (patch.len() - fed).min(64 * 1024);
            d.feed(&patch[fed..fed + n]).unwrap();
            fed += n;
            peak = peak.max(resident_kib(dir.path()));
        }
        d.finish(&file).unwrap();
        assert!(fed > 0 && peak < 8 * 1024, "{peak} KiB of mapped pages resident at most");
    }

    #[test]
    fn a_few_bytes_that_stand_for_megabytes_decode_in_bounded_steps() {
        let mut data = vec![0u8; 24 << 20];
        data[12 << 20] = 1;
        let stream = encode(&data, None);
        assert!(stream.len() < 4096, "{} bytes", stream.len());
        let (sha, bytes) = decode(&stream, data.len(), None, stream.len());
        assert_eq!(sha.unwrap(), hex(&Sha256::digest(&data)));
        assert!(bytes == data);
    }

    #[test]
    fn a_compressed_copy_decodes_without_a_reference() {
        let data = sample(5, 5 << 20);
        let (sha, bytes) = decode(&encode(&data, None), data.len(), None, 100_000);
        assert_eq!(sha.unwrap(), hex(&Sha256::digest(&data)));
        assert!(bytes == data);
    }
}
