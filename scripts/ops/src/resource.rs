//! The table a migration moves, as the databases' own catalogues describe it: a resource
//! declared in `migrations.toml` ([`crate::migrations::Declared`]) resolved against both
//! sides' columns, and the SQL that copies rows between them.
//!
//! [`Table::resolve`] reads `pragma_table_info` on both sides and refuses, before any row
//! moves, a missing table or column, a column whose type cannot hold the other side's values,
//! and a key that is not the table's single-column integer primary key.

use std::fmt::Write as _;

use anyhow::bail;
use rusqlite::Connection;

use crate::migrations::Declared;
use crate::sync::Side;

/// The family of a column's declared type: what kind of value it holds on either engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Whole numbers (`INTEGER`, `BIGINT`, `int4`, ...).
    Integer,
    /// Floating point and decimals (`REAL`, `DOUBLE PRECISION`, `NUMERIC`, ...).
    Real,
    /// Text (`TEXT`, `VARCHAR(n)`, `CHARACTER VARYING`, ...).
    Text,
    /// Bytes (`BLOB`, `bytea`, or no declared type).
    Blob,
    /// `BOOLEAN` (SQLite stores 0 and 1).
    Boolean,
    /// `DATE`, `TIME`, `DATETIME`, `TIMESTAMP [WITH TIME ZONE]`.
    Timestamp,
}

impl Kind {
    /// The family of an SQL declared type, following SQLite's affinity rules (§3.1 of
    /// <https://sqlite.org/datatype3.html>) after singling out booleans and date/time types,
    /// which both engines name the same way.
    pub fn of_declared(declared: &str) -> Kind {
        let t = declared.to_ascii_uppercase();
        // PostgreSQL types read and written as their text form (`information_schema` calls
        // enums USER-DEFINED); checked first because INTERVAL contains INT.
        const AS_TEXT: [&str; 9] = [
            "JSON",
            "UUID",
            "USER-DEFINED",
            "ARRAY",
            "INTERVAL",
            "INET",
            "CIDR",
            "MACADDR",
            "XML",
        ];
        if AS_TEXT.iter().any(|k| t.contains(k)) {
            Kind::Text
        } else if t.contains("BOOL") {
            Kind::Boolean
        } else if t.contains("DATE") || t.contains("TIME") {
            Kind::Timestamp
        } else if t.contains("INT") || t == "SERIAL" || t == "BIGSERIAL" {
            Kind::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Kind::Text
        } else if t.contains("BLOB") || t.contains("BYTEA") || t.is_empty() {
            Kind::Blob
        } else {
            Kind::Real
        }
    }

    /// Whether a target column of kind `self` holds every value of a source column of kind
    /// `source` unchanged.
    pub fn holds(self, source: Kind) -> bool {
        self == source
            || matches!(
                (source, self),
                (Kind::Integer, Kind::Real)
                    | (Kind::Boolean, Kind::Integer)
                    | (Kind::Timestamp, Kind::Text)
            )
    }

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::Real => "real",
            Kind::Text => "text",
            Kind::Blob => "blob",
            Kind::Boolean => "boolean",
            Kind::Timestamp => "timestamp",
        }
    }
}

/// One column as a catalogue lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogColumn {
    /// Its name.
    pub name: String,
    /// Its declared type, as written.
    pub declared: String,
    /// Whether it refuses NULL.
    pub not_null: bool,
    /// Whether it has a default value.
    pub has_default: bool,
    /// Its position in the primary key (1-based), 0 when not part of it.
    pub pk: u32,
}

/// A column that moves: its name on each side and the kind of its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Name in the source (monolith) table.
    pub source: String,
    /// Name in the target (service) table.
    pub target: String,
    /// The source column's kind.
    pub kind: Kind,
}

/// A resource's table on both sides, resolved from the catalogues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The resource's declared name (recorded in the state tables, printed in reports).
    pub resource: String,
    /// The source (monolith) table.
    pub source_table: String,
    /// The target (service) table.
    pub target_table: String,
    /// Every column that moves, the key first, in the order checksums read them.
    pub columns: Vec<Column>,
    /// Values for every column but the key of a placeholder row (the id fence) in the source
    /// table: `''` or `0` for NOT NULL columns, NULL otherwise.
    placeholder: String,
}

impl Table {
    /// Resolves `decl` against the catalogues of its two databases (any engines): the source's
    /// (`pragma_table_info`, `information_schema`) and the target's.
    ///
    /// Errors (before any row moves): a table missing on either side; the key not the
    /// table's single-column integer primary key on either side; a source column (not
    /// excluded) missing from the target under its (renamed) name; a target column that
    /// cannot hold the source column's values; a NOT NULL target column without a default
    /// that nothing fills; a catalogue that cannot be read.
    pub fn resolve_between(
        source: &mut crate::db::Db,
        target: &mut crate::db::Db,
        decl: &Declared,
    ) -> anyhow::Result<Table> {
        let s = source.catalog(&decl.source.table)?;
        let t = target.catalog(&decl.target.table)?;
        let source_at = format!("{} table {}", decl.source.url.display(), decl.source.table);
        let target_at = format!("{} table {}", decl.target.url.display(), decl.target.table);
        Table::compare(decl, &s, &t, &source_at, &target_at)
    }

    /// [`Table::resolve_between`] on catalogues already read (`*_at` name each side in
    /// errors).
    ///
    /// Errors: as [`Table::resolve_between`], all of them in one message.
    pub fn compare(
        decl: &Declared,
        source: &[CatalogColumn],
        target: &[CatalogColumn],
        source_at: &str,
        target_at: &str,
    ) -> anyhow::Result<Table> {
        let name = &decl.name;
        if source.is_empty() {
            bail!("resource {name}: {source_at} does not exist (or has no column)");
        }
        if target.is_empty() {
            bail!(
                "resource {name}: {target_at} does not exist: create it in the service's \
                 database first (the service owns its schema)"
            );
        }
        let mut problems = Vec::new();
        let target_key = decl.target_column(&decl.key);
        for (columns, key, at) in [
            (source, decl.key.as_str(), source_at),
            (target, target_key, target_at),
        ] {
            let pk: Vec<&CatalogColumn> = columns.iter().filter(|c| c.pk > 0).collect();
            match columns.iter().find(|c| c.name == key) {
                None => problems.push(format!("{at} has no key column {key:?}")),
                Some(c) if pk.len() != 1 || c.pk != 1 => problems.push(format!(
                    "{at}: key column {key:?} is not the table's primary key (primary key: {}); \
                     declare a single-column primary key",
                    if pk.is_empty() {
                        "none".to_string()
                    } else {
                        pk.iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )),
                Some(c) if Kind::of_declared(&c.declared) != Kind::Integer => {
                    problems.push(format!(
                        "{at}: key column {key:?} is {:?}, not an integer: the data tools \
                         copy, capture and fence by integer keys",
                        c.declared
                    ))
                }
                Some(_) => {}
            }
        }
        for gone in decl
            .exclude
            .iter()
            .chain(decl.rename.keys())
            .filter(|c| !source.iter().any(|s| &&s.name == c))
        {
            problems.push(format!(
                "{}: {source_at} has no column {gone:?} (named in exclude or rename)",
                name
            ));
        }
        let mut columns = Vec::new();
        let mut placeholder = Vec::new();
        let ordered = source
            .iter()
            .filter(|c| c.name == decl.key)
            .chain(source.iter().filter(|c| c.name != decl.key));
        for s in ordered.filter(|c| !decl.exclude.contains(&c.name)) {
            let to = decl.target_column(&s.name);
            let kind = Kind::of_declared(&s.declared);
            let Some(t) = target.iter().find(|t| t.name == to) else {
                problems.push(format!(
                    "{target_at} has no column {to:?} for {source_at}'s {:?} ({}): add it to \
                     the target, exclude it, or rename it in migrations.toml",
                    s.name, s.declared
                ));
                continue;
            };
            let target_kind = Kind::of_declared(&t.declared);
            if !target_kind.holds(kind) {
                problems.push(format!(
                    "{target_at} column {to:?} is {:?} ({}) but {source_at}'s {:?} is {:?} \
                     ({}): incompatible types",
                    t.declared,
                    target_kind.name(),
                    s.name,
                    s.declared,
                    kind.name()
                ));
            }
            if s.name != decl.key {
                // Literals both engines read into the column's type.
                placeholder.push(if s.not_null {
                    match kind {
                        Kind::Integer | Kind::Real => "0",
                        Kind::Boolean => "false",
                        Kind::Timestamp => "'1970-01-01 00:00:00'",
                        Kind::Text | Kind::Blob => "''",
                    }
                } else {
                    "NULL"
                });
            }
            columns.push(Column {
                source: s.name.clone(),
                target: to.to_string(),
                kind,
            });
        }
        for t in target.iter().filter(|t| t.not_null && !t.has_default) {
            if !columns.iter().any(|c| c.target == t.name) && t.pk == 0 {
                problems.push(format!(
                    "{target_at} column {:?} is NOT NULL without a default and no source column \
                     fills it: give it a default, or rename a source column onto it",
                    t.name
                ));
            }
        }
        if !problems.is_empty() {
            bail!(
                "resource {name}: the tables do not match, nothing was copied:\n  {}",
                problems.join("\n  ")
            );
        }
        Ok(Table {
            resource: decl.name.clone(),
            source_table: decl.source.table.clone(),
            target_table: decl.target.table.clone(),
            columns,
            placeholder: placeholder.join(", "),
        })
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.resource
    }

    /// The table's name on `side`.
    pub fn table_on(&self, side: Side) -> &str {
        match side {
            Side::Monolith => &self.source_table,
            Side::Service => &self.target_table,
        }
    }

    /// The table's name on `side` as an SQL identifier (double-quoted: both engines read it
    /// as written, and a column named like a keyword, such as `user`, stays a column).
    pub fn sql_table(&self, side: Side) -> String {
        quote(self.table_on(side))
    }

    /// The key column's name on `side` as an SQL identifier (see [`Table::sql_table`]).
    pub fn sql_key(&self, side: Side) -> String {
        quote(self.key_on(side))
    }

    /// The key column's name on `side`.
    pub fn key_on(&self, side: Side) -> &str {
        self.column_on(&self.columns[0], side)
    }

    fn column_on<'a>(&self, c: &'a Column, side: Side) -> &'a str {
        match side {
            Side::Monolith => &c.source,
            Side::Service => &c.target,
        }
    }

    /// The moving columns' names on `side`, key first.
    pub fn columns_on(&self, side: Side) -> impl Iterator<Item = &str> {
        self.columns.iter().map(move |c| self.column_on(c, side))
    }

    /// `"key", "a", "b"` on `side`, for a SELECT or an INSERT column list.
    pub fn column_list(&self, side: Side) -> String {
        self.columns_on(side)
            .map(quote)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Values for every column but the key of a placeholder row in the source table.
    pub fn placeholder_values(&self) -> &str {
        &self.placeholder
    }

    /// `INSERT INTO into (…) <select> ON CONFLICT (key) DO UPDATE SET … WHERE (old) <differ>
    /// (new)`, with `to`'s column names; `old` names the existing row's table (`main.t`,
    /// or `t` on PostgreSQL), `differ` is `IS NOT` (SQLite) or `IS DISTINCT FROM`.
    pub fn upsert_sql(
        &self,
        to: Side,
        into: &str,
        select: &str,
        old: &str,
        differ: &str,
    ) -> String {
        let rest: Vec<String> = self.columns_on(to).skip(1).map(quote).collect();
        let mut sql = format!(
            "INSERT INTO {into} ({}) {select} ON CONFLICT({})",
            self.column_list(to),
            self.sql_key(to),
        );
        if rest.is_empty() {
            sql.push_str(" DO NOTHING");
            return sql;
        }
        let list =
            |f: &dyn Fn(&str) -> String| rest.iter().map(|c| f(c)).collect::<Vec<_>>().join(", ");
        let _ = write!(
            sql,
            " DO UPDATE SET {} WHERE ({}) {differ} ({})",
            list(&|c| format!("{c} = excluded.{c}")),
            list(&|c| format!("{old}.{c}")),
            list(&|c| format!("excluded.{c}")),
        );
        sql
    }
}

/// `name` as a double-quoted SQL identifier (names are plain: letters, digits, `_`).
pub fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

/// The columns of `table` in database `schema` of an SQLite connection, as
/// `pragma_table_info` lists them; empty when there is no such table.
pub fn catalog(
    conn: &Connection,
    schema: &str,
    table: &str,
) -> rusqlite::Result<Vec<CatalogColumn>> {
    let mut stmt = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1, ?2)",
    )?;
    stmt.query_map([table, schema], |row| {
        Ok(CatalogColumn {
            name: row.get(0)?,
            declared: row.get(1)?,
            not_null: row.get(2)?,
            has_default: row.get(3)?,
            pk: row.get(4)?,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::Migrations;

    fn col(name: &str, declared: &str, not_null: bool, pk: u32) -> CatalogColumn {
        CatalogColumn {
            name: name.into(),
            declared: declared.into(),
            not_null,
            has_default: false,
            pk,
        }
    }

    fn threads() -> Vec<CatalogColumn> {
        vec![
            col("id", "INTEGER", false, 1),
            col("title", "TEXT", true, 0),
            col("created_by", "INTEGER", true, 0),
        ]
    }

    #[test]
    fn the_upsert_skips_identical_rows() {
        let m = Migrations::tutorial();
        let t =
            Table::compare(m.get("threads").unwrap(), &threads(), &threads(), "s", "t").unwrap();
        assert_eq!(
            t.upsert_sql(
                Side::Service,
                "threads",
                "SELECT * FROM s",
                "threads",
                "IS NOT"
            ),
            "INSERT INTO threads (\"id\", \"title\", \"created_by\") SELECT * FROM s ON \
             CONFLICT(\"id\") DO UPDATE SET \"title\" = excluded.\"title\", \"created_by\" = \
             excluded.\"created_by\" WHERE (threads.\"title\", threads.\"created_by\") IS NOT \
             (excluded.\"title\", excluded.\"created_by\")"
        );
        assert_eq!(t.placeholder_values(), "'', 0");
    }

    #[test]
    fn renamed_and_excluded_columns_map_both_ways() {
        let mut decl = Migrations::tutorial().get("threads").unwrap().clone();
        decl.rename.insert("title".into(), "subject".into());
        decl.exclude.push("created_by".into());
        let target = vec![
            col("id", "INTEGER", false, 1),
            col("subject", "VARCHAR(200)", true, 0),
        ];
        let t = Table::compare(&decl, &threads(), &target, "s", "t").unwrap();
        assert_eq!(t.column_list(Side::Monolith), "\"id\", \"title\"");
        assert_eq!(t.column_list(Side::Service), "\"id\", \"subject\"");
        assert!(
            t.upsert_sql(Side::Monolith, "threads", "SELECT 1", "threads", "IS NOT")
                .starts_with(
                    "INSERT INTO threads (\"id\", \"title\") SELECT 1 ON CONFLICT(\"id\")"
                )
        );
    }

    #[test]
    fn mismatches_are_refused_before_any_row_moves() {
        let decl = Migrations::tutorial().get("threads").unwrap().clone();
        let wrong_type = vec![
            col("id", "INTEGER", false, 1),
            col("title", "INTEGER", true, 0),
            col("created_by", "INTEGER", true, 0),
        ];
        let e = Table::compare(&decl, &threads(), &wrong_type, "s", "t").unwrap_err();
        assert!(e.to_string().contains("t column \"title\" is \"INTEGER\" (integer) but s's \"title\" is \"TEXT\" (text): incompatible types"), "{e}");
        let missing = vec![
            col("id", "INTEGER", false, 1),
            col("title", "TEXT", true, 0),
        ];
        let e = Table::compare(&decl, &threads(), &missing, "s", "t").unwrap_err();
        assert!(
            e.to_string().contains("t has no column \"created_by\""),
            "{e}"
        );
        let no_pk = vec![
            col("id", "INTEGER", false, 0),
            col("title", "TEXT", true, 0),
            col("created_by", "INTEGER", true, 0),
        ];
        let e = Table::compare(&decl, &no_pk, &threads(), "s", "t").unwrap_err();
        assert!(
            e.to_string().contains(
                "s: key column \"id\" is not the table's primary key (primary key: none)"
            ),
            "{e}"
        );
        let e = Table::compare(&decl, &threads(), &[], "s", "t").unwrap_err();
        assert!(e.to_string().contains("t does not exist"), "{e}");
    }

    #[test]
    fn declared_types_fall_into_families() {
        assert_eq!(Kind::of_declared("BIGINT"), Kind::Integer);
        assert_eq!(Kind::of_declared("character varying"), Kind::Text);
        assert_eq!(
            Kind::of_declared("timestamp with time zone"),
            Kind::Timestamp
        );
        assert_eq!(Kind::of_declared("BOOLEAN"), Kind::Boolean);
        assert_eq!(Kind::of_declared("double precision"), Kind::Real);
        assert_eq!(Kind::of_declared("bytea"), Kind::Blob);
        assert_eq!(Kind::of_declared("interval"), Kind::Text);
        assert_eq!(Kind::of_declared("jsonb"), Kind::Text);
        assert_eq!(Kind::of_declared("USER-DEFINED"), Kind::Text);
        assert!(Kind::Integer.holds(Kind::Boolean));
        assert!(!Kind::Integer.holds(Kind::Text));
    }
}
