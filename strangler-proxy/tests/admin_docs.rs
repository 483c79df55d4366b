//! The admin listener's dashboard documents against a real proxy and real upstreams: the page
//! and its assets under a CSP that allows nothing from elsewhere, `/history` counting what
//! the request path counted, `/reloads` with every refusal's line and column, `/diffs`
//! grouped by request shape and 404 for an unknown route.

mod support;

use std::time::{Duration, SystemTime};

use http::header;
use strangler_proxy::reload::Outcome;
use support::*;

#[tokio::test]
async fn the_page_and_its_assets_are_built_in_and_fetch_nothing_from_elsewhere() {
    let p = ProxyBuilder::new("admin-page")
        .service("monolith", echo_upstream("monolith").await)
        .start()
        .await;
    for (path, media) in [
        ("/", "text/html"),
        ("/dashboard.css", "text/css"),
        ("/dashboard.js", "text/javascript"),
    ] {
        let page = get(&p.admin_url(path)).await;
        assert_eq!(page.status, 200, "{path}");
        let content_type = page.headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(content_type.starts_with(media), "{path}: {content_type}");
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        // Nothing names another origin (the SVG namespace is a name, never fetched).
        let text = page.text().replace("http://www.w3.org/2000/svg", "");
        for origin in ["http://", "https://", "//cdn", "@import"] {
            assert!(!text.contains(origin), "{path} names {origin}");
        }
    }
    let page = get(&p.admin_url("/")).await.text();
    assert!(page.contains(r#"<script src="/dashboard.js""#), "{page}");
    p.shutdown().await;
}

#[tokio::test]
async fn history_counts_each_side_per_bucket() {
    let p = ProxyBuilder::new("admin-history")
        .service("monolith", echo_upstream("monolith").await)
        .service("users", echo_upstream("users").await)
        .route("/api/users", "users", 100)
        .start()
        .await;
    let start = SystemTime::now();
    for _ in 0..7 {
        assert_eq!(get(&p.url("/api/users/1")).await.status, 200);
    }
    p.history.sample(start + Duration::from_secs(10));
    for _ in 0..3 {
        assert_eq!(get(&p.url("/api/users/1")).await.status, 200);
    }
    let doc = get(&p.admin_url("/history")).await.json();
    assert_eq!(doc["interval_seconds"], 10);
    let users = &doc["routes"][0];
    assert_eq!(users["name"], "users");
    assert_eq!(users["service"], "users");
    assert_eq!(users["default"], "monolith");
    let points = users["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{users}");
    assert_eq!(points[0]["service"]["requests"], 7, "{users}");
    assert_eq!(points[1]["service"]["requests"], 3, "{users}");
    assert_eq!(users["window"]["service"]["requests"], 10);
    assert_eq!(users["window"]["service"]["error_ratio"], 0.0);
    assert!(users["window"]["service"]["p99_seconds"].as_f64().unwrap() > 0.0);
    assert!(users["window"]["default"]["p99_seconds"].is_null());
    p.shutdown().await;
}

#[tokio::test]
async fn reloads_list_applied_and_refused_loads_newest_first() {
    let builder = ProxyBuilder::new("admin-reloads")
        .service("monolith", echo_upstream("monolith").await)
        .service("users", echo_upstream("users").await)
        .route("/api/users", "users", 0);
    let p = builder.start().await;
    let good = builder.text().replace("weight = 0", "weight = 10");
    assert!(matches!(p.rewrite(&good), Outcome::Applied(2)));
    let bad = format!("{good}colour = \"red\"\n");
    assert!(matches!(p.rewrite(&bad), Outcome::Rejected(_)));
    let text = get(&p.admin_url("/reloads")).await.text();
    // Indented, one field a line: readable from curl on a terminal.
    assert!(text.contains("\n  \"reloads\": [\n"), "{text}");
    assert!(text.ends_with("}\n"), "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let reloads = doc["reloads"].as_array().unwrap();
    assert_eq!(reloads.len(), 3, "{doc}");
    assert_eq!(reloads[0]["result"], "rejected");
    assert_eq!(reloads[0]["revision"], 2, "the revision that kept serving");
    let error = &reloads[0]["errors"][0];
    assert_eq!(error["line"], bad.lines().count(), "{doc}");
    assert_eq!(error["column"], 1, "{doc}");
    assert!(
        error["message"].as_str().unwrap().contains("colour"),
        "{doc}"
    );
    assert_eq!(reloads[1]["result"], "applied");
    assert_eq!(reloads[1]["revision"], 2);
    assert_eq!(
        reloads[1]["sha256"],
        strangler_proxy::config::sha256_hex(good.as_bytes())
    );
    assert_eq!(reloads[2]["revision"], 1);
    assert_eq!(reloads[2]["errors"], serde_json::json!([]));
    p.shutdown().await;
}

#[tokio::test]
async fn diffs_are_grouped_by_request_shape_and_an_unknown_route_is_404() {
    let p = ProxyBuilder::new("admin-diffs")
        .service("monolith", echo_upstream("monolith").await)
        .service("users", echo_upstream("users").await)
        .route("/api/users", "users", 0)
        .with("shadow = true")
        .start()
        .await;
    for path in [
        "/api/users/1",
        "/api/users/2?x=1",
        "/api/users/3",
        "/api/users",
    ] {
        assert_eq!(get(&p.url(path)).await.status, 200);
    }
    let grouped = eventually(Duration::from_secs(10), || async {
        let doc = get(&p.admin_url("/diffs?route=users")).await.json();
        doc["mismatches"].as_array().is_some_and(|m| m.len() == 4)
    })
    .await;
    assert!(grouped, "four mismatches recorded");
    let doc = get(&p.admin_url("/diffs?route=users")).await.json();
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{doc}");
    let by_shape = |shape: &str| {
        groups
            .iter()
            .find(|g| g["shape"] == shape)
            .unwrap_or_else(|| panic!("{shape} in {doc}"))
    };
    let ids = by_shape("/api/users/{n}");
    assert_eq!(ids["method"], "GET");
    assert_eq!(ids["count"], 3);
    // The echoed path differs from one id to the next; the backend name never does.
    assert!(ids["latest"]["diff"].as_str().unwrap().contains("/backend"));
    assert_eq!(by_shape("/api/users")["count"], 1);

    let unknown = get(&p.admin_url("/diffs?route=nope")).await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.text().contains("routes: users"),
        "{}",
        unknown.text()
    );
    p.shutdown().await;
}
