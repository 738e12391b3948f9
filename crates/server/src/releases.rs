//! `--releases DIR`: a release directory served at `/releases/` (Range, Content-Length,
//! Last-Modified), with an access log line per file: its path, the status, the bytes asked for
//! (`Range`) and the bytes actually sent, logged when the response ends, whole or cut.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::RANGE;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// How much of a file a download reads at a time: each read is a hop to a blocking thread, and
/// at the default 64 KiB those hops, not the disk or the network, bound a download (about 200
/// MiB/s on loopback here). Each read holds a buffer this large until its bytes are sent, small
/// file or not: so only [`LARGE_AT_ONCE`] downloads read this much at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Downloads reading [`READ_CHUNK`] at a time, at most (2 MiB of buffers).
const LARGE_AT_ONCE: usize = 8;
/// What the others read at a time, and the manifests, checksums, signatures and keys (a few
/// hundred bytes each): a fleet upgrading at once fetches several of those per agent.
const SMALL_CHUNK: usize = 16 * 1024;

/// The release directory, served with large reads for a few downloads at once.
#[derive(Clone)]
struct Files {
    large: ServeDir,
    small: ServeDir,
    slots: Arc<Semaphore>,
}

/// The router serving `dir`, to nest at `/releases`.
pub fn router(dir: PathBuf) -> Router {
    let files = Files {
        large: ServeDir::new(&dir).with_buf_chunk_size(READ_CHUNK),
        small: ServeDir::new(dir).with_buf_chunk_size(SMALL_CHUNK),
        slots: Arc::new(Semaphore::new(LARGE_AT_ONCE)),
    };
    Router::new().fallback(move |req: Request| serve(files.clone(), req)).layer(middleware::from_fn(log_sent))
}

/// A release's metadata, small: fetched whole in one small read.
fn is_metadata(path: &str) -> bool {
    [".json", ".minisig", ".sha256", ".pub"].iter().any(|ext| path.ends_with(ext))
}

/// The longest name a release file may have (a file system's own limit): a longer one is not
/// looked for (the file system's refusal was a 500).
const NAME_MAX: usize = 255;

async fn serve(files: Files, req: Request) -> Response {
    if req.uri().path().split('/').any(|name| name.len() > NAME_MAX) {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    }
    let large = if is_metadata(req.uri().path()) { None } else { files.slots.try_acquire_owned().ok() };
    let dir = if large.is_some() { files.large } else { files.small };
    let resp = dir.oneshot(req).await.unwrap_or_else(|e: Infallible| match e {});
    match large {
        // The slot is given back when the body is sent or dropped.
        Some(slot) => resp.map(|body| {
            Body::from_stream(Body::new(body).into_data_stream().map(move |chunk| {
                let _held = &slot;
                chunk
            }))
        }),
        None => resp.map(Body::new),
    }
}

/// Counts the body's bytes as they go out; logs them when the body is dropped (sent or not).
struct Sent {
    path: String,
    status: u16,
    range: Option<String>,
    bytes: u64,
}

impl Sent {
    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        let range = crate::limits::throttle::shown_at_most(self.range.as_deref().unwrap_or(""), 100);
        // Anyone may ask for any path: a file served is logged, a miss only at debug level, and
        // either cut short.
        let path = crate::limits::throttle::shown_at_most(&self.path, 200);
        match self.status {
            200..=399 => {
                tracing::info!(path = %path, status = self.status, range = range.as_str(), bytes_sent = self.bytes, "release file served")
            }
            _ => tracing::debug!(path = %path, status = self.status, range = range.as_str(), "release file not served"),
        }
    }
}

async fn log_sent(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let range = req.headers().get(RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    resp.map(|body| {
        let mut sent = Sent { path, status, range, bytes: 0 };
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            if let Ok(bytes) = &chunk {
                sent.add(bytes.len());
            }
            chunk
        }))
    })
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn get(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    /// Found by an attacker's probe: a name past the file system's limit was a 500.
    #[tokio::test]
    async fn a_name_too_long_for_any_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let router = router(dir.path().to_path_buf());
        for len in [NAME_MAX, NAME_MAX + 1, 60_000] {
            let resp = router.clone().oneshot(get(&format!("/{}", "a".repeat(len)))).await.unwrap();
            assert_eq!(resp.status(), 404, "a name of {len} bytes");
        }
    }

    #[tokio::test]
    async fn downloads_past_the_large_ones_are_served_whole_in_small_reads() {
        let dir = tempfile::tempdir().unwrap();
        let asset: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("agent-1.0.0-linux-x86_64"), &asset).unwrap();
        std::fs::write(dir.path().join("v1.0.0.json"), b"{}").unwrap();
        let files = Files {
            large: ServeDir::new(dir.path()).with_buf_chunk_size(READ_CHUNK),
            small: ServeDir::new(dir.path()).with_buf_chunk_size(SMALL_CHUNK),
            slots: Arc::new(Semaphore::new(LARGE_AT_ONCE)),
        };
        // Downloads in flight, not read yet: each holds a slot.
        let mut held = Vec::new();
        for _ in 0..LARGE_AT_ONCE {
            held.push(serve(files.clone(), get("/agent-1.0.0-linux-x86_64")).await);
        }
        assert_eq!(files.slots.available_permits(), 0);
        // The next download and the metadata are served in small reads, whole.
        let resp = serve(files.clone(), get("/agent-1.0.0-linux-x86_64")).await;
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), asset);
        let resp = serve(files.clone(), get("/v1.0.0.json")).await;
        assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"{}");
        // A download that ends gives its slot back; so does one dropped unread.
        let first = held.pop().unwrap();
        assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), asset);
        drop(held.pop());
        assert_eq!(files.slots.available_permits(), 2);
        // Metadata never takes a slot.
        let _meta = serve(files.clone(), get("/v1.0.0.json")).await;
        assert_eq!(files.slots.available_permits(), 2);
    }
}
