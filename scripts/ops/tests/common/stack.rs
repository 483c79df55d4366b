//! A real local stack for end-to-end tests: the monolith and the users service (the
//! workspace's own code) and strangler-proxy, on ephemeral ports, plus client load.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use monolith::app::Board;
use monolith::db::{Db, Location, Seed};
use monolith::legacy::Resource;
use monolith::references::{LocalReferences, RemoteReferences};
use strangler_ops::fetch;

use super::{Ops, OpsTest};

pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// The monolith on its seeded database.
pub async fn monolith(data: &Path) -> SocketAddr {
    monolith_waiting(data, Duration::ZERO).await
}

/// The monolith waiting up to `wait` for a referenced row that reverse sync has not carried
/// over yet (`--reference-wait`).
pub async fn monolith_waiting(data: &Path, wait: Duration) -> SocketAddr {
    monolith_at(&Location::File(data.join("monolith.db")), wait).await
}

/// The monolith on its database at `location` (an SQLite file or a PostgreSQL database),
/// waiting up to `wait` for a reference reverse sync has not carried over yet.
pub async fn monolith_at(location: &Location, wait: Duration) -> SocketAddr {
    let open = || Db::open_at(location, &Resource::ALL, Seed::Legacy).expect("monolith db");
    // The PostgreSQL driver blocks (and needs a multi-thread runtime here).
    let db = match location {
        Location::File(_) => open(),
        Location::Postgres(_) => tokio::task::block_in_place(open),
    };
    let refs = Arc::new(LocalReferences::with_wait(db.clone(), wait));
    serve(Board::new(db, &Resource::ALL, refs).router()).await
}

/// The users service on its own, still empty, database; with `fail_every` it answers every
/// n-th request 503 (the fault a dying instance shows), which the proxy may fall back on.
pub async fn users_service(data: &Path, fail_every: Option<u64>) -> SocketAddr {
    let db = Db::open(&data.join("users.db"), &[Resource::Users], Seed::Empty).expect("users db");
    // Users refer to nothing, so the reference checker is never asked.
    let refs = Arc::new(RemoteReferences::new("http://127.0.0.1:9").expect("api base"));
    let mut router = Board::new(db, &[Resource::Users], refs).router();
    if let Some(n) = fail_every {
        let seen = Arc::new(AtomicU64::new(0));
        router = router.layer(middleware::from_fn(move |req: Request, next: Next| {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) % n == n - 1 {
                    return (http::StatusCode::SERVICE_UNAVAILABLE, "injected fault")
                        .into_response();
                }
                let response: Response = next.run(req).await;
                response
            }
        }));
    }
    serve(router).await
}

pub fn routes_toml(monolith: SocketAddr, users: SocketAddr) -> String {
    format!(
        r#"# the users route of the walkthrough, on ephemeral ports
[proxy]
listen  = "127.0.0.1:0"
admin   = "127.0.0.1:0"
default = "monolith"

[services.monolith]
url = "http://{monolith}"

[services.users]
url = "http://{users}"

[[routes]]
name     = "users"
prefix   = "/api/users"
service  = "users"
weight   = 0
fallback = true
"#
    )
}

pub async fn ops(args: &[&str]) -> (Option<i32>, String) {
    super::run_async(args).await
}

/// Clients reading users through the proxy on two threads until stopped, at most 60 s.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    pub fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let (mut ok, mut failures) = (0, Vec::new());
                    let mut i = t;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        i += 1;
                        let path = match i % 5 {
                            0 => "/api/users".to_string(),
                            n => format!("/api/users/{n}"),
                        };
                        match fetch::get(&format!("http://{proxy}{path}"), Duration::from_secs(5)) {
                            Ok(body) if body.starts_with('{') || body.starts_with('[') => ok += 1,
                            Ok(body) => failures.push(format!("{path}: unexpected body {body:?}")),
                            Err(e) => failures.push(format!("{path}: {e}")),
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (ok, failures) = t.join().expect("load thread");
            total.0 += ok;
            total.1.extend(failures);
        }
        total
    }
}

/// The stack on an [`Ops`] directory (its fields and commands through `Deref`).
pub struct Stack {
    pub ops: Ops,
    pub proxy: strangler_proxy::server::Running,
}

impl std::ops::Deref for Stack {
    type Target = Ops;

    fn deref(&self) -> &Ops {
        &self.ops
    }
}

pub async fn stack(name: &str, fail_every: Option<u64>) -> Stack {
    let ops = OpsTest::new(name).start();
    let monolith = monolith(ops.path()).await;
    let users = users_service(ops.path(), fail_every).await;
    ops.write_routes(&routes_toml(monolith, users));
    let proxy = strangler_proxy::server::start(Path::new(&ops.config))
        .await
        .expect("proxy");
    Stack { ops, proxy }
}

pub async fn prepare(s: &Stack, shadow: &str) {
    let (code, out) = s
        .run_async(&["migrate-data", "users", "--data-dir", &s.data])
        .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("verification OK: 4 rows, checksums equal"),
        "{out}"
    );
    let (code, out) = s
        .run_async(&[
            "shift",
            "users",
            "0",
            "--shadow",
            shadow,
            "--methods",
            "GET,HEAD",
        ])
        .await;
    assert_eq!(code, Some(0), "{out}");
}

/// The weight of the users route.
pub fn weight(config: &str) -> u8 {
    super::weight_in(config, "users")
}
