//! Change capture on both sides of a migration, for `migrate-data --follow` and `--reverse`.
//!
//! Triggers on the resource's table append the id of every inserted, updated or deleted row to
//! a side table, `_strangler_changes`, in the same database: the monolith's (attached as `src`)
//! and the service's (`main`). The follower replays one side's changes by id against that side's
//! *current* row — copy it to the other side if it exists, delete it there if not — so replaying
//! a change twice, or out of order, converges to the same state, and a crash between applying
//! and forgetting a change is harmless.
//!
//! No ping-pong: the triggers fire only `WHEN NOT EXISTS (SELECT 1 FROM _strangler_applying)`.
//! The applier inserts a row into that table of the destination database as the first write of
//! its transaction and deletes it before committing, so exactly its own writes go uncaptured;
//! every other connection sees the table empty (the marker is never committed).
//!
//! Clients see nothing of this: the triggers only write the side table, and SQLite restores
//! `last_insert_rowid()` and `changes()` after a trigger runs, so the answers of the monolith
//! and of the services (the id of a new post, 404 for deleting an unknown one) are unchanged.
//!
//! All capture SQL lives here (SQLite dialect); a PostgreSQL port replaces this module.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension as _, Transaction, TransactionBehavior, params};

use crate::conflicts::Conflict;
use crate::resource::Table;
use crate::sync::{Direction, Side};

/// The side table of captured changes, in each database.
pub const CHANGES: &str = "_strangler_changes";

/// The marker table: non-empty only inside the applier's own, uncommitted transaction.
pub const APPLYING: &str = "_strangler_applying";

/// Milliseconds since the epoch, as SQLite computes it inside a trigger.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

fn trigger_name(table: &Table, event: &str) -> String {
    format!("_strangler_capture_{}_{event}", table.name())
}

/// Whether `side` has an object `name` of `kind` (`table`, `trigger`) in its catalogue.
pub fn exists(conn: &Connection, side: Side, kind: &str, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!(
            "SELECT count(*) FROM {}.sqlite_master WHERE type = ?1 AND name = ?2",
            side.schema()
        ),
        params![kind, name],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Creates the change and marker tables and the resource's triggers on `side` (idempotent).
pub fn install(conn: &mut Connection, table: &Table, side: Side) -> rusqlite::Result<()> {
    let name = table.name();
    let s = side.schema();
    let (on, key) = (table.table_on(side), table.key_on(side));
    let skip = format!("WHEN NOT EXISTS (SELECT 1 FROM {APPLYING})");
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {s}.{CHANGES} (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            resource TEXT NOT NULL,
            row_id INTEGER NOT NULL,
            at_ms INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS {s}.{CHANGES}_by_row ON {CHANGES} (resource, row_id);
        CREATE TABLE IF NOT EXISTS {s}.{APPLYING} (pid INTEGER);
        CREATE TRIGGER IF NOT EXISTS {s}.{ins} AFTER INSERT ON {on} {skip} BEGIN
            INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{name}', NEW.{key}, {NOW_MS});
        END;
        CREATE TRIGGER IF NOT EXISTS {s}.{upd} AFTER UPDATE ON {on} {skip} BEGIN
            INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{name}', NEW.{key}, {NOW_MS});
            INSERT INTO {CHANGES} (resource, row_id, at_ms)
                SELECT '{name}', OLD.{key}, {NOW_MS} WHERE OLD.{key} IS NOT NEW.{key};
        END;
        CREATE TRIGGER IF NOT EXISTS {s}.{del} AFTER DELETE ON {on} {skip} BEGIN
            INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{name}', OLD.{key}, {NOW_MS});
        END;",
        ins = trigger_name(table, "insert"),
        upd = trigger_name(table, "update"),
        del = trigger_name(table, "delete"),
    );
    // Immediate: when the change table exists already, the first statements only read, and a
    // deferred transaction's snapshot would be stale by the CREATE TRIGGER if anyone wrote in
    // between (SQLITE_BUSY_SNAPSHOT at once, the busy timeout notwithstanding). Taking the
    // write lock first makes a busy monolith a wait, not a failure.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(&sql)?;
    tx.commit()
}

/// Drops the resource's triggers on `side`; changes already captured stay for [`apply`].
pub fn uninstall(conn: &mut Connection, table: &Table, side: Side) -> rusqlite::Result<()> {
    // Immediate for the reason given in `install`.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for event in ["insert", "update", "delete"] {
        tx.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS {}.{}",
            side.schema(),
            trigger_name(table, event)
        ))?;
    }
    tx.commit()
}

/// Whether the resource's triggers are in place on `side`.
pub fn installed(conn: &Connection, table: &Table, side: Side) -> rusqlite::Result<bool> {
    let n: i64 = conn.query_row(
        &format!(
            "SELECT count(*) FROM {}.sqlite_master WHERE type = 'trigger' AND name GLOB ?1",
            side.schema()
        ),
        [format!("_strangler_capture_{}_*", table.name())],
        |row| row.get(0),
    )?;
    Ok(n == 3)
}

/// Starts a transaction that writes `dest` without being captured there: its first statement
/// inserts the marker, which takes `dest`'s write lock (and only that one: reads of the other
/// database take a snapshot). Finish it with [`commit`].
pub fn begin(conn: &mut Connection, dest: Side) -> rusqlite::Result<Transaction<'_>> {
    // Looked up before the transaction: a read as its first statement would take a snapshot
    // that a concurrent commit makes stale, and the write after it would fail with
    // SQLITE_BUSY_SNAPSHOT instead of waiting for the lock.
    let marked = exists(conn, dest, "table", APPLYING)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    if marked {
        insert_marker(&tx, dest)?;
    }
    Ok(tx)
}

fn insert_marker(tx: &Transaction<'_>, dest: Side) -> rusqlite::Result<()> {
    tx.execute(
        &format!("INSERT INTO {}.{APPLYING} (pid) VALUES (?1)", dest.schema()),
        [std::process::id()],
    )?;
    Ok(())
}

/// Inserts the marker into `dest`'s marker table when capture was ever installed there; the
/// writes that follow in this transaction are not captured on `dest`. Call it once the
/// transaction holds `dest`'s write lock (after a write), see [`begin`].
pub fn mark(tx: &Transaction<'_>, dest: Side) -> rusqlite::Result<()> {
    if exists(tx, dest, "table", APPLYING)? {
        insert_marker(tx, dest)?;
    }
    Ok(())
}

/// Removes the marker (so it is never committed) and commits.
pub fn commit(tx: Transaction<'_>, dest: Side) -> rusqlite::Result<()> {
    if exists(&tx, dest, "table", APPLYING)? {
        tx.execute(&format!("DELETE FROM {}.{APPLYING}", dest.schema()), [])?;
    }
    tx.commit()
}

/// What one [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes consumed (applied, or skipped as conflicts).
    pub changes: u64,
    /// Sequence number of the last one (unchanged when there was none).
    pub last_seq: i64,
    /// Largest delay between a change being made and being applied, in milliseconds.
    pub lag_ms: u64,
    /// Changes not applied because the destination has its own unapplied change of the same
    /// id; record them with [`crate::conflicts::record`] before [`forget`]ting the batch.
    pub conflicts: Vec<Conflict>,
}

/// Replays up to `limit` changes of `direction`'s source side after `after_seq` inside `tx`
/// (from [`begin`] on the direction's destination).
///
/// A change for id X is not applied when the destination's change table holds a change for X
/// too (a write made directly on the destination that nobody carried yet): overwriting it would
/// lose it silently. It becomes a [`Conflict`] carrying both rows instead.
pub fn apply(
    tx: &Transaction<'_>,
    table: &Table,
    direction: Direction,
    after_seq: i64,
    limit: u32,
) -> rusqlite::Result<Applied> {
    let name = table.name();
    let (source, dest) = (direction.source(), direction.dest());
    let (s, d) = (source.schema(), dest.schema());
    let mut pending = tx.prepare_cached(&format!(
        "SELECT seq, row_id, at_ms FROM {s}.{CHANGES} WHERE resource = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let changes: Vec<(i64, i64, i64)> = pending
        .query_map(params![name, after_seq, limit], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let dest_captures = exists(tx, dest, "table", CHANGES)?;
    let (sk, dk) = (table.key_on(source), table.key_on(dest));
    let mut upsert = tx.prepare_cached(&table.upsert(source, dest, &format!("{sk} = ?1")))?;
    let mut remove = tx.prepare_cached(&format!(
        "DELETE FROM {} WHERE {dk} = ?1 AND NOT EXISTS (SELECT 1 FROM {} WHERE {sk} = ?1)",
        table.qualified(dest),
        table.qualified(source)
    ))?;
    let now = now_ms();
    let mut applied = Applied {
        last_seq: after_seq,
        ..Applied::default()
    };
    let mut done = HashSet::new();
    for (seq, id, at_ms) in changes {
        // Replaying reads the current row, so an id needs replaying once per batch.
        if done.insert(id) {
            let theirs = if dest_captures {
                tx.prepare_cached(&format!(
                    "SELECT seq FROM {d}.{CHANGES} WHERE resource = ?1 AND row_id = ?2 LIMIT 1"
                ))?
                .query_row(params![name, id], |row| row.get::<_, i64>(0))
                .optional()?
            } else {
                None
            };
            if theirs.is_some() {
                applied.conflicts.push(Conflict {
                    resource: name.to_string(),
                    row_id: id,
                    source,
                    source_seq: seq,
                    at_ms: now,
                    source_row: row_json(tx, source, table, id)?,
                    dest_row: row_json(tx, dest, table, id)?,
                });
            } else {
                upsert.execute([id])?;
                remove.execute([id])?;
            }
        }
        applied.changes += 1;
        applied.last_seq = seq;
        applied.lag_ms = applied.lag_ms.max(now.saturating_sub(at_ms).unsigned_abs());
    }
    Ok(applied)
}

/// The row `id` of `table` on `side` as a JSON object keyed by the service's column names
/// (so both sides' versions of a row compare equal), `None` when there is no such row.
pub fn row_json(
    conn: &Connection,
    side: Side,
    table: &Table,
    id: i64,
) -> rusqlite::Result<Option<String>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        table.column_list(side),
        table.qualified(side),
        table.key_on(side)
    );
    conn.query_row(&sql, [id], |row| {
        let mut object = serde_json::Map::new();
        for (i, column) in table.columns_on(Side::Service).enumerate() {
            let value = match row.get_ref(i)? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(v) => v.into(),
                ValueRef::Real(v) => v.into(),
                ValueRef::Text(v) | ValueRef::Blob(v) => {
                    String::from_utf8_lossy(v).into_owned().into()
                }
            };
            object.insert(column.to_string(), value);
        }
        Ok(serde_json::Value::Object(object).to_string())
    })
    .optional()
}

/// Deletes the resource's changes up to `seq` from `side`'s change table once they are applied.
pub fn forget(
    conn: &Connection,
    table: &Table,
    side: Side,
    up_to_seq: i64,
) -> rusqlite::Result<u64> {
    let n = conn.execute(
        &format!(
            "DELETE FROM {}.{CHANGES} WHERE resource = ?1 AND seq <= ?2",
            side.schema()
        ),
        params![table.name(), up_to_seq],
    )?;
    Ok(n as u64)
}

/// Deletes every captured change of the resource on `side`; returns how many there were.
pub fn discard(conn: &Connection, table: &Table, side: Side) -> rusqlite::Result<u64> {
    if !exists(conn, side, "table", CHANGES)? {
        return Ok(0);
    }
    forget(conn, table, side, i64::MAX)
}

/// Changes of the resource waiting on `side` after `after_seq`, and the age in milliseconds of
/// the oldest of them; `(0, 0)` when `side` has no change table.
pub fn backlog(
    conn: &Connection,
    table: &Table,
    side: Side,
    after_seq: i64,
) -> rusqlite::Result<(u64, u64)> {
    if !exists(conn, side, "table", CHANGES)? {
        return Ok((0, 0));
    }
    let (count, oldest): (i64, Option<i64>) = conn.query_row(
        &format!(
            "SELECT count(*), min(at_ms) FROM {}.{CHANGES} WHERE resource = ?1 AND seq > ?2",
            side.schema()
        ),
        params![table.name(), after_seq],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let age = oldest.map_or(0, |at| now_ms().saturating_sub(at).unsigned_abs());
    Ok((count.unsigned_abs(), age))
}

/// The ids of the resource's captured, unapplied changes on `side` (at most `limit`).
pub fn pending_ids(
    conn: &Connection,
    table: &Table,
    side: Side,
    limit: u32,
) -> rusqlite::Result<Vec<i64>> {
    if !exists(conn, side, "table", CHANGES)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT DISTINCT row_id FROM {}.{CHANGES} WHERE resource = ?1 ORDER BY row_id LIMIT ?2",
        side.schema()
    ))?;
    stmt.query_map(params![table.name(), limit], |row| row.get(0))?
        .collect()
}

/// A counter that changes whenever another connection commits to `side`'s database: a cheap
/// way for a fast-polling follower to skip looking at an unchanged change table.
pub fn data_version(conn: &Connection, side: Side) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!("PRAGMA {}.data_version", side.schema()),
        [],
        |row| row.get(0),
    )
}

/// Drops `side`'s change table and marker table when no resource captures into them any more
/// and no change is left; returns whether it did.
pub fn tidy(conn: &Connection, side: Side) -> rusqlite::Result<bool> {
    let s = side.schema();
    let triggers: i64 = conn.query_row(
        &format!(
            "SELECT count(*) FROM {s}.sqlite_master WHERE type = 'trigger' AND name GLOB '_strangler_capture_*'"
        ),
        [],
        |row| row.get(0),
    )?;
    if triggers > 0 {
        return Ok(false);
    }
    if exists(conn, side, "table", CHANGES)? {
        let rows: i64 =
            conn.query_row(&format!("SELECT count(*) FROM {s}.{CHANGES}"), [], |row| {
                row.get(0)
            })?;
        if rows > 0 {
            return Ok(false);
        }
        conn.execute_batch(&format!("DROP TABLE {s}.{CHANGES}"))?;
    }
    if exists(conn, side, "table", APPLYING)? {
        conn.execute_batch(&format!("DROP TABLE {s}.{APPLYING}"))?;
    }
    Ok(true)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
