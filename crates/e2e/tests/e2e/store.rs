//! The server's store options on its command line: where the data lives, before or after a
//! subcommand or from the environment, and private files. (The store itself is tested in the
//! server crate, on both backends.)

use std::os::unix::fs::PermissionsExt;

use edge_agent_e2e::server_bin;

#[test]
fn the_data_options_work_before_or_after_the_subcommand_and_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (before, after, env) = (dir.path().join("before"), dir.path().join("after"), dir.path().join("env"));
    let run = |args: &[&str], envs: &[(&str, &std::path::Path)]| {
        let out = std::process::Command::new(server_bin())
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["--data", before.to_str().unwrap(), "client", "add", "--admin"], &[]);
    run(&["client", "add", "--admin", "--data", after.to_str().unwrap()], &[]);
    run(&["agent", "add", "--name", "x"], &[("AGENT_SERVER_DATA", &env)]);
    for data in [&before, &after, &env] {
        let db = data.join("edge-agent-server.db");
        assert!(db.exists(), "{} was written", db.display());
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(data), 0o700, "the data directory is private");
        assert_eq!(mode(&db), 0o600, "the database file is private");
    }
    let out = std::process::Command::new(server_bin()).args(["--redis", "redis://127.0.0.1:1/"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redis needs --database"));
}
