//! A table the tutorial does not have, moved from its `migrations.toml` declaration alone:
//! `accounts` (text, integer, boolean, timestamp and nullable columns, keyed by `account_no`,
//! one column renamed and one left out) is copied, followed, verified, cut over behind a real
//! proxy, followed back and completed — no code knows its columns.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use axum::Router;
use common::Scratch;
use common::stack::{ops, serve};
use rusqlite::Connection;
use strangler_ops::migrations::Migrations;
use strangler_ops::sync::{self, Direction, SyncStage};

const MONOLITH_SCHEMA: &str = "CREATE TABLE accounts (
    account_no INTEGER PRIMARY KEY,
    email TEXT NOT NULL,
    visits INTEGER NOT NULL DEFAULT 0,
    active BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    nickname TEXT,
    internal_note TEXT
);";

/// The service's own schema: `email` is called `email_address`, and `internal_note` is not
/// carried over.
const SERVICE_SCHEMA: &str = "CREATE TABLE members (
    account_no INTEGER PRIMARY KEY,
    email_address VARCHAR(200) NOT NULL,
    visits BIGINT NOT NULL DEFAULT 0,
    active BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    nickname TEXT
);";

const DECLARATION: &str = "[resources.accounts]
route = \"accounts\"
key = \"account_no\"
source = { url = \"sqlite:monolith.db\", table = \"accounts\" }
target = { url = \"sqlite:ledger.db\", table = \"members\" }
exclude = [\"internal_note\"]
rename = { email = \"email_address\" }
";

type Row = (i64, String, i64, bool, String, Option<String>);

fn rows(db: &Path, table: &str, email: &str) -> Vec<Row> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT account_no, {email}, visits, active, created_at, nickname FROM {table} \
             ORDER BY account_no"
        ))
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

struct Setup {
    _dir: Scratch,
    data: PathBuf,
    config: String,
    admin: String,
    follower: Option<Child>,
    _proxy: strangler_proxy::server::Running,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut f) = self.follower.take() {
            let _ = f.kill();
            let _ = f.wait();
        }
    }
}

impl Setup {
    fn monolith(&self) -> Vec<Row> {
        rows(&self.data.join("monolith.db"), "accounts", "email")
    }

    fn service(&self) -> Vec<Row> {
        rows(&self.data.join("ledger.db"), "members", "email_address")
    }

    async fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut all = args.to_vec();
        let data = self.data.display().to_string();
        all.extend_from_slice(&["--config", &self.config, "--data-dir", &data]);
        ops(&all).await
    }

    fn state(&self) -> Option<sync::SyncState> {
        let m =
            Migrations::load(&Path::new(&self.config).with_file_name("migrations.toml")).unwrap();
        sync::read_state(&self.data, m.get("accounts").unwrap()).unwrap()
    }

    /// Waits (polling, 20 s at most) until both sides hold the same rows.
    fn converged(&self, what: &str) -> Vec<Row> {
        common::eventually(Duration::from_secs(20), what, || {
            let m = self.monolith();
            (m == self.service()).then_some(m)
        })
    }
}

async fn setup(name: &str) -> Setup {
    let dir = Scratch::new(name);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let m = Connection::open(data.join("monolith.db")).unwrap();
    m.execute_batch(MONOLITH_SCHEMA).unwrap();
    for n in 1..=300i64 {
        m.execute(
            "INSERT INTO accounts VALUES (?1 * 7, ?2, ?3, ?4, ?5, ?6, 'secret')",
            rusqlite::params![
                n,
                format!("a{n}@example.org"),
                n * 3,
                n % 2 == 0,
                format!("2024-01-{:02} 10:00:{:02}", n % 28 + 1, n % 60),
                (n % 3 != 0).then(|| format!("nick{n}")),
            ],
        )
        .unwrap();
    }
    drop(m);
    Connection::open(data.join("ledger.db"))
        .unwrap()
        .execute_batch(SERVICE_SCHEMA)
        .unwrap();
    // Both backends answer anything; the data tools only read the proxy's metrics.
    let backend = serve(Router::new().fallback(|| async { "ok" })).await;
    let config = dir.join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndefault = \"monolith\"\n\
             access_log = false\nhold_timeout = \"10s\"\n\n\
             [services.monolith]\nurl = \"http://{backend}\"\n\n\
             [services.accounts]\nurl = \"http://{backend}\"\n\n\
             [[routes]]\nname = \"accounts\"\nprefix = \"/api/accounts\"\nservice = \"accounts\"\n\
             weight = 100\nmethods = [\"GET\", \"HEAD\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("migrations.toml"), DECLARATION).unwrap();
    let proxy = strangler_proxy::server::start(&config).await.unwrap();
    let admin = format!("http://{}/metrics", proxy.admin);
    Setup {
        data,
        config: config.display().to_string(),
        admin,
        follower: None,
        _proxy: proxy,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declared_table_is_copied_followed_verified_cut_over_and_completed() {
    let mut s = setup("declared").await;
    let data = s.data.display().to_string();

    // Copy and verify from the declaration alone.
    let (code, out) = s.run(&["migrate-data", "accounts"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("300 rows read, 300 written"), "{out}");
    assert!(out.contains("verification OK: 300 rows"), "{out}");
    let copied = s.service();
    assert_eq!(copied, s.monolith());
    assert_eq!(
        copied[0],
        (
            7,
            "a1@example.org".into(),
            3,
            false,
            "2024-01-02 10:00:01".into(),
            Some("nick1".into())
        )
    );
    assert_eq!(copied[2].5, None, "NULL stays NULL");

    // Follow: inserts, updates (NULL both ways) and deletes reach the service.
    let follower = std::process::Command::new(env!("CARGO_BIN_EXE_strangler-ops"))
        .args(["migrate-data", "accounts", "--follow", "--poll", "5ms"])
        .args(["--data-dir", &data, "--config", &s.config])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    s.follower = Some(follower);
    common::eventually(Duration::from_secs(20), "the follower to follow", || {
        s.state().filter(|st| {
            st.stage == SyncStage::Following
                && st.follower_alive()
                && st.last_verified_ok == Some(true)
        })
    });
    let m = Connection::open(s.data.join("monolith.db")).unwrap();
    m.execute_batch(
        "INSERT INTO accounts VALUES (5000, 'new@example.org', 0, 1, '2025-06-01 08:00:00', NULL, 'x');
         UPDATE accounts SET nickname = NULL, visits = visits + 1 WHERE account_no = 7;
         UPDATE accounts SET nickname = 'was null', active = 1 WHERE account_no = 21;
         UPDATE accounts SET internal_note = 'not carried' WHERE account_no = 14;
         DELETE FROM accounts WHERE account_no = 28;",
    )
    .unwrap();
    let now = s.converged("forward changes to reach the service");
    assert_eq!(now.len(), 300);
    assert!(now.iter().any(|r| r.0 == 5000 && r.5.is_none()));
    assert!(now.iter().any(|r| r.0 == 7 && r.2 == 4 && r.5.is_none()));
    assert!(
        now.iter()
            .any(|r| r.0 == 21 && r.3 && r.5.as_deref() == Some("was null"))
    );
    assert!(!now.iter().any(|r| r.0 == 28));
    let (code, out) = s.run(&["migrate-data", "accounts", "--verify-only"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("verification OK: 300 rows"), "{out}");

    let ledger = Connection::open(s.data.join("ledger.db")).unwrap();

    // Cut over behind the proxy's fence: writes move to the service.
    let (code, out) = s.run(&["cutover", "accounts", "--metrics", &s.admin]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(s.state().unwrap().direction, Direction::Reverse);

    // Writes on the service reach the monolith (renamed column mapped back).
    ledger
        .execute_batch(
            "INSERT INTO members VALUES (6000, 'svc@example.org', 1, 0, '2025-07-01 09:00:00', 'svc');
             UPDATE members SET email_address = 'changed@example.org' WHERE account_no = 35;
             DELETE FROM members WHERE account_no = 42;",
        )
        .unwrap();
    let back = common::eventually(Duration::from_secs(20), "reverse changes", || {
        let m = s.monolith();
        // The id fence row sits in the monolith's table while the service takes writes.
        let without_fence: Vec<Row> = m.into_iter().filter(|r| r.0 < 1_000_000_000).collect();
        (without_fence == s.service()).then_some(without_fence)
    });
    assert!(back.iter().any(|r| r.0 == 6000 && r.1 == "svc@example.org"));
    assert!(
        back.iter()
            .any(|r| r.0 == 35 && r.1 == "changed@example.org")
    );
    assert!(!back.iter().any(|r| r.0 == 42));
    let note: String = m
        .query_row(
            "SELECT internal_note FROM accounts WHERE account_no = 35",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(note, "secret", "an excluded column is left as it was");

    // Complete: capture removed on both sides, the follower exits 0.
    let (code, out) = s.run(&["complete", "accounts"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("the migration of accounts is complete"),
        "{out}"
    );
    let mut follower = s.follower.take().unwrap();
    let status = common::eventually(Duration::from_secs(20), "the follower to exit", || {
        follower.try_wait().unwrap()
    });
    assert!(status.success());
    assert_eq!(s.state().unwrap().stage, SyncStage::Complete);
    let triggers: i64 = m
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 0);
}

#[tokio::test]
async fn a_declaration_that_does_not_match_the_tables_moves_no_row() {
    let s = setup("declared-mismatch").await;
    // The service's table lacks `nickname`, and its `visits` holds text.
    let ledger = Connection::open(s.data.join("ledger.db")).unwrap();
    ledger
        .execute_batch(
            "DROP TABLE members;
             CREATE TABLE members (account_no INTEGER PRIMARY KEY, email_address TEXT NOT NULL,
                 visits TEXT, active BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL);",
        )
        .unwrap();
    let (code, out) = s.run(&["migrate-data", "accounts"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("resource accounts: the tables do not match, nothing was copied"),
        "{out}"
    );
    assert!(
        out.contains("table members has no column \"nickname\""),
        "{out}"
    );
    assert!(
        out.contains("column \"visits\" is \"TEXT\" (text) but"),
        "{out}"
    );
    let n: i64 = ledger
        .query_row("SELECT count(*) FROM members", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);

    // A key that is not the primary key.
    ledger
        .execute_batch(
            "DROP TABLE members;
             CREATE TABLE members (account_no INTEGER, email_address TEXT NOT NULL,
                 visits INTEGER, active BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL,
                 nickname TEXT);",
        )
        .unwrap();
    let (code, out) = s.run(&["migrate-data", "accounts"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "key column \"account_no\" is not the table's primary key (primary key: none)"
        ),
        "{out}"
    );

    // A declaration error names its place.
    std::fs::write(
        Path::new(&s.config).with_file_name("migrations.toml"),
        DECLARATION.replace("sqlite:ledger.db", "ledger.db"),
    )
    .unwrap();
    let (code, out) = s.run(&["migrate-data", "accounts"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("migrations.toml:5:18: \"ledger.db\" is not a database URL"),
        "{out}"
    );
}
