//! The proxy as a `tower::Service`, called with `oneshot` on an in-memory table: no listener,
//! no file. Backends here are addresses nothing listens on, so every answer is the proxy's own.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use strangler_proxy::config;
use strangler_proxy::headers::X_REQUEST_ID;
use strangler_proxy::live::Live;
use strangler_proxy::metrics::Metrics;
use strangler_proxy::proxy::Proxy;
use strangler_proxy::routes::RouteTable;
use strangler_proxy::shadow::Shadows;
use strangler_proxy::upstream::Upstreams;
use tower::ServiceExt;

/// A port nothing listens on: bound, read, released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Fixture {
    proxy: Proxy,
    metrics: Arc<Metrics>,
}

fn fixture(routes: &str) -> Fixture {
    let (default, users) = (closed_port(), closed_port());
    let text = format!(
        "[proxy]\ndefault = \"monolith\"\nmax_header_bytes = 4096\n\
         [services.monolith]\nurl = \"http://127.0.0.1:{default}\"\n\
         [services.users]\nurl = \"http://127.0.0.1:{users}\"\n{routes}"
    );
    let config = config::parse(&text).expect("valid config");
    let table = RouteTable::compile(config, String::new(), 1, &Upstreams::default());
    let metrics = Arc::new(Metrics::new());
    let proxy = Proxy::new(
        Live::new(table),
        metrics.clone(),
        Arc::new(Shadows::new(4)),
        None,
    );
    Fixture { proxy, metrics }
}

/// An HTTP/1.1 request (the builder's default version) carries its Host, as a client sends it.
fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", "proxy.test")
        .body(Empty::new())
        .unwrap()
}

async fn call(f: &Fixture, req: Request<Empty<Bytes>>) -> (StatusCode, http::HeaderMap, String) {
    let response = f.proxy.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .expect("own bodies never fail")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn metrics_text(f: &Fixture) -> String {
    String::from_utf8(f.metrics.render()).unwrap()
}

const USERS: &str = "[[routes]]\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 100\n";

#[tokio::test]
async fn a_path_climbing_above_the_root_is_refused_before_routing() {
    let f = fixture(USERS);
    let (status, headers, body) = call(&f, get("/api/users/../../..")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let id = headers.get(&X_REQUEST_ID).expect("request id on errors");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["request_id"], id.to_str().unwrap());
    assert!(
        metrics_text(&f).contains("strangler_downstream_rejected_total{reason=\"bad_path\"} 1")
    );
}

#[tokio::test]
async fn headers_over_the_limit_get_431() {
    let f = fixture(USERS);
    let mut req = get("/api/users");
    req.headers_mut()
        .insert("x-big", "v".repeat(5000).parse().unwrap());
    let (status, _, _) = call(&f, req).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn a_refused_connection_is_a_502_counted_against_the_backend_and_the_client_id_kept() {
    let f = fixture(USERS);
    let mut req = get("/api/users/1");
    req.headers_mut()
        .insert(&X_REQUEST_ID, "client-chosen-id".parse().unwrap());
    let (status, headers, body) = call(&f, req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers[&X_REQUEST_ID], "client-chosen-id");
    assert!(
        body.contains("service \\\"users\\\" failed: connect"),
        "{body}"
    );
    let text = metrics_text(&f);
    assert!(
        text.contains(
            "strangler_upstream_errors_total{backend=\"users\",kind=\"connect\",route=\"users\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("strangler_requests_total{backend=\"users\",code=\"502\",route=\"users\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_safe_request_falls_back_to_the_default_and_a_write_never_does() {
    let f = fixture(
        "[[routes]]\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 100\nfallback = true\n",
    );
    let (status, _, body) = call(&f, get("/api/users/1")).await;
    // The default is down too: the fallback happened, and its failure is what the client sees.
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("service \\\"monolith\\\" failed"), "{body}");
    let text = metrics_text(&f);
    assert!(
        text.contains("strangler_fallbacks_total{route=\"users\"} 1"),
        "{text}"
    );

    let post = Request::builder()
        .method(Method::POST)
        .uri("/api/users")
        .header("host", "proxy.test")
        .body(Empty::new())
        .unwrap();
    let (status, _, body) = call(&f, post).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("service \\\"users\\\" failed"), "{body}");
    assert!(metrics_text(&f).contains("strangler_fallbacks_total{route=\"users\"} 1"));
}

#[tokio::test]
async fn unmatched_paths_go_to_the_default_under_the_default_label() {
    let f = fixture(USERS);
    let (status, _, _) = call(&f, get("/api/threads")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(metrics_text(&f).contains(
        "strangler_requests_total{backend=\"monolith\",code=\"502\",route=\"default\"} 1"
    ));
}
