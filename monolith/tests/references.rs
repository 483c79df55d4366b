//! Remote reference checks fail fast and clearly when the API that owns the data is unhealthy.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use monolith::app::Board;
use monolith::db::{self, Db, Seed};
use monolith::legacy::Resource;
use monolith::references::{References, RemoteReferences};
use tower::ServiceExt;

fn posts_service(references: RemoteReferences) -> (Router, Db) {
    let db = Db::in_memory(&[Resource::Posts], Seed::Legacy).expect("database");
    let board = Board::new(db.clone(), &[Resource::Posts], Arc::new(references));
    (board.router(), db)
}

async fn post(router: &Router) -> (StatusCode, String) {
    let request = Request::post("/api/posts")
        .body(Body::from(r#"{"thread":1,"text":"hello","user":1}"#))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("utf-8"))
}

fn error_message(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).expect("JSON error");
    value["error"].as_str().expect("error string").to_owned()
}

#[tokio::test]
async fn an_unreachable_api_gives_503_naming_it_fast() {
    let api_base = format!("http://{}", support::closed_port());
    let (router, db) = posts_service(RemoteReferences::new(&api_base).expect("valid"));
    let started = Instant::now();
    let (status, body) = post(&router).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = error_message(&body);
    assert!(message.contains(&api_base), "{message}");
    assert!(message.contains("GET /api/threads/1 failed"), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    let posts = db
        .blocking(|c| db::count(c, Resource::Posts))
        .expect("count");
    assert_eq!(posts, 6, "nothing written");
}

#[tokio::test]
async fn a_silent_api_times_out_into_503() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let references =
        RemoteReferences::with_timeout(&format!("http://{addr}"), Duration::from_millis(200))
            .expect("valid");
    let (router, _db) = posts_service(references);
    let started = Instant::now();
    let (status, body) = post(&router).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        error_message(&body).contains("timed out after 200ms"),
        "{body}"
    );
}

#[tokio::test]
async fn an_api_answering_neither_200_nor_204_is_503() {
    let broken = Router::new().fallback(|| async { StatusCode::INTERNAL_SERVER_ERROR });
    let api_base = format!("http://{}", support::spawn(broken).await);
    let (router, _db) = posts_service(RemoteReferences::new(&api_base).expect("valid"));
    let (status, body) = post(&router).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        error_message(&body).contains("answered 500 Internal Server Error, expected 200 or 204"),
        "{body}"
    );
}

#[tokio::test]
async fn remote_checks_read_200_as_exists_and_204_as_missing() {
    let (monolith, _db) = support::monolith();
    let api_base = format!("http://{}", support::spawn(monolith).await);
    let references = RemoteReferences::new(&api_base).expect("valid");
    let cases = [
        (Resource::Users, 4, true),
        (Resource::Users, 5, false),
        (Resource::Users, 0, false),
        (Resource::Users, -1, false),
        (Resource::Threads, 3, true),
        (Resource::Threads, 4, false),
    ];
    for (resource, id, exists) in cases {
        let answer = references.exists(resource, id).await.expect("reachable");
        assert_eq!(answer, exists, "{resource:?} {id}");
    }
}
