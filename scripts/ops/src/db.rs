//! One database of a migration, SQLite or PostgreSQL, behind the few operations the batched
//! copy and the verification need: its catalogue, a batch of rows by key range, an upsert of a
//! batch with the copy's checkpoint in the same transaction, and a content digest.
//!
//! Rows travel as engine-neutral [`Value`]s, so any pair of engines works (SQLite → PostgreSQL,
//! PostgreSQL → PostgreSQL, PostgreSQL → SQLite). Values are read canonically by the column's
//! [`Kind`] — integers and booleans as 64-bit integers, reals as doubles, text and timestamps as
//! text (PostgreSQL's ISO output in UTC: `2024-01-02 10:00:01[.5]`), bytes as bytes — so the
//! digest of [`crate::verify`] comes out the same on both engines for the same rows.
//!
//! PostgreSQL receives each batch with `COPY … FROM STDIN` into a temporary table, then one
//! `INSERT … ON CONFLICT DO UPDATE … WHERE … IS DISTINCT FROM …` and one `DELETE` of the
//! range's keys the source no longer has, committed with the checkpoint.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use rusqlite::types::ValueRef;

use crate::copy::CHECKPOINT;
use crate::migrations::DbUrl;
use crate::resource::{CatalogColumn, Kind, Table};
use crate::sync::Side;

/// How long an SQLite statement waits for another process's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The temporary table a batch is staged in (one per resource and session).
const STAGE: &str = "_strangler_stage";

/// SQLite's marker table of the applier's writes: non-empty only inside its own, uncommitted
/// transaction (see [`Db::applying`] and [`crate::capture`]).
pub const APPLYING: &str = "_strangler_applying";

/// An open database.
pub enum Db {
    /// An SQLite file; the resource's table is in `main`.
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL session (UTC, ISO dates), and whether its role is a superuser (read once
    /// at connect: it decides how [`Db::applying`] marks its writes).
    Postgres(Box<postgres::Client>, bool),
}

/// One value, as both engines' rows are compared.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Integers and booleans (0, 1).
    Integer(i64),
    /// Floating point.
    Real(f64),
    /// Text, and timestamps as text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    pub(crate) fn from_sqlite(v: ValueRef<'_>, kind: Kind) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) if kind == Kind::Real => Value::Real(i as f64),
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    /// Appends the canonical bytes of the value (a type tag, then the value; text and blobs
    /// carry their length) to `buf`: what the verification checksum hashes.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Value::Null => buf.push(0),
            Value::Integer(v) => {
                buf.push(1);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            Value::Real(v) => {
                buf.push(2);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            Value::Text(v) => encode_bytes(buf, 3, v.as_bytes()),
            Value::Blob(v) => encode_bytes(buf, 4, v),
        }
    }

    /// The value in PostgreSQL's `COPY` text format (escaped; `\N` for NULL).
    fn copy_text(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("\\N"),
            Value::Integer(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Real(v) if v.is_nan() => out.push_str("NaN"),
            Value::Real(v) if v.is_infinite() => {
                out.push_str(if *v > 0.0 { "Infinity" } else { "-Infinity" })
            }
            Value::Real(v) => {
                let _ = write!(out, "{v:?}");
            }
            Value::Text(t) => {
                for c in t.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
            Value::Blob(b) => {
                out.push_str("\\\\x");
                for byte in b {
                    let _ = write!(out, "{byte:02x}");
                }
            }
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as R};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => R::Null,
            Value::Integer(i) => R::Integer(*i),
            Value::Real(f) => R::Real(*f),
            Value::Text(t) => R::Text(t.as_bytes()),
            Value::Blob(b) => R::Blob(b),
        }))
    }
}

fn encode_bytes(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    buf.push(tag);
    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// What one [`Db::write_batch`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows inserted or changed (identical rows are left alone).
    pub written: u64,
    /// Rows of the range removed because the source no longer has them.
    pub removed: u64,
}

impl Db {
    /// Opens `url` (relative SQLite paths under `data_dir`). As the `target` of a copy, an
    /// SQLite file is created when missing and put in WAL mode (as the services open theirs);
    /// a source is only read.
    ///
    /// Errors: a source SQLite file that does not exist, or a file that cannot be opened;
    /// a PostgreSQL server that refuses the connection (the message names the URL without its
    /// password).
    pub fn open(url: &DbUrl, data_dir: &Path, target: bool) -> anyhow::Result<Db> {
        match url.resolve(data_dir) {
            DbUrl::Sqlite(path) => {
                if !target && !path.is_file() {
                    anyhow::bail!("no SQLite database at {}", path.display());
                }
                let conn = rusqlite::Connection::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn.pragma_update(None, "foreign_keys", false)?;
                if target {
                    let _mode: String =
                        conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
                    conn.pragma_update(None, "synchronous", "NORMAL")?;
                    // Ids arrive in order but secondary indexes take them at random places.
                    conn.pragma_update(None, "cache_size", -256 * 1024)?;
                }
                Ok(Db::Sqlite(conn))
            }
            DbUrl::Postgres(text) => {
                let mut client =
                    postgres::Client::connect(&text, postgres::NoTls).map_err(|e| {
                        anyhow::anyhow!(
                            "connecting to PostgreSQL at {}: {e}",
                            crate::migrations::redact(&text)
                        )
                    })?;
                client.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD';")?;
                let superuser = client
                    .query_one(
                        "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
                        &[],
                    )?
                    .get::<_, bool>(0);
                Ok(Db::Postgres(Box::new(client), superuser))
            }
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(..))
    }

    /// Runs `sql`, one or more statements without parameters.
    ///
    /// Errors: the database refuses a statement.
    pub fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(conn) => conn.execute_batch(sql)?,
            Db::Postgres(client, _) => client.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Runs one statement written with `?1`, `?2`… placeholders (rewritten to `$1`… for
    /// PostgreSQL, where each value converts to the type the server infers for its place, see
    /// [`Value`]'s `ToSql`); returns the rows it changed.
    ///
    /// Errors: the database refuses the statement or a value.
    pub fn exec(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        Ok(match self {
            Db::Sqlite(conn) => {
                conn.prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(params.iter()))? as u64
            }
            Db::Postgres(client, _) => {
                client.execute(&dollar_placeholders(sql), &pg_params(params))?
            }
        })
    }

    /// Runs one query written as for [`Db::exec`]; every row as values (integers and booleans
    /// as integers, reals, text, bytes; other PostgreSQL types must be cast to one of those).
    ///
    /// Errors: the database refuses the query, or a column's type is not one of those.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Vec<Value>>> {
        match self {
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let width = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(width);
                    for i in 0..width {
                        values.push(Value::from_sqlite(row.get_ref(i)?, Kind::Blob));
                    }
                    out.push(values);
                }
                Ok(out)
            }
            Db::Postgres(client, _) => client
                .query(&dollar_placeholders(sql), &pg_params(params))?
                .iter()
                .map(pg_any_row)
                .collect(),
        }
    }

    /// The first column of the first row of `sql` as an integer (NULL and no row as `None`).
    ///
    /// Errors: as [`Db::query`]; the value is not an integer.
    pub fn query_i64(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Option<i64>> {
        match self
            .query(sql, params)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
        {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Integer(v)) => Ok(Some(v)),
            Some(other) => anyhow::bail!("expected an integer from {sql:?}, got {other:?}"),
        }
    }

    /// Whether a table `name` exists (in `main` on SQLite, in the search path on PostgreSQL).
    ///
    /// Errors: the catalogue cannot be read.
    pub fn has_table(&mut self, name: &str) -> anyhow::Result<bool> {
        let sql = match self {
            Db::Sqlite(_) => {
                "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?1"
            }
            Db::Postgres(..) => {
                "SELECT count(*) FROM pg_catalog.pg_tables \
                 WHERE schemaname = current_schema() AND tablename = ?1"
            }
        };
        Ok(self.query_i64(sql, &[Value::Text(name.to_string())])? > Some(0))
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back otherwise. A
    /// `write` transaction on SQLite takes the file's write lock first (`BEGIN IMMEDIATE`: a
    /// busy database is a wait, not a stale snapshot); a read one sees one snapshot (on
    /// PostgreSQL, `REPEATABLE READ, READ ONLY`).
    ///
    /// Errors: `f`'s, or the database refuses BEGIN or COMMIT.
    pub fn transaction<T>(
        &mut self,
        write: bool,
        f: impl FnOnce(&mut Db) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.batch(match (&*self, write) {
            (Db::Sqlite(_), true) => "BEGIN IMMEDIATE",
            (Db::Sqlite(_), false) => "BEGIN",
            (Db::Postgres(..), true) => "BEGIN",
            (Db::Postgres(..), false) => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        })?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// As [`Db::transaction`] (a write), with the writes marked as the applier's, so change
    /// capture on this database ([`crate::capture`]) does not record them: on SQLite a row in
    /// [`APPLYING`] that only this uncommitted transaction sees (removed before the commit), on
    /// PostgreSQL the transaction-local setting `strangler.applying` (and, for a superuser,
    /// `session_replication_role = replica`, which also skips foreign-key checks, as SQLite's
    /// applier connections do: the copy is not the source of truth).
    ///
    /// Errors: as [`Db::transaction`].
    pub fn applying<T>(
        &mut self,
        f: impl FnOnce(&mut Db) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let superuser = matches!(self, Db::Postgres(_, true));
        let marked = match self {
            Db::Sqlite(_) => self.has_table(APPLYING)?,
            Db::Postgres(..) => true,
        };
        self.transaction(true, |db| {
            if marked {
                match db {
                    Db::Sqlite(_) => {
                        db.exec(
                            &format!("INSERT INTO main.{APPLYING} (pid) VALUES (?1)"),
                            &[Value::Integer(i64::from(std::process::id()))],
                        )?;
                    }
                    Db::Postgres(..) => db.batch(if superuser {
                        "SET LOCAL strangler.applying = 'on'; \
                         SET LOCAL session_replication_role = replica"
                    } else {
                        "SET LOCAL strangler.applying = 'on'"
                    })?,
                }
            }
            let out = f(db)?;
            if marked && !db.is_postgres() {
                db.batch(&format!("DELETE FROM main.{APPLYING}"))?;
            }
            Ok(out)
        })
    }

    /// The PostgreSQL session, when this is PostgreSQL.
    pub fn postgres(&mut self) -> Option<&mut postgres::Client> {
        match self {
            Db::Postgres(client, _) => Some(client),
            Db::Sqlite(_) => None,
        }
    }

    /// `SQLite` or `PostgreSQL`.
    pub fn engine(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "SQLite",
            Db::Postgres(..) => "PostgreSQL",
        }
    }

    /// The columns of `table` as the catalogue lists them (`pragma_table_info`, or
    /// `information_schema.columns` with the primary key from `information_schema`'s
    /// constraint views); empty when there is no such table.
    ///
    /// Errors: the catalogue cannot be read.
    pub fn catalog(&mut self, table: &str) -> anyhow::Result<Vec<CatalogColumn>> {
        match self {
            Db::Sqlite(conn) => Ok(crate::resource::catalog(conn, "main", table)?),
            Db::Postgres(client, _) => {
                let rows = client.query(
                    "SELECT c.column_name::text, c.data_type::text, c.is_nullable = 'NO',
                            c.column_default IS NOT NULL,
                            coalesce((SELECT k.ordinal_position::int4
                               FROM information_schema.table_constraints t
                               JOIN information_schema.key_column_usage k
                                 ON k.constraint_name = t.constraint_name
                                AND k.constraint_schema = t.constraint_schema
                                AND k.table_name = t.table_name
                              WHERE t.constraint_type = 'PRIMARY KEY'
                                AND t.table_schema = c.table_schema
                                AND t.table_name = c.table_name
                                AND k.column_name = c.column_name), 0)
                       FROM information_schema.columns c
                      WHERE c.table_schema = current_schema() AND c.table_name = $1
                      ORDER BY c.ordinal_position",
                    &[&table],
                )?;
                Ok(rows
                    .iter()
                    .map(|r| CatalogColumn {
                        name: r.get(0),
                        declared: r.get(1),
                        not_null: r.get(2),
                        has_default: r.get(3),
                        pk: r.get::<_, i32>(4).unsigned_abs(),
                    })
                    .collect())
            }
        }
    }

    /// The tables `table`'s foreign keys point at (`pragma_foreign_key_list`, or
    /// `pg_constraint`).
    ///
    /// Errors: the catalogue cannot be read.
    pub fn foreign_key_targets(&mut self, table: &str) -> anyhow::Result<Vec<String>> {
        let sql = if self.is_postgres() {
            "SELECT DISTINCT c.relname::text FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class c ON c.oid = k.confrelid \
             WHERE k.contype = 'f' AND k.conrelid = to_regclass(?1)"
        } else {
            "SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?1)"
        };
        Ok(self
            .query(sql, &[Value::Text(table.to_string())])?
            .into_iter()
            .filter_map(|r| match r.into_iter().next() {
                Some(Value::Text(t)) => Some(t),
                _ => None,
            })
            .collect())
    }

    /// Creates the checkpoint table and `resource`'s row in it.
    ///
    /// Errors: the database refuses the statements.
    pub fn ensure_checkpoint(&mut self, resource: &str) -> anyhow::Result<()> {
        let now = if self.is_postgres() {
            "now()::text"
        } else {
            "datetime('now')"
        };
        self.batch(&format!(
            "CREATE TABLE IF NOT EXISTS {CHECKPOINT} (
                resource TEXT PRIMARY KEY,
                copied_up_to BIGINT,
                updated_at TEXT NOT NULL DEFAULT ({now})
            )"
        ))?;
        self.exec(
            &format!("INSERT INTO {CHECKPOINT} (resource) VALUES (?1) ON CONFLICT DO NOTHING"),
            &[Value::Text(resource.to_string())],
        )?;
        Ok(())
    }

    /// The last key copied by a run that did not finish, if one did not.
    ///
    /// Errors: the checkpoint cannot be read.
    pub fn interrupted_at(&mut self, resource: &str) -> anyhow::Result<Option<i64>> {
        if !self.has_table(CHECKPOINT)? {
            return Ok(None);
        }
        self.query_i64(
            &format!("SELECT copied_up_to FROM {CHECKPOINT} WHERE resource = ?1"),
            &[Value::Text(resource.to_string())],
        )
    }
    /// Rows of `table` (as named on `side`) with a key at or above `from`.
    ///
    /// Errors: the table cannot be read.
    pub fn count_from(&mut self, table: &Table, side: Side, from: i64) -> anyhow::Result<u64> {
        let (t, k) = (table.sql_table(side), table.sql_key(side));
        let n: i64 = match self {
            Db::Sqlite(conn) => conn.query_row(
                &format!("SELECT count(*) FROM main.{t} WHERE {k} >= ?1"),
                [from],
                |r| r.get(0),
            )?,
            Db::Postgres(client, _) => client
                .query_one(
                    &format!("SELECT count(*) FROM {t} WHERE {k} >= $1::int8"),
                    &[&from],
                )?
                .get(0),
        };
        Ok(n.unsigned_abs())
    }

    /// Up to `limit` rows of `table` on `side` with a key at or above `from`, in key order,
    /// each as its moving columns (key first).
    ///
    /// Errors: the table cannot be read.
    pub fn read_batch(
        &mut self,
        table: &Table,
        side: Side,
        from: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<Vec<Value>>> {
        let (t, k) = (table.sql_table(side), table.sql_key(side));
        match self {
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {} FROM main.{t} WHERE {k} >= ?1 ORDER BY {k} LIMIT ?2",
                    table.column_list(side)
                ))?;
                let mut rows = stmt.query(rusqlite::params![from, limit])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(sqlite_row(row, table)?);
                }
                Ok(out)
            }
            Db::Postgres(client, _) => {
                let sql = format!(
                    "SELECT {} FROM {t} WHERE {k} >= $1::int8 ORDER BY {k} LIMIT $2::int8",
                    pg_select_list(table, side)
                );
                let rows = client.query(&sql, &[&from, &i64::from(limit)])?;
                rows.iter().map(|r| pg_row(r, table)).collect()
            }
        }
    }

    /// Writes one batch into `table` on `side` in one transaction: upserts `rows` (whose keys
    /// lie in `first..=last`), removes the range's rows that `rows` lacks, and records `last`
    /// as `resource`'s checkpoint. The writes are the applier's ([`Db::applying`]): change
    /// capture on this database does not record them.
    ///
    /// Errors: the database refuses a statement (nothing of the batch is kept).
    pub fn write_batch(
        &mut self,
        table: &Table,
        side: Side,
        first: i64,
        last: i64,
        rows: &[Vec<Value>],
    ) -> anyhow::Result<Written> {
        let (t, k) = (table.sql_table(side), table.sql_key(side));
        self.applying(|db| {
            let written = db.upsert_rows(table, side, rows)?;
            let stage = db.stage_name(table);
            let removed = db.exec(
                &format!(
                    // Not a correlated NOT EXISTS: SQLite would scan the stage once per row.
                    "DELETE FROM {t} WHERE {k} >= CAST(?1 AS BIGINT) AND {k} <= CAST(?2 AS BIGINT) \
                     AND {k} NOT IN (SELECT {k} FROM {stage})"
                ),
                &[Value::Integer(first), Value::Integer(last)],
            )?;
            db.set_checkpoint(table.name(), Some(last))?;
            Ok(Written { written, removed })
        })
    }

    fn set_checkpoint(&mut self, resource: &str, at: Option<i64>) -> anyhow::Result<()> {
        let now = if self.is_postgres() {
            "now()::text"
        } else {
            "datetime('now')"
        };
        self.exec(
            &format!(
                "UPDATE {CHECKPOINT} SET copied_up_to = ?2, updated_at = {now} WHERE resource = ?1"
            ),
            &[
                Value::Text(resource.to_string()),
                at.map_or(Value::Null, Value::Integer),
            ],
        )?;
        Ok(())
    }

    /// The per-session staging table of `table`'s rows (a temporary table).
    fn stage_name(&self, table: &Table) -> String {
        match self {
            Db::Sqlite(_) => format!("temp.{STAGE}_{}", table.name()),
            Db::Postgres(..) => format!("{STAGE}_{}", table.name()),
        }
    }

    /// Inside a write transaction: upserts `rows` (moving columns of `side`, key first) into
    /// `table` on `side` through the session's staging table (`COPY … FROM STDIN` on
    /// PostgreSQL); rows already equal are not rewritten. Returns the rows written.
    ///
    /// Errors: the database refuses a statement or a value.
    pub fn upsert_rows(
        &mut self,
        table: &Table,
        side: Side,
        rows: &[Vec<Value>],
    ) -> anyhow::Result<u64> {
        let t = table.sql_table(side);
        let cols = table.column_list(side);
        let stage = self.stage_name(table);
        match self {
            Db::Sqlite(conn) => {
                conn.execute_batch(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {STAGE}_{name} AS SELECT {cols} FROM main.{t} WHERE 0;
                     DELETE FROM {stage};",
                    name = table.name()
                ))?;
                let marks = vec!["?"; table.columns.len()].join(", ");
                let mut insert =
                    conn.prepare_cached(&format!("INSERT INTO {stage} ({cols}) VALUES ({marks})"))?;
                for row in rows {
                    insert.execute(rusqlite::params_from_iter(row.iter()))?;
                }
            }
            Db::Postgres(client, _) => {
                client.batch_execute(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS \
                     SELECT {cols} FROM {t} WITH NO DATA; DELETE FROM {stage};"
                ))?;
                let mut sink = client.copy_in(&format!("COPY {stage} ({cols}) FROM STDIN"))?;
                let mut line = String::with_capacity(256);
                for row in rows {
                    line.clear();
                    for (i, v) in row.iter().enumerate() {
                        if i > 0 {
                            line.push('\t');
                        }
                        v.copy_text(&mut line);
                    }
                    line.push('\n');
                    sink.write_all(line.as_bytes())?;
                }
                sink.finish()?;
            }
        }
        let differ = if self.is_postgres() {
            "IS DISTINCT FROM"
        } else {
            "IS NOT"
        };
        let select = format!("SELECT {cols} FROM {stage} WHERE true");
        self.exec(&table.upsert_sql(side, &t, &select, &t, differ), &[])
    }

    /// Inside a write transaction: deletes the rows of `table` on `side` keyed by `keys`;
    /// returns how many there were.
    ///
    /// Errors: the database refuses the statement.
    pub fn delete_keys(&mut self, table: &Table, side: Side, keys: &[i64]) -> anyhow::Result<u64> {
        let (t, k) = (table.sql_table(side), table.sql_key(side));
        let mut n = 0;
        for chunk in keys.chunks(500) {
            let params: Vec<Value> = chunk.iter().map(|k| Value::Integer(*k)).collect();
            n += self.exec(
                &format!("DELETE FROM {t} WHERE {k} IN ({})", marks(1, chunk.len())),
                &params,
            )?;
        }
        Ok(n)
    }

    /// The rows of `table` on `side` keyed by `keys` (moving columns, key first, read as
    /// [`Db::read_batch`] reads them); keys without a row are left out.
    ///
    /// Errors: the table cannot be read.
    pub fn read_keys(
        &mut self,
        table: &Table,
        side: Side,
        keys: &[i64],
    ) -> anyhow::Result<Vec<Vec<Value>>> {
        let (t, k) = (table.sql_table(side), table.sql_key(side));
        let list = match self {
            Db::Sqlite(_) => table.column_list(side),
            Db::Postgres(..) => pg_select_list(table, side),
        };
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let params: Vec<Value> = chunk.iter().map(|k| Value::Integer(*k)).collect();
            let sql = format!(
                "SELECT {list} FROM {t} WHERE {k} IN ({})",
                marks(1, chunk.len())
            );
            for row in self.query(&sql, &params)? {
                out.push(canonical(row, table));
            }
        }
        Ok(out)
    }

    /// Ends a copy past the source's last row: removes the target's rows with a key at or
    /// above `from` (gone from the source) and clears the checkpoint, in one transaction.
    ///
    /// Errors: the database refuses a statement.
    pub fn finish_copy(
        &mut self,
        table: &Table,
        side: Side,
        from: Option<i64>,
    ) -> anyhow::Result<u64> {
        let (t, k) = (table.sql_table(side), table.sql_key(side));
        self.applying(|db| {
            let removed = match from {
                Some(from) => db.exec(
                    &format!("DELETE FROM {t} WHERE {k} >= CAST(?1 AS BIGINT)"),
                    &[Value::Integer(from)],
                )?,
                None => 0,
            };
            db.set_checkpoint(table.name(), None)?;
            Ok(removed)
        })
    }

    /// Calls `each` with every row of `table` on `side` (moving columns, key first) but the
    /// one keyed `except`, streamed (a large table never sits in memory at once). Inside a
    /// caller's [`Db::transaction`] it reads that snapshot.
    ///
    /// Errors: the table cannot be read.
    pub fn scan(
        &mut self,
        table: &Table,
        side: Side,
        except: Option<i64>,
        each: &mut dyn FnMut(&[Value]),
    ) -> anyhow::Result<()> {
        let (t, k) = (table.sql_table(side), table.sql_key(side));
        match self {
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {} FROM main.{t} WHERE ?1 IS NULL OR {k} IS NOT ?1",
                    table.column_list(side)
                ))?;
                let mut rows = stmt.query([except])?;
                while let Some(row) = rows.next()? {
                    each(&sqlite_row(row, table)?);
                }
            }
            Db::Postgres(client, _) => {
                use postgres::fallible_iterator::FallibleIterator as _;
                let sql = format!(
                    "SELECT {} FROM {t} WHERE $1::int8 IS NULL OR {k} IS DISTINCT FROM $1::int8",
                    pg_select_list(table, side)
                );
                let mut rows = client.query_raw(sql.as_str(), [&except])?;
                while let Some(r) = rows.next()? {
                    each(&pg_row(&r, table)?);
                }
            }
        }
        Ok(())
    }
}

/// `?S, ?S+1, …` (`n` of them, numbered from `start`) for an `IN` list.
pub(crate) fn marks(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sql` with its `?N` placeholders as PostgreSQL's `$N`.
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_params(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// A row of a generic query, each column read by its type.
fn pg_any_row(row: &postgres::Row) -> anyhow::Result<Vec<Value>> {
    use postgres::types::Type;
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let v = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Integer)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Integer(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Integer(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Integer(v.into()))
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else if *ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(v.into()))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| {
                    anyhow::anyhow!("column {} ({ty}): cast it to text: {e}", column.name())
                })?
                .map(Value::Text)
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(out)
}

/// A generically read row of the moving columns in canonical form (see [`Value`]): an
/// integer read from a real column is a real.
fn canonical(row: Vec<Value>, table: &Table) -> Vec<Value> {
    row.into_iter()
        .zip(&table.columns)
        .map(|(v, c)| match v {
            Value::Integer(i) if c.kind == Kind::Real => Value::Real(i as f64),
            other => other,
        })
        .collect()
}

/// Each value converts to the type PostgreSQL infers for its place: an integer to `int2`,
/// `int4`, `int8`, `bool`, a float or text; a real to a float; text to any text type; bytes to
/// `bytea`. Anything else is an error naming both.
impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        let unfit = || -> Box<dyn std::error::Error + Sync + Send> {
            format!("cannot send {self:?} as PostgreSQL type {ty}").into()
        };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    i.to_string().to_sql(ty, out)
                }
                _ => Err(unfit()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(unfit()),
            },
            Value::Text(t) if <&str as postgres::types::ToSql>::accepts(ty) => {
                t.as_str().to_sql(ty, out)
            }
            Value::Blob(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            _ => Err(unfit()),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn sqlite_row(row: &rusqlite::Row<'_>, table: &Table) -> rusqlite::Result<Vec<Value>> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| Ok(Value::from_sqlite(row.get_ref(i)?, c.kind)))
        .collect()
}

/// The moving columns of `side` cast so that PostgreSQL returns each in its canonical type.
fn pg_select_list(table: &Table, side: Side) -> String {
    let mut out = String::new();
    for (i, (name, c)) in table.columns_on(side).zip(&table.columns).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let name = crate::resource::quote(name);
        let _ = match c.kind {
            Kind::Integer => write!(out, "{name}::int8"),
            Kind::Boolean => write!(out, "{name}::int4::int8"),
            Kind::Real => write!(out, "{name}::float8"),
            Kind::Text | Kind::Timestamp => write!(out, "{name}::text"),
            Kind::Blob => write!(out, "{name}::bytea"),
        };
    }
    out
}

fn pg_row(row: &postgres::Row, table: &Table) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::with_capacity(table.columns.len());
    for (i, c) in table.columns.iter().enumerate() {
        let v = match c.kind {
            Kind::Integer | Kind::Boolean => row.try_get::<_, Option<i64>>(i)?.map(Value::Integer),
            Kind::Real => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
            Kind::Text | Kind::Timestamp => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
            Kind::Blob => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(out)
}
