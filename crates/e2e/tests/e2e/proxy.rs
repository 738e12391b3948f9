//! The agent behind an HTTP proxy: it runs in a network namespace whose only way out is a real
//! tinyproxy (the server listens on this side's loopback, which the namespace cannot reach), so
//! whatever works, worked through the proxy; the proxy's log shows each request. Connect,
//! heartbeats, a signed upgrade to `All OK` and reconnects after a server restart through it;
//! the environment's variables and `NO_PROXY`; Basic authentication, right and wrong; a proxy
//! that refuses `CONNECT`; a proxy that goes away and comes back; an `https://` proxy.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use edge_agent_e2e::netns::Netns;
use edge_agent_e2e::proxy::{Options, TinyProxy};
use edge_agent_e2e::releases::Signed;
use edge_agent_e2e::tls::TlsFront;
use edge_agent_e2e::{agent_bin, eventually, next_build, next_version, AgentHome, Proc, Server, FAST};

const LIMIT: Duration = Duration::from_secs(30);
const PROXY_PORT: u16 = 3128;

/// A namespace, a proxy on its outside, a server with signed releases of this build and the
/// next one; None (skipped) where namespaces or tinyproxy are not available outside CI.
struct Behind {
    server: Server,
    signed: Signed,
    proxy: TinyProxy,
    ns: Netns,
}

impl Behind {
    async fn start(options: Options) -> Option<Behind> {
        let ns = Netns::create()?;
        let proxy = TinyProxy::start(&ns.outside, PROXY_PORT, options).await?;
        let signed = Signed::new();
        let dir = signed.dir();
        let server = Server::start(&["--heartbeat-interval", "0.3", "--releases", dir.to_str().unwrap()]).await;
        Some(Behind { server, signed, proxy, ns })
    }

    /// An agent added to the server, with `extra` configuration, installed from this build.
    fn home(&self, name: &str, extra: &str) -> (String, AgentHome) {
        let (id, cfg) = self.server.add_agent(name);
        let releases = self.signed.agent_config(&self.server.url("releases/"));
        let home = AgentHome::new(&format!("{cfg}{FAST}{releases}health_window = 20\n{extra}"));
        home.install(Path::new(agent_bin()));
        (id, home)
    }

    /// `agent run` inside the namespace, with `envs`.
    fn run_inside(&self, home: &AgentHome, envs: &[(&str, &str)]) -> Proc {
        let mut cmd = self.ns.command(home.bin());
        cmd.envs(envs.iter().copied());
        home.spawn_run(cmd, home.config())
    }

    /// `agent <args> --config <config>` inside the namespace: (exit code, stdout, stderr).
    fn host_command(&self, home: &AgentHome, config: &Path, args: &[&str]) -> (i32, String, String) {
        let out = self.ns.command(home.bin()).args(args).arg("--config").arg(config).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// The server's address as the proxy's log writes the targets of requests.
    fn server_authority(&self) -> String {
        self.server.addr.to_string()
    }

    fn proxy_line(&self) -> String {
        format!("proxy_url = \"{}\"\n", self.proxy.url())
    }
}

/// The agent's statistics, through the server.
async fn stats(server: &Server, id: &str) -> Value {
    let (code, body) = server.get(&format!("fhir/R4/Agent/{id}/$stats")).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(body["parameter"][0]["valueString"].as_str().unwrap()).unwrap()
}

/// A configuration file beside `home`'s: its text with `from` replaced by `to` (appended when
/// `from` is empty).
fn config_with(home: &AgentHome, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(home.config()).unwrap();
    let text = if from.is_empty() { format!("{text}{to}") } else { text.replacen(from, to, 1) };
    let path = home.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_proxy_the_agent_connects_heartbeats_upgrades_and_reconnects_through_it() {
    let Some(mut b) = Behind::start(Options::default()).await else { return };
    let next = next_version();
    b.signed.publish(SOURCE_VERSION, &[Path::new(agent_bin())]);
    b.signed.publish(&next, &[next_build()]);
    let (id, home) = b.home("behind-proxy", &b.proxy_line());
    let server = b.server_authority();

    // No direct route: with proxies turned off, even the token request cannot get out.
    let direct = config_with(&home, "direct.toml", &b.proxy_line(), "proxy_url = \"\"\n");
    let (code, _, err) = b.host_command(&home, &direct, &["check-config"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed, direct (proxy_url = \"\" turns proxies off)"), "{err}");

    // check-config reports the route and tries each way out through it.
    let (code, out, err) = b.host_command(&home, &home.config(), &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    let via = format!("via the proxy {} (from proxy_url)", b.proxy.url());
    for what in ["token", "websocket", "releases"] {
        assert!(out.lines().any(|l| l.starts_with(what) && l.contains(&via)), "{what} through the proxy: {out}");
    }
    assert!(out.contains("issued a token") && out.contains("accepted the WebSocket"), "{out}");
    assert!(out.contains("the release source answered 200 OK"), "{out}");

    let _agent = b.run_inside(&home, &[]);
    b.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert!(b.proxy.count(&format!("POST http://{server}/oauth2/token")) >= 1, "{:?}", b.proxy.requests());
    let tunnels = b.proxy.count(&format!("CONNECT {server}"));
    assert!(tunnels >= 1, "{:?}", b.proxy.requests());

    // Heartbeats both ways through the tunnel: connected for ten intervals, on the same socket.
    let s = eventually(LIMIT, "the agent up for 3 s", || async {
        let s = stats(&b.server, &id).await;
        (s["uptimeSeconds"].as_u64() >= Some(3)).then_some(s)
    })
    .await;
    assert_eq!((s["reconnects"].as_u64(), s["connection"].as_str()), (Some(0), Some("connected")), "{s}");
    assert_eq!(b.proxy.count(&format!("CONNECT {server}")), tunnels, "one tunnel for the whole session");
    let (code, out, _) = b.host_command(&home, &home.config(), &["status", "--json"]);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (code, status["daemon"]["proxy"].as_str()),
        (0, Some(format!("{} (from proxy_url)", b.proxy.url()).as_str()))
    );
    let (_, text, _) = b.host_command(&home, &home.config(), &["status"]);
    assert!(text.contains(&format!("route:     {via}")), "{text}");

    // A signed upgrade: manifest, file and signature through the proxy; the new version connects.
    let (code, text) = b.server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    b.server.wait_status(&id, "connected", &next, LIMIT).await;
    let gets: Vec<String> =
        b.proxy.requests().into_iter().filter(|r| r.starts_with(&format!("GET http://{server}/releases/"))).collect();
    assert!(gets.iter().any(|r| r.contains(&format!("/releases/v{next}.json"))), "{gets:?}");
    assert!(gets.iter().any(|r| r.contains(&format!("agent-{next}-linux-"))), "{gets:?}");
    assert!(gets.iter().any(|r| r.ends_with(".minisig")), "the signature too: {gets:?}");
    assert!(home.history().last().is_some_and(|r| r["outcome"] == "ok"), "{:?}", home.history());

    // A reloaded configuration that turns proxies off keeps the running route until a restart:
    // the reconnect after the server's restart below could not happen otherwise.
    let text = std::fs::read_to_string(home.config()).unwrap().replace(&b.proxy_line(), "proxy_url = \"\"\n");
    std::fs::write(home.config(), text).unwrap();
    let (code, body) = b.server.get(&format!("fhir/R4/Agent/{id}/$reload-config")).await;
    assert_eq!(code, 200, "{body}");

    // The server restarts: the agent comes back through the proxy.
    let before = b.proxy.count(&format!("CONNECT {server}"));
    b.server.restart();
    b.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert!(b.proxy.count(&format!("CONNECT {server}")) > before, "{:?}", b.proxy.requests());
    assert!(b.proxy.requests().iter().all(|r| r.contains(&server)), "nothing else went out: {:?}", b.proxy.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_environment_names_the_proxy_and_no_proxy_bypasses_it() {
    let Some(b) = Behind::start(Options::default()).await else { return };
    let server = b.server_authority();
    let proxy_url = b.proxy.url();

    // HTTP_PROXY in the agent's environment, nothing in its configuration: through the proxy.
    let (id, home) = b.home("env-proxy", "");
    let _inside = b.run_inside(&home, &[("HTTP_PROXY", &proxy_url)]);
    b.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert!(b.proxy.count(&format!("CONNECT {server}")) >= 1, "{:?}", b.proxy.requests());

    // With NO_PROXY naming the server, an agent on this side (where the server is reachable)
    // goes direct: the proxy sees none of its requests.
    let seen = b.proxy.requests().len();
    let (id, home) = b.home("no-proxy", "");
    let _outside =
        home.start(&[("HTTP_PROXY", &proxy_url), ("http_proxy", &proxy_url), ("NO_PROXY", "localhost,127.0.0.0/8")]);
    b.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let status = home.daemon_status().unwrap();
    assert_eq!(status["route"], "direct (it matches no_proxy)", "{status}");
    assert_eq!(b.proxy.requests().len(), seen, "{:?}", b.proxy.requests());

    // The key wins over the environment: no_proxy = "" sends it through the proxy again.
    let cfg = config_with(&home, "through.toml", "", "no_proxy = \"\"\n");
    let out = Command::new(home.bin())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("HTTP_PROXY", &proxy_url)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("via the proxy {proxy_url} (from HTTP_PROXY)")), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_credentials_right_and_wrong_and_never_logged() {
    let auth = Some(("agent".to_string(), "pr0xy-s3cret".to_string()));
    let Some(b) = Behind::start(Options { auth, ..Default::default() }).await else { return };
    let url = b.proxy.url();
    let with_creds = url.replace("http://", "http://agent:pr0xy-s3cret@");

    // None given: the proxy asks for them, and the error says where they go.
    let (_, home) = b.home("proxy-auth-none", &b.proxy_line());
    let (code, _, err) = b.host_command(&home, &home.config(), &["check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("the proxy answered 407") && err.contains("proxy_auth"), "{err}");

    // Wrong ones from a proxy_auth file (which wins over the URL's right ones): refused, hidden.
    let file = home.dir.path().join("proxy.auth");
    std::fs::write(&file, "agent:wrong-pw\n").unwrap();
    let lines = format!("proxy_url = \"{with_creds}\"\nproxy_auth = \"{}\"\n", file.display());
    let wrong = config_with(&home, "wrong.toml", &b.proxy_line(), &lines);
    let (code, out, err) = b.host_command(&home, &wrong, &["check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("the proxy answered 401") && err.contains("via the proxy http://agent@"), "{err}");
    assert!(!format!("{out}{err}").contains("wrong-pw") && !err.contains("pr0xy-s3cret"), "{err}");

    // Right ones in the URL: the daemon connects, and its logs never hold the password.
    let (id, home) = b.home("proxy-auth-url", &format!("proxy_url = \"{with_creds}\"\n"));
    let agent = b.run_inside(&home, &[]);
    b.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let (code, out, err) = b.host_command(&home, &home.config(), &["status"]);
    assert!(
        code == 0 && out.contains(&format!("via the proxy http://agent@{}", &url["http://".len()..])),
        "{out}{err}"
    );
    assert!(!agent.log().contains("pr0xy-s3cret") && !out.contains("pr0xy-s3cret"), "{}", agent.log());

    // Right ones from a file, the URL without any.
    std::fs::write(&file, "agent:pr0xy-s3cret\n").unwrap();
    let lines = format!("{}proxy_auth = \"{}\"\n", b.proxy_line(), file.display());
    let right = config_with(&home, "right.toml", &format!("proxy_url = \"{with_creds}\"\n"), &lines);
    let (code, out, err) = b.host_command(&home, &right, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("accepted the WebSocket") && !out.contains("pr0xy-s3cret"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_refuses_connect_is_named_with_its_answer() {
    let Some(b) = Behind::start(Options { connect_ports: Some(vec![443]), ..Default::default() }).await else { return };
    let (_, home) = b.home("proxy-no-connect", &b.proxy_line());
    let (code, out, err) = b.host_command(&home, &home.config(), &["check-config"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty() || !out.contains("accepted the WebSocket"), "{out}");
    let want =
        format!("the proxy {} (from proxy_url) refused a tunnel to {} (403 ", b.proxy.url(), b.server_authority());
    assert!(err.contains(&want) && err.contains("it must allow CONNECT to this host and port"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_reconnects_when_its_proxy_comes_back() {
    let Some(mut b) = Behind::start(Options::default()).await else { return };
    let (id, home) = b.home("proxy-away", &b.proxy_line());
    let _agent = b.run_inside(&home, &[]);
    b.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;

    b.proxy.stop();
    b.server.wait_status(&id, "disconnected", SOURCE_VERSION, LIMIT).await;
    let (code, _, err) = b.host_command(&home, &home.config(), &["check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("via the proxy {} (from proxy_url)", b.proxy.url())), "{err}");

    let tunnels = b.proxy.count("CONNECT");
    b.proxy.start_again().await;
    b.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert!(b.proxy.count("CONNECT") > tunnels, "{:?}", b.proxy.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_proxy_carries_the_token_and_the_websocket_inside_tls() {
    let Some(b) = Behind::start(Options::default()).await else { return };
    let backend = format!("{}:{PROXY_PORT}", b.proxy.addr).parse().unwrap();
    let front = TlsFront::start(backend).await;
    let https_proxy = format!("https://localhost:{}", front.addr.port());
    let extra = format!("proxy_url = \"{https_proxy}\"\nca_file = \"{}\"\n", front.ca().display());
    let (id, home) = b.home("https-proxy", &extra);
    let agent = home.start(&[]);
    b.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let server = b.server_authority();
    assert!(b.proxy.count(&format!("POST http://{server}/oauth2/token")) >= 1, "{:?}", b.proxy.requests());
    assert!(b.proxy.count(&format!("CONNECT {server}")) >= 1, "{:?}", b.proxy.requests());
    let status = home.daemon_status().unwrap();
    assert_eq!(status["proxy"].as_str(), Some(format!("{https_proxy} (from proxy_url)").as_str()), "{status}");
    drop(agent);
}
