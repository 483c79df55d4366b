//! The batched copy of one resource's table from its source database into its target, in key
//! order, resumable through a checkpoint kept in the target database; any pair of engines
//! (see [`crate::db`]).
//!
//! Each batch is one transaction that upserts a range of ids, removes rows of that range the
//! monolith no longer has, and records the range's last id; a copy killed at any instant
//! leaves either the whole batch and its checkpoint or neither, and the next run starts after
//! the checkpoint. A completed copy clears the checkpoint, so the next run syncs every row again.

use std::time::{Duration, Instant};

use crate::db::Db;
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

/// Copies every row of `table` from `source` into `target`, continuing an interrupted run.
///
/// Errors: either database refuses a statement; the batches committed so far stay, with their
/// checkpoint.
pub fn run(
    source: &mut Db,
    target: &mut Db,
    table: &Table,
    options: CopyOptions,
    progress: &mut dyn FnMut(u64, u64),
    stop: &Stop,
) -> anyhow::Result<Copied> {
    let started = Instant::now();
    target.ensure_checkpoint(table.name())?;
    let resumed_after = target.interrupted_at(table.name())?;
    // Keys are any i64; `from` is the first key not yet copied, `None` once past i64::MAX.
    let mut from = match resumed_after {
        Some(id) => id.checked_add(1),
        None => Some(i64::MIN),
    };
    let mut copied = Copied {
        resumed_after,
        ..Copied::default()
    };
    let total = match from {
        Some(from) => source.count_from(table, Side::Monolith, from)?,
        None => 0,
    };
    progress(0, total);
    loop {
        if stop.is_set() {
            copied.stopped = true;
            break;
        }
        let rows = match from {
            Some(from) => source.read_batch(table, Side::Monolith, from, options.batch)?,
            None => Vec::new(),
        };
        let Some(last) = rows.last().and_then(|r| key_of(r)) else {
            // Past the source's last row: whatever the target holds beyond it is gone.
            copied.removed += target.finish_copy(table, Side::Service, from)?;
            copied.batches += 1;
            break;
        };
        let first = from.unwrap_or(i64::MIN);
        let w = target.write_batch(table, Side::Service, first, last, &rows)?;
        copied.written += w.written;
        copied.removed += w.removed;
        copied.batches += 1;
        copied.scanned += rows.len() as u64;
        progress(rows.len() as u64, total);
        from = last.checked_add(1);
        if !options.pause.is_zero() {
            std::thread::sleep(options.pause);
        }
    }
    copied.elapsed = started.elapsed();
    Ok(copied)
}

fn key_of(row: &[crate::db::Value]) -> Option<i64> {
    match row.first() {
        Some(crate::db::Value::Integer(k)) => Some(*k),
        _ => None,
    }
}
