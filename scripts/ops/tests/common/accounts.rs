//! The `accounts` table the PostgreSQL tests and `examples/migration_bench.rs` move: text,
//! integer, boolean, timestamp, real and nullable columns, keyed by `account_no`.

use std::path::Path;

/// The table in SQLite.
pub const SQLITE_ACCOUNTS: &str = "CREATE TABLE accounts (
    account_no INTEGER PRIMARY KEY,
    email TEXT NOT NULL,
    visits INTEGER NOT NULL DEFAULT 0,
    active BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    balance REAL,
    nickname TEXT
);";

/// The same table in PostgreSQL.
pub const PG_ACCOUNTS: &str = "CREATE TABLE accounts (
    account_no BIGINT PRIMARY KEY,
    email VARCHAR(200) NOT NULL,
    visits INTEGER NOT NULL DEFAULT 0,
    active BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    balance DOUBLE PRECISION,
    nickname TEXT
);";

/// Creates `accounts` in the SQLite file `path` (WAL mode) with `n` rows keyed 3, 6, 9, …:
/// NULLs, quotes, tabs, newlines, backslashes, empty and non-ASCII text included.
pub fn fill_sqlite(path: &Path, n: i64) -> rusqlite::Result<()> {
    let c = rusqlite::Connection::open(path)?;
    c.execute_batch(SQLITE_ACCOUNTS)?;
    let _mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    let tx = c.unchecked_transaction()?;
    {
        let mut ins = tx.prepare("INSERT INTO accounts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
        for i in 1..=n {
            ins.execute(rusqlite::params![
                i * 3,
                format!("user{i}@example.org"),
                i % 1000,
                i % 2 == 0,
                format!(
                    "2024-03-{:02} 12:{:02}:{:02}",
                    i % 28 + 1,
                    i % 60,
                    (i * 7) % 60
                ),
                (i % 5 != 0).then_some(i as f64 / 4.0),
                match i % 4 {
                    0 => None,
                    1 => Some(format!("nick {i}")),
                    2 => Some(format!("tab\there, new\nline, back\\slash, 'quote' é {i}")),
                    _ => Some(String::new()),
                },
            ])?;
        }
    }
    tx.commit()
}
