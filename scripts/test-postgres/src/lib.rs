//! A throwaway PostgreSQL cluster for a test: `initdb` into a scratch directory and `postgres`
//! on a free port of 127.0.0.1 (`wal_level = logical`), stopped by its PID and removed when the
//! [`Cluster`] is dropped.
//!
//! `initdb` refuses to run as root, so as root both run as `nobody` (through `setpriv`, which
//! execs: the PID we hold is the postmaster's), in a directory owned by it. Without PostgreSQL's
//! server binaries the test fails saying how to install them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `postgresql` package puts the server binaries; `STRANGLER_PG_BIN` overrides.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = match std::env::var_os("STRANGLER_PG_BIN") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .collect(),
    };
    found.retain(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file());
    // The newest version: directories are named by major version.
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found (no initdb and postgres in \
             /usr/lib/postgresql/*/bin, or in $STRANGLER_PG_BIN when set): install them with `apt-get install -y postgresql` \
             (Debian/Ubuntu; .ci/run does this), or point STRANGLER_PG_BIN at the directory \
             holding initdb and postgres. These tests start a throwaway cluster on 127.0.0.1."
        )
    })
}

/// A running cluster.
pub struct Cluster {
    postmaster: Child,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// `nobody`'s uid and gid, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody")).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .expect("a `nobody` user to run PostgreSQL as (initdb refuses root)")
}

/// `program` run as `nobody` when we are root, else as ourselves.
fn command(program: &Path) -> Command {
    if rustix::process::geteuid().is_root() {
        let (uid, gid) = nobody();
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_string(),
            "--".to_string(),
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Cluster {
    /// Initializes and starts a cluster (fsync off: nothing here outlives the test).
    pub fn start() -> Cluster {
        Cluster::start_with(&[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ])
    }

    /// As [`Cluster::start`] with these `-c` settings besides `wal_level = logical`.
    pub fn start_with(settings: &[&str]) -> Cluster {
        let bin = bin_dir();
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "strangler-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster directory");
        if rustix::process::geteuid().is_root() {
            let (uid, gid) = nobody();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown to nobody");
        }
        let data = dir.join("data");
        let out = command(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .current_dir(&dir)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).expect("log file");
        let mut cmd = command(&bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
            ]);
        for s in settings {
            cmd.args(["-c", s]);
        }
        let postmaster = cmd
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let mut cluster = Cluster {
            postmaster,
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if postgres::Client::connect(&cluster.url("postgres"), postgres::NoTls).is_ok() {
                return cluster;
            }
            if let Ok(Some(status)) = cluster.postmaster.try_wait() {
                panic!("postgres exited ({status}): {}", cluster.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 60 s: {}",
                cluster.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection to database `db`.
    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls).expect("connect")
    }

    /// Creates database `name`.
    pub fn create_db(&self, name: &str) {
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (disconnect clients, stop, remove the PID file).
        if let Some(pid) = rustix::process::Pid::from_raw(self.postmaster.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.postmaster.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.postmaster.try_wait() {
            let _ = self.postmaster.kill();
            let _ = self.postmaster.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
