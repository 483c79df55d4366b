//! The two databases of one resource's migration, open side by side: the monolith's (the
//! declaration's `source`) and the service's (`target`), each SQLite or PostgreSQL, and the
//! resource's table resolved against both catalogues.

use std::path::Path;

use anyhow::{Context as _, bail};
use monolith::db::Seed;
use monolith::legacy::Resource;

use crate::db::{Db, Value};
use crate::migrations::{DbUrl, Declared};
use crate::resource::Table;
use crate::sync::Side;

/// Both databases of a migration.
pub struct Pair {
    /// The monolith's database (the declaration's source).
    pub monolith: Db,
    /// The service's database (the declaration's target).
    pub service: Db,
}

/// Whether [`Pair::open`] may create the service's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// A copy: an SQLite service database is created when missing, and a tutorial table
    /// (users, threads, posts) missing from it is created as the service creates it.
    CreatingTarget,
    /// Every other step: both databases must exist already.
    Existing,
}

impl Pair {
    /// Opens both databases of `decl` (relative SQLite paths under `data_dir`) and resolves
    /// its table ([`Table::resolve_between`]).
    ///
    /// Errors: a missing monolith database (or, with [`Open::Existing`], service database);
    /// a PostgreSQL server that refuses the connection; a missing table and every mismatch
    /// [`Table::resolve_between`] finds.
    pub fn open(data_dir: &Path, decl: &Declared, open: Open) -> anyhow::Result<(Pair, Table)> {
        let name = decl.name();
        if let DbUrl::Sqlite(path) = decl.source.url.resolve(data_dir)
            && !path.is_file()
        {
            bail!(
                "no monolith database at {} (start the monolith once, or pass --data-dir)",
                path.display()
            );
        }
        let target = decl.target.url.resolve(data_dir);
        if let DbUrl::Sqlite(path) = &target {
            if open == Open::Existing && !path.is_file() {
                bail!(
                    "no database at {}: has `migrate-data {name} --follow` run here (--data-dir)?",
                    path.display()
                );
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let monolith = Db::open(&decl.source.url, data_dir, false)?;
        let mut service = Db::open(&decl.target.url, data_dir, true)?;
        if open == Open::CreatingTarget
            && let Db::Sqlite(conn) = &mut service
            && let Some(tutorial) = Resource::ALL
                .into_iter()
                .find(|r| r.name() == decl.target.table)
        {
            monolith::db::init(conn, &[tutorial], Seed::Empty).with_context(|| {
                format!(
                    "preparing the {} table in {}",
                    tutorial.name(),
                    target.display()
                )
            })?;
        }
        let mut pair = Pair { monolith, service };
        let table = Table::resolve_between(&mut pair.monolith, &mut pair.service, decl)?;
        Ok((pair, table))
    }

    /// Whether both sides are one database, whatever their URLs say: the same SQLite file, or
    /// the same PostgreSQL database of the same running server (its name and the server's
    /// start time).
    ///
    /// Errors: either database cannot be asked.
    pub fn same_database(&mut self) -> anyhow::Result<bool> {
        if self.monolith.is_postgres() != self.service.is_postgres() {
            return Ok(false);
        }
        Ok(identity(&mut self.monolith)? == identity(&mut self.service)?)
    }

    /// The database of `side`.
    pub fn db(&mut self, side: Side) -> &mut Db {
        match side {
            Side::Monolith => &mut self.monolith,
            Side::Service => &mut self.service,
        }
    }
}

/// What tells one database from another (see [`Pair::same_database`]).
fn identity(db: &mut Db) -> anyhow::Result<Vec<Value>> {
    if db.is_postgres() {
        let row = db.query(
            "SELECT current_database()::text, pg_postmaster_start_time()::text, \
             coalesce(inet_server_port(), 0)::int8",
            &[],
        )?;
        return Ok(row.into_iter().next().unwrap_or_default());
    }
    let file = db
        .query(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            &[],
        )?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next());
    Ok(vec![match file {
        Some(Value::Text(path)) if !path.is_empty() => {
            Value::Text(std::fs::canonicalize(&path).map_or(path, |p| p.display().to_string()))
        }
        // An in-memory database is never another connection's.
        _ => Value::Null,
    }])
}
