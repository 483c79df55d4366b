//! The monolith over real sockets: what hyper does to our answers, and concurrent writers.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use http::{Method, StatusCode, header};
use monolith::app::Board;
use monolith::db::{self, Db, Seed};
use monolith::legacy::Resource;
use monolith::references::LocalReferences;
use support::{HttpClient, TempDb};

#[tokio::test]
async fn head_keeps_get_headers_on_the_wire() {
    let (router, _db) = support::monolith();
    let addr = support::spawn(router).await;
    let client = HttpClient::new();
    for path in ["/", "/api/users", "/api/users/2", "/api/posts/in-thread/2"] {
        let get = client.send(addr, Method::GET, path, "").await;
        let head = client.send(addr, Method::HEAD, path, "").await;
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.body.is_empty(), "{path}");
        assert!(!get.body.is_empty(), "{path}");
        for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
            assert_eq!(
                head.headers.get(&name),
                get.headers.get(&name),
                "{path}: {name}"
            );
        }
        assert_eq!(
            head.headers[header::CONTENT_LENGTH],
            get.body.len().to_string().as_str(),
            "{path}"
        );
    }
    let unknown = client.send(addr, Method::HEAD, "/api/users/99", "").await;
    assert_eq!(unknown.status, StatusCode::NO_CONTENT);
    assert!(unknown.headers.get(header::CONTENT_TYPE).is_none());
    assert!(unknown.headers.get(header::CONTENT_LENGTH).is_none());
}

/// RFC 9110 §8.6: no Content-Length in a 204. Read off the socket, because hyper may write a
/// header our router left in while a client library would hide it.
#[tokio::test]
async fn no_204_carries_content_length_on_the_wire() {
    let (router, _db) = support::monolith();
    let addr = support::spawn(router).await;
    let cases = [
        ("GET", "/api/users/9"),
        ("HEAD", "/api/users/9"),
        ("GET", "/api/threads/abc"),
        ("HEAD", "/api/threads/9"),
        ("OPTIONS", "/api/users"),
        ("OPTIONS", "/api/posts/in-thread/1"),
        ("DELETE", "/api/posts/1"),
    ];
    for (method, path) in cases {
        let reply = support::raw_exchange(addr, method, path).await;
        assert_eq!(reply.status, 204, "{method} {path}");
        for name in ["content-length", "content-type", "transfer-encoding"] {
            assert!(
                reply.all(name).is_empty(),
                "{method} {path}: {name} in {:?}",
                reply.headers
            );
        }
        assert!(reply.body.is_empty(), "{method} {path}");
    }
}

#[tokio::test]
async fn an_oversized_body_on_the_wire_is_413_not_500() {
    let (router, db) = support::monolith();
    let addr = support::spawn(router).await;
    let mut body = br#"{"username":""#.to_vec();
    body.resize(2 << 20, b'a');
    body.extend_from_slice(br#""}"#);
    let reply = HttpClient::new()
        .send(addr, Method::POST, "/api/users", body)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        &reply.body[..],
        br#"{"error":"request body larger than 1048576 bytes"}"#
    );
    let users = db
        .blocking(|c| db::count(c, Resource::Users))
        .expect("count");
    assert_eq!(users, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_all_persist_with_unique_ids() {
    const WRITERS: usize = 8;
    const POSTS_EACH: usize = 500;
    let file = TempDb::new("concurrency");
    let db = Db::open(&file.path(), &Resource::ALL, Seed::Legacy).expect("open");
    let references = Arc::new(LocalReferences::new(db.clone()));
    let addr = support::spawn(Board::new(db.clone(), &Resource::ALL, references).router()).await;
    let client = HttpClient::new();

    let writers = (0..WRITERS).map(|writer| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(POSTS_EACH);
            for n in 0..POSTS_EACH {
                let body = format!(r#"{{"thread":2,"text":"writer {writer} post {n}","user":3}}"#);
                let reply = client.send(addr, Method::POST, "/api/posts", body).await;
                assert_eq!(
                    reply.status,
                    StatusCode::CREATED,
                    "writer {writer} post {n}"
                );
                let post: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
                assert_eq!(post["text"], format!("writer {writer} post {n}"));
                ids.push(post["id"].as_i64().expect("id"));
            }
            ids
        })
    });
    let mut ids = HashSet::new();
    for writer in writers.collect::<Vec<_>>() {
        for id in writer.await.expect("writer task") {
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(ids.len(), WRITERS * POSTS_EACH);

    // Persisted: a fresh connection to the file sees every post.
    drop(db);
    let reopened = Db::open(&file.path(), &Resource::ALL, Seed::Legacy).expect("reopen");
    let stored: HashSet<i64> = reopened
        .blocking(|c| {
            let mut stmt = c.prepare("SELECT id FROM posts WHERE text LIKE 'writer %'")?;
            stmt.query_map([], |row| row.get(0))?.collect()
        })
        .expect("ids");
    assert_eq!(stored, ids);
    let total = reopened
        .blocking(|c| db::count(c, Resource::Posts))
        .expect("count");
    assert_eq!(total as usize, 6 + WRITERS * POSTS_EACH);
}
