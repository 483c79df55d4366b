//! The whole migration of the users resource, with every piece real: the monolith and the
//! users service (the workspace's own code, on ephemeral ports), strangler-proxy in front of
//! them, and the strangler-ops binary moving the data and the traffic while clients keep
//! reading through the proxy.

mod common;

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
use monolith::db::{Db, Seed};
use monolith::legacy::Resource;
use monolith::references::{LocalReferences, RemoteReferences};
use strangler_ops::fetch;

use common::Scratch;

async fn serve(router: Router) -> SocketAddr {
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
async fn monolith(data: &Path) -> SocketAddr {
    let db =
        Db::open(&data.join("monolith.db"), &Resource::ALL, Seed::Legacy).expect("monolith db");
    let refs = Arc::new(LocalReferences::new(db.clone()));
    serve(Board::new(db, &Resource::ALL, refs).router()).await
}

/// The users service on its own, still empty, database; with `fail_every` it answers every
/// n-th request 503 (the fault a dying instance shows), which the proxy may fall back on.
async fn users_service(data: &Path, fail_every: Option<u64>) -> SocketAddr {
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

fn routes_toml(monolith: SocketAddr, users: SocketAddr) -> String {
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

async fn ops(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strangler-ops"))
        .args(args)
        .output()
        .await
        .expect("run strangler-ops");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Clients reading users through the proxy on two threads until stopped, at most 60 s.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
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

    fn finish(self) -> (u64, Vec<String>) {
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

struct Stack {
    _dir: Scratch,
    data: String,
    config: String,
    proxy: strangler_proxy::server::Running,
}

async fn stack(name: &str, fail_every: Option<u64>) -> Stack {
    let dir = Scratch::new(name);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let monolith = monolith(&data).await;
    let users = users_service(&data, fail_every).await;
    let config = dir.join("routes.toml");
    std::fs::write(&config, routes_toml(monolith, users)).unwrap();
    let proxy = strangler_proxy::server::start(&config)
        .await
        .expect("proxy");
    Stack {
        data: data.display().to_string(),
        config: config.display().to_string(),
        proxy,
        _dir: dir,
    }
}

async fn prepare(s: &Stack, shadow: &str) {
    let (code, out) = ops(&[
        "migrate-data",
        "users",
        "--data-dir",
        &s.data,
        "--config",
        &s.config,
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("verification OK: 4 rows, checksums equal"),
        "{out}"
    );
    let (code, out) = ops(&[
        "shift",
        "users",
        "0",
        "--shadow",
        shadow,
        "--methods",
        "GET,HEAD",
        "--config",
        &s.config,
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
}

fn weight(config: &str) -> u8 {
    strangler_proxy::config::load(Path::new(config))
        .expect("valid")
        .config
        .routes[0]
        .weight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_move_to_their_service_with_no_failed_request() {
    let s = stack("e2e-ok", None).await;
    prepare(&s, "on").await;
    let load = Load::start(s.proxy.public);
    let metrics = format!("http://{}/metrics", s.proxy.admin);
    let (code, out) = ops(&[
        "rollout",
        "users",
        "--config",
        &s.config,
        "--metrics",
        &metrics,
        "--steps",
        "0,5,50,100",
        "--interval",
        "1s",
        "--min-requests",
        "5",
        "--max-holds",
        "10",
    ])
    .await;
    let (ok, failures) = load.finish();
    println!("{out}");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        failures.is_empty(),
        "{} failed client requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 200, "the load ran: {ok} requests");
    assert!(out.contains("step 1/4 (0%): gates passed"), "{out}");
    assert!(
        out.contains("shadow 100.00% matched"),
        "shadowed answers matched: {out}"
    );
    // The last step's window: everything on the users route was served by the service.
    let last = out
        .lines()
        .find(|l| l.starts_with("step 4/4 (100%): 1.") || l.starts_with("step 4/4 (100%): 0."))
        .unwrap_or_else(|| panic!("no window line for the last step: {out}"));
    let served: u64 = last
        .split("service ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(served >= 5, "{last}");
    assert!(last.contains("| default 0 req"), "{last}");
    assert!(
        out.contains("rollout of users complete: weight 100"),
        "{out}"
    );
    assert_eq!(weight(&s.config), 100);
    s.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_service_is_rolled_back_by_the_rollout_itself() {
    // Every third request to the users service fails.
    let s = stack("e2e-fault", Some(3)).await;
    // Without shadowing, the first step that shows the service anything is the 5% canary.
    prepare(&s, "off").await;
    let load = Load::start(s.proxy.public);
    let metrics = format!("http://{}/metrics", s.proxy.admin);
    let (code, out) = ops(&[
        "rollout",
        "users",
        "--config",
        &s.config,
        "--metrics",
        &metrics,
        "--steps",
        "0,5,50,100",
        "--interval",
        "1s",
        "--min-requests",
        "5",
        "--max-holds",
        "10",
    ])
    .await;
    let (_, failures) = load.finish();
    println!("{out}");
    assert_eq!(code, Some(1), "{out}");
    // A third of the canary's requests failed; the proxy retried them on the monolith, and the
    // rollout counted them against the service all the same.
    assert!(
        out.contains("step 2/4 (5%): GATE FAILED: error ratio: service 0.3"),
        "{out}"
    );
    assert!(out.contains("fallbacks"), "{out}");
    assert!(
        out.contains("wrote the last safe weight back: route users: weight 5 → 0"),
        "{out}"
    );
    assert!(!out.contains("step 4/4"), "{out}");
    assert_eq!(weight(&s.config), 0);
    // The proxy retried the service's failures on the monolith: clients saw none of them.
    assert!(failures.is_empty(), "{failures:?}");
    s.proxy.shutdown().await;
}
