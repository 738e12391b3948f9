//! Offline upgrades: `agent release bundle` packs a signed version into one file, and `agent
//! upgrade --from-file` installs it on an agent that has no release source, through the running
//! daemon or alone, with the same verification, journal, trial and report; the server learns the
//! new version when the agent connects. Bundles for another platform, tampered ones and an old
//! version replayed under a new number are refused, the binary byte-identical.

use std::path::{Path, PathBuf};
use std::process::Command;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use edge_agent_e2e::releases::{release_command, Signed};
use edge_agent_e2e::rig::{same_bytes, LIMIT};
use edge_agent_e2e::{agent_bin, eventually, next_build, next_version, AgentHome, Server, FAST};

/// `agent <args> --config <home>` with the installed binary: (exit code, stdout, stderr).
fn agent(home: &AgentHome, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(home.bin()).args(args).arg("--config").arg(home.config()).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// A signed release directory with this build and the next; a server with no release source.
struct Offline {
    signed: Signed,
    server: Server,
}

impl Offline {
    async fn start() -> Offline {
        let signed = Signed::new();
        signed.publish(SOURCE_VERSION, &[Path::new(agent_bin())]);
        signed.publish(&next_version(), &[next_build()]);
        Offline { signed, server: Server::start(&["--heartbeat-interval", "0.3"]).await }
    }

    /// `agent release bundle` of `version` from `dir` into a file in the work directory.
    fn bundle(&self, dir: &Path, version: &str, name: &str) -> (PathBuf, String) {
        let out = self.signed.work.path().join(name);
        let said = release_command(&[
            "bundle",
            "--dir",
            dir.to_str().unwrap(),
            "--version",
            version,
            "--out",
            out.to_str().unwrap(),
        ]);
        (out, said)
    }

    /// An agent of this build that trusts the key and has no release source.
    fn home(&self, name: &str) -> (String, AgentHome) {
        let (id, cfg) = self.server.add_agent(name);
        let key = format!("trusted_keys = [\"{}\"]\nhealth_window = 20\n", self.signed.public_key);
        let home = AgentHome::new(&format!("{cfg}{FAST}{key}"));
        home.install(Path::new(agent_bin()));
        (id, home)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_upgrades_a_running_agent_without_a_release_source() {
    let o = Offline::start().await;
    let next = next_version();
    let (bundle, said) = o.bundle(&o.signed.dir(), &next, "edge-agent-next.bundle");
    assert!(said.contains(&format!("bundled agent-{next}-linux-")) && said.contains("(signed)"), "{said}");
    let listing = Command::new("tar").arg("tf").arg(&bundle).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.starts_with(&format!("v{next}.json\n")) && listing.contains(".minisig\n"), "{listing}");
    assert!(!listing.contains(".zst"), "no compressed copies or patches: {listing}");

    let (id, home) = o.home("offline-daemon");
    let _agent = home.start(&[]);
    o.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let (code, out, err) = agent(&home, &["upgrade", "--from-file", bundle.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("upgraded {SOURCE_VERSION} -> {next}: confirmed by the new daemon")), "{out}");
    o.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert!(same_bytes(&home.bin(), next_build()));
    assert!(!home.state().join("bundle.incoming").exists(), "the received bundle is removed");

    // The result is in the history like any other, and the server reads it in the agent's stats.
    let (code, stats) = o.server.get(&format!("fhir/R4/Agent/{id}/$stats")).await;
    assert_eq!(code, 200);
    let stats: Value = serde_json::from_str(stats["parameter"][0]["valueString"].as_str().unwrap()).unwrap();
    let last = &stats["upgrades"]["recent"][0];
    assert_eq!(
        (last["from"].as_str(), last["to"].as_str(), last["outcome"].as_str()),
        (Some(SOURCE_VERSION), Some(next.as_str()), Some("ok")),
        "{stats}"
    );

    // The same bundle again: nothing to do.
    let (code, out, _) = agent(&home, &["upgrade", "--from-file", bundle.to_str().unwrap()]);
    assert_eq!((code, out.contains(&format!("already up to date: running {next}"))), (0, true), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_installed_without_a_daemon_is_confirmed_and_reported_at_the_next_connection() {
    let o = Offline::start().await;
    let next = next_version();
    let (bundle, _) = o.bundle(&o.signed.dir(), &next, "next.bundle");
    let (id, home) = o.home("offline-alone");

    let (code, out, err) =
        agent(&home, &["upgrade", "--version", SOURCE_VERSION, "--from-file", bundle.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("holds version {next}, not {SOURCE_VERSION}")), "{err}");
    let (code, out2, err) = agent(&home, &["upgrade", "--from-file", bundle.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{out2}{err}");
    assert!(out2.contains(&format!("installed {next} (no daemon is running)")), "{out2}");
    assert_eq!(home.journal().unwrap()["state"], "trial");

    let _agent = home.start(&[]);
    o.server.wait_status(&id, "connected", &next, LIMIT).await;
    eventually(LIMIT, "the trial confirmed", || {
        let last = home.history().last().cloned().filter(|r| r["outcome"] == "ok" && r["to"] == next.as_str());
        async move { last }
    })
    .await;
    let (_, status, _) = agent(&home, &["status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        (status["version"].as_str(), status["previous"]["version"].as_str()),
        (Some(next.as_str()), Some(SOURCE_VERSION))
    );
}

/// Flips a byte inside the first copy of `needle`'s first 4 KiB found in `file`.
fn tamper(file: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    let probe = &needle[..4096];
    let at = bytes.windows(probe.len()).position(|w| w == probe).expect("the binary is in the bundle");
    bytes[at + 2000] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_tampered_replayed_and_unsigned_bundles_are_refused_leaving_the_binary_byte_identical() {
    let o = Offline::start().await;
    let next = next_version();
    let (_, home) = o.home("offline-refusals");
    let refused = |bundle: &Path, want: &str| {
        let (code, out, err) = agent(&home, &["upgrade", "--from-file", bundle.to_str().unwrap()]);
        assert_eq!(code, 1, "{want}: {out}{err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(same_bytes(&home.bin(), Path::new(agent_bin())), "{want}: the binary is untouched");
        assert_eq!(home.strays(), Vec::<String>::new(), "{want}: nothing left beside the binary");
    };

    // Another platform's build only.
    let other = Signed::new();
    let foreign = other.work.path().join("foreign");
    std::fs::write(&foreign, b"an aarch64 build, as far as this test is concerned").unwrap();
    other.publish(&next, &[&PathBuf::from(format!("{}:linux-aarch64", foreign.display()))]);
    let (bundle, _) = o.bundle(&other.dir(), &next, "foreign.bundle");
    refused(
        &bundle,
        &format!("holds no build for {}: it has agent-{next}-linux-aarch64", edge_agent_base::build_info::platform()),
    );

    // A byte of the binary changed: its sha256 no longer matches.
    let (bundle, _) = o.bundle(&o.signed.dir(), &next, "tampered.bundle");
    tamper(&bundle, &std::fs::read(next_build()).unwrap());
    refused(&bundle, "checksum mismatch for agent-");

    // The binary changed and the manifest's sha256 with it: the signature refuses it.
    let forged = o.signed.work.path().join("forged");
    copy_dir(&o.signed.dir(), &forged);
    let asset = forged.join(format!("download/v{next}/agent-{next}-{}", edge_agent_base::build_info::platform()));
    tamper(&asset, &std::fs::read(&asset).unwrap());
    let manifest = forged.join(format!("v{next}.json"));
    let sha = edge_agent_e2e::releases::sha256_hex(&std::fs::read(&asset).unwrap());
    let old_sha = edge_agent_e2e::releases::sha256_hex(&std::fs::read(next_build()).unwrap());
    std::fs::write(&manifest, std::fs::read_to_string(&manifest).unwrap().replace(&old_sha, &sha)).unwrap();
    let (bundle, _) = o.bundle(&forged, &next, "forged.bundle");
    refused(&bundle, "signature check failed");

    // The old signed build replayed as the next version: its signature names the old file.
    let replay = o.signed.work.path().join("replay");
    copy_dir(&o.signed.dir(), &replay);
    let platform = edge_agent_base::build_info::platform();
    let (old_dir, new_dir) =
        (replay.join(format!("download/v{SOURCE_VERSION}")), replay.join(format!("download/v{next}")));
    for ext in ["", ".sha256", ".minisig"] {
        let from = old_dir.join(format!("agent-{SOURCE_VERSION}-{platform}{ext}"));
        std::fs::copy(from, new_dir.join(format!("agent-{next}-{platform}{ext}"))).unwrap();
    }
    let old_manifest = std::fs::read_to_string(replay.join(format!("v{SOURCE_VERSION}.json"))).unwrap();
    std::fs::write(replay.join(format!("v{next}.json")), old_manifest.replace(SOURCE_VERSION, &next)).unwrap();
    let (bundle, _) = o.bundle(&replay, &next, "replay.bundle");
    refused(&bundle, &format!("the signature is for file \"agent-{SOURCE_VERSION}-{platform}\""));

    // Unsigned, to an agent that trusts a key.
    let unsigned_dir = o.signed.work.path().join("unsigned");
    release_command(&[
        "publish",
        "--dir",
        unsigned_dir.to_str().unwrap(),
        "--version",
        &next,
        "--level",
        "3",
        next_build().to_str().unwrap(),
    ]);
    let (bundle, said) = o.bundle(&unsigned_dir, &next, "unsigned.bundle");
    assert!(said.contains("not signed: agents refuse it unless allow_unsigned = true"), "{said}");
    refused(&bundle, "no .minisig signature in the bundle");

    // A good bundle, to an agent that trusts no key: refused as a download would be.
    let (good, _) = o.bundle(&o.signed.dir(), &next, "good.bundle");
    let untrusting = o.signed.work.path().join("untrusting.toml");
    let text = std::fs::read_to_string(home.config()).unwrap();
    let text: String = text.lines().filter(|l| !l.starts_with("trusted_keys")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&untrusting, text).unwrap();
    let out = Command::new(home.bin())
        .args(["upgrade", "--from-file"])
        .arg(&good)
        .arg("--config")
        .arg(&untrusting)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("no trusted_keys configured, and this agent installs only signed releases"),
        "{err}"
    );
    assert!(same_bytes(&home.bin(), Path::new(agent_bin())));

    // Not a bundle at all.
    std::fs::write(o.signed.work.path().join("garbage.bundle"), vec![7u8; 10_000]).unwrap();
    refused(&o.signed.work.path().join("garbage.bundle"), "is not a release bundle");
    let failures = home.history().iter().filter(|r| r["outcome"] == "failed").count();
    assert!(failures >= 5, "each refusal after the request was accepted is in the history: {:?}", home.history());
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}
