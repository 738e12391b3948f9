//! Real PostgreSQL, Redis and nginx processes for the multi-node tests, each on a free port in a
//! temporary directory, never a system service; PostgreSQL and Redis also with TLS, on a
//! certificate from a test CA ([`crate::tls::TestCa`]). Each runs under a small shell guard that stops it
//! (and removes its directory) when the test process lets go of the guard's standard input, so
//! that nothing outlives the test binary, even one that is killed.
//!
//! PostgreSQL refuses to run as root: as root, it runs as the `postgres` user the Debian package
//! creates (or `edgeagent-pg`, created when there is none).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::tls::ServerCert;

/// A free TCP port on 127.0.0.1 (free when asked; the service binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP port free on every address, for a service that listens on all of them (a port free on
/// 127.0.0.1 may be taken on another loopback address, by a load generator's socket say).
fn free_port_everywhere() -> u16 {
    TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A process that stops when [`Guarded::stop`] is called or the guard is dropped.
pub struct Guarded {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guarded {
    /// Runs `script` (which starts the service as `$!`-able background job named in `start`)
    /// under `sh`, as `user` when given; `stop` is the shell command that stops it.
    fn spawn(user: Option<&str>, start: &str, stop: &str, log: &Path) -> Guarded {
        let script = format!("{start} & p=$!; cat >/dev/null; {stop}; wait $p");
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "sh", "-c", &script]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", &script]);
                c
            }
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("spawn a service");
        let stdin = child.stdin.take();
        Guarded { child, stdin }
    }

    /// Stops the service and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something accepts connections on `port`.
fn wait_port(port: u16, what: &str, log: &Path) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The directory of the newest installed PostgreSQL's programs.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    versions.pop().expect("PostgreSQL is installed (.ci/run installs the postgresql package)")
}

/// The unprivileged user PostgreSQL runs as when the tests run as root.
fn pg_user() -> Option<String> {
    if !is_root() {
        return None;
    }
    for name in ["postgres", "edgeagent-pg"] {
        if Command::new("id").arg(name).output().map(|o| o.status.success()).unwrap_or(false) {
            return Some(name.into());
        }
    }
    let made = Command::new("useradd").args(["--system", "--no-create-home", "edgeagent-pg"]).status().unwrap();
    assert!(made.success(), "cannot create a user for PostgreSQL");
    Some("edgeagent-pg".into())
}

/// A PostgreSQL server of its own, with trust authentication on 127.0.0.1.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    user: Option<String>,
    guard: Option<Guarded>,
    /// The shared server is never dropped: its guard removes its directory when it stops.
    remove_on_stop: bool,
    /// Extra server options (TLS).
    options: String,
    /// Listening on every address (not only 127.0.0.1), trusting 10.0.0.0/8 too: for nodes in
    /// network namespaces, which reach it over a veth pair.
    open: bool,
}

impl Postgres {
    fn init() -> Postgres {
        let user = pg_user();
        let dir = tempfile::Builder::new().prefix("ea-pg-").tempdir().unwrap().keep();
        if let Some(u) = &user {
            let ok = Command::new("chown").arg(format!("{u}:")).arg(&dir).status().unwrap();
            assert!(ok.success());
        }
        let bin = pg_bin();
        let mut initdb = match &user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(bin.join("initdb"));
                c
            }
            None => Command::new(bin.join("initdb")),
        };
        let out = initdb
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-N", "-D"])
            .arg(dir.join("data"))
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        Postgres {
            port: free_port(),
            dir,
            user,
            guard: None,
            remove_on_stop: false,
            options: String::new(),
            open: false,
        }
    }

    /// A server of its own that speaks TLS with `cert` (and plain TCP, for `sslmode=disable`).
    pub fn start_tls(cert: &ServerCert) -> Postgres {
        let mut pg = Postgres::init();
        for (from, to) in [(&cert.cert, "server.crt"), (&cert.key, "server.key")] {
            let to = pg.dir.join(to);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            if let Some(u) = &pg.user {
                assert!(Command::new("chown").arg(format!("{u}:")).arg(&to).status().unwrap().success());
            }
        }
        let d = pg.dir.display();
        pg.options = format!(" -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key");
        pg.start_again();
        pg
    }

    /// Connections of the application `app` to this server: (over TLS, in plain TCP).
    pub async fn connections_of(&self, app: &str) -> (i64, i64) {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        let sql = "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
                   FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1";
        let row = client.query_one(sql, &[&app]).await.unwrap();
        drop(client);
        let _ = task.await;
        (row.get(0), row.get(1))
    }

    /// A server of its own, which the test may stop and start.
    pub fn start() -> Postgres {
        let mut pg = Postgres::init();
        pg.start_again();
        pg
    }

    /// A server of its own on every address, which processes in network namespaces reach over
    /// their veth pairs (as `postgres://postgres@<host side>:<port>/…`).
    pub fn start_open() -> Postgres {
        let mut pg = Postgres::init();
        (pg.open, pg.port) = (true, free_port_everywhere());
        let hba = pg.dir.join("data/pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).unwrap();
        rules.push_str("host all all 10.0.0.0/8 trust\n");
        std::fs::write(&hba, rules).unwrap();
        pg.start_again();
        pg
    }

    /// The one server this test binary shares (a database per test keeps tests apart).
    pub fn shared() -> &'static Mutex<Postgres> {
        static PG: OnceLock<Mutex<Postgres>> = OnceLock::new();
        PG.get_or_init(|| {
            let mut pg = Postgres::init();
            pg.remove_on_stop = true;
            pg.start_again();
            Mutex::new(pg)
        })
    }

    /// Starts the server again on the same data and port (after [`Self::stop`]).
    pub fn start_again(&mut self) {
        let bin = pg_bin();
        let start = format!(
            "exec {} -D {} -p {} -k {} -c listen_addresses={} -c fsync=off -c max_connections=300{}",
            bin.join("postgres").display(),
            self.dir.join("data").display(),
            self.port,
            self.dir.display(),
            if self.open { "'*'" } else { "127.0.0.1" },
            self.options
        );
        let log = self.log();
        // `exec` in a subshell so that `$!` is postgres itself; SIGINT is its fast shutdown.
        let start = format!("( {start} )");
        let stop = if self.remove_on_stop {
            format!("kill -INT $p; wait $p; rm -rf {}", self.dir.display())
        } else {
            "kill -INT $p".to_string()
        };
        self.guard = Some(Guarded::spawn(self.user.as_deref(), &start, &stop, &log));
        wait_port(self.port, "PostgreSQL", &log);
    }

    pub fn stop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.stop();
        }
    }

    /// Freezes the server and its backends (SIGSTOP): connections stay open and nothing answers,
    /// as behind a cut link. [`Self::resume`] thaws them.
    pub fn pause(&self) {
        self.signal_all("STOP");
    }

    pub fn resume(&self) {
        self.signal_all("CONT");
    }

    fn signal_all(&self, sig: &str) {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).expect("a running PostgreSQL");
        let postmaster: i32 = pid_file.lines().next().and_then(|l| l.trim().parse().ok()).expect("its pid");
        crate::process::signal(postmaster, sig);
        for backend in crate::process::children(postmaster) {
            crate::process::signal(backend, sig);
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database; its URL.
    pub async fn create_db(&self) -> String {
        create_db(&self.url("postgres")).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh database on the shared server; its URL.
pub async fn shared_db() -> String {
    let url = Postgres::shared().lock().unwrap().url("postgres");
    create_db(&url).await
}

/// Creates a database on the server `admin_url` names (retrying while it starts up); its URL.
async fn create_db(admin_url: &str) -> String {
    let name = format!("t_{}", edge_agent_base::id::random_hex(6));
    let start = Instant::now();
    loop {
        let attempt = async {
            let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
            let task = tokio::spawn(conn);
            client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
            drop(client);
            let _ = task.await;
            Ok::<_, tokio_postgres::Error>(())
        };
        match attempt.await {
            Ok(()) => return format!("{}/{name}", admin_url.strip_suffix("/postgres").unwrap()),
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("cannot create a database: {e}"),
        }
    }
}

/// A Redis server of its own, in memory only.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    guard: Option<Guarded>,
    /// TLS only, with this certificate and key (no plain port).
    tls: Option<(PathBuf, PathBuf)>,
    /// Listening on every address, for processes in network namespaces.
    open: bool,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(None, false)
    }

    /// A plain server on every address, which processes in network namespaces reach over their
    /// veth pairs.
    pub fn start_open() -> Redis {
        Redis::start_with(None, true)
    }

    fn start_with(tls: Option<(PathBuf, PathBuf)>, open: bool) -> Redis {
        let port = if open { free_port_everywhere() } else { free_port() };
        let mut r = Redis { port, dir: tempfile::tempdir().unwrap(), guard: None, tls, open };
        r.start_again();
        r
    }

    /// A server that speaks TLS only, with `cert`; clients are not asked for certificates.
    pub fn start_tls(cert: &ServerCert) -> Redis {
        Redis::start_with(Some((cert.cert.clone(), cert.key.clone())), false)
    }

    pub fn start_again(&mut self) {
        let listen = match &self.tls {
            None => format!("--port {}", self.port),
            Some((cert, key)) => format!(
                "--port 0 --tls-port {} --tls-cert-file {} --tls-key-file {} --tls-auth-clients no",
                self.port,
                cert.display(),
                key.display()
            ),
        };
        let start = format!(
            "redis-server {listen} {} --save '' --appendonly no --dir {}",
            if self.open { "--bind '*' --protected-mode no" } else { "--bind 127.0.0.1" },
            self.dir.path().display()
        );
        let log = self.dir.path().join("redis.log");
        self.guard = Some(Guarded::spawn(None, &start, "kill $p", &log));
        wait_port(self.port, "Redis", &log);
    }

    pub fn stop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.stop();
        }
    }

    /// Holds every client's commands for `ms` (`CLIENT PAUSE ms ALL`): a Redis that is up but
    /// answers nothing, as behind a cut link. Plain servers only.
    pub fn pause(&self, ms: u64) {
        assert!(self.tls.is_none(), "pause: a plain Redis only");
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "CLIENT", "PAUSE", &ms.to_string(), "ALL"])
            .output()
            .expect("redis-cli (redis-tools)");
        assert!(String::from_utf8_lossy(&out.stdout).trim() == "OK", "CLIENT PAUSE: {out:?}");
    }

    /// `redis://`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }
}

/// nginx in front of `upstreams`, proxying HTTP and the agents' WebSocket upgrade, round robin.
pub struct Nginx {
    pub port: u16,
    dir: tempfile::TempDir,
    _guard: Guarded,
}

fn write_nginx_conf(dir: &Path, port: u16, upstreams: &[std::net::SocketAddr]) {
    let servers: String =
        upstreams.iter().map(|a| format!("        server {a} max_fails=1 fail_timeout=2s;\n")).collect();
    let d = dir.display();
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             upstream agent_servers {{\n{servers}    }}\n\
             server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
             proxy_pass http://agent_servers;\n            proxy_http_version 1.1;\n\
             proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection $connection_upgrade;\n\
             proxy_set_header Host $host;\n            proxy_read_timeout 1h;\n            proxy_connect_timeout 2s;\n\
             proxy_next_upstream error timeout;\n        }}\n    }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
}

impl Nginx {
    pub fn start(upstreams: &[std::net::SocketAddr]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        write_nginx_conf(dir.path(), port, upstreams);
        let d = dir.path().display();
        let start = format!("exec nginx -p {d} -c {d}/nginx.conf -g 'daemon off;'");
        let log = dir.path().join("nginx.out");
        let guard = Guarded::spawn(None, &format!("( {start} )"), "kill -QUIT $p", &log);
        wait_port(port, "nginx", &log);
        Nginx { port, dir, _guard: guard }
    }

    /// New connections go to `upstreams` only; open ones stay where they are (a graceful reload).
    pub fn route_only(&self, upstreams: &[std::net::SocketAddr]) {
        write_nginx_conf(self.dir.path(), self.port, upstreams);
        let d = self.dir.path().display().to_string();
        let conf = format!("{d}/nginx.conf");
        let out = Command::new("nginx").args(["-p", &d, "-c", &conf, "-s", "reload"]).output().unwrap();
        assert!(out.status.success(), "nginx reload: {out:?}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}
