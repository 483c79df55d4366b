//! Change capture on both sides of a migration, for `migrate-data --follow` and `--reverse`,
//! on SQLite and PostgreSQL alike (any pair of engines).
//!
//! Triggers on the resource's table append the key of every inserted, updated or deleted row to
//! a side table, `_strangler_changes`, in the same database: the monolith's and the service's.
//! The follower replays one side's changes by key against that side's *current* row — copy it
//! to the other side if it exists, delete it there if not — so replaying a change twice, or out
//! of order, converges to the same state, and a crash between applying and forgetting a change
//! is harmless. A batch is read from the source's connection and written on the destination's
//! in one transaction there ([`apply`]); the changes it consumed are then forgotten on the
//! source by their sequence numbers (never by a range: on PostgreSQL a change with a lower
//! number can commit after a higher one was read, and is applied at the next poll).
//!
//! No ping-pong: the applier's own writes are not captured ([`Db::applying`]): on SQLite the
//! triggers fire only `WHEN NOT EXISTS (SELECT 1 FROM _strangler_applying)`, a table only the
//! applier's uncommitted transaction sees a row in; on PostgreSQL the trigger function returns
//! early when the transaction-local setting `strangler.applying` is `on`.
//!
//! Clients see nothing of this: the triggers only write the side table. SQLite restores
//! `last_insert_rowid()` and `changes()` after a trigger runs, and PostgreSQL's `RETURNING`
//! and row counts ignore an AFTER trigger's own inserts, so the answers of the monolith and of
//! the services (the id of a new post, 404 for deleting an unknown one) are unchanged.
//!
//! All capture SQL lives here, in both dialects.

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::conflicts::Conflict;
use crate::db::{Db, Value, marks};
use crate::pair::Pair;
use crate::resource::Table;
use crate::sync::{Direction, Side};

/// The side table of captured changes, in each database.
pub const CHANGES: &str = "_strangler_changes";

/// The marker table of SQLite databases (see [`Db::applying`]).
pub use crate::db::APPLYING;

/// Milliseconds since the epoch, as SQLite computes it inside a trigger.
const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The same in PostgreSQL (the wall clock at the statement, not the transaction's start).
const PG_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

fn trigger_name(table: &Table, event: &str) -> String {
    format!("_strangler_capture_{}_{event}", table.name())
}

/// PostgreSQL's one trigger (and its function) of the resource, as the catalogue stores it.
fn pg_trigger_name(table: &Table) -> String {
    format!("_strangler_capture_{}", table.name())
}

/// [`pg_trigger_name`] as an SQL identifier: quoted, so a resource named in mixed case keeps
/// its case and [`installed`] finds it.
fn pg_trigger_ident(table: &Table) -> String {
    crate::resource::quote(&pg_trigger_name(table))
}

/// Creates the change table (and SQLite's marker table) and the resource's triggers on the
/// table of `side` in `db` (idempotent).
///
/// Errors: the database refuses a statement (nothing is installed).
pub fn install(db: &mut Db, table: &Table, side: Side) -> anyhow::Result<()> {
    let name = table.name();
    let (on, key) = (table.sql_table(side), table.sql_key(side));
    let sql = if db.is_postgres() {
        let f = pg_trigger_ident(table);
        format!(
            "CREATE TABLE IF NOT EXISTS {CHANGES} (
                seq BIGSERIAL PRIMARY KEY,
                resource TEXT NOT NULL,
                row_id BIGINT NOT NULL,
                at_ms BIGINT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {CHANGES}_by_row ON {CHANGES} (resource, row_id);
            CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $capture$
            BEGIN
                IF current_setting('strangler.applying', true) IS DISTINCT FROM 'on' THEN
                    IF TG_OP <> 'DELETE' THEN
                        INSERT INTO {CHANGES} (resource, row_id, at_ms)
                            VALUES ('{name}', NEW.{key}, {PG_NOW_MS});
                    END IF;
                    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.{key} IS DISTINCT FROM NEW.{key}) THEN
                        INSERT INTO {CHANGES} (resource, row_id, at_ms)
                            VALUES ('{name}', OLD.{key}, {PG_NOW_MS});
                    END IF;
                END IF;
                RETURN NULL;
            END
            $capture$;
            DROP TRIGGER IF EXISTS {f} ON {on};
            CREATE TRIGGER {f} AFTER INSERT OR UPDATE OR DELETE ON {on}
                FOR EACH ROW EXECUTE FUNCTION {f}();"
        )
    } else {
        let skip = format!("WHEN NOT EXISTS (SELECT 1 FROM {APPLYING})");
        format!(
            "CREATE TABLE IF NOT EXISTS main.{CHANGES} (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                resource TEXT NOT NULL,
                row_id INTEGER NOT NULL,
                at_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS main.{CHANGES}_by_row ON {CHANGES} (resource, row_id);
            CREATE TABLE IF NOT EXISTS main.{APPLYING} (pid INTEGER);
            CREATE TRIGGER IF NOT EXISTS main.{ins} AFTER INSERT ON {on} {skip} BEGIN
                INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{name}', NEW.{key}, {SQLITE_NOW_MS});
            END;
            CREATE TRIGGER IF NOT EXISTS main.{upd} AFTER UPDATE ON {on} {skip} BEGIN
                INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{name}', NEW.{key}, {SQLITE_NOW_MS});
                INSERT INTO {CHANGES} (resource, row_id, at_ms)
                    SELECT '{name}', OLD.{key}, {SQLITE_NOW_MS} WHERE OLD.{key} IS NOT NEW.{key};
            END;
            CREATE TRIGGER IF NOT EXISTS main.{del} AFTER DELETE ON {on} {skip} BEGIN
                INSERT INTO {CHANGES} (resource, row_id, at_ms) VALUES ('{name}', OLD.{key}, {SQLITE_NOW_MS});
            END;",
            ins = trigger_name(table, "insert"),
            upd = trigger_name(table, "update"),
            del = trigger_name(table, "delete"),
        )
    };
    // A write transaction: on SQLite it takes the write lock first, so a busy monolith is a
    // wait, not a stale snapshot failing at the CREATE TRIGGER.
    db.transaction(true, |db| db.batch(&sql))
}

/// Drops the resource's triggers on the table of `side` in `db`, in its own transaction;
/// changes already captured stay for [`apply`].
///
/// Errors: the database refuses a statement.
pub fn uninstall(db: &mut Db, table: &Table, side: Side) -> anyhow::Result<()> {
    db.transaction(true, |db| uninstall_in(db, table, side))
}

/// [`uninstall`] inside the caller's transaction.
///
/// Errors: the database refuses a statement.
pub fn uninstall_in(db: &mut Db, table: &Table, side: Side) -> anyhow::Result<()> {
    let sql = if db.is_postgres() {
        let f = pg_trigger_ident(table);
        format!(
            "DROP TRIGGER IF EXISTS {f} ON {on}; DROP FUNCTION IF EXISTS {f}();",
            on = table.sql_table(side)
        )
    } else {
        ["insert", "update", "delete"]
            .map(|event| {
                format!(
                    "DROP TRIGGER IF EXISTS main.{};",
                    trigger_name(table, event)
                )
            })
            .concat()
    };
    db.batch(&sql)
}

/// Whether the resource's triggers are in place in `db`.
///
/// Errors: the catalogue cannot be read.
pub fn installed(db: &mut Db, table: &Table) -> anyhow::Result<bool> {
    if db.is_postgres() {
        let n = db.query_i64(
            "SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgname = ?1 AND NOT tgisinternal",
            &[Value::Text(pg_trigger_name(table))],
        )?;
        Ok(n >= Some(1))
    } else {
        // By exact names: a pattern would also count another resource's triggers (`posts`
        // and `posts_tags` in one monolith).
        let n = db.query_i64(
            "SELECT count(*) FROM main.sqlite_master WHERE type = 'trigger' \
             AND name IN (?1, ?2, ?3)",
            &["insert", "update", "delete"].map(|event| Value::Text(trigger_name(table, event))),
        )?;
        Ok(n == Some(3))
    }
}

/// One captured change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number in the change table.
    pub seq: i64,
    /// The key of the row that changed.
    pub row_id: i64,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

/// The resource's oldest `limit` captured changes in `db`, in sequence order; none when `db`
/// has no change table.
///
/// Errors: the change table cannot be read.
pub fn pending(db: &mut Db, table: &Table, limit: u32) -> anyhow::Result<Vec<Change>> {
    if !db.has_table(CHANGES)? {
        return Ok(Vec::new());
    }
    let rows = db.query(
        &format!(
            "SELECT seq, row_id, at_ms FROM {CHANGES} WHERE resource = ?1 ORDER BY seq LIMIT ?2"
        ),
        &[
            Value::Text(table.name().to_string()),
            Value::Integer(limit.into()),
        ],
    )?;
    rows.into_iter()
        .map(|r| match r.as_slice() {
            [
                Value::Integer(seq),
                Value::Integer(row_id),
                Value::Integer(at_ms),
            ] => Ok(Change {
                seq: *seq,
                row_id: *row_id,
                at_ms: *at_ms,
            }),
            other => anyhow::bail!("unexpected row in {CHANGES}: {other:?}"),
        })
        .collect()
}

/// What one [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes consumed (applied, or skipped as conflicts).
    pub changes: u64,
    /// Their sequence numbers on the source side, for [`forget`].
    pub seqs: Vec<i64>,
    /// Largest delay between a change being made and being applied, in milliseconds.
    pub lag_ms: u64,
    /// Changes not applied because the destination has its own unapplied change of the same
    /// key; record them with [`crate::conflicts::record`] before [`forget`]ting the batch.
    pub conflicts: Vec<Conflict>,
}

/// Replays up to `limit` captured changes of `direction`'s source side on its destination, in
/// one transaction there marked as the applier's. Does not forget them: call
/// [`crate::conflicts::record`] with the conflicts, then [`forget`] with the sequence numbers.
///
/// A change for key X is not applied when the destination's change table holds a change for X
/// too (a write made directly on the destination that nobody carried yet): overwriting it would
/// lose it silently. It becomes a [`Conflict`] carrying both rows instead. On PostgreSQL the
/// destination table is locked against writes (`SHARE ROW EXCLUSIVE`; reads go on) for the
/// transaction, so no such write can land between that check and the apply; on SQLite the
/// transaction's write lock does the same.
///
/// Errors: either database refuses a statement (the destination is left as it was).
pub fn apply(
    pair: &mut Pair,
    table: &Table,
    direction: Direction,
    limit: u32,
) -> anyhow::Result<Applied> {
    let (source, dest) = (direction.source(), direction.dest());
    let changes = pending(pair.db(source), table, limit)?;
    if changes.is_empty() {
        return Ok(Applied::default());
    }
    // Replaying reads the current row, so a key needs replaying once per batch; the first
    // change of each key names it in a conflict.
    let mut first_seq: HashMap<i64, i64> = HashMap::new();
    for c in &changes {
        first_seq.entry(c.row_id).or_insert(c.seq);
    }
    let mut ids: Vec<i64> = first_seq.keys().copied().collect();
    ids.sort_unstable();
    let current: HashMap<i64, Vec<Value>> = pair
        .db(source)
        .read_keys(table, source, &ids)?
        .into_iter()
        .filter_map(|row| key_of(&row).map(|k| (k, row)))
        .collect();
    let now = now_ms();
    let conflicts = pair.db(dest).applying(|db| {
        if db.is_postgres() {
            db.batch(&format!(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                table.sql_table(dest)
            ))?;
        }
        let theirs = captured_among(db, table, &ids)?;
        let mut conflicts = Vec::new();
        let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
        for id in &ids {
            if theirs.contains(id) {
                conflicts.push(Conflict {
                    resource: table.name().to_string(),
                    row_id: *id,
                    source,
                    source_seq: first_seq[id],
                    at_ms: now,
                    source_row: current.get(id).map(|row| row_json(table, row)),
                    dest_row: row_of(db, dest, table, *id)?.map(|row| row_json(table, &row)),
                });
            } else if let Some(row) = current.get(id) {
                upserts.push(row.clone());
            } else {
                deletes.push(*id);
            }
        }
        write_ordered(db, table, dest, &deletes, &upserts)?;
        Ok(conflicts)
    })?;
    Ok(Applied {
        changes: changes.len() as u64,
        seqs: changes.iter().map(|c| c.seq).collect(),
        lag_ms: changes
            .iter()
            .map(|c| now.saturating_sub(c.at_ms).unsigned_abs())
            .max()
            .unwrap_or(0),
        conflicts,
    })
}

/// Inside the applier's transaction: deletes `deletes` and upserts `upserts` on `side`.
/// Deletes go first: a row deleted (or moved to a new key) may free a unique value that a row
/// upserted in the same batch takes, as it did on the source. Where foreign keys are checked
/// (PostgreSQL as a plain role), a child re-pointed away from a parent deleted in the same
/// batch needs upserts first: that order is tried when the first is refused.
///
/// Errors: both orders are refused (the first order's error, naming the second's).
fn write_ordered(
    db: &mut Db,
    table: &Table,
    side: Side,
    deletes: &[i64],
    upserts: &[Vec<Value>],
) -> anyhow::Result<()> {
    let write = |db: &mut Db, deletes_first: bool| -> anyhow::Result<()> {
        if deletes_first {
            db.delete_keys(table, side, deletes)?;
        }
        if !upserts.is_empty() {
            db.upsert_rows(table, side, upserts)?;
        }
        if !deletes_first {
            db.delete_keys(table, side, deletes)?;
        }
        Ok(())
    };
    if deletes.is_empty() || upserts.is_empty() {
        return write(db, true);
    }
    db.batch("SAVEPOINT strangler_apply")?;
    match write(db, true) {
        Ok(()) => db.batch("RELEASE SAVEPOINT strangler_apply"),
        Err(first) => {
            db.batch("ROLLBACK TO SAVEPOINT strangler_apply")?;
            write(db, false).map_err(|second| {
                first.context(format!(
                    "applying deletes before upserts was refused, and upserts before deletes \
                     too ({second:#})"
                ))
            })?;
            db.batch("RELEASE SAVEPOINT strangler_apply")
        }
    }
}

/// Which of `ids` have a captured, unapplied change in `db`.
fn captured_among(db: &mut Db, table: &Table, ids: &[i64]) -> anyhow::Result<HashSet<i64>> {
    let mut out = HashSet::new();
    if !db.has_table(CHANGES)? {
        return Ok(out);
    }
    for chunk in ids.chunks(500) {
        let mut params = vec![Value::Text(table.name().to_string())];
        params.extend(chunk.iter().map(|id| Value::Integer(*id)));
        let sql = format!(
            "SELECT DISTINCT row_id FROM {CHANGES} WHERE resource = ?1 AND row_id IN ({})",
            marks(2, chunk.len())
        );
        for row in db.query(&sql, &params)? {
            if let Some(Value::Integer(id)) = row.first() {
                out.insert(*id);
            }
        }
    }
    Ok(out)
}

fn key_of(row: &[Value]) -> Option<i64> {
    match row.first() {
        Some(Value::Integer(k)) => Some(*k),
        _ => None,
    }
}

/// The row keyed `id` of `table` on `side`, `None` when there is none.
///
/// Errors: the table cannot be read.
pub fn row_of(
    db: &mut Db,
    side: Side,
    table: &Table,
    id: i64,
) -> anyhow::Result<Option<Vec<Value>>> {
    Ok(db.read_keys(table, side, &[id])?.into_iter().next())
}

/// A row (moving columns, key first) as a JSON object keyed by the service's column names, so
/// both sides' versions of a row compare and print alike.
pub fn row_json(table: &Table, row: &[Value]) -> String {
    let mut object = serde_json::Map::new();
    for (column, value) in table.columns_on(Side::Service).zip(row) {
        let value = match value {
            Value::Null => serde_json::Value::Null,
            Value::Integer(v) => (*v).into(),
            Value::Real(v) => (*v).into(),
            Value::Text(v) => v.clone().into(),
            Value::Blob(v) => String::from_utf8_lossy(v).into_owned().into(),
        };
        object.insert(column.to_string(), value);
    }
    serde_json::Value::Object(object).to_string()
}

/// Deletes the resource's changes numbered `seqs` from `db`'s change table once they are
/// applied; returns how many were there.
///
/// Errors: the database refuses the statement.
pub fn forget(db: &mut Db, table: &Table, seqs: &[i64]) -> anyhow::Result<u64> {
    let mut n = 0;
    for chunk in seqs.chunks(500) {
        let mut params = vec![Value::Text(table.name().to_string())];
        params.extend(chunk.iter().map(|s| Value::Integer(*s)));
        n += db.exec(
            &format!(
                "DELETE FROM {CHANGES} WHERE resource = ?1 AND seq IN ({})",
                marks(2, chunk.len())
            ),
            &params,
        )?;
    }
    Ok(n)
}

/// Deletes every captured change of the resource in `db`; returns how many there were.
///
/// Errors: the database refuses the statement.
pub fn discard(db: &mut Db, table: &Table) -> anyhow::Result<u64> {
    if !db.has_table(CHANGES)? {
        return Ok(0);
    }
    db.exec(
        &format!("DELETE FROM {CHANGES} WHERE resource = ?1"),
        &[Value::Text(table.name().to_string())],
    )
}

/// Deletes the captured changes of the resource's rows keyed `ids` in `db` (rows made equal on
/// both sides by hand: their changes carry nothing).
///
/// Errors: the database refuses the statement.
pub fn discard_rows(db: &mut Db, table: &Table, ids: &[i64]) -> anyhow::Result<()> {
    if !db.has_table(CHANGES)? {
        return Ok(());
    }
    for chunk in ids.chunks(500) {
        let mut params = vec![Value::Text(table.name().to_string())];
        params.extend(chunk.iter().map(|id| Value::Integer(*id)));
        db.exec(
            &format!(
                "DELETE FROM {CHANGES} WHERE resource = ?1 AND row_id IN ({})",
                marks(2, chunk.len())
            ),
            &params,
        )?;
    }
    Ok(())
}

/// Changes of the resource waiting in `db`, and the age in milliseconds of the oldest of
/// them; `(0, 0)` when `db` has no change table.
///
/// Errors: the change table cannot be read.
pub fn backlog(db: &mut Db, table: &Table) -> anyhow::Result<(u64, u64)> {
    if !db.has_table(CHANGES)? {
        return Ok((0, 0));
    }
    let row = db.query(
        &format!("SELECT count(*), min(at_ms) FROM {CHANGES} WHERE resource = ?1"),
        &[Value::Text(table.name().to_string())],
    )?;
    let (count, oldest) = match row.first().map(Vec::as_slice) {
        Some([Value::Integer(n), Value::Integer(at)]) => (*n, Some(*at)),
        Some([Value::Integer(n), _]) => (*n, None),
        _ => (0, None),
    };
    let age = oldest.map_or(0, |at| now_ms().saturating_sub(at).unsigned_abs());
    Ok((count.unsigned_abs(), age))
}

/// The keys of the resource's captured, unapplied changes in `db` (at most `limit`).
///
/// Errors: the change table cannot be read.
pub fn pending_ids(db: &mut Db, table: &Table, limit: u32) -> anyhow::Result<Vec<i64>> {
    if !db.has_table(CHANGES)? {
        return Ok(Vec::new());
    }
    let rows = db.query(
        &format!(
            "SELECT DISTINCT row_id FROM {CHANGES} WHERE resource = ?1 ORDER BY row_id LIMIT ?2"
        ),
        &[
            Value::Text(table.name().to_string()),
            Value::Integer(limit.into()),
        ],
    )?;
    Ok(rows.iter().filter_map(|r| key_of(r)).collect())
}

/// On SQLite, a counter that changes whenever another connection commits to `db`: a cheap way
/// for a fast-polling follower to skip looking at an unchanged change table. `None` on
/// PostgreSQL (the follower looks every poll).
///
/// Errors: the pragma cannot be read.
pub fn data_version(db: &mut Db) -> anyhow::Result<Option<i64>> {
    if db.is_postgres() {
        return Ok(None);
    }
    db.query_i64("PRAGMA data_version", &[])
}

/// Drops `db`'s change table (and marker table) when no resource captures into them any more
/// and no change is left; returns whether it did.
///
/// Errors: the database refuses a statement.
pub fn tidy(db: &mut Db) -> anyhow::Result<bool> {
    let triggers = if db.is_postgres() {
        db.query_i64(
            "SELECT count(*) FROM pg_catalog.pg_trigger \
             WHERE starts_with(tgname::text, '_strangler_capture_') AND NOT tgisinternal",
            &[],
        )?
    } else {
        db.query_i64(
            "SELECT count(*) FROM main.sqlite_master \
             WHERE type = 'trigger' AND name GLOB '_strangler_capture_*'",
            &[],
        )?
    };
    if triggers > Some(0) {
        return Ok(false);
    }
    if db.has_table(CHANGES)? {
        if db.query_i64(&format!("SELECT count(*) FROM {CHANGES}"), &[])? > Some(0) {
            return Ok(false);
        }
        db.batch(&format!("DROP TABLE {CHANGES}"))?;
    }
    if !db.is_postgres() && db.has_table(APPLYING)? {
        db.batch(&format!("DROP TABLE {APPLYING}"))?;
    }
    Ok(true)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
