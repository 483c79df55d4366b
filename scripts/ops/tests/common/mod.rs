//! Helpers shared by the integration tests: scratch directories, running the binary, and
//! generated monolith databases.

#![allow(dead_code)]

pub mod fake;
pub mod stack;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

/// The binary under test.
pub fn ops() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strangler-ops"));
    cmd.env_remove("RUST_LOG");
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
