//! The HTTP client every outgoing request uses (token, release source): rustls with the system's
//! roots and the configured extra CA, built only as far as the configured URLs need it, and the
//! proxy that [`crate::proxy::Proxies::route`] picks for each URL (the environment is not read
//! again here).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::proxy::Route;
use edge_agent_base::build_info::VERSION;
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
        .user_agent(format!("edge-agent/{VERSION}"))
        .build()
        .map_err(ClientError::Build)?;
    Ok((http, tls))
}
