//! Near misses through a real proxy: requests that match a route only when letter case is
//! ignored are counted per route and logged once per path shape. This file installs the
//! process-wide log subscriber that captures the proxy's log lines.

mod support;

use http::{Method, StatusCode};
use support::*;

/// Near-miss log lines about `route`.
fn near_miss_lines(route: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&captured_log().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains("near miss") && l.contains(&format!("route={route} ")))
        .map(String::from)
        .collect()
}

async fn send_as(method: Method, url: &str) -> Answer {
    send(&client(), method, url, &[]).await.unwrap()
}

/// `route` (its name) peeling `/api/users` off to `users` at 100, writes included.
async fn proxy(test: &str, route: &str, proxy_key: &str) -> TestProxy {
    ProxyBuilder::new(test)
        .service("monolith", echo_upstream("monolith").await)
        .service("users", echo_upstream("users").await)
        .proxy_key(proxy_key)
        .route("/api/users", "users", 100)
        .with(&format!("name = \"{route}\""))
        .start()
        .await
}

#[tokio::test]
async fn a_case_near_miss_is_counted_per_route_and_logged_once_per_shape() {
    captured_log();
    let p = proxy("near-miss", "people", "").await;
    // Exact matches, and a path no route claims in any case: no near miss.
    for (method, path, backend) in [
        (Method::POST, "/api/users", "users"),
        (Method::GET, "/api/users/7", "users"),
        (Method::GET, "/api/users/", "users"),
        (Method::GET, "/api/threads/1", "monolith"),
    ] {
        let a = send_as(method.clone(), &p.url(path)).await;
        assert_eq!(a.backend(), backend, "{method} {path}");
    }
    let name = strangler_proxy::metrics::names::ROUTE_NEAR_MISSES;
    assert!(!p.metrics().await.contains(&format!("{name}{{")));
    // The split the near miss reveals: the same resource, two backends.
    for (method, path) in [
        (Method::POST, "/API/USERS"),
        (Method::POST, "/API/USERS"),
        (Method::GET, "/API/USERS/"),
        (Method::GET, "/Api/Users/7"),
        (Method::GET, "/Api/Users/8"),
    ] {
        let a = send_as(method.clone(), &p.url(path)).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.backend(), "monolith", "{method} {path}");
    }
    let m = p.metrics().await;
    assert!(m.contains(&format!("{name}{{route=\"people\"}} 5")), "{m}");
    let lines = near_miss_lines("people");
    assert_eq!(lines.len(), 2, "one line per path shape: {lines:#?}");
    assert!(lines[0].ends_with("shape=/API/USERS"), "{}", lines[0]);
    assert!(lines[0].contains("method=POST"), "{}", lines[0]);
    assert!(lines[1].ends_with("shape=/Api/Users/{n}"), "{}", lines[1]);
    assert!(lines[1].contains("ignore_case = true"), "{}", lines[1]);
}

#[tokio::test]
async fn with_ignore_case_on_there_is_no_near_miss() {
    captured_log();
    let p = proxy("near-miss-ignore-case", "members", "ignore_case = true").await;
    for path in ["/API/USERS", "/Api/Users/7"] {
        let a = send_as(Method::POST, &p.url(path)).await;
        assert_eq!(a.backend(), "users", "{path}");
    }
    let m = p.metrics().await;
    let name = strangler_proxy::metrics::names::ROUTE_NEAR_MISSES;
    assert!(!m.contains(&format!("{name}{{")), "{m}");
    assert!(near_miss_lines("members").is_empty());
}
