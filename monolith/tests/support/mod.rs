//! Helpers shared by the integration tests: real servers on 127.0.0.1:0 and a small client.

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use monolith::app::Board;
use monolith::db::{Db, Seed};
use monolith::legacy::Resource;
use monolith::references::LocalReferences;

/// A monolith board on an in-memory database seeded with the legacy data set.
pub fn monolith() -> (Router, Db) {
    let db = Db::in_memory(&Resource::ALL, Seed::Legacy).expect("monolith database");
    let references = Arc::new(LocalReferences::new(db.clone()));
    (
        Board::new(db.clone(), &Resource::ALL, references).router(),
        db,
    )
}

/// Serves `router` on a free port of 127.0.0.1 for the rest of the test.
pub async fn spawn(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// A unique database path under the system temp dir; the directory is removed on drop.
pub struct TempDb {
    dir: PathBuf,
}

impl TempDb {
    pub fn new(name: &str) -> TempDb {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "monolith-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDb { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("board.db")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/1 client for real sockets.
#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

/// What came back over the wire.
#[derive(Debug)]
pub struct WireReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpClient {
    pub fn new() -> HttpClient {
        HttpClient(Client::builder(TokioExecutor::new()).build_http())
    }

    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> WireReply {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("request");
        let response = self.0.request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        WireReply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("body").to_bytes(),
        }
    }
}

/// An answer read off the socket byte for byte: header lines as sent, names lower-cased.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    /// Every value of header `name`, in the order sent.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The values of header `name` joined with ", ", or `None` when it was not sent.
    pub fn joined(&self, name: &str) -> Option<String> {
        let values = self.all(name);
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// Sends one bodiless HTTP/1.1 request over a raw TCP connection and reads the answer until the
/// server closes, so no client library can add, drop or merge a header.
pub async fn raw_exchange(addr: SocketAddr, method: &str, path: &str) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no end of head in {raw:?}"));
    let head = String::from_utf8(raw[..end].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header line");
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    RawReply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}
