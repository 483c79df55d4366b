//! Change capture in the monolith's database for `migrate-data --follow`.
//!
//! Triggers on the resource's table append the id of every inserted, updated or deleted row to
//! a side table, `_strangler_changes`. The follower replays them by id against the monolith's
//! *current* row — copy it if it exists, delete it from the service if not — so replaying a
//! change twice, or out of order, converges to the same state, and a crash between applying
//! and forgetting a change is harmless.
//!
//! Clients see nothing of this: the triggers only write the side table, and SQLite restores
//! `last_insert_rowid()` and `changes()` after a trigger runs, so the monolith's answers
//! (the id of a new post, 404 for deleting an unknown one) are unchanged.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, Transaction, params};

use crate::resource::Table;

/// The side table in the monolith's database.
pub const CHANGES: &str = "_strangler_changes";

/// Milliseconds since the epoch, as SQLite computes it inside a trigger.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

fn trigger_name(table: Table, event: &str) -> String {
    format!("_strangler_capture_{}_{event}", table.name())
}

/// Creates the change table and the resource's triggers in `src` (idempotent).
pub fn install(conn: &mut Connection, table: Table) -> rusqlite::Result<()> {
    let name = table.name();
    let res = name;
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS src.{CHANGES} (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            resource TEXT NOT NULL,
            row_id INTEGER NOT NULL,
            at_ms INTEGER NOT NULL
        );
        CREATE TRIGGER IF NOT EXISTS src.{ins} AFTER INSERT ON {name} BEGIN
            INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{res}', NEW.id, {NOW_MS});
        END;
        CREATE TRIGGER IF NOT EXISTS src.{upd} AFTER UPDATE ON {name} BEGIN
            INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{res}', NEW.id, {NOW_MS});
            INSERT INTO {CHANGES} (resource, row_id, at_ms)
                SELECT '{res}', OLD.id, {NOW_MS} WHERE OLD.id IS NOT NEW.id;
        END;
        CREATE TRIGGER IF NOT EXISTS src.{del} AFTER DELETE ON {name} BEGIN
            INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{res}', OLD.id, {NOW_MS});
        END;",
        ins = trigger_name(table, "insert"),
        upd = trigger_name(table, "update"),
        del = trigger_name(table, "delete"),
    );
    let tx = conn.transaction()?;
    tx.execute_batch(&sql)?;
    tx.commit()
}

/// Drops the resource's triggers; changes already captured stay for [`apply`].
pub fn uninstall(conn: &mut Connection, table: Table) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for event in ["insert", "update", "delete"] {
        tx.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS src.{}",
            trigger_name(table, event)
        ))?;
    }
    tx.commit()
}

/// Whether the resource's triggers are in place.
pub fn installed(conn: &Connection, table: Table) -> rusqlite::Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM src.sqlite_master WHERE type = 'trigger' AND name GLOB ?1",
        [format!("_strangler_capture_{}_*", table.name())],
        |row| row.get(0),
    )?;
    Ok(n == 3)
}

/// What one [`apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes replayed.
    pub changes: u64,
    /// Sequence number of the last one (unchanged when there was none).
    pub last_seq: i64,
    /// Largest delay between a change being made and being applied, in milliseconds.
    pub lag_ms: u64,
}

/// Replays up to `limit` changes after `after_seq` inside `tx` (a transaction holding the
/// target's write lock, see [`crate::copy::begin_on_target`]).
pub fn apply(
    tx: &Transaction<'_>,
    table: Table,
    after_seq: i64,
    limit: u32,
) -> rusqlite::Result<Applied> {
    let name = table.name();
    let mut pending = tx.prepare_cached(&format!(
        "SELECT seq, row_id, at_ms FROM src.{CHANGES} WHERE resource = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let changes: Vec<(i64, i64, i64)> = pending
        .query_map(params![name, after_seq, limit], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut upsert = tx.prepare_cached(&table.upsert_from_source("id = ?1"))?;
    let mut remove = tx.prepare_cached(&format!(
        "DELETE FROM main.{name} WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM src.{name} WHERE id = ?1)"
    ))?;
    let now = now_ms();
    let mut applied = Applied {
        last_seq: after_seq,
        ..Applied::default()
    };
    let mut done = std::collections::HashSet::new();
    for (seq, id, at_ms) in changes {
        // Replaying reads the current row, so an id needs replaying once per batch.
        if done.insert(id) {
            upsert.execute([id])?;
            remove.execute([id])?;
        }
        applied.changes += 1;
        applied.last_seq = seq;
        applied.lag_ms = applied.lag_ms.max(now.saturating_sub(at_ms).unsigned_abs());
    }
    Ok(applied)
}

/// Deletes the resource's changes up to `seq` from the side table once they are applied.
pub fn forget(conn: &Connection, table: Table, up_to_seq: i64) -> rusqlite::Result<u64> {
    let n = conn.execute(
        &format!("DELETE FROM src.{CHANGES} WHERE resource = ?1 AND seq <= ?2"),
        params![table.name(), up_to_seq],
    )?;
    Ok(n as u64)
}

/// Changes waiting after `after_seq`, and the age in milliseconds of the oldest of them.
pub fn backlog(conn: &Connection, table: Table, after_seq: i64) -> rusqlite::Result<(u64, u64)> {
    let (count, oldest): (i64, Option<i64>) = conn.query_row(
        &format!("SELECT count(*), min(at_ms) FROM src.{CHANGES} WHERE resource = ?1 AND seq > ?2"),
        params![table.name(), after_seq],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let age = oldest.map_or(0, |at| now_ms().saturating_sub(at).unsigned_abs());
    Ok((count.unsigned_abs(), age))
}

/// Drops the change table when no resource captures into it and it holds nothing.
pub fn tidy(conn: &Connection) -> rusqlite::Result<bool> {
    let triggers: i64 = conn.query_row(
        "SELECT count(*) FROM src.sqlite_master WHERE type = 'trigger' AND name GLOB '_strangler_capture_*'",
        [],
        |row| row.get(0),
    )?;
    if triggers > 0 {
        return Ok(false);
    }
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM src.sqlite_master WHERE type = 'table' AND name = ?1",
        [CHANGES],
        |row| row.get(0),
    )?;
    if exists == 0 {
        return Ok(false);
    }
    let rows: i64 = conn.query_row(&format!("SELECT count(*) FROM src.{CHANGES}"), [], |row| {
        row.get(0)
    })?;
    if rows > 0 {
        return Ok(false);
    }
    conn.execute_batch(&format!("DROP TABLE src.{CHANGES}"))?;
    Ok(true)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
