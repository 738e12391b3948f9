//! The limits' flags, each with its default shown in `--help`, validated once into [`Limits`].
//! Every limit is on: a flag can raise or lower one, never turn it off. `SECURITY.md` and the
//! README list the same defaults.

use std::time::Duration;

/// The HTTP, WebSocket and sign-in limits of `agent-server` (flattened into its flags).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitFlags {
    /// Seconds a client has to send a request's headers, from the connection's start or from the
    /// first byte of the request (closed when late)
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a client has to send a request's whole body once its headers are in (408 when late)
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Seconds a kept-alive connection may wait for its next request (closed when idle longer)
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Open connections at most, agents' sockets included (more: 503 with Retry-After); lowered
    /// at start to what the open-file limit allows
    #[arg(long, value_name = "N", default_value_t = 19_000)]
    pub max_connections: usize,
    /// Open connections at most from one client address (IPv6: one /64) that have not
    /// authenticated yet (more: 503 with Retry-After); trusted proxies are exempt
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_anonymous_per_ip: usize,
    /// Connections at most that one client's credentials (an agent's, a script's, a page
    /// session's) keep from giving way; past it, its further connections count as not
    /// authenticated (against their address's cap, and closed first when the server is full);
    /// agents' sockets apart (an agent keeps three)
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections_per_client: usize,
    /// Agent WebSockets at most that have not completed their handshake, shared fairly between
    /// client addresses (more: a newcomer from an address holding fewer takes the oldest place of
    /// the address holding the most; else 503)
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub max_anonymous_sockets: usize,
    /// Seconds an agent WebSocket has to complete its handshake (closed when late)
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub handshake_timeout: f64,
    /// Bytes an agent WebSocket may send before its handshake completes (closed beyond)
    #[arg(long, value_name = "BYTES", default_value_t = 8_192)]
    pub max_anonymous_frame: usize,
    /// Messages (frames) a second an agent's socket may send once connected, in bursts of ten
    /// times that (more: the server reads its next message later, and the agent's sends wait)
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub agent_message_rate: u32,
    /// Token requests and page sign-ins per minute from one client address (more: 429)
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub auth_rate_per_ip: u32,
    /// Tokens and page sessions issued per minute to one client (more: 429)
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub issue_rate_per_client: u32,
    /// Unexpired tokens kept per client; issuing one more revokes the oldest
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_tokens_per_client: usize,
}

/// The limits, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_anonymous_per_ip: usize,
    pub max_connections_per_client: usize,
    pub max_anonymous_sockets: usize,
    pub handshake_timeout: Duration,
    pub max_anonymous_frame: usize,
    pub agent_message_rate: u32,
    pub auth_rate_per_ip: u32,
    pub issue_rate_per_client: u32,
    pub max_tokens_per_client: usize,
}

/// A limit's flag given a value it cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--{flag} {value}: {why}")]
pub struct LimitError {
    pub flag: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn seconds(flag: &'static str, value: f64) -> Result<Duration, LimitError> {
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        return Ok(Duration::from_secs_f64(value));
    }
    Err(LimitError { flag, value: value.to_string(), why: "give a number of seconds above 0 and at most 86400" })
}

fn count<T: Copy + Into<u64> + ToString>(flag: &'static str, value: T) -> Result<T, LimitError> {
    if value.into() > 0 {
        return Ok(value);
    }
    Err(LimitError { flag, value: value.to_string(), why: "limits cannot be turned off: give at least 1" })
}

fn size(flag: &'static str, value: usize) -> Result<usize, LimitError> {
    count(flag, value as u64).map(|v| v as usize)
}

impl LimitFlags {
    /// The one place these flags become [`Limits`]; the error names the flag and the value.
    pub fn validate(&self) -> Result<Limits, LimitError> {
        Ok(Limits {
            header_timeout: seconds("header-timeout", self.header_timeout)?,
            body_timeout: seconds("body-timeout", self.body_timeout)?,
            idle_timeout: seconds("idle-timeout", self.idle_timeout)?,
            max_connections: size("max-connections", self.max_connections)?,
            max_anonymous_per_ip: size("max-anonymous-per-ip", self.max_anonymous_per_ip)?,
            max_connections_per_client: size("max-connections-per-client", self.max_connections_per_client)?,
            max_anonymous_sockets: size("max-anonymous-sockets", self.max_anonymous_sockets)?,
            handshake_timeout: seconds("handshake-timeout", self.handshake_timeout)?,
            max_anonymous_frame: size("max-anonymous-frame", self.max_anonymous_frame)?,
            agent_message_rate: count("agent-message-rate", self.agent_message_rate)?,
            auth_rate_per_ip: count("auth-rate-per-ip", self.auth_rate_per_ip)?,
            issue_rate_per_client: count("issue-rate-per-client", self.issue_rate_per_client)?,
            max_tokens_per_client: size("max-tokens-per-client", self.max_tokens_per_client)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitFlags,
    }

    fn parse(args: &[&str]) -> Result<Limits, LimitError> {
        Cli::parse_from(std::iter::once("agent-server").chain(args.iter().copied())).limits.validate()
    }

    #[test]
    fn defaults_are_on_and_small_values_are_accepted() {
        let l = parse(&[]).unwrap();
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!((l.max_connections, l.max_anonymous_per_ip, l.max_anonymous_sockets), (19_000, 256, 1_000));
        let fast = parse(&["--header-timeout", "0.2", "--idle-timeout", "0.5"]).unwrap();
        assert_eq!((fast.header_timeout, fast.idle_timeout), (Duration::from_millis(200), Duration::from_millis(500)));
    }

    #[test]
    fn a_limit_cannot_be_turned_off() {
        let e = parse(&["--max-connections", "0"]).unwrap_err();
        assert_eq!(e.to_string(), "--max-connections 0: limits cannot be turned off: give at least 1");
        assert_eq!(parse(&["--body-timeout", "0"]).unwrap_err().flag, "body-timeout");
        assert_eq!(parse(&["--idle-timeout", "inf"]).unwrap_err().flag, "idle-timeout");
        assert_eq!(parse(&["--auth-rate-per-ip", "0"]).unwrap_err().flag, "auth-rate-per-ip");
    }
}
