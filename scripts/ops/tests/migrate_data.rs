//! `migrate-data`: copy, idempotence, resumption after kill -9, verification failures, and
//! `--follow` change capture, against real SQLite files made by the monolith's own code.

mod common;

use std::time::Duration;

use common::{OpsTest, SHIPPED, count, eventually, sqlite, stderr, stdout};

#[test]
fn a_copy_is_verified_idempotent_and_syncs_updates_and_deletes() {
    let dir = OpsTest::new("copy").board(50, 40, 3000).start();
    let first = dir.migrate(&["posts", "--batch", "700"]);
    let out = stdout(&first);
    assert!(first.status.success(), "{out}\n{}", stderr(&first));
    assert!(
        out.contains("3000 rows read, 3000 written, 0 removed"),
        "{out}"
    );
    assert!(
        out.contains("verification OK: 3000 rows, checksums equal"),
        "{out}"
    );
    assert_eq!(count(&dir.join("posts.db"), "posts"), 3000);
    // Not a terminal: progress comes as plain lines on stderr.
    assert!(
        stderr(&first).contains("copying posts: 3000/3000 rows (100.0%)"),
        "{}",
        stderr(&first)
    );

    // The service's database has the service's schema: only its own table, plus the checkpoint.
    let tables: Vec<String> = sqlite(&dir.join("posts.db"))
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["_strangler_migration", "posts"]);

    // Running again rewrites nothing.
    let again = dir.migrate(&["posts"]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("3000 rows read, 0 written, 0 removed"),
        "{}",
        stdout(&again)
    );

    // Changes in the monolith are carried over by the next run: an update, deletes at the
    // start, middle and end of the id range, and an insert.
    let m = sqlite(&dir.join("monolith.db"));
    m.execute_batch(
        "UPDATE posts SET text = 'edited' WHERE id = 1500;
         DELETE FROM posts WHERE id IN (1, 2000, 3000);
         INSERT INTO posts (id, thread, text, user) VALUES (5000, 1, 'new', 1);",
    )
    .unwrap();
    let sync = dir.migrate(&["posts", "--batch", "1000"]);
    let out = stdout(&sync);
    assert!(sync.status.success(), "{out}");
    assert!(
        out.contains("2998 rows read, 2 written, 3 removed"),
        "{out}"
    );
    assert!(out.contains("verification OK: 2998 rows"), "{out}");
    let text: String = sqlite(&dir.join("posts.db"))
        .query_row("SELECT text FROM posts WHERE id = 1500", [], |r| r.get(0))
        .unwrap();
    assert_eq!(text, "edited");
}

#[test]
fn every_resource_lands_in_its_own_database() {
    let dir = OpsTest::new("resources").board(30, 20, 10).start();
    for (resource, rows) in [("users", 30), ("threads", 20)] {
        let o = dir.migrate(&[resource]);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        assert!(
            stdout(&o).contains(&format!("verification OK: {rows} rows")),
            "{}",
            stdout(&o)
        );
        assert_eq!(count(&dir.join(&format!("{resource}.db")), resource), rows);
    }
}

#[test]
fn a_tampered_copy_fails_verification_with_exit_1() {
    let dir = OpsTest::new("tamper").board(20, 10, 500).start();
    assert!(dir.migrate(&["posts"]).status.success());
    let service = dir.join("posts.db");

    // Same row count, one changed character: only the checksum can tell.
    sqlite(&service)
        .execute("UPDATE posts SET text = text || '!' WHERE id = 250", [])
        .unwrap();
    let o = dir.migrate(&["posts", "--verify-only"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains("verification FAILED: same row count (500), different content"),
        "{out}"
    );
    assert!(!out.contains("verification OK"), "{out}");

    // A missing row.
    sqlite(&service)
        .execute("DELETE FROM posts WHERE id = 7", [])
        .unwrap();
    let o = dir.migrate(&["posts", "--verify-only"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("the service has 499 rows, the monolith 500 (-1)"),
        "{}",
        stdout(&o)
    );

    // A copy repairs it.
    let o = dir.migrate(&["posts"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("verification OK: 500 rows"));
}

#[test]
fn a_copy_killed_mid_way_resumes_from_its_checkpoint() {
    let dir = OpsTest::new("kill").board(100, 100, 60_000).start();
    let service = dir.join("posts.db");
    let (mut child, _) = dir.spawn_migrate(&["posts", "--batch", "1000", "--batch-pause", "40ms"]);
    // Wait until a few batches are committed, then kill -9 (no chance to clean up).
    let at = eventually(Duration::from_secs(60), "a few committed batches", || {
        let conn = rusqlite::Connection::open(&service).ok()?;
        let id: Option<i64> = conn
            .query_row(
                "SELECT copied_up_to FROM _strangler_migration WHERE resource = 'posts'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        id.filter(|id| *id >= 5000)
    });
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert!(!status.success());
    let copied = count(&service, "posts");
    assert!(
        copied >= at && copied < 60_000,
        "killed mid-way: {copied} rows copied"
    );
    let checkpoint: i64 = sqlite(&service)
        .query_row("SELECT copied_up_to FROM _strangler_migration", [], |r| {
            r.get(0)
        })
        .unwrap();
    // Batch and checkpoint commit together: every row up to the checkpoint is there, none after.
    assert_eq!(copied, checkpoint, "rows and checkpoint agree");

    let o = dir.migrate(&["posts", "--batch", "5000"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains(&format!(
            "resuming the interrupted copy of posts after id {checkpoint}"
        )),
        "{out}"
    );
    let rest = 60_000 - checkpoint;
    assert!(
        out.contains(&format!("{rest} rows read, {rest} written")),
        "{out}"
    );
    assert!(
        out.contains("verification OK: 60000 rows, checksums equal"),
        "{out}"
    );
    // A finished copy clears its checkpoint, so the next run checks every row again.
    let after: Option<i64> = sqlite(&service)
        .query_row("SELECT copied_up_to FROM _strangler_migration", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(after, None);
}

#[test]
fn a_copy_refuses_while_the_service_takes_writes() {
    let dir = OpsTest::new("guard").board(5, 5, 5).start();
    dir.write_routes(&SHIPPED.replacen("weight  = 0", "weight  = 30", 1));
    let o = dir.migrate(&["users"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("route \"users\" sends writes to service \"users\" (weight 30)"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("users.db").exists(), "nothing was touched");
    // Threads are not routed to their service yet: fine.
    assert!(dir.migrate(&["threads"]).status.success());
    assert!(dir.migrate(&["users", "--force"]).status.success());
}

#[test]
fn follow_applies_inserts_updates_and_deletes_until_sigterm() {
    let dir = OpsTest::new("follow").board(10, 10, 2000).start();
    let service = dir.join("posts.db");
    let (mut child, mut out) = dir.spawn_migrate(&[
        "posts",
        "--follow",
        "--poll",
        "50ms",
        "--report-every",
        "300ms",
    ]);
    out.wait_for("following changes to posts");
    assert!(out.saw("verification OK: 2000 rows"), "{:?}", out.seen);

    // Write to the monolith as the monolith does (its own connection, foreign keys on).
    let m = monolith::db::Db::open(
        &dir.join("monolith.db"),
        &monolith::legacy::Resource::ALL,
        monolith::db::Seed::Empty,
    )
    .unwrap();
    let new_id = m
        .blocking(|c| {
            let post = monolith::posts::insert(
                c,
                &monolith::posts::NewPost {
                    thread: 3,
                    text: "written after the copy".into(),
                    user: 4,
                },
            )?;
            c.execute("UPDATE posts SET text = 'changed' WHERE id = 10", [])?;
            monolith::posts::delete(c, 20)?;
            Ok(post.id)
        })
        .unwrap();
    assert_eq!(new_id, 2001);
    eventually(
        Duration::from_secs(30),
        "changes applied to the service",
        || {
            let c = sqlite(&service);
            let new: i64 = c
            .query_row("SELECT count(*) FROM posts WHERE id = 2001 AND text = 'written after the copy'", [], |r| r.get(0))
            .ok()?;
            let changed: i64 = c
                .query_row(
                    "SELECT count(*) FROM posts WHERE id = 10 AND text = 'changed'",
                    [],
                    |r| r.get(0),
                )
                .ok()?;
            let gone: i64 = c
                .query_row("SELECT count(*) FROM posts WHERE id = 20", [], |r| r.get(0))
                .ok()?;
            (new == 1 && changed == 1 && gone == 0).then_some(())
        },
    );
    out.wait_for("changes applied in the last");
    assert!(out.saw("backlog 0"), "{:?}", out.seen);

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    out.wait_for("stopped following; change capture removed");
    out.wait_for("verification OK: 2000 rows");
    assert!(status.success(), "exit {status:?}: {:?}", out.seen);

    // The monolith is left as it was: no triggers, no side table.
    let leftovers: i64 = sqlite(&dir.join("monolith.db"))
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name GLOB '_strangler*'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0);
}
