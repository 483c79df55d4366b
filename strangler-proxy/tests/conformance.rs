//! HTTP conformance at the edge, through a real proxy to real upstreams on 127.0.0.1:0: what
//! the RFCs ask of a proxy between an HTTP/2 or HTTP/1.1 client and an HTTP/1.1 upstream.

mod support;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream answering with every line of every request header, in order, as
/// `{"name": ["line", ...]}`, so repeated fields stay visible.
async fn lines_upstream() -> SocketAddr {
    let app = Router::new().fallback(|req: Request| async move {
        let mut all = serde_json::Map::new();
        for (name, value) in req.headers() {
            let lines = all
                .entry(name.as_str())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(lines) = lines {
                lines.push(String::from_utf8_lossy(value.as_bytes()).into());
            }
        }
        axum::Json(serde_json::json!({ "path": req.uri().path(), "headers": all }))
    });
    serve(app).await
}

async fn proxy(test: &str) -> TestProxy {
    ProxyBuilder::new(test)
        .service("monolith", lines_upstream().await)
        .start()
        .await
}

/// Sends `request` on a fresh connection and reads the answer until the proxy closes it.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the proxy answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn http2_cookie_fields_reach_an_http1_upstream_as_one_line() {
    let p = proxy("h2-cookies").await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::get(p.url("/account"))
        .header("cookie", "sid=abc")
        .header("cookie", "theme=dark")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["headers"]["cookie"],
        serde_json::json!(["sid=abc; theme=dark"]),
        "{body}"
    );
}

#[tokio::test]
async fn an_http11_request_without_host_is_refused_with_400() {
    let p = proxy("no-host").await;
    let (status, body) = raw(p.public, "GET /x HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status, 400, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
    assert!(json["error"].as_str().unwrap().contains("Host"), "{json}");
    assert_eq!(
        json["request_id"].as_str().map(str::len),
        Some(32),
        "{json}"
    );
    let (status, body) = raw(
        p.public,
        "GET /x HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "two Host fields: {body}");
    let m = p.metrics().await;
    assert!(
        m.contains("strangler_downstream_rejected_total{reason=\"bad_host\"} 2"),
        "{m}"
    );
    // HTTP/1.0 may omit Host.
    let (status, body) = raw(p.public, "GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_absolute_form_target_sets_the_upstream_host() {
    let p = proxy("absolute-form").await;
    let (status, body) = raw(
        p.public,
        "GET http://shop.example:8443/api/users/1 HTTP/1.1\r\nhost: other.example\r\n\
         connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["path"], "/api/users/1", "{json}");
    let headers = &json["headers"];
    assert_eq!(
        headers["host"],
        serde_json::json!(["shop.example:8443"]),
        "{json}"
    );
    assert_eq!(
        headers["x-forwarded-host"],
        serde_json::json!(["shop.example:8443"]),
        "{json}"
    );
}

#[tokio::test]
async fn forwarded_gets_this_hop_appended() {
    let p = proxy("forwarded").await;
    let c = client();
    let req = http::Request::get(p.url("/x"))
        .header("host", "shop.example")
        .header("forwarded", "for=192.0.2.43")
        .header("forwarded", "for=\"[2001:db8:cafe::17]\";proto=https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = c.request(req).await.unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["headers"]["forwarded"],
        serde_json::json!(["for=192.0.2.43, for=\"[2001:db8:cafe::17]\";proto=https, \
             for=127.0.0.1;proto=http;host=shop.example"]),
        "{body}"
    );
    // Without a prior element, this hop's is the whole header.
    let a = get(&p.url("/x")).await;
    let host = p.public.to_string();
    assert_eq!(
        a.json()["headers"]["forwarded"],
        serde_json::json!([format!("for=127.0.0.1;proto=http;host=\"{host}\"")])
    );
}
