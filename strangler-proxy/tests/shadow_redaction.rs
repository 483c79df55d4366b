//! Secrets on a shadowed route: query values and redacted JSON fields never reach `/diffs` or
//! the log, whatever the mismatch. This file installs the process-wide log subscriber that
//! captures the proxy's log lines (at every level).

mod support;

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use support::*;

/// An upstream answering a user whose password and session token are its own, and whose
/// `name` differs between the two sides (the mismatch).
async fn user_upstream(name: &'static str, password: &'static str) -> std::net::SocketAddr {
    let app = Router::new().fallback(move |_req: Request| async move {
        axum::Json(serde_json::json!({
            "name": name,
            "password": password,
            "sessions": [{ "token": format!("{password}-token"), "id": 1 }],
        }))
    });
    serve(app).await
}

#[tokio::test]
async fn query_values_and_redacted_fields_never_reach_diffs_or_logs() {
    captured_log();
    let p = ProxyBuilder::new("shadow-redaction")
        .service("monolith", user_upstream("legacy", "hunter2").await)
        .service("users", user_upstream("extracted", "swordfish").await)
        .proxy_key("show_query_keys = [\"page\"]")
        .route("/api/users", "users", 0)
        .with("shadow = true")
        .with("shadow_redact = [\"/password\", \"/*/*/token\"]")
        .start()
        .await;
    // The builder turns the access log off; on, it must not leak either.
    let text = std::fs::read_to_string(p.path()).unwrap();
    let outcome = p.rewrite(&text.replace("access_log = false", "access_log = true"));
    assert!(
        matches!(
            outcome,
            // The watcher may have applied the write first.
            strangler_proxy::reload::Outcome::Applied(2)
                | strangler_proxy::reload::Outcome::Unchanged
        ),
        "{outcome:?}"
    );
    let a = get(&p.url("/api/users/1?access_token=SECRET&page=2")).await;
    assert_eq!(a.json()["name"], "legacy");
    let diffs_url = p.admin_url("/diffs?route=users");
    let recorded = eventually(Duration::from_secs(5), || async {
        get(&diffs_url).await.json()["mismatches"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await;
    let diffs = get(&diffs_url).await.json();
    assert!(recorded, "no mismatch recorded: {diffs}");
    let text = diffs.to_string();
    let mismatch = &diffs["mismatches"][0];
    assert_eq!(
        mismatch["path"], "/api/users/1?access_token=REDACTED&page=2",
        "{text}"
    );
    assert!(
        text.contains("/name"),
        "the real difference is shown: {text}"
    );
    assert!(text.contains("/password"), "the field is named: {text}");
    let logged = eventually(Duration::from_secs(5), || async {
        String::from_utf8_lossy(&captured_log().lock().unwrap()).contains("shadow mismatch")
    })
    .await;
    let lines = String::from_utf8_lossy(&captured_log().lock().unwrap()).into_owned();
    assert!(logged, "no mismatch logged: {lines}");
    for secret in ["SECRET", "hunter2", "swordfish"] {
        assert!(!text.contains(secret), "{secret} in /diffs: {text}");
        assert!(!lines.contains(secret), "{secret} in the log: {lines}");
    }
    // The access log is written by its own thread, not through tracing: that it names the
    // path and never the query is checked on the binary's stderr, in
    // `shutdown::the_binary_logs_every_request_before_it_exits_without_queries_or_colours`.
}
