//! Issue 11, "finish the migration", end to end: the monolith, the users, threads and posts
//! services and strangler-proxy on ephemeral ports, client reads and writes through the proxy
//! the whole time, and every resource taken from `copying` to `complete` through the CLI
//! (`migrate-data --follow`, `shift`, `cutover`, `cutover --reverse`, `complete`). No client
//! request may fail, no acknowledged write may be lost or doubled, and once complete the
//! monolith serves none of the three routes. It runs twice: every database an SQLite file
//! (change capture by triggers), and every database in one throwaway PostgreSQL cluster
//! (forward by logical replication until the first cutover hands over to triggers).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use monolith::app::Board;
use monolith::db::{Db, Location, Seed};
use monolith::legacy::Resource;
use monolith::references::RemoteReferences;
use serde_json::{Value, json};
use strangler_ops::db::Db as OpsDb;
use strangler_ops::migrations::{Declared, Migrations};
use strangler_ops::sync::{self, Direction, SyncStage};
use strangler_proxy::metrics::names;
use test_postgres::Cluster;

use common::Scratch;
use common::stack::monolith_at;

/// How long the client load may run at most, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(50);

/// Writer tasks; each writes every [`WRITE_EVERY`], so about 100 writes/s in total.
const WRITERS: usize = 4;
const WRITE_EVERY: Duration = Duration::from_millis(40);

/// Reader tasks; each reads every [`READ_EVERY`].
const READERS: usize = 2;
const READ_EVERY: Duration = Duration::from_millis(20);

/// Longer than the proxy's `hold_timeout`, so a held write ends in the proxy, not here.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Acknowledged writes the load must add between two migration steps, so every state sees
/// writes.
const WRITES_PER_STEP: u64 = 20;

// ---- the stack --------------------------------------------------------------------------

/// Where every database of the stack lives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

struct Stack {
    dir: Scratch,
    data: PathBuf,
    config: PathBuf,
    proxy: strangler_proxy::server::Running,
    followers: Vec<(Resource, Child)>,
    started: Instant,
    /// The declarations the scripts read (`migrations.toml` beside `routes.toml`).
    migrations: Migrations,
    engine: Engine,
    /// Dropped last: stops the cluster after the followers.
    _cluster: Option<Cluster>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in &mut self.followers {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn routes_toml(monolith: &str, services: &[(Resource, String)]) -> String {
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndefault = \"monolith\"\n\
         backend_header = true\naccess_log = false\nhold_timeout = \"10s\"\n\n\
         [services.monolith]\nurl = \"http://{monolith}\"\n"
    );
    for (r, addr) in services {
        text.push_str(&format!(
            "\n[services.{}]\nurl = \"http://{addr}\"\n",
            r.name()
        ));
    }
    for (r, _) in services {
        // The posts route also covers /api/posts/in-thread and /api/posts/by-user (prefix).
        text.push_str(&format!(
            "\n[[routes]]\nname     = \"{n}\"\nprefix   = \"/api/{n}\"\nservice  = \"{n}\"\n\
             weight   = 0\n",
            n = r.name()
        ));
    }
    text
}

async fn stack(engine: Engine) -> Stack {
    let started = Instant::now();
    let dir = Scratch::new("migration-e2e");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cluster = (engine == Engine::Postgres).then(|| {
        tokio::task::block_in_place(|| {
            let c = Cluster::start();
            c.create_db("monolith");
            for r in Resource::ALL {
                c.create_db(r.name());
            }
            c
        })
    });
    // Each process's database, and as migrations.toml names it.
    let location = |db: &str| match &cluster {
        None => (
            Location::File(data.join(format!("{db}.db"))),
            format!("sqlite:{db}.db"),
        ),
        Some(c) => (Location::Postgres(c.url(db)), c.url(db)),
    };

    // The bounded wait for a reference that reverse sync has not carried over yet.
    let monolith = monolith_at(&location("monolith").0, Duration::from_secs(2)).await;

    // The services need the proxy's address and the proxy's file needs theirs: bind first.
    let mut listeners = Vec::new();
    for r in Resource::ALL {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listeners.push((r, listener, addr));
    }
    let config = dir.join("routes.toml");
    let addrs: Vec<(Resource, String)> =
        listeners.iter().map(|(r, _, a)| (*r, a.clone())).collect();
    std::fs::write(&config, routes_toml(&monolith.to_string(), &addrs)).unwrap();
    let mut declarations = String::new();
    for r in Resource::ALL {
        declarations.push_str(&format!(
            "[resources.{n}]\nroute = \"{n}\"\nkey = \"id\"\n\
             source = {{ url = \"{}\", table = \"{n}\" }}\n\
             target = {{ url = \"{}\", table = \"{n}\" }}\n\n",
            location("monolith").1,
            location(r.name()).1,
            n = r.name()
        ));
    }
    let migrations_file = dir.join("migrations.toml");
    std::fs::write(&migrations_file, declarations).unwrap();
    let migrations = Migrations::load(&migrations_file).unwrap();
    let proxy = strangler_proxy::server::start(&config).await.unwrap();
    let api_base = format!("http://{}", proxy.public);
    for (r, listener, _) in listeners {
        let at = location(r.name()).0;
        let db = tokio::task::block_in_place(|| Db::open_at(&at, &[r], Seed::Empty).unwrap());
        let refs = Arc::new(RemoteReferences::new(&api_base).unwrap());
        let router = Board::new(db, &[r], refs).router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    }
    Stack {
        dir,
        data,
        config,
        proxy,
        followers: Vec::new(),
        started,
        migrations,
        engine,
        _cluster: cluster,
    }
}

impl Stack {
    fn say(&self, what: &str) {
        println!("[{:6.2}s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn follower_log(&self, r: Resource) -> PathBuf {
        self.dir.join(&format!("follow-{}.log", r.name()))
    }

    /// Starts `migrate-data R --follow` and waits until it copied, verified and follows.
    async fn start_follower(&mut self, r: Resource) {
        let log = std::fs::File::create(self.follower_log(r)).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_strangler-ops"))
            .env_remove("RUST_LOG")
            .args(["migrate-data", r.name(), "--follow", "--poll", "5ms"])
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the follower");
        self.followers.push((r, child));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = tokio::task::block_in_place(|| sync::read_state(&self.data, self.decl(r)));
            let ready = state
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .is_some_and(|s| {
                    s.stage == SyncStage::Following
                        && s.follower_heartbeat_age.is_some_and(|a| a < sync::LIVE)
                        && s.last_verified_ok == Some(true)
                });
            if ready {
                break;
            }
            let exited = self.followers.last_mut().unwrap().1.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the follower of {} did not reach stage following with a passed verification \
                 ({}); sync state: {state:?}\n{}",
                r.name(),
                exited.map_or("timed out after 20 s".to_string(), |e| format!(
                    "it exited: {e}"
                )),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Between two PostgreSQL databases it follows by logical replication (until the
        // first cutover hands over to triggers).
        let log = std::fs::read_to_string(self.follower_log(r)).unwrap();
        let mechanism = match self.engine {
            Engine::Sqlite => "change capture on: triggers on table",
            Engine::Postgres => "change capture on: PostgreSQL logical replication",
        };
        assert!(log.contains(mechanism), "{log}");
        self.say(&format!("follower of {} follows", r.name()));
    }

    /// The followers' output so far, for failure messages.
    fn logs(&self) -> String {
        self.followers
            .iter()
            .map(|(r, _)| {
                let text = std::fs::read_to_string(self.follower_log(*r)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                format!(
                    "--- follower of {} (last lines)\n{}\n",
                    r.name(),
                    tail.join("\n")
                )
            })
            .collect()
    }

    fn decl(&self, r: Resource) -> &Declared {
        self.migrations.get(r.name()).unwrap()
    }

    fn state(&self, r: Resource) -> sync::SyncState {
        tokio::task::block_in_place(|| sync::read_state(&self.data, self.decl(r)))
            .unwrap()
            .expect("migration started")
    }

    /// A connection to the database that owns `r` now (its service's).
    fn service_db(&self, r: Resource) -> OpsDb {
        tokio::task::block_in_place(|| {
            OpsDb::open(&self.decl(r).target.url, &self.data, false).expect("open")
        })
    }

    fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.proxy.admin)
    }

    /// Runs `strangler-ops ARGS --config … --data-dir …` (and `--metrics …` for the commands
    /// that read the proxy); returns the exit code and stdout + stderr.
    async fn ops(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_strangler-ops"));
        cmd.env_remove("RUST_LOG")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data);
        if args[0] == "cutover" {
            cmd.args(["--metrics", &self.metrics_url()]);
        }
        let out = tokio::time::timeout(Duration::from_secs(40), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("strangler-ops {args:?} did not finish within 40 s"))
            .expect("run strangler-ops");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.say(&format!(
            "strangler-ops {} → {:?}",
            args.join(" "),
            out.status.code()
        ));
        (out.status.code(), text)
    }

    /// Runs `args` and requires exit 0.
    async fn ops_ok(&self, args: &[&str]) -> String {
        let (code, out) = self.ops(args).await;
        assert_eq!(
            code,
            Some(0),
            "strangler-ops {args:?} failed:\n{out}\n{}",
            self.logs()
        );
        out
    }

    async fn scrape(&self) -> strangler_ops::exposition::Scrape {
        let url = self.metrics_url();
        tokio::task::spawn_blocking(move || strangler_ops::source::scrape(&url))
            .await
            .unwrap()
            .expect("scrape /metrics")
    }

    /// Requests of the three resources' routes the proxy sent to the monolith.
    async fn monolith_requests(&self) -> f64 {
        self.scrape()
            .await
            .named(names::REQUESTS)
            .filter(|s| {
                ["users", "threads", "posts"].contains(&s.label("route"))
                    && s.label("backend") == "monolith"
            })
            .map(|s| s.value)
            .sum()
    }

    /// Requests held behind `route`'s write fence since the proxy started.
    async fn held(&self, route: &str) -> f64 {
        let count = format!("{}_count", names::HOLD_DURATION);
        self.scrape()
            .await
            .named(&count)
            .filter(|s| s.label("route") == route)
            .map(|s| s.value)
            .sum()
    }

    /// Runs `cutover NAME EXTRA…`, requires exit 0; returns the longest hold it reported and
    /// the writes held during this cutover alone (the proxy's hold histogram only grows).
    async fn cutover(&self, name: &str, extra: &[&str]) -> (String, String, f64) {
        let before = self.held(name).await;
        let mut args = vec!["cutover", name];
        args.extend_from_slice(extra);
        let out = self.ops_ok(&args).await;
        println!("{out}");
        let held = self.held(name).await - before;
        (args.join(" "), longest_hold(&out), held)
    }
}

/// Polls `check` every 20 ms; fails the test after `limit`.
async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the client load ---------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Reply {
    status: u16,
    backend: String,
    body: Bytes,
}

async fn call(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Reply, String> {
    let mut req = http::Request::builder().method(method).uri(url);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let req = req.body(body).map_err(|e| e.to_string())?;
    let answer = async {
        let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = res.status().as_u16();
        let backend = res
            .headers()
            .get("x-strangler-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            backend,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
}

/// What one load task saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged creations: (id, the unique username, title or text).
    users: Vec<(i64, String)>,
    threads: Vec<(i64, String)>,
    posts: Vec<(i64, String)>,
    /// Posts deleted with 204.
    deleted: Vec<i64>,
    /// Every failed request, described.
    failures: Vec<String>,
    /// Answered requests by (method and resource, backend).
    by_backend: BTreeMap<(String, String), u64>,
    reads: u64,
    writes: u64,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.users.extend(other.users);
        self.threads.extend(other.threads);
        self.posts.extend(other.posts);
        self.deleted.extend(other.deleted);
        self.failures.extend(other.failures);
        for (k, n) in other.by_backend {
            *self.by_backend.entry(k).or_default() += n;
        }
        self.reads += other.reads;
        self.writes += other.writes;
    }

    fn count(&mut self, what: &str, reply: &Reply) {
        *self
            .by_backend
            .entry((what.to_string(), reply.backend.clone()))
            .or_default() += 1;
    }
}

/// The newest acknowledged id of each resource, for readers to ask about.
#[derive(Default)]
struct Latest {
    users: AtomicI64,
    threads: AtomicI64,
    posts: AtomicI64,
}

struct Load {
    stop: Arc<AtomicBool>,
    /// Acknowledged writes so far, for the migration to wait on.
    writes: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Load {
    fn start(proxy: std::net::SocketAddr, started: Instant) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let latest = Arc::new(Latest::default());
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let base = format!("http://{proxy}");
        let mut tasks = Vec::new();
        for t in 0..WRITERS {
            let w = Writer {
                t,
                client: client.clone(),
                base: base.clone(),
                started,
                latest: latest.clone(),
                acked: writes.clone(),
            };
            tasks.push(tokio::spawn(w.run(stop.clone())));
        }
        for t in 0..READERS {
            let r = Reader {
                t,
                client: client.clone(),
                base: base.clone(),
                started,
                latest: latest.clone(),
            };
            tasks.push(tokio::spawn(r.run(stop.clone())));
        }
        Load {
            stop,
            writes,
            tasks,
        }
    }

    /// Waits until the load acknowledged `n` more writes.
    async fn more_writes(&self, n: u64) {
        let from = self.writes.load(Ordering::SeqCst);
        let writes = self.writes.clone();
        wait_until(
            &format!("{n} more acknowledged writes"),
            Duration::from_secs(15),
            || writes.load(Ordering::SeqCst) >= from + n,
        )
        .await;
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Seen::default();
        for t in self.tasks {
            all.merge(t.await.expect("load task"));
        }
        all
    }
}

struct Writer {
    t: usize,
    client: HttpClient,
    base: String,
    started: Instant,
    latest: Arc<Latest>,
    acked: Arc<AtomicU64>,
}

impl Writer {
    fn fail(&self, seen: &mut Seen, what: String) {
        seen.failures.push(format!(
            "[{:6.2}s] writer {}: {what}",
            self.started.elapsed().as_secs_f64(),
            self.t
        ));
    }

    /// POSTs `body` to `/api/RESOURCE`; the new id on 201.
    async fn create(&self, seen: &mut Seen, resource: &str, body: Value) -> Option<i64> {
        let url = format!("{}/api/{resource}", self.base);
        let sent = body.to_string();
        match call(&self.client, http::Method::POST, &url, Some(body)).await {
            Ok(reply) if reply.status == 201 => {
                seen.count(&format!("POST {resource}"), &reply);
                let id = serde_json::from_slice::<Value>(&reply.body)
                    .ok()
                    .and_then(|v| v["id"].as_i64());
                match id {
                    Some(id) => {
                        seen.writes += 1;
                        self.acked.fetch_add(1, Ordering::SeqCst);
                        Some(id)
                    }
                    None => {
                        self.fail(
                            seen,
                            format!(
                                "POST /api/{resource} {sent}: 201 from {} without an id: {:?}",
                                reply.backend, reply.body
                            ),
                        );
                        None
                    }
                }
            }
            Ok(reply) => {
                seen.count(&format!("POST {resource}"), &reply);
                self.fail(
                    seen,
                    format!(
                        "POST /api/{resource} {sent}: {} from {:?}: {}",
                        reply.status,
                        reply.backend,
                        String::from_utf8_lossy(&reply.body)
                    ),
                );
                None
            }
            Err(e) => {
                self.fail(seen, format!("POST /api/{resource} {sent}: {e}"));
                None
            }
        }
    }

    async fn delete_post(&self, seen: &mut Seen, id: i64) {
        let url = format!("{}/api/posts/{id}", self.base);
        match call(&self.client, http::Method::DELETE, &url, None).await {
            Ok(reply) if reply.status == 204 => {
                seen.count("DELETE posts", &reply);
                seen.writes += 1;
                self.acked.fetch_add(1, Ordering::SeqCst);
                seen.deleted.push(id);
            }
            Ok(reply) => {
                seen.count("DELETE posts", &reply);
                self.fail(
                    seen,
                    format!(
                        "DELETE /api/posts/{id} (created by this client): {} from {:?}: {}",
                        reply.status,
                        reply.backend,
                        String::from_utf8_lossy(&reply.body)
                    ),
                );
            }
            Err(e) => self.fail(seen, format!("DELETE /api/posts/{id}: {e}")),
        }
    }

    async fn run(self, stop: Arc<AtomicBool>) -> Seen {
        let mut seen = Seen::default();
        let deadline = Instant::now() + LOAD_LIMIT;
        let mut tick = tokio::time::interval(WRITE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let t = self.t as i64;
        // Seeded rows until this client has its own.
        let mut user = 1 + t % 4;
        let mut thread = 1 + t % 3;
        let mut mine: Vec<i64> = Vec::new();
        let mut i: i64 = 0;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            tick.tick().await;
            i += 1;
            let tag = format!("c{t}-{i}");
            match i % 5 {
                0 => {
                    let username = format!("user-{tag}");
                    let body = json!({"username": username, "name": "Load", "bio": "writes"});
                    if let Some(id) = self.create(&mut seen, "users", body).await {
                        seen.users.push((id, username));
                        self.latest.users.store(id, Ordering::SeqCst);
                        user = id;
                    }
                }
                // By the user this client created an instant before.
                1 => {
                    let title = format!("thread-{tag}");
                    let body = json!({"title": title, "createdBy": user});
                    if let Some(id) = self.create(&mut seen, "threads", body).await {
                        seen.threads.push((id, title));
                        self.latest.threads.store(id, Ordering::SeqCst);
                        thread = id;
                    }
                }
                4 if mine.len() > 3 => {
                    let id = mine.remove(0);
                    self.delete_post(&mut seen, id).await;
                }
                n => {
                    let text = format!("post-{tag}");
                    // Alternately this client's newest rows and seeded ones.
                    let (th, us) = if n == 2 {
                        (thread, user)
                    } else {
                        (1 + i % 3, 1 + i % 4)
                    };
                    let body = json!({"thread": th, "text": text, "user": us});
                    if let Some(id) = self.create(&mut seen, "posts", body).await {
                        seen.posts.push((id, text));
                        self.latest.posts.store(id, Ordering::SeqCst);
                        mine.push(id);
                    }
                }
            }
        }
        seen
    }
}

struct Reader {
    t: usize,
    client: HttpClient,
    base: String,
    started: Instant,
    latest: Arc<Latest>,
}

impl Reader {
    async fn run(self, stop: Arc<AtomicBool>) -> Seen {
        let mut seen = Seen::default();
        let deadline = Instant::now() + LOAD_LIMIT;
        let mut tick = tokio::time::interval(READ_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = self.t as i64;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            tick.tick().await;
            i += 1;
            let (u, th, p) = (
                self.latest.users.load(Ordering::SeqCst).max(1),
                self.latest.threads.load(Ordering::SeqCst).max(1),
                self.latest.posts.load(Ordering::SeqCst).max(1),
            );
            let (method, path, resource) = match i % 10 {
                0 => (http::Method::GET, "/api/users".to_string(), "users"),
                1 => (http::Method::GET, "/api/threads".to_string(), "threads"),
                2 => (http::Method::GET, "/api/posts".to_string(), "posts"),
                3 => (
                    http::Method::GET,
                    format!("/api/users/{}", 1 + i % 4),
                    "users",
                ),
                4 => (http::Method::GET, format!("/api/users/{u}"), "users"),
                5 => (http::Method::GET, format!("/api/threads/{th}"), "threads"),
                6 => (
                    http::Method::GET,
                    format!("/api/posts/in-thread/{th}"),
                    "posts",
                ),
                7 => (
                    http::Method::GET,
                    format!("/api/posts/by-user/{u}"),
                    "posts",
                ),
                8 => (
                    http::Method::HEAD,
                    format!("/api/threads/{}", 1 + i % 3),
                    "threads",
                ),
                _ => (
                    http::Method::GET,
                    format!("/api/posts/in-thread/{}", 1 + p % 3),
                    "posts",
                ),
            };
            let url = format!("{}{path}", self.base);
            let what = format!("{method} {path}");
            match call(&self.client, method.clone(), &url, None).await {
                Ok(reply) => {
                    seen.count(&format!("{method} {resource}"), &reply);
                    let json_ok = method == http::Method::HEAD
                        || serde_json::from_slice::<Value>(&reply.body).is_ok();
                    let ok = match reply.status {
                        200 => json_ok,
                        204 | 404 => true,
                        _ => false,
                    };
                    if ok {
                        seen.reads += 1;
                    } else {
                        seen.failures.push(format!(
                            "[{:6.2}s] reader {}: {what}: {} from {:?}: {}",
                            self.started.elapsed().as_secs_f64(),
                            self.t,
                            reply.status,
                            reply.backend,
                            String::from_utf8_lossy(&reply.body)
                                .chars()
                                .take(300)
                                .collect::<String>()
                        ));
                    }
                }
                Err(e) => seen.failures.push(format!(
                    "[{:6.2}s] reader {}: {what}: {e}",
                    self.started.elapsed().as_secs_f64(),
                    self.t
                )),
            }
        }
        seen
    }
}

/// Starts `r`'s follower, shadows its reads, then moves its reads to the service, with writes
/// acknowledged between every step.
async fn prepare(s: &mut Stack, load: &Load, r: Resource) {
    let name = r.name();
    s.start_follower(r).await;
    load.more_writes(WRITES_PER_STEP).await;
    s.ops_ok(&[
        "shift",
        name,
        "0",
        "--shadow",
        "on",
        "--methods",
        "GET,HEAD",
    ])
    .await;
    load.more_writes(WRITES_PER_STEP).await;
    s.ops_ok(&["shift", name, "100", "--methods", "GET,HEAD"])
        .await;
    load.more_writes(WRITES_PER_STEP).await;
}

// ---- reading the databases and the cutover output ----------------------------------------

/// The integers of every row of `sql`'s first `n` columns.
fn ints(db: &mut OpsDb, sql: &str, params: &[strangler_ops::db::Value]) -> Vec<Vec<i64>> {
    tokio::task::block_in_place(|| db.query(sql, params))
        .unwrap()
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| match v {
                    strangler_ops::db::Value::Integer(i) => i,
                    other => panic!("not an integer: {other:?}"),
                })
                .collect()
        })
        .collect()
}

/// Ids of the rows whose `column` is `value`.
fn ids_where(db: &mut OpsDb, table: &str, column: &str, value: &str) -> Vec<i64> {
    ints(
        db,
        &format!("SELECT id FROM {table} WHERE {column} = ?1 ORDER BY id"),
        &[strangler_ops::db::Value::Text(value.to_string())],
    )
    .into_iter()
    .map(|r| r[0])
    .collect()
}

fn all_ids(db: &mut OpsDb, table: &str) -> HashSet<i64> {
    ints(db, &format!("SELECT id FROM {table}"), &[])
        .into_iter()
        .map(|r| r[0])
        .collect()
}

/// The acknowledged rows of one resource missing from or doubled in `table`.
fn check_rows(
    db: &mut OpsDb,
    table: &str,
    column: &str,
    rows: &[(i64, String)],
    deleted: &HashSet<i64>,
    problems: &mut Vec<String>,
) {
    for (id, value) in rows {
        let found = ids_where(db, table, column, value);
        let expected = if deleted.contains(id) {
            vec![]
        } else {
            vec![*id]
        };
        if found != expected {
            problems.push(format!(
                "{table} {column} = {value:?} (acknowledged with id {id}{}): found ids {found:?}",
                if deleted.contains(id) {
                    ", then deleted"
                } else {
                    ""
                }
            ));
        }
    }
}

/// "≤ 0.25s (12 writes held)" from a cutover's output.
fn longest_hold(out: &str) -> String {
    out.lines()
        .find_map(|l| {
            l.split_once("longest hold a client saw: ")
                .map(|(_, h)| h.trim())
        })
        .unwrap_or_else(|| panic!("no longest hold in the cutover's output:\n{out}"))
        .to_string()
}

// ---- the test ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_resource_migrates_to_its_service_under_load_without_a_failed_request_or_lost_write()
{
    migrate_everything(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgresql_every_resource_migrates_under_load_without_a_failed_request_or_lost_write() {
    migrate_everything(Engine::Postgres).await;
}

async fn migrate_everything(engine: Engine) {
    let mut s = stack(engine).await;
    let load = Load::start(s.proxy.public, s.started);
    load.more_writes(WRITES_PER_STEP).await;
    s.say("load running");

    let mut holds: Vec<(String, String, f64)> = Vec::new();
    let mut prepared = Vec::new();
    for r in Resource::ALL {
        let name = r.name();
        if !prepared.contains(&r) {
            prepare(&mut s, &load, r).await;
            prepared.push(r);
        }

        holds.push(s.cutover(name, &[]).await);
        assert_eq!(s.state(r).direction, Direction::Reverse);
        assert_eq!(s.state(r).stage, SyncStage::WritesSwitched);
        load.more_writes(WRITES_PER_STEP).await;

        if r == Resource::Users {
            holds.push(s.cutover(name, &["--reverse"]).await);
            assert_eq!(s.state(r).direction, Direction::Forward);
            assert_eq!(s.state(r).stage, SyncStage::Reversed);
            load.more_writes(WRITES_PER_STEP).await;

            // Threads refer to users; with users' reads on its service and its writes back on
            // the monolith, a threads service taking writes would race the forward sync.
            prepare(&mut s, &load, Resource::Threads).await;
            prepared.push(Resource::Threads);
            let (code, out) = s.ops(&["cutover", "threads"]).await;
            assert_eq!(code, Some(1), "{out}");
            assert!(out.contains("Cut users over first"), "{out}");
            assert_eq!(s.state(Resource::Threads).direction, Direction::Forward);

            holds.push(s.cutover(name, &[]).await);
            assert_eq!(s.state(r).direction, Direction::Reverse);
            assert_eq!(s.state(r).stage, SyncStage::WritesSwitched);
            load.more_writes(WRITES_PER_STEP).await;
        }
        if r == Resource::Threads {
            // And the other way round: users' writes cannot go back while threads' are on
            // their service.
            let (code, out) = s.ops(&["cutover", "users", "--reverse"]).await;
            assert_eq!(code, Some(1), "{out}");
            assert!(out.contains("Switch threads back first"), "{out}");
            assert_eq!(s.state(Resource::Users).direction, Direction::Reverse);
        }
    }

    // Every resource's writes are on its service, so none is still written on the monolith
    // and referred to: any order is accepted; this one completes the referred-to first.
    for r in Resource::ALL {
        let out = s.ops_ok(&["complete", r.name()]).await;
        println!("{out}");
        assert!(out.contains("is complete"), "{out}");
        assert_eq!(s.state(r).stage, SyncStage::Complete);
        load.more_writes(WRITES_PER_STEP).await;
    }

    // The followers end by themselves once their migration is complete.
    let mut exits = Vec::new();
    for (r, child) in &mut s.followers {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the follower of {} did not exit after complete",
                r.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        exits.push((*r, status));
    }
    for (r, status) in exits {
        assert!(
            status.success(),
            "follower of {}: {status}\n{}",
            r.name(),
            s.logs()
        );
    }
    s.say("every follower exited 0");
    if s.engine == Engine::Postgres {
        for r in Resource::ALL {
            let log = std::fs::read_to_string(s.follower_log(r)).unwrap();
            assert!(
                log.contains(&format!(
                    "writes of {} switched: subscription strangler_{} removed",
                    r.name(),
                    r.name()
                )),
                "{log}"
            );
        }
    }

    // Complete means final: no script sends a resource back to the monolith's stale copy.
    let before = std::fs::read_to_string(&s.config).unwrap();
    for args in [["shift", "users", "0"].as_slice(), &["rollback", "posts"]] {
        let (code, out) = s.ops(args).await;
        assert_ne!(code, Some(0), "{args:?} was accepted after complete: {out}");
        assert!(out.contains("is complete"), "{out}");
    }
    assert_eq!(std::fs::read_to_string(&s.config).unwrap(), before);

    // After completion the monolith serves none of the three routes.
    let before = s.monolith_requests().await;
    load.more_writes(3 * WRITES_PER_STEP).await;
    let seen = load.finish().await;
    let after = s.monolith_requests().await;
    s.say(&format!(
        "load stopped: {} reads, {} writes ({} users, {} threads, {} posts, {} deletes), {} failures",
        seen.reads,
        seen.writes,
        seen.users.len(),
        seen.threads.len(),
        seen.posts.len(),
        seen.deleted.len(),
        seen.failures.len()
    ));
    for ((what, backend), n) in &seen.by_backend {
        println!("  {what:<14} served by {backend:<9} {n}");
    }
    // What each cutover reported, and beside it the growth of the proxy's hold histogram
    // across that cutover as this test measured it.
    for (n, (step, hold, held)) in holds.iter().enumerate() {
        println!(
            "{}. {step}: longest hold a client saw: {hold}; writes held during it: {held}",
            n + 1
        );
    }

    let logs = s.logs();
    assert!(
        seen.failures.is_empty(),
        "{} client request(s) failed:\n{}\n{logs}",
        seen.failures.len(),
        seen.failures.join("\n")
    );
    assert_eq!(
        before, after,
        "the monolith served users/threads/posts requests after every migration was complete"
    );

    // Every acknowledged write exactly once in its owner's database; deleted posts gone.
    let mut users = s.service_db(Resource::Users);
    let mut threads = s.service_db(Resource::Threads);
    let mut posts = s.service_db(Resource::Posts);
    let deleted: HashSet<i64> = seen.deleted.iter().copied().collect();
    let none = HashSet::new();
    let mut problems = Vec::new();
    check_rows(
        &mut users,
        "users",
        "username",
        &seen.users,
        &none,
        &mut problems,
    );
    check_rows(
        &mut threads,
        "threads",
        "title",
        &seen.threads,
        &none,
        &mut problems,
    );
    check_rows(
        &mut posts,
        "posts",
        "text",
        &seen.posts,
        &deleted,
        &mut problems,
    );
    for id in &deleted {
        if !ints(
            &mut posts,
            "SELECT id FROM posts WHERE id = ?1",
            &[strangler_ops::db::Value::Integer(*id)],
        )
        .is_empty()
        {
            problems.push(format!(
                "post {id} was deleted (204) but is still in the posts service's database"
            ));
        }
    }
    // Every post refers to a user and a thread that exist where they are owned now.
    let user_ids = all_ids(&mut users, "users");
    let thread_ids = all_ids(&mut threads, "threads");
    for row in ints(&mut posts, "SELECT id, thread, \"user\" FROM posts", &[]) {
        let (id, thread, user) = (&row[0], &row[1], &row[2]);
        if !thread_ids.contains(thread) {
            problems.push(format!(
                "post {id}: thread {thread} is not in the threads service's database"
            ));
        }
        if !user_ids.contains(user) {
            problems.push(format!(
                "post {id}: user {user} is not in the users service's database"
            ));
        }
    }
    for row in ints(&mut threads, "SELECT id, created_by FROM threads", &[]) {
        let (id, user) = (&row[0], &row[1]);
        if !user_ids.contains(user) {
            problems.push(format!(
                "thread {id}: createdBy {user} is not in the users service's database"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in the services' databases:\n{}\n{logs}",
        problems.len(),
        problems.join("\n")
    );
    // Closing a PostgreSQL connection blocks too.
    tokio::task::block_in_place(move || drop((users, threads, posts)));
    s.say("done");
}
