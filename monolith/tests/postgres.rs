//! The board on PostgreSQL (`--db postgres://…`), on a throwaway cluster from `test-postgres`:
//! the schema matches SQLite's, a new monolith database is seeded once with its identity
//! sequences past the seeded ids, a service database starts empty, and the one place where the
//! engines' ids differ is pinned. The legacy contract itself runs on both engines in
//! `contract.rs`.

use std::collections::BTreeMap;

use monolith::db::{self, Db, DbError, Location, Seed};
use monolith::legacy::Resource;
use monolith::posts::{self, NewPost};
use monolith::serve::{self, MonolithArgs, ServeArgs, ServeError};
use monolith::sql::Conn;
use monolith::users::{self, NewUser};
use test_postgres::Cluster;

/// Writes a post `x` in `thread` by `user`.
fn post_in(db: &Db, thread: i64, user: i64) -> Result<posts::Post, DbError> {
    db.run_blocking(|conn| {
        posts::insert(
            &conn,
            &NewPost {
                thread,
                text: "x".into(),
                user,
            },
        )
    })
}

fn counts(db: &Db) -> Vec<u64> {
    db.run_blocking(|conn| Resource::ALL.iter().map(|r| db::count(&conn, *r)).collect())
        .expect("count")
}

/// Each table's columns as `name type nullability`, and its foreign keys, in PostgreSQL.
fn pg_schema(pg: &Cluster, database: &str) -> BTreeMap<String, Vec<String>> {
    let mut client = pg.client(database);
    let mut tables = BTreeMap::new();
    for row in client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
                    coalesce(is_identity::text, 'NO') \
             FROM information_schema.columns WHERE table_schema = 'public' \
             ORDER BY table_name, ordinal_position",
            &[],
        )
        .expect("columns")
    {
        let table: String = row.get(0);
        let line = format!(
            "{} {} null={} identity={}",
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, String>(4)
        );
        tables.entry(table).or_insert_with(Vec::new).push(line);
    }
    for row in client
        .query(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE contype = 'f' ORDER BY 1, 2",
            &[],
        )
        .expect("foreign keys")
    {
        let table: String = row.get(0);
        tables
            .entry(table)
            .or_insert_with(Vec::new)
            .push(row.get(1));
    }
    tables
}

/// The same view of a SQLite database.
fn sqlite_schema(db: &Db) -> BTreeMap<String, Vec<String>> {
    db.blocking(|c| {
        let mut tables = BTreeMap::new();
        for table in ["posts", "threads", "users"] {
            let mut stmt = c.prepare(&format!("PRAGMA table_info({table})"))?;
            let columns: Vec<(String, String, bool, bool)> = stmt
                .query_map([], |r| {
                    Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get::<_, i64>(5)? > 0))
                })?
                .collect::<Result<_, _>>()?;
            let mut lines: Vec<String> = columns
                .into_iter()
                .map(|(name, ty, not_null, key)| {
                    // The SQLite types and the PostgreSQL ones they stand for.
                    let ty = match ty.as_str() {
                        "INTEGER" => "bigint",
                        "TEXT" => "text",
                        other => panic!("unexpected SQLite type {other}"),
                    };
                    let null = if not_null || key { "NO" } else { "YES" };
                    let identity = if key { "YES" } else { "NO" };
                    format!("{name} {ty} null={null} identity={identity}")
                })
                .collect();
            let mut stmt = c.prepare(&format!("PRAGMA foreign_key_list({table})"))?;
            let mut keys: Vec<String> = stmt
                .query_map([], |r| {
                    Ok(format!(
                        "FOREIGN KEY ({}) REFERENCES {}(id)",
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(2)?
                    ))
                })?
                .collect::<Result<_, _>>()?;
            keys.sort();
            lines.extend(keys);
            tables.insert(table.to_owned(), lines);
        }
        Ok(tables)
    })
    .expect("SQLite schema")
}

#[test]
fn the_monolith_has_the_sqlite_schema_and_is_seeded_once() {
    let pg = Cluster::start();
    pg.create_db("monolith");
    for _ in 0..2 {
        let db = Db::connect(&pg.url("monolith"), &Resource::ALL, Seed::Legacy).expect("connect");
        assert_eq!(counts(&db), [4, 3, 6]);
    }
    let sqlite = Db::in_memory(&Resource::ALL, Seed::Legacy).expect("SQLite");
    let mut expected = sqlite_schema(&sqlite);
    // PostgreSQL quotes the keyword column in a constraint's definition.
    for line in expected.get_mut("posts").expect("posts") {
        *line = line.replace("(user)", "(\"user\")");
    }
    expected.get_mut("posts").expect("posts").sort();
    let mut got = pg_schema(&pg, "monolith");
    got.get_mut("posts").expect("posts").sort();
    assert_eq!(got, expected);
}

#[test]
fn new_rows_get_ids_past_the_seeded_ones() {
    let pg = Cluster::start();
    pg.create_db("monolith");
    let db = Db::connect(&pg.url("monolith"), &Resource::ALL, Seed::Legacy).expect("connect");
    let (user, post) = db
        .run_blocking(|conn| {
            let user = users::insert(
                &conn,
                &NewUser {
                    username: "bmo".into(),
                    name: String::new(),
                    bio: String::new(),
                },
            )?;
            let post = posts::insert(
                &conn,
                &NewPost {
                    thread: 1,
                    text: "x".into(),
                    user: user.id,
                },
            )?;
            Ok((user.id, post.id))
        })
        .expect("insert");
    assert_eq!((user, post), (5, 7));
}

/// The one difference between the engines the API can show: SQLite gives a new row the
/// largest id + 1, so the id of a deleted last post comes back; PostgreSQL's identity never
/// gives an id twice. Each engine is pinned here; the contract table creates no row after
/// deleting the last one.
#[test]
fn a_deleted_last_id_is_given_again_only_on_sqlite() {
    let pg = Cluster::start();
    pg.create_db("monolith");
    let on_pg = Db::connect(&pg.url("monolith"), &Resource::ALL, Seed::Legacy).expect("connect");
    let on_sqlite = Db::in_memory(&Resource::ALL, Seed::Legacy).expect("SQLite");
    let new = NewPost {
        thread: 1,
        text: "x".into(),
        user: 1,
    };
    let insert_delete_insert = |db: &Db| {
        let new = new.clone();
        db.run_blocking(move |conn| {
            let first = posts::insert(&conn, &new)?.id;
            assert!(posts::delete(&conn, first)?);
            Ok((first, posts::insert(&conn, &new)?.id))
        })
        .expect("insert, delete, insert")
    };
    assert_eq!(insert_delete_insert(&on_sqlite), (7, 7));
    assert_eq!(insert_delete_insert(&on_pg), (7, 8));
}

#[test]
fn a_service_database_starts_empty_with_only_its_table() {
    let pg = Cluster::start();
    pg.create_db("posts");
    let db = Db::connect(&pg.url("posts"), &[Resource::Posts], Seed::Empty).expect("connect");
    let tables: Vec<String> = pg
        .client("posts")
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["posts"]);
    // No foreign key towards tables it does not own; the first post gets id 1.
    let post = post_in(&db, 99, 99).expect("insert without foreign tables");
    assert_eq!(post.id, 1);
    assert_eq!(
        db.run_blocking(|conn| db::count(&conn, Resource::Posts))
            .expect("count"),
        1
    );
}

#[test]
fn the_monolith_enforces_foreign_keys_and_sqlite_only_calls_say_so() {
    let pg = Cluster::start();
    pg.create_db("monolith");
    let db = Db::connect(&pg.url("monolith"), &Resource::ALL, Seed::Legacy).expect("connect");
    let err = post_in(&db, 99, 1).unwrap_err();
    assert!(err.to_string().contains("foreign key"), "{err}");
    let err = db.blocking(|c| c.execute("SELECT 1", [])).unwrap_err();
    assert!(matches!(err, DbError::NotSqlite("Db::blocking")), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    // A port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let args = MonolithArgs {
        serve: ServeArgs {
            listen: "127.0.0.1:0".parse().expect("addr"),
            db: Location::from(
                format!("postgres://board:hunter2@127.0.0.1:{port}/monolith").as_str(),
            ),
        },
        reference_wait: std::time::Duration::ZERO,
    };
    let err = serve::serve_monolith(&args).await.unwrap_err();
    assert!(matches!(err, ServeError::Db { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "database postgres://board:REDACTED@127.0.0.1:{port}/monolith: cannot connect to PostgreSQL"
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// The other difference: PostgreSQL's text cannot hold U+0000, which SQLite stores (a JSON
/// body's `"\u0000"`); the write fails there with a database error (500).
#[test]
fn text_holding_nul_is_stored_only_by_sqlite() {
    let pg = Cluster::start();
    pg.create_db("users");
    let on_pg = Db::connect(&pg.url("users"), &[Resource::Users], Seed::Empty).expect("connect");
    let on_sqlite = Db::in_memory(&[Resource::Users], Seed::Empty).expect("SQLite");
    let insert = |db: &Db| {
        db.run_blocking(|conn| {
            users::insert(
                &conn,
                &NewUser {
                    username: "nul\u{0}byte".into(),
                    name: String::new(),
                    bio: String::new(),
                },
            )
        })
    };
    assert_eq!(
        insert(&on_sqlite).expect("SQLite stores it").username,
        "nul\u{0}byte"
    );
    let err = insert(&on_pg).unwrap_err();
    assert!(matches!(err, DbError::Postgres(_)), "{err}");
}

/// A connection the server closed (a restart, an administrator) costs at most the query that
/// found it closed: the next one connects again.
#[test]
fn a_connection_the_server_closed_is_opened_again() {
    let pg = Cluster::start();
    pg.create_db("users");
    let db = Db::connect(&pg.url("users"), &[Resource::Users], Seed::Legacy).expect("connect");
    let backend: i32 = db
        .run_blocking(|conn| {
            let Conn::Postgres(pg) = conn else {
                unreachable!("a PostgreSQL database")
            };
            Ok(pg.rows("SELECT pg_backend_pid()", &[])?[0].get(0))
        })
        .expect("backend pid");
    let mut admin = pg.client("postgres");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&backend])
        .expect("terminate");
    // Wait (bounded) until the backend is gone, so the next query meets a closed connection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while admin
        .query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&backend])
        .expect("activity")
        .len()
        == 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "backend {backend} still there"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let count = || db.run_blocking(|conn| db::count(&conn, Resource::Users));
    // The first query may fail (it finds the connection closed); the second may not.
    let answered = count().or_else(|_| count()).expect("connected again");
    assert_eq!(answered, 4);
}
