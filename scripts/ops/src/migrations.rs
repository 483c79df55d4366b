//! `migrations.toml`: the resources the data tools move, each declared once — the route it
//! belongs to, the source database and table, the target database and table, the key column,
//! and optionally columns to leave out or rename (docs/reference.md, "migrations.toml").
//!
//! Errors name their place as `FILE:LINE:COL: message`, like `strangler-proxy check`.
//! Columns are not declared: [`crate::resource::Table::resolve`] reads them from the
//! databases' own catalogues and compares both sides before any row moves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use strangler_proxy::config::{ConfigError, ConfigErrors};
use toml::Spanned;

/// The file's name, beside `routes.toml`.
pub const FILE_NAME: &str = "migrations.toml";

/// Where a database is, as written in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbUrl {
    /// `sqlite:PATH`; a relative path is relative to `--data-dir`.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`, passed to the driver as written.
    Postgres(String),
}

impl DbUrl {
    /// Reads `sqlite:PATH`, `postgres://…` or `postgresql://…`.
    pub fn parse(text: &str) -> Result<DbUrl, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("`sqlite:` needs a file path, e.g. \"sqlite:monolith.db\"".into());
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(DbUrl::Postgres(text.to_string()));
        }
        Err(format!(
            "{text:?} is not a database URL: write \"sqlite:PATH\" (relative to --data-dir) or \
             \"postgres://USER@HOST:PORT/DB\""
        ))
    }

    /// The URL with a relative SQLite path resolved against `data_dir`.
    pub fn resolve(&self, data_dir: &Path) -> DbUrl {
        match self {
            DbUrl::Sqlite(p) if p.is_relative() => DbUrl::Sqlite(data_dir.join(p)),
            other => other.clone(),
        }
    }

    /// For messages: the file path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            DbUrl::Sqlite(p) => p.display().to_string(),
            DbUrl::Postgres(url) => redact(url),
        }
    }

    /// The engine's name: `SQLite` or `PostgreSQL`.
    pub fn engine(&self) -> &'static str {
        match self {
            DbUrl::Sqlite(_) => "SQLite",
            DbUrl::Postgres(_) => "PostgreSQL",
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:REDACTED@host/db`: secrets never reach
/// logs or reports (one rule with the servers' `--db`).
pub use monolith::db::redact;

/// One side of a resource: a database and a table in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The database.
    pub url: DbUrl,
    /// The table.
    pub table: String,
}

/// One resource as declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    /// The resource's name (`[resources.NAME]`): what the scripts take on the command line and
    /// what the state tables record.
    pub name: String,
    /// The `routes.toml` route that serves it.
    pub route: String,
    /// Where its rows are now (the monolith's database).
    pub source: Endpoint,
    /// Where they move (the service's database).
    pub target: Endpoint,
    /// The key column (as named in the source table): a single-column integer primary key.
    pub key: String,
    /// Source columns that are not copied.
    pub exclude: Vec<String>,
    /// Source column → target column, for columns named differently in the target.
    pub rename: BTreeMap<String, String>,
}

impl Declared {
    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source column `column` is called this in the target.
    pub fn target_column<'a>(&'a self, column: &'a str) -> &'a str {
        self.rename.get(column).map_or(column, String::as_str)
    }
}

/// Every resource of one file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrations {
    /// The file as named by the operator (or `built-in` for [`Migrations::tutorial`]).
    pub file: String,
    /// The resources.
    pub resources: Vec<Declared>,
}

/// What [`Migrations::tutorial`] is called in messages.
pub const BUILT_IN: &str = "the built-in migrations.toml (no migrations.toml beside the routes \
                            file; pass --migrations PATH)";

/// The shipped file: the tutorial's three resources.
pub const TUTORIAL: &str = include_str!("../../../migrations.toml");

impl Migrations {
    /// Reads and validates `path`.
    ///
    /// Errors: the file cannot be read; every syntax, type and validation error, each as
    /// `FILE:LINE:COL: message`.
    pub fn load(path: &Path) -> Result<Migrations, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                line: 1,
                column: 1,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Migrations::parse(&file, &text)
    }

    /// The shipped `migrations.toml` (users, threads, posts), for a directory without one.
    pub fn tutorial() -> Migrations {
        Migrations::parse(BUILT_IN, TUTORIAL)
            .expect("the shipped migrations.toml is valid (tested)")
    }

    /// Parses and validates `text`, naming `file` in errors.
    ///
    /// Errors: every problem found, each with its line and column.
    pub fn parse(file: &str, text: &str) -> Result<Migrations, ConfigErrors> {
        let lines = Lines::new(text);
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            file: file.to_string(),
            errors,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            fail(vec![lines.error(at, e.message().trim().to_string())])
        })?;
        let mut errors = Vec::new();
        let mut resources = Vec::new();
        let mut routes: BTreeMap<String, String> = BTreeMap::new();
        if raw.resources.is_empty() {
            errors.push(
                lines.error(
                    0,
                    "no [resources.NAME] table: declare each resource to migrate (see \
                 docs/reference.md, \"migrations.toml\")"
                        .into(),
                ),
            );
        }
        // In file order: the table's keys come sorted.
        let mut raw_resources: Vec<(String, RawResource)> = raw.resources.into_iter().collect();
        raw_resources.sort_by_key(|(_, r)| r.route.span().start);
        for (name, r) in raw_resources {
            if !is_identifier(&name) {
                errors.push(lines.error(
                    r.route.span().start,
                    format!(
                        "resource name {name:?} is not a plain SQL name: use letters, digits \
                         and _ (not starting with a digit) in [resources.NAME]"
                    ),
                ));
            } else if name.len() > MAX_RESOURCE_NAME {
                errors.push(lines.error(
                    r.route.span().start,
                    format!(
                        "resource name {name:?} is {} characters long: at most \
                         {MAX_RESOURCE_NAME} (it names triggers, functions and replication \
                         objects, and PostgreSQL cuts names at 63 bytes)",
                        name.len()
                    ),
                ));
            }
            let mut check_ident = |value: &Spanned<String>, what: &str| {
                if !is_identifier(value.get_ref()) {
                    errors.push(lines.error(
                        value.span().start,
                        format!(
                            "{what} {:?} of resource {name:?} is not a plain SQL name: use \
                             letters, digits and _ (not starting with a digit)",
                            value.get_ref()
                        ),
                    ));
                }
            };
            check_ident(&r.key, "key");
            check_ident(&r.source.table, "source table");
            check_ident(&r.target.table, "target table");
            for c in &r.exclude {
                check_ident(c, "excluded column");
            }
            for (from, to) in &r.rename {
                check_ident(to, &format!("the new name of column {from:?}"));
            }
            if r.exclude.iter().any(|c| c.get_ref() == r.key.get_ref()) {
                let at = r.exclude.iter().find(|c| c.get_ref() == r.key.get_ref());
                errors.push(lines.error(
                    at.map_or(0, |c| c.span().start),
                    format!(
                        "resource {name:?} excludes its key column {:?}: every row needs it; \
                         remove it from exclude",
                        r.key.get_ref()
                    ),
                ));
            }
            for from in r.rename.keys() {
                if r.exclude.iter().any(|c| c.get_ref() == from) {
                    errors.push(lines.error(
                        r.rename[from].span().start,
                        format!(
                            "resource {name:?} both excludes and renames column {from:?}: keep \
                             one"
                        ),
                    ));
                }
            }
            if r.route.get_ref().is_empty() {
                errors.push(lines.error(
                    r.route.span().start,
                    format!("resource {name:?} has an empty route: name its routes.toml route"),
                ));
            } else if let Some(other) = routes.get(r.route.get_ref()) {
                errors.push(lines.error(
                    r.route.span().start,
                    format!(
                        "route {:?} is already the route of resource {other:?}: each route moves \
                         one resource",
                        r.route.get_ref()
                    ),
                ));
            } else {
                routes.insert(r.route.get_ref().clone(), name.clone());
            }
            let mut url = |value: &Spanned<String>| match DbUrl::parse(value.get_ref()) {
                Ok(url) => Some(url),
                Err(message) => {
                    errors.push(lines.error(value.span().start, message));
                    None
                }
            };
            let (source, target) = (url(&r.source.url), url(&r.target.url));
            let (Some(source), Some(target)) = (source, target) else {
                continue;
            };
            if source == target && r.source.table.get_ref() == r.target.table.get_ref() {
                errors.push(lines.error(
                    r.target.table.span().start,
                    format!(
                        "resource {name:?} has the same database and table as source and \
                         target: the target is the service's own table"
                    ),
                ));
            }
            resources.push(Declared {
                name,
                route: r.route.into_inner(),
                source: Endpoint {
                    url: source,
                    table: r.source.table.into_inner(),
                },
                target: Endpoint {
                    url: target,
                    table: r.target.table.into_inner(),
                },
                key: r.key.into_inner(),
                exclude: r.exclude.into_iter().map(Spanned::into_inner).collect(),
                rename: r
                    .rename
                    .into_iter()
                    .map(|(k, v)| (k, v.into_inner()))
                    .collect(),
            });
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(fail(errors));
        }
        Ok(Migrations {
            file: file.to_string(),
            resources,
        })
    }

    /// The resource named `name`.
    ///
    /// Errors: no such resource (listing the declared ones).
    pub fn get(&self, name: &str) -> anyhow::Result<&Declared> {
        self.resources
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown resource {name:?}: {} declares {}",
                    self.file,
                    self.resources
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// The resource whose route is `route`, if one is declared.
    pub fn by_route(&self, route: &str) -> Option<&Declared> {
        self.resources.iter().find(|r| r.route == route)
    }
}

/// The longest resource name: `_strangler_capture_` + NAME (+ `_insert` on SQLite) and
/// `strangler_` + NAME stay within PostgreSQL's 63-byte identifiers.
pub const MAX_RESOURCE_NAME: usize = 40;

/// Whether `s` can be written into SQL unquoted: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    resources: BTreeMap<String, RawResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    route: Spanned<String>,
    key: Spanned<String>,
    source: RawEndpoint,
    target: RawEndpoint,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    #[serde(default)]
    rename: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    url: Spanned<String>,
    table: Spanned<String>,
}

/// Byte offsets → 1-based line and column (in characters).
struct Lines<'t> {
    text: &'t str,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        Lines { text }
    }

    fn error(&self, offset: usize, message: String) -> ConfigError {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        ConfigError {
            line,
            column: self.text[start..offset].chars().count() + 1,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_declares_the_tutorial_resources() {
        let m = Migrations::tutorial();
        let names: Vec<&str> = m.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["users", "threads", "posts"]);
        let users = m.get("users").unwrap();
        assert_eq!(users.source.url, DbUrl::Sqlite("monolith.db".into()));
        assert_eq!(users.target.url, DbUrl::Sqlite("users.db".into()));
        assert_eq!(users.key, "id");
        assert_eq!(m.by_route("posts").unwrap().name, "posts");
        assert!(
            m.get("accounts")
                .unwrap_err()
                .to_string()
                .contains("users, threads, posts")
        );
    }

    #[test]
    fn errors_name_line_and_column() {
        let text = "[resources.accounts]\nroute = \"accounts\"\nkey = \"account id\"\n\
                    source = { url = \"mysql://x\", table = \"accounts\" }\n\
                    target = { url = \"sqlite:a.db\", table = \"accounts\" }\n\
                    exclude = [\"account id\"]\n";
        let e = Migrations::parse("m.toml", text).unwrap_err().to_string();
        assert!(e.contains("m.toml:3:7: key \"account id\""), "{e}");
        assert!(
            e.contains("m.toml:4:18: \"mysql://x\" is not a database URL"),
            "{e}"
        );
        assert!(
            e.contains("m.toml:6:12: resource \"accounts\" excludes its key"),
            "{e}"
        );
        let unknown = "[resources.a]\nroute = \"a\"\nkey = \"id\"\ncolumns = 3\n";
        let e = Migrations::parse("m.toml", unknown)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.toml:4:1: unknown field `columns`"), "{e}");
        let missing = "[resources.a]\nroute = \"a\"\nkey = \"id\"\n";
        let e = Migrations::parse("m.toml", missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `source`"), "{e}");
        let twice = "[resources.a]\nroute = \"r\"\nkey = \"id\"\n\
                     source = { url = \"sqlite:m.db\", table = \"a\" }\n\
                     target = { url = \"sqlite:a.db\", table = \"a\" }\n\
                     [resources.b]\nroute = \"r\"\nkey = \"id\"\n\
                     source = { url = \"sqlite:m.db\", table = \"b\" }\n\
                     target = { url = \"sqlite:b.db\", table = \"b\" }\n";
        let e = Migrations::parse("m.toml", twice).unwrap_err().to_string();
        assert!(
            e.contains("m.toml:7:9: route \"r\" is already the route of resource \"a\""),
            "{e}"
        );
        let long = "x".repeat(MAX_RESOURCE_NAME + 1);
        let text = format!(
            "[resources.{long}]\nroute = \"r\"\nkey = \"id\"\n\
             source = {{ url = \"sqlite:m.db\", table = \"a\" }}\n\
             target = {{ url = \"sqlite:a.db\", table = \"a\" }}\n"
        );
        let e = Migrations::parse("m.toml", &text).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "m.toml:2:9: resource name \"{long}\" is 41 characters long"
            )),
            "{e}"
        );
        let fits = text.replace(&long, &"x".repeat(MAX_RESOURCE_NAME));
        assert!(Migrations::parse("m.toml", &fits).is_ok());
    }

    #[test]
    fn urls_resolve_and_redact() {
        let url = DbUrl::parse("sqlite:m.db").unwrap();
        assert_eq!(
            url.resolve(Path::new("/d")),
            DbUrl::Sqlite("/d/m.db".into())
        );
        let abs = DbUrl::parse("sqlite:///abs/m.db").unwrap();
        assert_eq!(
            abs.resolve(Path::new("/d")),
            DbUrl::Sqlite("/abs/m.db".into())
        );
        let pg = DbUrl::parse("postgres://app:hunter2@127.0.0.1:5432/shop").unwrap();
        assert_eq!(pg.display(), "postgres://app:REDACTED@127.0.0.1:5432/shop");
        assert!(!pg.display().contains("hunter2"));
    }
}
