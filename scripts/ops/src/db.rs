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

/// The temporary table a PostgreSQL batch is staged in.
const STAGE: &str = "_strangler_stage";

/// An open database.
pub enum Db {
    /// An SQLite file; the resource's table is in `main`.
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL session (UTC, ISO dates).
    Postgres(Box<postgres::Client>),
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
                Ok(Db::Postgres(Box::new(client)))
            }
        }
    }

    /// The PostgreSQL session, when this is PostgreSQL.
    pub fn postgres(&mut self) -> Option<&mut postgres::Client> {
        match self {
            Db::Postgres(client) => Some(client),
            Db::Sqlite(_) => None,
        }
    }

    /// `SQLite` or `PostgreSQL`.
    pub fn engine(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "SQLite",
            Db::Postgres(_) => "PostgreSQL",
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
            Db::Postgres(client) => {
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

    /// Creates the checkpoint table and `resource`'s row in it.
    ///
    /// Errors: the database refuses the statements.
    pub fn ensure_checkpoint(&mut self, resource: &str) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(conn) => {
                crate::copy::ensure_checkpoint_named(conn, resource)?;
            }
            Db::Postgres(client) => {
                client.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {CHECKPOINT} (
                        resource TEXT PRIMARY KEY,
                        copied_up_to BIGINT,
                        updated_at TEXT NOT NULL DEFAULT (now()::text)
                    )"
                ))?;
                client.execute(
                    &format!(
                        "INSERT INTO {CHECKPOINT} (resource) VALUES ($1) ON CONFLICT DO NOTHING"
                    ),
                    &[&resource],
                )?;
            }
        }
        Ok(())
    }

    /// The last key copied by a run that did not finish, if one did not.
    ///
    /// Errors: the checkpoint cannot be read.
    pub fn interrupted_at(&mut self, resource: &str) -> anyhow::Result<Option<i64>> {
        Ok(match self {
            Db::Sqlite(conn) => crate::copy::interrupted_at_named(conn, resource)?,
            Db::Postgres(client) => client
                .query_opt(
                    &format!("SELECT copied_up_to FROM {CHECKPOINT} WHERE resource = $1"),
                    &[&resource],
                )?
                .and_then(|r| r.get::<_, Option<i64>>(0)),
        })
    }

    /// Rows of `table` (as named on `side`) with a key at or above `from`.
    ///
    /// Errors: the table cannot be read.
    pub fn count_from(&mut self, table: &Table, side: Side, from: i64) -> anyhow::Result<u64> {
        let (t, k) = (table.table_on(side), table.key_on(side));
        let n: i64 = match self {
            Db::Sqlite(conn) => conn.query_row(
                &format!("SELECT count(*) FROM main.{t} WHERE {k} >= ?1"),
                [from],
                |r| r.get(0),
            )?,
            Db::Postgres(client) => client
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
        let (t, k) = (table.table_on(side), table.key_on(side));
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
            Db::Postgres(client) => {
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
    /// as `resource`'s checkpoint. When the database captures changes (SQLite, see
    /// [`crate::capture`]), the writes are marked as the applier's.
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
        let (t, k) = (table.table_on(side), table.key_on(side));
        let resource = table.name();
        let cols = table.column_list(side);
        match self {
            Db::Sqlite(conn) => {
                let tx = crate::copy::begin_on_target_named(conn, resource)?;
                tx.execute_batch(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {STAGE}_{resource} AS SELECT {cols} FROM main.{t} WHERE 0;
                     DELETE FROM temp.{STAGE}_{resource};"
                ))?;
                {
                    let marks = vec!["?"; table.columns.len()].join(", ");
                    let mut insert = tx.prepare_cached(&format!(
                        "INSERT INTO temp.{STAGE}_{resource} ({cols}) VALUES ({marks})"
                    ))?;
                    for row in rows {
                        insert.execute(rusqlite::params_from_iter(row.iter()))?;
                    }
                }
                let written = tx.execute(
                    &upsert_from_stage(table, side, &format!("temp.{STAGE}_{resource}"), "IS NOT"),
                    [],
                )?;
                let removed = tx.execute(
                    &format!(
                        "DELETE FROM main.{t} WHERE {k} >= ?1 AND {k} <= ?2 AND NOT EXISTS \
                         (SELECT 1 FROM temp.{STAGE}_{resource} AS s WHERE s.{k} = main.{t}.{k})"
                    ),
                    [first, last],
                )?;
                tx.execute(
                    &format!("UPDATE main.{CHECKPOINT} SET copied_up_to = ?2 WHERE resource = ?1"),
                    rusqlite::params![resource, last],
                )?;
                crate::copy::commit_on_target(tx)?;
                Ok(Written {
                    written: written as u64,
                    removed: removed as u64,
                })
            }
            Db::Postgres(client) => {
                let mut tx = client.transaction()?;
                tx.batch_execute(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {STAGE} ON COMMIT DELETE ROWS AS \
                     SELECT {cols} FROM {t} WITH NO DATA"
                ))?;
                {
                    let mut sink = tx.copy_in(&format!("COPY {STAGE} ({cols}) FROM STDIN"))?;
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
                let written = tx.execute(
                    &upsert_from_stage(table, side, STAGE, "IS DISTINCT FROM"),
                    &[],
                )?;
                let removed = tx.execute(
                    &format!(
                        "DELETE FROM {t} WHERE {k} >= $1::int8 AND {k} <= $2::int8 AND NOT EXISTS \
                         (SELECT 1 FROM {STAGE} AS s WHERE s.{k} = {t}.{k})"
                    ),
                    &[&first, &last],
                )?;
                tx.execute(
                    &format!("UPDATE {CHECKPOINT} SET copied_up_to = $2, updated_at = now()::text WHERE resource = $1"),
                    &[&resource, &last],
                )?;
                // The stage empties itself at commit and lives as long as the session (one
                // resource's copy).
                tx.commit()?;
                Ok(Written { written, removed })
            }
        }
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
        let (t, k) = (table.table_on(side), table.key_on(side));
        let resource = table.name();
        match self {
            Db::Sqlite(conn) => {
                let tx = crate::copy::begin_on_target_named(conn, resource)?;
                let removed = match from {
                    Some(from) => {
                        tx.execute(&format!("DELETE FROM main.{t} WHERE {k} >= ?1"), [from])?
                    }
                    None => 0,
                };
                tx.execute(
                    &format!(
                        "UPDATE main.{CHECKPOINT} SET copied_up_to = NULL WHERE resource = ?1"
                    ),
                    [resource],
                )?;
                crate::copy::commit_on_target(tx)?;
                Ok(removed as u64)
            }
            Db::Postgres(client) => {
                let mut tx = client.transaction()?;
                let removed = match from {
                    Some(from) => {
                        tx.execute(&format!("DELETE FROM {t} WHERE {k} >= $1::int8"), &[&from])?
                    }
                    None => 0,
                };
                tx.execute(
                    &format!("UPDATE {CHECKPOINT} SET copied_up_to = NULL WHERE resource = $1"),
                    &[&resource],
                )?;
                tx.commit()?;
                Ok(removed)
            }
        }
    }

    /// Calls `each` with every row of `table` on `side` (moving columns, key first) but the
    /// one keyed `except`, as one snapshot (one read transaction).
    ///
    /// Errors: the table cannot be read, or `each` fails.
    pub fn scan(
        &mut self,
        table: &Table,
        side: Side,
        except: Option<i64>,
        each: &mut dyn FnMut(&[Value]),
    ) -> anyhow::Result<()> {
        let (t, k) = (table.table_on(side), table.key_on(side));
        match self {
            Db::Sqlite(conn) => {
                let tx = conn.transaction()?;
                {
                    let mut stmt = tx.prepare(&format!(
                        "SELECT {} FROM main.{t} WHERE ?1 IS NULL OR {k} IS NOT ?1",
                        table.column_list(side)
                    ))?;
                    let mut rows = stmt.query([except])?;
                    while let Some(row) = rows.next()? {
                        each(&sqlite_row(row, table)?);
                    }
                }
                tx.commit()?;
            }
            Db::Postgres(client) => {
                let mut tx = client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                let sql = format!(
                    "SELECT {} FROM {t} WHERE $1::int8 IS NULL OR {k} IS DISTINCT FROM $1::int8",
                    pg_select_list(table, side)
                );
                let stmt = tx.prepare(&sql)?;
                // A portal read in chunks: a large table never sits in memory at once.
                let portal = tx.bind(&stmt, &[&except])?;
                loop {
                    let rows = tx.query_portal(&portal, 50_000)?;
                    if rows.is_empty() {
                        break;
                    }
                    for r in &rows {
                        each(&pg_row(r, table)?);
                    }
                }
                tx.commit()?;
            }
        }
        Ok(())
    }
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

/// The upsert of a staged batch: rows already equal are not rewritten (and not counted).
/// `WHERE true` keeps SQLite's parser from reading ON CONFLICT as a join constraint.
fn upsert_from_stage(table: &Table, side: Side, stage: &str, differ: &str) -> String {
    let t = table.table_on(side);
    let (into, old) = match differ {
        "IS NOT" => (format!("main.{t}"), format!("main.{t}")),
        _ => (t.to_string(), t.to_string()),
    };
    let select = format!("SELECT {} FROM {stage} WHERE true", table.column_list(side));
    table.upsert_sql(side, &into, &select, &old, differ)
}
