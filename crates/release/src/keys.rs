//! Minisign key pairs for signing releases. The secret key's password comes from
//! `EDGE_AGENT_KEY_PASSWORD`, a password file, or a prompt on the terminal, never from a flag; with
//! none of them (a script, CI, ssh without a tty) it is a clear error, never a prompt.

use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, SecretKey, SecretKeyBox};

pub const PASSWORD_ENV: &str = "EDGE_AGENT_KEY_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path} already exists: refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read secret key {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error(
        "no password for the secret key and no terminal to ask for one: set {PASSWORD_ENV} or pass \
         --password-file FILE (or --no-password for an unencrypted key, e.g. for CI: anyone who can read \
         the file can sign releases)"
    )]
    NoPasswordForNewKey,
    #[error(
        "the secret key {path} is encrypted and there is no terminal to ask for its password: set \
         {PASSWORD_ENV} or pass --password-file FILE"
    )]
    NoPasswordForKey { path: PathBuf },
    #[error("cannot read the password file {path}: {detail}")]
    PasswordFile { path: PathBuf, detail: String },
    #[error("minisign: {0}")]
    Minisign(String),
}

/// The longest password file read: a password, not a document.
const PASSWORD_FILE_MAX: u64 = 4096;

/// The password in the file at `path`: its first line, without the line ending.
pub fn read_password_file(path: &Path) -> Result<String, KeyError> {
    use std::io::Read;
    let err = |detail: String| KeyError::PasswordFile { path: path.into(), detail };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(PASSWORD_FILE_MAX).read_to_string(&mut text))
        .map_err(|e| err(e.to_string()))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(err("its first line is empty; write the password on it".into()));
    }
    Ok(line.to_string())
}

/// Where the secret key's password comes from.
#[derive(Debug, Clone)]
pub enum Password {
    /// From the environment or a password file.
    Given(String),
    /// Asked on the terminal.
    Prompt,
    /// Neither given nor askable: a key that needs one is an error.
    Unavailable,
}

impl Password {
    /// `None` to prompt; the error when there is no way to get one.
    fn resolve(self, missing: impl FnOnce() -> KeyError) -> Result<Option<String>, KeyError> {
        match self {
            Password::Given(p) => Ok(Some(p)),
            Password::Prompt => Ok(None),
            Password::Unavailable => Err(missing()),
        }
    }
}

fn minisign_err(e: minisign::PError) -> KeyError {
    KeyError::Minisign(e.to_string())
}

/// Writes `minisign.pub` and `minisign.key` in `dir`; returns their paths. The secret key is
/// encrypted unless `no_password`, with `password`.
pub fn keygen(dir: &Path, no_password: bool, password: Password) -> Result<(PathBuf, PathBuf), KeyError> {
    let (pk_path, sk_path) = (dir.join("minisign.pub"), dir.join("minisign.key"));
    for p in [&pk_path, &sk_path] {
        if p.exists() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let password = if no_password { None } else { password.resolve(|| KeyError::NoPasswordForNewKey)? };
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write { path: dir.into(), source })?;
    let KeyPair { pk, sk } = if no_password {
        KeyPair::generate_unencrypted_keypair()
    } else {
        KeyPair::generate_encrypted_keypair(password)
    }
    .map_err(minisign_err)?;
    let with_newline = |s: String| if s.ends_with('\n') { s } else { s + "\n" };
    let pk_text = with_newline(pk.to_box().map_err(minisign_err)?.into_string());
    let sk_text = with_newline(sk.to_box(Some("edge-agent release signing key")).map_err(minisign_err)?.into_string());
    write_private(&sk_path, &sk_text)?;
    std::fs::write(&pk_path, pk_text).map_err(|source| KeyError::Write { path: pk_path.clone(), source })?;
    Ok((pk_path, sk_path))
}

fn write_private(path: &Path, text: &str) -> Result<(), KeyError> {
    use std::io::Write;
    let mut f =
        edge_agent_base::fs::create_private(path).map_err(|source| KeyError::Write { path: path.into(), source })?;
    f.write_all(text.as_bytes()).map_err(|source| KeyError::Write { path: path.into(), source })
}

/// Loads a secret key; an encrypted one is opened with `password`.
pub fn load_secret(path: &Path, password: Password) -> Result<SecretKey, KeyError> {
    let read_err = |detail: String| KeyError::Read { path: path.into(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
    let sk_box = SecretKeyBox::from_string(&text).map_err(|e| read_err(e.to_string()))?;
    match SecretKey::from_unencrypted_box(sk_box.clone()) {
        Ok(sk) => Ok(sk),
        Err(_) => {
            let password = password.resolve(|| KeyError::NoPasswordForKey { path: path.into() })?;
            SecretKey::from_box(sk_box, password).map_err(|e| read_err(format!("{e} (wrong password?)")))
        }
    }
}

/// The public half of a secret key, for checking each signature as it is made.
pub fn public_of(sk: &SecretKey) -> Result<PublicKey, KeyError> {
    PublicKey::from_secret_key(sk).map_err(minisign_err)
}

/// Where a release directory keeps the public keys its releases are signed with, one minisign
/// `.pub` file per key, so that the server hosting it can write them into agents' configurations.
pub const PUBLISHED_KEYS: &str = "keys";

/// Records `pk` as `keys/<key id>.pub` in the release directory `dir`, unless it is there already.
pub fn record_public(dir: &Path, pk: &PublicKey) -> Result<(), KeyError> {
    let bytes = pk.to_bytes();
    let id = edge_agent_base::id::hex(&bytes[2..10.min(bytes.len())]);
    let path = dir.join(PUBLISHED_KEYS).join(format!("{id}.pub"));
    if path.is_file() {
        return Ok(());
    }
    let text = pk.to_box().map_err(minisign_err)?.into_string();
    let write_err = |source| KeyError::Write { path: path.clone(), source };
    std::fs::create_dir_all(dir.join(PUBLISHED_KEYS)).map_err(write_err)?;
    edge_agent_base::fs::write_atomic(&path, text.as_bytes()).map_err(write_err)
}

/// The public keys (base64 lines) recorded in the release directory `dir`, sorted; none when it
/// has no `keys/` directory.
pub fn recorded_public(dir: &Path) -> Result<Vec<String>, KeyError> {
    let keys_dir = dir.join(PUBLISHED_KEYS);
    let read_err = |path: &Path, detail: String| KeyError::Read { path: path.into(), detail };
    let entries = match std::fs::read_dir(&keys_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(&keys_dir, e.to_string())),
        Ok(entries) => entries,
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| read_err(&keys_dir, e.to_string()))?.path();
        if path.extension().is_none_or(|e| e != "pub") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e.to_string()))?;
        let line = crate::signature::public_key_line(&text);
        crate::signature::check_public_key(&line).map_err(|why| read_err(&path, why))?;
        keys.push(line);
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}
