//! Verification of a copy: row count and an order-independent content checksum of the same
//! table on both sides, computed in Rust so the figure does not depend on SQLite's version.
//!
//! Each row hashes to 64 bits with XXH3 (a fixed, published function) over a canonical encoding
//! of its columns — a type tag, then the value; text and blobs carry their length, so
//! ("ab","c") and ("a","bc") differ — and the table's checksum is the wrapping sum of the row
//! hashes, so it does not depend on the order rows are read in.

use std::time::{Duration, Instant};

use rusqlite::Connection;
use xxhash_rust::xxh3::xxh3_64;

use crate::conflicts::{self, Conflict};
use crate::db::{Db, Value};
use crate::resource::Table;
use crate::sync::Side;
use crate::text_table::TextTable;

/// Row count and checksum of one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    /// Rows.
    pub rows: u64,
    /// Wrapping sum of the rows' XXH3-64 hashes.
    pub checksum: u64,
}

/// Digests `table` on `side` as the connection sees it now.
pub fn digest(conn: &Connection, side: Side, table: &Table) -> rusqlite::Result<Digest> {
    digest_except(conn, side, table, None)
}

/// As [`digest`], leaving out the row `except` (the id fence, see [`crate::sync::raise_high_water`]).
pub fn digest_except(
    conn: &Connection,
    side: Side,
    table: &Table,
    except: Option<i64>,
) -> rusqlite::Result<Digest> {
    let sql = format!(
        "SELECT {} FROM {} WHERE ?1 IS NULL OR {} IS NOT ?1",
        table.column_list(side),
        table.qualified(side),
        table.key_on(side)
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([except])?;
    let mut digest = Digest::default();
    let mut values = Vec::with_capacity(table.columns.len());
    while let Some(row) = rows.next()? {
        values.clear();
        for (i, c) in table.columns.iter().enumerate() {
            values.push(Value::from_sqlite(row.get_ref(i)?, c.kind));
        }
        digest.add(&values);
    }
    Ok(digest)
}

impl Digest {
    /// Adds one row (its moving columns, key first) to the digest.
    pub fn add(&mut self, row: &[Value]) {
        let mut buf = Vec::with_capacity(128);
        for v in row {
            v.encode(&mut buf);
        }
        self.rows += 1;
        self.checksum = self.checksum.wrapping_add(xxh3_64(&buf));
    }
}

/// Both sides of one verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// The resource's table.
    pub table: Table,
    /// What the source side is called in the report (the monolith's database file).
    pub source_label: String,
    /// What the target side is called (the service's database file).
    pub target_label: String,
    /// The monolith's rows.
    pub source: Digest,
    /// The service's rows.
    pub target: Digest,
    /// Time both digests took.
    pub took: Duration,
    /// Unresolved conflicts of the resource: each one fails the verification.
    pub conflicts: Vec<Conflict>,
}

impl Verification {
    /// Digests both sides inside the caller's transaction, so that each side is one snapshot.
    pub fn run(
        conn: &Connection,
        table: &Table,
        source_label: String,
        target_label: String,
    ) -> rusqlite::Result<Verification> {
        let started = Instant::now();
        let fence = crate::sync::fence_of(conn, table)?;
        let source = digest_except(conn, Side::Monolith, table, fence)?;
        let target = digest_except(conn, Side::Service, table, fence)?;
        Ok(Verification {
            table: table.clone(),
            source_label,
            target_label,
            source,
            target,
            took: started.elapsed(),
            conflicts: conflicts::unresolved(conn, table)?,
        })
    }

    /// Digests both sides through their own connections, each as one snapshot (for a source
    /// that nothing writes meanwhile, or a copy between engines, which has no id fence and no
    /// conflicts).
    ///
    /// Errors: either side cannot be read.
    pub fn between(
        source: &mut Db,
        target: &mut Db,
        table: &Table,
        labels: (String, String),
    ) -> anyhow::Result<Verification> {
        let started = Instant::now();
        let (mut s, mut t) = (Digest::default(), Digest::default());
        source.scan(table, Side::Monolith, None, &mut |row| s.add(row))?;
        target.scan(table, Side::Service, None, &mut |row| t.add(row))?;
        Ok(Verification {
            table: table.clone(),
            source_label: labels.0,
            target_label: labels.1,
            source: s,
            target: t,
            took: started.elapsed(),
            conflicts: Vec::new(),
        })
    }

    /// True only when both the row counts and the checksums are equal and no conflict stands.
    pub fn matches(&self) -> bool {
        self.source == self.target && self.conflicts.is_empty()
    }

    /// The report: a table of both sides and a verdict line.
    pub fn render(&self) -> String {
        let mut t = TextTable::new(["side", "database", "table", "rows", "checksum"]);
        t.row([
            "monolith".to_string(),
            self.source_label.clone(),
            self.table.source_table.clone(),
            self.source.rows.to_string(),
            format!("{:016x}", self.source.checksum),
        ]);
        t.row([
            "service".to_string(),
            self.target_label.clone(),
            self.table.target_table.clone(),
            self.target.rows.to_string(),
            format!("{:016x}", self.target.checksum),
        ]);
        let mut conflicts = String::new();
        for c in &self.conflicts {
            conflicts.push_str(&c.describe());
            conflicts.push('\n');
        }
        let verdict = if !self.conflicts.is_empty() {
            format!(
                "verification FAILED: {} unresolved conflict(s) on {} (listed above; repair the \
                 rows on the side that takes writes, then migrate-data {} --resolve-conflicts)",
                self.conflicts.len(),
                self.table.name(),
                self.table.name()
            )
        } else if self.matches() {
            format!(
                "verification OK: {} rows, checksums equal ({:.2?})",
                self.source.rows, self.took
            )
        } else if self.source.rows != self.target.rows {
            format!(
                "verification FAILED: the service has {} rows, the monolith {} ({:+})",
                self.target.rows,
                self.source.rows,
                self.target.rows as i128 - self.source.rows as i128
            )
        } else {
            format!(
                "verification FAILED: same row count ({}), different content (checksums differ)",
                self.source.rows
            )
        };
        format!("{}{conflicts}{verdict}\n", t.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::Migrations;
    use crate::resource::CatalogColumn;

    fn table(name: &str) -> Table {
        let cols: Vec<CatalogColumn> = ["id", "username", "name", "bio"]
            .iter()
            .enumerate()
            .map(|(i, c)| CatalogColumn {
                name: (*c).into(),
                declared: if i == 0 { "INTEGER" } else { "TEXT" }.into(),
                not_null: i > 0,
                has_default: false,
                pk: u32::from(i == 0),
            })
            .collect();
        let decl = Migrations::tutorial().get(name).unwrap().clone();
        Table::compare(&decl, &cols, &cols, "s", "t").unwrap()
    }

    fn db(rows: &[(i64, &str, &str, &str)]) -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "ATTACH ':memory:' AS src;
             CREATE TABLE main.users (id INTEGER PRIMARY KEY, username TEXT, name TEXT, bio TEXT);",
        )
        .expect("schema");
        for (id, u, n, b) in rows {
            conn.execute(
                "INSERT INTO main.users VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id, u, n, b],
            )
            .expect("insert");
        }
        conn
    }

    #[test]
    fn the_checksum_ignores_order_but_not_content() {
        let users = &table("users");
        let a = db(&[(1, "a", "A", ""), (2, "b", "B", "bio")]);
        let b = db(&[(2, "b", "B", "bio"), (1, "a", "A", "")]);
        assert_eq!(
            digest(&a, Side::Service, users).unwrap(),
            digest(&b, Side::Service, users).unwrap()
        );
        // Moving a character between columns changes the row.
        let c = db(&[(1, "a", "A", ""), (2, "b", "Bb", "io")]);
        assert_ne!(
            digest(&a, Side::Service, users).unwrap().checksum,
            digest(&c, Side::Service, users).unwrap().checksum
        );
        // Swapping a field between two rows keeps the multiset of values but not the rows.
        let d = db(&[(1, "b", "A", ""), (2, "a", "B", "bio")]);
        assert_ne!(
            digest(&a, Side::Service, users).unwrap().checksum,
            digest(&d, Side::Service, users).unwrap().checksum
        );
        assert_eq!(digest(&a, Side::Service, users).unwrap().rows, 2);
    }

    #[test]
    fn a_mismatch_is_never_reported_as_ok() {
        let v = |source: Digest, target: Digest| Verification {
            table: table("users"),
            source_label: "m.db".into(),
            target_label: "p.db".into(),
            source,
            target,
            took: Duration::ZERO,
            conflicts: Vec::new(),
        };
        let same = v(
            Digest {
                rows: 3,
                checksum: 7,
            },
            Digest {
                rows: 3,
                checksum: 7,
            },
        );
        assert!(same.matches());
        assert!(same.render().contains("verification OK"));
        let content = v(
            Digest {
                rows: 3,
                checksum: 7,
            },
            Digest {
                rows: 3,
                checksum: 8,
            },
        );
        assert!(!content.matches());
        assert!(
            content
                .render()
                .contains("FAILED: same row count (3), different content")
        );
        let rows = v(
            Digest {
                rows: 3,
                checksum: 7,
            },
            Digest {
                rows: 2,
                checksum: 7,
            },
        );
        assert!(!rows.matches());
        assert!(
            rows.render()
                .contains("FAILED: the service has 2 rows, the monolith 3 (-1)")
        );
    }
}
