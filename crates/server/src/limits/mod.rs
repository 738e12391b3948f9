//! What keeps a peer without credentials from taking the server down: every limit on by
//! default, each a flag ([`flags`]), each counted in `/metrics` when it bites.
//!
//! The pieces, in the order a connection meets them:
//! - [`accept`]: the accept loops, one on each connection thread with a listener of its own on
//!   the node's address: a loop never stops on an accept error (out of file descriptors, it
//!   backs off and goes on), admits a connection under the caps or answers it 503 with
//!   `Retry-After` (`/healthcheck` still answered), and serves it with hyper.
//! - [`conns`]: who holds a connection: the caps on open connections, on those from one address
//!   that have not authenticated, and on agent sockets before their handshake; a connection
//!   becomes authenticated when a handler accepts its credentials.
//! - [`head`]: a connection's first request head, read in a buffer as small as what was sent
//!   before hyper takes the connection.
//! - [`clock`]: the header and idle deadlines of one connection, and the byte count that caps
//!   what an agent socket may send before its handshake ([`clock::Counted`]).
//! - [`body`]: the request body deadline (408) and size (413).
//! - [`threads`]: the threads that accept and serve the connections, a single-threaded runtime
//!   per core.
//! - [`throttle`]: the token endpoint's and the page sign-in's rates per address and per client.

pub mod accept;
pub mod body;
pub mod clock;
pub mod conns;
pub mod flags;
pub mod head;
pub mod threads;
pub mod throttle;

use std::net::IpAddr;

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use axum::response::IntoResponse;

pub use flags::{LimitFlags, Limits};

/// Seconds a client refused by a cap is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 5;

/// The answer of a cap: `503` with `Retry-After` and an `OperationOutcome` that says why; the
/// connection is closed after it.
pub fn busy(text: &str) -> Response<Body> {
    let outcome = serde_json::json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "throttled", "details": {"text": text}}]});
    let headers = [
        (header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()),
        (header::CONTENT_TYPE, "application/fhir+json".to_string()),
        (header::CONNECTION, "close".to_string()),
    ];
    (StatusCode::SERVICE_UNAVAILABLE, headers, outcome.to_string()).into_response()
}

/// The address a per-client limit counts under: an IPv4 address, or the /64 of an IPv6 one (a
/// single host is commonly given a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(a, address_key("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
