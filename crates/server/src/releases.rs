//! `--releases DIR`: a release directory served at `/releases/` (Range, Content-Length,
//! Last-Modified), with an access log line per file: its path, the status, the bytes asked for
//! (`Range`) and the bytes actually sent, logged when the response ends, whole or cut.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::RANGE;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use futures_util::StreamExt;

/// How much of a file is read at a time: each read is a hop to a blocking thread, and at the
/// default 64 KiB those hops, not the disk or the network, bound a download (about 200 MiB/s
/// on loopback here). Per download in flight, this much memory.
const READ_CHUNK: usize = 256 * 1024;

/// The router serving `dir`, to nest at `/releases`.
pub fn router(dir: PathBuf) -> Router {
    let files = tower_http::services::ServeDir::new(dir).with_buf_chunk_size(READ_CHUNK);
    Router::new().fallback_service(files).layer(middleware::from_fn(log_sent))
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
        let range = self.range.as_deref().unwrap_or("");
        tracing::info!(path = %self.path, status = self.status, range, bytes_sent = self.bytes, "release file served");
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
