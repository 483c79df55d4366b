//! Connection lifecycle: silent connections cannot take the proxy down (first-byte, header-read
//! and idle timeouts; a cap that closes the oldest idle connection and keeps accepting, on both
//! listeners, also at the descriptor limit), and a shutdown under keep-alive load loses no
//! request.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strangler_proxy::server::raise_fd_limit;
use support::{ProxyBuilder, client, echo_upstream, eventually, send, url};

const BIN: &str = env!("CARGO_BIN_EXE_strangler-proxy");

/// `n` connections to `addr` that send nothing, non-blocking so they can be checked.
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    // The tests of this binary hold several hundred descriptors each.
    raise_fd_limit();
    (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

/// Whether the proxy closed `s` (anything it sent before closing is read and dropped).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    eventually(within, || std::future::ready(closed(s))).await
}

/// How many of `held` the proxy closed, once at least `at_least` are or 5 s pass.
async fn count_closed(held: &mut [TcpStream], at_least: usize) -> usize {
    let mut count = 0;
    eventually(Duration::from_secs(5), || {
        count = held.iter_mut().map(closed).filter(|c| *c).count();
        std::future::ready(count >= at_least)
    })
    .await;
    count
}

/// A GET on a fresh connection, answered within `within`.
async fn served_within(target: &str, within: Duration) -> Result<StatusCode, String> {
    let started = Instant::now();
    let answer = tokio::time::timeout(within, send(&client(), Method::GET, target, &[]))
        .await
        .map_err(|_| format!("no answer within {within:?}"))??;
    println!("served in {:?}", started.elapsed());
    Ok(answer.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_cap_make_room_for_new_clients() {
    let p = ProxyBuilder::new("cap-public")
        // A first-byte timeout far beyond the test: the cap alone must make room.
        .proxy_key("max_connections = 100")
        .proxy_key("first_byte_timeout = \"60s\"")
        .service("monolith", echo_upstream("monolith").await)
        .start()
        .await;
    let mut held = hold(p.public, 300);
    let status = served_within(&p.url("/x"), Duration::from_secs(5)).await;
    assert_eq!(status, Ok(StatusCode::OK));
    let count = count_closed(&mut held, 200).await;
    assert!(
        (200..300).contains(&count),
        "{count} of 300 idle connections closed; with max_connections = 100, at least 200 \
         (the oldest) should be, and not all"
    );
    // The oldest go first: the last ones opened are still there.
    assert!(
        !closed(held.last_mut().unwrap()),
        "the newest idle connection was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_same_cap() {
    let p = ProxyBuilder::new("cap-admin")
        .proxy_key("max_connections = 100")
        .proxy_key("first_byte_timeout = \"60s\"")
        .service("monolith", echo_upstream("monolith").await)
        .start()
        .await;
    let mut held = hold(p.admin, 300);
    let status = served_within(&p.admin_url("/healthz"), Duration::from_secs(5)).await;
    assert_eq!(status, Ok(StatusCode::OK));
    let count = count_closed(&mut held, 200).await;
    assert!(count >= 200, "{count} of 300 idle admin connections closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_first_byte_timeout() {
    let p = ProxyBuilder::new("first-byte")
        .proxy_key("first_byte_timeout = \"300ms\"")
        .service("monolith", echo_upstream("monolith").await)
        .start()
        .await;
    for addr in [p.public, p.admin] {
        let mut silent = hold(addr, 1).pop().unwrap();
        let started = Instant::now();
        assert!(
            closed_within(&mut silent, Duration::from_secs(5)).await,
            "a silent connection to {addr} is still open after 5 s"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_alone_is_closed_after_the_header_read_timeout() {
    let p = ProxyBuilder::new("h2-preface")
        .proxy_key("header_read_timeout = \"500ms\"")
        .service("monolith", echo_upstream("monolith").await)
        .start()
        .await;
    let mut preface_only = hold(p.public, 1).pop().unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    assert!(
        closed_within(&mut preface_only, Duration::from_secs(5)).await,
        "a connection that sent only the HTTP/2 preface is still open after 5 s"
    );
    // A half-sent HTTP/1 head likewise.
    let mut slow = hold(p.public, 1).pop().unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
}

/// A keep-alive connection after one request: `(request, idle connection)`.
fn after_one_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 8192];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    s.set_nonblocking(true).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_idle_timeout_is_its_own_setting() {
    // Short idle timeout, long header timeout: the idle connection goes.
    let p = ProxyBuilder::new("idle-short")
        .proxy_key("client_idle_timeout = \"400ms\"")
        .service("monolith", echo_upstream("monolith").await)
        .start()
        .await;
    let mut idle = after_one_request(p.public);
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);

    // Short header and first-byte timeouts, long idle timeout: it stays.
    let p = ProxyBuilder::new("idle-long")
        .proxy_key("header_read_timeout = \"200ms\"")
        .proxy_key("first_byte_timeout = \"200ms\"")
        .proxy_key("client_idle_timeout = \"60s\"")
        .service("monolith", echo_upstream("monolith").await)
        .start()
        .await;
    let mut idle = after_one_request(p.public);
    assert!(
        !closed_within(&mut idle, Duration::from_millis(1200)).await,
        "an idle keep-alive connection was closed at the header-read timeout"
    );
    // And it still serves.
    idle.set_nonblocking(false).unwrap();
    idle.write_all(b"GET /y HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 8192];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

/// The default outlasts a load balancer's 60 s idle timeout (ALB), so the balancer closes
/// first.
#[test]
fn the_default_client_idle_timeout_outlasts_load_balancers() {
    let idle = strangler_proxy::config::parse_duration(
        strangler_proxy::config::defaults::CLIENT_IDLE_TIMEOUT,
    )
    .unwrap();
    assert!(idle > Duration::from_secs(60), "{idle:?}");
}

/// The proxy as a child process with a descriptor limit of 256: 400 silent connections
/// would exhaust it without the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_low_descriptor_limit_new_clients_are_still_served() {
    let monolith = echo_upstream("monolith").await;
    let (public, admin) = {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (a.local_addr().unwrap(), b.local_addr().unwrap())
    };
    let path = ProxyBuilder::new("fd-limit")
        .listen(public, admin)
        .proxy_key("first_byte_timeout = \"60s\"")
        .service("monolith", monolith)
        .write();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 256 && exec \"$0\" --config \"$1\"")
            .arg(BIN)
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(path.with_file_name("stderr.log")).unwrap())
            .spawn()
            .expect("this test needs `sh` on PATH"),
    );
    let up = eventually(Duration::from_secs(10), || async {
        served_within(&url(admin, "/healthz"), Duration::from_secs(1))
            .await
            .is_ok()
    })
    .await;
    let stderr = || std::fs::read_to_string(path.with_file_name("stderr.log")).unwrap();
    assert!(up, "the proxy did not start; stderr:\n{}", stderr());
    let _held = hold(public, 400);
    let status = served_within(&url(public, "/x"), Duration::from_secs(5)).await;
    assert_eq!(status, Ok(StatusCode::OK), "stderr:\n{}", stderr());
}

/// Under keep-alive load, a shutdown with a grace period loses no request: clients are told
/// `Connection: close`, reconnect, and are answered until the listener closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_under_keep_alive_load_loses_no_request() {
    let p = ProxyBuilder::new("drain-load")
        .proxy_key("drain_grace = \"1500ms\"")
        .service("monolith", echo_upstream("monolith").await)
        .start()
        .await;
    let target = p.url("/load");
    let ok = Arc::new(AtomicUsize::new(0));
    let closing = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (target, ok, closing) = (target.clone(), ok.clone(), closing.clone());
        clients.push(tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http();
            let mut lost = Vec::new();
            for _ in 0..20_000 {
                if Instant::now() > deadline {
                    break;
                }
                let req = http::Request::get(&target)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match client.request(req).await {
                    Ok(res) => {
                        assert_eq!(res.status(), StatusCode::OK);
                        if res
                            .headers()
                            .get("connection")
                            .is_some_and(|v| v == "close")
                        {
                            closing.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    // The listener is closed: refused, not lost.
                    Err(e) if e.is_connect() => break,
                    Err(e) => lost.push(format!("{e:?}")),
                }
            }
            lost
        }));
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            ok.load(Ordering::SeqCst) >= 200
        })
        .await
    );
    let draining = p.draining.clone();
    let shutdown = tokio::spawn(p.running.shutdown());
    assert!(eventually(Duration::from_secs(2), || async { draining.is_set() }).await);
    // A new client during the grace is answered, and told to go.
    let fresh = send(&client(), Method::GET, &target, &[]).await;
    let fresh = fresh.expect("a new connection during the grace is answered");
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.headers.get("connection").unwrap(), "close");
    assert!(!shutdown.is_finished(), "the shutdown skipped the grace");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown within 10 s")
        .unwrap();
    let mut lost = Vec::new();
    for c in clients {
        lost.extend(c.await.unwrap());
    }
    println!(
        "{} answered, {} with Connection: close, {} lost",
        ok.load(Ordering::SeqCst),
        closing.load(Ordering::SeqCst),
        lost.len()
    );
    assert!(
        closing.load(Ordering::SeqCst) >= 16,
        "few answers said Connection: close"
    );
    assert!(
        lost.is_empty(),
        "requests lost across the shutdown: {lost:?}"
    );
}
