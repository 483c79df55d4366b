//! `cutover` and `complete` on a real stack: the monolith (waiting for reverse sync on a
//! missing reference), the users service, strangler-proxy, and a `migrate-data --follow`
//! process; writes go through the proxy before, between and after the switches.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monolith::app::Board;
use monolith::db::{Db, Seed};
use monolith::legacy::Resource;
use monolith::references::RemoteReferences;
use strangler_ops::sync::{self, Direction, SyncStage};

use common::Scratch;
use common::prometheus::Prometheus;
use common::stack::{monolith_waiting, ops, serve};

struct Stack {
    _dir: Scratch,
    data: String,
    config: String,
    proxy: strangler_proxy::server::Running,
    follower: Option<Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut f) = self.follower.take() {
            let _ = f.kill();
            let _ = f.wait();
        }
    }
}

async fn stack(name: &str) -> Stack {
    let dir = Scratch::new(name);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let monolith = monolith_waiting(&data, Duration::from_secs(2)).await;
    let db = Db::open(&data.join("users.db"), &[Resource::Users], Seed::Empty).unwrap();
    let refs = Arc::new(RemoteReferences::new("http://127.0.0.1:9").unwrap());
    let users = serve(Board::new(db, &[Resource::Users], refs).router()).await;
    let config = dir.join("routes.toml");
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndefault = \"monolith\"\n\
         backend_header = true\naccess_log = false\nhold_timeout = \"10s\"\n\n\
         [services.monolith]\nurl = \"http://{monolith}\"\n\n\
         [services.users]\nurl = \"http://{users}\"\n\n\
         [[routes]]\nname     = \"users\"\nprefix   = \"/api/users\"\nservice  = \"users\"\n\
         weight   = 0\n"
    );
    std::fs::write(&config, text).unwrap();
    let proxy = strangler_proxy::server::start(&config).await.unwrap();
    Stack {
        data: data.display().to_string(),
        config: config.display().to_string(),
        proxy,
        _dir: dir,
        follower: None,
    }
}

impl Stack {
    fn start_follower(&mut self) {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_strangler-ops"))
            .args([
                "migrate-data",
                "users",
                "--follow",
                "--poll",
                "5ms",
                "--data-dir",
                &self.data,
                "--config",
                &self.config,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the follower");
        self.follower = Some(child);
        let data = Path::new(&self.data).to_path_buf();
        wait_for("the follower to follow", || {
            sync::read_state(&data, &common::declared(Resource::Users))
                .ok()
                .flatten()
                .is_some_and(|s| {
                    s.stage == SyncStage::Following
                        && s.follower_heartbeat_age.is_some_and(|a| a < sync::LIVE)
                        && s.last_verified_ok == Some(true)
                })
        });
    }

    fn state(&self) -> sync::SyncState {
        sync::read_state(Path::new(&self.data), &common::declared(Resource::Users))
            .unwrap()
            .expect("migration started")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.public)
    }

    /// Runs `strangler-ops ARGS --config FILE --data-dir DIR`.
    async fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--config", &self.config, "--data-dir", &self.data]);
        ops(&all).await
    }

    /// `status` of this stack's proxy over a short window.
    async fn status(&self) -> (Option<i32>, String) {
        let admin = format!("http://{}", self.proxy.admin);
        ops(&[
            "status",
            "--admin",
            &admin,
            "--window",
            "100ms",
            "--data-dir",
            &self.data,
        ])
        .await
    }

    /// `cutover users EXTRA`, reading this stack's one proxy.
    async fn cutover(&self, extra: &[&str]) -> (Option<i32>, String) {
        let metrics = format!("http://{}/metrics", self.proxy.admin);
        self.cutover_via(&["--metrics", &metrics], extra).await
    }

    /// `cutover users SOURCE EXTRA`: `--prometheus URL` or one `--metrics URL` per replica.
    async fn cutover_via(&self, source: &[&str], extra: &[&str]) -> (Option<i32>, String) {
        let mut args = vec!["cutover", "users"];
        args.extend_from_slice(source);
        args.extend_from_slice(extra);
        self.run(&args).await
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs JSON through the proxy; returns (status, backend, body).
async fn post(url: &str, body: &str) -> (u16, String, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let res = client.request(req).await.expect("proxy answers");
    let status = res.status().as_u16();
    let backend = res
        .headers()
        .get("x-strangler-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        backend,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn user_in(db: &Path, id: i64) -> Option<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT username FROM users WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_switch_to_the_service_back_and_again_then_the_migration_completes() {
    let mut s = stack("cutover").await;
    let data = Path::new(&s.data).to_path_buf();
    s.start_follower();

    // Reads move; writes may not move by shift while forward capture runs.
    let (code, out) = s
        .run(&["shift", "users", "100", "--methods", "GET,HEAD"])
        .await;
    assert_eq!(code, Some(0), "{out}");
    let before = std::fs::read_to_string(&s.config).unwrap();
    let (code, out) = s.run(&["shift", "users", "100", "--methods", "all"]).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("scripts/cutover users"), "{out}");
    assert_eq!(std::fs::read_to_string(&s.config).unwrap(), before);

    let (status, backend, user) = post(
        &s.url("/api/users"),
        r#"{"username":"mono","name":"M","bio":"b"}"#,
    )
    .await;
    assert_eq!((status, backend.as_str()), (201, "monolith"), "{user}");

    // A near miss: the case-insensitive monolith serves /API/USERS/1 as users' resource, but
    // the proxy (ignore_case off) sends it to the default. The cutover warns, and goes on.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let res = client
        .get(s.url("/API/USERS/1").parse().unwrap())
        .await
        .expect("proxy answers");
    assert_eq!(res.headers()["x-strangler-backend"], "monolith");

    // Forward cutover: writes to the service.
    let (code, out) = s.cutover(&[]).await;
    println!("{out}");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "WARNING: 1 request(s) matched route \"users\" only when letter case is ignored"
        ),
        "{out}"
    );
    assert!(out.contains("longest hold a client saw"), "{out}");
    assert_eq!(s.state().direction, Direction::Reverse);
    assert_eq!(s.state().stage, SyncStage::WritesSwitched);
    let (code, out) = s.status().await;
    assert_eq!(code, Some(0), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("users ") && l.contains("service → monolith"))
        .unwrap_or_else(|| panic!("no migration row for users: {out}"));
    assert!(
        row.contains("writes switched") && row.contains("running (pid"),
        "{row}"
    );

    let (status, backend, user) = post(
        &s.url("/api/users"),
        r#"{"username":"svc","name":"S","bio":"b"}"#,
    )
    .await;
    assert_eq!((status, backend.as_str()), (201, "users"), "{user}");
    let id = user["id"].as_i64().unwrap();
    // A thread by that user, the instant after, on the monolith: reverse sync (and the
    // monolith's bounded wait for a missing reference) make it 201, not 422.
    let (status, backend, thread) = post(
        &s.url("/api/threads"),
        &format!(r#"{{"title":"t","createdBy":{id}}}"#),
    )
    .await;
    assert_eq!((status, backend.as_str()), (201, "monolith"), "{thread}");
    assert_eq!(
        user_in(&data.join("monolith.db"), id).as_deref(),
        Some("svc")
    );

    // Reverse: writes back to the monolith, nothing lost.
    let (code, out) = s.cutover(&["--reverse"]).await;
    println!("{out}");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(s.state().direction, Direction::Forward);
    let (status, backend, again) = post(
        &s.url("/api/users"),
        r#"{"username":"back","name":"B","bio":"b"}"#,
    )
    .await;
    assert_eq!((status, backend.as_str()), (201, "monolith"), "{again}");
    let back = again["id"].as_i64().unwrap();
    assert_ne!(back, id, "ids never collide");
    wait_for("forward sync of the new user", || {
        user_in(&data.join("users.db"), back).is_some()
    });

    // And over again.
    let (code, out) = s.cutover(&[]).await;
    assert_eq!(code, Some(0), "{out}");
    for id in [user["id"].as_i64().unwrap(), back] {
        assert!(user_in(&data.join("users.db"), id).is_some(), "user {id}");
    }
    // Threads still written on the monolith refer to users: stopping reverse sync now would
    // make the monolith refuse threads by users created on the service.
    let (code, out) = s.run(&["complete", "users"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("scripts/cutover threads"), "{out}");
    assert_eq!(s.state().stage, SyncStage::WritesSwitched);
    assert_eq!(s.state().capture_installed, (true, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cutover_without_a_follower_is_refused_and_changes_nothing() {
    let s = stack("cutover-refused").await;
    let (code, out) = s
        .run(&["shift", "users", "100", "--methods", "GET,HEAD"])
        .await;
    assert_eq!(code, Some(0), "{out}");
    let before = std::fs::read_to_string(&s.config).unwrap();
    let (code, out) = s.cutover(&[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("migrate-data users --follow"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&s.config).unwrap(), before);
    let (code, out) = s.run(&["complete", "users"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("scripts/cutover users"), "{out}");
}

/// Several replicas: the flip waits until every proxy Prometheus scrapes serves the fenced
/// file, judged by its sha256. A replica still on an older file stops the cutover before the
/// flip, with the fence lifted and writes on the monolith.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_is_switched_only_when_every_replica_serves_the_fence() {
    let mut s = stack("cutover-fleet").await;
    // A second replica on the same file, and a third one on a copy nobody edits (a replica
    // whose ConfigMap has not been updated).
    let second = strangler_proxy::server::start(Path::new(&s.config))
        .await
        .unwrap();
    s.start_follower();
    let (code, out) = s
        .run(&["shift", "users", "100", "--methods", "GET,HEAD"])
        .await;
    assert_eq!(code, Some(0), "{out}");
    let stale_dir = Scratch::new("cutover-fleet-stale");
    let stale_file = stale_dir.join("routes.toml");
    std::fs::copy(&s.config, &stale_file).unwrap();
    let stale = strangler_proxy::server::start(&stale_file).await.unwrap();

    // Read directly, one --metrics per replica: the stale one stops the cutover.
    let urls: Vec<String> = [s.proxy.admin, second.admin, stale.admin]
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    let before = std::fs::read_to_string(&s.config).unwrap();
    let every: Vec<&str> = urls
        .iter()
        .flat_map(|u| ["--metrics", u.as_str()])
        .collect();
    let (code, out) = s.cutover_via(&every, &["--apply-timeout", "2s"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("not every proxy serves the edited file"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&s.config).unwrap(), before);

    let Some(all) = Prometheus::start(
        "cutover-fleet-all",
        &[s.proxy.admin, second.admin, stale.admin],
    ) else {
        return;
    };
    let (code, out) = s
        .cutover_via(&["--prometheus", &all.url], &["--apply-timeout", "4s"])
        .await;
    println!("{out}");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("not every proxy serves the edited file"),
        "{out}"
    );
    assert!(out.contains("fence lifted"), "{out}");
    assert_eq!(std::fs::read_to_string(&s.config).unwrap(), before);
    assert_eq!(s.state().direction, Direction::Forward);
    let (status, backend, _) = post(
        &s.url("/api/users"),
        r#"{"username":"still","name":"S","bio":"b"}"#,
    )
    .await;
    assert_eq!((status, backend.as_str()), (201, "monolith"));

    drop(all);
    stale.shutdown().await;
    let Some(fleet) = Prometheus::start("cutover-fleet-two", &[s.proxy.admin, second.admin]) else {
        return;
    };
    let (code, out) = s
        .cutover_via(&["--prometheus", &fleet.url], &["--apply-timeout", "15s"])
        .await;
    println!("{out}");
    assert_eq!(code, Some(0), "{out}");
    for proxy in [&s.proxy, &second] {
        let url = format!("http://{}/api/users", proxy.public);
        let (status, backend, _) = post(&url, r#"{"username":"f","name":"F","bio":"b"}"#).await;
        assert_eq!((status, backend.as_str()), (201, "users"));
    }
    // And back, reading both replicas directly.
    let (code, out) = s.cutover_via(&every[..4], &["--reverse"]).await;
    assert_eq!(code, Some(0), "{out}");
    for proxy in [&s.proxy, &second] {
        let url = format!("http://{}/api/users", proxy.public);
        let (status, backend, _) = post(&url, r#"{"username":"g","name":"G","bio":"b"}"#).await;
        assert_eq!((status, backend.as_str()), (201, "monolith"));
    }
}
