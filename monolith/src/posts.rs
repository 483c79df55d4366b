//! The posts resource: rows, queries and the validation of a new post.

use rusqlite::{Connection, Row, params};
use serde::{Deserialize, Serialize};

use crate::input::{Fields, InputError};

/// A post as the API shows it (the original had no id; ours is assigned by the database).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// Assigned by the database.
    pub id: i64,
    /// Id of the thread it belongs to.
    pub thread: i64,
    /// Never empty.
    pub text: String,
    /// Id of its author.
    pub user: i64,
}

/// A validated `POST /api/posts` body (also the shape of a legacy post, which had no id);
/// `thread` and `user` are not yet known to exist.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NewPost {
    /// Required thread id.
    pub thread: i64,
    /// Required, not blank.
    pub text: String,
    /// Required user id.
    pub user: i64,
}

impl NewPost {
    /// Validates a write body.
    pub fn from_fields(fields: &Fields) -> Result<NewPost, InputError> {
        Ok(NewPost {
            thread: fields.integer("thread")?,
            text: fields.text("text")?,
            user: fields.integer("user")?,
        })
    }

    /// The stored post once it has an id.
    pub fn with_id(&self, id: i64) -> Post {
        Post {
            id,
            thread: self.thread,
            text: self.text.clone(),
            user: self.user,
        }
    }
}

const COLUMNS: &str = "SELECT id, thread, text, user FROM posts";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Post> {
    Ok(Post {
        id: row.get(0)?,
        thread: row.get(1)?,
        text: row.get(2)?,
        user: row.get(3)?,
    })
}

/// Every post, ordered by id.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Post>> {
    let mut stmt = conn.prepare_cached(&format!("{COLUMNS} ORDER BY id"))?;
    stmt.query_map([], from_row)?.collect()
}

/// The posts of one thread, ordered by id.
pub fn in_thread(conn: &Connection, thread: i64) -> rusqlite::Result<Vec<Post>> {
    let mut stmt = conn.prepare_cached(&format!("{COLUMNS} WHERE thread = ?1 ORDER BY id"))?;
    stmt.query_map([thread], from_row)?.collect()
}

/// The posts of one user, ordered by id.
pub fn by_user(conn: &Connection, user: i64) -> rusqlite::Result<Vec<Post>> {
    let mut stmt = conn.prepare_cached(&format!("{COLUMNS} WHERE user = ?1 ORDER BY id"))?;
    stmt.query_map([user], from_row)?.collect()
}

/// Inserts a new post and returns it with its id.
pub fn insert(conn: &Connection, new: &NewPost) -> rusqlite::Result<Post> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO posts (thread, text, user) VALUES (?1, ?2, ?3)")?;
    stmt.execute(params![new.thread, new.text, new.user])?;
    Ok(new.with_id(conn.last_insert_rowid()))
}

/// Inserts a post keeping its id (seeding, migration).
pub fn insert_with_id(conn: &Connection, post: &Post) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO posts (id, thread, text, user) VALUES (?1, ?2, ?3, ?4)")?;
    stmt.execute(params![post.id, post.thread, post.text, post.user])?;
    Ok(())
}

/// Deletes the post with `id`; `false` when there was none.
pub fn delete(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached("DELETE FROM posts WHERE id = ?1")?;
    Ok(stmt.execute([id])? > 0)
}
