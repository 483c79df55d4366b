//! The posts resource: rows, queries and the validation of a new post.

use serde::{Deserialize, Serialize};

use crate::input::{Fields, InputError};
use crate::sql::{Param, Row, Sql};

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

/// `user` is a keyword in PostgreSQL, so the column is always quoted.
const COLUMNS: &str = r#"SELECT id, thread, text, "user" FROM posts"#;

fn from_row<E>(row: &dyn Row<Error = E>) -> Result<Post, E> {
    Ok(Post {
        id: row.int(0)?,
        thread: row.int(1)?,
        text: row.text(2)?,
        user: row.int(3)?,
    })
}

/// Every post, ordered by id.
pub fn list<C: Sql + ?Sized>(conn: &C) -> Result<Vec<Post>, C::Error> {
    conn.query(&format!("{COLUMNS} ORDER BY id"), &[], from_row)
}

/// The posts of one thread, ordered by id.
pub fn in_thread<C: Sql + ?Sized>(conn: &C, thread: i64) -> Result<Vec<Post>, C::Error> {
    let sql = format!("{COLUMNS} WHERE thread = $1 ORDER BY id");
    conn.query(&sql, &[Param::Int(thread)], from_row)
}

/// The posts of one user, ordered by id.
pub fn by_user<C: Sql + ?Sized>(conn: &C, user: i64) -> Result<Vec<Post>, C::Error> {
    let sql = format!(r#"{COLUMNS} WHERE "user" = $1 ORDER BY id"#);
    conn.query(&sql, &[Param::Int(user)], from_row)
}

/// Inserts a new post and returns it with the id the database assigned.
pub fn insert<C: Sql + ?Sized>(conn: &C, new: &NewPost) -> Result<Post, C::Error> {
    let ids = conn.query(
        r#"INSERT INTO posts (thread, text, "user") VALUES ($1, $2, $3) RETURNING id"#,
        &[
            Param::Int(new.thread),
            Param::Text(&new.text),
            Param::Int(new.user),
        ],
        |row| row.int(0),
    )?;
    Ok(new.with_id(ids[0]))
}

/// Inserts a post keeping its id (seeding, migration).
pub fn insert_with_id<C: Sql + ?Sized>(conn: &C, post: &Post) -> Result<(), C::Error> {
    conn.execute(
        r#"INSERT INTO posts (id, thread, text, "user") VALUES ($1, $2, $3, $4)"#,
        &[
            Param::Int(post.id),
            Param::Int(post.thread),
            Param::Text(&post.text),
            Param::Int(post.user),
        ],
    )?;
    Ok(())
}

/// Deletes the post with `id`; `false` when there was none.
pub fn delete<C: Sql + ?Sized>(conn: &C, id: i64) -> Result<bool, C::Error> {
    Ok(conn.execute("DELETE FROM posts WHERE id = $1", &[Param::Int(id)])? > 0)
}
