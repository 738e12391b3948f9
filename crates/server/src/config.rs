//! The server's configuration: its flags (the store and public ones also taken by the admin
//! subcommands, before or after them; some from the environment), validated once into a
//! [`ServerConfig`]; a bad value is one clear error naming the flag, and the binary exits with
//! code 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::{LimitFlags, Limits};
use crate::proxy::{Cidr, Proxies};
use crate::store::StoreConfig;

/// Exit code for a configuration error (EX_USAGE of sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// Where the data lives: the options every command that touches the store takes (the server, and
/// `client add` and `agent add`, before or after their subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreFlags {
    /// Data directory of the embedded SQLite database [default: /var/lib/edge-agent-server]
    #[arg(long, env = "AGENT_SERVER_DATA", hide_env_values = true, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Store everything in this PostgreSQL database instead of SQLite (postgres://user:pass@host/db)
    #[arg(long, env = "AGENT_SERVER_DATABASE", hide_env_values = true, value_name = "URL")]
    pub database: Option<String>,
}

/// Where the SQLite data lives without `--data`.
pub const DEFAULT_DATA: &str = "/var/lib/edge-agent-server";

impl StoreFlags {
    /// These flags, each filled from `before` (given before the subcommand) when not given here.
    pub fn or(self, before: StoreFlags) -> StoreFlags {
        StoreFlags { data: self.data.or(before.data), database: self.database.or(before.database) }
    }

    /// Where the data lives: PostgreSQL with `--database`, else SQLite in `--data`.
    pub fn store(&self) -> StoreConfig {
        match &self.database {
            Some(url) => StoreConfig::Postgres(url.clone()),
            None => StoreConfig::Sqlite(self.data.clone().unwrap_or_else(|| DEFAULT_DATA.into())),
        }
    }
}

/// What `agent add` writes into an agent's configuration besides its credentials; given to the
/// server too, which serves the releases and links to itself.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PublicFlags {
    /// A release directory (as `agent release publish` lays out) to serve at /releases/; `agent add`
    /// trusts the keys it records and points agents at it
    #[arg(long, value_name = "DIR")]
    pub releases: Option<PathBuf>,
    /// A release public key (minisign.pub, or its key line) for agents' trusted_keys (repeatable;
    /// default: the keys in --releases)
    #[arg(long, value_name = "FILE|KEY")]
    pub release_key: Vec<String>,
    /// The URL clients and agents reach this server at (server default: each request's Host header,
    /// or what a --trusted-proxy forwarded; `agent add` default: http://127.0.0.1:8103/)
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
}

impl PublicFlags {
    /// These flags, each filled from `before` (given before the subcommand) when not given here.
    pub fn or(self, before: PublicFlags) -> PublicFlags {
        PublicFlags {
            releases: self.releases.or(before.releases),
            release_key: if self.release_key.is_empty() { before.release_key } else { self.release_key },
            base_url: self.base_url.or(before.base_url),
        }
    }
}

/// The server's options, for running it (`agent-server [OPTIONS]`); the store and public ones may
/// also come before an admin subcommand, which takes them after it too.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// Address to listen on (port 0: any free port, printed at start)
    #[arg(
        long,
        env = "AGENT_SERVER_LISTEN",
        hide_env_values = true,
        default_value = "127.0.0.1:8103",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreFlags,
    /// Join the other nodes sharing this Redis (redis://host:6379/0), for several nodes behind a load
    /// balancer; requires --database
    #[arg(long, env = "AGENT_SERVER_REDIS", hide_env_values = true, value_name = "URL")]
    pub redis: Option<String>,
    /// Seconds an agent stays "connected" after the node holding its socket stopped renewing it
    /// (its stored status, read by the table and the metrics, follows within a few more, with
    /// --redis or on SQLite)
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub presence_ttl: u64,
    /// Lifetime of issued access tokens, in seconds (1 to 2592000, 30 days)
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub token_ttl: u64,
    /// Seconds between the server's heartbeats to each agent (above 0, at most 3600)
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub heartbeat_interval: f64,
    #[command(flatten)]
    pub public: PublicFlags,
    /// Threads that serve connections, the agents' sockets included, each holding its own (default:
    /// one per core; 1 costs an idle fleet less CPU and slows rollouts and reconnection storms)
    #[arg(long, value_name = "N")]
    pub connection_threads: Option<usize>,
    /// Also serve /metrics without a token on this address (for a scraper on a private network)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Lifetime of a web page session after sign-in, in seconds (1 to 2592000, 30 days)
    #[arg(long, default_value_t = 28800, value_name = "SECONDS")]
    pub session_ttl: u64,
    /// Days the audit trail keeps an event; older ones are pruned by one node (the lease holder)
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    pub audit_retention_days: u64,
    /// Records no audit events: for the benchmark's baseline only (bench/audit.py)
    #[arg(long, hide = true)]
    pub no_audit_for_benchmark: bool,
    /// A proxy (address or range, e.g. 10.0.0.0/8) whose Forwarded and X-Forwarded-* headers are
    /// believed, and whose connections are not capped per address; repeatable (default: none, the
    /// headers are ignored)
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<Cidr>,
    #[command(flatten)]
    pub limits: LimitFlags,
    /// For tests: the update policy's clock runs this many times faster than real time, so that
    /// windows, waits and retries take seconds (with --policy-time-origin)
    #[arg(long, global = true, hide = true, default_value_t = 1.0)]
    pub policy_time_scale: f64,
    /// For tests: REAL_MS or REAL_MS=INSTANT: at REAL_MS (milliseconds since the epoch) the
    /// policy's clock reads INSTANT (RFC 3339; default: the same instant)
    #[arg(long, global = true, hide = true)]
    pub policy_time_origin: Option<String>,
    /// For benchmarks: the update policy is evaluated this often (milliseconds) while nothing
    /// moves (1000, at least 10)
    #[arg(long, global = true, hide = true, default_value_t = 1000)]
    pub policy_every_ms: u64,
}

/// The update policy's clock: real time, or, for tests, time that runs `scale` times faster from
/// an origin, the same on every node and across restarts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyClock {
    scale: f64,
    real0: i64,
    policy0: i64,
}

impl PolicyClock {
    pub const REAL: PolicyClock = PolicyClock { scale: 1.0, real0: 0, policy0: 0 };

    /// `scale` times faster than real time; at `origin` (`REAL_MS` or `REAL_MS=INSTANT`) it reads
    /// INSTANT.
    pub fn scaled(scale: f64, origin: &str) -> Result<PolicyClock, String> {
        if !(scale.is_finite() && scale >= 1.0) {
            return Err("--policy-time-scale must be a number, at least 1".into());
        }
        let bad = || format!("--policy-time-origin {origin:?}: expected REAL_MS or REAL_MS=2026-03-02T00:00:00Z");
        let (real, at) = origin.split_once('=').map_or((origin, None), |(r, a)| (r, Some(a)));
        let real0: i64 = real.trim().parse().map_err(|_| bad())?;
        let policy0 = match at {
            None => real0,
            Some(a) => a.trim().parse::<jiff::Timestamp>().map_err(|_| bad())?.as_millisecond(),
        };
        Ok(PolicyClock { scale, real0, policy0 })
    }

    /// The policy's time (milliseconds since the epoch) at `real_ms`.
    pub fn at(&self, real_ms: i64) -> i64 {
        if self.scale == 1.0 {
            return real_ms - self.real0 + self.policy0;
        }
        self.policy0 + ((real_ms - self.real0) as f64 * self.scale) as i64
    }

    /// The policy's time now.
    pub fn now(&self) -> i64 {
        self.at(edge_agent_base::time::now_ms())
    }

    /// How many policy milliseconds pass in one real one.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the data lives: SQLite in a directory (the default), or PostgreSQL.
    pub store: StoreConfig,
    /// Redis, joining this node to the others that share it and the store.
    pub redis: Option<String>,
    /// How long an agent stays "connected" when the node holding its socket stops renewing it.
    pub presence_ttl: Duration,
    pub token_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// Threads that serve connections.
    pub connection_threads: usize,
    pub max_message_bytes: usize,
    /// A release directory served at `/releases/`, if any.
    pub releases: Option<PathBuf>,
    /// A second address that serves `/metrics` without a token, for a scraper on a private network.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a web page session lasts after sign-in.
    pub session_ttl: Duration,
    /// How long the audit trail keeps an event.
    pub audit_retention: Duration,
    /// The benchmark's baseline: no audit event is recorded.
    pub audit_off: bool,
    /// The public base URL and the proxies whose forwarded headers are believed.
    pub proxies: Proxies,
    pub limits: Limits,
    /// The update policy's clock.
    pub policy_clock: PolicyClock,
    /// How often the update policy is evaluated while nothing moves.
    pub policy_every: Duration,
}

/// The longest `--heartbeat-interval`, in seconds (an hour): an agent silent for three is dropped.
const MAX_HEARTBEAT_INTERVAL: f64 = 3600.0;
/// The longest an access token or a page session may be issued for: a credential that outlives
/// this is one nobody remembers to take back (and its expiry, in milliseconds, stays far from
/// overflowing).
const MAX_CREDENTIAL_TTL: u64 = 30 * 24 * 3600;

/// The most `--connection-threads`.
const MAX_CONNECTION_THREADS: usize = 1024;

impl Flags {
    /// The one place the flags become a [`ServerConfig`]; the error names the flag.
    pub fn validate(&self) -> Result<ServerConfig, String> {
        if !(self.heartbeat_interval > 0.0 && self.heartbeat_interval <= MAX_HEARTBEAT_INTERVAL) {
            return Err(format!(
                "--heartbeat-interval: give a number of seconds above 0 and at most {MAX_HEARTBEAT_INTERVAL}"
            ));
        }
        let connection_threads = match self.connection_threads {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n @ 1..=MAX_CONNECTION_THREADS) => n,
            Some(_) => return Err(format!("--connection-threads: give a number from 1 to {MAX_CONNECTION_THREADS}")),
        };
        let base_url = self
            .public
            .base_url
            .as_deref()
            .map(normalize_base_url)
            .transpose()
            .map_err(|why| format!("--base-url: {why}"))?;
        if self.redis.is_some() && self.store.database.is_none() {
            return Err("--redis needs --database: nodes joined by Redis must share one PostgreSQL database".into());
        }
        if self.audit_retention_days == 0 {
            return Err("--audit-retention-days must be at least 1".into());
        }
        for (flag, secs) in [("--token-ttl", self.token_ttl), ("--session-ttl", self.session_ttl)] {
            if !(1..=MAX_CREDENTIAL_TTL).contains(&secs) {
                return Err(format!("{flag}: give a number of seconds from 1 to {MAX_CREDENTIAL_TTL} (30 days)"));
            }
        }
        if self.presence_ttl < 3 {
            return Err("--presence-ttl must be at least 3 seconds".into());
        }
        let policy_clock = match &self.policy_time_origin {
            None if self.policy_time_scale == 1.0 => PolicyClock::REAL,
            None => return Err("--policy-time-scale needs --policy-time-origin".into()),
            Some(origin) => PolicyClock::scaled(self.policy_time_scale, origin)?,
        };
        let limits = self.limits.validate().map_err(|e| e.to_string())?;
        Ok(ServerConfig {
            proxies: Proxies { trusted: self.trusted_proxies.clone(), base_url },
            limits,
            listen: self.listen,
            store: self.store.store(),
            redis: self.redis.clone(),
            presence_ttl: Duration::from_secs(self.presence_ttl),
            token_ttl: Duration::from_secs(self.token_ttl),
            heartbeat_interval: Duration::from_secs_f64(self.heartbeat_interval),
            connection_threads,
            max_message_bytes: edge_agent_wire::message::DEFAULT_MAX_MESSAGE_BYTES,
            releases: self.public.releases.clone(),
            metrics_listen: self.metrics_listen,
            session_ttl: Duration::from_secs(self.session_ttl),
            audit_retention: Duration::from_secs(self.audit_retention_days * 86_400),
            audit_off: self.no_audit_for_benchmark,
            policy_clock,
            policy_every: Duration::from_millis(self.policy_every_ms.max(10)),
        })
    }
}

/// `https://host/prefix` → `https://host/prefix/`; only http and https URLs.
fn normalize_base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?} must be an http:// or https:// URL with a host"));
    }
    let text = url.to_string();
    Ok(if text.ends_with('/') { text } else { format!("{text}/") })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        flags: super::Flags,
    }

    fn validated(interval: &str) -> Result<(), String> {
        let cli = Cli::try_parse_from(["agent-server", "--heartbeat-interval", interval]).unwrap();
        cli.flags.validate().map(|_| ())
    }

    #[test]
    fn a_heartbeat_interval_of_no_time_or_beyond_an_hour_is_a_clear_error() {
        for v in ["1e300", "0", "NaN", "3600.5"] {
            assert_eq!(
                validated(v).unwrap_err(),
                "--heartbeat-interval: give a number of seconds above 0 and at most 3600",
                "{v}"
            );
        }
        for v in ["0.5", "10", "3600"] {
            assert!(!validated(v).is_err_and(|e| e.contains("heartbeat")), "{v}");
        }
    }

    /// Found by an attacker's probe: a TTL of 18446744073709551615 was taken, and each token
    /// issued then was refused (its expiry wrapped); 0 was taken too.
    #[test]
    fn token_and_session_lifetimes_are_from_a_second_to_30_days() {
        let ttl = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["agent-server"], args].concat()).unwrap();
            cli.flags.validate().map(|c| (c.token_ttl.as_secs(), c.session_ttl.as_secs()))
        };
        assert_eq!(ttl(&[]), Ok((3600, 28800)));
        assert_eq!(ttl(&["--token-ttl", "1", "--session-ttl", "2592000"]), Ok((1, 2_592_000)));
        for flag in ["--token-ttl", "--session-ttl"] {
            for bad in ["0", "2592001", "18446744073709551615"] {
                let err = ttl(&[flag, bad]).unwrap_err();
                assert_eq!(err, format!("{flag}: give a number of seconds from 1 to 2592000 (30 days)"), "{bad}");
            }
        }
    }

    #[test]
    fn connection_threads_are_one_per_core_unless_given_from_1_to_1024() {
        let threads = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["agent-server"], args].concat()).unwrap();
            cli.flags.validate().map(|c| c.connection_threads)
        };
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(threads(&[]), Ok(cores));
        assert_eq!(threads(&["--connection-threads", "1"]), Ok(1));
        assert_eq!(threads(&["--connection-threads", "1024"]), Ok(1024));
        for n in ["0", "1025"] {
            assert_eq!(
                threads(&["--connection-threads", n]),
                Err("--connection-threads: give a number from 1 to 1024".to_string()),
                "{n}"
            );
        }
    }
}
