//! `agent release keygen` and `publish` without a terminal (a script, CI, ssh without a tty): a
//! clear error naming the ways out, never a prompt or a hang; the password file and the explicitly
//! unencrypted key work.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_agent_e2e::agent_bin;

/// Runs `agent release …` with stdin and stdout not terminals and no password in the
/// environment; (exit code, stdout, stderr). Killed (and failed) if it waits for input.
fn release_no_tty(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(agent_bin())
        .arg("release")
        .args(args)
        .env_remove("EDGE_AGENT_KEY_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("agent release {args:?} hung without a terminal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_without_a_terminal_names_the_ways_out_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("keys");
    let (code, stdout, stderr) = release_no_tty(&["keygen", "--out", s(&keys)]);
    assert_ne!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    for way_out in ["EDGE_AGENT_KEY_PASSWORD", "--password-file", "--no-password", "unencrypted"] {
        assert!(stderr.contains(way_out), "{way_out} not named in: {stderr}");
    }
    assert!(!stdout.contains("enter a password") && !stderr.contains("enter a password"), "{stdout}{stderr}");
    assert!(!keys.join("minisign.key").exists() && !keys.join("minisign.pub").exists());
}

#[test]
fn keygen_with_a_password_file_encrypts_and_publish_reads_it_without_a_terminal() {
    let work = tempfile::tempdir().unwrap();
    let (keys, pass) = (work.path().join("keys"), work.path().join("pass"));
    std::fs::write(&pass, "correct horse\n").unwrap();
    let (code, stdout, stderr) = release_no_tty(&["keygen", "--out", s(&keys), "--password-file", s(&pass)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let secret = std::fs::read_to_string(keys.join("minisign.key")).unwrap();
    // minisign's encrypted secret keys use scrypt ("Sc"); unencrypted ones have no KDF.
    assert!(secret.lines().nth(1).unwrap().starts_with("RWRTY0Iy"), "not encrypted: {secret}");

    let (dir, bin) = (work.path().join("releases"), work.path().join("bin"));
    std::fs::write(&bin, "#!/bin/sh\necho hi\n").unwrap();
    let artifact = format!("{}:{}", bin.display(), edge_agent_e2e::releases::platform());
    let secret_key = keys.join("minisign.key");
    let base = ["publish", "--dir", s(&dir), "--version", "1.0.0", "--level", "1", "--key", s(&secret_key)];
    let (code, _, stderr) = release_no_tty(&[&base[..], &[artifact.as_str()]].concat());
    assert_ne!(code, 0);
    assert!(stderr.contains("is encrypted") && stderr.contains("--password-file"), "{stderr}");
    assert!(!dir.join("latest.json").exists(), "a refused publish wrote a release");

    let (code, stdout, stderr) =
        release_no_tty(&[&base[..], &["--password-file", s(&pass), artifact.as_str()]].concat());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("(signed)"), "{stdout}");
}

#[test]
fn keygen_no_password_writes_an_unencrypted_key_without_a_terminal() {
    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("keys");
    let (code, stdout, stderr) = release_no_tty(&["keygen", "--no-password", "--out", s(&keys)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let secret = std::fs::read_to_string(keys.join("minisign.key")).unwrap();
    assert!(secret.lines().nth(1).unwrap().starts_with("RWQAAEIy"), "not unencrypted: {secret}");
}
