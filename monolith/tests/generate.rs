//! `monolith generate`: deterministic, refuses to clobber, and a plan's rows are all there.

mod support;

use monolith::db::{self, Checksum, Db, Seed};
use monolith::generate::{self, GenerateArgs, GenerateError, Plan};
use monolith::legacy::Resource;

fn generated(plan: &Plan) -> Vec<Checksum> {
    let db = Db::in_memory(&Resource::ALL, Seed::Empty).expect("database");
    db.blocking(|conn| Ok(generate::fill(conn, plan, false)))
        .expect("lock")
        .expect("fill");
    Resource::ALL
        .iter()
        .map(|table| db.blocking(|c| db::checksum(c, *table)).expect("checksum"))
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_rows() {
    let plan = Plan {
        users: 50,
        threads: 120,
        posts: 2_000,
        seed: 42,
    };
    let first = generated(&plan);
    assert_eq!(
        first.iter().map(|c| c.rows).collect::<Vec<_>>(),
        [50, 120, 2_000]
    );
    assert_eq!(generated(&plan), first);
    let other = generated(&Plan { seed: 43, ..plan });
    for (a, b) in first.iter().zip(&other) {
        assert_ne!(a.hash, b.hash, "another seed, other rows");
    }
}

#[test]
fn generated_rows_respect_the_foreign_keys_and_filters_use_indexes() {
    let db = Db::in_memory(&Resource::ALL, Seed::Empty).expect("database");
    let plan = Plan {
        users: 10,
        threads: 20,
        posts: 300,
        seed: 7,
    };
    db.blocking(|conn| Ok(generate::fill(conn, &plan, false)))
        .expect("lock")
        .expect("fill");
    let violations: i64 = db
        .blocking(|c| {
            c.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
        })
        .expect("check");
    assert_eq!(violations, 0);
    let plan_text: String = db
        .blocking(|c| {
            c.query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM posts WHERE thread = 3 ORDER BY id",
                [],
                |r| r.get(3),
            )
        })
        .expect("plan");
    assert!(plan_text.contains("posts_by_thread"), "{plan_text}");
}

#[test]
fn a_database_with_rows_is_refused_unless_replace() {
    let file = support::TempDb::new("generate");
    // A monolith database is seeded with the legacy rows.
    drop(Db::open(&file.path(), &Resource::ALL, Seed::Legacy).expect("seed"));
    let mut args = GenerateArgs {
        db: file.path(),
        users: 3,
        threads: 2,
        posts: 5,
        seed: 1,
        replace: false,
    };
    let err = generate::run(&args).unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::NotEmpty {
                users: 4,
                threads: 3,
                posts: 6
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("pass --replace"), "{err}");

    args.replace = true;
    generate::run(&args).expect("replace");
    let db = Db::open(&file.path(), &Resource::ALL, Seed::Legacy).expect("reopen");
    let counts: Vec<u64> = Resource::ALL
        .iter()
        .map(|t| db.blocking(|c| db::count(c, *t)).expect("count"))
        .collect();
    assert_eq!(counts, [3, 2, 5], "replaced, and not re-seeded on reopen");
}

#[test]
fn impossible_plans_are_refused() {
    let db = Db::in_memory(&Resource::ALL, Seed::Empty).expect("database");
    for plan in [
        Plan {
            users: 0,
            threads: 1,
            posts: 0,
            seed: 1,
        },
        Plan {
            users: 1,
            threads: 0,
            posts: 1,
            seed: 1,
        },
    ] {
        let result = db
            .blocking(|conn| Ok(generate::fill(conn, &plan, false)))
            .expect("lock");
        assert!(
            matches!(result, Err(GenerateError::Impossible(_))),
            "{plan:?}"
        );
    }
}

#[test]
fn a_postgres_url_is_refused_not_read_as_a_path() {
    let result = generate::run(&GenerateArgs {
        db: "postgres://postgres@127.0.0.1:5433/monolith".into(),
        users: 1,
        threads: 0,
        posts: 0,
        seed: 1,
        replace: false,
    });
    let err = result.unwrap_err();
    assert!(matches!(err, GenerateError::Impossible(_)), "{err}");
    assert!(
        err.to_string()
            .contains("generate fills a SQLite file only"),
        "{err}"
    );
}
