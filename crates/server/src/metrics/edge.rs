//! What the server's edge counts: each limit as it bites (`agent_server_limit_hits_total`, one
//! label value per limit, all shown from the start at 0), failed authentications by where they
//! failed, accept errors, and the open connections (all, and those not yet authenticated). Every
//! label value comes from the enums here: nothing a client sends becomes a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A limit that bit, named as `/metrics` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// A request's headers were not in within `--header-timeout`: the connection was closed.
    HeaderTimeout,
    /// A request's body was not in within `--body-timeout`: 408.
    BodyTimeout,
    /// A kept-alive connection sent no request within `--idle-timeout`: closed.
    IdleTimeout,
    /// `--max-connections` was reached: 503.
    Connections,
    /// `--max-anonymous-per-ip` was reached for the client's address: 503.
    AnonymousPerIp,
    /// `--max-anonymous-sockets` was reached: 503.
    AnonymousSockets,
    /// An agent socket did not complete its handshake within `--handshake-timeout`: closed.
    HandshakeTimeout,
    /// An agent socket sent more than `--max-anonymous-frame` bytes before its handshake: closed.
    AnonymousFrame,
    /// `--auth-rate-per-ip` was reached: 429.
    AuthRatePerIp,
    /// `--issue-rate-per-client` was reached: 429.
    IssueRatePerClient,
    /// A token was revoked to keep `--max-tokens-per-client`.
    TokensPerClient,
    /// A request body over 2 MiB: 413.
    BodySize,
    /// A request head over 64 KiB: 431.
    HeaderSize,
    /// An agent's socket sent past `--agent-message-rate`: its next message was read later.
    AgentMessageRate,
    /// A client's credentials were accepted on more than `--max-connections-per-client`
    /// connections: the newest stays counted as anonymous.
    ConnectionsPerClient,
}

impl Limit {
    pub const ALL: [Limit; 15] = [
        Limit::HeaderTimeout,
        Limit::BodyTimeout,
        Limit::IdleTimeout,
        Limit::Connections,
        Limit::AnonymousPerIp,
        Limit::AnonymousSockets,
        Limit::HandshakeTimeout,
        Limit::AnonymousFrame,
        Limit::AuthRatePerIp,
        Limit::IssueRatePerClient,
        Limit::TokensPerClient,
        Limit::BodySize,
        Limit::HeaderSize,
        Limit::AgentMessageRate,
        Limit::ConnectionsPerClient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::HeaderTimeout => "header_timeout",
            Limit::BodyTimeout => "body_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::Connections => "connections",
            Limit::AnonymousPerIp => "anonymous_per_ip",
            Limit::AnonymousSockets => "anonymous_sockets",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::AnonymousFrame => "anonymous_frame",
            Limit::AuthRatePerIp => "auth_rate_per_ip",
            Limit::IssueRatePerClient => "issue_rate_per_client",
            Limit::TokensPerClient => "tokens_per_client",
            Limit::BodySize => "body_size",
            Limit::HeaderSize => "header_size",
            Limit::AgentMessageRate => "agent_message_rate",
            Limit::ConnectionsPerClient => "connections_per_client",
        }
    }
}

/// Where credentials were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// `POST /oauth2/token`.
    Token,
    /// The web page's sign-in.
    SignIn,
    /// A bearer token or HTTP Basic credentials on the REST API or `/metrics`.
    Api,
    /// An agent socket's `agent:connect:request`.
    Socket,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 4] = [AuthFailure::Token, AuthFailure::SignIn, AuthFailure::Api, AuthFailure::Socket];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Token => "token",
            AuthFailure::SignIn => "sign_in",
            AuthFailure::Api => "api",
            AuthFailure::Socket => "socket",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

/// The open connections, as the accept loop counts them (these gauges are its counters).
#[derive(Clone, Default)]
pub struct ConnectionGauges {
    /// Every open connection, agents' sockets included.
    pub open: Gauge,
    /// Open connections that have not authenticated.
    pub anonymous: Gauge,
    /// Agent sockets that have not completed their handshake.
    pub anonymous_sockets: Gauge,
}

/// The edge's counters and gauges.
#[derive(Clone, Default)]
pub struct EdgeMetrics {
    hits: Family<LimitLabel, Counter>,
    auth_failures: Family<EndpointLabel, Counter>,
    accept_errors: Counter,
    pub connections: ConnectionGauges,
}

impl EdgeMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register("agent_server_limit_hits", "Times each limit refused or closed something", self.hits.clone());
        r.register(
            "agent_server_failed_authentications",
            "Credentials refused, by where they were presented",
            self.auth_failures.clone(),
        );
        r.register(
            "agent_server_accept_errors",
            "Connections the listener could not accept (out of file descriptors, say); it backs off and goes on",
            self.accept_errors.clone(),
        );
        r.register(
            "agent_server_connections",
            "Open connections, agents' sockets included",
            self.connections.open.clone(),
        );
        r.register(
            "agent_server_anonymous_connections",
            "Open connections that have not authenticated",
            self.connections.anonymous.clone(),
        );
        r.register(
            "agent_server_anonymous_sockets",
            "Agent sockets that have not completed their handshake",
            self.connections.anonymous_sockets.clone(),
        );
        for l in Limit::ALL {
            let _ = self.hits.get_or_create(&LimitLabel { limit: l.as_str() });
        }
        for e in AuthFailure::ALL {
            let _ = self.auth_failures.get_or_create(&EndpointLabel { endpoint: e.as_str() });
        }
    }

    pub fn hit(&self, limit: Limit) {
        self.hits.get_or_create(&LimitLabel { limit: limit.as_str() }).inc();
    }

    pub fn hits(&self, limit: Limit) -> u64 {
        self.hits.get_or_create(&LimitLabel { limit: limit.as_str() }).get()
    }

    pub fn auth_failed(&self, at: AuthFailure) {
        self.auth_failures.get_or_create(&EndpointLabel { endpoint: at.as_str() }).inc();
    }

    pub fn accept_failed(&self) {
        self.accept_errors.inc();
    }
}
