//! Verification of a copy: row count and an order-independent content checksum of the same
//! table on both sides, computed in Rust so the figure does not depend on SQLite's version.
//!
//! Each row hashes to 64 bits with XXH3 (a fixed, published function) over a canonical encoding
//! of its columns — a type tag, then the value; text and blobs carry their length, so
//! ("ab","c") and ("a","bc") differ — and the table's checksum is the wrapping sum of the row
//! hashes, so it does not depend on the order rows are read in.

use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use crate::capture;
use crate::conflicts::{self, Conflict};
use crate::db::{Db, Value};
use crate::pair::Pair;
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

impl Digest {
    /// Digests `table` on `side` in `db` but the row keyed `except`, inside the caller's
    /// transaction (one snapshot) if there is one.
    ///
    /// Errors: the table cannot be read.
    pub fn of(
        db: &mut Db,
        table: &Table,
        side: Side,
        except: Option<i64>,
    ) -> anyhow::Result<Digest> {
        let mut d = Digest::default();
        db.scan(table, side, except, &mut |row| d.add(row))?;
        Ok(d)
    }

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
    /// Digests both sides of a migration, each as one snapshot, leaving out the id fence
    /// ([`crate::sync::raise_high_water`]), and lists unresolved conflicts.
    ///
    /// Errors: either side cannot be read.
    pub fn run(
        pair: &mut Pair,
        table: &Table,
        labels: (String, String),
    ) -> anyhow::Result<Verification> {
        let started = Instant::now();
        let fence = crate::sync::fence_of(&mut pair.service, table)?;
        let s = pair
            .monolith
            .transaction(false, |db| Digest::of(db, table, Side::Monolith, fence))?;
        let t = pair
            .service
            .transaction(false, |db| Digest::of(db, table, Side::Service, fence))?;
        Ok(Verification {
            table: table.clone(),
            source_label: labels.0,
            target_label: labels.1,
            source: s,
            target: t,
            took: started.elapsed(),
            conflicts: conflicts::unresolved(&mut pair.service, table)?,
        })
    }

    /// As [`Verification::run`] while `writer` keeps taking writes that change capture
    /// carries to the other side: `writer` is digested in the same snapshot that finds its
    /// change table empty, so the other side (written only by the applier) holds exactly the
    /// changes made before it. `None` when changes are waiting (apply them and call again).
    ///
    /// Errors: either side cannot be read.
    pub fn drained(
        pair: &mut Pair,
        table: &Table,
        writer: Side,
        labels: (String, String),
    ) -> anyhow::Result<Option<Verification>> {
        let started = Instant::now();
        let fence = crate::sync::fence_of(&mut pair.service, table)?;
        let drained = pair.db(writer).transaction(false, |db| {
            if capture::backlog(db, table)?.0 > 0 {
                return Ok(None);
            }
            Digest::of(db, table, writer, fence).map(Some)
        })?;
        let Some(w) = drained else {
            return Ok(None);
        };
        let o = pair
            .db(writer.other())
            .transaction(false, |db| Digest::of(db, table, writer.other(), fence))?;
        let (source, target) = match writer {
            Side::Monolith => (w, o),
            Side::Service => (o, w),
        };
        Ok(Some(Verification {
            table: table.clone(),
            source_label: labels.0,
            target_label: labels.1,
            source,
            target,
            took: started.elapsed(),
            conflicts: conflicts::unresolved(&mut pair.service, table)?,
        }))
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

    fn db(rows: &[(i64, &str, &str, &str)]) -> Db {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE main.users (id INTEGER PRIMARY KEY, username TEXT, name TEXT, bio TEXT);",
        )
        .expect("schema");
        for (id, u, n, b) in rows {
            conn.execute(
                "INSERT INTO main.users VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id, u, n, b],
            )
            .expect("insert");
        }
        Db::Sqlite(conn)
    }

    fn digest(db: &mut Db, table: &Table) -> Digest {
        Digest::of(db, table, Side::Service, None).expect("scan")
    }

    #[test]
    fn the_checksum_ignores_order_but_not_content() {
        let users = &table("users");
        let a = digest(&mut db(&[(1, "a", "A", ""), (2, "b", "B", "bio")]), users);
        let b = digest(&mut db(&[(2, "b", "B", "bio"), (1, "a", "A", "")]), users);
        assert_eq!(a, b);
        // Moving a character between columns changes the row.
        let c = digest(&mut db(&[(1, "a", "A", ""), (2, "b", "Bb", "io")]), users);
        assert_ne!(a.checksum, c.checksum);
        // Swapping a field between two rows keeps the multiset of values but not the rows.
        let d = digest(&mut db(&[(1, "b", "A", ""), (2, "a", "B", "bio")]), users);
        assert_ne!(a.checksum, d.checksum);
        assert_eq!(a.rows, 2);
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
