//! Paths no backend may read differently from the proxy: control characters, raw or
//! percent-encoded, are refused with 400 before routing, so no upstream ever sees them.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::Request;
use http::StatusCode;
use support::{ProxyBuilder, TestProxy, get, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that counts what reaches it and answers with its name.
async fn counting_upstream(name: &'static str, arrivals: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let app = Router::new().fallback(move |req: Request| {
        let arrivals = arrivals.clone();
        async move {
            arrivals.fetch_add(1, Ordering::SeqCst);
            axum::Json(serde_json::json!({ "backend": name, "path": req.uri().path() }))
        }
    });
    serve(app).await
}

async fn proxy(arrivals: &Arc<AtomicUsize>) -> TestProxy {
    ProxyBuilder::new("path-safety")
        .service(
            "monolith",
            counting_upstream("monolith", arrivals.clone()).await,
        )
        .service("users", counting_upstream("users", arrivals.clone()).await)
        .service("admin", counting_upstream("admin", arrivals.clone()).await)
        .route("/api/users", "users", 100)
        .route("/admin", "admin", 100)
        .start()
        .await
}

#[tokio::test]
async fn encoded_control_characters_are_refused_and_reach_no_upstream() {
    let arrivals = Arc::new(AtomicUsize::new(0));
    let p = proxy(&arrivals).await;
    let mut paths: Vec<String> = [
        "/api/users%00/../../admin",
        "/admin%00",
        "/api/users/%00",
        "/api/users/..%00/admin",
        "/api/users/1%0d%0aX-Injected:%20yes",
        "/api/users/%7f",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    paths.extend(
        (0u8..0x20)
            .chain([0x7F])
            .map(|b| format!("/api/users/a%{b:02X}b")),
    );
    for path in &paths {
        let a = get(&p.url(path)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.text());
        assert!(
            a.json()["error"]
                .as_str()
                .unwrap()
                .contains("control character"),
            "{path}: {}",
            a.text()
        );
    }
    assert_eq!(
        arrivals.load(Ordering::SeqCst),
        0,
        "a path with a control character reached an upstream"
    );
    // The same routes still serve clean paths.
    let a = get(&p.url("/api/users/%20")).await;
    assert_eq!((a.status, a.backend()), (StatusCode::OK, "users".into()));
    assert_eq!(arrivals.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn raw_control_characters_are_refused_and_reach_no_upstream() {
    let arrivals = Arc::new(AtomicUsize::new(0));
    let p = proxy(&arrivals).await;
    for b in [0x00u8, 0x01, 0x09, 0x1F, 0x7F] {
        let mut stream = tokio::net::TcpStream::connect(p.public).await.unwrap();
        let mut request = b"GET /admin".to_vec();
        request.push(b);
        request.extend_from_slice(b"x HTTP/1.1\r\nhost: proxy.test\r\nconnection: close\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "raw byte {b:#04x}: {answer:?}"
        );
    }
    assert_eq!(arrivals.load(Ordering::SeqCst), 0);
}
