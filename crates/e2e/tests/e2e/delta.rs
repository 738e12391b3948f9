//! Compressed and patch releases between two real builds: a patch upgrade downloads only the
//! patch (counted by the release server as it sends), each broken patch or compressed copy falls
//! back to the next file, a worker killed mid-patch resumes it with `Range`, and the `zstd` CLI
//! reads what `agent release publish` writes, and the other way round.

use std::path::{Path, PathBuf};
use std::process::Command;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::releases::{platform, sha256_hex, ReleaseServer};
use edge_agent_e2e::rig::{same_bytes, LIMIT};
use edge_agent_e2e::{agent_bin, eventually, next_build, next_version, signal, AgentHome, Proc, Server, FAST};

/// `agent release publish` of `binary` as `version` into `dir`, signed with the key in `keys`
/// (made there first when missing), with a low zstd level (the debug builds are large; the level
/// changes sizes, not behaviour).
pub fn publish(dir: &Path, keys: &Path, version: &str, binary: &Path) {
    if !keys.join("minisign.key").exists() {
        let out = Command::new(agent_bin()).args(["release", "keygen", "--no-password", "--out"]).arg(keys).output();
        assert!(out.unwrap().status.success(), "keygen");
    }
    let out = Command::new(agent_bin())
        .args(["release", "publish", "--level", "3", "--dir"])
        .arg(dir)
        .args(["--version", version, "--key"])
        .arg(keys.join("minisign.key"))
        .arg(binary)
        .output()
        .unwrap();
    assert!(out.status.success(), "publish {version}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The configuration line trusting the keys `publish` recorded in the release directory `dir`.
pub fn trust(dir: &Path) -> String {
    let keys = edge_agent_release::keys::recorded_public(dir).unwrap();
    assert!(!keys.is_empty(), "publish records the key it signed with in {}", dir.display());
    format!("trusted_keys = [\"{}\"]\n", keys.join("\", \""))
}

/// A release directory with the current build and the next one (with a patch from the current
/// one and a compressed copy), served by a real `agent-server --releases`.
struct Delta {
    work: tempfile::TempDir,
    server: Server,
}

impl Delta {
    async fn start() -> Delta {
        let work = tempfile::tempdir().unwrap();
        let rel = work.path().join("releases");
        let keys = work.path().join("keys");
        publish(&rel, &keys, SOURCE_VERSION, Path::new(agent_bin()));
        publish(&rel, &keys, &next_version(), next_build());
        let server = Server::start(&["--heartbeat-interval", "0.3", "--releases", rel.to_str().unwrap()]).await;
        Delta { work, server }
    }

    fn rel(&self) -> PathBuf {
        self.work.path().join("releases")
    }

    /// The next version's asset, or a file beside it (`.zst`, `.patch-from-<v>.zst`).
    fn file(&self, suffix: &str) -> PathBuf {
        let next = next_version();
        self.rel().join(format!("download/v{next}/agent-{next}-{}{suffix}", platform()))
    }

    fn patch_suffix() -> String {
        format!(".patch-from-{SOURCE_VERSION}.zst")
    }

    fn manifest(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.rel().join(format!("v{}.json", next_version()))).unwrap()).unwrap()
    }

    fn set_manifest(&self, m: &Value) {
        std::fs::write(self.rel().join(format!("v{}.json", next_version())), m.to_string()).unwrap();
    }

    /// Changes one byte in the middle of a published file (same size, other bytes).
    fn corrupt(&self, suffix: &str) {
        let mut bytes = std::fs::read(self.file(suffix)).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(self.file(suffix), bytes).unwrap();
    }

    async fn agent(&self, name: &str) -> (String, AgentHome, Proc) {
        let (id, cfg) = self.server.add_agent(name);
        let releases = format!("releases_url = \"{}\"\n{}", self.server.url("releases/"), trust(&self.rel()));
        let home = AgentHome::new(&format!("{cfg}{FAST}{releases}"));
        home.install(Path::new(agent_bin()));
        let proc = home.start(&[]);
        self.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
        (id, home, proc)
    }

    /// (file name, bytes sent) of each file the release server sent from `download/` (signatures
    /// aside), from its access log, once `last` is among them.
    async fn sent(&self, last: &str) -> Vec<(String, u64)> {
        let log = self.server.dir.path().join("server.log");
        eventually(LIMIT, &format!("the release server's log line for {last}"), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let sent: Vec<(String, u64)> = text
                .lines()
                .filter(|l| l.contains("release file served") && l.contains("/download/"))
                .filter(|l| !field(l, "path").ends_with(".minisig"))
                .map(|l| {
                    (field(l, "path").rsplit('/').next().unwrap().to_string(), field(l, "bytes_sent").parse().unwrap())
                })
                .collect();
            async move { sent.iter().any(|(name, _)| name.ends_with(last)).then_some(sent) }
        })
        .await
    }

    /// Upgrades a new agent to the next version: All OK, and the installed binary is the
    /// published one, byte for byte. Its home, to look at.
    async fn upgrade_ok(&self, name: &str) -> AgentHome {
        let next = next_version();
        let (id, home, proc) = self.agent(name).await;
        let (code, text) = self.server.upgrade(&id, &format!("version={next}&timeout=40000")).await;
        assert_eq!((code, text.as_str()), (200, "All OK"), "{}", proc.log());
        self.server.wait_status(&id, "connected", &next, LIMIT).await;
        assert!(same_bytes(&home.bin(), &self.file("")), "the installed binary is the published one");
        assert!(same_bytes(&home.bin(), next_build()));
        assert_eq!(home.strays(), Vec::<String>::new(), "no staging files left");
        home
    }
}

/// The value of `key=value` in a log line (quotes removed).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line.find(&format!(" {key}=")).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len() + 2;
    line[at..].split_whitespace().next().unwrap().trim_matches('"')
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_upgrade_downloads_only_the_patch_and_installs_the_published_binary() {
    let d = Delta::start().await;
    let patch = Delta::patch_suffix();
    let m = d.manifest();
    assert_eq!(m["assets"][0]["patches"][0]["from_version"], SOURCE_VERSION);
    assert_eq!(m["assets"][0]["patches"][0]["size"], size_of(&d.file(&patch)));
    let home = d.upgrade_ok("patched").await;
    let sent = d.sent(&patch).await;
    let name = format!("agent-{}-{}{patch}", next_version(), platform());
    assert_eq!(sent, [(name, size_of(&d.file(&patch)))], "only the patch went over the wire, whole");
    assert!(size_of(&d.file(&patch)) * 4 < size_of(&d.file("")), "a patch smaller than the binary");
    let log = std::fs::read_to_string(home.dir.path().join("agent.log")).unwrap();
    assert!(log.contains(&format!("rebuilt the new binary from the patch from {SOURCE_VERSION}")), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_patch_falls_back_to_the_compressed_copy() {
    let d = Delta::start().await;
    d.corrupt(&Delta::patch_suffix());
    let home = d.upgrade_ok("corrupt-patch").await;
    let sent: Vec<String> = d.sent(".zst").await.into_iter().map(|s| s.0).collect();
    let p = format!("agent-{}-{}", next_version(), platform());
    assert_eq!(sent, [format!("{p}{}", Delta::patch_suffix()), format!("{p}.zst")]);
    let log = std::fs::read_to_string(home.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("downloading the compressed instead"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_that_lies_about_a_patchs_hash_falls_back_to_the_compressed_copy() {
    let d = Delta::start().await;
    let mut m = d.manifest();
    m["assets"][0]["patches"][0]["sha256"] = json!(sha256_hex(b"something else"));
    d.set_manifest(&m);
    let home = d.upgrade_ok("lying-manifest").await;
    let sent: Vec<String> = d.sent(".zst").await.into_iter().map(|s| s.0).collect();
    assert_eq!(sent.len(), 2, "the patch, then the compressed copy: {sent:?}");
    let log = std::fs::read_to_string(home.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("checksum mismatch for") && log.contains(".patch-from-"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_for_another_base_is_never_applied() {
    let d = Delta::start().await;
    // Listed honestly for another binary: not even downloaded.
    let mut m = d.manifest();
    m["assets"][0]["patches"][0]["from_sha256"] = json!(sha256_hex(b"another build"));
    d.set_manifest(&m);
    d.upgrade_ok("other-base").await;
    let sent: Vec<String> = d.sent(".zst").await.into_iter().map(|s| s.0).collect();
    assert_eq!(sent, [format!("agent-{}-{}.zst", next_version(), platform())], "no patch downloaded");

    // Made against another binary (the next build itself: all matches, no literals), but
    // claiming ours: it decodes to other bytes, and is not used.
    let base = d.work.path().join("base");
    std::fs::copy(next_build(), &base).unwrap();
    let status = Command::new("zstd")
        .args(["-q", "-f", "-3", "--patch-from"])
        .arg(&base)
        .arg(next_build())
        .arg("-o")
        .arg(d.file(&Delta::patch_suffix()))
        .status()
        .unwrap();
    assert!(status.success());
    let patch = std::fs::read(d.file(&Delta::patch_suffix())).unwrap();
    m["assets"][0]["patches"][0]["from_sha256"] = json!(sha256_hex(&std::fs::read(agent_bin()).unwrap()));
    m["assets"][0]["patches"][0]["sha256"] = json!(sha256_hex(&patch));
    m["assets"][0]["patches"][0]["size"] = json!(patch.len());
    d.set_manifest(&m);
    let home = d.upgrade_ok("lying-base").await;
    let log = std::fs::read_to_string(home.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("cannot use the patch from"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_compressed_copy_and_a_corrupt_patch_fall_back_to_the_full_binary() {
    let d = Delta::start().await;
    d.corrupt(&Delta::patch_suffix());
    let zst = std::fs::read(d.file(".zst")).unwrap();
    std::fs::write(d.file(".zst"), &zst[..zst.len() / 2]).unwrap();
    d.upgrade_ok("truncated").await;
    let raw = format!("agent-{}-{}", next_version(), platform());
    let sent = d.sent(&raw).await;
    assert_eq!(sent.last().unwrap(), &(raw, size_of(&d.file(""))), "the full binary, whole: {sent:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_file_is_broken_the_upgrade_fails_clearly_and_the_binary_is_untouched() {
    let d = Delta::start().await;
    d.corrupt(&Delta::patch_suffix());
    d.corrupt(".zst");
    d.corrupt("");
    let next = next_version();
    let (id, home, _proc) = d.agent("all-broken").await;
    let (code, text) = d.server.upgrade(&id, &format!("version={next}&timeout=40000")).await;
    assert_eq!(code, 400, "{text}");
    let want =
        format!("Error during upgrading to version 'v{next}': checksum mismatch for agent-{next}-{}", platform());
    assert!(text.starts_with(&want), "{text}");
    assert!(same_bytes(&home.bin(), Path::new(agent_bin())), "the old binary, byte for byte");
    assert_eq!(home.strays(), Vec::<String>::new(), "no staging files left");
    d.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let log = std::fs::read_to_string(home.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("cannot use the patch from") && log.contains("cannot use the compressed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_zstd_cli_rebuilds_the_published_binary_from_the_patch_and_the_compressed_copy() {
    let d = Delta::start().await;
    let out = d.work.path().join("rebuilt");
    let old = d.rel().join(format!("download/v{SOURCE_VERSION}/agent-{SOURCE_VERSION}-{}", platform()));
    let patch = d.file(&Delta::patch_suffix());
    let zstd = |args: &[&std::ffi::OsStr]| {
        let o = Command::new("zstd").args(args).output().unwrap();
        assert!(o.status.success(), "zstd {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let patch_from = format!("--patch-from={}", old.display());
    zstd(&[
        "-q".as_ref(),
        "-f".as_ref(),
        "-d".as_ref(),
        patch_from.as_ref(),
        patch.as_ref(),
        "-o".as_ref(),
        out.as_ref(),
    ]);
    assert!(same_bytes(&out, next_build()), "zstd -d --patch-from rebuilds the published binary");
    zstd(&["-q".as_ref(), "-f".as_ref(), "-d".as_ref(), d.file(".zst").as_ref(), "-o".as_ref(), out.as_ref()]);
    assert!(same_bytes(&out, next_build()), "zstd -d decompresses the published copy");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_applies_a_patch_made_by_the_zstd_cli() {
    let d = Delta::start().await;
    let patch = d.file(&Delta::patch_suffix());
    let status = Command::new("zstd")
        .args(["-q", "-f", "-3", "--patch-from", agent_bin()])
        .arg(next_build())
        .arg("-o")
        .arg(&patch)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&patch).unwrap();
    let mut m = d.manifest();
    m["assets"][0]["patches"][0]["sha256"] = json!(sha256_hex(&bytes));
    m["assets"][0]["patches"][0]["size"] = json!(bytes.len());
    d.set_manifest(&m);
    d.upgrade_ok("cli-patch").await;
    let sent = d.sent(&Delta::patch_suffix()).await;
    assert_eq!(sent.iter().map(|s| s.1).collect::<Vec<_>>(), [bytes.len() as u64], "only the CLI's patch: {sent:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_worker_mid_patch_resumes_the_patch_with_range() {
    let server = Server::start(&["--heartbeat-interval", "0.3"]).await;
    let releases = ReleaseServer::start().await;
    let keys = tempfile::tempdir().unwrap();
    publish(releases.dir.path(), keys.path(), SOURCE_VERSION, Path::new(agent_bin()));
    publish(releases.dir.path(), keys.path(), &next_version(), next_build());
    let (id, cfg) = server.add_agent("kill-patch");
    let home =
        AgentHome::new(&format!("{cfg}{FAST}releases_url = \"{}\"\n{}", releases.url(), trust(releases.dir.path())));
    home.install(Path::new(agent_bin()));
    let agent = home.start(&[]);
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;

    let next = next_version();
    let staged = home.bin().with_file_name(format!(".edge-agent-download-{next}.patch"));
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    // The patch between two builds of the same sources is a few KB or a few MB, as their
    // dependencies were built alike or not: it is sent in 32 parts 50 ms apart whatever its size,
    // and the worker is killed once half of it is staged.
    let patch = size(&releases.dir.path().join(format!(
        "download/v{next}/agent-{next}-{}{}",
        platform(),
        Delta::patch_suffix()
    )));
    assert!(patch > 0, "the patch is published");
    let half = patch / 2;
    releases.faults().drip = Some(((patch as usize / 32).max(1), std::time::Duration::from_millis(50)));
    let query = format!("version={next}&timeout=40000");
    let (answer, partial) = tokio::join!(server.upgrade(&id, &query), async {
        eventually(LIMIT, "half of the patch staged", || {
            let have = size(&staged);
            async move { (have >= half).then_some(()) }
        })
        .await;
        signal(agent.worker_pid().await, "KILL");
        let partial = size(&staged);
        releases.faults().drip = None;
        partial
    });
    assert_eq!(answer, (200, "All OK".to_string()));
    let gets = releases.asset_gets();
    assert!(gets.iter().all(|g| g.path.ends_with(&Delta::patch_suffix())), "only the patch: {gets:?}");
    let ranges = releases.asset_ranges();
    assert_eq!(ranges.len(), 2, "one download, and one resumed by the next worker: {ranges:?}");
    assert!(ranges[0].is_none() && ranges[1].is_some_and(|from| from >= partial.min(half)), "{ranges:?}");
    assert!(same_bytes(&home.bin(), next_build()), "the installed binary is the published one");
    server.wait_status(&id, "connected", &next, LIMIT).await;
    assert_eq!(home.strays(), Vec::<String>::new());
    releases.handle.join();
}
