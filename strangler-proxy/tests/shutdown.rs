//! Shutdown drains: a request in flight when shutdown starts is answered, new connections are
//! refused, and the binary exits 0 on SIGTERM. Also the binary's `check` command and its refusal
//! to start on an invalid file.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::{
    Gate, ProxyBuilder, TestProxy, client, eventually, gated_upstream, get, send, spawn_get, url,
};

const BIN: &str = env!("CARGO_BIN_EXE_strangler-proxy");

/// The tests of the drain proper: the listener closes as soon as the shutdown begins.
const NO_GRACE: &str = "drain_grace = \"0s\"";

/// Whether a fresh TCP connection to `addr` is refused.
async fn refuses_connections(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

/// Whether `addr` refuses connections within 2 s. Polled rather than demanded at once: a child
/// process another test in this binary forks at that moment holds a copy of every listening
/// socket until it execs (they are close-on-exec, but open between fork and exec), and a
/// connection made in that window is queued on the dead listener (seen with `ss`: LISTEN, no
/// owner, Recv-Q 1).
async fn stops_accepting(addr: SocketAddr) -> bool {
    eventually(Duration::from_secs(2), || refuses_connections(addr)).await
}

/// A proxy in front of a monolith that holds `/held/` requests at `Gate`.
async fn gated_monolith(test: &str) -> (TestProxy, Gate) {
    let (monolith, gate) = gated_upstream("monolith").await;
    let proxy = ProxyBuilder::new(test)
        .proxy_key(NO_GRACE)
        .service("monolith", monolith)
        .start()
        .await;
    (proxy, gate)
}

#[tokio::test]
async fn shutdown_drains_a_request_in_flight_and_then_refuses_connections() {
    let (running, gate) = gated_monolith("shutdown-drain").await;
    let (public, admin, draining) = (running.public, running.admin, running.draining.clone());

    // A keep-alive admin connection opened before shutdown, the way a load balancer's health
    // checker holds one.
    let prober = client();
    let ready = send(&prober, Method::GET, &url(admin, "/readyz"), &[])
        .await
        .unwrap();
    assert_eq!(ready.status, StatusCode::OK);

    let in_flight = spawn_get(url(public, "/orders/held/1"));
    assert!(
        eventually(Duration::from_secs(5), || async { gate.arrived() == 1 }).await,
        "the request never reached the upstream"
    );

    let started = Instant::now();
    let shutdown = tokio::spawn(running.shutdown());
    assert!(
        stops_accepting(public).await,
        "the public listener still accepts after shutdown began"
    );
    assert!(draining.is_set());
    // The held request is what the drain waits for.
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the request in flight"
    );
    assert!(!in_flight.is_finished());
    let ready = send(&prober, Method::GET, &url(admin, "/readyz"), &[])
        .await
        .expect("the held admin connection still answers during the drain");
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text()
    );

    gate.open();
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered, not cut");
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.backend(), "monolith");
    assert_eq!(answer.json()["path"], "/orders/held/1");

    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown returns once the last request is answered")
        .unwrap();
    println!("drained in {:?}", started.elapsed());
    assert!(stops_accepting(public).await);
    assert!(
        send(&client(), Method::GET, &url(public, "/orders/1"), &[])
            .await
            .is_err()
    );
}

/// A drain with nothing in flight is immediate: idle keep-alive connections do not hold it up.
#[tokio::test]
async fn shutdown_with_idle_keep_alive_connections_returns_promptly() {
    let running = ProxyBuilder::new("shutdown-idle")
        .proxy_key(NO_GRACE)
        .service("monolith", support::echo_upstream("monolith").await)
        .start()
        .await;
    let public = running.public;
    let keep_alive = client();
    for i in 0..4 {
        let answer = send(
            &keep_alive,
            Method::GET,
            &url(public, &format!("/x/{i}")),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(answer.backend(), "monolith");
    }
    // The drain timeout is 30 s, so returning within 5 s means the idle connection was closed,
    // not waited out.
    tokio::time::timeout(Duration::from_secs(5), running.shutdown())
        .await
        .expect("an idle keep-alive connection held up the shutdown");
    assert!(stops_accepting(public).await);
}

/// Load balancers and kubelet open a new connection for every probe; while the proxy drains,
/// `/readyz` must tell them 503 (and `/metrics` must still be scrapable), not refuse them.
#[tokio::test]
async fn readyz_answers_503_to_new_probes_while_draining() {
    let (running, gate) = gated_monolith("shutdown-readyz").await;
    let (public, admin) = (running.public, running.admin);
    assert_eq!(get(&url(admin, "/readyz")).await.status, StatusCode::OK);

    let in_flight = spawn_get(url(public, "/orders/held/1"));
    assert!(eventually(Duration::from_secs(5), || async { gate.arrived() == 1 }).await);
    let shutdown = tokio::spawn(running.shutdown());
    assert!(stops_accepting(public).await);

    // The drain lasts as long as the gate stays shut; probe it a few times on new connections.
    let mut probes = Vec::new();
    for _ in 0..5 {
        // A new client each time: no pooled connection to reuse.
        let readyz = send(&client(), Method::GET, &url(admin, "/readyz"), &[]).await;
        probes.push(readyz.map(|a| a.status));
    }
    gate.open();
    let _ = in_flight.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), shutdown).await;
    assert!(
        probes.iter().all(|p| p
            .as_ref()
            .is_ok_and(|s| *s == StatusCode::SERVICE_UNAVAILABLE)),
        "fresh /readyz probes during the drain got {probes:?}, expected 503 each"
    );
}

/// A child process that is killed if the test fails before it exits.
struct Proxy {
    child: Child,
    /// Where its stderr goes.
    stderr: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proxy {
    /// Runs the binary on `config`, its stderr going to `stderr.log` beside it.
    fn spawn(config: &Path) -> Proxy {
        Self::spawn_with(config, &[])
    }

    /// [`Proxy::spawn`] with environment variables.
    fn spawn_with(config: &Path, env: &[(&str, &str)]) -> Proxy {
        let stderr = config.with_file_name("stderr.log");
        let child = Command::new(BIN)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Proxy { child, stderr }
    }

    /// Waits up to 10 s for `/healthz` on `admin` to answer 200.
    async fn wait_healthy(&self, admin: SocketAddr) {
        let healthy = eventually(Duration::from_secs(10), || async {
            send(&client(), Method::GET, &url(admin, "/healthz"), &[])
                .await
                .is_ok_and(|a| a.status == StatusCode::OK)
        })
        .await;
        assert!(
            healthy,
            "no /healthz on {admin} (a port taken meanwhile?); stderr:\n{}",
            self.stderr()
        );
    }

    /// What it wrote to stderr so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `within` for the process to exit.
    async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut status = None;
        eventually(within, || {
            status = self.child.try_wait().expect("waiting on the child");
            std::future::ready(status.is_some())
        })
        .await;
        status
    }
}

/// Two ports that were free a moment ago (bound together so they differ, then released).
fn free_ports() -> (SocketAddr, SocketAddr) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("this test needs the `kill` command (procps or util-linux) on PATH");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// A file with three validation errors, and the `FILE:LINE:COL: message` line each must give.
fn invalid_file(test: &str) -> (std::path::PathBuf, Vec<String>) {
    let file = ProxyBuilder::new(test)
        .service("monolith", support::closed_port())
        .service_url("users", "https://users.internal:443")
        .route("/api/users", "user", 101);
    let text = file.text();
    let path = file.write();
    let file = path.display().to_string();
    // Line and column of the value on the line that starts with `key = `.
    let at = |key: &str, value: &str| {
        let (n, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.starts_with(&format!("{key} = {value}")))
            .unwrap();
        format!("{file}:{}:{}: ", n + 1, line.find(value).unwrap() + 1)
    };
    let expected = vec![
        at("url", "\"https://"),
        at("service", "\"user\""),
        at("weight", "101"),
    ];
    (path, expected)
}

/// Asserts `stderr` holds exactly one `FILE:LINE:COL: message` line per expected position,
/// in any order, and nothing else that looks like an error line.
fn assert_error_lines(stderr: &str, file: &Path, expected: &[String]) {
    let prefix = format!("{}:", file.display());
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), expected.len(), "stderr:\n{stderr}");
    for position in expected {
        let matching: Vec<_> = lines.iter().filter(|l| l.starts_with(position)).collect();
        assert_eq!(
            matching.len(),
            1,
            "one line starting {position:?} expected; stderr:\n{stderr}"
        );
        assert!(
            matching[0].len() > position.len() + 10,
            "no message: {}",
            matching[0]
        );
    }
    assert!(stderr.contains("not supported yet"), "stderr:\n{stderr}");
    assert!(
        stderr.contains("(did you mean \"users\"?)"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("found 101"), "stderr:\n{stderr}");
}

#[test]
fn check_prints_every_error_with_its_position_and_exits_1() {
    let (path, expected) = invalid_file("bin-check-invalid");
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(out.stdout.is_empty());
    assert_error_lines(&stderr, &path, &expected);
}

#[test]
fn check_accepts_a_valid_file_with_a_one_line_summary() {
    let path = ProxyBuilder::new("bin-check-valid")
        .service("monolith", support::closed_port())
        .service("users", support::closed_port())
        .route("/api/users", "users", 100)
        .write();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "stdout:\n{stdout}");
    // The route takes writes with ignore_case off: a warning naming its prefix's position.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("prefix = \"/api/users\""))
        .unwrap();
    assert!(
        stderr.starts_with(&format!(
            "{}:{line}:10: warning: route \"users\" takes writes and [proxy] ignore_case is off",
            path.display()
        )),
        "stderr:\n{stderr}"
    );
    let summary = stdout.trim_end();
    assert!(
        summary.starts_with(&format!("{}: ok", path.display())),
        "{summary}"
    );
    assert!(summary.contains("2 services"), "{summary}");
    assert!(summary.contains("1 routes"), "{summary}");
}

#[tokio::test]
async fn the_binary_refuses_to_start_on_an_invalid_file() {
    let (path, expected) = invalid_file("bin-refuse");
    let mut proxy = Proxy::spawn(&path);
    let status = proxy.exit_within(Duration::from_secs(5)).await;
    let stderr = proxy.stderr();
    let status = status.unwrap_or_else(|| panic!("still running on an invalid file:\n{stderr}"));
    assert!(!status.success(), "{status}; stderr:\n{stderr}");
    // The same errors as `check` gives; the first one is prefixed with the program name.
    for position in &expected {
        assert_eq!(
            stderr.matches(position.as_str()).count(),
            1,
            "one error at {position:?} expected; stderr:\n{stderr}"
        );
    }
    assert!(stderr.contains("refusing to start"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_0() {
    let (monolith, gate) = gated_upstream("monolith").await;
    let users = support::echo_upstream("users").await;
    let (public, admin) = free_ports();
    let path = ProxyBuilder::new("bin-sigterm")
        .listen(public, admin)
        .proxy_key(NO_GRACE)
        .service("monolith", monolith)
        .service("users", users)
        .route("/api/users", "users", 100)
        .write();
    let mut proxy = Proxy::spawn(&path);

    proxy.wait_healthy(admin).await;
    assert_eq!(get(&url(public, "/api/users/7")).await.backend(), "users");

    let in_flight = spawn_get(url(public, "/orders/held/1"));
    assert!(eventually(Duration::from_secs(5), || async { gate.arrived() == 1 }).await);

    kill("-TERM", proxy.child.id());
    assert!(
        stops_accepting(public).await,
        "still accepting after SIGTERM; stderr:\n{}",
        proxy.stderr()
    );
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "exited with a request in flight; stderr:\n{}",
        proxy.stderr()
    );

    gate.open();
    let answer = in_flight.await.unwrap().expect("answered, not cut");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.backend(), "monolith");

    let status = proxy.exit_within(Duration::from_secs(5)).await;
    let status = status
        .unwrap_or_else(|| panic!("no exit 5 s after the drain; stderr:\n{}", proxy.stderr()));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
}

/// The access log of the binary: one line per answered request, on stderr, every line written
/// by the time it exits (the writer thread's last batch included), never the query string, no
/// colour codes when stderr is not a terminal.
#[tokio::test]
async fn the_binary_logs_every_request_before_it_exits_without_queries_or_colours() {
    access_log_lines("bin-access-log", &[], 25).await;
}

/// `RUST_LOG=warn` silences the access log as it silences every `INFO` line.
#[tokio::test]
async fn rust_log_silences_the_access_log() {
    access_log_lines("bin-access-log-quiet", &[("RUST_LOG", "warn")], 0).await;
}

/// Runs the binary with the access log on, sends 25 requests, stops it and checks that
/// `expected` access lines were written, in order, without the query or colour codes.
async fn access_log_lines(test: &str, env: &[(&str, &str)], expected: usize) {
    let users = support::echo_upstream("users").await;
    let monolith = support::echo_upstream("monolith").await;
    let (public, admin) = free_ports();
    let path = ProxyBuilder::new(test)
        .listen(public, admin)
        .proxy_key(NO_GRACE)
        .service("monolith", monolith)
        .service("users", users)
        .route("/api/users", "users", 100)
        .write();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("access_log = false", "access_log = true"),
    )
    .unwrap();
    let mut proxy = Proxy::spawn_with(&path, env);
    proxy.wait_healthy(admin).await;
    const REQUESTS: usize = 25;
    for i in 0..REQUESTS {
        let answer = get(&url(public, &format!("/api/users/{i}?access_token=SECRET"))).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    kill("-TERM", proxy.child.id());
    let status = proxy.exit_within(Duration::from_secs(10)).await;
    let stderr = proxy.stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("strangler::access:"))
        .collect();
    assert_eq!(lines.len(), expected, "stderr:\n{stderr}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.contains(&format!(
                " method=GET path=/api/users/{i} route=\"users\" backend=\"users\" status=200 "
            )),
            "{line}"
        );
        assert!(line.contains(" revision=1"), "{line}");
    }
    assert!(
        !stderr.contains("SECRET"),
        "a query value in the log:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a file:\n{stderr}"
    );
}
