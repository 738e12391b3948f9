//! A cluster fault suite: a workload on three nodes (a rollout of every agent, single and bulk
//! `$upgrade` calls from several clients, `$status` polling), faults injected on a schedule drawn
//! from a seed, everything recorded in a history ([`history`]), and the invariants judged over that
//! history by a program ([`check`], also the `fault-check` binary).
//!
//! The agents: real ones (the `agent` binary between two builds) and simulated ones (a real
//! socket each, [`fleet`]). Those the rollout selects (`fault-NNNN`) are never the target of a
//! client's call, so that any second upgrade request one of them receives is the rollout's; the
//! clients' calls go to the others (`solo-…`).

pub mod check;
pub mod fleet;
pub mod history;
pub mod rig;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use crate::bins::{agent_bin, next_build, next_version, server_bin};
use crate::cluster::{rollout_lease_holder, status_of};
use crate::home::AgentHome;
use crate::process::{children, signal};
use crate::releases::ReleaseServer;
use crate::server::toml_value;
use fleet::{Real, Sim};
use history::{Event, Finished, History, Member, Phase};
use rig::FaultRig;
use schedule::{Kind, Planned, Rng};

/// The presence TTL and heartbeat the nodes run with.
const PRESENCE_TTL: Duration = Duration::from_secs(5);
/// The rollout lease's TTL (the server's `LEASE_TTL`).
const LEASE: Duration = Duration::from_secs(5);
/// Slack on every bound the checker holds, for a loaded machine.
const MARGIN: Duration = Duration::from_secs(10);
const NODES: usize = 3;
/// The real agents' health window: short, to see rollbacks within a run, but longer than a
/// node takes to answer 503 when its store does not answer (its 5 s call limit).
const HEALTH_WINDOW: u64 = 15;

pub struct Options {
    pub seed: u64,
    /// Long mode: faults for this long; short mode (one fault of each family) when None.
    pub span: Option<Duration>,
    /// These faults instead of drawn ones (a regression test's).
    pub plan: Option<Vec<Planned>>,
    /// Simulated agents in the rollout, and real ones (two more real ones and twenty simulated
    /// ones are the clients' targets).
    pub sims: usize,
    pub reals: usize,
    /// Where the history goes.
    pub history: PathBuf,
}

pub struct Outcome {
    pub violations: Vec<String>,
    /// The faults injected, in order, with when (ms from the start).
    pub faults: Vec<String>,
    pub took: Duration,
    pub rollout_counts: BTreeMap<String, u64>,
}

/// What is down, so that faults that would contradict each other are not injected together.
#[derive(Default)]
struct Down {
    postgres: bool,
    redis: bool,
    dead: [bool; NODES],
    cut: [bool; NODES],
}

struct Run {
    rig: FaultRig,
    history: History,
    down: Mutex<Down>,
    reals: Vec<Real>,
    sims: Vec<Sim>,
    http: reqwest::Client,
    token: String,
    stop: AtomicBool,
    calls: AtomicU64,
    injected: Mutex<Vec<String>>,
}

/// Runs the workload under the faults; None when this machine cannot (no network namespaces).
pub async fn run(opts: &Options) -> Option<Outcome> {
    let started = Instant::now();
    let ttl = PRESENCE_TTL.as_secs().to_string();
    let rig = FaultRig::start(NODES, &["--heartbeat-interval", "1", "--presence-ttl", &ttl]).await?;
    let history = History::create(&opts.history);
    let next = next_version();
    history.record(Event::Setup {
        seed: opts.seed,
        nodes: NODES,
        builds: vec![SOURCE_VERSION.to_string(), next.clone()],
        presence_ttl_ms: PRESENCE_TTL.as_millis() as u64,
        lease_ms: LEASE.as_millis() as u64,
        margin_ms: MARGIN.as_millis() as u64,
    });
    let releases = ReleaseServer::start().await;
    releases.publish_file(SOURCE_VERSION, Path::new(agent_bin()));
    releases.publish_file(&next, next_build());
    // Downloads take about a second, so that a worker can be caught upgrading.
    releases.faults().drip = Some((512 * 1024, Duration::from_millis(15)));
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let lb = rig.nginx.url();
    let token = admin_token(&http, &lb, &rig.admin).await;

    // The rollout's agents, `fault-NNNN`, real ones spread evenly among them; the clients' targets.
    let total = opts.sims + opts.reals;
    let real_at: Vec<usize> =
        (0..opts.reals).map(|i| i * total / opts.reals.max(1) + total / (2 * opts.reals.max(1))).collect();
    let mut reals = Vec::new();
    let mut names: Vec<String> = real_at.iter().map(|p| format!("fault-{p:04}")).collect();
    names.extend(["solo-r0".to_string(), "solo-r1".to_string()]);
    for name in &names {
        reals.push(real_agent(&rig, name, &releases));
    }
    let ws = format!("{}ws/agent", lb.replacen("http", "ws", 1));
    let mut sims = Vec::new();
    let mut rng = Rng::new(opts.seed ^ 0x5eed);
    let sim_names = (0..total).filter(|p| !real_at.contains(p)).map(|p| format!("fault-{p:04}"));
    for name in sim_names.chain((0..20).map(|i| format!("solo-{i:02}"))) {
        sims.push(fleet::sim(&http, (&lb, &ws, &token), &name, SOURCE_VERSION, &history, rng.draw()).await);
    }
    let run = Arc::new(Run {
        rig,
        history,
        down: Mutex::new(Down::default()),
        reals,
        sims,
        http,
        token,
        stop: AtomicBool::new(false),
        calls: AtomicU64::new(0),
        injected: Mutex::new(Vec::new()),
    });
    wait_all_connected(&run, Duration::from_secs(120)).await;

    // The background: who leads, what the store holds, the clients.
    let mut tasks = vec![
        tokio::spawn(watch_leader(run.clone())),
        tokio::spawn(watch_store(run.clone())),
        tokio::spawn(status_client(run.clone(), opts.seed ^ 1)),
        tokio::spawn(upgrade_client(run.clone(), opts.seed ^ 2)),
        tokio::spawn(upgrade_client(run.clone(), opts.seed ^ 3)),
        tokio::spawn(bulk_client(run.clone(), opts.seed ^ 4)),
    ];
    let plan = match (&opts.plan, opts.span) {
        (Some(plan), _) => plan.clone(),
        (None, None) => schedule::short(opts.seed),
        (None, Some(span)) => schedule::long(opts.seed, span),
    };
    let faults_for = plan.last().map_or(Duration::ZERO, |p| p.at + p.hold);
    // Waves spaced so that the rollout runs while the faults do.
    let bake = (faults_for.as_secs() / 30).max(1);
    let rollout = start_rollout(&run, &next, bake).await;
    let watcher = tokio::spawn(watch_rollout(run.clone(), rollout.clone()));

    let faults_started = Instant::now();
    let mut injections = Vec::new();
    for p in plan {
        tokio::time::sleep_until((faults_started + p.at).into()).await;
        injections.push(tokio::spawn(inject(run.clone(), p)));
    }
    for i in injections {
        i.await.unwrap();
    }
    run.history.record(Event::FaultsOver);
    run.stop.store(true, Ordering::Relaxed);
    for t in tasks.drain(2..) {
        t.await.unwrap();
    }
    let counts =
        tokio::time::timeout(Duration::from_secs(300), watcher).await.ok().and_then(|r| r.ok()).unwrap_or_default();

    for r in &run.reals {
        for callback in r.asked() {
            run.history.record(Event::Asked { agent: r.id.clone(), callback });
        }
    }
    settle_and_converge(&run).await;
    for r in &run.reals {
        run.history.record(Event::RealAgent { agent: r.id.clone(), alive: real_alive(r), binary: binary_version(r) });
    }
    stored(&run).await;
    for t in tasks {
        t.abort();
    }
    let lines = history::read(&opts.history).expect("the history reads back");
    let violations = check::check(&lines);
    if !violations.is_empty() {
        // The nodes' logs, beside the history, to read what they did.
        for i in 0..NODES {
            let log = opts.history.with_extension(format!("node{i}.log"));
            std::fs::write(&log, run.rig.log(i)).unwrap();
            eprintln!("node {i}'s log: {}", log.display());
        }
    }
    let faults = run.injected.lock().unwrap().clone();
    Some(Outcome { violations, faults, took: started.elapsed(), rollout_counts: counts })
}

async fn admin_token(http: &reqwest::Client, base: &str, (id, secret): &(String, String)) -> String {
    let form = [("grant_type", "client_credentials"), ("client_id", id.as_str()), ("client_secret", secret.as_str())];
    for _ in 0..100 {
        if let Ok(resp) = http.post(format!("{base}oauth2/token")).form(&form).send().await {
            let v: Value = resp.json().await.unwrap_or_default();
            if let Some(t) = v["access_token"].as_str() {
                return t.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("no admin token from {base}");
}

fn real_agent(rig: &FaultRig, name: &str, releases: &ReleaseServer) -> Real {
    let out = std::process::Command::new(server_bin())
        .args(["agent", "add", "--name", name, "--database", &rig.db, "--base-url", &rig.nginx.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cfg = String::from_utf8(out.stdout).unwrap();
    let id = toml_value(&cfg, "agent_id");
    let (home, proc) = AgentHome::started(&cfg, releases, HEALTH_WINDOW);
    Real { id, name: name.to_string(), home, proc }
}

fn real_alive(r: &Real) -> bool {
    std::path::Path::new(&format!("/proc/{}", r.proc.pid())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", r.proc.pid())).unwrap_or_default().contains(") Z ")
}

/// The version whose build the agent's installed binary is.
fn binary_version(r: &Real) -> Option<String> {
    let installed = std::fs::read(r.home.bin()).ok()?;
    if installed == std::fs::read(agent_bin()).ok()? {
        Some(SOURCE_VERSION.to_string())
    } else if installed == std::fs::read(next_build()).ok()? {
        Some(next_version())
    } else {
        None
    }
}

/// One call, bounded: (status, the start of the body), or no status and what went wrong.
async fn call(req: reqwest::RequestBuilder, limit: Duration) -> (Option<u16>, String) {
    match tokio::time::timeout(limit, async {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    })
    .await
    {
        Err(_) => (None, format!("no answer within {limit:?}")),
        Ok(Err(e)) => (None, format!("{e}")),
        Ok(Ok((status, body))) => (Some(status), body.chars().take(300).collect()),
    }
}

impl Run {
    /// Records a call and its end.
    async fn traced(
        &self,
        op: &str,
        node: String,
        agents: Vec<String>,
        timeout: Duration,
        req: reqwest::RequestBuilder,
    ) {
        let id = self.calls.fetch_add(1, Ordering::Relaxed);
        let timeout_ms = timeout.as_millis() as u64;
        self.history.record(Event::Invoke { id, op: op.into(), node, agents, timeout_ms });
        let (status, text) = call(req, timeout + MARGIN + Duration::from_secs(5)).await;
        self.history.record(Event::Complete { id, status, text });
    }

    fn solo(&self) -> Vec<(String, bool)> {
        let sims = self.sims.iter().filter(|s| s.name.starts_with("solo-")).map(|s| (s.id.clone(), false));
        sims.chain(self.reals.iter().filter(|r| r.name.starts_with("solo-")).map(|r| (r.id.clone(), true))).collect()
    }

    fn lb(&self, path: &str) -> String {
        format!("{}{path}", self.rig.nginx.url())
    }

    fn note(&self, what: String) {
        eprintln!("faults: {} ms: {what}", self.history.now());
        self.injected.lock().unwrap().push(format!("{} ms: {what}", self.history.now()));
    }

    fn fault(&self, what: &str, phase: Phase) {
        self.history.record(Event::Fault { fault: what.to_string(), phase });
        if phase == Phase::Start {
            self.note(what.to_string());
        }
    }
}

/// Every agent connected, as the cluster sees it.
async fn wait_all_connected(run: &Run, limit: Duration) {
    let want = run.sims.len() + run.reals.len();
    let deadline = Instant::now() + limit;
    loop {
        let seen = bulk_status(run, &run.rig.nginx.url()).await.unwrap_or_default();
        let connected = seen.values().filter(|(s, _)| s == "connected").count();
        if connected == want {
            return;
        }
        assert!(Instant::now() < deadline, "{connected} of {want} agents connected after {limit:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every agent's (status, version) as the node (or nginx) at `base` shows them.
async fn bulk_status(run: &Run, base: &str) -> Option<HashMap<String, (String, String)>> {
    let mut out = HashMap::new();
    for offset in (0..).step_by(1000) {
        let url = format!("{base}fhir/R4/Agent/$bulk-status?_count=1000&_offset={offset}&_sort=name");
        let resp = run.http.get(url).bearer_auth(&run.token).timeout(Duration::from_secs(10)).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let v: Value = resp.json().await.ok()?;
        let entries = v["entry"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            let id = e["resource"]["parameter"][0]["resource"]["id"].as_str()?.to_string();
            out.insert(id, status_of(&e["resource"]["parameter"][1]["resource"]));
        }
        if entries.len() < 1000 {
            break;
        }
    }
    Some(out)
}

async fn start_rollout(run: &Run, version: &str, bake: u64) -> String {
    let url = run.lb(&format!(
        "fhir/R4/Agent/$upgrade?name=fault-&version={version}&maxInFlight=50&growth=2&bake={bake}&maxFailurePercent=100&timeout=30000"
    ));
    for _ in 0..50 {
        let resp = run.http.post(&url).bearer_auth(&run.token).header("prefer", "respond-async").send().await;
        if let Ok(resp) = resp {
            if resp.status().as_u16() == 202 {
                let v: Value = resp.json().await.unwrap();
                let id = v["id"].as_str().unwrap().to_string();
                let mut agents: Vec<String> =
                    run.sims.iter().filter(|s| s.name.starts_with("fault-")).map(|s| s.id.clone()).collect();
                agents.extend(run.reals.iter().filter(|r| r.name.starts_with("fault-")).map(|r| r.id.clone()));
                run.history.record(Event::Rollout { id: id.clone(), agents });
                run.note(format!("rollout {id} started, bake {bake} s"));
                return id;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the rollout could not be started");
}

/// Polls the rollout until it ends; its last counts.
async fn watch_rollout(run: Arc<Run>, id: String) -> BTreeMap<String, u64> {
    let mut last = None;
    loop {
        let resp = run.http.get(run.lb(&format!("fhir/R4/Rollout/{id}"))).bearer_auth(&run.token).send().await;
        if let Ok(resp) = resp {
            let v: Value = resp.json().await.unwrap_or_default();
            if let Some(state) = v["state"].as_str() {
                let counts: BTreeMap<String, u64> = v["counts"]
                    .as_object()
                    .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
                    .unwrap_or_default();
                let now = (state.to_string(), counts.clone());
                if last.as_ref() != Some(&now) {
                    run.history.record(Event::RolloutState {
                        id: id.clone(),
                        state: state.into(),
                        counts: counts.clone(),
                    });
                    last = Some(now);
                }
                if ["completed", "halted", "cancelled"].contains(&state) {
                    return counts;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pg(run: &Run) -> Option<tokio_postgres::Client> {
    let connect = tokio_postgres::connect(&run.rig.db, tokio_postgres::NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(2), connect).await.ok()?.ok()?;
    tokio::spawn(conn);
    Some(client)
}

async fn watch_leader(run: Arc<Run>) {
    let mut last = None;
    loop {
        if let Some(db) = pg(&run).await {
            // Until the connection is lost (then with a new one).
            while !db.is_closed() {
                let holder = rollout_lease_holder(&db).await;
                // A holder is a node's run: a node restarted is a new holder.
                if let Some((node, holder)) = holder.and_then(|h| Some((run.rig.node_of(&h)?, h))) {
                    if last.as_ref() != Some(&holder) {
                        run.history.record(Event::Leader { node });
                        last = Some(holder);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const FINAL: &str = "('succeeded','already','failed','timed-out','expired','skipped')";

async fn watch_store(run: Arc<Run>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(db) = pg(&run).await else { continue };
        let read = async {
            let rollouts = db.query("SELECT id FROM rollouts", &[]).await?;
            let finished = db
                .query(&format!("SELECT rollout_id, agent_id, state FROM rollout_members WHERE state IN {FINAL}"), &[])
                .await?;
            let audit = db.query("SELECT id FROM audit_events ORDER BY recorded DESC LIMIT 20", &[]).await?;
            Ok::<_, tokio_postgres::Error>(Event::Persisted {
                rollouts: rollouts.iter().map(|r| r.get(0)).collect(),
                finished: finished
                    .iter()
                    .map(|r| Finished { rollout: r.get(0), agent: r.get(1), state: r.get(2) })
                    .collect(),
                audit: audit.iter().map(|r| r.get(0)).collect(),
            })
        };
        if let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(5), read).await {
            run.history.record(ev);
        }
    }
}

/// The store's rows at the end.
async fn stored(run: &Run) {
    let db = pg(run).await.expect("PostgreSQL at the end");
    let rollouts = db.query("SELECT id FROM rollouts", &[]).await.unwrap();
    let members =
        db.query("SELECT rollout_id, agent_id, state, callback, reason FROM rollout_members", &[]).await.unwrap();
    let audit = db.query("SELECT id FROM audit_events", &[]).await.unwrap();
    run.history.record(Event::Stored {
        rollouts: rollouts.iter().map(|r| r.get(0)).collect(),
        members: members
            .iter()
            .map(|r| Member {
                rollout: r.get(0),
                agent: r.get(1),
                state: r.get(2),
                callback: r.get(3),
                reason: r.get(4),
            })
            .collect(),
        audit: audit.iter().map(|r| r.get(0)).collect(),
    });
}

/// `$status` of any agent on a live node, one call after another.
async fn status_client(run: Arc<Run>, seed: u64) {
    let mut rng = Rng::new(seed);
    let all: Vec<String> =
        run.sims.iter().map(|s| s.id.clone()).chain(run.reals.iter().map(|r| r.id.clone())).collect();
    while !run.stop.load(Ordering::Relaxed) {
        let node = rng.between(0, NODES as u64 - 1) as usize;
        if run.rig.alive(node) {
            let agent = rng.pick(&all).clone();
            let url = format!("{}fhir/R4/Agent/{agent}/$status", run.rig.base(node));
            let req = run.http.get(url).bearer_auth(&run.token);
            run.traced("status", format!("node {node}"), vec![agent], Duration::from_secs(5), req).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.between(20, 100))).await;
    }
}

/// Single `$upgrade` calls through nginx to the clients' targets: either version, or one that
/// does not exist; timeouts short and long.
async fn upgrade_client(run: Arc<Run>, seed: u64) {
    let mut rng = Rng::new(seed);
    let solo = run.solo();
    let versions = [SOURCE_VERSION.to_string(), next_version(), "9.9.9-missing".to_string()];
    while !run.stop.load(Ordering::Relaxed) {
        let (agent, _) = rng.pick(&solo).clone();
        let version = rng.pick(&versions);
        let timeout = Duration::from_millis(*rng.pick(&[3000, 8000, 20000]));
        let url = run.lb(&format!("fhir/R4/Agent/{agent}/$upgrade?version={version}&timeout={}", timeout.as_millis()));
        let req = run.http.get(url).bearer_auth(&run.token);
        run.traced("upgrade", "nginx".into(), vec![agent], timeout, req).await;
        tokio::time::sleep(Duration::from_millis(rng.between(200, 800))).await;
    }
}

/// Bulk `$upgrade` of every client target at once, through nginx.
async fn bulk_client(run: Arc<Run>, seed: u64) {
    let mut rng = Rng::new(seed);
    let solo: Vec<String> = run.solo().into_iter().map(|(id, _)| id).collect();
    let versions = [SOURCE_VERSION.to_string(), next_version()];
    while !run.stop.load(Ordering::Relaxed) {
        let version = rng.pick(&versions);
        let timeout = Duration::from_secs(10);
        let url = run.lb(&format!("fhir/R4/Agent/$upgrade?name=solo-&_count=100&version={version}&timeout=10000"));
        let req = run.http.get(url).bearer_auth(&run.token);
        run.traced("bulk-upgrade", "nginx".into(), solo.clone(), timeout, req).await;
        tokio::time::sleep(Duration::from_millis(rng.between(2000, 4000))).await;
    }
}

/// The node holding the rollout lease, as the store says.
async fn leader(run: &Run) -> Option<usize> {
    let holder = rollout_lease_holder(&pg(run).await?).await?;
    run.rig.node_of(&holder)
}

/// One fault: injected, held, healed (or skipped when it contradicts what is down already).
async fn inject(run: Arc<Run>, p: Planned) {
    let node = p.node % NODES;
    match p.kind {
        Kind::KillNode | Kind::KillLeader => {
            let target = if p.kind == Kind::KillLeader { leader(&run).await } else { Some(node) };
            let Some(target) = target else { return run.note("kill-leader skipped: no leader known".into()) };
            {
                let mut down = run.down.lock().unwrap();
                let others_up = (0..NODES).filter(|&i| i != target && !down.dead[i]).count();
                if down.dead[target] || others_up < 2 {
                    drop(down);
                    return run.note(format!("kill of node {target} skipped: another node is down"));
                }
                down.dead[target] = true;
            }
            let name = if p.kind == Kind::KillLeader { "kill-leader" } else { "kill-node" };
            let what = format!("{name} node {target}");
            // Recorded first: a call to it cut short by the kill ends after the kill began.
            run.fault(&what, Phase::Start);
            run.rig.kill(target);
            tokio::time::sleep(p.hold).await;
            // Started as its service manager would, again and again until it runs.
            run.rig.restart(target).await;
            run.down.lock().unwrap().dead[target] = false;
            run.fault(&what, Phase::End);
        }
        Kind::PostgresRestart | Kind::PostgresStop => {
            outage(run, "postgres", p.kind == Kind::PostgresStop, p.hold).await
        }
        Kind::RedisRestart | Kind::RedisStop => outage(run, "redis", p.kind == Kind::RedisStop, p.hold).await,
        Kind::Partition { postgres, redis } => {
            {
                let mut down = run.down.lock().unwrap();
                if down.cut[node] || down.dead[node] {
                    drop(down);
                    return run.note(format!("partition of node {node} skipped: it is cut off or down already"));
                }
                down.cut[node] = true;
            }
            let from = match (postgres, redis) {
                (true, true) => "postgres and redis",
                (true, false) => "postgres",
                _ => "redis",
            };
            let what = format!("partition node {node} from {from} {} s", p.hold.as_secs());
            let slot = &run.rig.nodes[node];
            let links: Vec<_> = [(postgres, &slot.postgres_link), (redis, &slot.redis_link)]
                .into_iter()
                .filter_map(|(cut, l)| cut.then_some(l))
                .collect();
            run.fault(&what, Phase::Start);
            links.iter().for_each(|l| l.cut());
            tokio::time::sleep(p.hold).await;
            links.iter().for_each(|l| l.mend());
            run.down.lock().unwrap().cut[node] = false;
            run.fault(&what, Phase::End);
        }
        Kind::KillWorker => {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                // Before its swap: a kill during the new version's trial is a crash of the new
                // version, which is rolled back by design (the random-kill soak covers it).
                if let Some(r) = run.reals.iter().find(|r| r.before_swap()) {
                    let what = format!("kill-worker agent {}", r.name);
                    run.fault(&what, Phase::Start);
                    for worker in children(r.proc.pid()) {
                        signal(worker, "KILL");
                    }
                    run.fault(&what, Phase::End);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            run.note("kill-worker skipped: no real agent was upgrading for 20 s".into());
        }
    }
}

/// PostgreSQL or Redis (`service`) stopped, and started again after `hold` (a restart when not
/// `held`); skipped when it is down already.
async fn outage(run: Arc<Run>, service: &'static str, held: bool, hold: Duration) {
    fn flag<'a>(down: &'a mut Down, service: &str) -> &'a mut bool {
        match service {
            "postgres" => &mut down.postgres,
            _ => &mut down.redis,
        }
    }
    if std::mem::replace(flag(&mut run.down.lock().unwrap(), service), true) {
        return run.note(format!("{service} fault skipped: it is down already"));
    }
    let what = if held { format!("{service}-stop {} s", hold.as_secs()) } else { format!("{service}-restart") };
    // Stopping and starting wait for the process: off the runtime's threads.
    let switch = |up: bool| {
        let run = run.clone();
        tokio::task::spawn_blocking(move || match (service, up) {
            ("postgres", false) => run.rig.postgres.lock().unwrap().stop(),
            ("postgres", true) => run.rig.postgres.lock().unwrap().start_again(),
            (_, false) => run.rig.redis.lock().unwrap().stop(),
            (_, true) => run.rig.redis.lock().unwrap().start_again(),
        })
    };
    run.fault(&what, Phase::Start);
    switch(false).await.unwrap();
    tokio::time::sleep(hold).await;
    switch(true).await.unwrap();
    *flag(&mut run.down.lock().unwrap(), service) = false;
    run.fault(&what, Phase::End);
}

/// After the faults: every real agent done upgrading and connected, then how long each node
/// takes to show every agent at its real version.
async fn settle_and_converge(run: &Arc<Run>) {
    let limit = Duration::from_secs(120);
    let settled = Instant::now();
    while run.reals.iter().any(Real::upgrading) && settled.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut truth: HashMap<String, String> =
        run.sims.iter().map(|s| (s.id.clone(), s.version.lock().unwrap().clone())).collect();
    for r in &run.reals {
        truth.insert(r.id.clone(), binary_version(r).unwrap_or_else(|| "neither build".into()));
    }
    let truth = Arc::new(truth);
    let start = Instant::now();
    let mut polls = Vec::new();
    for node in 0..NODES {
        let (run, truth) = (run.clone(), truth.clone());
        polls.push(tokio::spawn(async move {
            let base = run.rig.base(node);
            while start.elapsed() < limit {
                if let Some(seen) = bulk_status(&run, &base).await {
                    let right =
                        truth.iter().all(|(id, v)| seen.get(id).is_some_and(|(s, sv)| s == "connected" && sv == v));
                    if right {
                        return Some(start.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None
        }));
    }
    let mut took = Vec::new();
    for p in polls {
        took.push(p.await.unwrap());
    }
    let Some(first) = took.iter().flatten().min().copied() else { return };
    run.history.record(Event::Reconnected);
    for (node, t) in took.into_iter().enumerate() {
        run.history.record(Event::Converged { node, ms: t.map(|t| (t - first).as_millis() as u64) });
    }
}
