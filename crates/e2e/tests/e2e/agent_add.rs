//! `agent-server agent add`: the configuration it writes holds the agent's secret, so `--out`
//! writes it owner-only and never overwrites without `--force`, and stdout redirected to a file
//! others can read gets a warning; it trusts the release key the server knows (`--releases`,
//! `--release-key`), and an agent started from it upgrades from a signed release.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use edge_agent_base::build_info::SOURCE_VERSION;

use edge_agent_e2e::rig::LIMIT;
use edge_agent_e2e::{agent_bin, next_build, next_version, server_bin, toml_value, AgentHome, Server, FAST};

/// `agent-server agent add --name <name> --data <data> <args>`, stdout to `stdout`.
fn agent_add(data: &Path, name: &str, args: &[&str], stdout: Stdio) -> Output {
    let mut cmd = Command::new(server_bin());
    cmd.args(["agent", "add", "--name", name, "--data"]).arg(data).args(args).stdout(stdout);
    cmd.stderr(Stdio::piped()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn out_writes_an_owner_only_file_and_never_overwrites_one_without_force() {
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    let path = file.to_str().unwrap();

    let out = agent_add(&server.data(), "out-1", &["--out", path], Stdio::piped());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout with --out");
    assert_eq!(mode(&file), 0o600);
    let first = std::fs::read_to_string(&file).unwrap();
    assert!(first.contains("client_secret = \""), "{first}");
    // No key known: the configuration refuses upgrades, and stderr says what to add.
    assert!(!first.lines().any(|l| l.starts_with("trusted_keys")), "{first}");
    assert!(stderr(&out).contains("warning: no release public key is known"), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --release-key FILE"), "{}", stderr(&out));

    let out = agent_add(&server.data(), "out-2", &["--out", path], Stdio::piped());
    assert!(!out.status.success());
    let expected = format!("agent-server: {path} exists: refusing to overwrite it");
    assert!(stderr(&out).starts_with(&expected), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --force to replace it"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first, "the existing file is untouched");
    let (_, found) = server.get("fhir/R4/Agent?name=out-2").await;
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 0, "a refused --out creates no agent");

    // With --force it is replaced, and owner-only even if it was not.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent_add(&server.data(), "out-3", &["--out", path, "--force"], Stdio::piped());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&file), 0o600);
    let third = std::fs::read_to_string(&file).unwrap();
    assert_ne!(toml_value(&third, "agent_id"), toml_value(&first, "agent_id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_redirected_to_a_file_others_can_read_gets_a_warning() {
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let warning = "stdout is a file that others can read (mode 0644)";
    let open = dir.path().join("open.toml");
    std::fs::File::create(&open).unwrap().set_permissions(std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent_add(&server.data(), "stdout-1", &[], std::fs::File::create(&open).unwrap().into());
    assert!(out.status.success());
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&open).unwrap().contains("client_secret"), "the config is still written");

    let closed = dir.path().join("closed.toml");
    let file = std::fs::File::create(&closed).unwrap();
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = agent_add(&server.data(), "stdout-2", &[], file.into());
    assert!(out.status.success() && !stderr(&out).contains("others can read"), "{}", stderr(&out));
    let out = agent_add(&server.data(), "stdout-3", &[], Stdio::piped());
    assert!(out.status.success() && !stderr(&out).contains("others can read"), "a pipe: {}", stderr(&out));
}

/// `agent release …`, which must succeed.
fn release(args: &[&str]) {
    let out = Command::new(agent_bin()).arg("release").args(args).output().unwrap();
    assert!(out.status.success(), "agent release {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_release_key_the_server_knows_is_written_and_the_agent_upgrades_with_it() {
    let work = tempfile::tempdir().unwrap();
    let (rel, keys) = (work.path().join("releases"), work.path().join("keys"));
    let (rel_s, keys_s) = (rel.to_str().unwrap(), keys.to_str().unwrap());
    release(&["keygen", "--no-password", "--out", keys_s]);
    let key = std::fs::read_to_string(keys.join("minisign.pub")).unwrap().lines().last().unwrap().to_string();
    let secret = keys.join("minisign.key");
    let next = next_version();
    for (v, bin) in [(SOURCE_VERSION, Path::new(agent_bin())), (next.as_str(), next_build())] {
        let args = ["publish", "--level", "3", "--dir", rel_s, "--version", v, "--key", secret.to_str().unwrap()];
        release(&[&args[..], &[bin.to_str().unwrap()]].concat());
    }
    let server = Server::start(&["--heartbeat-interval", "0.3", "--releases", rel_s]).await;
    let base = server.url("/");
    let trusted = format!("trusted_keys = [\"{key}\"]\n");

    // From --releases: the key `publish` recorded there, and the server's own release URL.
    let out = agent_add(&server.data(), "from-releases", &["--base-url", &base, "--releases", rel_s], Stdio::piped());
    assert!(out.status.success() && out.stderr.is_empty(), "{}", stderr(&out));
    let cfg = String::from_utf8(out.stdout).unwrap();
    assert!(cfg.contains(&trusted), "{cfg}");
    assert_eq!(toml_value(&cfg, "releases_url"), format!("{base}releases/"));
    // From --release-key, as the .pub file or as the key itself.
    let pub_file = keys.join("minisign.pub");
    for given in [pub_file.to_str().unwrap(), key.as_str()] {
        let out = agent_add(&server.data(), "from-flag", &["--release-key", given], Stdio::piped());
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&trusted), "--release-key {given}");
    }
    let out = agent_add(&server.data(), "bad-key", &["--release-key", "not-a-key"], Stdio::piped());
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .starts_with("agent-server: --release-key \"not-a-key\": neither a minisign public key file nor a key"),
        "{}",
        stderr(&out)
    );

    // An agent run from exactly that configuration upgrades from the signed release.
    let id = toml_value(&cfg, "agent_id");
    let home = AgentHome::new(&format!("{cfg}{FAST}health_window = 10\n"));
    home.install(Path::new(agent_bin()));
    let _agent = home.start(&[]);
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let (code, text) = server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    server.wait_status(&id, "connected", &next, LIMIT).await;
}
