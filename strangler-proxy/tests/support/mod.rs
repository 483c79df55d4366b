//! Shared test support: real upstreams on 127.0.0.1:0, a config writer, a client, polling.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use strangler_proxy::server::{self, Running};

/// An upstream that answers every request with JSON naming itself, the path and query it
/// received, and the request headers. `/slow/MS` waits MS milliseconds first.
pub async fn echo_upstream(name: &'static str) -> SocketAddr {
    let app = Router::new().fallback(move |req: Request| async move { echo(name, req).await });
    serve(app).await
}

async fn echo(name: &'static str, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Serves `app` on 127.0.0.1:0 for the rest of the test.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A fresh directory for one test's routes.toml.
pub fn temp_dir(test: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("strangler-test-{test}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A routes.toml with listeners on port 0, `monolith` as default, the given services and
/// extra text (routes, [proxy] keys go in `proxy_extra`).
pub fn config_text(services: &[(&str, SocketAddr)], proxy_extra: &str, routes: &str) -> String {
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndefault = \"monolith\"\naccess_log = false\n{proxy_extra}\n"
    );
    for (name, addr) in services {
        text.push_str(&format!(
            "[services.{name}]\nurl = \"http://{addr}\"\nrequest_timeout = \"2s\"\nconnect_timeout = \"500ms\"\n"
        ));
    }
    text.push_str(routes);
    text
}

/// `[[routes]]` for `prefix` → `service` at `weight`.
pub fn route(prefix: &str, service: &str, weight: u8) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nservice = \"{service}\"\nweight = {weight}\n")
}

/// Writes `text` to `dir/routes.toml` and starts a proxy on it.
pub async fn start_proxy(dir: &Path, text: &str) -> Running {
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    server::start(&path).await.unwrap()
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `backend` field of an echo upstream's answer.
    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap_or("").to_string()
    }
}

/// Sends one request and reads the whole answer.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// GET `url`, panicking on a transport error.
pub async fn get(url: &str) -> Answer {
    send(&client(), Method::GET, url, &[]).await.unwrap()
}

/// Polls `check` every 10 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Arrivals at an upstream, and a gate that holds every request whose path contains `/held/`
/// until it opens (or 10 s pass, so a failing test never hangs).
#[derive(Clone)]
pub struct Gate {
    arrived: Arc<AtomicUsize>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Gate {
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

/// An upstream answering `{"backend": name, "path": ...}`, holding `/held/` requests at a gate.
pub async fn gated_upstream(name: &'static str) -> (SocketAddr, Gate) {
    let gate = Gate {
        arrived: Arc::new(AtomicUsize::new(0)),
        open: Arc::new(tokio::sync::watch::channel(false).0),
    };
    let g = gate.clone();
    let app = Router::new().fallback(move |req: Request| {
        let g = g.clone();
        async move {
            let path = req.uri().path().to_string();
            if path.contains("/held/") {
                g.arrived.fetch_add(1, Ordering::SeqCst);
                let mut open = g.open.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(10), open.wait_for(|o| *o)).await;
            }
            axum::Json(serde_json::json!({ "backend": name, "path": path }))
        }
    });
    (serve(app).await, gate)
}
