//! The WebSocket's byte stream to the server: a TCP connection, direct or through an HTTP
//! `CONNECT` tunnel (TLS to the proxy first when its URL is `https://`). TLS to the server, for
//! `wss://`, runs inside the stream this returns. A proxy's refusal is an error that names the
//! proxy and what it answered.

use std::sync::Arc;

use base64::Engine;
use reqwest::Url;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Proxy, Route};

/// A connected byte stream: plain TCP, or TLS to an `https://` proxy.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// The longest answer to `CONNECT` that is read.
const MAX_ANSWER: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot connect to {target}")]
    Direct { target: String, source: std::io::Error },
    #[error("cannot reach the proxy {proxy}")]
    Unreachable { proxy: String, source: std::io::Error },
    #[error("TLS to the proxy {proxy} failed")]
    Tls { proxy: String, source: std::io::Error },
    #[error("the proxy {proxy} asks for credentials ({answer}): give them in proxy_url (http://user:password@host:port) or in the file proxy_auth names")]
    AuthRequired { proxy: String, answer: String },
    #[error("the proxy {proxy} refused the credentials ({answer}): check proxy_url or the proxy_auth file")]
    AuthRefused { proxy: String, answer: String },
    #[error("the proxy {proxy} refused a tunnel to {target} ({answer}): it must allow CONNECT to this host and port")]
    Refused { proxy: String, target: String, answer: String },
    #[error("the proxy {proxy} closed the tunnel to {target} before answering")]
    Closed { proxy: String, target: String },
    #[error("the proxy {proxy} gave no HTTP answer to CONNECT {target}: {detail}")]
    Garbled { proxy: String, target: String, detail: String },
}

/// `host:port` of a URL, its port defaulted by scheme (`ws` 80, `wss` 443).
pub fn authority(url: &Url) -> String {
    let port = url.port_or_known_default().unwrap_or(80);
    match url.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]:{port}"),
        _ => format!("{}:{port}", url.host_str().unwrap_or_default()),
    }
}

/// A stream to `target`'s host and port, by `route`; `tls` is trusted for an `https://` proxy.
pub async fn open(
    target: &Url,
    route: Route<'_>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Stream, TunnelError> {
    let to = authority(target);
    let proxy = match route {
        Route::Direct(_) => {
            let tcp = TcpStream::connect(&to).await.map_err(|source| TunnelError::Direct { target: to, source })?;
            let _ = tcp.set_nodelay(true);
            return Ok(Box::new(tcp));
        }
        Route::Via(p) => p,
    };
    let named = proxy.to_string();
    let tcp = TcpStream::connect(proxy.authority())
        .await
        .map_err(|source| TunnelError::Unreachable { proxy: named.clone(), source })?;
    let _ = tcp.set_nodelay(true);
    let mut stream: Stream = match proxy.url.scheme() {
        "https" => Box::new(to_proxy_tls(proxy, tcp, tls).await?),
        _ => Box::new(tcp),
    };
    connect_through(&mut stream, proxy, &to).await?;
    Ok(stream)
}

async fn to_proxy_tls(
    proxy: &Proxy,
    tcp: TcpStream,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TunnelError> {
    let fail = |source| TunnelError::Tls { proxy: proxy.to_string(), source };
    let config = tls.cloned().ok_or_else(|| fail(std::io::Error::other("no TLS configuration")))?;
    let name = rustls::pki_types::ServerName::try_from(proxy.url.host_str().unwrap_or_default().to_string())
        .map_err(|e| fail(std::io::Error::other(e)))?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(fail)
}

/// Sends `CONNECT to` (with the proxy's credentials) and reads the answer: a 2xx opens the tunnel.
async fn connect_through(stream: &mut Stream, proxy: &Proxy, to: &str) -> Result<(), TunnelError> {
    let mut ask = format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n");
    if let Some(c) = &proxy.auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password()));
        ask += &format!("Proxy-Authorization: Basic {token}\r\n");
    }
    ask += "\r\n";
    let named = proxy.to_string();
    let closed = || TunnelError::Closed { proxy: named.clone(), target: to.to_string() };
    stream.write_all(ask.as_bytes()).await.map_err(|_| closed())?;
    // Byte by byte: nothing after the answer's blank line may be taken from the tunnel.
    let mut answer = Vec::with_capacity(256);
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_ANSWER {
            let detail = format!("an answer longer than {MAX_ANSWER} bytes");
            return Err(TunnelError::Garbled { proxy: named, target: to.into(), detail });
        }
        match stream.read_u8().await {
            Ok(b) => answer.push(b),
            Err(_) => return Err(closed()),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or_default();
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
    let answer = line.split_once(' ').map(|(_, rest)| rest.trim().to_string()).unwrap_or_default();
    match status {
        _ if !line.starts_with("HTTP/1.") => {
            Err(TunnelError::Garbled { proxy: named, target: to.into(), detail: format!("{line:?}") })
        }
        Some(200..=299) => Ok(()),
        // 401 is what some proxies (tinyproxy) answer to wrong credentials.
        Some(401 | 407) if proxy.auth.is_none() => Err(TunnelError::AuthRequired { proxy: named, answer }),
        Some(401 | 407) => Err(TunnelError::AuthRefused { proxy: named, answer }),
        Some(_) => Err(TunnelError::Refused { proxy: named, target: to.into(), answer }),
        None => Err(TunnelError::Garbled { proxy: named, target: to.into(), detail: format!("{line:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{Credentials, Proxies, ProxySettings};
    use tokio::net::TcpListener;

    /// A proxy that reads one request and answers `answer` (or closes at once when empty); what
    /// it received.
    async fn one_shot(answer: &'static str) -> (Proxies, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).await.unwrap();
            if !answer.is_empty() {
                s.write_all(answer.as_bytes()).await.unwrap();
                s.write_all(b"after").await.unwrap();
            }
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        let url = format!("http://{addr}");
        let s =
            ProxySettings { proxy_url: Some(&url), auth: Some(Credentials::new("agent", "pw")), ..Default::default() };
        (Proxies::resolve(&s).unwrap(), task)
    }

    #[tokio::test]
    async fn a_tunnel_opens_on_200_and_keeps_what_follows() {
        let (proxies, task) = one_shot("HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n").await;
        let target = Url::parse("wss://server.example/ws/agent").unwrap();
        let mut s = open(&target, proxies.route(&target), None).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
        let sent = task.await.unwrap();
        assert!(sent.starts_with("CONNECT server.example:443 HTTP/1.1\r\nHost: server.example:443\r\n"), "{sent}");
        assert!(sent.contains("Proxy-Authorization: Basic YWdlbnQ6cHc=\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn each_refusal_names_the_proxy_and_its_answer() {
        let cases = [
            (
                "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                "refused the credentials (407 Proxy Authentication Required)",
            ),
            ("HTTP/1.0 403 Access violation\r\n\r\n", "refused a tunnel to server.example:8103 (403 Access violation)"),
            ("", "closed the tunnel to server.example:8103 before answering"),
            ("SSH-2.0-OpenSSH\r\n\r\n", "gave no HTTP answer"),
        ];
        for (answer, want) in cases {
            let (proxies, task) = one_shot(answer).await;
            let target = Url::parse("ws://server.example:8103/ws/agent").unwrap();
            let e = open(&target, proxies.route(&target), None).await.err().unwrap().to_string();
            assert!(e.contains(want) && e.contains("the proxy http://agent@127.0.0.1:"), "{e}");
            assert!(!e.contains("pw"), "{e}");
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_absent_proxy_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}");
        let proxies = Proxies::resolve(&ProxySettings { proxy_url: Some(&url), ..Default::default() }).unwrap();
        let target = Url::parse("ws://server.example/ws/agent").unwrap();
        let e = open(&target, proxies.route(&target), None).await.err().unwrap();
        let chain = edge_agent_base::error::error_chain(&e);
        assert!(chain.contains(&format!("cannot reach the proxy http://{addr} (from proxy_url)")), "{chain}");
        assert!(chain.to_lowercase().contains("refused"), "{chain}");
    }
}
