//! Shadow verdicts against real upstreams: every shadowed exchange is compared — bodiless
//! answers, headers, compressed bodies — and what truly cannot be compared is `skipped` with a
//! reason. The service side is a raw HTTP/1.1 server, so each answer is exactly the bytes a
//! case needs (a header left out, a body compressed differently).

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = r#"{"id":1,"name":"Marceline"}"#;

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The original: a JSON user, the legacy 204 for unknown ids, `Allow` on OPTIONS and 405,
/// gzip when the client asks for it.
async fn legacy() -> SocketAddr {
    serve(Router::new().fallback(|req: Request| async move {
        let gzip_ok = req
            .headers()
            .get("accept-encoding")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("gzip"));
        let json = |status: StatusCode, body: &str| {
            (
                status,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        };
        let compressed = |body: &str| -> Response {
            assert!(gzip_ok, "the test sends accept-encoding: gzip");
            (
                [
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ],
                gzip(body.as_bytes(), 6),
            )
                .into_response()
        };
        if req.method() == Method::OPTIONS {
            return (StatusCode::OK, [("allow", "GET, HEAD, OPTIONS")]).into_response();
        }
        match req.uri().path() {
            "/api/users/1" => json(StatusCode::OK, USER),
            "/api/users/9" => StatusCode::NO_CONTENT.into_response(),
            "/api/users/404" => json(StatusCode::NOT_FOUND, r#"{"error":"no such user"}"#),
            "/api/users/405" => (
                StatusCode::METHOD_NOT_ALLOWED,
                [("allow", "GET, HEAD"), ("content-type", "application/json")],
                r#"{"error":"method not allowed"}"#,
            )
                .into_response(),
            "/api/users/gz" | "/api/users/gz-plain" => compressed(USER),
            "/api/users/gz-diff" => compressed(r#"{"id":1,"name":"a"}"#),
            _ => json(StatusCode::OK, USER),
        }
    }))
    .await
}

/// A raw HTTP/1.1 upstream: `answer(method, path)` is the status line and headers (CRLF after
/// each) and the body; the connection closes after each answer.
async fn raw_upstream<F>(answer: F) -> SocketAddr
where
    F: Fn(&str, &str) -> (String, Vec<u8>) + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                assert!(text.to_ascii_lowercase().contains("x-strangler-shadow: 1"));
                let mut first = text.split_whitespace();
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let (status_and_headers, body) = answer(method, path);
                let mut out = status_and_headers.into_bytes();
                out.extend_from_slice(b"connection: close\r\n\r\n");
                if method != "HEAD" {
                    out.extend_from_slice(&body);
                }
                let _ = conn.write_all(&out).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

/// `head` plus a content-length for `body`.
fn with_length(head: &str, body: &[u8]) -> (String, Vec<u8>) {
    (
        format!("{head}content-length: {}\r\n", body.len()),
        body.to_vec(),
    )
}

fn shadowing(test: &str, monolith: SocketAddr, service: SocketAddr) -> ProxyBuilder {
    ProxyBuilder::new(test)
        .service("monolith", monolith)
        .service("users", service)
        .route("/api/users", "users", 0)
        .with("shadow = true")
}

fn result(text: &str, result: &str) -> u64 {
    metric(
        text,
        &format!("strangler_shadow_comparisons_total{{result=\"{result}\",route=\"users\"}}"),
    )
}

/// Waits until `n` shadowed requests of the users route have a verdict; returns `/metrics`.
async fn verdicts(p: &TestProxy, n: u64) -> String {
    let total = |text: &str| -> u64 {
        ["match", "mismatch", "error", "skipped", "dropped"]
            .iter()
            .map(|r| result(text, r))
            .sum()
    };
    let done = eventually(Duration::from_secs(10), || async {
        total(&p.metrics().await) >= n
    })
    .await;
    let text = p.metrics().await;
    assert!(done, "fewer than {n} verdicts:\n{text}");
    text
}

async fn request(p: &TestProxy, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(&client(), method, &p.url(path), headers)
        .await
        .unwrap()
}

/// The mismatch recorded for `method path` in `/diffs`.
fn diff_of(diffs: &serde_json::Value, method: &str, path: &str) -> String {
    diffs["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"] == method && m["path"] == path)
        .unwrap_or_else(|| panic!("no mismatch for {method} {path} in {diffs}"))["diff"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The users route in `/routes`.
async fn users_route(p: &TestProxy) -> serde_json::Value {
    let doc = get(&p.admin_url("/routes")).await.json();
    doc["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "users")
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn bodiless_answers_are_compared_not_skipped() {
    // The stand-in of the issue: `200 "hello"` to everything.
    let hello = raw_upstream(|_, _| {
        with_length("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n", b"hello")
    })
    .await;
    let p = shadowing("bodiless", legacy().await, hello).start().await;
    let gone = request(&p, Method::GET, "/api/users/9", &[]).await;
    assert_eq!(
        gone.status,
        StatusCode::NO_CONTENT,
        "the client gets the original"
    );
    request(&p, Method::HEAD, "/api/users/1", &[]).await;
    request(&p, Method::OPTIONS, "/api/users/1", &[]).await;
    let text = verdicts(&p, 3).await;
    assert_eq!(
        (result(&text, "mismatch"), result(&text, "skipped")),
        (3, 0),
        "{text}"
    );
    let diffs = get(&p.admin_url("/diffs?route=users")).await.json();
    assert!(
        diff_of(&diffs, "GET", "/api/users/9").starts_with("status: default 204 | service 200\n"),
        "{diffs}"
    );
    assert!(
        diff_of(&diffs, "HEAD", "/api/users/1")
            .contains("content-type: default \"application/json\" | service \"text/plain\""),
        "{diffs}"
    );
    assert!(
        diff_of(&diffs, "OPTIONS", "/api/users/1")
            .contains("header allow: default \"GET, HEAD, OPTIONS\" | service (missing)"),
        "{diffs}"
    );
    let shadow = &users_route(&p).await["shadow_counts"];
    assert_eq!(shadow["coverage"], 1.0, "{shadow}");
    assert_eq!(shadow["match_ratio"], 0.0, "{shadow}");
    assert_eq!(shadow["results"]["mismatch"], 3, "{shadow}");
}

/// Method, path, request headers, the diff expected (`None`: a match).
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
);

/// One line per case.
const CASES: &[Case] = &[
    // Status only.
    (
        "GET",
        "/api/users/404",
        &[],
        Some("status: default 404 | service 400\n"),
    ),
    // The legacy 204 against an empty JSON object.
    (
        "GET",
        "/api/users/9",
        &[],
        Some(
            "status: default 204 | service 200\ncontent-type: default \"\" | service \"application/json\"\nbody: default \"\" | service \"{}\"\n",
        ),
    ),
    // A header only: Allow on a 405.
    (
        "GET",
        "/api/users/405",
        &[],
        Some("header allow: default \"GET, HEAD\" | service \"GET\"\n"),
    ),
    // HEAD: Content-Length present on one side only.
    (
        "HEAD",
        "/api/users/1",
        &[],
        Some("header content-length: default \"present\" | service \"absent\"\n"),
    ),
    // OPTIONS: Allow, on empty bodies.
    (
        "OPTIONS",
        "/api/users/1",
        &[],
        Some("header allow: default \"GET, HEAD, OPTIONS\" | service \"GET, HEAD\"\n"),
    ),
    // The same JSON gzipped on both sides (other bytes: another level).
    ("GET", "/api/users/gz", &[("accept-encoding", "gzip")], None),
    // gzip against identity.
    (
        "GET",
        "/api/users/gz-plain",
        &[("accept-encoding", "gzip, deflate, br, zstd")],
        None,
    ),
    // Different JSON, both gzipped: a JSON diff, not a binary one.
    (
        "GET",
        "/api/users/gz-diff",
        &[("accept-encoding", "gzip")],
        Some("/name: default \"a\" | service \"b\"\n"),
    ),
];

#[tokio::test]
async fn each_kind_of_difference_is_found_and_equal_content_matches_however_coded() {
    let service = raw_upstream(|method, path| {
        const JSON: &str = "content-type: application/json\r\n";
        let ok = |body: &str| with_length(&format!("HTTP/1.1 200 OK\r\n{JSON}"), body.as_bytes());
        let gzipped = |body: &str| {
            with_length(
                &format!("HTTP/1.1 200 OK\r\n{JSON}content-encoding: gzip\r\n"),
                &gzip(body.as_bytes(), 9),
            )
        };
        if method == "OPTIONS" {
            return with_length("HTTP/1.1 200 OK\r\nallow: GET, HEAD\r\n", b"");
        }
        match (method, path) {
            (_, "/api/users/404") => with_length(
                &format!("HTTP/1.1 400 Bad Request\r\n{JSON}"),
                br#"{"error":"no such user"}"#,
            ),
            (_, "/api/users/9") => ok("{}"),
            (_, "/api/users/405") => with_length(
                &format!("HTTP/1.1 405 Method Not Allowed\r\nallow: GET\r\n{JSON}"),
                br#"{"error":"method not allowed"}"#,
            ),
            // No content-length on the HEAD answer.
            ("HEAD", "/api/users/1") => (format!("HTTP/1.1 200 OK\r\n{JSON}"), Vec::new()),
            (_, "/api/users/gz") => gzipped(USER),
            (_, "/api/users/gz-plain") => ok(USER),
            (_, "/api/users/gz-diff") => gzipped(r#"{"id":1,"name":"b"}"#),
            _ => ok(USER),
        }
    })
    .await;
    let p = shadowing("kinds", legacy().await, service).start().await;
    for (method, path, headers, _) in CASES {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        request(&p, method, path, headers).await;
    }
    let text = verdicts(&p, CASES.len() as u64).await;
    let expected_mismatches = CASES.iter().filter(|c| c.3.is_some()).count() as u64;
    assert_eq!(
        (
            result(&text, "mismatch"),
            result(&text, "match"),
            result(&text, "skipped")
        ),
        (
            expected_mismatches,
            CASES.len() as u64 - expected_mismatches,
            0
        ),
        "{text}"
    );
    let diffs = get(&p.admin_url("/diffs?route=users")).await.json();
    for (method, path, _, expected) in CASES {
        if let Some(expected) = expected {
            assert_eq!(diff_of(&diffs, method, path), *expected, "{method} {path}");
        }
    }
    // Header differences are also listed field by field.
    let allow = diffs["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == "/api/users/405")
        .unwrap();
    assert_eq!(
        allow["differences"],
        serde_json::json!([{"at": "header allow", "default": "\"GET, HEAD\"", "service": "\"GET\""}])
    );
    let route = users_route(&p).await;
    assert!(
        route["compared_headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("allow")),
        "{route}"
    );
    assert_eq!(route["shadow_counts"]["coverage"], 1.0, "{route}");
}

#[tokio::test]
async fn route_header_keys_add_and_remove_compared_headers() {
    let service = raw_upstream(|_, _| {
        with_length(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-api-version: 2\r\ncache-control: no-store\r\n",
            USER.as_bytes(),
        )
    })
    .await;
    let legacy = serve(Router::new().fallback(|| async {
        (
            [
                ("content-type", "application/json"),
                ("x-api-version", "1"),
                ("cache-control", "max-age=60"),
            ],
            USER,
        )
    }))
    .await;
    let p = shadowing("header-keys", legacy, service)
        .with(r#"shadow_headers = ["X-Api-Version"]"#)
        .with(r#"shadow_ignore_headers = ["cache-control"]"#)
        .start()
        .await;
    request(&p, Method::GET, "/api/users/1", &[]).await;
    verdicts(&p, 1).await;
    let diffs = get(&p.admin_url("/diffs?route=users")).await.json();
    assert_eq!(
        diff_of(&diffs, "GET", "/api/users/1"),
        "header x-api-version: default \"1\" | service \"2\"\n"
    );
    let route = users_route(&p).await;
    assert_eq!(
        route["shadow_headers"],
        serde_json::json!(["x-api-version"])
    );
    assert_eq!(
        route["shadow_ignore_headers"],
        serde_json::json!(["cache-control"])
    );
    assert!(
        !route["compared_headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("cache-control")),
        "{route}"
    );
}

/// Peak resident memory of this process, from /proc (Linux: where the tests run).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .expect("this test reads /proc/self/status: run it on Linux");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[tokio::test]
async fn a_gzip_bomb_is_skipped_as_too_large_without_inflating_it() {
    // 100 gzip members of 4 MiB of zeros: about 400 KiB on the wire, 400 MiB inflated.
    let member = gzip(&vec![0u8; 4 << 20], 9);
    let bomb: Vec<u8> = member.repeat(100);
    assert!(
        bomb.len() < 1 << 20,
        "the bomb fits the capture: {}",
        bomb.len()
    );
    let bomb = Arc::new(bomb);
    let service = raw_upstream(move |_, _| {
        with_length(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n",
            &bomb,
        )
    })
    .await;
    let p = shadowing("bomb", legacy().await, service).start().await;
    let before = peak_rss_kib();
    request(
        &p,
        Method::GET,
        "/api/users/1",
        &[("accept-encoding", "gzip")],
    )
    .await;
    let text = verdicts(&p, 1).await;
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert_eq!(result(&text, "skipped"), 1, "{text}");
    assert_eq!(
        metric(
            &text,
            "strangler_shadow_skipped_total{reason=\"too_large\",route=\"users\"}"
        ),
        1,
        "{text}"
    );
    assert!(grown_mib < 64, "decoding the bomb took {grown_mib} MiB");
    let shadow = &users_route(&p).await["shadow_counts"];
    assert_eq!(shadow["coverage"], 0.0, "{shadow}");
    assert_eq!(shadow["skipped"]["too_large"], 1, "{shadow}");
}
