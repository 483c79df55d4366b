//! The write fence (`hold_writes`, reference §7): writes wait in the proxy, bounded in time and
//! number, and go wherever the table in service sends them once the fence lifts.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use tokio::io::AsyncWriteExt;

const HELD: &str = "strangler_held_requests{route=\"users\"}";

async fn held_now(p: &TestProxy) -> Option<f64> {
    p.metrics()
        .await
        .lines()
        .find(|l| l.starts_with(HELD))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// monolith and users on these upstreams, with extra `[proxy]` keys.
fn services(monolith: SocketAddr, users: SocketAddr, proxy_extra: &str) -> ProxyBuilder {
    ProxyBuilder::new("fence")
        .proxy_key(proxy_extra)
        .service("monolith", monolith)
        .service("users", users)
}

/// `users` on `prefix`: reads on the service, writes on the monolith behind a fence.
fn fenced(services: &ProxyBuilder, prefix: &str) -> ProxyBuilder {
    services
        .clone()
        .route(prefix, "users", 100)
        .with(r#"name = "users""#)
        .with(r#"methods = ["GET", "HEAD"]"#)
        .with("hold_writes = true")
}

/// The same route after the flip: every method on the service, fence lifted.
fn flipped(services: &ProxyBuilder, prefix: &str) -> String {
    services
        .clone()
        .route(prefix, "users", 100)
        .with(r#"name = "users""#)
        .text()
}

#[tokio::test]
async fn a_held_write_goes_where_the_table_that_lifts_the_fence_sends_it() {
    let services = services(
        echo_upstream("monolith").await,
        echo_upstream("users").await,
        "",
    );
    let proxy = fenced(&services, "/api/users").start().await;
    let url = proxy.url("/api/users");

    let write = tokio::spawn({
        let url = url.clone();
        async move { send(&client(), Method::POST, &url, &[]).await }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            held_now(&proxy).await == Some(1.0)
        })
        .await,
        "the write was not held: {}",
        proxy.metrics().await
    );
    // Safe methods pass the fence.
    assert_eq!(get(&format!("{url}/1")).await.json()["backend"], "users");
    let routes = get(&proxy.admin_url("/routes")).await.json();
    assert_eq!(routes["routes"][0]["hold_writes"], true);
    assert_eq!(routes["routes"][0]["held"], 1);
    assert!(!write.is_finished(), "a held write must wait, not fail");

    proxy.rewrite(&flipped(&services, "/api/users"));
    let answer = write.await.unwrap().expect("the held write is answered");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["backend"], "users", "sent by the new table");
    assert_eq!(answer.json()["method"], "POST");
    let text = proxy.metrics().await;
    assert!(text.contains(&format!("{HELD} 0")), "{text}");
    assert!(
        text.contains("strangler_hold_duration_seconds_count{route=\"users\"} 1"),
        "{text}"
    );
    let sha = get(&proxy.admin_url("/routes")).await.json()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains(&format!("strangler_config_info{{sha256=\"{sha}\"}} 1")),
        "{text}"
    );
    assert_eq!(text.matches("strangler_config_info{").count(), 1, "{text}");
}

#[tokio::test]
async fn a_write_held_past_hold_timeout_gets_503_and_never_reaches_a_backend() {
    let (monolith, gate) = gated_upstream("monolith").await;
    let services = services(
        monolith,
        echo_upstream("users").await,
        r#"hold_timeout = "200ms""#,
    );
    let proxy = fenced(&services, "/held").start().await;
    let answer = send(
        &client(),
        Method::POST,
        &proxy.url("/held/1"),
        &[("x-request-id", "held-1")],
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers["retry-after"], "1");
    let body = answer.json();
    assert_eq!(body["request_id"], "held-1");
    assert!(
        body["error"].as_str().unwrap().contains("hold_timeout"),
        "{body}"
    );
    assert_eq!(gate.arrived(), 0, "a refused write was forwarded");
    let text = proxy.metrics().await;
    assert!(text.contains(&format!("{HELD} 0")), "{text}");
    assert!(
        text.contains("strangler_hold_rejections_total{reason=\"timeout\",route=\"users\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn past_hold_max_a_write_is_refused_at_once() {
    let services = services(
        echo_upstream("monolith").await,
        echo_upstream("users").await,
        "hold_max = 1",
    );
    let proxy = fenced(&services, "/api/users").start().await;
    let url = proxy.url("/api/users");
    let first = tokio::spawn({
        let url = url.clone();
        async move { send(&client(), Method::POST, &url, &[]).await }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            held_now(&proxy).await == Some(1.0)
        })
        .await
    );
    let second = send(&client(), Method::DELETE, &format!("{url}/3"), &[])
        .await
        .unwrap();
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.text().contains("hold_max (1)"), "{}", second.text());
    proxy.rewrite(&flipped(&services, "/api/users"));
    assert_eq!(first.await.unwrap().unwrap().json()["backend"], "users");
}

#[tokio::test]
async fn a_held_write_whose_client_goes_away_is_dropped_not_forwarded() {
    let (monolith, monolith_gate) = gated_upstream("monolith").await;
    let (users, users_gate) = gated_upstream("users").await;
    let services = services(monolith, users, "");
    let proxy = fenced(&services, "/held").start().await;

    let mut raw = tokio::net::TcpStream::connect(proxy.public).await.unwrap();
    raw.write_all(b"POST /held/1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            held_now(&proxy).await == Some(1.0)
        })
        .await
    );
    drop(raw);
    assert!(
        eventually(Duration::from_secs(5), || async {
            held_now(&proxy).await == Some(0.0)
        })
        .await,
        "the held request outlived its client"
    );
    proxy.rewrite(&flipped(&services, "/held"));
    users_gate.open();
    let after = send(&client(), Method::POST, &proxy.url("/held/2"), &[])
        .await
        .unwrap();
    assert_eq!(after.json()["backend"], "users");
    // Only the write sent after the flip arrived anywhere.
    assert_eq!(users_gate.arrived() + monolith_gate.arrived(), 1);
}

#[tokio::test]
async fn writes_in_flight_are_counted_per_route_and_backend() {
    let (monolith, gate) = gated_upstream("monolith").await;
    let proxy = services(monolith, echo_upstream("users").await, "")
        .route("/held", "users", 100)
        .with(r#"name = "users""#)
        .with(r#"methods = ["GET"]"#)
        .start()
        .await;
    let url = proxy.url("/held/1");
    let write = tokio::spawn(async move { send(&client(), Method::POST, &url, &[]).await });
    let series =
        "strangler_in_flight_requests{backend=\"monolith\",class=\"write\",route=\"users\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metrics().await.contains(&format!("{series} 1"))
        })
        .await
    );
    let routes = get(&proxy.admin_url("/routes")).await.json();
    assert_eq!(routes["routes"][0]["in_flight"]["monolith"], 1);
    assert_eq!(routes["routes"][0]["writes_in_flight"]["monolith"], 1);
    assert_eq!(routes["routes"][0]["writes_in_flight"]["users"], 0);
    gate.open();
    assert_eq!(write.await.unwrap().unwrap().status, StatusCode::OK);
    assert!(proxy.metrics().await.contains(&format!("{series} 0")));
}
