//! A compressed release or a patch as the agent downloads it (`upgrade/sink.rs` on its own
//! thread, decoding with `upgrade/decode.rs` into a file of the size the manifest gives): bytes
//! already on disk from an interrupted download replayed first, the stream in chunks, a server
//! that starts over. The rebuilt file is never longer than the manifest says; a stream that
//! does not decode to exactly that many bytes is an error; one that does is the original.
#![no_main]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::Bytes;
use edge_agent::upgrade::sink::{self, Decode, Msg};
use edge_agent_release::variants::encode;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

#[derive(Debug, Arbitrary)]
struct Input {
    /// The stream is made by the release encoder from `content` (else it is `stream` itself).
    encode: bool,
    /// A patch against `reference` (else a compressed copy).
    patch: bool,
    level: u8,
    reference: Vec<u8>,
    content: Vec<u8>,
    stream: Vec<u8>,
    /// The length the manifest gives, as a change to the content's.
    len_delta: i8,
    /// A byte of the encoded stream changed: (where, xor).
    flip: Option<(u16, u8)>,
    /// How many bytes were on disk from an earlier attempt.
    have: u16,
    /// The size of each chunk.
    chunk: u8,
    /// The server restarts the body after this many chunks.
    restart_after: Option<u8>,
}

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("fuzz-decode").tempdir().unwrap().keep())
}

fuzz_target!(|input: Input| {
    let Input { encode: enc, patch, level, reference, content, stream, len_delta, flip, have, chunk, restart_after } =
        input;
    let reference = patch.then_some(reference);
    let mut bytes = if enc {
        match encode(&content, reference.as_deref(), i32::from(level % 4) + 1) {
            Ok(b) => b,
            Err(_) => return,
        }
    } else {
        stream
    };
    let flipped = match flip {
        Some((at, x)) if x != 0 && !bytes.is_empty() => {
            let at = usize::from(at) % bytes.len();
            bytes[at] ^= x;
            true
        }
        _ => false,
    };
    let len = (content.len() as i64 + i64::from(len_delta)).max(0) as u64;
    let dir = dir();
    let (download, output, ref_path) = (dir.join("download"), dir.join("output"), dir.join("reference"));
    let _ = fs::remove_file(&output);
    if let Some(r) = &reference {
        fs::write(&ref_path, r).unwrap();
    }
    let have = usize::from(have).min(bytes.len());
    let mut file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&download).unwrap();
    file.write_all(&bytes[..have]).unwrap();
    let decode = Decode {
        what: if patch { "the patch" } else { "the compressed file" },
        output: output.clone(),
        len,
        reference: reference.as_ref().map(|_| ref_path.clone()),
    };
    let chunk = usize::from(chunk).max(1);
    let rest: Vec<&[u8]> = bytes[have..].chunks(chunk).collect();
    let mut msgs = Vec::new();
    if let Some(n) = restart_after.map(usize::from).filter(|n| *n < rest.len()) {
        msgs.extend(rest[..n].iter().map(|c| Msg::Data(Bytes::copy_from_slice(c))));
        msgs.push(Msg::Restart);
        msgs.extend(bytes.chunks(chunk).map(|c| Msg::Data(Bytes::copy_from_slice(c))));
    } else {
        msgs.extend(rest.iter().map(|c| Msg::Data(Bytes::copy_from_slice(c))));
    }
    msgs.push(Msg::Done);
    let (tx, rx) = tokio::sync::mpsc::channel(msgs.len());
    for m in msgs {
        assert!(tx.try_send(m).is_ok());
    }
    drop(tx);
    let result = sink::run(file, download.clone(), have as u64, Some(decode), None, rx);
    // Whatever the stream, the rebuilt file is never longer than the manifest says.
    if let Ok(meta) = fs::metadata(&output) {
        assert!(meta.len() <= len, "{} bytes written for a length of {len}", meta.len());
    }
    let Ok(Some(fetched)) = result else { return };
    let written = fs::read(&output).unwrap();
    assert_eq!(written.len() as u64, len);
    assert_eq!(fetched.decoded_sha256.as_deref(), Some(hex(&Sha256::digest(&written)).as_str()));
    assert_eq!(fetched.sha256, hex(&Sha256::digest(&bytes)));
    if enc && !flipped {
        assert_eq!(written, content, "a stream the release encoder wrote decodes to its content");
    }
});

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
