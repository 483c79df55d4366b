//! The threads resource: rows, queries and the validation of a new thread.

use serde::{Deserialize, Serialize};

use crate::input::{Fields, InputError};
use crate::sql::{Param, Row, Sql};

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

fn from_row<E>(row: &dyn Row<Error = E>) -> Result<Thread, E> {
    Ok(Thread {
        id: row.int(0)?,
        title: row.text(1)?,
        created_by: row.int(2)?,
    })
}

/// Every thread, ordered by id.
pub fn list<C: Sql + ?Sized>(conn: &C) -> Result<Vec<Thread>, C::Error> {
    conn.query(&format!("{COLUMNS} ORDER BY id"), &[], from_row)
}

/// The thread with `id`, if any.
pub fn find<C: Sql + ?Sized>(conn: &C, id: i64) -> Result<Option<Thread>, C::Error> {
    conn.first(
        &format!("{COLUMNS} WHERE id = $1"),
        &[Param::Int(id)],
        from_row,
    )
}

/// Inserts a new thread and returns it with the id the database assigned.
pub fn insert<C: Sql + ?Sized>(conn: &C, new: &NewThread) -> Result<Thread, C::Error> {
    let ids = conn.query(
        "INSERT INTO threads (title, created_by) VALUES ($1, $2) RETURNING id",
        &[Param::Text(&new.title), Param::Int(new.created_by)],
        |row| row.int(0),
    )?;
    Ok(Thread {
        id: ids[0],
        title: new.title.clone(),
        created_by: new.created_by,
    })
}

/// Inserts a thread keeping its id (seeding, migration).
pub fn insert_with_id<C: Sql + ?Sized>(conn: &C, thread: &Thread) -> Result<(), C::Error> {
    conn.execute(
        "INSERT INTO threads (id, title, created_by) VALUES ($1, $2, $3)",
        &[
            Param::Int(thread.id),
            Param::Text(&thread.title),
            Param::Int(thread.created_by),
        ],
    )?;
    Ok(())
}
