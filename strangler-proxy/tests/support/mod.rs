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
use strangler_proxy::reload::Outcome;
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

/// How every test proxy starts: a fresh directory holding a `routes.toml` with listeners on
/// port 0, `monolith` as the default, and the services, `[proxy]` keys and routes given.
///
/// ```ignore
/// let p = ProxyBuilder::new("fallback")
///     .service("monolith", monolith)
///     .service("users", users)
///     .route("/api/users", "users", 100)
///     .with("fallback = true")
///     .start()
///     .await;
/// ```
///
/// Cloning a builder and changing a weight gives the text of a rewrite: `p.rewrite(&b.text())`.
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    test: String,
    listen: String,
    admin: String,
    proxy_keys: Vec<String>,
    services: Vec<ServiceEntry>,
    routes: String,
    files: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
struct ServiceEntry {
    name: String,
    url: String,
    request_timeout: String,
}

impl ProxyBuilder {
    /// A proxy for the test `test` (names its directory), with no service yet.
    pub fn new(test: &str) -> Self {
        Self {
            test: test.to_string(),
            listen: "127.0.0.1:0".into(),
            admin: "127.0.0.1:0".into(),
            proxy_keys: Vec::new(),
            services: Vec::new(),
            routes: String::new(),
            files: Vec::new(),
        }
    }

    /// `[services.NAME]` at `http://ADDR`, 2 s request timeout, 500 ms connect timeout.
    pub fn service(self, name: &str, addr: SocketAddr) -> Self {
        self.service_url(name, &format!("http://{addr}"))
    }

    /// `[services.NAME]` at a URL given whole (one the proxy may refuse).
    pub fn service_url(mut self, name: &str, url: &str) -> Self {
        self.services.push(ServiceEntry {
            name: name.to_string(),
            url: url.to_string(),
            request_timeout: "2s".into(),
        });
        self
    }

    /// The request timeout of the service added last, e.g. `"300ms"`.
    pub fn request_timeout(mut self, timeout: &str) -> Self {
        self.services
            .last_mut()
            .expect("request_timeout follows a service")
            .request_timeout = timeout.to_string();
        self
    }

    /// A `[proxy]` line such as `hold_timeout = "200ms"` (an empty one adds nothing).
    pub fn proxy_key(mut self, line: &str) -> Self {
        if !line.is_empty() {
            self.proxy_keys.push(line.to_string());
        }
        self
    }

    /// Listen on fixed addresses instead of port 0 (for a proxy run as a separate process).
    pub fn listen(mut self, public: SocketAddr, admin: SocketAddr) -> Self {
        self.listen = public.to_string();
        self.admin = admin.to_string();
        self
    }

    /// `[[routes]]` for `prefix` → `service` at `weight`.
    pub fn route(mut self, prefix: &str, service: &str, weight: u16) -> Self {
        self.routes.push_str(&format!(
            "[[routes]]\nprefix = \"{prefix}\"\nservice = \"{service}\"\nweight = {weight}\n"
        ));
        self
    }

    /// A line added to the route added last, such as `sticky = "cookie:sid"`.
    pub fn with(mut self, line: &str) -> Self {
        assert!(!self.routes.is_empty(), "`with` follows a route");
        self.routes.push_str(line);
        self.routes.push('\n');
        self
    }

    /// Another file in the proxy's directory before it starts (e.g. an editor's swap file).
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_string(), contents.to_string()));
        self
    }

    /// The `routes.toml` this builder writes.
    pub fn text(&self) -> String {
        let mut text = format!(
            "[proxy]\nlisten = \"{}\"\nadmin = \"{}\"\ndefault = \"monolith\"\naccess_log = false\n",
            self.listen, self.admin
        );
        for line in &self.proxy_keys {
            text.push_str(line);
            text.push('\n');
        }
        for s in &self.services {
            text.push_str(&format!(
                "[services.{}]\nurl = \"{}\"\nrequest_timeout = \"{}\"\nconnect_timeout = \"500ms\"\n",
                s.name, s.url, s.request_timeout
            ));
        }
        text.push_str(&self.routes);
        text
    }

    /// Writes the test's directory and its `routes.toml` without starting anything; returns
    /// the file's path.
    pub fn write(&self) -> PathBuf {
        let dir = temp_dir(&self.test);
        for (name, contents) in &self.files {
            std::fs::write(dir.join(name), contents).unwrap();
        }
        let path = dir.join("routes.toml");
        std::fs::write(&path, self.text()).unwrap();
        path
    }

    /// Writes the file and starts a proxy on it, in this process.
    pub async fn start(&self) -> TestProxy {
        let path = self.write();
        let running = server::start(&path).await.unwrap();
        TestProxy { running, path }
    }
}

/// A proxy started by [`ProxyBuilder::start`]: the [`Running`] (its fields through `Deref`)
/// and the file it serves.
pub struct TestProxy {
    pub running: Running,
    path: PathBuf,
}

impl std::ops::Deref for TestProxy {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.running
    }
}

impl TestProxy {
    /// The `routes.toml` the proxy serves.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding it.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap()
    }

    /// `http://PUBLIC{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.public)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        get(&self.admin_url("/metrics")).await.text()
    }

    /// Overwrites the file in place and leaves it to the watcher.
    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    /// Overwrites the file and reloads it at once, as SIGHUP would.
    pub fn rewrite(&self, text: &str) -> Outcome {
        self.write(text);
        self.running.reloader.reload()
    }

    /// Drains and stops the proxy.
    pub async fn shutdown(self) {
        self.running.shutdown().await
    }
}

/// The value of the first line of a Prometheus exposition that starts with `line_prefix`
/// (a series with its labels), 0 when there is none.
pub fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
    get_with(url, &[]).await
}

/// GET `url` with extra request headers, panicking on a transport error.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(&client(), Method::GET, url, headers).await.unwrap()
}

/// GET `url` on a task of its own (a request to hold in flight), transport errors returned.
pub fn spawn_get(url: String) -> tokio::task::JoinHandle<Result<Answer, String>> {
    tokio::spawn(async move { send(&client(), Method::GET, &url, &[]).await })
}

/// `http://ADDR{path}`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
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

/// Every log line the proxy wrote in this test process: installs the process-wide subscriber
/// on first use (a test binary that calls it owns the global subscriber).
pub fn captured_log() -> &'static Arc<std::sync::Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per process");
        log
    })
}

struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
