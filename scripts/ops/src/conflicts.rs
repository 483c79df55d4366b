//! Conflicts: changes the follower refused to apply because the destination had its own,
//! not yet carried change of the same row. Kept in `_strangler_conflicts` in the service's
//! database until an operator resolves them; verification fails while any stands.

use rusqlite::{Connection, params};

use crate::resource::Table;
use crate::sync::Side;

/// The conflicts table in the service's database.
pub const CONFLICTS: &str = "_strangler_conflicts";

/// One change that was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The resource (table) name.
    pub resource: String,
    /// The row's id.
    pub row_id: i64,
    /// The side whose change was skipped; the other side's row was kept.
    pub source: Side,
    /// The skipped change's sequence number in the source's change table.
    pub source_seq: i64,
    /// When it was detected, ms since the epoch.
    pub at_ms: i64,
    /// The source's row as JSON (`None`: the source deleted it).
    pub source_row: Option<String>,
    /// The destination's row as JSON, the one kept (`None`: the destination deleted it).
    pub dest_row: Option<String>,
}

impl Conflict {
    /// One line for an operator.
    pub fn describe(&self) -> String {
        let (source, dest) = (self.source, self.source.other());
        format!(
            "conflict on {} id {}: the {} changed it while the {} had its own change not yet \
             carried over; kept the {}'s row {}, skipped the {}'s {}",
            self.resource,
            self.row_id,
            source.label(),
            dest.label(),
            dest.label(),
            self.dest_row.as_deref().unwrap_or("(deleted)"),
            source.label(),
            self.source_row.as_deref().unwrap_or("(deleted)"),
        )
    }
}

/// Creates the table (in `main`, the service's database) if missing.
pub fn ensure(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS main.{CONFLICTS} (
            id INTEGER PRIMARY KEY,
            resource TEXT NOT NULL,
            row_id INTEGER NOT NULL,
            source TEXT NOT NULL,
            source_seq INTEGER NOT NULL,
            at_ms INTEGER NOT NULL,
            source_row TEXT,
            dest_row TEXT,
            resolved_at_ms INTEGER,
            UNIQUE (resource, source, source_seq)
        );"
    ))
}

fn table_exists(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
        [CONFLICTS],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Records conflicts; recording the same skipped change twice (a follower restarted after a
/// crash between recording and forgetting) keeps one.
pub fn record(conn: &Connection, conflicts: &[Conflict]) -> rusqlite::Result<()> {
    if conflicts.is_empty() {
        return Ok(());
    }
    ensure(conn)?;
    let mut insert = conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO main.{CONFLICTS}
            (resource, row_id, source, source_seq, at_ms, source_row, dest_row)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?;
    for c in conflicts {
        insert.execute(params![
            c.resource,
            c.row_id,
            c.source.label(),
            c.source_seq,
            c.at_ms,
            c.source_row,
            c.dest_row
        ])?;
    }
    Ok(())
}

/// The resource's unresolved conflicts, oldest first.
pub fn unresolved(conn: &Connection, table: &Table) -> rusqlite::Result<Vec<Conflict>> {
    if !table_exists(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT resource, row_id, source, source_seq, at_ms, source_row, dest_row
         FROM main.{CONFLICTS} WHERE resource = ?1 AND resolved_at_ms IS NULL ORDER BY id"
    ))?;
    stmt.query_map([table.name()], |row| {
        let source: String = row.get(2)?;
        Ok(Conflict {
            resource: row.get(0)?,
            row_id: row.get(1)?,
            source: if source == Side::Service.label() {
                Side::Service
            } else {
                Side::Monolith
            },
            source_seq: row.get(3)?,
            at_ms: row.get(4)?,
            source_row: row.get(5)?,
            dest_row: row.get(6)?,
        })
    })?
    .collect()
}

/// How many of the resource's conflicts are unresolved.
pub fn count(conn: &Connection, table: &Table) -> rusqlite::Result<u64> {
    if !table_exists(conn)? {
        return Ok(0);
    }
    conn.query_row(
        &format!(
            "SELECT count(*) FROM main.{CONFLICTS} WHERE resource = ?1 AND resolved_at_ms IS NULL"
        ),
        [table.name()],
        |row| row.get::<_, i64>(0),
    )
    .map(i64::unsigned_abs)
}

/// Marks every unresolved conflict of the resource resolved (the operator has repaired the rows
/// on the writing side, from where the follower carries them); returns how many.
pub fn resolve_all(conn: &Connection, table: &Table) -> rusqlite::Result<u64> {
    if !table_exists(conn)? {
        return Ok(0);
    }
    conn.execute(
        &format!(
            "UPDATE main.{CONFLICTS} SET resolved_at_ms = ?2 WHERE resource = ?1 AND resolved_at_ms IS NULL"
        ),
        params![table.name(), crate::capture::now_ms()],
    )
    .map(|n| n as u64)
}

/// Drops the table when it holds no conflict of any resource (resolved ones included, which
/// are kept as a record until then); returns whether it did.
pub fn drop_if_empty(conn: &Connection) -> rusqlite::Result<bool> {
    if !table_exists(conn)? {
        return Ok(false);
    }
    let unresolved: i64 = conn.query_row(
        &format!("SELECT count(*) FROM main.{CONFLICTS} WHERE resolved_at_ms IS NULL"),
        [],
        |row| row.get(0),
    )?;
    if unresolved > 0 {
        return Ok(false);
    }
    conn.execute_batch(&format!("DROP TABLE main.{CONFLICTS}"))?;
    Ok(true)
}
