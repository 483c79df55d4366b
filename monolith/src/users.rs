//! The users resource: rows, queries and the validation of a new user.

use serde::{Deserialize, Serialize};

use crate::input::{Fields, InputError};
use crate::sql::{Param, Row, Sql};

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

fn from_row<E>(row: &dyn Row<Error = E>) -> Result<User, E> {
    Ok(User {
        id: row.int(0)?,
        username: row.text(1)?,
        name: row.text(2)?,
        bio: row.text(3)?,
    })
}

/// Every user, ordered by id.
pub fn list<C: Sql + ?Sized>(conn: &C) -> Result<Vec<User>, C::Error> {
    conn.query(&format!("{COLUMNS} ORDER BY id"), &[], from_row)
}

/// The user with `id`, if any.
pub fn find<C: Sql + ?Sized>(conn: &C, id: i64) -> Result<Option<User>, C::Error> {
    conn.first(
        &format!("{COLUMNS} WHERE id = $1"),
        &[Param::Int(id)],
        from_row,
    )
}

/// Inserts a new user and returns it with the id the database assigned.
pub fn insert<C: Sql + ?Sized>(conn: &C, new: &NewUser) -> Result<User, C::Error> {
    let ids = conn.query(
        "INSERT INTO users (username, name, bio) VALUES ($1, $2, $3) RETURNING id",
        &[
            Param::Text(&new.username),
            Param::Text(&new.name),
            Param::Text(&new.bio),
        ],
        |row| row.int(0),
    )?;
    Ok(User {
        id: ids[0],
        username: new.username.clone(),
        name: new.name.clone(),
        bio: new.bio.clone(),
    })
}

/// Inserts a user keeping its id (seeding, migration).
pub fn insert_with_id<C: Sql + ?Sized>(conn: &C, user: &User) -> Result<(), C::Error> {
    conn.execute(
        "INSERT INTO users (id, username, name, bio) VALUES ($1, $2, $3, $4)",
        &[
            Param::Int(user.id),
            Param::Text(&user.username),
            Param::Text(&user.name),
            Param::Text(&user.bio),
        ],
    )?;
    Ok(())
}
