//! The proxy against services that misbehave at the connection level: connections closed as
//! they are reused, services that stop answering (outlier detection).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Method, StatusCode};
use strangler_proxy::server::{self, Running};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads one request head; `None` when the peer closed first.
async fn read_head(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A raw HTTP/1.1 service that answers the first request of each connection with
/// `Connection: keep-alive`, then closes the connection when the second arrives, without a
/// word: the race of a service closing an idle connection just as the proxy reuses it, made
/// deterministic. Counts the requests by method.
async fn closing_after_one() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (gets, posts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (g, p) = (gets.clone(), posts.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (g, p) = (g.clone(), p.clone());
            tokio::spawn(async move {
                for n in 0..2 {
                    let Some(head) = read_head(&mut sock).await else {
                        return;
                    };
                    let counter = if head.starts_with("POST") { &p } else { &g };
                    counter.fetch_add(1, Ordering::SeqCst);
                    if n == 1 {
                        return; // closes the connection without answering
                    }
                    let answer =
                        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\ncontent-length: 2\r\n\r\nok";
                    if sock.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, gets, posts)
}

#[tokio::test]
async fn a_get_on_a_connection_closed_as_it_is_reused_is_sent_again_but_a_post_is_not() {
    let (service, gets, posts) = closing_after_one().await;
    // The default route: the retry is not a routed service's privilege.
    let p = ProxyBuilder::new("reused-closed")
        .service("monolith", service)
        .start()
        .await;
    let c = client();
    let first = send(&c, Method::GET, &p.url("/a"), &[]).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    // The same pooled connection is reused, and the service closes it on this request.
    let second = send(&c, Method::GET, &p.url("/b"), &[]).await.unwrap();
    assert_eq!(
        (second.status, second.text()),
        (StatusCode::OK, "ok".to_string()),
        "the GET is sent again on a new connection ({} GETs arrived)",
        gets.load(Ordering::SeqCst)
    );
    assert_eq!(gets.load(Ordering::SeqCst), 3, "first, closed, sent again");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "strangler_upstream_retries_total{backend=\"monolith\",route=\"default\"}"
        ),
        1,
        "{m}"
    );

    // A fresh pooled connection, then a POST on it, which the service closes: never sent twice.
    let third = send(&c, Method::GET, &p.url("/c"), &[]).await.unwrap();
    assert_eq!(third.status, StatusCode::OK);
    let post = send(&c, Method::POST, &p.url("/d"), &[]).await.unwrap();
    assert_eq!(post.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "the POST reached the service once"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "strangler_upstream_retries_total{backend=\"monolith\",route=\"default\"}"
        ),
        1
    );
}

/// monolith (echo) and users (gated: `/held/` requests are never answered until the gate
/// opens, a `kill -STOP` in-process), `/api/users` → users with fallback, `/api/plain` →
/// users without; users times out after 1 s and is ejected after 3 failures for `cooldown`.
async fn frozen_users(test: &str, cooldown: &str) -> (Running, Gate) {
    let (users, gate) = gated_upstream("users").await;
    let text = ProxyBuilder::new(test)
        .service("monolith", echo_upstream("monolith").await)
        .service("users", users)
        .request_timeout("1s")
        .route("/api/users", "users", 100)
        .with("fallback = true")
        .route("/api/plain", "users", 100)
        .with("name = \"plain\"")
        .text()
        .replace(
            "[services.users]\n",
            &format!("[services.users]\noutlier_failures = 3\noutlier_cooldown = \"{cooldown}\"\n"),
        );
    let path = temp_dir(test).join("routes.toml");
    std::fs::write(&path, text).unwrap();
    (server::start(&path).await.unwrap(), gate)
}

#[tokio::test]
async fn a_frozen_service_is_ejected_after_consecutive_timeouts_then_probed() {
    let (p, gate) = frozen_users("outlier", "1s").await;
    let url = |path: &str| format!("http://{}{path}", p.public);
    let admin = |path: &str| format!("http://{}{path}", p.admin);
    // Three GETs time out at once; with fallback on, the monolith answers each.
    let timing_out: Vec<_> = (0..3)
        .map(|i| spawn_get(url(&format!("/api/users/held/{i}"))))
        .collect();
    for t in timing_out {
        let a = t.await.unwrap().unwrap();
        assert_eq!((a.status, a.backend()), (StatusCode::OK, "monolith".into()));
    }
    assert_eq!(gate.arrived(), 3);

    // Ejected: GETs go straight to the default, far within the 1 s request timeout.
    for i in 0..5 {
        let started = std::time::Instant::now();
        let a = get(&url(&format!("/api/users/held/after-{i}"))).await;
        let took = started.elapsed();
        assert_eq!((a.status, a.backend()), (StatusCode::OK, "monolith".into()));
        assert!(
            took < std::time::Duration::from_millis(200),
            "took {took:?}"
        );
    }
    // A write (and any request on a route without fallback) gets a fast 503.
    for (method, path) in [
        (Method::POST, "/api/users/1"),
        (Method::GET, "/api/plain/1"),
    ] {
        let started = std::time::Instant::now();
        let a = send(&client(), method.clone(), &url(path), &[])
            .await
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_millis(200));
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
        assert!(a.headers.contains_key("retry-after"), "{method} {path}");
        assert!(a.json()["error"].as_str().unwrap().contains("users"));
    }
    assert_eq!(gate.arrived(), 3, "nothing reached the frozen service");
    let m = get(&admin("/metrics")).await.text();
    assert_eq!(
        metric(&m, "strangler_outlier_ejections_total{service=\"users\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "strangler_outlier_ejected{service=\"users\"}"),
        1,
        "{m}"
    );
    let routes = get(&admin("/routes")).await.json();
    let users = routes["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "users")
        .unwrap()
        .clone();
    assert_eq!(users["outlier"], "ejected", "{users}");
    assert!(users["ejected_until"].is_string(), "{users}");

    // After the cool-down one probe reaches the service; its answer closes the breaker.
    let probed = eventually(std::time::Duration::from_secs(5), || async {
        get(&url("/api/users/1")).await.backend() == "users"
    })
    .await;
    assert!(probed, "no probe reached the service after the cool-down");
    let m = get(&admin("/metrics")).await.text();
    assert_eq!(
        metric(&m, "strangler_outlier_ejected{service=\"users\"}"),
        0,
        "{m}"
    );
    let routes = get(&admin("/routes")).await.json();
    assert!(
        routes["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "users" && s["outlier"] == "closed"),
        "{routes}"
    );
    gate.open();
}
