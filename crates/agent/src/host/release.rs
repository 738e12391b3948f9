//! `agent release keygen|publish`: a signing key pair, and a version added to a release
//! directory, by [`edge_agent_release`]; what it did, in lines for the operator.

use std::path::{Path, PathBuf};

use edge_agent_release::keys;
use edge_agent_release::publish::{self, Artifact, Publish, PublishError};
use edge_agent_release::variants;

/// `agent release …`, as the command line gives it.
#[derive(Debug, clap::Subcommand)]
pub enum ReleaseCommand {
    /// Create a minisign key pair (minisign.pub, minisign.key) for signing releases
    Keygen {
        /// Directory to write the key pair to
        #[arg(long)]
        out: PathBuf,
        /// Leave the secret key unencrypted (otherwise: password from EDGE_AGENT_KEY_PASSWORD or a prompt)
        #[arg(long)]
        no_password: bool,
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
}

/// Runs `agent release …`; what to print.
pub fn command(cmd: ReleaseCommand) -> Result<String, PublishError> {
    let password = std::env::var(keys::PASSWORD_ENV).ok();
    let mut said = String::new();
    match cmd {
        ReleaseCommand::Keygen { out, no_password } => {
            let (pk, sk) = keys::keygen(&out, no_password, password)?;
            said += &format!("public key:  {}\nsecret key:  {}\n", pk.display(), sk.display());
            said += &format!("trust it in agent.toml as: trusted_keys = [\"{}\"]\n", public_key_line(&pk));
        }
        ReleaseCommand::Publish { dir, version, key, name, artifacts, patches, level } => {
            let sk = key.as_deref().map(|k| keys::load_secret(k, password)).transpose()?;
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
    }
    Ok(said)
}

/// The base64 line of a minisign public key file.
fn public_key_line(path: &Path) -> String {
    edge_agent_release::signature::public_key_line(&std::fs::read_to_string(path).unwrap_or_default())
}
