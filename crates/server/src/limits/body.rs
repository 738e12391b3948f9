//! The request body's limits: the whole body within `--body-timeout` of its headers (else 408,
//! and the connection is closed), and at most [`MAX_BODY`] bytes (else 413). The body is read
//! here, before any handler runs, so that no handler waits on a client that trickles.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::metrics::{EdgeMetrics, Limit};

/// The largest request body (what the REST API and the page accept).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// What the body deadline works with.
#[derive(Clone)]
pub struct BodyLimits {
    pub timeout: Duration,
    pub metrics: EdgeMetrics,
}

/// Why a body was not read.
#[derive(Debug, PartialEq)]
enum Unread {
    Late,
    TooLarge,
    Broken,
}

async fn read(mut body: Body, deadline: Instant) -> Result<Bytes, Unread> {
    let mut buf = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Unread::Late),
            Ok(None) => return Ok(Bytes::from(buf)),
            Ok(Some(Err(_))) => return Err(Unread::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(Unread::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// Middleware: reads a request's body within the deadline and the size limit.
pub async fn deadline(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let outcome = match declared {
        Some(n) if n > MAX_BODY as u64 => Err(Unread::TooLarge),
        _ => read(body, Instant::now() + limits.timeout).await,
    };
    match outcome {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(why) => {
            let (status, limit, text) = match why {
                Unread::Late => (
                    StatusCode::REQUEST_TIMEOUT,
                    Some(Limit::BodyTimeout),
                    format!("Request body not received within {} s: send it at once", limits.timeout.as_secs_f64()),
                ),
                Unread::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, Some(Limit::BodySize), String::new()),
                Unread::Broken => (StatusCode::BAD_REQUEST, None, "Request body could not be read".into()),
            };
            if let Some(l) = limit {
                limits.metrics.hit(l);
            }
            // The rest of the body is not read: the connection cannot carry another request.
            let mut resp = (status, text).into_response();
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_late_and_a_large_one_refused() {
        let drip = stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (n < 100).then(|| (Ok::<_, std::io::Error>(Bytes::from_static(b"x")), n + 1))
        });
        let late = read(Body::from_stream(drip), Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(late, Err(Unread::Late));
        let big = Body::from(vec![0u8; MAX_BODY + 1]);
        assert_eq!(read(big, Instant::now() + Duration::from_secs(5)).await, Err(Unread::TooLarge));
        let fine = read(Body::from("{}"), Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(fine.unwrap(), Bytes::from_static(b"{}"));
    }
}
