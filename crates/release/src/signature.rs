//! Release signatures (ours, protocol.md §3.2): a minisign signature of each asset, by a key the
//! agent trusts in its local configuration, whose trusted comment names the file and the version,
//! so that an old signed binary cannot be replayed as a new version. Both sides of that format
//! live here: the comment `agent release publish` signs, and the check an agent makes.

use std::io::Read;
use std::path::Path;

use minisign_verify::{PublicKey, Signature};
use semver::Version;

/// Why a signature does not hold.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The signature refuses the file; the text says why, in words for the operator.
    #[error("{0}")]
    Refused(String),
    #[error("cannot read the signed file")]
    Read(#[source] std::io::Error),
}

/// A public key as written in a configuration: the base64 line alone, or the whole `.pub` file
/// with its comment line. Empty when there is none.
pub fn public_key_line(key: &str) -> String {
    key.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or("")
        .to_string()
}

/// Checks that a key line is a minisign public key; why not, if it is not.
pub fn check_public_key(line: &str) -> Result<(), String> {
    PublicKey::from_base64(line).map(|_| ()).map_err(|e| format!("not a minisign public key ({e})"))
}

/// The trusted comment `agent release publish` signs for `file` at `version`.
pub fn trusted_comment(file: &str, version: &Version, unix_seconds: u64) -> String {
    format!("timestamp:{unix_seconds}\tfile:{file}\tversion:{version}")
}

/// The trusted comment (`key:value` fields separated by tabs, as minisign writes them) must
/// carry `file:<asset>`; a `version:` field, when present, must be this version (a signature
/// made by the minisign tool names the file only).
pub fn check_trusted_comment(comment: &str, asset: &str, version: &Version) -> Result<(), String> {
    let fields: Vec<(&str, &str)> = comment.split('\t').filter_map(|f| f.split_once(':')).collect();
    let get = |k: &str| fields.iter().find(|(key, _)| key.trim() == k).map(|(_, v)| v.trim());
    match get("file") {
        Some(f) if f == asset => {}
        Some(f) => return Err(format!("the signature is for file {f:?}, not {asset:?}")),
        None => return Err(format!("the signature's trusted comment names no file ({comment:?})")),
    }
    match get("version") {
        Some(v) if v != version.to_string() => Err(format!("the signature is for version {v}, not {version}")),
        _ => Ok(()),
    }
}

/// The words of a signature that does not match the bytes it signs.
pub const MISMATCH: &str = "the signature does not match the downloaded bytes";

/// A signature that is well formed, names its file and version, and is made by a trusted key:
/// what is left to check is the file's bytes, hashed as they arrive ([`Signed::prehash`]) or read
/// from disk ([`Signed::verify_file`]).
#[derive(Clone)]
pub struct Signed {
    key: PublicKey,
    sig: Signature,
}

impl Signed {
    /// Checks the signature text `sig` for asset `asset` of `version` against `keys`, before any
    /// of the file is read.
    pub fn new(keys: &[String], sig: &str, asset: &str, version: &Version) -> Result<Signed, SignatureError> {
        let refuse = |text: String| SignatureError::Refused(text);
        let sig = Signature::decode(sig).map_err(|e| refuse(format!("the signature file is corrupt ({e})")))?;
        check_trusted_comment(sig.trusted_comment(), asset, version).map_err(refuse)?;
        let mut legacy = false;
        for key in keys.iter().filter_map(|k| PublicKey::from_base64(k).ok()) {
            match key.verify_stream(&sig) {
                Ok(_) => return Ok(Signed { key, sig }),
                Err(minisign_verify::Error::UnsupportedLegacyMode) => legacy = true,
                Err(_) => {}
            }
        }
        Err(refuse(match legacy {
            true => "a legacy minisign signature (not prehashed): sign the release with `agent release publish`, \
                     or `minisign -S -H`"
                .into(),
            false => "signed by a key that is not in trusted_keys".into(),
        }))
    }

    /// A hash of the file's bytes, fed in order, that [`Prehash::finish`] checks against the
    /// signature.
    pub fn prehash(&self) -> Prehash<'_> {
        Prehash(self.key.verify_stream(&self.sig).expect("the key was checked against this signature"))
    }

    /// Checks `file`'s bytes, read in chunks: memory stays flat whatever its size.
    pub fn verify_file(&self, file: &Path) -> Result<(), SignatureError> {
        let mut hash = self.prehash();
        let mut f = std::fs::File::open(file).map_err(SignatureError::Read)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match f.read(&mut buf).map_err(SignatureError::Read)? {
                0 => return hash.finish(),
                n => hash.update(&buf[..n]),
            }
        }
    }
}

/// The signed file's bytes so far (minisign's BLAKE2b prehash).
pub struct Prehash<'a>(minisign_verify::StreamVerifier<'a>);

impl Prehash<'_> {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Whether the bytes fed are the signed file's.
    pub fn finish(mut self) -> Result<(), SignatureError> {
        self.0.finalize().map_err(|_| SignatureError::Refused(MISMATCH.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_comment_must_name_the_file_and_version() {
        let v = |s| Version::parse(s).unwrap();
        let ok = trusted_comment("agent-1.2.0-linux-x86_64", &v("1.2.0"), 1_700_000_000);
        assert_eq!(check_trusted_comment(&ok, "agent-1.2.0-linux-x86_64", &v("1.2.0")), Ok(()));
        let plain_minisign = "timestamp:1700000000\tfile:agent-1.2.0-linux-x86_64\thashed";
        assert_eq!(check_trusted_comment(plain_minisign, "agent-1.2.0-linux-x86_64", &v("1.2.0")), Ok(()));
        assert!(check_trusted_comment(&ok, "agent-1.3.0-linux-x86_64", &v("1.3.0"))
            .unwrap_err()
            .contains("not \"agent-1.3.0"));
        let replay = "file:agent-1.2.0-linux-x86_64\tversion:1.1.0";
        assert!(check_trusted_comment(replay, "agent-1.2.0-linux-x86_64", &v("1.2.0"))
            .unwrap_err()
            .contains("version 1.1.0"));
        assert!(check_trusted_comment("timestamp:1", "a", &v("1.0.0")).is_err());
    }

    #[test]
    fn a_signature_is_checked_before_the_bytes_and_then_against_them() {
        let v = Version::parse("1.2.0").unwrap();
        let (pair, other) = (
            minisign::KeyPair::generate_unencrypted_keypair().unwrap(),
            minisign::KeyPair::generate_unencrypted_keypair().unwrap(),
        );
        let line = |k: &minisign::KeyPair| public_key_line(&k.pk.to_box().unwrap().into_string());
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let comment = trusted_comment("agent", &v, 1);
        let sig = minisign::sign(Some(&pair.pk), &pair.sk, &bytes[..], Some(&comment), None).unwrap().into_string();

        let signed = Signed::new(&[line(&other), line(&pair)], &sig, "agent", &v).unwrap();
        let mut hash = signed.prehash();
        for piece in bytes.chunks(4096) {
            hash.update(piece);
        }
        assert!(hash.finish().is_ok());
        let mut changed = signed.prehash();
        changed.update(&bytes[1..]);
        assert_eq!(changed.finish().unwrap_err().to_string(), MISMATCH);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent");
        std::fs::write(&file, &bytes).unwrap();
        assert!(signed.verify_file(&file).is_ok());
        std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(signed.verify_file(&file).unwrap_err().to_string(), MISMATCH);

        let untrusted = Signed::new(&[line(&other)], &sig, "agent", &v).err().unwrap();
        assert!(untrusted.to_string().contains("not in trusted_keys"));
        let renamed = Signed::new(&[line(&pair)], &sig, "agent-other", &v).err().unwrap();
        assert!(renamed.to_string().contains("not \"agent-other\""));
    }

    #[test]
    fn key_lines_are_read_from_a_whole_pub_file() {
        let file = "untrusted comment: minisign public key\nRWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n";
        assert_eq!(public_key_line(file), "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3");
        assert!(check_public_key(&public_key_line(file)).is_ok());
        assert!(check_public_key("not-a-key").is_err());
        assert_eq!(public_key_line("  \n"), "");
    }
}
