//! Who is on the other end of a request, and where the client thinks this server is. The
//! forwarded headers (`Forwarded`, `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto`)
//! are read only from a peer inside a `--trusted-proxy` range, and `--base-url` wins over all of
//! them: anyone else could write them. Search links, `Content-Location`, the page's cross-site
//! check, its `Secure` cookie and the throttles all resolve through here, so they agree.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, bits) = match text.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text.trim(), None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address range: write it as 10.0.0.0/8 or fd00::/8"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be a number from 0 to {max}"))?,
        };
        Ok(Cidr { net: net.to_canonical(), bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix(u32::from(net).into(), u32::from(ip).into(), self.bits, 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix(u128::from(net), u128::from(ip), self.bits, 128),
            _ => false,
        }
    }
}

fn prefix(net: u128, ip: u128, bits: u8, width: u32) -> bool {
    let shift = width - u32::from(bits);
    shift >= width || (net >> shift) == (ip >> shift)
}

/// The proxies whose forwarded headers are believed, and the configured public URL.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    pub trusted: Vec<Cidr>,
    /// `--base-url`, normalized to end in `/`.
    pub base_url: Option<String>,
}

/// The peer of a request, as the accept loop saw it (None outside a real connection).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Self::Rejection> {
        Ok(Peer::of(parts))
    }
}

impl Peer {
    pub fn of(parts: &Parts) -> Peer {
        Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_canonical()))
    }
}

/// The elements of the `Forwarded` header, last one (the nearest proxy's) last, as
/// lowercase-keyed pairs.
fn forwarded_elements(headers: &HeaderMap) -> Vec<Vec<(String, String)>> {
    let text = headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    text.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_string()))
                })
                .collect()
        })
        .collect()
}

/// The last (nearest proxy's) value of a comma-separated header.
fn last_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    value.rsplit(',').map(str::trim).find(|v| !v.is_empty())
}

/// A host as a client may name this server: a DNS name or an address, with an optional port.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        && !host.starts_with(['.', '-', ':'])
}

/// An address as `X-Forwarded-For` or `Forwarded: for=` writes it (`[v6]:port`, `v4:port`).
fn forwarded_ip(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = t.strip_prefix('[') {
        return rest.split(']').next()?.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    t.rsplit_once(':')?.0.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Where the client reaches this server: `http` or `https`, and `host[:port]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub scheme: &'static str,
    pub host: String,
}

impl Proxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    fn trusted_peer(&self, peer: Peer) -> bool {
        peer.0.is_some_and(|ip| self.trusts(ip))
    }

    /// The client's address: the peer's, or, behind trusted proxies, the nearest address they
    /// forwarded that is not one of them.
    pub fn client_ip(&self, peer: Peer, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.trusted_peer(peer) {
            return peer.0;
        }
        let mut chain: Vec<IpAddr> = forwarded_elements(headers)
            .iter()
            .filter_map(|e| e.iter().find(|(k, _)| k == "for").and_then(|(_, v)| forwarded_ip(v)))
            .collect();
        if chain.is_empty() {
            let xff = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
            chain = xff.flat_map(|v| v.split(',')).filter_map(forwarded_ip).collect();
        }
        Some(chain.into_iter().rev().find(|ip| !self.trusts(*ip)).or(peer.0).unwrap_or(IpAddr::from([0, 0, 0, 0])))
    }

    /// Where the client reaches this server: `--base-url`; else what a trusted proxy forwarded
    /// (`Forwarded`, then `X-Forwarded-Host` and `-Proto`); else the `Host` header over plain
    /// HTTP; else `fallback` (the listening address).
    pub fn origin(&self, peer: Peer, headers: &HeaderMap, fallback: &str) -> Origin {
        if let Some(url) = self.base_url.as_deref().and_then(|b| reqwest::Url::parse(b).ok()) {
            let host = url.host_str().unwrap_or_default();
            let host = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            };
            return Origin { scheme: if url.scheme() == "https" { "https" } else { "http" }, host };
        }
        let direct = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| valid_host(h));
        let mut origin = Origin { scheme: "http", host: direct.unwrap_or(fallback).to_string() };
        if self.trusted_peer(peer) {
            let nearest = forwarded_elements(headers).pop().unwrap_or_default();
            let field = |k: &str| nearest.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
            let proto = field("proto").or_else(|| last_value(headers, "x-forwarded-proto"));
            if let Some(host) =
                field("host").or_else(|| last_value(headers, "x-forwarded-host")).filter(|h| valid_host(h))
            {
                origin.host = host.to_string();
            }
            if let Some(p) = proto {
                origin.scheme = if p.eq_ignore_ascii_case("https") { "https" } else { "http" };
            }
        }
        origin
    }

    /// The base URL of links to this server, ending in `/`.
    pub fn base(&self, peer: Peer, headers: &HeaderMap, fallback: &str) -> String {
        if let Some(base) = &self.base_url {
            return base.clone();
        }
        let o = self.origin(peer, headers, fallback);
        format!("{}://{}/", o.scheme, o.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn proxies(trusted: &[&str], base: Option<&str>) -> Proxies {
        Proxies { trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(), base_url: base.map(str::to_owned) }
    }

    const PROXY: Peer = Peer(Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5))));
    const STRANGER: Peer = Peer(Some(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9))));

    #[test]
    fn ranges() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()) && !c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped IPv6 is the IPv4 address");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("from 0 to 32"));
        assert!("proxy.example".parse::<Cidr>().unwrap_err().contains("not an address range"));
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let forged = headers(&[
            ("host", "127.0.0.1:8103"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ]);
        let p = proxies(&["10.0.0.0/8"], None);
        assert_eq!(p.base(STRANGER, &forged, "x"), "http://127.0.0.1:8103/");
        assert_eq!(p.base(PROXY, &forged, "x"), "https://evil.example/");
        let std = headers(&[("host", "node:1"), ("forwarded", "for=198.51.100.7;host=agents.example.org;proto=https")]);
        assert_eq!(p.base(PROXY, &std, "x"), "https://agents.example.org/");
        assert_eq!(p.base(STRANGER, &std, "x"), "http://node:1/");
        let with_base = proxies(&["10.0.0.0/8"], Some("https://fleet.example.org/"));
        assert_eq!(with_base.base(PROXY, &forged, "x"), "https://fleet.example.org/", "--base-url wins");
        assert_eq!(with_base.origin(STRANGER, &forged, "x").host, "fleet.example.org");
        let bad_host = headers(&[("host", "a b/<script>")]);
        assert_eq!(p.base(STRANGER, &bad_host, "127.0.0.1:8103"), "http://127.0.0.1:8103/");
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_address() {
        let p = proxies(&["10.0.0.0/8"], None);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.9")]);
        assert_eq!(
            p.client_ip(PROXY, &h),
            Some("198.51.100.7".parse().unwrap()),
            "a client cannot prepend its way out"
        );
        assert_eq!(p.client_ip(STRANGER, &h), STRANGER.0, "a stranger's headers are ignored");
        let fwd = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\", for=10.0.0.3")]);
        assert_eq!(p.client_ip(PROXY, &fwd), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(p.client_ip(PROXY, &HeaderMap::new()), PROXY.0, "nothing forwarded: the proxy itself");
    }
}
