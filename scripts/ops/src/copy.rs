//! The batched copy of one resource's table from the monolith's database (attached as `src`)
//! into the service's (`main`), resumable through a checkpoint kept in the service's database.
//!
//! Each batch is one transaction that upserts a range of ids, removes rows of that range the
//! monolith no longer has, and records the range's last id; a copy killed at any instant
//! leaves either the whole batch and its checkpoint or neither, and the next run starts after
//! the checkpoint. A completed copy clears the checkpoint, so the next run syncs every row again.

use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension as _, Transaction, TransactionBehavior, params};

use crate::capture;
use crate::resource::Table;
use crate::signals::Stop;
use crate::sync::Side;

/// The checkpoint table in the service's database: one row per resource.
pub const CHECKPOINT: &str = "_strangler_migration";

/// How to copy.
#[derive(Clone, Copy, Debug)]
pub struct CopyOptions {
    /// Rows per transaction.
    pub batch: u32,
    /// Pause after each batch (lets a test catch a copy in the middle).
    pub pause: Duration,
}

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// The last id an interrupted earlier run had copied, when this run continued it.
    pub resumed_after: Option<i64>,
    /// Rows of the source this run went through.
    pub scanned: u64,
    /// Rows inserted or changed in the target (identical rows are left alone).
    pub written: u64,
    /// Rows removed from the target because the source no longer has them.
    pub removed: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Whether a stop request ended the copy before the last row (the checkpoint stays).
    pub stopped: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// Creates the checkpoint table and this resource's row in it.
pub fn ensure_checkpoint(conn: &Connection, table: Table) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS main.{CHECKPOINT} (
            resource TEXT PRIMARY KEY,
            copied_up_to INTEGER,
            updated_at TEXT NOT NULL DEFAULT (datetime('now'))
        );"
    ))?;
    conn.execute(
        &format!("INSERT INTO main.{CHECKPOINT} (resource) VALUES (?1) ON CONFLICT DO NOTHING"),
        [table.name()],
    )?;
    Ok(())
}

/// The last id copied by a run that did not finish, if one did not.
pub fn interrupted_at(conn: &Connection, table: Table) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        &format!("SELECT copied_up_to FROM main.{CHECKPOINT} WHERE resource = ?1"),
        [table.name()],
        |row| row.get(0),
    )
    .optional()
    .map(Option::flatten)
}

/// Starts a transaction holding the target's write lock and no lock on the source yet.
///
/// `BEGIN IMMEDIATE` would take write locks on every attached database, the monolith's
/// included, and stall its writers; a deferred transaction whose first statement writes the
/// checkpoint takes only the target's, and later reads of `src` take a read snapshot. When the
/// service captures changes, the copy's writes are marked as the applier's (not captured);
/// finish with [`commit_on_target`].
pub fn begin_on_target(conn: &mut Connection, table: Table) -> rusqlite::Result<Transaction<'_>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    tx.execute(
        &format!("UPDATE main.{CHECKPOINT} SET updated_at = datetime('now') WHERE resource = ?1"),
        [table.name()],
    )?;
    capture::mark(&tx, Side::Service)?;
    Ok(tx)
}

/// Commits a transaction from [`begin_on_target`].
pub fn commit_on_target(tx: Transaction<'_>) -> rusqlite::Result<()> {
    capture::commit(tx, Side::Service)
}

/// Copies every row of `table` from `src` to `main`, continuing an interrupted run.
pub fn run(
    conn: &mut Connection,
    table: Table,
    options: CopyOptions,
    progress: &mut dyn FnMut(u64, u64),
    stop: &Stop,
) -> rusqlite::Result<Copied> {
    let started = Instant::now();
    ensure_checkpoint(conn, table)?;
    let resumed_after = interrupted_at(conn, table)?;
    // Ids are any i64; `from` is the first id not yet copied, `None` once past i64::MAX.
    let mut from = match resumed_after {
        Some(id) => id.checked_add(1),
        None => Some(i64::MIN),
    };
    let mut copied = Copied {
        resumed_after,
        ..Copied::default()
    };
    let name = table.name();
    let total: i64 = match from {
        Some(from) => conn.query_row(
            &format!("SELECT count(*) FROM src.{name} WHERE id >= ?1"),
            [from],
            |row| row.get(0),
        )?,
        None => 0,
    };
    let total = total.unsigned_abs();
    progress(0, total);
    let last_of_batch = format!(
        "SELECT max(id), count(*) FROM (SELECT id FROM src.{name} WHERE id >= ?1 ORDER BY id LIMIT ?2)"
    );
    let upsert = table.upsert_from_source("id >= ?1 AND id <= ?2");
    let remove_gone = format!(
        "DELETE FROM main.{name} WHERE id >= ?1 AND id <= ?2 \
         AND NOT EXISTS (SELECT 1 FROM src.{name} AS s WHERE s.id = main.{name}.id)"
    );
    let save = format!("UPDATE main.{CHECKPOINT} SET copied_up_to = ?2 WHERE resource = ?1");
    loop {
        if stop.is_set() {
            copied.stopped = true;
            break;
        }
        let tx = begin_on_target(conn, table)?;
        let batch = match from {
            Some(from) => {
                let (last, rows): (Option<i64>, i64) =
                    tx.query_row(&last_of_batch, params![from, options.batch], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?;
                last.map(|last| (from, last, rows.unsigned_abs()))
            }
            None => None,
        };
        let Some((first, last, rows)) = batch else {
            // Past the source's last row: whatever the target holds beyond it is gone.
            if let Some(from) = from {
                copied.removed +=
                    tx.execute(&format!("DELETE FROM main.{name} WHERE id >= ?1"), [from])? as u64;
            }
            tx.execute(
                &format!("UPDATE main.{CHECKPOINT} SET copied_up_to = NULL WHERE resource = ?1"),
                [name],
            )?;
            commit_on_target(tx)?;
            copied.batches += 1;
            break;
        };
        copied.written += tx.prepare_cached(&upsert)?.execute(params![first, last])? as u64;
        copied.removed += tx
            .prepare_cached(&remove_gone)?
            .execute(params![first, last])? as u64;
        tx.prepare_cached(&save)?.execute(params![name, last])?;
        commit_on_target(tx)?;
        copied.batches += 1;
        copied.scanned += rows;
        progress(rows, total);
        from = last.checked_add(1);
        if !options.pause.is_zero() {
            std::thread::sleep(options.pause);
        }
    }
    copied.elapsed = started.elapsed();
    Ok(copied)
}
