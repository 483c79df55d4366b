//! The tables a migration moves: each resource's columns and the SQL that copies them.

use monolith::legacy::Resource;

/// One resource's table, as both the monolith and the owning service create it
/// (`monolith::db::create_schema`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// The resource, whose name is also the table's.
    pub resource: Resource,
    /// Every column, `id` first, in the order checksums read them.
    pub columns: &'static [&'static str],
}

impl Table {
    /// The table of `resource`.
    pub fn of(resource: Resource) -> Table {
        let columns: &'static [&'static str] = match resource {
            Resource::Users => &["id", "username", "name", "bio"],
            Resource::Threads => &["id", "title", "created_by"],
            Resource::Posts => &["id", "thread", "text", "user"],
        };
        Table { resource, columns }
    }

    /// Values for every column but `id` of a placeholder row nothing refers to and no filter
    /// route lists (empty texts, references to id 0), satisfying the NOT NULL constraints.
    pub fn placeholder_values(&self) -> &'static str {
        match self.resource {
            Resource::Users => "'', '', ''",
            Resource::Threads => "'', 0",
            Resource::Posts => "0, '', 0",
        }
    }

    /// The table name.
    pub fn name(&self) -> &'static str {
        self.resource.name()
    }

    /// `id, username, …` for a SELECT or an INSERT column list.
    pub fn column_list(&self) -> String {
        self.columns.join(", ")
    }

    /// `INSERT INTO main.T (…) SELECT … FROM src.T WHERE <filter>` turned into an upsert that
    /// leaves identical rows untouched, so re-running a copy rewrites nothing that is already
    /// right (and `changes()` counts only rows that really changed).
    pub fn upsert_from_source(&self, filter: &str) -> String {
        self.upsert("src", "main", filter)
    }

    /// As [`Table::upsert_from_source`] between any two attached databases: copies the rows of
    /// `from.T` matching `filter` into `to.T`.
    pub fn upsert(&self, from: &str, to: &str, filter: &str) -> String {
        let name = self.name();
        let cols = self.column_list();
        let rest = &self.columns[1..];
        let set = rest
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let old = rest
            .iter()
            .map(|c| format!("{to}.{name}.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let new = rest
            .iter()
            .map(|c| format!("excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {to}.{name} ({cols}) SELECT {cols} FROM {from}.{name} WHERE {filter} ORDER BY id \
             ON CONFLICT(id) DO UPDATE SET {set} WHERE ({old}) IS NOT ({new})"
        )
    }
}

/// Reads a resource name as typed on the command line.
pub fn parse(name: &str) -> Result<Resource, String> {
    Resource::ALL
        .into_iter()
        .find(|r| r.name() == name)
        .ok_or_else(|| {
            format!(
                "unknown resource {name:?}: expected one of {}",
                Resource::ALL.map(Resource::name).join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_by_table_name() {
        assert_eq!(parse("posts"), Ok(Resource::Posts));
        assert!(parse("post").unwrap_err().contains("users, threads, posts"));
    }

    #[test]
    fn the_upsert_skips_identical_rows() {
        let sql = Table::of(Resource::Threads).upsert_from_source("id = ?1");
        assert_eq!(
            sql,
            "INSERT INTO main.threads (id, title, created_by) SELECT id, title, created_by FROM \
             src.threads WHERE id = ?1 ORDER BY id ON CONFLICT(id) DO UPDATE SET title = \
             excluded.title, created_by = excluded.created_by WHERE (main.threads.title, \
             main.threads.created_by) IS NOT (excluded.title, excluded.created_by)"
        );
    }
}
