//! Forwarding through a real proxy to real upstreams on 127.0.0.1:0.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// monolith, users and posts echo upstreams, `/api/users` → users at 100, posts at 0.
async fn stack(test: &str) -> ProxyBuilder {
    ProxyBuilder::new(test)
        .service("monolith", echo_upstream("monolith").await)
        .service("users", echo_upstream("users").await)
        .service("posts", echo_upstream("posts").await)
        .route("/api/users", "users", 100)
        .route("/api/posts", "posts", 0)
}

/// A proxy whose default (`monolith`) is `upstream`, and nothing else.
async fn monolith_only(test: &str, upstream: SocketAddr) -> TestProxy {
    ProxyBuilder::new(test)
        .service("monolith", upstream)
        .start()
        .await
}

#[tokio::test]
async fn routes_by_normalized_prefix_and_forwards_the_routed_path() {
    let s = stack("prefix").await.start().await;
    // (request path, backend, path the upstream received)
    let cases = [
        ("/api/users", "users", "/api/users"),
        ("/api/users/7", "users", "/api/users/7"),
        ("/api/usersX", "monolith", "/api/usersX"),
        ("/API/users", "monolith", "/API/users"),
        ("/api/posts/1", "monolith", "/api/posts/1"),
        ("/api/posts/../users/2", "users", "/api/users/2"),
        ("/api/users/../posts", "monolith", "/api/posts"),
        ("/api/users/%2e%2e/posts", "monolith", "/api/posts"),
        ("//api//users/1", "users", "/api/users/1"),
        ("/api/users/./1", "users", "/api/users/1"),
        ("/api/users/%FF", "users", "/api/users/%FF"),
    ];
    for (path, backend, seen) in cases {
        let a = get(&s.url(path)).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        let json = a.json();
        assert_eq!(json["backend"], backend, "{path}");
        assert_eq!(json["path"], seen, "{path}");
    }
    let a = get(&s.url("/api/users?next=/api/posts&x=%2F")).await;
    assert_eq!(a.json()["query"], "next=/api/posts&x=%2F");
    assert_eq!(a.backend(), "users");
}

#[tokio::test]
async fn unsafe_paths_are_refused_with_400_and_a_request_id() {
    let s = stack("unsafe").await.start().await;
    for path in [
        "/..",
        "/api/../..",
        "/api/users/%2E%2E%2Fposts",
        "/api/users/%zz",
    ] {
        let a = get(&s.url(path)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
        let json = a.json();
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .contains("cannot be routed safely"),
            "{path}: {json}"
        );
        assert_eq!(json["request_id"].as_str().unwrap().len(), 32, "{path}");
    }
    // An encoded slash that would leave the route once decoded is refused; one that stays is not.
    assert_eq!(
        get(&s.url("/api/users/a%2F..%2F..%2Fposts")).await.status,
        StatusCode::BAD_REQUEST
    );
    // `/api%2Fusers` routes to the default as sent, to `users` if the upstream decodes it.
    for ambiguous in ["/api%2Fusers/1", "/api%5Cusers/1", "/api\\users/1"] {
        let a = get(&s.url(ambiguous)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{ambiguous}");
        assert!(
            a.json()["error"]
                .as_str()
                .unwrap()
                .contains("would change its route"),
            "{ambiguous}"
        );
    }
    let a = get(&s.url("/api/users/a%2Fb")).await;
    assert_eq!(
        (a.status, a.backend()),
        (StatusCode::OK, "users".to_string())
    );
    assert_eq!(a.json()["path"], "/api/users/a%2Fb");
}

#[tokio::test]
async fn method_rules_peel_off_only_the_listed_methods() {
    let p = ProxyBuilder::new("methods")
        .service("monolith", echo_upstream("monolith").await)
        .service("users", echo_upstream("users").await)
        .route("/api/users", "users", 100)
        .with(r#"methods = ["GET", "HEAD"]"#)
        .start()
        .await;
    let c = client();
    let url = p.url("/api/users");
    assert_eq!(get(&url).await.backend(), "users");
    assert_eq!(
        send(&c, Method::POST, &url, &[]).await.unwrap().backend(),
        "monolith"
    );
    assert_eq!(
        send(&c, Method::DELETE, &url, &[]).await.unwrap().backend(),
        "monolith"
    );
}

#[tokio::test]
async fn request_headers_are_rewritten_as_a_proxy_should() {
    let s = stack("headers").await.start().await;
    let c = client();
    let a = get_with(
        &s.url("/api/users/1"),
        &[
            ("x-forwarded-for", "10.0.0.1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("connection", "x-secret"),
            ("x-secret", "must not pass"),
            ("keep-alive", "timeout=5"),
            ("host", "shop.example"),
        ],
    )
    .await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(h["host"], "shop.example");
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(h.get("x-secret").is_none(), "{h}");
    assert!(h.get("keep-alive").is_none(), "{h}");
    let id = h["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        a.headers["x-request-id"], id,
        "the client sees the id the upstream saw"
    );
    assert!(
        a.headers.get("x-strangler-backend").is_none(),
        "off by default"
    );

    // Connection cannot name the proxy's own headers away, nor can a client forge a shadow
    // marker; several x-forwarded-for lines are one list.
    let a = get_with(
        &s.url("/api/users/1"),
        &[
            ("connection", "x-request-id, x-forwarded-for"),
            ("x-strangler-shadow", "1"),
            ("x-forwarded-for", "10.0.0.1"),
        ],
    )
    .await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-request-id"].as_str().map(str::len), Some(32), "{h}");
    assert!(h.get("x-strangler-shadow").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    let req = http::Request::get(s.url("/api/users/1"))
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "2.2.2.2");
    let res = c
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body["headers"]["x-forwarded-for"],
        "1.1.1.1, 2.2.2.2, 127.0.0.1"
    );

    let a = get_with(&s.url("/x"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(
        a.json()["headers"]["x-request-id"],
        "abc-123",
        "an existing id is kept"
    );
}

#[tokio::test]
async fn backend_header_names_who_answered() {
    let s = stack("backend-header")
        .await
        .proxy_key("backend_header = true")
        .start()
        .await;
    assert_eq!(
        get(&s.url("/api/users")).await.headers["x-strangler-backend"],
        "users"
    );
    assert_eq!(
        get(&s.url("/other")).await.headers["x-strangler-backend"],
        "monolith"
    );
}

/// An upstream that speaks raw HTTP/1.1: answers each connection with `response` after reading
/// the request head, then echoes the socket if `echo_after`.
async fn raw_upstream(response: &'static [u8], echo_after: bool) -> SocketAddr {
    raw_upstream_recording(response, echo_after).await.0
}

type Heads = Arc<std::sync::Mutex<Vec<String>>>;

/// [`raw_upstream`], also keeping every request head it received (lower-cased).
async fn raw_upstream_recording(response: &'static [u8], echo_after: bool) -> (SocketAddr, Heads) {
    let heads: Heads = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                if sock.write_all(response).await.is_err() {
                    return;
                }
                if echo_after {
                    let (mut r, mut w) = sock.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn response_hop_by_hop_headers_are_removed() {
    let upstream = raw_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok",
        false,
    )
    .await;
    let p = monolith_only("resp-hop", upstream).await;
    let a = get(&p.url("/")).await;
    assert_eq!(a.text(), "ok");
    assert_eq!(a.headers["x-kept"], "yes");
    assert!(a.headers.get("x-hop").is_none());
    assert!(a.headers.get("keep-alive").is_none());
}

#[tokio::test]
async fn upstream_failures_answer_502_or_504_fast_and_are_counted() {
    let monolith = echo_upstream("monolith").await;
    let silent = {
        // Accepts and reads, then holds the connection without answering (for at most 30 s).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = sock.read(&mut buf).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        addr
    };
    let resetting = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                drop(sock); // closes before any response
            }
        });
        addr
    };
    let p = ProxyBuilder::new("failures")
        .service("monolith", monolith)
        .service("gone", closed_port())
        .service("silent", silent)
        .request_timeout("300ms")
        .service("resetting", resetting)
        .route("/gone", "gone", 100)
        .route("/silent", "silent", 100)
        .route("/resetting", "resetting", 100)
        .start()
        .await;
    for (path, status, kind) in [
        ("/gone/1", StatusCode::BAD_GATEWAY, "connect"),
        ("/silent/1", StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ("/resetting/1", StatusCode::BAD_GATEWAY, "reset"),
    ] {
        let started = Instant::now();
        let a = get(&p.url(path)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path} took {:?}",
            started.elapsed()
        );
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.headers["content-type"], "application/json");
        let json = a.json();
        assert!(
            json["error"].as_str().unwrap().contains(kind),
            "{path}: {json}"
        );
        assert_eq!(
            json["request_id"],
            a.headers["x-request-id"].to_str().unwrap()
        );
    }
    let metrics = p.metrics().await;
    for kind in ["connect", "timeout", "reset"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("strangler_upstream_errors_total")
                    && l.contains(&format!("kind=\"{kind}\""))
                    && l.ends_with(" 1")),
            "{kind} not counted:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            "strangler_requests_total{backend=\"silent\",code=\"504\",route=\"silent\"} 1"
        )
    );
}

#[tokio::test]
async fn oversized_targets_and_headers_get_414_and_431() {
    let s = stack("limits").await.start().await;
    let eight_k = s.url(&format!("/api/users/{}", "a".repeat(8 * 1024)));
    let a = get(&eight_k).await;
    assert_eq!(
        (a.status, a.backend()),
        (StatusCode::OK, "users".to_string()),
        "an 8 KiB path is fine"
    );
    let too_long = s.url(&format!("/api/users/{}", "a".repeat(20 * 1024)));
    assert_eq!(get(&too_long).await.status, StatusCode::URI_TOO_LONG);
    let big = "b".repeat(70 * 1024);
    let a = get_with(&s.url("/api/users"), &[("x-big", &big)]).await;
    assert_eq!(a.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let metrics = s.metrics().await;
    assert!(metrics.contains("strangler_downstream_rejected_total{reason=\"uri_too_long\"} 1"));
    assert!(
        metrics.contains("strangler_downstream_rejected_total{reason=\"headers_too_large\"} 1")
    );
}

/// An upstream that counts request body bytes as they arrive and answers with the total.
async fn counting_upstream(seen: Arc<AtomicUsize>) -> SocketAddr {
    let app = Router::new().fallback(move |req: Request| {
        let seen = seen.clone();
        async move {
            let mut body = req.into_body().into_data_stream();
            let mut total = 0usize;
            while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                let n = chunk.map(|c| c.len()).unwrap_or(0);
                total += n;
                seen.fetch_add(n, Ordering::SeqCst);
            }
            total.to_string()
        }
    });
    serve(app).await
}

#[tokio::test]
async fn request_bodies_are_streamed_not_buffered() {
    let seen = Arc::new(AtomicUsize::new(0));
    let upstream = counting_upstream(seen.clone()).await;
    let p = monolith_only("upload", upstream).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = http::Request::post(p.url("/upload")).body(body).unwrap();
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::spawn(client.request(req));

    // The first chunk must reach the upstream while the client is still sending: a proxy that
    // buffered the body would hold it until the end and this would time out.
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))))
        .await
        .unwrap();
    let arrived = eventually(Duration::from_secs(5), || async {
        seen.load(Ordering::SeqCst) >= 64 * 1024
    })
    .await;
    assert!(
        arrived,
        "the first chunk did not reach the upstream before the body ended"
    );
    let chunk = Bytes::from(vec![b'y'; 1024 * 1024]);
    for _ in 0..16 {
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(tx);
    let res = response.await.unwrap().unwrap();
    let total = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&total),
        (64 * 1024 + 16 * 1024 * 1024).to_string()
    );
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn response_bodies_are_streamed_not_buffered() {
    let release = Arc::new(tokio::sync::Notify::new());
    let upstream = {
        let release = release.clone();
        serve(Router::new().fallback(move || {
            let release = release.clone();
            async move {
                let stream = futures_util::stream::unfold(0, move |step| {
                    let release = release.clone();
                    async move {
                        match step {
                            0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"first,")), 1)),
                            1 => {
                                release.notified().await;
                                Some((Ok(Bytes::from_static(b"second")), 2))
                            }
                            _ => None,
                        }
                    }
                });
                Body::from_stream(stream)
            }
        }))
        .await
    };
    let p = monolith_only("download", upstream).await;
    let res = client()
        .request(
            http::Request::get(p.url("/stream"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk arrives before the upstream finishes")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first,"));
    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second"));
}

#[tokio::test]
async fn upgrades_are_tunnelled_both_ways() {
    let (upstream, heads) = raw_upstream_recording(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        true,
    )
    .await;
    let p = monolith_only("upgrade", upstream).await;
    let mut sock = TcpStream::connect(p.public).await.unwrap();
    sock.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let sent = heads.lock().unwrap()[0].clone();
    assert!(
        sent.contains("\r\nupgrade: websocket\r\n"),
        "the upstream was not asked to upgrade: {sent}"
    );
    assert!(sent.contains("\r\nconnection: upgrade\r\n"), "{sent}");
    for message in [&b"ping"[..], b"second message"] {
        sock.write_all(message).await.unwrap();
        let mut got = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, message);
    }
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let s = stack("h2c").await.start().await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let res = client
        .request(
            http::Request::get(s.url("/api/users/3"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["backend"], "users");
    assert_eq!(body["path"], "/api/users/3");
    // No Host header in HTTP/2: the upstream gets the authority the client used, not its own.
    let authority = s.public.to_string();
    assert_eq!(body["headers"]["host"], authority.as_str(), "{body}");
    assert_eq!(
        body["headers"]["x-forwarded-host"],
        authority.as_str(),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_count_per_route_with_labels_from_the_file_only() {
    let s = stack("metrics").await.start().await;
    get(&s.url("/api/users/1")).await;
    get(&s.url("/api/users/2")).await;
    get(&s.url("/api/posts/1")).await;
    get(&s.url("/zzz-unique-path-4711")).await;
    let m = s.metrics().await;
    for line in [
        "strangler_requests_total{backend=\"users\",code=\"200\",route=\"users\"} 2",
        "strangler_requests_total{backend=\"monolith\",code=\"200\",route=\"posts\"} 1",
        "strangler_requests_total{backend=\"monolith\",code=\"200\",route=\"default\"} 1",
        "strangler_request_duration_seconds_count{backend=\"users\",route=\"users\"} 2",
        "strangler_route_weight{route=\"users\",service=\"users\",stage=\"live\"} 100",
        "strangler_route_weight{route=\"posts\",service=\"posts\",stage=\"dark\"} 0",
        "strangler_config_revision 1",
        "strangler_config_reloads_total{result=\"rejected\"} 0",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    assert!(
        !m.contains("zzz-unique"),
        "a request path leaked into a label"
    );
}

#[tokio::test]
async fn admin_endpoints_describe_the_table() {
    let s = stack("admin").await.start().await;
    assert_eq!(get(&s.admin_url("/healthz")).await.status, StatusCode::OK);
    assert_eq!(get(&s.admin_url("/readyz")).await.status, StatusCode::OK);
    let routes = get(&s.admin_url("/routes")).await.json();
    assert_eq!(routes["revision"], 1);
    let file = std::fs::read(s.reloader.path()).unwrap();
    assert_eq!(routes["sha256"], strangler_proxy::config::sha256_hex(&file));
    assert!(routes["last_reload_error"].is_null());
    assert_eq!(routes["routes"][0]["name"], "users");
    assert_eq!(routes["routes"][0]["stage"], "live");
    assert_eq!(routes["routes"][1]["stage"], "dark");
    assert_eq!(routes["routes"][1]["weight"], 0);
    assert_eq!(
        get(&s.admin_url("/nope")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_tunnelled() {
    let (upstream, heads) =
        raw_upstream_recording(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let p = monolith_only("h2c-upgrade", upstream).await;
    let a = get_with(
        &p.url("/"),
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    )
    .await;
    assert_eq!((a.status, a.text()), (StatusCode::OK, "ok".to_string()));
    let sent = heads.lock().unwrap()[0].clone();
    assert!(
        !sent.contains("upgrade"),
        "an h2c upgrade reached the upstream: {sent}"
    );
    assert!(!sent.contains("http2-settings"), "{sent}");
}
