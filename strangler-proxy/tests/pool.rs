//! The upstream connection pool against a raw service that reports every connection it
//! accepts and every one that closes: keep-alive reuse, bodiless answers, idle timeout,
//! abandoned bodies, retries on fresh connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use strangler_proxy::pool::{Pool, Reuse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Connections accepted and connections the peer closed.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
}

/// A keep-alive HTTP/1.1 service: `GET /slow` answers a 1 MiB body in 1 KiB writes, `HEAD`
/// answers headers only, anything else `ok`.
async fn service() -> (SocketAddr, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let ok = if head.starts_with("HEAD") {
                        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
                            .await
                    } else if head.starts_with("GET /slow") {
                        let mut r = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n")
                            .await;
                        for _ in 0..1024 {
                            if r.is_err() {
                                break;
                            }
                            r = sock.write_all(&[b'x'; 1024]).await;
                        }
                        r
                    } else {
                        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                    };
                    if ok.is_err() {
                        break;
                    }
                }
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

fn pool(addr: SocketAddr, idle_timeout: Duration) -> Pool {
    Pool::new(
        addr.to_string().parse().unwrap(),
        Duration::from_secs(2),
        idle_timeout,
    )
}

fn request(method: Method, path: &str) -> Request<strangler_proxy::upstream::UpstreamBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Empty::<Bytes>::new().map_err(Into::into).boxed_unsync())
        .unwrap()
}

async fn get(pool: &Pool, method: Method, path: &str) -> (StatusCode, Bytes) {
    let response = pool
        .send(request(method, path), Reuse::Pooled)
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn eventually(what: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if what() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    what()
}

#[tokio::test]
async fn sequential_requests_share_one_connection_bodiless_answers_included() {
    let (addr, counts) = service().await;
    let pool = pool(addr, Duration::from_secs(30));
    for i in 0..20 {
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::HEAD
        };
        let (status, body) = get(&pool, method.clone(), "/x").await;
        assert_eq!(status, StatusCode::OK);
        let expected: &[u8] = if method == Method::HEAD { b"" } else { b"ok" };
        assert_eq!(body, expected);
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn an_idle_connection_closes_after_the_idle_timeout() {
    let (addr, counts) = service().await;
    let pool = pool(addr, Duration::from_millis(200));
    get(&pool, Method::GET, "/x").await;
    assert_eq!(pool.idle(), 1);
    assert!(
        eventually(|| counts.closed.load(Ordering::SeqCst) == 1).await,
        "the idle connection was never closed"
    );
    assert_eq!(pool.idle(), 0);
    // The next request opens a new connection.
    get(&pool, Method::GET, "/x").await;
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_never_returns_its_connection() {
    let (addr, counts) = service().await;
    let pool = pool(addr, Duration::from_secs(30));
    let response = pool
        .send(request(Method::GET, "/slow"), Reuse::Pooled)
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(pool.idle(), 0);
    assert!(
        eventually(|| counts.closed.load(Ordering::SeqCst) == 1).await,
        "the half-read connection stayed open"
    );
    get(&pool, Method::GET, "/x").await;
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_fresh_connection_serves_one_request_and_is_not_pooled() {
    let (addr, counts) = service().await;
    let pool = pool(addr, Duration::from_secs(30));
    get(&pool, Method::GET, "/x").await;
    let response = pool
        .send(request(Method::GET, "/x"), Reuse::Fresh)
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.idle(), 1, "only the pooled connection is idle");
    assert!(eventually(|| counts.closed.load(Ordering::SeqCst) == 1).await);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pool = pool(addr, Duration::from_secs(30));
    let err = pool
        .send(request(Method::GET, "/x"), Reuse::Pooled)
        .await
        .unwrap_err();
    assert!(
        matches!(err, strangler_proxy::pool::SendError::Connect(_)),
        "{err:?}"
    );
}
