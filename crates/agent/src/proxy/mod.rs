//! HTTP proxies, for everything the agent sends (token, WebSocket, manifests, downloads). Which
//! proxy, if any, is decided once, when the configuration is validated ([`Proxies::resolve`]),
//! and for each URL by one pure function ([`Proxies::route`]) that both the HTTP client
//! ([`crate::http`]) and the WebSocket ([`tunnel`]) use.
//!
//! Precedence: the `proxy_url` key (a flag, `EDGE_AGENT_PROXY_URL` or the file) wins over the
//! environment, and `proxy_url = ""` means no proxy whatever the environment says; else, for
//! `https`/`wss` URLs `https_proxy`, `HTTPS_PROXY`, then `all_proxy`, `ALL_PROXY`, and for
//! `http`/`ws` URLs `http_proxy`, `HTTP_PROXY`, then the same two (lower case first, as curl).
//! `no_proxy` (the key) replaces `no_proxy`/`NO_PROXY` ([`no_proxy`]). Basic credentials come
//! from the proxy URL or, winning over it, from the file `proxy_auth` names (`user:password`);
//! they are never shown.

pub mod no_proxy;
pub mod tunnel;

use std::fmt;

use reqwest::Url;

pub use no_proxy::NoProxy;

/// The environment variables read, lower case first within each pair.
pub const ENV_VARS: [&str; 8] =
    ["https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"];

/// Basic credentials for a proxy; the password never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl Credentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials { user: user.into(), password: password.into() }
    }
    pub fn password(&self) -> &str {
        &self.password
    }
    /// `user:password`, the first line of a `proxy_auth` file.
    pub fn parse(text: &str) -> Option<Credentials> {
        let line = text.lines().next()?.trim_end_matches('\r');
        let (user, password) = line.split_once(':')?;
        (!user.is_empty()).then(|| Credentials::new(user, password))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***", self.user)
    }
}

/// One proxy: where it is, how to authenticate, and which setting named it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    /// `http://host:port/` or `https://host:port/`, without credentials.
    pub url: Url,
    pub auth: Option<Credentials>,
    /// The key or environment variable it came from.
    pub from: &'static str,
}

impl Proxy {
    /// The proxy URL with its credentials, for the HTTP client only.
    pub fn url_with_auth(&self) -> Url {
        let mut url = self.url.clone();
        if let Some(c) = &self.auth {
            let _ = url.set_username(&encode(&c.user));
            let _ = url.set_password(Some(&encode(&c.password)));
        }
        url
    }

    /// `host:port` of the proxy.
    pub fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        format!("{host}:{}", self.url.port_or_known_default().unwrap_or(80))
    }
}

impl fmt::Display for Proxy {
    /// `http://proxy.example:3128 (from HTTPS_PROXY)`; with credentials, only the user name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.auth.as_ref().map(|c| format!("{}@", c.user)).unwrap_or_default();
        write!(f, "{}://{user}{} (from {})", self.url.scheme(), self.authority(), self.from)
    }
}

/// What the configuration says about proxies, resolved once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proxies {
    /// For `http://` and `ws://` URLs.
    pub http: Option<Proxy>,
    /// For `https://` and `wss://` URLs.
    pub https: Option<Proxy>,
    pub no_proxy: NoProxy,
    /// `proxy_url = ""`: proxies are off, whatever the environment says.
    pub off: bool,
}

/// How a URL is reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route<'a> {
    Direct(Direct),
    Via(&'a Proxy),
}

/// Why a URL is reached directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// No proxy configured for its scheme.
    NoProxy,
    /// `proxy_url = ""`.
    Off,
    /// It matches `no_proxy`.
    Excluded,
}

impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Via(p) => write!(f, "via the proxy {p}"),
            Route::Direct(Direct::NoProxy) => f.write_str("direct (no proxy configured)"),
            Route::Direct(Direct::Off) => f.write_str("direct (proxy_url = \"\" turns proxies off)"),
            Route::Direct(Direct::Excluded) => f.write_str("direct (it matches no_proxy)"),
        }
    }
}

/// The proxy a route goes through, as `agent status` shows it; None when direct.
pub fn in_use(route: Route<'_>) -> Option<String> {
    match route {
        Route::Via(p) => Some(p.to_string()),
        Route::Direct(_) => None,
    }
}

/// What the configuration gives, before it is resolved: the keys, and the environment.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings<'a> {
    pub proxy_url: Option<&'a str>,
    pub no_proxy: Option<&'a str>,
    /// The contents of the `proxy_auth` file, if one is named.
    pub auth: Option<Credentials>,
    /// The standard variables, as (name, value).
    pub env: &'a [(String, String)],
}

/// A setting that is not a usable proxy: the key or variable, its value (credentials hidden), why.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub key: &'static str,
    pub value: String,
    pub problem: String,
}

impl Proxies {
    /// The proxies the settings give.
    pub fn resolve(s: &ProxySettings) -> Result<Proxies, Invalid> {
        let env = |name: &'static str| {
            s.env.iter().find(|(k, v)| k == name && !v.trim().is_empty()).map(|(_, v)| (name, v.trim()))
        };
        let first = |names: [&'static str; 4]| names.into_iter().find_map(env);
        let pick = |names| match s.proxy_url.map(str::trim) {
            Some("") => Ok(None),
            Some(url) => parse("proxy_url", url, &s.auth).map(Some),
            None => first(names).map(|(name, url)| parse(name, url, &s.auth)).transpose(),
        };
        let https = pick(["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"])?;
        let http = pick(["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"])?;
        let (key, list) = match s.no_proxy {
            Some(list) => ("no_proxy", Some(list)),
            None => match env("no_proxy").or_else(|| env("NO_PROXY")) {
                Some((name, list)) => (name, Some(list)),
                None => ("no_proxy", None),
            },
        };
        let no_proxy = NoProxy::parse(list.unwrap_or_default()).map_err(|problem| Invalid {
            key,
            value: list.unwrap_or_default().into(),
            problem,
        })?;
        Ok(Proxies { http, https, no_proxy, off: s.proxy_url.is_some_and(|u| u.trim().is_empty()) })
    }

    /// How `url` is reached: the one decision, for every request the agent makes.
    pub fn route(&self, url: &Url) -> Route<'_> {
        let proxy = match url.scheme() {
            "https" | "wss" => self.https.as_ref(),
            _ => self.http.as_ref(),
        };
        match proxy {
            None if self.off => Route::Direct(Direct::Off),
            None => Route::Direct(Direct::NoProxy),
            Some(_) if self.no_proxy.matches(url) => Route::Direct(Direct::Excluded),
            Some(p) => Route::Via(p),
        }
    }
}

/// A proxy URL as written (`proxy:3128` means `http://proxy:3128`): http or https, a host, no
/// path; its credentials, unless `proxy_auth` gives them.
fn parse(key: &'static str, text: &str, auth: &Option<Credentials>) -> Result<Proxy, Invalid> {
    let shown = edge_agent_base::secret::redact_url(text);
    let invalid = |problem: String| Invalid { key, value: shown.clone(), problem };
    let full = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    let mut url = Url::parse(&full).map_err(|e| invalid(format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        let problem = format!(
            "{} proxies are not supported, only http:// and https:// ones (proxy_url = \"\" turns proxies off)",
            url.scheme()
        );
        return Err(invalid(problem));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no proxy host in it".into()));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(invalid("a proxy URL has no path: scheme, host and port only".into()));
    }
    let from_url = (!url.username().is_empty())
        .then(|| Credentials::new(decode(url.username()), decode(url.password().unwrap_or_default())));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok(Proxy { url, auth: auth.clone().or(from_url), from: key })
}

/// Percent-decodes URL user information.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes user information for a URL.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests;
