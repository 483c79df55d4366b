//! The SQLite database of one process: opening, schema, legacy seed, checksums.
//!
//! One connection sits behind a mutex and every query runs on tokio's blocking pool, so
//! concurrent writers queue instead of failing with `SQLITE_BUSY`, and the async workers never
//! wait on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde::Deserialize;

use crate::legacy::Resource;
use crate::posts::NewPost;
use crate::threads::Thread;
use crate::users::User;
use crate::{posts, threads, users};

/// The original data set (4 users, 3 threads, 6 posts), seeded into a new monolith database.
pub const LEGACY_JSON: &str = include_str!("../legacy-db.json");

/// `PRAGMA user_version` of a database whose schema this crate created.
const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for another process holding the file's write lock
/// (e.g. a migration script copying rows) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a database failure was; always the server's fault (500).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused a statement.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An earlier query panicked while holding the connection.
    #[error("the database connection was poisoned by an earlier panic")]
    Poisoned,
    /// The blocking task running a query was lost.
    #[error("the database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The embedded legacy data set does not parse (a build defect).
    #[error("the embedded legacy data set is invalid: {0}")]
    Legacy(#[from] serde_json::Error),
    /// The database's directory could not be created.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether a newly created database starts with the legacy data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seed {
    /// Seed the owned tables from [`LEGACY_JSON`] (the monolith).
    Legacy,
    /// Leave the tables empty (extracted services: data arrives by migration).
    Empty,
}

/// A shared handle to one process's database.
#[derive(Clone, Debug)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the database file at `path`, with its parent directory, and
    /// creates the tables of `owned`; a new database is seeded as `seed` says.
    pub fn open(path: &Path, owned: &[Resource], seed: Seed) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        // WAL lets a migration script read while this process writes.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Db::prepare(conn, owned, seed)
    }

    /// A private in-memory database (tests, tools).
    pub fn in_memory(owned: &[Resource], seed: Seed) -> Result<Db, DbError> {
        Db::prepare(Connection::open_in_memory()?, owned, seed)
    }

    fn prepare(mut conn: Connection, owned: &[Resource], seed: Seed) -> Result<Db, DbError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        init(&mut conn, owned, seed)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
        T: Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().map_err(|_| DbError::Poisoned)?;
            f(&mut conn).map_err(DbError::from)
        })
        .await?
    }

    /// Runs `f` with the connection on the current thread (command-line tools, tests).
    pub fn blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, DbError> {
        let mut conn = self.conn.lock().map_err(|_| DbError::Poisoned)?;
        f(&mut conn).map_err(DbError::from)
    }
}

/// Creates the schema of `owned` if the database is new, seeding it as `seed` says; an existing
/// database is left as it is, so a restart never duplicates the seed.
pub fn init(conn: &mut Connection, owned: &[Resource], seed: Seed) -> Result<(), DbError> {
    let tx = conn.transaction()?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    create_schema(&tx, owned)?;
    if version == 0 {
        if seed == Seed::Legacy {
            seed_legacy(&tx, owned)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// Creates the tables of `owned` (and their indexes) if they do not exist. Foreign keys are
/// declared only towards tables in the same set: a service cannot constrain data it does not own.
pub fn create_schema(conn: &Connection, owned: &[Resource]) -> rusqlite::Result<()> {
    let owns = |r| owned.contains(&r);
    let refs = |r: Resource| {
        if owns(r) {
            format!(" REFERENCES {}(id)", r.name())
        } else {
            String::new()
        }
    };
    let mut sql = String::new();
    if owns(Resource::Users) {
        sql.push_str(
            "CREATE TABLE IF NOT EXISTS users (
                id INTEGER PRIMARY KEY,
                username TEXT NOT NULL,
                name TEXT NOT NULL,
                bio TEXT NOT NULL
            );",
        );
    }
    if owns(Resource::Threads) {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS threads (
                id INTEGER PRIMARY KEY,
                title TEXT NOT NULL,
                created_by INTEGER NOT NULL{}
            );",
            refs(Resource::Users)
        ));
    }
    if owns(Resource::Posts) {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS posts (
                id INTEGER PRIMARY KEY,
                thread INTEGER NOT NULL{},
                text TEXT NOT NULL,
                user INTEGER NOT NULL{}
            );",
            refs(Resource::Threads),
            refs(Resource::Users)
        ));
        sql.push_str(POST_INDEXES);
    }
    conn.execute_batch(&sql)
}

/// The indexes behind `/api/posts/in-thread/{id}` and `/api/posts/by-user/{id}`.
pub(crate) const POST_INDEXES: &str = "
    CREATE INDEX IF NOT EXISTS posts_by_thread ON posts(thread, id);
    CREATE INDEX IF NOT EXISTS posts_by_user ON posts(user, id);";

/// The legacy data set as the original JSON file holds it (posts without ids).
#[derive(Deserialize)]
struct LegacyData {
    users: Vec<User>,
    threads: Vec<Thread>,
    posts: Vec<NewPost>,
}

/// Inserts the legacy rows of the tables in `owned`, keeping their ids; posts get ids 1..=6 in
/// file order. Tests use it to give a service's database the monolith's fixture rows.
pub fn seed_legacy(conn: &Connection, owned: &[Resource]) -> Result<(), DbError> {
    let data: LegacyData = serde_json::from_str(LEGACY_JSON)?;
    if owned.contains(&Resource::Users) {
        for user in &data.users {
            users::insert_with_id(conn, user)?;
        }
    }
    if owned.contains(&Resource::Threads) {
        for thread in &data.threads {
            threads::insert_with_id(conn, thread)?;
        }
    }
    if owned.contains(&Resource::Posts) {
        for (id, post) in (1..).zip(&data.posts) {
            posts::insert_with_id(conn, &post.with_id(id))?;
        }
    }
    Ok(())
}

/// Row count and content hash of one table, for comparing two copies of a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum {
    /// Number of rows.
    pub rows: u64,
    /// FNV-1a over every column of every row, in id order.
    pub hash: u64,
}

/// Checksums the table of `resource`; equal checksums mean equal rows (ids included).
pub fn checksum(conn: &Connection, resource: Resource) -> rusqlite::Result<Checksum> {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {} ORDER BY id", resource.name()))?;
    let columns = stmt.column_count();
    let mut rows = stmt.query([])?;
    let mut hash = Fnv::new();
    let mut count = 0;
    while let Some(row) = rows.next()? {
        count += 1;
        for i in 0..columns {
            // A type tag and a length keep ("ab","c") and ("a","bc") apart.
            match row.get_ref(i)? {
                ValueRef::Null => hash.write(&[0]),
                ValueRef::Integer(v) => {
                    hash.write(&[1]);
                    hash.write(&v.to_le_bytes());
                }
                ValueRef::Real(v) => {
                    hash.write(&[2]);
                    hash.write(&v.to_le_bytes());
                }
                ValueRef::Text(v) | ValueRef::Blob(v) => {
                    hash.write(&[3]);
                    hash.write(&(v.len() as u64).to_le_bytes());
                    hash.write(v);
                }
            }
        }
    }
    Ok(Checksum {
        rows: count,
        hash: hash.0,
    })
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Whether the row `id` of `resource` exists.
pub fn exists(conn: &Connection, resource: Resource, id: i64) -> rusqlite::Result<bool> {
    let sql = match resource {
        Resource::Users => "SELECT 1 FROM users WHERE id = ?1",
        Resource::Threads => "SELECT 1 FROM threads WHERE id = ?1",
        Resource::Posts => "SELECT 1 FROM posts WHERE id = ?1",
    };
    conn.prepare_cached(sql)?.exists([id])
}

/// Number of rows in the table of `resource`.
pub fn count(conn: &Connection, resource: Resource) -> rusqlite::Result<u64> {
    let sql = format!("SELECT count(*) FROM {}", resource.name());
    let rows: i64 = conn.query_row(&sql, [], |row| row.get(0))?;
    // count(*) is never negative.
    Ok(rows.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_monolith_is_seeded_once() {
        let path = std::env::temp_dir().join(format!(
            "monolith-db-test-{}/nested/board.db",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(path.parent().and_then(Path::parent).expect("dir"));
        for _ in 0..2 {
            let db = Db::open(&path, &Resource::ALL, Seed::Legacy).expect("open");
            let counts = db
                .blocking(|c| {
                    Ok([
                        count(c, Resource::Users)?,
                        count(c, Resource::Threads)?,
                        count(c, Resource::Posts)?,
                    ])
                })
                .expect("count");
            assert_eq!(counts, [4, 3, 6]);
            let mode: String = db
                .blocking(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
                .expect("mode");
            assert_eq!(mode, "wal");
        }
        let _ = std::fs::remove_dir_all(path.parent().and_then(Path::parent).expect("dir"));
    }

    #[test]
    fn a_service_database_holds_only_its_own_empty_table() {
        let db = Db::in_memory(&[Resource::Posts], Seed::Empty).expect("open");
        let tables: Vec<String> = db
            .blocking(|c| {
                let mut stmt =
                    c.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
                stmt.query_map([], |r| r.get(0))?.collect()
            })
            .expect("tables");
        assert_eq!(tables, ["posts"]);
        assert_eq!(
            db.blocking(|c| count(c, Resource::Posts)).expect("count"),
            0
        );
        // No foreign key towards tables it does not own: a post may name any thread.
        db.blocking(|c| {
            c.execute(
                "INSERT INTO posts (thread, text, user) VALUES (99, 'x', 99)",
                [],
            )
        })
        .expect("insert without foreign tables");
    }

    #[test]
    fn the_monolith_enforces_foreign_keys() {
        let db = Db::in_memory(&Resource::ALL, Seed::Legacy).expect("open");
        let err = db
            .blocking(|c| {
                c.execute(
                    "INSERT INTO posts (thread, text, user) VALUES (99, 'x', 1)",
                    [],
                )
            })
            .unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
    }

    #[test]
    fn checksums_tell_copies_apart() {
        let a = Db::in_memory(&Resource::ALL, Seed::Legacy).expect("open");
        // A service database seeded with only its own table's legacy rows.
        let b = Db::in_memory(&[Resource::Users], Seed::Legacy).expect("open");
        let sum = |db: &Db| {
            db.blocking(|c| checksum(c, Resource::Users))
                .expect("checksum")
        };
        assert_eq!(sum(&a), sum(&b));
        assert_eq!(sum(&a).rows, 4);
        b.blocking(|c| c.execute("UPDATE users SET bio = 'changed' WHERE id = 4", []))
            .expect("update");
        assert_ne!(sum(&a), sum(&b));
    }
}
