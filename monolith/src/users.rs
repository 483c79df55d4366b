//! The users resource: rows, queries and the validation of a new user.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::input::{Fields, InputError};

/// A user as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Assigned by the database.
    pub id: i64,
    /// Handle; never empty.
    pub username: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub bio: String,
}

/// A validated `POST /api/users` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    /// Required, not blank.
    pub username: String,
    /// Optional, empty when absent.
    pub name: String,
    /// Optional, empty when absent.
    pub bio: String,
}

impl NewUser {
    /// Validates a write body.
    pub fn from_fields(fields: &Fields) -> Result<NewUser, InputError> {
        Ok(NewUser {
            username: fields.text("username")?,
            name: fields.optional_text("name")?,
            bio: fields.optional_text("bio")?,
        })
    }
}

const COLUMNS: &str = "SELECT id, username, name, bio FROM users";

fn from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        name: row.get(2)?,
        bio: row.get(3)?,
    })
}

/// Every user, ordered by id.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<User>> {
    let mut stmt = conn.prepare_cached(&format!("{COLUMNS} ORDER BY id"))?;
    stmt.query_map([], from_row)?.collect()
}

/// The user with `id`, if any.
pub fn find(conn: &Connection, id: i64) -> rusqlite::Result<Option<User>> {
    let mut stmt = conn.prepare_cached(&format!("{COLUMNS} WHERE id = ?1"))?;
    stmt.query_row([id], from_row).optional()
}

/// Inserts a new user and returns it with its id.
pub fn insert(conn: &Connection, new: &NewUser) -> rusqlite::Result<User> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO users (username, name, bio) VALUES (?1, ?2, ?3)")?;
    stmt.execute(params![new.username, new.name, new.bio])?;
    Ok(User {
        id: conn.last_insert_rowid(),
        username: new.username.clone(),
        name: new.name.clone(),
        bio: new.bio.clone(),
    })
}

/// Inserts a user keeping its id (seeding, migration).
pub fn insert_with_id(conn: &Connection, user: &User) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO users (id, username, name, bio) VALUES (?1, ?2, ?3, ?4)")?;
    stmt.execute(params![user.id, user.username, user.name, user.bio])?;
    Ok(())
}
