//! The original Koa app's recorded answers (`fixtures/original-answers.json`, made by
//! `fixtures/record-original.js`), replayed over raw TCP against the monolith and every
//! extracted service that owns the path: status, content-type, content-length (presence and
//! value), transfer-encoding, every `Allow` line in order, and the body must be identical.
//!
//! Only what reference §3 makes ours differs, and each such row says why below; what we answer
//! there is pinned by `contract.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use monolith::app::Board;
use monolith::db::{Db, Seed};
use monolith::legacy::Resource;
use monolith::references::RemoteReferences;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    answers: Vec<Answer>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
struct Answer {
    method: String,
    path: String,
    status: u16,
    content_type: Option<String>,
    content_length: Option<String>,
    transfer_encoding: Option<String>,
    allow: Vec<String>,
    body: String,
}

/// How our answer to a recorded request may differ from the original's.
enum Ours {
    /// Not at all.
    Same,
    /// The answer is ours by reference §3 (checked by `contract.rs`); the reason.
    Skip(&'static str),
    /// The collection also lists POST, our write, after the original's methods.
    AlsoPost,
    /// Posts gained an `id` (reference §3): each post leads with it, so the length differs too.
    PostIds,
}

/// Decided on the path text alone, so a routing bug cannot excuse itself.
fn ours(method: &str, path: &str) -> Ours {
    let lower = path.to_ascii_lowercase();
    let trimmed = lower.strip_suffix('/').unwrap_or(&lower);
    let one_post = trimmed
        .strip_prefix("/api/posts/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    match trimmed {
        "/api/posts" => Ours::Skip("the list of posts and its POST are ours (reference §3)"),
        "/api/users" | "/api/threads" if method == "POST" => Ours::Skip("writes are ours"),
        "/api/users" | "/api/threads" => Ours::AlsoPost,
        _ if one_post && method == "DELETE" => Ours::Skip("DELETE /api/posts/{id} is ours"),
        _ if lower.starts_with("/api/posts/") => Ours::PostIds,
        _ => Ours::Same,
    }
}

/// A posts body as the original wrote it: each object's leading `"id":N,` removed.
fn without_post_ids(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.find(r#"{"id":"#) {
        out.push_str(&rest[..=at]);
        let after = &rest[at + r#"{"id":"#.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        assert!(
            digits > 0 && after[digits..].starts_with(','),
            "a post without a leading id: {body}"
        );
        rest = &after[digits + 1..];
    }
    out.push_str(rest);
    out
}

/// Which extracted services own `path`: the resource it names, or all for `/`, `/api` and
/// paths naming none.
fn owners(path: &str) -> Vec<Resource> {
    let path = path.to_ascii_lowercase();
    let named: Vec<Resource> = Resource::ALL
        .into_iter()
        .filter(|r| path.starts_with(&format!("/api/{}", r.name())))
        .collect();
    if named.is_empty() {
        Resource::ALL.to_vec()
    } else {
        named
    }
}

async fn replay(addr: SocketAddr, recorded: &Answer) -> Answer {
    let reply = support::raw_exchange(addr, &recorded.method, &recorded.path).await;
    Answer {
        method: recorded.method.clone(),
        path: recorded.path.clone(),
        status: reply.status,
        content_type: reply.joined("content-type"),
        content_length: reply.joined("content-length"),
        transfer_encoding: reply.joined("transfer-encoding"),
        allow: reply.all("allow").into_iter().map(str::to_owned).collect(),
        body: String::from_utf8(reply.body).expect("UTF-8 body"),
    }
}

#[tokio::test]
async fn every_process_answers_like_the_original() {
    let fixture: Fixture =
        serde_json::from_str(include_str!("fixtures/original-answers.json")).expect("fixture");
    let (monolith, _db) = support::monolith();
    let monolith = support::spawn(monolith).await;
    let api_base = format!("http://{monolith}");
    let mut services = Vec::new();
    for resource in Resource::ALL {
        let db = Db::in_memory(&[resource], Seed::Legacy).expect("service database");
        let references = Arc::new(RemoteReferences::new(&api_base).expect("api base"));
        let router = Board::new(db, &[resource], references).router();
        services.push((resource, support::spawn(router).await));
    }

    let mut compared = 0;
    for recorded in &fixture.answers {
        let ours = ours(&recorded.method, &recorded.path);
        let mut expected = recorded.clone();
        match ours {
            Ours::Skip(_) => continue,
            Ours::Same | Ours::PostIds => {}
            Ours::AlsoPost if expected.allow.is_empty() => {}
            Ours::AlsoPost => expected.allow.push("POST".to_owned()),
        }
        let label = format!("{} {}", recorded.method, recorded.path);
        let mut targets = vec![(format!("{label}: monolith"), monolith)];
        for (resource, addr) in &services {
            if owners(&recorded.path).contains(resource) {
                targets.push((format!("{label}: {}-service", resource.name()), *addr));
            }
        }
        for (target, addr) in targets {
            let mut reply = replay(addr, recorded).await;
            if matches!(ours, Ours::PostIds) {
                if recorded.method == "GET" {
                    let length = reply.body.len().to_string();
                    assert_eq!(reply.content_length.as_deref(), Some(&*length), "{target}");
                }
                reply.body = without_post_ids(&reply.body);
                // Presence is what must match; the value grew with the ids.
                if reply.content_length.is_some() && expected.content_length.is_some() {
                    reply.content_length.clone_from(&expected.content_length);
                }
            }
            assert_eq!(reply, expected, "{target}");
        }
        compared += 1;
    }
    // Most of the recording is compared; only the rows reference §3 makes ours are left out.
    assert!(compared > 450, "compared only {compared} answers");
}

/// The rows left out are exactly the ones reference §3 makes ours, so the recording cannot shrink
/// into a test that checks nothing.
#[test]
fn only_our_own_rows_are_skipped() {
    let fixture: Fixture =
        serde_json::from_str(include_str!("fixtures/original-answers.json")).expect("fixture");
    let skipped: Vec<String> = fixture
        .answers
        .iter()
        .filter_map(|a| match ours(&a.method, &a.path) {
            Ours::Skip(why) => Some(format!("{} {}: {why}", a.method, a.path)),
            _ => None,
        })
        .collect();
    // 3 spellings of /api/posts × 8 methods, POST on 6 spellings of the collections, DELETE on
    // 5 single-post paths and on in-thread and by-user without an id (4 spellings).
    assert_eq!(skipped.len(), 24 + 6 + 9, "{skipped:#?}");
}
