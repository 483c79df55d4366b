//! One way to run the board's statements on SQLite and on PostgreSQL.
//!
//! The resources' queries are written once, in the SQL both engines read: parameters are
//! `$1`, `$2`, … (PostgreSQL's spelling; rewritten to SQLite's `?1`, `?2`, … before SQLite
//! prepares them), identifiers that are keywords are double-quoted (`"user"`), new ids come
//! back with `RETURNING id`, and values are only 64-bit integers and text. [`Sql`] runs such a
//! statement on a `rusqlite::Connection` (with rusqlite's errors, for tools that hold one) or
//! on a [`Conn`] of either engine (with [`DbError`]).

use std::cell::{RefCell, RefMut};
use std::collections::HashMap;
use std::marker::PhantomData;

use crate::db::DbError;

/// A value bound to a statement parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param<'a> {
    /// A 64-bit integer (`INTEGER` in SQLite, `BIGINT` in PostgreSQL).
    Int(i64),
    /// Text.
    Text(&'a str),
}

/// One result row, read by column position.
pub trait Row {
    /// What a failed read is.
    type Error;
    /// Column `column` as a 64-bit integer.
    fn int(&self, column: usize) -> Result<i64, Self::Error>;
    /// Column `column` as text.
    fn text(&self, column: usize) -> Result<String, Self::Error>;
}

/// Turns one row into a value.
pub type Read<T, E> = fn(&dyn Row<Error = E>) -> Result<T, E>;

/// Runs the statements of the module documentation.
pub trait Sql {
    /// What a failed statement is.
    type Error;
    /// Runs a query and reads every row it returns, in order.
    fn query<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        read: Read<T, Self::Error>,
    ) -> Result<Vec<T>, Self::Error>;
    /// Runs a statement; returns the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, Self::Error>;
    /// The first row a query returns, if any.
    fn first<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        read: Read<T, Self::Error>,
    ) -> Result<Option<T>, Self::Error> {
        Ok(self.query(sql, params, read)?.into_iter().next())
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Int(v) => v.to_sql(),
            Param::Text(v) => v.to_sql(),
        }
    }
}

/// SQLite's spelling of the statement: `$N` → `?N` (the statements hold no other `$`).
fn sqlite_spelling(sql: &str) -> String {
    sql.replace('$', "?")
}

struct SqliteRow<'r, 's, E>(&'r rusqlite::Row<'s>, PhantomData<fn() -> E>);

impl<E: From<rusqlite::Error>> Row for SqliteRow<'_, '_, E> {
    type Error = E;
    fn int(&self, column: usize) -> Result<i64, E> {
        Ok(self.0.get(column)?)
    }
    fn text(&self, column: usize) -> Result<String, E> {
        Ok(self.0.get(column)?)
    }
}

fn sqlite_query<T, E: From<rusqlite::Error>>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Param<'_>],
    read: Read<T, E>,
) -> Result<Vec<T>, E> {
    let mut stmt = conn.prepare_cached(&sqlite_spelling(sql))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read(&SqliteRow(row, PhantomData))?);
    }
    Ok(out)
}

fn sqlite_execute(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Param<'_>],
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(&sqlite_spelling(sql))?;
    Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
}

impl Sql for rusqlite::Connection {
    type Error = rusqlite::Error;
    fn query<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        read: Read<T, rusqlite::Error>,
    ) -> rusqlite::Result<Vec<T>> {
        sqlite_query(self, sql, params, read)
    }
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> rusqlite::Result<u64> {
        sqlite_execute(self, sql, params)
    }
}

/// One PostgreSQL connection with its prepared statements, reconnecting when the server
/// closed it (a restart, an idle timeout) so one lost connection is not a lost process.
pub struct Pg {
    url: String,
    /// Always `Some` but in `Drop`.
    client: RefCell<Option<postgres::Client>>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("url", &crate::db::redact(&self.url))
            .finish_non_exhaustive()
    }
}

impl Pg {
    /// Connects to `url` (`postgres://user:password@host:port/database`), without TLS.
    pub fn connect(url: &str) -> Result<Pg, postgres::Error> {
        Ok(Pg {
            url: url.to_owned(),
            client: RefCell::new(Some(postgres::Client::connect(url, postgres::NoTls)?)),
            statements: RefCell::new(HashMap::new()),
        })
    }

    /// The open client, connected again first if the server closed the last one.
    fn client(&self) -> Result<RefMut<'_, postgres::Client>, postgres::Error> {
        let mut client = self.client.borrow_mut();
        if client.as_ref().is_none_or(postgres::Client::is_closed) {
            *client = Some(postgres::Client::connect(&self.url, postgres::NoTls)?);
            self.statements.borrow_mut().clear();
        }
        Ok(RefMut::map(client, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    /// Runs statements without parameters (schema, `BEGIN`, `COMMIT`).
    pub fn batch(&self, sql: &str) -> Result<(), postgres::Error> {
        self.client()?.batch_execute(sql)
    }

    fn prepared(
        &self,
        client: &mut postgres::Client,
        sql: &str,
    ) -> Result<postgres::Statement, postgres::Error> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Runs a query with parameters.
    pub fn rows(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let mut client = self.client()?;
        let statement = self.prepared(&mut client, sql)?;
        client.query(&statement, &pg_params(params))
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, postgres::Error> {
        let mut client = self.client()?;
        let statement = self.prepared(&mut client, sql)?;
        client.execute(&statement, &pg_params(params))
    }
}

impl Drop for Pg {
    /// The blocking client closes its connection on a runtime of its own, which cannot run
    /// on a thread that drives tokio tasks (where the last `Db` handle of a server or test
    /// may go): there, it is closed on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(client));
        }
    }
}

fn pg_params<'p>(params: &'p [Param<'_>]) -> Vec<&'p (dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| -> &(dyn postgres::types::ToSql + Sync) {
            match p {
                Param::Int(v) => v,
                Param::Text(v) => v,
            }
        })
        .collect()
}

struct PgRow<'r, E>(&'r postgres::Row, PhantomData<fn() -> E>);

impl<E: From<postgres::Error>> Row for PgRow<'_, E> {
    type Error = E;
    fn int(&self, column: usize) -> Result<i64, E> {
        Ok(self.0.try_get(column)?)
    }
    fn text(&self, column: usize) -> Result<String, E> {
        Ok(self.0.try_get(column)?)
    }
}

/// A connection of either engine, lent by [`crate::db::Db::run`].
#[derive(Clone, Copy, Debug)]
pub enum Conn<'a> {
    /// A SQLite file or in-memory database.
    Sqlite(&'a rusqlite::Connection),
    /// A PostgreSQL database.
    Postgres(&'a Pg),
}

impl Sql for Conn<'_> {
    type Error = DbError;
    fn query<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        read: Read<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        match self {
            Conn::Sqlite(conn) => sqlite_query(conn, sql, params, read),
            Conn::Postgres(pg) => pg
                .rows(sql, params)?
                .iter()
                .map(|row| read(&PgRow(row, PhantomData)))
                .collect(),
        }
    }
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        Ok(match self {
            Conn::Sqlite(conn) => sqlite_execute(conn, sql, params)?,
            Conn::Postgres(pg) => pg.execute(sql, params)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_binds_dollar_parameters_by_number() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        // $2 before $1: bound by number, not by order of appearance.
        let rows = conn
            .query(
                "SELECT $2 || '-' || $1",
                &[Param::Text("a"), Param::Text("b")],
                |row| row.text(0),
            )
            .expect("query");
        assert_eq!(rows, ["b-a"]);
    }
}
