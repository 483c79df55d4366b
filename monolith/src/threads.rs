//! The threads resource: rows, queries and the validation of a new thread.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::input::{Fields, InputError};

/// A thread as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    /// Assigned by the database.
    pub id: i64,
    /// Never empty.
    pub title: String,
    /// Id of the user who opened it.
    #[serde(rename = "createdBy")]
    pub created_by: i64,
}

/// A validated `POST /api/threads` body; `created_by` is not yet known to exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewThread {
    /// Required, not blank.
    pub title: String,
    /// Required user id.
    pub created_by: i64,
}

impl NewThread {
    /// The client's name of the field holding the referenced user.
    pub const CREATED_BY: &str = "createdBy";

    /// Validates a write body.
    pub fn from_fields(fields: &Fields) -> Result<NewThread, InputError> {
        Ok(NewThread {
            title: fields.text("title")?,
            created_by: fields.integer(Self::CREATED_BY)?,
        })
    }
}

const COLUMNS: &str = "SELECT id, title, created_by FROM threads";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Thread> {
    Ok(Thread {
        id: row.get(0)?,
        title: row.get(1)?,
        created_by: row.get(2)?,
    })
}

/// Every thread, ordered by id.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Thread>> {
    let mut stmt = conn.prepare_cached(&format!("{COLUMNS} ORDER BY id"))?;
    stmt.query_map([], from_row)?.collect()
}

/// The thread with `id`, if any.
pub fn find(conn: &Connection, id: i64) -> rusqlite::Result<Option<Thread>> {
    let mut stmt = conn.prepare_cached(&format!("{COLUMNS} WHERE id = ?1"))?;
    stmt.query_row([id], from_row).optional()
}

/// Inserts a new thread and returns it with its id.
pub fn insert(conn: &Connection, new: &NewThread) -> rusqlite::Result<Thread> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO threads (title, created_by) VALUES (?1, ?2)")?;
    stmt.execute(params![new.title, new.created_by])?;
    Ok(Thread {
        id: conn.last_insert_rowid(),
        title: new.title.clone(),
        created_by: new.created_by,
    })
}

/// Inserts a thread keeping its id (seeding, migration).
pub fn insert_with_id(conn: &Connection, thread: &Thread) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO threads (id, title, created_by) VALUES (?1, ?2, ?3)")?;
    stmt.execute(params![thread.id, thread.title, thread.created_by])?;
    Ok(())
}
