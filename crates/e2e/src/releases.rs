//! A real HTTP release server for the upgrade tests: serves a release directory laid out as
//! protocol.md §3.2 describes, signed by a key of its own (as agents require by default), honours
//! `Range`, and has switches for the faults a real network and a real release host produce.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::handle::{FakeHandle, Panics};

/// Fault switches, applied to asset downloads (`download/…`).
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer 503 to this many asset requests first.
    pub fail_first: u32,
    /// Cut the first asset response after this many bytes (the connection drops mid-body).
    pub truncate_first_at: Option<u64>,
    /// Cut every asset response after this many bytes.
    pub truncate_always_at: Option<u64>,
    /// Answer 200 with the whole body even to a Range request.
    pub ignore_range: bool,
    /// Send the body in chunks of this size with this pause between them.
    pub drip: Option<(usize, Duration)>,
    /// Answer these paths (relative to the release root) with this status.
    pub status: HashMap<String, u16>,
}

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: Option<String>,
    pub range: Option<String>,
    /// When the request came (milliseconds since the epoch).
    pub at_ms: i64,
}

#[derive(Clone)]
struct Shared {
    root: Arc<std::path::PathBuf>,
    faults: Arc<Mutex<Faults>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    panics: Panics,
}

pub struct ReleaseServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shared: Shared,
    pub handle: FakeHandle,
    /// The release signing key pair, made for this server.
    key: minisign::KeyPair,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

impl ReleaseServer {
    pub async fn start() -> ReleaseServer {
        let dir = tempfile::tempdir().unwrap();
        let panics = Panics::default();
        let shared = Shared {
            root: Arc::new(dir.path().to_path_buf()),
            faults: Default::default(),
            seen: Default::default(),
            panics: panics.clone(),
        };
        let app = Router::new().route("/releases/{*path}", get(guarded)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let key = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        ReleaseServer { addr, dir, shared, handle: FakeHandle::new(task, panics), key }
    }

    /// The public key this server's releases are signed with (its base64 line).
    pub fn public_key(&self) -> String {
        self.key.pk.to_base64()
    }

    /// The configuration line that makes an agent trust this server's releases.
    pub fn trust(&self) -> String {
        format!("trusted_keys = [\"{}\"]\n", self.public_key())
    }

    pub fn url(&self) -> String {
        format!("http://{}/releases/", self.addr)
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.shared.faults.lock().unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The `Range` header of each asset download, in order (None: from the start).
    pub fn asset_ranges(&self) -> Vec<Option<u64>> {
        let start = |r: &str| r.strip_prefix("bytes=")?.trim_end_matches('-').parse().ok();
        self.asset_gets().iter().map(|s| s.range.as_deref().and_then(start)).collect()
    }

    /// Asset downloads seen so far (sidecars excluded).
    pub fn asset_gets(&self) -> Vec<Seen> {
        let sidecar = |p: &str| p.ends_with(".sha256") || p.ends_with(".minisig");
        self.seen().into_iter().filter(|s| s.path.starts_with("download/") && !sidecar(&s.path)).collect()
    }

    /// Publishes `bytes` as version `v` for this platform: the asset, a `.sha256` sidecar, a
    /// `.minisig` signature by this server's key (its trusted comment naming the file and the
    /// version, as `agent release publish` signs), and `v<v>.json` with `size` and `sha256` inline.
    /// Returns the manifest.
    pub fn publish(&self, v: &str, bytes: &[u8]) -> Value {
        let mut manifest = self.publish_unsigned(v, bytes);
        let name = format!("agent-{v}-{}", platform());
        let rel = format!("download/v{v}/{name}");
        let comment = format!("timestamp:0\tfile:{name}\tversion:{v}");
        let sig = minisign::sign(Some(&self.key.pk), &self.key.sk, bytes, Some(&comment), None).unwrap();
        std::fs::write(self.dir.path().join(format!("{rel}.minisig")), sig.into_string()).unwrap();
        let sidecar = json!({"name": format!("{name}.minisig"), "browser_download_url": format!("{rel}.minisig")});
        manifest["assets"].as_array_mut().unwrap().push(sidecar);
        self.write_manifest(v, &manifest);
        manifest
    }

    /// [`Self::publish`] without the signature: what only an agent with `allow_unsigned = true`
    /// installs.
    pub fn publish_unsigned(&self, v: &str, bytes: &[u8]) -> Value {
        let name = format!("agent-{v}-{}", platform());
        let rel = format!("download/v{v}/{name}");
        let dir = self.dir.path().join(format!("download/v{v}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&name), bytes).unwrap();
        let digest = sha256_hex(bytes);
        std::fs::write(dir.join(format!("{name}.sha256")), format!("{digest}  {name}\n")).unwrap();
        let manifest = json!({
            "tag_name": format!("v{v}"),
            "version": v,
            "published_at": "2026-11-29T10:00:00Z",
            "assets": [
                {"name": name, "browser_download_url": rel, "size": bytes.len(), "sha256": digest},
                {"name": format!("{name}.sha256"), "browser_download_url": format!("{rel}.sha256")},
            ]
        });
        self.write_manifest(v, &manifest);
        manifest
    }

    pub fn publish_file(&self, v: &str, path: &Path) -> Value {
        self.publish(v, &std::fs::read(path).unwrap())
    }

    pub fn write_manifest(&self, v: &str, manifest: &Value) {
        std::fs::write(self.dir.path().join(format!("v{v}.json")), manifest.to_string()).unwrap();
    }

    pub fn write_raw(&self, rel: &str, body: &str) {
        std::fs::write(self.dir.path().join(rel), body).unwrap();
    }

    pub fn set_latest(&self, v: &str) {
        std::fs::copy(self.dir.path().join(format!("v{v}.json")), self.dir.path().join("latest.json")).unwrap();
    }
}

/// [`serve`], with its panics kept for [`FakeHandle::join`].
async fn guarded(State(s): State<Shared>, path: UrlPath<String>, query: RawQuery, headers: HeaderMap) -> Response {
    let panics = s.panics.clone();
    panics
        .guard(serve(s, path, query, headers))
        .await
        .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn serve(s: Shared, UrlPath(path): UrlPath<String>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    s.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        query,
        range: range.clone(),
        at_ms: edge_agent_base::time::now_ms(),
    });
    let is_asset = path.starts_with("download/") && !path.ends_with(".sha256") && !path.ends_with(".minisig");
    let mut faults = s.faults.lock().unwrap();
    if let Some(code) = faults.status.get(&path) {
        return StatusCode::from_u16(*code).unwrap().into_response();
    }
    if path.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Ok(bytes) = std::fs::read(s.root.join(&path)) else { return StatusCode::NOT_FOUND.into_response() };
    if !is_asset {
        return bytes.into_response();
    }
    if faults.fail_first > 0 {
        faults.fail_first -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let start = match (&range, faults.ignore_range) {
        (Some(r), false) => {
            r.strip_prefix("bytes=").and_then(|r| r.trim_end_matches('-').parse::<usize>().ok()).unwrap_or(0)
        }
        _ => 0,
    };
    let total = bytes.len();
    let body = bytes[start.min(total)..].to_vec();
    let cut = faults.truncate_first_at.take().or(faults.truncate_always_at).map(|c| c as usize);
    let drip = faults.drip;
    drop(faults);
    let len = body.len();
    let stream = async_stream(body, cut, drip);
    let mut resp = Response::builder().header(header::CONTENT_LENGTH, len).header(header::ACCEPT_RANGES, "bytes");
    resp = if start > 0 {
        resp.status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{total}", total - 1))
    } else {
        resp.status(StatusCode::OK)
    };
    resp.body(Body::from_stream(stream)).unwrap()
}

/// The body as a stream of chunks; with `cut`, it fails after that many bytes, which drops the
/// connection before `Content-Length` bytes were sent.
fn async_stream(
    body: Vec<u8>,
    cut: Option<usize>,
    drip: Option<(usize, Duration)>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let chunk = drip.map(|d| d.0).unwrap_or(64 * 1024);
    let pause = drip.map(|d| d.1);
    let limit = cut.unwrap_or(usize::MAX).min(body.len());
    futures_util::stream::unfold((0usize, body), move |(pos, body)| async move {
        if pos >= limit {
            if pos < body.len() {
                return Some((Err(std::io::Error::other("cut by the test")), (usize::MAX, body)));
            }
            return None;
        }
        if let (Some(p), true) = (pause, pos > 0) {
            tokio::time::sleep(p).await;
        }
        let end = (pos + chunk).min(limit);
        Some((Ok(body[pos..end].to_vec()), (end, body)))
    })
}

/// Runs `agent release …` (the host build: the operator's machine); its output.
pub fn release_command(args: &[&str]) -> String {
    let out = std::process::Command::new(crate::bins::agent_bin()).arg("release").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "agent release {args:?}: {text}");
    text
}

/// A release directory signed by a fresh key, as `agent release keygen` and `publish` write it:
/// every release a test publishes here is signed, and agents pointed at it trust the key.
pub struct Signed {
    pub work: tempfile::TempDir,
    pub public_key: String,
}

impl Signed {
    pub fn new() -> Signed {
        let work = tempfile::tempdir().unwrap();
        release_command(&["keygen", "--no-password", "--out", work.path().join("keys").to_str().unwrap()]);
        let public_key = std::fs::read_to_string(work.path().join("keys/minisign.pub")).unwrap();
        let public_key = public_key.lines().last().unwrap().trim().to_string();
        std::fs::create_dir_all(work.path().join("releases")).unwrap();
        Signed { work, public_key }
    }

    /// The release directory (serve it with `agent-server --releases`).
    pub fn dir(&self) -> std::path::PathBuf {
        self.work.path().join("releases")
    }

    /// `agent release publish --version <version>` of these artifacts (`PATH` or
    /// `PATH:os-arch`), signed, with compressed copies and patches at zstd level 3 (level 19,
    /// the default, takes half a minute on a debug build); what it said.
    pub fn publish(&self, version: &str, artifacts: &[&Path]) -> String {
        let (dir, key) = (self.dir(), self.work.path().join("keys/minisign.key"));
        let mut args = vec!["publish", "--dir", dir.to_str().unwrap(), "--version", version, "--level", "3"];
        args.extend(["--key", key.to_str().unwrap()]);
        args.extend(artifacts.iter().map(|a| a.to_str().unwrap()));
        release_command(&args)
    }

    /// The configuration lines that point an agent at `releases_url` and trust the key.
    pub fn agent_config(&self, releases_url: &str) -> String {
        format!("releases_url = \"{releases_url}\"\ntrusted_keys = [\"{}\"]\n", self.public_key)
    }
}

impl Default for Signed {
    fn default() -> Self {
        Signed::new()
    }
}
