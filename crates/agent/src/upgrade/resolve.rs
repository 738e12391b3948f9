//! The release source (protocol.md §3.2), as the agent reads it: `latest.json` or
//! `v<version>.json` under the locally configured `releases_url` (checked by
//! [`edge_agent_release::manifest`]), the asset built for this platform, and its published
//! checksum. Every file is small and bounded in size.

use std::time::Duration;

use edge_agent_base::backoff::Backoff;
use edge_agent_base::build_info::version_str;
use edge_agent_release::manifest::{self, Asset, Manifest, ManifestError, Release};
use reqwest::{StatusCode, Url};
use semver::Version;

use super::error::UpgradeError;
use crate::http::{body_within, BodyError};

pub const APP_NAME: &str = "edge-agent";
const SMALL_FILE_LIMIT: usize = 1024 * 1024;

fn with_fleet_query(mut url: Url) -> Url {
    url.query_pairs_mut().append_pair("a", APP_NAME).append_pair("c", version_str());
    url
}

/// A manifest's problem, named with the manifest's URL.
fn manifest_error(url: &Url, e: ManifestError) -> UpgradeError {
    match e {
        ManifestError::Invalid(detail) => UpgradeError::BadManifest { url: url.to_string(), detail },
        ManifestError::NoAsset { version, platform } => UpgradeError::NoAsset { version, platform },
    }
}

/// How often a small file is asked for when the connection fails before an answer: a pooled
/// connection that the server or a proxy closed as the request went out is the common case.
const SMALL_FILE_ATTEMPTS: u32 = 3;

/// GETs a small text file (manifest, checksum, signature), bounded in size. A connection that
/// fails before the whole answer arrived (not a timeout: 15 s each is bound enough) is tried
/// again, twice, after a short pause: these are idempotent GETs.
pub async fn get_small(http: &reqwest::Client, url: &Url) -> Result<(StatusCode, String), UpgradeError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match get_small_once(http, url).await {
            Err(UpgradeError::Fetch { source, .. }) if !source.is_timeout() && attempt < SMALL_FILE_ATTEMPTS => {
                let delay = backoff.next_delay();
                let detail = edge_agent_base::error::error_chain(&source);
                tracing::warn!(%url, attempt, delay_ms = delay.as_millis() as u64, "fetch failed, retrying: {detail}");
                tokio::time::sleep(delay).await;
            }
            done => return done,
        }
    }
}

async fn get_small_once(http: &reqwest::Client, url: &Url) -> Result<(StatusCode, String), UpgradeError> {
    let fail = |detail: String| UpgradeError::FetchStatus { url: url.to_string(), detail };
    let unreachable = |source| UpgradeError::Fetch { url: url.to_string(), source };
    let resp = http.get(url.clone()).timeout(Duration::from_secs(15)).send().await.map_err(unreachable)?;
    let status = resp.status();
    let body = match body_within(resp, SMALL_FILE_LIMIT).await {
        Ok(body) => body,
        Err(BodyError::TooLarge(limit)) => return Err(fail(format!("larger than {limit} bytes"))),
        Err(BodyError::Read(e)) => return Err(unreachable(e)),
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Fetches the manifest of `wanted` (or of the latest release) and checks its shape: the
/// manifest, the version it describes, and its URL.
pub async fn resolve(
    http: &reqwest::Client,
    releases: &Url,
    wanted: Option<&Version>,
) -> Result<(Manifest, Version, Url), UpgradeError> {
    let file = match wanted {
        Some(v) => format!("v{v}.json"),
        None => "latest.json".to_string(),
    };
    let manifest_url =
        releases.join(&file).map_err(|e| UpgradeError::FetchStatus { url: file.clone(), detail: e.to_string() })?;
    let (status, body) = get_small(http, &with_fleet_query(manifest_url.clone())).await?;
    if status == StatusCode::NOT_FOUND {
        return Err(match wanted {
            Some(v) => UpgradeError::NoSuchVersion { version: v.clone(), url: manifest_url.to_string() },
            None => UpgradeError::FetchStatus {
                url: manifest_url.to_string(),
                detail: "no latest release published (404)".into(),
            },
        });
    }
    if !status.is_success() {
        return Err(UpgradeError::FetchStatus { url: manifest_url.to_string(), detail: format!("HTTP {status}") });
    }
    let (manifest, version) = manifest::parse(&body, wanted).map_err(|e| manifest_error(&manifest_url, e))?;
    Ok((manifest, version, manifest_url))
}

/// The asset of `manifest` built for `platform`.
pub fn select(
    manifest: Manifest,
    version: Version,
    manifest_url: Url,
    platform: &str,
) -> Result<Release, UpgradeError> {
    let url = manifest_url.clone();
    manifest::select(manifest, version, manifest_url, platform).map_err(|e| manifest_error(&url, e))
}

/// The expected sha256 (lowercase hex): inline, else from the `<name>.sha256` sidecar. None
/// published is a refusal: nothing unverified is ever installed.
pub async fn checksum(
    http: &reqwest::Client,
    release: &Release,
    sidecar: Option<&Asset>,
) -> Result<String, UpgradeError> {
    if let Some(inline) = &release.asset.sha256 {
        return manifest::digest_of(inline).map_err(|e| manifest_error(&release.manifest_url, e));
    }
    let Some(sidecar) = sidecar else {
        return Err(UpgradeError::NoChecksum(release.asset.name.clone()));
    };
    let url = release
        .manifest_url
        .join(&sidecar.browser_download_url)
        .map_err(|e| UpgradeError::FetchStatus { url: sidecar.browser_download_url.clone(), detail: e.to_string() })?;
    match get_small(http, &url).await? {
        (StatusCode::OK, text) => manifest::digest_of(&text).map_err(|e| manifest_error(&url, e)),
        (status, _) => Err(UpgradeError::FetchStatus { url: url.to_string(), detail: format!("HTTP {status}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that closes its first `drops` connections after reading the request (a pooled
    /// connection closed as the request went out) and answers the next ones; how many it saw.
    async fn flaky(drops: usize) -> (Url, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/v1.2.3.json.minisig", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let mut seen = 0;
            while let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_secs(3), listener.accept()).await {
                seen += 1;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if seen > drops {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
                }
            }
            seen
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_tried_again() {
        let http = reqwest::Client::new();
        let (url, task) = flaky(2).await;
        assert_eq!(get_small(&http, &url).await.unwrap(), (StatusCode::OK, "ok".to_string()));
        assert_eq!(task.await.unwrap(), 3);
    }

    /// A body sent without a length that never ends: refused once past the limit, long before
    /// the request's timeout, with nothing held but the limit.
    #[tokio::test]
    async fn an_endless_body_without_a_length_is_cut_at_the_limit() {
        let (addr, server) = crate::http::test_servers::endless().await;
        let url = Url::parse(&format!("http://{addr}/latest.json")).unwrap();
        let started = std::time::Instant::now();
        let e = get_small(&reqwest::Client::new(), &url).await.unwrap_err();
        assert!(e.to_string().contains(&format!("larger than {SMALL_FILE_LIMIT} bytes")), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "cut at the limit, not at the timeout");
        let sent = server.await.unwrap();
        assert!(sent < 64 * SMALL_FILE_LIMIT, "the client stopped reading: {sent} bytes sent");
    }

    #[tokio::test]
    async fn a_source_that_keeps_closing_is_given_up_after_three_tries() {
        let http = reqwest::Client::new();
        let (url, task) = flaky(usize::MAX).await;
        let e = get_small(&http, &url).await.unwrap_err();
        assert!(matches!(e, UpgradeError::Fetch { .. }), "{e:?}");
        assert!(e.to_string().contains(url.as_str()), "{e}");
        assert_eq!(task.await.unwrap(), SMALL_FILE_ATTEMPTS as usize);
    }
}
