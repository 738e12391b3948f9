//! What one agent's credentials can do to the server, against its release build: open socket
//! after socket, flood pings without reading the answers, send frames the server logs. Each
//! attack checks that `/healthcheck` kept answering from an address the attack does not use and
//! that resident memory stayed bounded.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use edge_agent_e2e::attack::{hits, Watch};
use edge_agent_e2e::server::toml_value;
use edge_agent_e2e::Server;

use crate::hostile::{metrics, WATCHER};

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket connected as `agent_id` with `token`, after the server's connect response.
pub async fn connected(server: &Server, token: &str, agent_id: &str) -> Socket {
    connected_to(&format!("ws://{}/ws/agent", server.addr), token, agent_id).await
}

/// [`connected`] to the agents' WebSocket at `url`.
pub async fn connected_to(url: &str, token: &str, agent_id: &str) -> Socket {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = json!({"type": "agent:connect:request", "accessToken": token, "agentId": agent_id});
    ws.send(Frame::text(hello.to_string())).await.unwrap();
    loop {
        let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("closed before the connect response") };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "agent:connect:response" {
            return ws;
        }
        assert_eq!(v["type"], "agent:heartbeat:request", "{v}");
    }
}

/// An agent and a token for it.
pub async fn agent(server: &Server, name: &str) -> (String, String) {
    let (id, cfg) = server.add_agent(name);
    let token = server.token_for(&toml_value(&cfg, "client_id"), &toml_value(&cfg, "client_secret")).await;
    (id, token)
}

/// Waits for the server's upgrade request on `ws` and sends `reply` to its callback.
async fn answer_upgrade(ws: &mut Socket, reply: impl Fn(&Value) -> Value) {
    loop {
        let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("closed") };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "agent:upgrade:request" {
            return ws.send(Frame::text(reply(&v["callback"]).to_string())).await.unwrap();
        }
    }
}

/// Whether the server closed `ws` (telling why first) within `limit`; the reason it gave.
pub async fn closed_with(ws: &mut Socket, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut why = None;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None | Some(Err(_)) | Some(Ok(Frame::Close(_)))) => return Some(why.unwrap_or_default()),
            Ok(Some(Ok(Frame::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "agent:error" {
                    why = v["body"].as_str().map(str::to_owned);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// One agent opening socket after socket keeps three: each new one closes its oldest, with a
/// reason, so a stolen credential cannot take the node's connections.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_keeps_at_most_three_sockets_and_the_oldest_is_told_why() {
    let server = Server::start_release(&[]).await;
    let watch = Watch::start(server.addr, server.proc.pid(), WATCHER);
    let (id, token) = agent(&server, "many-sockets").await;
    let mut sockets = Vec::new();
    for _ in 0..40 {
        sockets.push(connected(&server, &token, &id).await);
    }
    let (old, newest) = sockets.split_at_mut(37);
    for ws in old {
        let why = closed_with(ws, Duration::from_secs(5)).await.expect("an old socket stayed open");
        assert_eq!(why, "Closed: this agent opened newer sockets (at most 3 at once)");
    }
    for ws in newest {
        ws.send(Frame::text(json!({"type": "agent:heartbeat:request"}).to_string())).await.unwrap();
        assert_eq!(closed_with(ws, Duration::from_millis(500)).await, None, "one of the newest was closed");
    }
    // The closed ones gave their connections back: another agent connects.
    let (other, other_token) = agent(&server, "another").await;
    connected(&server, &other_token, &other).await;
    watch.finish().await.assert_healthy(32);
}

/// An agent that floods pings and never reads the answers: the answers waiting to be written are
/// bounded, and the server stays well.
#[tokio::test(flavor = "multi_thread")]
async fn a_ping_flood_that_never_reads_the_answers_keeps_memory_bounded() {
    // Read at once: what bounds the answers waiting to be written is under test, not the rate.
    let server = Server::start_release(&["--agent-message-rate", "1000000"]).await;
    let watch = Watch::start(server.addr, server.proc.pid(), WATCHER);
    let (id, token) = agent(&server, "pinger").await;
    let mut ws = connected(&server, &token, &id).await;
    let (payload, started) = (vec![7u8; 125], Instant::now());
    let mut sent = 0u64;
    // 130 bytes of answer a ping: two million are 260 MB if nothing bounds them.
    while sent < 2_000_000 && started.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_secs(5), ws.feed(Frame::Ping(payload.clone().into()))).await {
            Ok(Ok(())) => sent += 1,
            // The server stopped reading (its answers wait) or closed the socket: bounded too.
            Ok(Err(_)) | Err(_) => break,
        }
        if sent.is_multiple_of(1024) && tokio::time::timeout(Duration::from_secs(5), ws.flush()).await.is_err() {
            break;
        }
    }
    let report = watch.finish().await;
    eprintln!("{sent} pings sent in {:?}: {report:?}", started.elapsed());
    report.assert_healthy(40);
}

/// An agent that stops reading while the server has answers to send it: a send waits as long as
/// the agent may stay silent (three heartbeat intervals), then the socket closes. Without the
/// bound, the socket, and the agent's connected status, stayed for ever (its ticks, which drop a
/// silent socket, wait while a send does).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_stops_reading_is_closed_once_a_send_waited_three_heartbeat_intervals() {
    let (server, id, _ws) = deaf_agent("1", "deaf").await;
    let blocked = Instant::now();
    closed_as(&server, &id, "the agent read nothing sent to it for 3 heartbeat intervals", 30).await;
    eprintln!("closed {:?} after the flood stopped", blocked.elapsed());
}

/// The same agent, its credentials revoked (switched off) while a send to it waits: its socket
/// closes at once, not three heartbeat intervals later (three minutes here).
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_closes_a_socket_whose_send_waits() {
    let (server, id, _ws) = deaf_agent("60", "deaf-and-revoked").await;
    let off = json!({"resourceType": "Agent", "id": id, "name": "deaf-and-revoked", "status": "off"});
    let put = server.http.put(server.url(&format!("fhir/R4/Agent/{id}"))).bearer_auth(server.admin_token().await);
    assert_eq!(put.body(off.to_string()).send().await.unwrap().status().as_u16(), 200);
    closed_as(&server, &id, "closed by the server: ", 10).await;
}

/// A server with this heartbeat interval, reading agents' messages at once, and an agent of the
/// name connected to it that sent heartbeat requests without reading the answers until the
/// server's send to it waits ([`flood_unread`]): the server, the agent's id and its socket.
async fn deaf_agent(interval: &str, name: &str) -> (Server, String, Socket) {
    let server = Server::start(&["--heartbeat-interval", interval, "--agent-message-rate", "1000000"]).await;
    let (id, token) = agent(&server, name).await;
    let mut ws = connected(&server, &token, &id).await;
    flood_unread(&mut ws).await;
    (server, id, ws)
}

/// Waits up to `secs` for `server` to say the agent `id` is disconnected and log `why`.
async fn closed_as(server: &Server, id: &str, why: &str, secs: u64) {
    edge_agent_e2e::eventually(Duration::from_secs(secs), "the socket closed, and why", || async {
        (server.status(id).await.0 == "disconnected" && server.proc.log().contains(why)).then_some(())
    })
    .await;
}

/// Heartbeat requests, each answered with its callback (16 KiB: a few hundred fill the kernel's
/// buffers), none of the answers read, until the server's send waits, its reads stop, and then
/// ours.
async fn flood_unread(ws: &mut Socket) {
    let request = json!({"type": "agent:heartbeat:request", "callback": "c".repeat(16 * 1024)}).to_string();
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(60), "the server read everything for a minute");
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_secs(2), ws.feed(Frame::text(request.clone()))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
        match tokio::time::timeout(Duration::from_secs(2), ws.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Frames that are not messages are each answered with an error, but the log does not grow with
/// what the agent sends: long ones are cut, and past the first few only one in each power of two
/// is logged.
#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_cannot_flood_the_log() {
    // Read at once: the rate of an agent's messages is another test's.
    let server = Server::start_release(&["--agent-message-rate", "100000"]).await;
    let (id, token) = agent(&server, "noisy").await;
    let mut ws = connected(&server, &token, &id).await;
    let logged = || std::fs::metadata(&server.proc.log).unwrap().len();
    let before = logged();
    let long = json!({"type": "x".repeat(500_000), "callback": "c"}).to_string();
    let frames = (0..20).map(|_| long.clone()).chain((0..5_000).map(|_| "][".to_string()));
    let mut errors = 0;
    for frame in frames {
        ws.send(Frame::text(frame)).await.unwrap();
        loop {
            let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("closed") };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "agent:error" {
                errors += 1;
                break;
            }
        }
    }
    assert_eq!(errors, 5_020, "every bad frame was answered");
    let grew = logged() - before;
    let text = std::fs::read_to_string(&server.proc.log).unwrap();
    let lines = text.lines().filter(|l| l.contains("bad frame")).count();
    // 10 lines, then one at 16, 32, … 4096: 19 lines of at most a few hundred bytes.
    assert_eq!(lines, 19, "{text}");
    assert!(grew < 20_000, "the log grew by {grew} bytes for 10 MB of bad frames");
    assert!(text.contains("bad_frames=4096"), "the count is logged");
}

/// Found by an attacker's probe: an agent sending replies to callbacks nobody holds, or errors of
/// its own, as fast as it could wrote a log line for each (22 MB a second) and read the store for
/// each reply. Past `--agent-message-rate` (in bursts of ten times it), its messages are read at
/// that rate, and such lines are written a few times, not each time.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_agent_is_read_at_its_rate_and_costs_the_log_a_few_lines() {
    let server = Server::start_release(&["--agent-message-rate", "200"]).await;
    let watch = Watch::start(server.addr, server.proc.pid(), WATCHER);
    let (id, token) = agent(&server, "flooder").await;
    let mut ws = connected(&server, &token, &id).await;
    let started = Instant::now();
    let sent = 3_000;
    for n in 0..sent {
        let frame = match n % 2 {
            0 => json!({"type": "agent:error", "body": "late", "callback": format!("{id}-nobody-{n}")}),
            _ => json!({"type": "agent:error", "body": "boom"}),
        };
        ws.feed(Frame::text(frame.to_string())).await.unwrap();
    }
    let last = json!({"type": "agent:heartbeat:request", "callback": "after-the-flood"});
    ws.send(Frame::text(last.to_string())).await.unwrap();
    let answered = async {
        loop {
            let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("closed") };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["callback"] == "after-the-flood" {
                return started.elapsed();
            }
        }
    };
    let took = tokio::time::timeout(Duration::from_secs(60), answered).await.expect("no answer to the last message");
    // 2,000 at once, then 1,001 at 200 a second: 5 s.
    assert!(took >= Duration::from_millis(4_500), "{sent} messages were read in {took:?}");
    let log = server.proc.log();
    let lines = |what: &str| log.lines().filter(|l| l.contains(what) && l.contains(&id)).count();
    assert_eq!(lines("late reply dropped"), 1, "{log}");
    // The first 10, then at 16, 32, … 1024: 17 lines for 1,500 errors.
    assert_eq!(lines("agent reported an error"), 17, "{log}");
    let paced = lines("faster than --agent-message-rate");
    assert!((1..=20).contains(&paced), "{paced} lines about the rate");
    // The count goes on across the agent's sockets: one opened again starts no new ten lines.
    drop(ws);
    let mut ws = connected(&server, &token, &id).await;
    for _ in 0..5 {
        ws.send(Frame::text(json!({"type": "agent:error", "body": "again"}).to_string())).await.unwrap();
    }
    ws.send(Frame::text(json!({"type": "agent:heartbeat:request", "callback": "after"}).to_string())).await.unwrap();
    loop {
        let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("closed") };
        if serde_json::from_str::<Value>(&t).unwrap()["callback"] == "after" {
            break;
        }
    }
    let log = server.proc.log();
    assert_eq!(log.lines().filter(|l| l.contains("agent reported an error") && l.contains(&id)).count(), 17);
    // Counted (how many depends on how fast the burst came in; the time above is the proof).
    assert!(hits(&metrics(&server).await, "agent_message_rate") >= 100.0);
    watch.finish().await.assert_healthy(32);
}

/// Found by a review: a frame past the agent's rate was held by sleeping in the socket's task, so
/// that nothing else was done for the socket meanwhile (at one frame a second, a request to the
/// agent or its removal waited up to a second behind each frame). The frame is held aside now,
/// and the socket's other events go on.
#[tokio::test(flavor = "multi_thread")]
async fn what_is_sent_to_a_paced_agent_and_its_removal_do_not_wait_for_its_pace() {
    let server = Server::start_release(&["--agent-message-rate", "1"]).await;
    let (id, token) = agent(&server, "paced").await;
    let mut ws = connected(&server, &token, &id).await;
    // Ten read at once, then one a second: a minute of them.
    for n in 0..70 {
        let hb = json!({"type": "agent:heartbeat:request", "callback": format!("hb-{n}")});
        ws.feed(Frame::text(hb.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut answered = 0;
    // Frames until `pick` says which it waited for.
    async fn until(ws: &mut Socket, answered: &mut usize, pick: impl Fn(&Value) -> bool) -> Value {
        loop {
            let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("closed") };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "agent:heartbeat:response" {
                *answered += 1;
            }
            if pick(&v) {
                return v;
            }
        }
    }
    until(&mut ws, &mut answered, |v| v["callback"] == "hb-11").await;
    // Requests to the agent at different points of a paced frame's second: each is sent at once.
    for (trial, offset_ms) in [130u64, 370, 610, 850].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(offset_ms)).await;
        let path = format!("fhir/R4/Agent/{id}/$fetch-logs?timeout=5000");
        let (http, url, bearer) = (server.http.clone(), server.url(&path), server.admin_token().await);
        let started = Instant::now();
        tokio::spawn(async move { http.post(url).bearer_auth(bearer).send().await });
        let asked = until(&mut ws, &mut answered, |v| v["type"] == "agent:logs:request").await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "trial {trial}: the request reached the agent after {took:?}: {asked}"
        );
    }
    assert!(answered < 30, "{answered} of 70 heartbeats answered: the agent is still paced");
    let started = Instant::now();
    let removed =
        server.http.delete(server.url(&format!("fhir/R4/Agent/{id}"))).bearer_auth(server.admin_token().await);
    assert_eq!(removed.send().await.unwrap().status().as_u16(), 200);
    let why = closed_with(&mut ws, Duration::from_secs(5)).await.expect("the removed agent's socket stayed open");
    assert!(started.elapsed() < Duration::from_millis(600), "closed {:?} after its removal: {why}", started.elapsed());
}

/// Found by an attacker's probe: an agent's error text of a megabyte, in answer to an upgrade,
/// went whole into the caller's answer, the upgrade's history and the audit trail. It is cut to
/// 1,000 characters as it is read.
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_error_text_is_kept_to_a_thousand_characters() {
    let server = Server::start_release(&[]).await;
    let (id, token) = agent(&server, "wordy").await;
    let mut ws = connected(&server, &token, &id).await;
    let path = format!("fhir/R4/Agent/{id}/$upgrade?version=9.9.9");
    let wordy = |cb: &Value| json!({"type": "agent:error", "body": "é".repeat(400_000), "callback": cb});
    let ((code, body), ()) = tokio::join!(server.post(&path, json!({})), answer_upgrade(&mut ws, wordy));
    assert_eq!(code, 400, "{body}");
    let text = body["issue"][0]["details"]["text"].as_str().unwrap();
    assert!(text.contains(&format!("{}…", "é".repeat(1_000))) && !text.contains(&"é".repeat(1_001)), "{}", text.len());
    let (_, events) = server.get("fhir/R4/AuditEvent?subtype=upgrade").await;
    let stored = events.to_string();
    assert!(stored.len() < 20_000, "the audit trail holds {} bytes for one upgrade", stored.len());

    // An answer past the 1 MiB a message may have is refused, and the caller waiting for it is
    // told so at once (found by the same probe: it waited for its timeout).
    let started = Instant::now();
    let padded = |cb: &Value| json!({"type": "agent:upgrade:response", "statusCode": 200, "callback": cb, "padding": "x".repeat(1_500_000)});
    let ((code, body), ()) = tokio::join!(server.post(&path, json!({})), answer_upgrade(&mut ws, padded));
    let text = body["issue"][0]["details"]["text"].as_str().unwrap_or_default();
    assert!(
        code >= 400
            && text.contains("The agent's answer is too large")
            && text.contains("ask it for less (for $fetch-logs, a smaller limit)"),
        "{code} {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "told after {:?}", started.elapsed());
}

/// An agent that answers its upgrade request with a `statusCode` other than 200 did not say it
/// upgraded: the caller is told so.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_answered_with_a_status_other_than_200_is_a_failure() {
    let server = Server::start_release(&[]).await;
    let (id, token) = agent(&server, "odd-status").await;
    let mut ws = connected(&server, &token, &id).await;
    for status in [500, 404, 0] {
        let path = format!("fhir/R4/Agent/{id}/$upgrade?version=9.9.{status}");
        let odd = |cb: &Value| json!({"type": "agent:upgrade:response", "statusCode": status, "callback": cb});
        let ((code, body), ()) = tokio::join!(server.post(&path, json!({})), answer_upgrade(&mut ws, odd));
        assert_eq!(code, 400, "{body}");
        let text = body["issue"][0]["details"]["text"].as_str().unwrap();
        assert_eq!(text, format!("the agent answered the upgrade request with statusCode {status}, not 200"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_answer_cannot_break_its_reply_or_run_as_the_servers_page() {
    let server = Server::start_release(&[]).await;
    let (id, token) = agent(&server, "relay-odd").await;
    let mut ws = connected(&server, &token, &id).await;
    let path = format!("fhir/R4/Agent/{id}/$push");
    let push = json!({"destination": "mllp://127.0.0.1:2575", "contentType": "x-application/hl7-v2+er7",
                      "body": "MSH|^~\\&|", "waitForResponse": true});
    for content_type in ["text/html\r\nSet-Cookie: session=stolen", "text/html"] {
        let token = server.admin_token().await;
        let call = server.http.post(server.url(&path)).bearer_auth(token).body(push.to_string()).send();
        let answer = async {
            loop {
                let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("closed") };
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "agent:transmit:request" {
                    let reply = json!({"type": "agent:transmit:response", "callback": v["callback"],
                        "remote": v["remote"], "contentType": content_type, "statusCode": 200,
                        "body": "<script>fetch('/fhir/R4/Agent')</script>"});
                    ws.send(Frame::text(reply.to_string())).await.unwrap();
                    return;
                }
            }
        };
        let (resp, ()) = tokio::join!(call, answer);
        let resp = resp.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let body = resp.text().await.unwrap();
        if content_type.contains('\n') {
            assert_eq!(status, 502, "{body}");
            assert!(body.contains("The agent answered with a content type that is no header value"), "{body}");
            assert!(headers.get("set-cookie").is_none());
        } else {
            assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "text/html"), "{body}");
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.starts_with("sandbox"), "the agent's page gets an origin of its own: {csp}");
            assert_eq!(headers["x-content-type-options"], "nosniff");
        }
    }
    assert!(!server.proc.log().contains("ERROR"), "{}", server.proc.log());
}
