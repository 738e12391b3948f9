//! The Redis client for a `--redis` URL: plain `redis://`, or TLS with `rediss://` on the
//! workspace's one TLS stack (rustls on ring), trusting the system's roots or, with
//! `?cacert=FILE` (redis-cli's name for it), the CA certificates in that PEM file only. A
//! connection that fails says why in words that point at the fix.

use redis::{IntoConnectionInfo, ProtocolVersion, TlsCertificates};

use super::BusError;
use edge_agent_base::secret::redact_url;

/// The URL without its `cacert` parameter, and that parameter.
fn split(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_string(), None) };
    let (mut kept, mut ca) = (Vec::new(), None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match url::form_urlencoded::parse(pair.as_bytes()).next() {
            Some((k, v)) if k == "cacert" => ca = Some(v.into_owned()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (rest, ca)
}

/// A client for `url` speaking RESP3 (for pushes), over TLS as the URL says.
pub fn client(url: &str) -> Result<redis::Client, BusError> {
    let bad = |why: String| BusError::Url { url: redact_url(url), why };
    let (rest, ca) = split(url);
    let info = rest.as_str().into_connection_info().map_err(|e| bad(e.to_string()))?;
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    let Some(ca) = ca else { return redis::Client::open(info).map_err(|e| bad(e.to_string())) };
    if !rest.starts_with("rediss://") {
        return Err(bad("cacert is for TLS: use a rediss:// URL".into()));
    }
    let pem = std::fs::read(&ca).map_err(|e| bad(format!("cannot read cacert {ca}: {e}")))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad(format!("cacert {ca} holds no PEM certificate")));
    }
    redis::Client::build_with_tls(info, TlsCertificates { client_tls: None, root_cert: Some(pem) })
        .map_err(|e| bad(format!("cacert {ca}: {e}")))
}

/// The error of a first connection that failed, with what to check when TLS refused it.
pub fn connect_failed(url: &str, e: BusError) -> BusError {
    let why = edge_agent_base::error::error_chain(&e);
    let hint = edge_agent_base::tls::hint(&why, "?cacert=FILE");
    BusError::Connect { url: redact_url(url), why: format!("{why}{hint}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cacert_comes_off_the_url_and_needs_tls() {
        assert_eq!(
            split("rediss://h:6380/0?cacert=%2Fetc%2Fca.pem"),
            ("rediss://h:6380/0".into(), Some("/etc/ca.pem".into()))
        );
        assert_eq!(
            split("rediss://h/0?protocol=resp3&cacert=/ca.pem"),
            ("rediss://h/0?protocol=resp3".into(), Some("/ca.pem".into()))
        );
        assert_eq!(split("redis://h/0"), ("redis://h/0".into(), None));
        let err = client("redis://h/0?cacert=/ca.pem").err().unwrap().to_string();
        assert_eq!(err, "Redis URL redis://h/0?cacert=/ca.pem: cacert is for TLS: use a rediss:// URL");
        let err = client("rediss://:pw@h/0?cacert=/nonexistent.pem").err().unwrap().to_string();
        assert!(
            err.starts_with("Redis URL rediss://:***@h/0?cacert=/nonexistent.pem: cannot read cacert /nonexistent.pem"),
            "{err}"
        );
    }
}
