//! The monolith's `--reference-wait`: once users' writes are switched to the users service, a
//! user created there reaches the monolith's copy a few milliseconds later (reverse sync); a
//! thread by that user created meanwhile on the monolith waits for it instead of failing 422.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use monolith::app::Board;
use monolith::db::{Db, Seed};
use monolith::legacy::Resource;
use monolith::references::LocalReferences;
use monolith::users::{self, User};
use tower::ServiceExt;

fn monolith(wait: Duration) -> (Router, Db) {
    let db = Db::in_memory(&Resource::ALL, Seed::Legacy).expect("database");
    let refs = Arc::new(LocalReferences::with_wait(db.clone(), wait));
    (Board::new(db.clone(), &Resource::ALL, refs).router(), db)
}

async fn create_thread(router: &Router, created_by: i64) -> (StatusCode, String, Duration) {
    let request = Request::post("/api/threads")
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"title":"hello","createdBy":{created_by}}}"#
        )))
        .expect("request");
    let started = Instant::now();
    let response = router.clone().oneshot(request).await.expect("infallible");
    let took = started.elapsed();
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), took)
}

#[tokio::test]
async fn a_user_arriving_during_the_wait_makes_the_write_succeed() {
    let (router, db) = monolith(Duration::from_secs(2));
    // The user arrives 100 ms after the thread is posted, as reverse sync would bring it.
    let writer = db.clone();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer
            .call(|c| {
                users::insert_with_id(
                    c,
                    &User {
                        id: 50,
                        username: "late".into(),
                        name: String::new(),
                        bio: String::new(),
                    },
                )
            })
            .await
    });
    let (status, body, took) = create_thread(&router, 50).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.contains(r#""createdBy":50"#), "{body}");
    assert!(
        took >= Duration::from_millis(100),
        "answered before the user existed: {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "waited the whole wait: {took:?}"
    );
    late.await.expect("join").expect("insert");
}

#[tokio::test]
async fn an_unknown_user_is_422_after_the_wait() {
    let (router, _db) = monolith(Duration::from_millis(300));
    let (status, body, took) = create_thread(&router, 99).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        took >= Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn without_a_wait_a_missing_user_is_422_at_once() {
    let (router, db) = monolith(Duration::ZERO);
    let (status, _, _) = create_thread(&router, 50).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Existing users still pass.
    let (status, body, _) = create_thread(&router, 1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    drop(db);
}
