//! `agent release keygen|publish`: a signing key pair, and a version added to a release
//! directory, by [`edge_agent_release`]; what it did, in lines for the operator.

use std::path::{Path, PathBuf};

use edge_agent_release::bundle::{self, BundleError};
use edge_agent_release::keys;
use edge_agent_release::publish::{self, Artifact, Publish, PublishError};
use edge_agent_release::variants;
use semver::Version;

/// `agent release …`, as the command line gives it.
#[derive(Debug, clap::Subcommand)]
pub enum ReleaseCommand {
    /// Create a minisign key pair (minisign.pub, minisign.key) for signing releases
    Keygen {
        /// Directory to write the key pair to
        #[arg(long)]
        out: PathBuf,
        /// Leave the secret key unencrypted, e.g. for CI: anyone who can read it can sign releases
        #[arg(long, conflicts_with = "password_file")]
        no_password: bool,
        /// Read the password from this file's first line (else EDGE_AGENT_KEY_PASSWORD, else a prompt)
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Add a version to a release directory: assets, checksums, signatures, manifests
    Publish {
        /// The release directory (served as the agents' releases_url)
        #[arg(long)]
        dir: PathBuf,
        /// The version being published (X.Y.Z, optionally with a pre-release)
        #[arg(long)]
        version: String,
        /// Minisign secret key to sign the assets with
        #[arg(long)]
        key: Option<PathBuf>,
        /// Read the key's password from this file's first line (else EDGE_AGENT_KEY_PASSWORD, else a prompt)
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Asset name prefix: assets are named <name>-<version>-<os>-<arch>
        #[arg(long, default_value = "agent")]
        name: String,
        /// Also write zstd patches from the binaries of this many previous versions (0: none)
        #[arg(long, default_value_t = variants::DEFAULT_PATCHES)]
        patches: usize,
        /// zstd level of the compressed copies and patches (1-22; lower is faster to publish)
        #[arg(long, default_value_t = variants::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Built binaries, as PATH or PATH:<os>-<arch>
        #[arg(required = true)]
        artifacts: Vec<Artifact>,
    },
    /// Pack one published version (its binaries, manifest, checksums, signatures) into one file,
    /// for `agent upgrade --from-file` on hosts with no release source
    Bundle {
        /// The release directory the version was published to
        #[arg(long)]
        dir: PathBuf,
        /// The version to pack
        #[arg(long, value_parser = parse_version)]
        version: Version,
        /// The bundle file to write
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_version(text: &str) -> Result<Version, String> {
    edge_agent_wire::parse_version(text).map_err(|e| e.to_string())
}

/// Why `agent release …` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
}

/// Runs `agent release …`; what to print.
pub fn command(cmd: ReleaseCommand) -> Result<String, ReleaseError> {
    let mut said = String::new();
    match cmd {
        ReleaseCommand::Keygen { out, no_password, password_file } => {
            let (pk, sk) = keys::keygen(&out, no_password, password(password_file.as_deref())?)?;
            said += &format!("public key:  {}\nsecret key:  {}\n", pk.display(), sk.display());
            said += &format!("trust it in agent.toml as: trusted_keys = [\"{}\"]\n", public_key_line(&pk));
        }
        ReleaseCommand::Publish { dir, version, key, password_file, name, artifacts, patches, level } => {
            let sk = match key.as_deref() {
                Some(k) => Some(keys::load_secret(k, password(password_file.as_deref())?)?),
                None => None,
            };
            let variants = variants::Options { level, patches };
            let p = Publish {
                dir: &dir,
                version: &version,
                name: &name,
                artifacts: &artifacts,
                key: sk.as_ref(),
                variants,
            };
            let report = publish::publish(p)?;
            for a in &report.added {
                said += &format!("published {a}{}\n", if sk.is_some() { " (signed)" } else { "" });
            }
            for v in &report.variants {
                said += &format!("  {v}\n");
            }
            for a in &report.unchanged {
                said += &format!("unchanged {a}: already published with the same bytes\n");
            }
            if report.latest_moved {
                said += &format!("latest.json now points at {version}\n");
            }
            if sk.is_none() && !report.added.is_empty() {
                said += "warning: published without --key: agents refuse unsigned releases unless their \
                         configuration says allow_unsigned = true\n";
            }
        }
        ReleaseCommand::Bundle { dir, version, out } => {
            let written = bundle::write(&dir, &version, &out)?;
            for (asset, signed) in &written.assets {
                let unsigned = " (not signed: agents refuse it unless allow_unsigned = true)";
                said += &format!("bundled {asset}{}\n", if *signed { " (signed)" } else { unsigned });
            }
            said += &format!(
                "wrote {} ({} bytes): install with `agent upgrade --from-file`\n",
                out.display(),
                written.bytes
            );
        }
    }
    Ok(said)
}

/// Where the key's password comes from: the file, else the environment, else a prompt when
/// there is a terminal to ask on (stdin), else nowhere.
fn password(file: Option<&Path>) -> Result<keys::Password, keys::KeyError> {
    use std::io::IsTerminal;
    if let Some(file) = file {
        return keys::read_password_file(file).map(keys::Password::Given);
    }
    Ok(match std::env::var(keys::PASSWORD_ENV) {
        Ok(p) => keys::Password::Given(p),
        Err(_) if std::io::stdin().is_terminal() => keys::Password::Prompt,
        Err(_) => keys::Password::Unavailable,
    })
}

/// The base64 line of a minisign public key file.
fn public_key_line(path: &Path) -> String {
    edge_agent_release::signature::public_key_line(&std::fs::read_to_string(path).unwrap_or_default())
}
