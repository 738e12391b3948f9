//! Several real `agent-server` nodes sharing one PostgreSQL database (a fresh one on the shared
//! server, or on a server of the cluster's own that a test may stop) and one Redis, behind nginx,
//! and a small admin client for any of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::bins::server_bin;
use crate::process::{eventually, Proc};
use crate::server::{spawn_server, toml_value, TokenCache};
use crate::services::{shared_db, Nginx, Postgres, Redis};

/// The REST API of one node (or of the load balancer), as an admin.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub admin: (String, String),
    /// The token [`Api::get`] uses, reused while it is young.
    pub cached: TokenCache,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn token(&self) -> String {
        let (id, secret) = &self.admin;
        let form = [("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)];
        let v: Value = self.http.post(self.url("oauth2/token")).form(&form).send().await.unwrap().json().await.unwrap();
        v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_string()
    }

    /// GET with an admin token: (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (id, secret) = &self.admin;
        let token = self.cached.get(&self.http, &self.base, id, secret).await;
        self.get_with(path, &token).await
    }

    pub async fn get_with(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `$status` of an agent as (status, version).
    pub async fn status(&self, agent_id: &str) -> (String, String) {
        let (code, v) = self.get(&format!("fhir/R4/Agent/{agent_id}/$status")).await;
        assert_eq!(code, 200, "{v}");
        status_of(&v)
    }

    /// Waits until the agent's `$status` is `status` at `version`. A 503 (the store coming back:
    /// "try again") is waited out like any other answer not yet wanted; anything else fails.
    pub async fn wait_status(&self, agent_id: &str, status: &str, version: &str, limit: Duration) {
        let want = (status.to_string(), version.to_string());
        eventually(limit, &format!("agent {agent_id} {status} at {version} on {}", self.base), || {
            let want = want.clone();
            async move {
                let (code, v) = self.get(&format!("fhir/R4/Agent/{agent_id}/$status")).await;
                assert!(code == 200 || code == 503, "{code}: {v}");
                (code == 200 && status_of(&v) == want).then_some(())
            }
        })
        .await
    }

    /// `$upgrade` of one agent: (HTTP status, OperationOutcome text).
    pub async fn upgrade(&self, agent_id: &str, query: &str) -> (u16, String) {
        let (code, v) = self.get(&format!("fhir/R4/Agent/{agent_id}/$upgrade?{query}")).await;
        (code, v["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string())
    }
}

/// (status, version) of a `$status` Parameters resource.
pub fn status_of(v: &Value) -> (String, String) {
    let p = |name: &str| {
        v["parameter"].as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| {
            p.get("valueCode").or(p.get("valueString")).and_then(Value::as_str).unwrap_or_default().to_string()
        })
    };
    (p("status").unwrap(), p("version").unwrap())
}

pub struct Node {
    pub addr: SocketAddr,
    pub proc: Option<Proc>,
    /// The node's id on the bus, as its `/healthcheck` says.
    pub id: String,
}

pub struct Cluster {
    pub db: String,
    /// The cluster's own PostgreSQL server, when it has one (else a database on the shared one).
    pub postgres: Option<Postgres>,
    pub redis: Redis,
    pub nodes: Vec<Node>,
    pub nginx: Nginx,
    pub admin: (String, String),
    extra: Vec<String>,
    /// Last: removed after the processes whose logs and data it holds.
    pub dir: tempfile::TempDir,
}

async fn node_id(addr: SocketAddr) -> String {
    let v: Value = reqwest::get(format!("http://{addr}/healthcheck")).await.unwrap().json().await.unwrap();
    v["node"].as_str().unwrap().to_string()
}

impl Cluster {
    /// `n` nodes (with `extra` options) behind nginx, and an admin client.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on(n, extra, None).await
    }

    /// The same, on a PostgreSQL server of its own, which the test may stop and start.
    pub async fn start_own_postgres(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on(n, extra, Some(Postgres::start())).await
    }

    async fn start_on(n: usize, extra: &[&str], postgres: Option<Postgres>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let db = match &postgres {
            Some(pg) => pg.create_db().await,
            None => shared_db().await,
        };
        let redis = Redis::start();
        let out = Command::new(server_bin()).args(["client", "add", "--admin", "--database", &db]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let admin = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--database".into(), db.clone(), "--redis".into(), redis.url()]);
        // nginx, on this host, is the proxy in front: its forwarded headers are believed, and its
        // connections (every agent's) are not capped as one address's.
        extra.extend(["--trusted-proxy".into(), "127.0.0.1".into()]);
        let mut nodes = Vec::new();
        for i in 0..n {
            let log = dir.path().join(format!("node{i}.log"));
            let (proc, addr) = spawn_server(&dir.path().join("unused"), "127.0.0.1:0", &extra, log);
            nodes.push(Node { addr, proc: Some(proc), id: node_id(addr).await });
        }
        let nginx = Nginx::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
        Cluster { dir, db, postgres, redis, nodes, nginx, admin, extra }
    }

    pub fn api(&self, i: usize) -> Api {
        let base = format!("http://{}/", self.nodes[i].addr);
        Api { base, http: reqwest::Client::new(), admin: self.admin.clone(), cached: TokenCache::default() }
    }

    /// The API through nginx.
    pub fn lb(&self) -> Api {
        Api {
            base: self.nginx.url(),
            http: reqwest::Client::new(),
            admin: self.admin.clone(),
            cached: TokenCache::default(),
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{i}.log"))).unwrap_or_default()
    }

    /// Creates an agent whose configuration points at nginx; its id and configuration.
    pub fn add_agent(&self, name: &str) -> (String, String) {
        let out = Command::new(server_bin())
            .args(["agent", "add", "--name", name, "--database", &self.db, "--base-url", &self.nginx.url()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        (toml_value(&text, "agent_id"), text)
    }

    /// SIGKILL to node `i`, as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Kills node `i` and starts it again on the same port.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let log = self.dir.path().join(format!("node{i}.log"));
        let listen = self.nodes[i].addr.to_string();
        let (proc, addr) = spawn_server(&self.dir.path().join("unused"), &listen, &self.extra, log);
        self.nodes[i] = Node { addr, proc: Some(proc), id: node_id(addr).await };
    }

    /// Which node holds the agent's socket, by the record in Redis.
    pub async fn holder(&self, agent_id: &str) -> Option<usize> {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let value: Option<String> =
            redis::cmd("GET").arg(format!("ea:presence:{agent_id}")).query_async(&mut conn).await.unwrap();
        let node = value?.split(' ').next()?.to_string();
        self.nodes.iter().position(|n| n.proc.is_some() && n.id == node)
    }

    pub async fn wait_holder(&self, agent_id: &str) -> usize {
        eventually(Duration::from_secs(30), &format!("a node holding {agent_id}"), || self.holder(agent_id)).await
    }

    /// New connections through nginx go to node `i` only, once nginx says so: several
    /// `/healthcheck`s in a row through it answer from that node.
    pub async fn route_only(&self, i: usize) {
        self.route_to(&[i]).await
    }

    /// New connections through nginx go to these nodes only, once nginx says so: several
    /// `/healthcheck`s in a row through it answer from one of them.
    pub async fn route_to(&self, nodes: &[usize]) {
        self.nginx.route_only(&nodes.iter().map(|&i| self.nodes[i].addr).collect::<Vec<_>>());
        let url = format!("{}healthcheck", self.nginx.url());
        let want: Vec<String> = nodes.iter().map(|&i| self.nodes[i].id.clone()).collect();
        eventually(Duration::from_secs(10), &format!("nginx routing to nodes {nodes:?} only"), || {
            let (url, want) = (url.clone(), want.clone());
            async move {
                for _ in 0..4 {
                    let v: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
                    want.iter().any(|w| v["node"] == w.as_str()).then_some(())?;
                }
                Some(())
            }
        })
        .await;
    }

    /// The node that drives rollouts, by the lease in the database.
    pub async fn rollout_driver(&self) -> Option<usize> {
        let (db, conn) = tokio_postgres::connect(&self.db, tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(conn);
        let holder = rollout_lease_holder(&db).await?;
        self.nodes.iter().position(|n| n.proc.is_some() && n.id == holder)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("unused")
    }
}

/// The node id holding the rollout lease now, as the store says; None when nobody holds it or
/// the store did not answer within 2 s.
pub async fn rollout_lease_holder(db: &tokio_postgres::Client) -> Option<String> {
    let q = db.query("SELECT holder FROM leases WHERE name = 'rollouts' AND expires_at > now()", &[]);
    let rows = tokio::time::timeout(Duration::from_secs(2), q).await.ok()?.ok()?;
    Some(rows.first()?.get(0))
}
