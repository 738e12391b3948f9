//! The cluster a fault run works on: one PostgreSQL and one Redis on this host, three
//! `agent-server` nodes each in a network namespace of its own, and nginx in front. A node
//! reaches its agents (through nginx) over one veth pair, PostgreSQL over a second and Redis over
//! a third, so a test cuts a node off the store, the bus or both while its agents' sockets stay up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::bins::server_bin;
use crate::netns::{Link, Netns};
use crate::process::Proc;
use crate::server::toml_value;
use crate::services::{Nginx, Postgres, Redis};

/// The port every node listens on, inside its namespace.
const PORT: u16 = 8103;

pub struct NodeSlot {
    pub ns: Netns,
    pub postgres_link: Link,
    pub redis_link: Link,
    pub addr: SocketAddr,
    /// The process, when it runs.
    pub proc: Mutex<Option<Proc>>,
    /// Its id on the bus (new at every start).
    pub id: Mutex<String>,
    /// The script that runs `agent-server` inside the namespace.
    script: PathBuf,
    args: Vec<String>,
    /// Its logs, one a start: `node<i>-<start>.log`.
    log_prefix: PathBuf,
    starts: std::sync::atomic::AtomicU32,
}

pub struct FaultRig {
    pub dir: tempfile::TempDir,
    pub postgres: Mutex<Postgres>,
    pub redis: Mutex<Redis>,
    /// The database, as this host reaches it.
    pub db: String,
    pub nodes: Vec<NodeSlot>,
    pub nginx: Nginx,
    pub admin: (String, String),
}

/// The node id a server's `/healthcheck` gives, once it answers.
async fn node_id(addr: SocketAddr) -> Option<String> {
    let v: Value = reqwest::get(format!("http://{addr}/healthcheck")).await.ok()?.json().await.ok()?;
    v["node"].as_str().map(str::to_string)
}

impl FaultRig {
    /// `n` nodes with `flags`, or None when this process may not make network namespaces.
    pub async fn start(n: usize, flags: &[&str]) -> Option<FaultRig> {
        let dir = tempfile::tempdir().unwrap();
        let postgres = Postgres::start_open();
        let redis = Redis::start_open();
        let db = postgres.create_db().await;
        let db_name = db.rsplit('/').next().unwrap().to_string();
        let out = Command::new(server_bin()).args(["client", "add", "--admin", "--database", &db]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let admin = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
        let mut nodes = Vec::new();
        for i in 0..n {
            let ns = Netns::create()?;
            let (postgres_link, redis_link) = (ns.link(), ns.link());
            let script = dir.path().join(format!("node{i}.sh"));
            let body = format!("#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n", ns.name, server_bin());
            std::fs::write(&script, body).unwrap();
            std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            args.extend([
                "--database".into(),
                format!("postgres://postgres@{}:{}/{db_name}", postgres_link.outside, postgres.port),
                "--redis".into(),
                format!("redis://{}:{}/", redis_link.outside, redis.port),
                // nginx reaches each node from the namespace's outside address.
                "--trusted-proxy".into(),
                "10.0.0.0/8".into(),
            ]);
            let addr: SocketAddr = format!("{}:{PORT}", ns.inside).parse().unwrap();
            let log_prefix = dir.path().join(format!("node{i}"));
            nodes.push(NodeSlot {
                ns,
                postgres_link,
                redis_link,
                addr,
                proc: Mutex::new(None),
                id: Mutex::new(String::new()),
                script,
                args,
                log_prefix,
                starts: Default::default(),
            });
        }
        for node in &nodes {
            start_node(node, &dir).await;
        }
        let nginx = Nginx::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
        Some(FaultRig { dir, postgres: Mutex::new(postgres), redis: Mutex::new(redis), db, nodes, nginx, admin })
    }

    /// SIGKILL to node `i`, as a crash would.
    pub fn kill(&self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.lock().unwrap().take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Starts node `i` again (after [`Self::kill`]) on the same address.
    pub async fn restart(&self, i: usize) {
        start_node(&self.nodes[i], &self.dir).await;
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].proc.lock().unwrap().as_mut().is_some_and(|p| p.child.try_wait().unwrap().is_none())
    }

    /// Node `i`'s logs, of every start in turn.
    pub fn log(&self, i: usize) -> String {
        let node = &self.nodes[i];
        (0..node.starts.load(std::sync::atomic::Ordering::Relaxed))
            .map(|k| std::fs::read_to_string(start_log(node, k)).unwrap_or_default())
            .collect()
    }

    /// The index of the node whose bus id is `id`, among those running.
    pub fn node_of(&self, id: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| *self.nodes[i].id.lock().unwrap() == id && self.alive(i))
    }

    pub fn base(&self, i: usize) -> String {
        format!("http://{}/", self.nodes[i].addr)
    }
}

fn start_log(node: &NodeSlot, k: u32) -> PathBuf {
    let mut name = node.log_prefix.clone().into_os_string();
    name.push(format!("-{k}.log"));
    name.into()
}

/// Starts the node as its service manager would: a start that fails (the node exits when it
/// cannot reach its store or bus at start) is tried again 2 s later (systemd's `RestartSec`), for
/// two minutes at most.
async fn start_node(node: &NodeSlot, dir: &tempfile::TempDir) {
    let mut last = String::new();
    for _ in 0..60 {
        match try_start(node, dir) {
            Ok(proc) => {
                *node.proc.lock().unwrap() = Some(proc);
                let what = format!("node at {} answering /healthcheck", node.addr);
                let id = crate::process::eventually(Duration::from_secs(30), &what, || node_id(node.addr)).await;
                *node.id.lock().unwrap() = id;
                return;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!("node at {} did not start in two minutes; the last attempt:\n{last}", node.addr);
}

fn try_start(node: &NodeSlot, dir: &tempfile::TempDir) -> Result<Proc, String> {
    let k = node.starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = start_log(node, k);
    let mut child = std::process::Command::new(&node.script)
        .args(["--listen", &node.addr.to_string(), "--data"])
        .arg(dir.path().join("unused"))
        .args(&node.args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    if !line.starts_with("listening on ") {
        let _ = child.wait();
        return Err(std::fs::read_to_string(&log).unwrap_or_default());
    }
    Ok(Proc { child, log })
}
