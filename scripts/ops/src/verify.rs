//! Verification of a copy: row count and an order-independent content checksum of the same
//! table on both sides, computed in Rust so the figure does not depend on SQLite's version.
//!
//! Each row hashes to 64 bits with XXH3 (a fixed, published function) over a canonical encoding
//! of its columns — a type tag, then the value; text and blobs carry their length, so
//! ("ab","c") and ("a","bc") differ — and the table's checksum is the wrapping sum of the row
//! hashes, so it does not depend on the order rows are read in.

use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use xxhash_rust::xxh3::xxh3_64;

use crate::conflicts::{self, Conflict};
use crate::resource::Table;
use crate::text_table::TextTable;

/// Row count and checksum of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    /// Rows.
    pub rows: u64,
    /// Wrapping sum of the rows' XXH3-64 hashes.
    pub checksum: u64,
}

/// Digests `table` in database `schema` (`main` or `src`) as the connection sees it now.
pub fn digest(conn: &Connection, schema: &str, table: Table) -> rusqlite::Result<Digest> {
    digest_except(conn, schema, table, None)
}

/// As [`digest`], leaving out the row `except` (the id fence, see [`crate::sync::raise_high_water`]).
pub fn digest_except(
    conn: &Connection,
    schema: &str,
    table: Table,
    except: Option<i64>,
) -> rusqlite::Result<Digest> {
    let sql = format!(
        "SELECT {} FROM {schema}.{} WHERE ?1 IS NULL OR id IS NOT ?1",
        table.column_list(),
        table.name()
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([except])?;
    let mut buf = Vec::with_capacity(256);
    let mut digest = Digest {
        rows: 0,
        checksum: 0,
    };
    while let Some(row) = rows.next()? {
        buf.clear();
        for i in 0..table.columns.len() {
            encode(&mut buf, row.get_ref(i)?);
        }
        digest.rows += 1;
        digest.checksum = digest.checksum.wrapping_add(xxh3_64(&buf));
    }
    Ok(digest)
}

/// The canonical bytes of one value.
fn encode(buf: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => buf.push(0),
        ValueRef::Integer(v) => {
            buf.push(1);
            buf.extend_from_slice(&v.to_le_bytes());
        }
        ValueRef::Real(v) => {
            buf.push(2);
            buf.extend_from_slice(&v.to_le_bytes());
        }
        ValueRef::Text(v) => {
            buf.push(3);
            buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
            buf.extend_from_slice(v);
        }
        ValueRef::Blob(v) => {
            buf.push(4);
            buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
            buf.extend_from_slice(v);
        }
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
        table: Table,
        source_label: String,
        target_label: String,
    ) -> rusqlite::Result<Verification> {
        let started = Instant::now();
        let fence = crate::sync::fence_of(conn, table)?;
        let source = digest_except(conn, "src", table, fence)?;
        let target = digest_except(conn, "main", table, fence)?;
        Ok(Verification {
            table,
            source_label,
            target_label,
            source,
            target,
            took: started.elapsed(),
            conflicts: conflicts::unresolved(conn, table)?,
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
            self.table.name().to_string(),
            self.source.rows.to_string(),
            format!("{:016x}", self.source.checksum),
        ]);
        t.row([
            "service".to_string(),
            self.target_label.clone(),
            self.table.name().to_string(),
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
    use monolith::legacy::Resource;

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
        let users = Table::of(Resource::Users);
        let a = db(&[(1, "a", "A", ""), (2, "b", "B", "bio")]);
        let b = db(&[(2, "b", "B", "bio"), (1, "a", "A", "")]);
        assert_eq!(
            digest(&a, "main", users).unwrap(),
            digest(&b, "main", users).unwrap()
        );
        // Moving a character between columns changes the row.
        let c = db(&[(1, "a", "A", ""), (2, "b", "Bb", "io")]);
        assert_ne!(
            digest(&a, "main", users).unwrap().checksum,
            digest(&c, "main", users).unwrap().checksum
        );
        // Swapping a field between two rows keeps the multiset of values but not the rows.
        let d = db(&[(1, "b", "A", ""), (2, "a", "B", "bio")]);
        assert_ne!(
            digest(&a, "main", users).unwrap().checksum,
            digest(&d, "main", users).unwrap().checksum
        );
        assert_eq!(digest(&a, "main", users).unwrap().rows, 2);
    }

    #[test]
    fn a_mismatch_is_never_reported_as_ok() {
        let v = |source: Digest, target: Digest| Verification {
            table: Table::of(Resource::Posts),
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
