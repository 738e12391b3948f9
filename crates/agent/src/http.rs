//! The HTTP client every outgoing request uses (token, release source): rustls with the system's
//! roots and the configured extra CA, built only as far as the configured URLs need it, and the
//! proxy that [`crate::proxy::Proxies::route`] picks for each URL (the environment is not read
//! again here).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::proxy::Route;
use edge_agent_base::build_info::version_str;
use edge_agent_base::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// The HTTP client, and the TLS configuration when an `https` URL or a CA file calls for one (the
/// WebSocket uses the same).
pub fn client(config: &Config) -> Result<(reqwest::Client, Option<Arc<rustls::ClientConfig>>), ClientError> {
    let https_proxy =
        [&config.proxy.http, &config.proxy.https].into_iter().flatten().any(|p| p.url.scheme() == "https");
    let needs_tls = https_proxy
        || config.base_url.scheme() == "https"
        || config.releases_url.as_ref().is_some_and(|u| u.scheme() == "https");
    let tls = if needs_tls || config.ca_file.is_some() {
        Some(tls::client_config(true, config.ca_file.as_deref())?)
    } else {
        None
    };
    let http_tls = match &tls {
        Some(t) => (**t).clone(),
        None => (*tls::client_config(false, None)?).clone(),
    };
    let proxies = config.proxy.clone();
    let route = reqwest::Proxy::custom(move |url| match proxies.route(url) {
        Route::Via(p) => Some(p.url_with_auth()),
        Route::Direct(_) => None,
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .proxy(route)
        .use_preconfigured_tls(http_tls)
        .connect_timeout(Duration::from_secs(4))
        .user_agent(format!("edge-agent/{}", version_str()))
        .build()
        .map_err(ClientError::Build)?;
    Ok((http, tls))
}

/// Why a bounded body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Read(#[from] reqwest::Error),
}

/// A response's body, at most `limit` bytes: a longer one (with or without a length) is given up
/// as soon as it passes the limit, with nothing more read or held.
pub async fn body_within(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Servers for tests that read bodies.
#[cfg(test)]
pub mod test_servers {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server on a free port that answers its first request 200 with a chunked body that never
    /// ends; its address, and how many body bytes it got out before the client stopped reading.
    pub async fn endless() -> (std::net::SocketAddr, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            let mut sent = 0usize;
            while s.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 64 * 1024;
            }
            sent
        });
        (addr, server)
    }
}
