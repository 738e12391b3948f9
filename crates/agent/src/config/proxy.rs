//! The proxy keys (`proxy_url`, `no_proxy`, `proxy_auth`) and the environment's proxy variables,
//! validated into [`crate::proxy::Proxies`]: the `proxy_auth` file is read here, once.

use std::path::Path;

use super::ConfigError;

/// The proxies the keys and the environment give; the `proxy_auth` file read here.
pub(super) fn proxies(
    proxy_url: &Option<String>,
    no_proxy: &Option<String>,
    proxy_auth: Option<&Path>,
    env: &[(String, String)],
) -> Result<crate::proxy::Proxies, ConfigError> {
    let auth = match proxy_auth {
        None => None,
        Some(path) => {
            let shown = path.display();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::invalid("proxy_auth", &shown, format!("cannot read it ({e})")))?;
            let creds = crate::proxy::Credentials::parse(&text);
            Some(creds.ok_or_else(|| {
                ConfigError::invalid("proxy_auth", &shown, "expected user:password on its first line")
            })?)
        }
    };
    let settings =
        crate::proxy::ProxySettings { proxy_url: proxy_url.as_deref(), no_proxy: no_proxy.as_deref(), auth, env };
    crate::proxy::Proxies::resolve(&settings).map_err(|e| ConfigError::Invalid {
        key: e.key,
        value: e.value,
        problem: e.problem,
    })
}
