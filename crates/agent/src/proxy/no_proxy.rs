//! `NO_PROXY` (and the `no_proxy` key): the hosts that are reached directly even when a proxy is
//! configured. Entries are separated by commas or spaces: `*` (every host), a domain name
//! (`example.org` or `.example.org`, which match the name itself and every name under it), an IP
//! address, a CIDR block (`10.0.0.0/8`, `fd00::/8`), each optionally with `:port`. Pure.

use std::fmt;
use std::net::IpAddr;

use reqwest::Url;

/// One entry of the list.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    All,
    Domain { name: String, port: Option<u16> },
    Net { addr: IpAddr, prefix: u8, port: Option<u16> },
}

/// The parsed list, and its text as given (for messages).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NoProxy {
    rules: Vec<Rule>,
    text: String,
}

impl fmt::Display for NoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `host:port` → the host and the port; an IPv6 address is written `[::1]:80` or bare.
fn split_port(entry: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = |p: &str| format!("{entry:?}: {p:?} is not a port");
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("{entry:?}: no closing ]"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(p.parse().map_err(|_| bad_port(p))?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("{entry:?} is not a host")),
        };
    }
    match entry.rsplit_once(':') {
        // Two colons or more: a bare IPv6 address, with or without a prefix length.
        Some((host, _)) if host.contains(':') => Ok((entry, None)),
        Some((host, p)) => Ok((host, Some(p.parse().map_err(|_| bad_port(p))?))),
        None => Ok((entry, None)),
    }
}

fn rule(entry: &str) -> Result<Rule, String> {
    if entry == "*" {
        return Ok(Rule::All);
    }
    let (host, port) = split_port(entry)?;
    let (addr, prefix) = match host.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (host, None),
    };
    if let Ok(addr) = addr.parse::<IpAddr>() {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{entry:?}: bad prefix"))?,
        };
        return Ok(Rule::Net { addr, prefix, port });
    }
    let name = host.trim_start_matches("*.").trim_start_matches('.').to_ascii_lowercase();
    let valid =
        !name.is_empty() && prefix.is_none() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if !valid {
        return Err(format!("{entry:?} is not a host name, an IP address or a CIDR block"));
    }
    Ok(Rule::Domain { name: name.trim_end_matches('.').to_string(), port })
}

/// Whether `addr` is inside `net/prefix`.
fn in_net(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (a, n, bits) = match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let shift = bits - prefix as u32;
    shift >= bits || (a >> shift) == (n >> shift)
}

impl NoProxy {
    /// Parses a list; an entry that is neither a host, an address nor a block is an error naming it.
    pub fn parse(text: &str) -> Result<NoProxy, String> {
        let rules = text
            .split([',', ' ', '\t'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(rule)
            .collect::<Result<_, _>>()?;
        Ok(NoProxy { rules, text: text.trim().to_string() })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `url` is to be reached directly.
    pub fn matches(&self, url: &Url) -> bool {
        let port = url.port_or_known_default();
        let port_ok = |want: &Option<u16>| want.is_none() || *want == port;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => Err(d.trim_end_matches('.').to_ascii_lowercase()),
            Some(url::Host::Ipv4(a)) => Ok(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => Ok(IpAddr::V6(a)),
            None => return false,
        };
        self.rules.iter().any(|r| match (r, &host) {
            (Rule::All, _) => true,
            (Rule::Domain { name, port: p }, Err(host)) => {
                port_ok(p) && (host == name || host.strip_suffix(name.as_str()).is_some_and(|s| s.ends_with('.')))
            }
            (Rule::Net { addr, prefix, port: p }, Ok(ip)) => port_ok(p) && in_net(*ip, *addr, *prefix),
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases = [
            ("*", "https://anything.example/", true),
            ("example.org", "https://example.org/", true),
            ("example.org", "https://api.example.org/x", true),
            ("example.org", "https://notexample.org/", false),
            (".example.org", "https://example.org/", true),
            ("*.example.org", "wss://a.b.example.org/ws/agent", true),
            ("EXAMPLE.org", "https://Api.Example.ORG/", true),
            ("example.org:8443", "https://example.org:8443/", true),
            ("example.org:8443", "https://example.org/", false),
            ("localhost, 127.0.0.1", "http://127.0.0.1:8103/", true),
            ("127.0.0.1", "http://127.0.0.2/", false),
            ("10.0.0.0/8", "http://10.20.30.40/", true),
            ("10.0.0.0/8", "http://11.0.0.1/", false),
            ("192.168.1.0/24:80", "http://192.168.1.9/", true),
            ("192.168.1.0/24:80", "http://192.168.1.9:81/", false),
            ("::1", "http://[::1]:8103/", true),
            ("[::1]:8103", "http://[::1]:8103/", true),
            ("fd00::/8", "http://[fd12::1]/", true),
            ("fd00::/8", "http://10.0.0.1/", false),
            ("0.0.0.0/0", "http://8.8.8.8/", true),
            ("", "http://example.org/", false),
            ("other.example  example.org", "http://example.org/", true),
        ];
        for (list, url, want) in cases {
            let np = NoProxy::parse(list).unwrap();
            assert_eq!(np.matches(&Url::parse(url).unwrap()), want, "{list:?} vs {url}");
        }
    }

    #[test]
    fn a_bad_entry_is_named() {
        for bad in ["exa mple/x", "10.0.0.0/33", "host:port", "[::1", "a/b"] {
            let e = NoProxy::parse(bad).unwrap_err();
            assert!(e.contains('"'), "{bad}: {e}");
        }
    }
}
