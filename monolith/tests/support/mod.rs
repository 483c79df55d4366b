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
