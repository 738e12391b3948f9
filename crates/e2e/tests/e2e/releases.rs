//! Publishing with `agent release`, hosting with `agent-server --releases`, and signature checks
//! in the agent, including interoperability with the standard `minisign` tool.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::releases::platform;
use edge_agent_e2e::{agent_bin, next_build, next_version, AgentHome, Proc, Server, FAST};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `agent release …`; (success, stdout + stderr).
fn release(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(agent_bin()).arg("release").args(args).envs(envs.iter().copied()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn keygen(dir: &Path) -> String {
    let (ok, out) =
        release(&["keygen", "--out", dir.to_str().unwrap()], &[("EDGE_AGENT_KEY_PASSWORD", "correct horse")]);
    assert!(ok, "{out}");
    std::fs::read_to_string(dir.join("minisign.pub")).unwrap().lines().last().unwrap().to_string()
}

fn publish(dir: &Path, version: &str, key: Option<&Path>, artifacts: &[String]) -> String {
    // A low zstd level: the debug builds are large, and the level changes sizes, not behaviour.
    let mut args = vec![
        "publish".to_string(),
        "--dir".into(),
        dir.display().to_string(),
        "--version".into(),
        version.into(),
        "--level".into(),
        "3".into(),
    ];
    if let Some(k) = key {
        args.extend(["--key".to_string(), k.display().to_string()]);
    }
    args.extend(artifacts.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = release(&args, &[("EDGE_AGENT_KEY_PASSWORD", "correct horse")]);
    assert!(ok, "publish {version}: {out}");
    out
}

fn asset(dir: &Path, version: &str) -> PathBuf {
    dir.join(format!("download/v{version}/agent-{version}-{}", platform()))
}

fn script(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\necho {name}\n")).unwrap();
    format!("{}:{}", p.display(), platform())
}

struct Signed {
    work: tempfile::TempDir,
    server: Server,
}

impl Signed {
    /// A server hosting a release directory with the current and next builds, signed by key 1.
    async fn start() -> Signed {
        let work = tempfile::tempdir().unwrap();
        let rel = work.path().join("releases");
        keygen(&work.path().join("k1"));
        keygen(&work.path().join("k2"));
        publish(&rel, SOURCE_VERSION, Some(&work.path().join("k1/minisign.key")), &[agent_bin().into()]);
        publish(
            &rel,
            &next_version(),
            Some(&work.path().join("k1/minisign.key")),
            &[next_build().display().to_string()],
        );
        let server = Server::start(&["--heartbeat-interval", "0.3", "--releases", rel.to_str().unwrap()]).await;
        Signed { work, server }
    }
    fn rel(&self) -> PathBuf {
        self.work.path().join("releases")
    }
    fn key(&self, n: u8) -> PathBuf {
        self.work.path().join(format!("k{n}/minisign.key"))
    }
    fn pubkey(&self, n: u8) -> String {
        std::fs::read_to_string(self.work.path().join(format!("k{n}/minisign.pub")))
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    }
    async fn agent(&self, name: &str, keys: &[String]) -> (String, AgentHome, Proc) {
        let (id, cfg) = self.server.add_agent(name);
        let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        let extra =
            format!("releases_url = \"{}\"\ntrusted_keys = [{}]\n", self.server.url("releases/"), keys.join(", "));
        let home = AgentHome::new(&format!("{cfg}{FAST}{extra}"));
        home.install(Path::new(agent_bin()));
        let proc = home.start(&[]);
        self.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
        (id, home, proc)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_releases_published_by_the_tool_upgrade_through_the_server() {
    let s = Signed::start().await;
    let next = next_version();
    let (id, home, _agent) = s.agent("signed", &[s.pubkey(1)]).await;
    let (code, text) = s.server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    s.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert_eq!(std::fs::read(home.bin()).unwrap(), std::fs::read(next_build()).unwrap());
    assert!(std::fs::read_to_string(home.dir.path().join("agent.log")).unwrap().contains("signature verified"));

    // What the tool signed verifies with the standard minisign tool.
    let pubfile = s.work.path().join("k1/minisign.pub");
    let out = Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(&pubfile)
        .arg("-m")
        .arg(asset(&s.rel(), &next))
        .output()
        .unwrap();
    assert!(out.status.success(), "minisign -V: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("file:agent-{next}-{}", platform())) && said.contains(&format!("version:{next}")),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_signature_is_refused_with_its_own_error() {
    let s = Signed::start().await;
    let rel = s.rel();
    let work = s.work.path();
    let p = platform();
    let (id, home, _agent) = s.agent("refusals", &[s.pubkey(1)]).await;

    // Each case publishes a version, then breaks it in one way.
    publish(&rel, "7.0.1", Some(&s.key(1)), &[script(work, "tampered")]);
    let mut tampered = std::fs::read(asset(&rel, "7.0.1")).unwrap();
    tampered[12] ^= 0x20; // one flipped bit: same size, other bytes
    std::fs::write(asset(&rel, "7.0.1"), tampered).unwrap();

    publish(&rel, "7.0.2", Some(&s.key(1)), &[script(work, "manifest")]);
    let evil = b"#!/bin/sh\necho evil too\n";
    std::fs::write(asset(&rel, "7.0.2"), evil).unwrap();
    let mpath = rel.join("v7.0.2.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["assets"][0]["sha256"] = json!(edge_agent_e2e::releases::sha256_hex(evil));
    m["assets"][0]["size"] = json!(evil.len());
    std::fs::write(&mpath, m.to_string()).unwrap();

    publish(&rel, "7.0.3", Some(&s.key(2)), &[script(work, "untrusted")]);

    publish(&rel, "7.0.4", Some(&s.key(1)), &[script(work, "another")]);
    std::fs::copy(
        format!("{}.minisig", asset(&rel, SOURCE_VERSION).display()),
        format!("{}.minisig", asset(&rel, "7.0.4").display()),
    )
    .unwrap();

    // Replay: the old version's signed binary and signature, served as a new version.
    publish(&rel, "7.0.5", Some(&s.key(1)), &[script(work, "replay")]);
    std::fs::copy(asset(&rel, SOURCE_VERSION), asset(&rel, "7.0.5")).unwrap();
    std::fs::copy(
        format!("{}.minisig", asset(&rel, SOURCE_VERSION).display()),
        format!("{}.minisig", asset(&rel, "7.0.5").display()),
    )
    .unwrap();
    let mpath = rel.join("v7.0.5.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let old = std::fs::read(asset(&rel, SOURCE_VERSION)).unwrap();
    m["assets"][0]["sha256"] = json!(edge_agent_e2e::releases::sha256_hex(&old));
    m["assets"][0]["size"] = json!(old.len());
    std::fs::write(&mpath, m.to_string()).unwrap();

    publish(&rel, "7.0.6", None, &[script(work, "unsigned")]);

    publish(&rel, "7.0.7", Some(&s.key(1)), &[script(work, "corrupt")]);
    std::fs::write(format!("{}.minisig", asset(&rel, "7.0.7").display()), "untrusted comment: x\nnot base64 at all\n")
        .unwrap();

    let cases = [
        ("7.0.1", "checksum mismatch for".to_string()),
        (
            "7.0.2",
            format!("signature check failed for agent-7.0.2-{p}: the signature does not match the downloaded bytes"),
        ),
        ("7.0.3", format!("signature check failed for agent-7.0.3-{p}: signed by a key that is not in trusted_keys")),
        (
            "7.0.4",
            format!(
                "signature check failed for agent-7.0.4-{p}: the signature is for file \"agent-{SOURCE_VERSION}-{p}\""
            ),
        ),
        (
            "7.0.5",
            format!(
                "signature check failed for agent-7.0.5-{p}: the signature is for file \"agent-{SOURCE_VERSION}-{p}\""
            ),
        ),
        ("7.0.6", format!("signature check failed for agent-7.0.6-{p}: no .minisig signature published")),
        ("7.0.7", format!("signature check failed for agent-7.0.7-{p}: the signature file is corrupt")),
    ];
    for (v, expected) in cases {
        let (code, text) = s.server.upgrade(&id, &format!("version={v}")).await;
        assert_eq!(code, 400, "{v}: {text}");
        let expected = format!("Error during upgrading to version 'v{v}': {expected}");
        assert!(text.starts_with(&expected), "{v}: {text:?}\nshould start with {expected:?}");
        assert_eq!(std::fs::read(home.bin()).unwrap(), std::fs::read(agent_bin()).unwrap(), "{v}: binary untouched");
        assert_eq!(home.strays(), Vec::<String>::new(), "{v}: no partial file");
    }
    s.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_trusted_keys_accept_releases_signed_by_either() {
    let s = Signed::start().await;
    let next = next_version();
    // The current build re-signed with key 2 under a fresh version directory would change its
    // name; instead sign a new release directory's current version with key 2.
    let rel2 = s.work.path().join("releases");
    std::fs::remove_dir_all(rel2.join(format!("download/v{SOURCE_VERSION}"))).unwrap();
    std::fs::remove_file(rel2.join(format!("v{SOURCE_VERSION}.json"))).unwrap();
    publish(&rel2, SOURCE_VERSION, Some(&s.key(2)), &[agent_bin().into()]);
    let (id, _home, _agent) = s.agent("rotation", &[s.pubkey(1), s.pubkey(2)]).await;
    let (code, text) = s.server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "signed by key 1");
    s.server.wait_status(&id, "connected", &next, LIMIT).await;
    let (code, text) = s.server.upgrade(&id, &format!("version={SOURCE_VERSION}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "signed by key 2");
    s.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_signed_with_the_minisign_tool_verifies_in_the_agent() {
    let work = tempfile::tempdir().unwrap();
    let rel = work.path().join("releases");
    let (pk, sk) = (work.path().join("m.pub"), work.path().join("m.key"));
    let out = Command::new("minisign").args(["-G", "-W", "-p"]).arg(&pk).arg("-s").arg(&sk).output().unwrap();
    assert!(out.status.success(), "minisign -G: {}", String::from_utf8_lossy(&out.stderr));
    let next = next_version();
    publish(&rel, SOURCE_VERSION, None, &[agent_bin().into()]);
    publish(&rel, &next, None, &[next_build().display().to_string()]);
    let file = asset(&rel, &next);
    let out = Command::new("minisign").arg("-S").arg("-s").arg(&sk).arg("-m").arg(&file).output().unwrap();
    assert!(out.status.success(), "minisign -S: {}", String::from_utf8_lossy(&out.stderr));
    let mpath = rel.join(format!("v{next}.json"));
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let name = format!("agent-{next}-{}.minisig", platform());
    m["assets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": name, "browser_download_url": format!("download/v{next}/{name}")}));
    std::fs::write(&mpath, m.to_string()).unwrap();

    let server = Server::start(&["--heartbeat-interval", "0.3", "--releases", rel.to_str().unwrap()]).await;
    let (id, cfg) = server.add_agent("interop");
    let key = std::fs::read_to_string(&pk).unwrap();
    let home = AgentHome::new(&format!(
        "{cfg}{FAST}releases_url = \"{}\"\ntrusted_keys = [\"{}\"]\n",
        server.url("releases/"),
        key.lines().last().unwrap()
    ));
    home.install(Path::new(agent_bin()));
    let _agent = home.start(&[]);
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let (code, text) = server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    server.wait_status(&id, "connected", &next, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_moves_only_to_the_highest_stable_release_and_publishing_is_idempotent() {
    let work = tempfile::tempdir().unwrap();
    let rel = work.path().join("releases");
    let latest = || -> String {
        let m: Value = serde_json::from_slice(&std::fs::read(rel.join("latest.json")).unwrap()).unwrap();
        m["version"].as_str().unwrap().to_string()
    };
    for (v, expect) in [("1.1.0", "1.1.0"), ("1.2.0", "1.2.0"), ("1.3.0-rc.1", "1.2.0"), ("1.1.5", "1.2.0")] {
        let out = publish(&rel, v, None, &[script(work.path(), &format!("a{v}"))]);
        assert_eq!(latest(), expect, "after publishing {v}: {out}");
    }
    let all: Value = serde_json::from_slice(&std::fs::read(rel.join("all.json")).unwrap()).unwrap();
    assert_eq!(all, json!({"versions": ["1.3.0-rc.1", "1.2.0", "1.1.5", "1.1.0"]}));

    let again = publish(&rel, "1.2.0", None, &[script(work.path(), "a1.2.0")]);
    assert!(again.contains("unchanged"), "{again}");
    let (ok, out) = release(
        &["publish", "--dir", rel.to_str().unwrap(), "--version", "1.2.0", &script(work.path(), "different")],
        &[],
    );
    assert!(!ok && out.contains("already has agent-1.2.0-") && out.contains("with different bytes"), "{out}");
    let claimed_wrong = format!("{}:linux-riscv64", agent_bin());
    let (ok, out) = release(&["publish", "--dir", rel.to_str().unwrap(), "--version", "2.0.0", &claimed_wrong], &[]);
    assert!(!ok && out.contains(&format!("is a {} executable, not linux-riscv64", platform())), "{out}");
    let plain = work.path().join("notes.txt");
    std::fs::write(&plain, "hello").unwrap();
    let (ok, out) =
        release(&["publish", "--dir", rel.to_str().unwrap(), "--version", "2.0.0", plain.to_str().unwrap()], &[]);
    assert!(!ok && out.contains("cannot tell the platform"), "{out}");
    assert!(!rel.join("v2.0.0.json").exists(), "a refused publish writes no manifest");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_hosts_a_release_directory_with_ranges() {
    let work = tempfile::tempdir().unwrap();
    let rel = work.path().join("releases");
    publish(&rel, "1.0.0", None, &[script(work.path(), "hosted")]);
    let server = Server::start(&["--releases", rel.to_str().unwrap()]).await;
    let resp = server.http.get(server.url("releases/latest.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().contains_key("last-modified"));
    let url = server.url(&format!("releases/download/v1.0.0/agent-1.0.0-{}", platform()));
    let resp = server.http.get(&url).header("range", "bytes=10-").send().await.unwrap();
    assert_eq!(resp.status(), 206);
    let body = std::fs::read(asset(&rel, "1.0.0")).unwrap();
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        format!("bytes 10-{}/{}", body.len() - 1, body.len())
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[10..]);
    let resp = server.http.get(server.url("releases/v9.9.9.json")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}
