//! Traffic shifting against real upstreams: sticky splits across proxies, the override header,
//! fallback to the monolith, and shadow comparison.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use support::*;
use tokio::task::JoinHandle;

/// monolith and users echo upstreams, `/api/users` → users at `weight`.
async fn echo_pair(test: &str, weight: u16) -> ProxyBuilder {
    ProxyBuilder::new(test)
        .service("monolith", echo_upstream("monolith").await)
        .service("users", echo_upstream("users").await)
        .route("/api/users", "users", weight)
}

#[tokio::test]
async fn two_proxies_put_every_sticky_key_on_the_same_side() {
    let proxy = echo_pair("sticky", 25)
        .await
        .with(r#"sticky = "header:x-user-id""#);
    let (a, b) = (proxy.start().await, proxy.start().await);
    let c = client();
    let mut on_service = 0;
    for user in 0..1_000 {
        let id = format!("u{user}");
        let headers = [("x-user-id", id.as_str())];
        let url = |p: &TestProxy| p.url("/api/users/1");
        let from_a = send(&c, Method::GET, &url(&a), &headers)
            .await
            .unwrap()
            .backend();
        let from_b = send(&c, Method::GET, &url(&b), &headers)
            .await
            .unwrap()
            .backend();
        assert_eq!(from_a, from_b, "key {id} split differently");
        on_service += usize::from(from_a == "users");
    }
    assert!(
        (180..=320).contains(&on_service),
        "{on_service} of 1000 keys at 25 %"
    );
}

#[tokio::test]
async fn keys_stay_put_across_reloads_and_a_ramp_only_adds_keys() {
    let services = ProxyBuilder::new("ramp")
        .service("monolith", echo_upstream("monolith").await)
        .service("users", echo_upstream("users").await);
    let at = |w: u16| {
        services
            .clone()
            .route("/api/users", "users", w)
            .with(r#"sticky = "cookie:sid""#)
    };
    let p = at(10).start().await;
    let c = client();
    let sides = |p: &TestProxy| {
        let url = p.url("/api/users");
        let c = c.clone();
        async move {
            let mut out = Vec::new();
            for key in 0..300 {
                let cookie = format!("theme=x; sid=k{key}");
                let a = send(&c, Method::GET, &url, &[("cookie", cookie.as_str())])
                    .await
                    .unwrap();
                out.push(a.backend() == "users");
            }
            out
        }
    };
    let at_10 = sides(&p).await;
    let reload_to = |weight: u16| {
        let before = p.live.table().revision;
        // The watcher may get there first; either way a new revision must serve.
        p.rewrite(&at(weight).text());
        assert!(
            p.live.table().revision > before,
            "weight {weight} was not applied"
        );
    };
    reload_to(25);
    let at_25 = sides(&p).await;
    for (key, (before, after)) in at_10.iter().zip(&at_25).enumerate() {
        assert!(
            !before || *after,
            "key k{key} left the service when the weight went up"
        );
    }
    assert!(at_25.iter().filter(|s| **s).count() > at_10.iter().filter(|s| **s).count());
    reload_to(10);
    assert_eq!(
        sides(&p).await,
        at_10,
        "back at 10 %, every key is where it was"
    );
}

#[tokio::test]
async fn the_override_header_is_opt_in_and_never_forwarded() {
    let off = echo_pair("override-off", 0).await;
    let on = off
        .clone()
        .proxy_key(r#"override_header = "x-strangler-route""#)
        .route("/api/threads", "users", 100)
        .with(r#"name = "threads""#)
        .start()
        .await;
    let off = off.start().await;
    let a = get_with(&off.url("/api/users"), &[("x-strangler-route", "users")]).await;
    assert_eq!(
        a.backend(),
        "monolith",
        "without [proxy] override_header a client cannot choose"
    );

    let url = |path: &str| on.url(path);
    let forced = get_with(&url("/api/users/1"), &[("x-strangler-route", "users")]).await;
    assert_eq!(forced.backend(), "users");
    assert!(
        forced.json()["headers"].get("x-strangler-route").is_none(),
        "the header reached the backend"
    );
    let back = get_with(&url("/api/threads/1"), &[("x-strangler-route", "default")]).await;
    assert_eq!(back.backend(), "monolith");
    let unknown = get_with(&url("/api/users/1"), &[("x-strangler-route", "nope")]).await;
    assert_eq!(
        unknown.backend(),
        "monolith",
        "an unknown value changes nothing"
    );
}

/// A service whose listener can be killed: `kill()` stops accepting and closes open sockets.
struct Killable {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

async fn killable(name: &'static str) -> Killable {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(move |req: Request| async move {
        axum::Json(serde_json::json!({"backend": name, "path": req.uri().path()}))
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Killable { addr, task }
}

#[tokio::test]
async fn fallback_hides_a_dying_service_from_get_clients_but_never_replays_writes() {
    let monolith = echo_upstream("monolith").await;
    let users = killable("users").await;
    let p = ProxyBuilder::new("fallback")
        .service("monolith", monolith)
        .service("users", users.addr)
        .route("/api/users", "users", 100)
        .with("fallback = true")
        .start()
        .await;
    let url = p.url("/api/users/1");
    assert_eq!(get(&url).await.backend(), "users");

    // 8 clients send GETs continuously while the service is killed half way.
    let stop_at = Instant::now() + Duration::from_secs(20);
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (url, sent) = (url.clone(), sent.clone());
            tokio::spawn(async move {
                let c = client();
                let mut failures = Vec::new();
                let mut backends = std::collections::BTreeSet::new();
                for _ in 0..150 {
                    if Instant::now() > stop_at {
                        break;
                    }
                    match send(&c, Method::GET, &url, &[]).await {
                        Ok(a) if a.status == StatusCode::OK => {
                            backends.insert(a.backend());
                        }
                        Ok(a) => failures.push(format!("{} {}", a.status, a.text())),
                        Err(e) => failures.push(e),
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                (failures, backends)
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sent.load(Ordering::SeqCst) >= 400
        })
        .await
    );
    users.task.abort();
    let mut seen = std::collections::BTreeSet::new();
    for c in clients {
        let (failures, backends) = c.await.unwrap();
        assert!(
            failures.is_empty(),
            "GET clients saw failures: {failures:?}"
        );
        seen.extend(backends);
    }
    assert!(
        seen.contains("monolith") && seen.contains("users"),
        "{seen:?}"
    );
    assert_eq!(
        get(&url).await.backend(),
        "monolith",
        "the service is gone, the monolith answers"
    );
    let m = p.metrics().await;
    assert!(
        metric(&m, "strangler_fallbacks_total{route=\"users\"}") >= 1,
        "{m}"
    );
    assert!(
        m.contains("strangler_requests_total{backend=\"monolith\",code=\"200\",route=\"users\"}")
    );

    // A POST is never replayed: the client sees the service's failure, by now a fast 503 as
    // the dead service has been ejected.
    let post = send(&client(), Method::POST, &url, &[]).await.unwrap();
    assert_eq!(
        post.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        post.text()
    );
    assert!(post.json()["error"].as_str().unwrap().contains("\"users\""));
}

#[tokio::test]
async fn fallback_also_covers_gateway_errors_from_the_service() {
    let monolith = echo_upstream("monolith").await;
    let overloaded =
        serve(Router::new().fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, "busy") })).await;
    let p = ProxyBuilder::new("fallback-503")
        .service("monolith", monolith)
        .service("users", overloaded)
        .route("/api/users", "users", 100)
        .with("fallback = true")
        .route("/api/nofallback", "users", 100)
        .with(r#"name = "plain""#)
        .start()
        .await;
    let a = get(&p.url("/api/users/2")).await;
    assert_eq!(
        (a.status, a.backend()),
        (StatusCode::OK, "monolith".to_string())
    );
    let a = get(&p.url("/api/nofallback")).await;
    assert_eq!(
        a.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "without fallback the answer stands"
    );
    let m = p.metrics().await;
    assert!(
        m.contains(
            "strangler_upstream_errors_total{backend=\"users\",kind=\"http_503\",route=\"users\"} 1"
        ),
        "{m}"
    );
}

/// A service that answers like the monolith but with deliberate differences by path.
async fn differing_service(hits: Arc<AtomicUsize>, delay: Duration) -> SocketAddr {
    serve(Router::new().fallback(move |req: Request| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            assert_eq!(req.headers()["x-strangler-shadow"], "1");
            let body = match req.uri().path() {
                "/api/users/1" => serde_json::json!({"id": 1, "name": "Marceline"}),
                "/api/users/2" => serde_json::json!({"id": 2}),
                "/api/users/3" => return (StatusCode::NO_CONTENT, "").into_response(),
                "/api/users" => serde_json::json!([{"id": 2}, {"id": 1}]),
                "/api/users/clock" => serde_json::json!({"id": 9, "at": 12345}),
                _ => serde_json::json!({}),
            };
            axum::Json(body).into_response()
        }
    }))
    .await
}

/// The monolith: answers `/api/users/clock` with a fresh timestamp every time.
async fn legacy() -> SocketAddr {
    let tick = Arc::new(AtomicUsize::new(0));
    serve(Router::new().fallback(move |req: Request| {
        let tick = tick.clone();
        async move {
            let body = match req.uri().path() {
                "/api/users/1" | "/api/users/3" => {
                    serde_json::json!({"id": 1, "name": "Marceline"})
                }
                "/api/users/2" => serde_json::json!({"id": 2, "bio": "hero"}),
                "/api/users" => serde_json::json!([{"id": 1}, {"id": 2}]),
                "/api/users/clock" => {
                    serde_json::json!({"id": 9, "at": tick.fetch_add(1, Ordering::SeqCst)})
                }
                _ => serde_json::json!({}),
            };
            let response: Response = axum::Json(body).into_response();
            response
        }
    }))
    .await
}

/// `monolith` in front, `/api/users` shadowed to `service` at weight 0.
fn shadowing(test: &str, monolith: SocketAddr, service: SocketAddr) -> ProxyBuilder {
    ProxyBuilder::new(test)
        .service("monolith", monolith)
        .service("users", service)
        .route("/api/users", "users", 0)
        .with("shadow = true")
}

async fn comparisons(p: &TestProxy, result: &str, at_least: u64) -> bool {
    let prefix =
        format!("strangler_shadow_comparisons_total{{result=\"{result}\",route=\"users\"}}");
    eventually(Duration::from_secs(5), || async {
        metric(&p.metrics().await, &prefix) >= at_least
    })
    .await
}

#[tokio::test]
async fn shadows_are_compared_and_mismatches_explained() {
    let hits = Arc::new(AtomicUsize::new(0));
    let service = differing_service(hits.clone(), Duration::ZERO).await;
    let p = shadowing("shadow", legacy().await, service).start().await;
    let base = p.url("");
    // The client always gets the monolith's answer.
    let a = get(&format!("{base}/api/users/2")).await;
    assert_eq!(a.json(), serde_json::json!({"id": 2, "bio": "hero"}));
    assert!(comparisons(&p, "mismatch", 1).await);
    get(&format!("{base}/api/users/1")).await;
    assert!(
        comparisons(&p, "match", 1).await,
        "identical answers in another key order match"
    );
    get(&format!("{base}/api/users/3")).await;
    get(&format!("{base}/api/users")).await;
    assert!(comparisons(&p, "mismatch", 3).await);
    // Writes are not shadowed unless shadow_methods says so.
    send(&client(), Method::POST, &format!("{base}/api/users"), &[])
        .await
        .unwrap();

    let diffs = get(&p.admin_url("/diffs?route=users")).await.json();
    let list = diffs["mismatches"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{diffs}");
    let by_path = |path: &str| {
        list.iter()
            .find(|m| m["path"] == path)
            .unwrap_or_else(|| panic!("{path} in {diffs}"))
    };
    assert_eq!(
        by_path("/api/users/2")["diff"],
        "/bio: default \"hero\" | service (missing)\n"
    );
    let status = by_path("/api/users/3");
    assert_eq!(
        (
            status["default_status"].as_u64(),
            status["service_status"].as_u64()
        ),
        (Some(200), Some(204))
    );
    assert!(
        status["diff"]
            .as_str()
            .unwrap()
            .starts_with("status: default 200 | service 204")
    );
    assert_eq!(
        by_path("/api/users")["diff"],
        "/0/id: default 1 | service 2\n/1/id: default 2 | service 1\n"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4, "GETs only were mirrored");
}

#[tokio::test]
async fn noise_in_the_default_is_learned_not_blamed_on_the_service() {
    let hits = Arc::new(AtomicUsize::new(0));
    let service = differing_service(hits, Duration::ZERO).await;
    let monolith = legacy().await;
    let noisy = shadowing("noise-off", monolith, service)
        .with("shadow_noise_check = false")
        .start()
        .await;
    get(&noisy.url("/api/users/clock")).await;
    assert!(
        comparisons(&noisy, "mismatch", 1).await,
        "without the check a timestamp is a mismatch"
    );

    let learning = shadowing("noise-on", monolith, service)
        .with("shadow_noise_check = true")
        .start()
        .await;
    for _ in 0..3 {
        get(&learning.url("/api/users/clock")).await;
    }
    assert!(comparisons(&learning, "match", 3).await);
    let diffs = get(&learning.admin_url("/diffs?route=users")).await.json();
    assert_eq!(diffs["learned_noise"], serde_json::json!(["/at"]));
    assert_eq!(diffs["mismatches"], serde_json::json!([]));
}

#[tokio::test]
async fn shadows_never_slow_the_client_and_are_dropped_when_full() {
    let hits = Arc::new(AtomicUsize::new(0));
    let slow_service = differing_service(hits.clone(), Duration::from_millis(1500)).await;
    let p = shadowing("shadow-bound", legacy().await, slow_service)
        .proxy_key("shadow_concurrency = 2")
        .start()
        .await;
    let started = Instant::now();
    for _ in 0..6 {
        assert_eq!(get(&p.url("/api/users/1")).await.status, StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "clients waited for shadows: {:?}",
        started.elapsed()
    );
    assert!(comparisons(&p, "dropped", 4).await, "{}", p.metrics().await);
    assert!(comparisons(&p, "match", 2).await);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "only permitted shadows reached the service"
    );
}

#[tokio::test]
async fn writes_are_shadowed_with_their_body_when_the_operator_asks() {
    // Both sides echo the request body back, so a body that did not reach the service whole
    // would be a mismatch. The monolith counts what it receives.
    let monolith_hits = Arc::new(AtomicUsize::new(0));
    let monolith = {
        let hits = monolith_hits.clone();
        serve(Router::new().fallback(move |body: axum::body::Bytes| {
            hits.fetch_add(1, Ordering::SeqCst);
            async move { body }
        }))
        .await
    };
    let service =
        serve(Router::new().fallback(|body: axum::body::Bytes| async move { body })).await;
    let p = shadowing("shadow-post", monolith, service)
        .with(r#"shadow_methods = ["POST"]"#)
        .with("shadow_noise_check = true")
        .start()
        .await;
    let body = "x".repeat(200_000);
    let req = http::Request::post(p.url("/api/users"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(comparisons(&p, "match", 1).await, "{}", p.metrics().await);
    assert_eq!(
        monolith_hits.load(Ordering::SeqCst),
        1,
        "the noise check must never send a write to the default twice"
    );
}
