//! The server's PostgreSQL and Redis over TLS (rustls on ring), against a real PostgreSQL and a
//! real Redis configured for TLS with a CA made in the test: nodes working over `verify-full` and
//! `rediss://`, and each `sslmode` refusing or accepting certificates as libpq documents; a Redis
//! whose certificate a wrong CA signed is refused with an error naming the cause.

use std::process::Command;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use edge_agent_e2e::services::{Postgres, Redis};
use edge_agent_e2e::tls::TestCa;
use edge_agent_e2e::{agent_bin, server_bin, spawn_server, toml_value, AgentHome, FAST};

const LIMIT: Duration = Duration::from_secs(30);
/// What the server calls itself on PostgreSQL (`application_name`).
const APP: &str = "edge-agent-server";

/// `agent-server client add --admin --database <db>` (which connects and migrates): (ok, stderr).
fn probe(db: &str) -> (bool, String) {
    let out = Command::new(server_bin()).args(["client", "add", "--admin", "--database", db]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn with(db: &str, query: &str) -> String {
    format!("{db}?{query}")
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_on_postgres_verify_full_and_redis_over_tls_serve_agents() {
    let ca = TestCa::new();
    let cert = ca.server_cert("services", "DNS:localhost,IP:127.0.0.1");
    let pg = Postgres::start_tls(&cert);
    let redis = Redis::start_tls(&cert);
    let db = with(&pg.create_db().await, &format!("sslmode=verify-full&sslrootcert={}", ca.ca().display()));
    let redis_url = format!("{}0?cacert={}", redis.url(), ca.ca().display());
    assert!(redis_url.starts_with("rediss://127.0.0.1:"), "{redis_url}");
    let (ok, said) = probe(&db);
    assert!(ok, "{said}");

    let work = tempfile::tempdir().unwrap();
    let out = Command::new(server_bin()).args(["client", "add", "--admin", "--database", &db]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (admin, secret) = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
    let args: Vec<String> = ["--heartbeat-interval", "0.3", "--database", &db, "--redis", &redis_url]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (_a, addr_a) = spawn_server(&work.path().join("a"), "127.0.0.1:0", &args, work.path().join("a.log"));
    let (_b, addr_b) = spawn_server(&work.path().join("b"), "127.0.0.1:0", &args, work.path().join("b.log"));
    let (ssl, plain) = pg.connections_of(APP).await;
    assert!(ssl >= 2 && plain == 0, "every connection of the nodes is TLS: {ssl} over TLS, {plain} plain");

    // An agent on node A; its status read through node B, which learns it through Redis.
    let base_a = format!("http://{addr_a}/");
    let out = Command::new(server_bin())
        .args(["agent", "add", "--name", "tls", "--database", &db, "--base-url", &base_a])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cfg = String::from_utf8(out.stdout).unwrap();
    let id = toml_value(&cfg, "agent_id");
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    home.install(std::path::Path::new(agent_bin()));
    let _agent = home.start(&[]);
    let http = reqwest::Client::new();
    let token = edge_agent_e2e::server::token(&http, &format!("http://{addr_b}/"), &admin, &secret).await;
    let status = || async {
        let url = format!("http://{addr_b}/fhir/R4/Agent/{id}/$status");
        let v: Value = http.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let p = |n: &str| v["parameter"].as_array()?.iter().find(|p| p["name"] == n).cloned();
        (p("status").map(|p| p["valueCode"].clone()), p("version").map(|p| p["valueString"].clone()))
    };
    edge_agent_e2e::eventually(LIMIT, "the agent connected, as node B sees it", || async {
        let (s, v) = status().await;
        (s == Some("connected".into()) && v == Some(SOURCE_VERSION.into())).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sslmode_checks_the_certificate_as_libpq_documents() {
    let (ca, other_ca) = (TestCa::new(), TestCa::new());
    // A certificate for another host name than the one connected to (127.0.0.1).
    let pg = Postgres::start_tls(&ca.server_cert("elsewhere", "DNS:db.example"));
    let db = pg.create_db().await;
    let (right, wrong) = (ca.ca().display().to_string(), other_ca.ca().display().to_string());
    let refused = [
        (format!("sslmode=verify-full&sslrootcert={right}"), "the server's certificate does not name the host"),
        (format!("sslmode=verify-ca&sslrootcert={wrong}"), "UnknownIssuer"),
        (format!("sslmode=verify-full&sslrootcert={wrong}"), "UnknownIssuer"),
        // As libpq: require with a root certificate checks the chain as verify-ca does.
        (format!("sslmode=require&sslrootcert={wrong}"), "UnknownIssuer"),
        ("sslmode=allow".to_string(), "sslmode=allow is not supported"),
        ("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".to_string(), "cannot read CA file /nonexistent/ca.pem"),
    ];
    for (query, why) in &refused {
        let (ok, said) = probe(&with(&db, query));
        assert!(!ok && said.contains(why), "{query}: {said}");
        assert!(said.starts_with("agent-server: "), "one line: {said}");
    }
    // verify-ca checks the chain, not the name; require and prefer encrypt without checking.
    for query in [format!("sslmode=verify-ca&sslrootcert={right}"), "sslmode=require".into(), "sslmode=prefer".into()] {
        let (ok, said) = probe(&with(&db, &query));
        assert!(ok, "{query}: {said}");
    }
    let (ok, said) = probe(&with(&db, "sslmode=disable"));
    assert!(ok, "disable: {said}");

    // A server without TLS: verify-full refuses it, prefer falls back to plain TCP.
    let plain = Postgres::start();
    let db = plain.create_db().await;
    let (ok, said) = probe(&with(&db, &format!("sslmode=verify-full&sslrootcert={right}")));
    assert!(!ok && said.contains("server does not support TLS"), "{said}");
    let (ok, said) = probe(&db);
    assert!(ok, "prefer, the default: {said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_with_a_certificate_from_another_ca_is_refused_with_its_cause() {
    let (ca, other_ca) = (TestCa::new(), TestCa::new());
    let redis = Redis::start_tls(&ca.server_cert("redis", "DNS:localhost,IP:127.0.0.1"));
    let db = edge_agent_e2e::services::shared_db().await;
    // A node that cannot reach Redis exits; one that could would serve, and is stopped.
    let start = |redis_url: String| {
        let mut node = Command::new(server_bin())
            .args(["--listen", "127.0.0.1:0", "--database", &db, "--redis", &redis_url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let begun = std::time::Instant::now();
        while node.try_wait().unwrap().is_none() && begun.elapsed() < LIMIT {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = node.kill();
        let out = node.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let url = format!("{}0?cacert={}", redis.url(), other_ca.ca().display());
    let (ok, said) = start(url.clone());
    assert!(!ok, "{said}");
    let expected = format!("cannot connect to Redis at {url}: ");
    assert!(said.contains(&expected), "{said}");
    assert!(
        said.contains(
            "the server's certificate is not signed by a trusted CA (give the CA that signed it as ?cacert=FILE)"
        ),
        "{said}"
    );
    // Without cacert the system's roots do not know the test CA either.
    let (ok, said) = start(format!("{}0", redis.url()));
    assert!(!ok && said.contains("not signed by a trusted CA"), "{said}");
    // Plain redis:// to a TLS-only port.
    let (ok, said) = start(format!("redis://127.0.0.1:{}/0", redis.port));
    assert!(!ok && said.contains("cannot connect to Redis at redis://127.0.0.1:"), "{said}");
}
