//! Helpers shared by the integration tests: scratch directories, running the binary, and
//! generated monolith databases.

#![allow(dead_code)]

pub mod accounts;
pub mod fake;
pub mod prometheus;
pub mod stack;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A directory removed when dropped.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "strangler-ops-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The shipped `routes.toml`, which most tests start from.
pub const SHIPPED: &str = include_str!("../../../../routes.toml");

/// How every test that runs the binary on files sets up: a scratch directory holding the data
/// (`monolith.db`, the services' databases) and a `routes.toml`.
///
/// ```ignore
/// let t = OpsTest::new("copy").board(50, 40, 3000).start();
/// let out = t.migrate(&["posts", "--batch", "700"]);
/// ```
pub struct OpsTest {
    name: String,
    routes: Option<String>,
    board: Option<(u64, u64, u64)>,
}

impl OpsTest {
    /// A test named `name` (names its directory), with no data and no routes file.
    pub fn new(name: &str) -> OpsTest {
        OpsTest {
            name: name.to_string(),
            routes: None,
            board: None,
        }
    }

    /// A monolith database generated with this many users, threads and posts.
    pub fn board(mut self, users: u64, threads: u64, posts: u64) -> OpsTest {
        self.board = Some((users, threads, posts));
        self
    }

    /// `routes.toml` with this text.
    pub fn routes(mut self, text: &str) -> OpsTest {
        self.routes = Some(text.to_string());
        self
    }

    /// `routes.toml` as shipped.
    pub fn shipped_routes(self) -> OpsTest {
        self.routes(SHIPPED)
    }

    /// Lays the directory out.
    pub fn start(self) -> Ops {
        let dir = Scratch::new(&self.name);
        if let Some((users, threads, posts)) = self.board {
            generate(&dir.path, users, threads, posts);
        }
        let ops = Ops {
            config: dir.join("routes.toml").display().to_string(),
            data: dir.path.display().to_string(),
            dir,
        };
        if let Some(text) = &self.routes {
            ops.write_routes(text);
        }
        ops
    }
}

/// A laid-out [`OpsTest`]: its directory, and the binary run on it.
pub struct Ops {
    pub dir: Scratch,
    /// `DIR/routes.toml`, given to every command as `--config`.
    pub config: String,
    /// The directory, given to `migrate-data` as `--data-dir`.
    pub data: String,
}

impl Ops {
    pub fn path(&self) -> &Path {
        &self.dir.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `routes.toml`.
    pub fn write_routes(&self, text: &str) {
        std::fs::write(&self.config, text).expect("routes.toml");
    }

    /// `args` then `--config DIR/routes.toml`.
    pub fn args(&self, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--config".to_string(), self.config.clone()]);
        all
    }

    /// `migrate-data EXTRA… --data-dir DIR --config DIR/routes.toml`.
    pub fn migrate_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["migrate-data"];
        args.extend_from_slice(extra);
        args.extend(["--data-dir", &self.data]);
        self.args(&args)
    }

    /// Runs `args` on this directory to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        ops()
            .args(self.args(args))
            .output()
            .expect("run strangler-ops")
    }

    /// Runs `migrate-data EXTRA…` on this directory to completion.
    pub fn migrate(&self, extra: &[&str]) -> Output {
        ops()
            .args(self.migrate_args(extra))
            .output()
            .expect("run strangler-ops")
    }

    /// Starts `args` on this directory (see [`Ops::spawn`]).
    pub fn spawn(&self, args: &[&str]) -> (Child, Lines) {
        spawn(self.args(args))
    }

    /// Starts `migrate-data EXTRA…` on this directory, its stdout read line by line.
    pub fn spawn_migrate(&self, extra: &[&str]) -> (Child, Lines) {
        spawn(self.migrate_args(extra))
    }

    /// Runs `args` on this directory without blocking the runtime (for a test whose proxy
    /// runs on it): the exit code and stdout followed by stderr.
    pub async fn run_async(&self, args: &[&str]) -> (Option<i32>, String) {
        run_async(self.args(args)).await
    }

    /// The weight of `route` in the routes file, as the proxy would load it.
    pub fn weight(&self, route: &str) -> u8 {
        weight_in(&self.config, route)
    }

    /// A fake proxy serving this directory's routes file.
    pub fn fake(&self, behaviour: fake::Behaviour) -> fake::FakeProxy {
        fake::FakeProxy::start(self.config.clone().into(), behaviour)
    }
}

/// The weight of `route` in the routes file at `config`, as the proxy would load it.
pub fn weight_in(config: &str, route: &str) -> u8 {
    let loaded = strangler_proxy::config::load(Path::new(config)).expect("valid file");
    loaded
        .config
        .routes
        .iter()
        .find(|r| r.name == route)
        .unwrap_or_else(|| panic!("no route {route:?} in {config}"))
        .weight
}

/// Runs the binary without blocking the runtime: the exit code and stdout followed by stderr.
pub async fn run_async<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strangler-ops"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run strangler-ops");
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// Starts the binary with `args`, stdout piped and read line by line, stderr discarded.
fn spawn(args: Vec<String>) -> (Child, Lines) {
    let mut child = ops()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strangler-ops");
    let lines = Lines::follow(child.stdout.take().expect("stdout"));
    (child, lines)
}

/// The binary under test.
pub fn ops() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strangler-ops"));
    cmd.env_remove("RUST_LOG");
    // An operator's exported declarations must not change what a test moves.
    cmd.env_remove("STRANGLER_MIGRATIONS");
    cmd
}

/// Runs the binary to completion.
pub fn run(args: &[&str]) -> Output {
    ops().args(args).output().expect("run strangler-ops")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fills `DIR/monolith.db` with a generated board.
pub fn generate(dir: &Path, users: u64, threads: u64, posts: u64) {
    monolith::generate::run(&monolith::generate::GenerateArgs {
        db: dir.join("monolith.db"),
        users,
        threads,
        posts,
        seed: 7,
        replace: true,
    })
    .expect("generate");
}

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain connection (no foreign keys, as a client of the file would open it).
pub fn sqlite(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

pub fn count(path: &Path, table: &str) -> i64 {
    sqlite(path)
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

/// A child's stdout, read line by line on a thread.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn follow(stdout: std::process::ChildStdout) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    pub fn saw(&self, needle: &str) -> bool {
        self.seen.iter().any(|l| l.contains(needle))
    }

    pub fn wait_for(&mut self, needle: &str) {
        eventually(Duration::from_secs(60), needle, || {
            while let Ok(line) = self.rx.try_recv() {
                self.seen.push(line);
            }
            self.saw(needle).then_some(())
        });
    }
}

/// The tutorial resource `r` as the shipped migrations.toml declares it.
pub fn declared(r: monolith::legacy::Resource) -> strangler_ops::migrations::Declared {
    strangler_ops::migrations::Migrations::tutorial()
        .get(r.name())
        .expect("the shipped migrations.toml declares the tutorial resources")
        .clone()
}
