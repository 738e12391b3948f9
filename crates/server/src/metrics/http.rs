//! HTTP request durations by method and route, with both labels from a fixed set: the standard
//! methods (any other counts as `other`) and the route templates of the router (`unmatched` for a
//! path no route matches), so that no request, however strange, adds a label value.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabels {
    method: &'static str,
    route: Arc<str>,
}

pub(super) type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub(super) fn durations() -> Durations {
    fn histogram() -> Histogram {
        // 0.5 ms to about 16 s.
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
    Durations::new_with_constructor(histogram)
}

/// The label of a method: one of the standard nine, else `other`.
pub fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD.iter().find(|m| *m == method).map_or("other", Method::as_str)
}

/// The label of a route: the template the router matched (its text is ours, not the client's).
fn route_label(matched: Option<&MatchedPath>) -> Arc<str> {
    matched.map_or_else(|| Arc::from("unmatched"), |p| Arc::from(p.as_str()))
}

/// Middleware: times every request by its method and route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.http.get_or_create(&RouteLabels { method, route }).observe(start.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_ones_are_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for junk in ["FOO", "get", &"X".repeat(60_000)] {
            assert_eq!(method_label(&Method::from_bytes(junk.as_bytes()).unwrap()), "other", "{}", &junk[..3]);
        }
    }
}
