//! With `--follow`'s change capture installed, the monolith answers every request exactly as
//! without it (the triggers only add rows to a side table), and the side table does record the
//! changes.

mod common;

use std::sync::Arc;

use axum::body::Body;
use http::{Method, Request};
use http_body_util::BodyExt as _;
use monolith::app::Board;
use monolith::db::{Db, Seed};
use monolith::legacy::Resource;
use monolith::references::LocalReferences;
use strangler_ops::capture;
use strangler_ops::pair::{Open, Pair};
use strangler_ops::sync::Side;
use tower::ServiceExt as _;

use common::{Scratch, sqlite};

fn board(dir: &Scratch) -> (axum::Router, Db) {
    let db = Db::open(&dir.join("monolith.db"), &Resource::ALL, Seed::Legacy).expect("open");
    let refs = Arc::new(LocalReferences::new(db.clone()));
    (Board::new(db.clone(), &Resource::ALL, refs).router(), db)
}

async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    body: &str,
) -> (u16, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn the_monolith_answers_the_same_with_change_capture_on() {
    let plain_dir = Scratch::new("plain");
    let captured_dir = Scratch::new("captured");
    let (plain, _plain_db) = board(&plain_dir);
    let (captured, _captured_db) = board(&captured_dir);
    // Capture on every resource, as three followers would install it.
    for resource in Resource::ALL {
        let (mut pair, table) = Pair::open(
            &captured_dir.path,
            &common::declared(resource),
            Open::CreatingTarget,
        )
        .expect("open");
        let table = &table;
        capture::install(&mut pair.monolith, table, Side::Monolith).expect("install");
        assert!(capture::installed(&mut pair.monolith, table).expect("installed"));
    }

    let script: &[(Method, &str, &str)] = &[
        (
            Method::POST,
            "/api/users",
            r#"{"username":"new","name":"N","bio":"b"}"#,
        ),
        (
            Method::POST,
            "/api/threads",
            r#"{"title":"T","createdBy":5}"#,
        ),
        (
            Method::POST,
            "/api/posts",
            r#"{"thread":4,"text":"hello","user":5}"#,
        ),
        (
            Method::POST,
            "/api/posts",
            r#"{"thread":4,"text":"again","user":1}"#,
        ),
        (
            Method::POST,
            "/api/posts",
            r#"{"thread":99,"text":"x","user":1}"#,
        ),
        (Method::POST, "/api/posts", r#"{"thread":"x"}"#),
        (Method::DELETE, "/api/posts/2", ""),
        (Method::DELETE, "/api/posts/2", ""),
        (Method::DELETE, "/api/posts/999", ""),
        (Method::GET, "/api/posts", ""),
        (Method::GET, "/api/users", ""),
        (Method::GET, "/api/threads/4", ""),
        (Method::GET, "/api/posts/in-thread/4", ""),
    ];
    for (method, path, body) in script {
        let a = call(&plain, method.clone(), path, body).await;
        let b = call(&captured, method.clone(), path, body).await;
        assert_eq!(a, b, "{method} {path}");
    }
    // Ids come out as without capture: last_insert_rowid is not disturbed by the trigger.
    let (_, _, created) = call(
        &captured,
        Method::POST,
        "/api/posts",
        r#"{"thread":1,"text":"z","user":1}"#,
    )
    .await;
    assert!(created.starts_with(r#"{"id":9,"#), "{created}");

    // And the side table saw every change: 1 user, 1 thread, 3 posts created, 1 post deleted.
    let changes: Vec<(String, i64)> = sqlite(&captured_dir.join("monolith.db"))
        .prepare("SELECT resource, row_id FROM _strangler_changes ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(String, i64)> = [
        ("users", 5),
        ("threads", 4),
        ("posts", 7),
        ("posts", 8),
        ("posts", 2),
        ("posts", 9),
    ]
    .iter()
    .map(|(r, id)| (r.to_string(), *id))
    .collect();
    assert_eq!(changes, expected);
}
