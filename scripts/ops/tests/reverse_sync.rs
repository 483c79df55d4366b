//! Reversible write cutover, data half: capture on both sides without ping-pong, a follower that
//! turns around when the recorded direction flips, conflicts instead of overwrites, ids that
//! never collide, resumption after kill -9 in both directions, and `complete`.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt as _;
use monolith::app::Board;
use monolith::db::{Db, Seed};
use monolith::legacy::Resource;
use monolith::references::RemoteReferences;
use strangler_ops::capture;
use strangler_ops::pair::{Open, Pair};
use strangler_ops::sync::{self, Direction, Side, SyncStage};
use tower::ServiceExt as _;

use common::{Lines, Ops, OpsTest, eventually, sqlite, stderr, stdout};

const LONG: Duration = Duration::from_secs(30);

/// A follower (`migrate-data RESOURCE --follow …`) with its stdout read line by line.
fn follower(dir: &Ops, extra: &[&str]) -> (Child, Lines) {
    let mut all = extra.to_vec();
    all.extend(["--poll", "5ms", "--report-every", "300ms"]);
    dir.spawn_migrate(&all)
}

fn kill9(child: &mut Child) {
    child.kill().expect("kill -9");
    child.wait().expect("wait");
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    child.wait().expect("wait")
}

/// Waits for a child to exit on its own.
fn exits(child: &mut Child) -> std::process::ExitStatus {
    eventually(LONG, "the follower to exit", || {
        child.try_wait().expect("try_wait")
    })
}

fn changes(db: &Path) -> i64 {
    let c = sqlite(db);
    let exists: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = '_strangler_changes'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if exists == 0 {
        return 0;
    }
    c.query_row("SELECT count(*) FROM _strangler_changes", [], |r| r.get(0))
        .unwrap()
}

fn text_of(db: &Path, id: i64) -> Option<String> {
    sqlite(db)
        .query_row("SELECT text FROM posts WHERE id = ?1", [id], |r| r.get(0))
        .ok()
}

fn strangler_objects(db: &Path) -> Vec<String> {
    sqlite(db)
        .prepare("SELECT name FROM sqlite_master WHERE name GLOB '_strangler*' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn an_applied_change_is_never_captured_back_but_client_writes_are() {
    let dir = OpsTest::new("pingpong").board(5, 5, 50).start();
    assert!(dir.migrate(&["posts"]).status.success());
    let (m, s) = (dir.join("monolith.db"), dir.join("posts.db"));
    let (mut pair, table) = Pair::open(
        dir.path(),
        &common::declared(Resource::Posts),
        Open::Existing,
    )
    .expect("open");
    let table = &table;
    capture::install(&mut pair.monolith, table, Side::Monolith).unwrap();
    capture::install(&mut pair.service, table, Side::Service).unwrap();

    // A client write on the monolith is captured there; applying it forward is not captured
    // by the service's triggers.
    sqlite(&m)
        .execute(
            "UPDATE posts SET text = 'from the monolith' WHERE id = 3",
            [],
        )
        .unwrap();
    assert_eq!(changes(&m), 1);
    let applied = capture::apply(&mut pair, table, Direction::Forward, 100).unwrap();
    assert_eq!((applied.changes, applied.conflicts.len()), (1, 0));
    capture::forget(&mut pair.monolith, table, &applied.seqs).unwrap();
    assert_eq!(text_of(&s, 3).as_deref(), Some("from the monolith"));
    assert_eq!(changes(&s), 0, "the forward apply was captured back");

    // The same the other way round.
    sqlite(&s)
        .execute(
            "UPDATE posts SET text = 'from the service' WHERE id = 4",
            [],
        )
        .unwrap();
    sqlite(&s)
        .execute("DELETE FROM posts WHERE id = 5", [])
        .unwrap();
    assert_eq!(changes(&s), 2, "client writes on the service are captured");
    let applied = capture::apply(&mut pair, table, Direction::Reverse, 100).unwrap();
    assert_eq!((applied.changes, applied.conflicts.len()), (2, 0));
    capture::forget(&mut pair.service, table, &applied.seqs).unwrap();
    assert_eq!(text_of(&m, 4).as_deref(), Some("from the service"));
    assert_eq!(text_of(&m, 5), None);
    assert_eq!(changes(&m), 0, "the reverse apply was captured back");

    // The marker was never committed: the next client writes on either side are captured.
    sqlite(&m)
        .execute("UPDATE posts SET text = 'again' WHERE id = 6", [])
        .unwrap();
    sqlite(&s)
        .execute("UPDATE posts SET text = 'again' WHERE id = 7", [])
        .unwrap();
    assert_eq!((changes(&m), changes(&s)), (1, 1));
}

#[test]
fn a_follower_turns_around_on_a_switch_and_exits_on_complete() {
    let dir = OpsTest::new("cycle").board(10, 10, 200).start();
    let (m, s) = (dir.join("monolith.db"), dir.join("posts.db"));
    assert!(
        sync::read_state(dir.path(), &common::declared(Resource::Posts))
            .unwrap()
            .is_none()
    );
    assert!(!s.exists(), "read_state creates nothing");

    // --reverse is refused while the monolith takes the writes.
    let o = dir.migrate(&["posts", "--reverse"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("scripts/migrate-data posts --follow"),
        "{}",
        stderr(&o)
    );

    let (mut child, mut out) = follower(&dir, &["posts", "--follow"]);
    out.wait_for("following changes to posts in the monolith");
    assert!(out.saw("verification OK: 200 rows"), "{:?}", out.seen);
    let state = sync::read_state(dir.path(), &common::declared(Resource::Posts))
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.direction, state.stage),
        (Direction::Forward, SyncStage::Following)
    );
    assert_eq!(state.capture_installed, (true, true));

    sqlite(&m)
        .execute("UPDATE posts SET text = 'forward' WHERE id = 10", [])
        .unwrap();
    sync::drain(
        dir.path(),
        &common::declared(Resource::Posts),
        Direction::Forward,
        LONG,
    )
    .unwrap();
    assert_eq!(text_of(&s, 10).as_deref(), Some("forward"));

    // Cutover: writes now go to the service.
    sync::switch(
        dir.path(),
        &common::declared(Resource::Posts),
        Direction::Reverse,
    )
    .unwrap();
    sync::wait_follower(
        dir.path(),
        &common::declared(Resource::Posts),
        Direction::Reverse,
        LONG,
    )
    .unwrap();
    out.wait_for("direction of posts changed from forward to reverse");
    let state = sync::read_state(dir.path(), &common::declared(Resource::Posts))
        .unwrap()
        .unwrap();
    assert_eq!(state.stage, SyncStage::WritesSwitched);
    assert_eq!(state.stage.as_str(), "writes switched");
    assert_eq!(state.follower_pid, Some(child.id()));

    // A service write reaches the monolith, fast, and is not captured back.
    let started = Instant::now();
    sqlite(&s)
        .execute("UPDATE posts SET text = 'reverse' WHERE id = 11", [])
        .unwrap();
    eventually(LONG, "the service's change on the monolith", || {
        (text_of(&m, 11).as_deref() == Some("reverse")).then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Under concurrent writes on both databases (service clients on posts, monolith clients on
    // another table), the follower keeps up and never fails on a stale snapshot.
    let writers = [
        (
            s.clone(),
            "INSERT INTO posts (thread, text, user) VALUES (1, 'load', 1)",
        ),
        (
            m.clone(),
            "INSERT INTO threads (title, created_by) VALUES ('load', 1)",
        ),
    ]
    .map(|(db, sql)| {
        std::thread::spawn(move || {
            let c = sqlite(&db);
            for _ in 0..200 {
                c.execute(sql, []).unwrap();
            }
        })
    });
    for w in writers {
        w.join().expect("writer");
    }
    sync::drain(
        dir.path(),
        &common::declared(Resource::Posts),
        Direction::Reverse,
        LONG,
    )
    .unwrap();
    assert!(child.try_wait().unwrap().is_none(), "{:?}", out.seen);
    let below_fence: i64 = sqlite(&m)
        .query_row(
            "SELECT count(*) FROM posts WHERE id < ?1",
            [sync::FENCE_GAP],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(below_fence, 400);
    // Plus the id fence, which verification leaves out.
    assert_eq!(common::count(&m, "posts"), 401);
    assert_eq!(changes(&m), 0, "ping-pong: the reverse apply was captured");
    let v = sync::verify(dir.path(), &common::declared(Resource::Posts)).unwrap();
    assert!(v.matches(), "{}", v.render());
    let state = sync::read_state(dir.path(), &common::declared(Resource::Posts))
        .unwrap()
        .unwrap();
    assert_eq!(state.last_verified_ok, Some(true));

    // A plain copy would overwrite the service's newer writes: refused.
    let o = dir.migrate(&["posts"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("would overwrite"), "{}", stderr(&o));

    // Stopping the follower after the switch leaves capture in place...
    let status = sigterm(&mut child);
    assert!(status.success(), "{status:?}: {:?}", out.seen);
    out.wait_for("change capture left in place on both sides");
    let state = sync::read_state(dir.path(), &common::declared(Resource::Posts))
        .unwrap()
        .unwrap();
    assert_eq!(state.capture_installed, (true, true));
    // ...so writes made meanwhile are carried by the restarted follower, without a copy.
    sqlite(&s)
        .execute("UPDATE posts SET text = 'while stopped' WHERE id = 12", [])
        .unwrap();
    let (mut child, mut out) = follower(&dir, &["posts", "--follow"]);
    out.wait_for("following changes to posts in the service");
    assert!(out.saw("following service → monolith instead, without copying"));
    assert!(!out.saw("copied posts"), "{:?}", out.seen);
    assert_eq!(text_of(&m, 12).as_deref(), Some("while stopped"));

    // Complete: capture gone on both sides, the follower exits 0.
    let completed = sync::complete(dir.path(), &common::declared(Resource::Posts)).unwrap();
    assert!(
        completed.monolith_note.contains("stale copy"),
        "{completed:?}"
    );
    assert_eq!(completed.change_tables_dropped, (true, true));
    let status = exits(&mut child);
    assert!(status.success(), "{status:?}: {:?}", out.seen);
    out.wait_for("the migration of posts is complete");
    assert_eq!(strangler_objects(&m), Vec::<String>::new());
    assert_eq!(
        strangler_objects(&s),
        ["_strangler_migration", "_strangler_sync"]
    );
    let state = sync::read_state(dir.path(), &common::declared(Resource::Posts))
        .unwrap()
        .unwrap();
    assert_eq!(state.stage, SyncStage::Complete);
    assert_eq!(state.capture_installed, (false, false));
}

#[test]
fn a_row_written_on_both_sides_is_a_conflict_not_an_overwrite() {
    let dir = OpsTest::new("conflict").board(5, 5, 6).start();
    let (m, s) = (dir.join("monolith.db"), dir.join("posts.db"));
    let (mut child, mut out) = follower(&dir, &["posts", "--follow"]);
    out.wait_for("following changes to posts in the monolith");

    // Id 7 written directly in the service's database, then created by the monolith.
    sqlite(&s)
        .execute(
            "INSERT INTO posts (id, thread, text, user) VALUES (7, 1, 'written in the service', 1)",
            [],
        )
        .unwrap();
    let db = Db::open(&m, &Resource::ALL, Seed::Empty).unwrap();
    let created = db
        .blocking(|c| {
            monolith::posts::insert(
                c,
                &monolith::posts::NewPost {
                    thread: 1,
                    text: "written in the monolith".into(),
                    user: 1,
                },
            )
        })
        .unwrap();
    assert_eq!(created.id, 7);
    out.wait_for("CONFLICT: conflict on posts id 7");
    assert_eq!(text_of(&s, 7).as_deref(), Some("written in the service"));
    let state = sync::read_state(dir.path(), &common::declared(Resource::Posts))
        .unwrap()
        .unwrap();
    assert_eq!(state.conflicts, 1);
    let v = sync::verify(dir.path(), &common::declared(Resource::Posts)).unwrap();
    assert!(!v.matches());
    assert_eq!(v.conflicts.len(), 1);
    assert!(
        v.render().contains("1 unresolved conflict(s)"),
        "{}",
        v.render()
    );
    // A draining cutover stops on it.
    let err = sync::drain(
        dir.path(),
        &common::declared(Resource::Posts),
        Direction::Forward,
        LONG,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("1 unresolved conflict(s)"),
        "{err:#}"
    );
    assert!(err.to_string().contains("posts id 7"), "{err:#}");

    let status = sigterm(&mut child);
    out.wait_for("stopped following; change capture removed");
    assert_eq!(status.code(), Some(1), "{:?}", out.seen);
    assert!(out.saw("unresolved conflict"), "{:?}", out.seen);
    let o = dir.migrate(&["posts", "--verify-only"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("conflict on posts id 7"),
        "{}",
        stdout(&o)
    );
    // Not resolved while the rows still differ: that would leave the difference for good.
    let o = dir.migrate(&["posts", "--resolve-conflicts"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("still differ"), "{}", stderr(&o));
    // Repaired and resolved, it verifies again.
    sqlite(&m)
        .execute(
            "UPDATE posts SET text = 'written in the service' WHERE id = 7",
            [],
        )
        .unwrap();
    let o = dir.migrate(&["posts", "--resolve-conflicts"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dir.migrate(&["posts", "--verify-only"]);
    assert!(o.status.success(), "{}", stdout(&o));
}

async fn post_user(router: &axum::Router, username: &str) -> i64 {
    let request = Request::post("/api/users")
        .header("content-type", "application/json")
        .body(Body::from(format!(r#"{{"username":"{username}"}}"#)))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 201);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let user: serde_json::Value = serde_json::from_slice(&body).unwrap();
    user["id"].as_i64().unwrap()
}

#[tokio::test]
async fn after_a_switch_the_two_writers_never_hand_out_the_same_id() {
    let dir = OpsTest::new("ids").board(20, 5, 5).start();
    let (m, s) = (dir.join("monolith.db"), dir.join("users.db"));
    let o = dir.migrate(&["users"]);
    assert!(o.status.success(), "{}", stdout(&o));
    {
        let (mut pair, table) = Pair::open(
            dir.path(),
            &common::declared(Resource::Users),
            Open::Existing,
        )
        .unwrap();
        let table = &table;
        capture::install(&mut pair.monolith, table, Side::Monolith).unwrap();
        capture::install(&mut pair.service, table, Side::Service).unwrap();
        sync::start(
            &mut pair.service,
            table,
            Direction::Forward,
            SyncStage::Following,
        )
        .unwrap();
    }
    // The service's top row was deleted after the copy: the service would reuse id 20.
    sqlite(&s)
        .execute("DELETE FROM users WHERE id = 20", [])
        .unwrap();
    let refused = sync::switch(
        dir.path(),
        &common::declared(Resource::Users),
        Direction::Reverse,
    )
    .unwrap_err();
    assert!(
        refused.to_string().contains("drain monolith → service"),
        "{refused:#}"
    );
    // Carried over (as the follower would), the switch goes through.
    let c = sqlite(&s);
    c.execute("ATTACH ?1 AS m", [m.display().to_string()])
        .unwrap();
    c.execute_batch(
        "INSERT INTO users SELECT * FROM m.users WHERE id = 20;
         DELETE FROM _strangler_changes;",
    )
    .unwrap();
    drop(c);
    sync::switch(
        dir.path(),
        &common::declared(Resource::Users),
        Direction::Reverse,
    )
    .unwrap();
    let state = sync::read_state(dir.path(), &common::declared(Resource::Users))
        .unwrap()
        .unwrap();
    assert_eq!(state.stage, SyncStage::WritesSwitched);
    // The fence row is not a difference.
    let v = sync::verify(dir.path(), &common::declared(Resource::Users)).unwrap();
    assert!(v.matches(), "{}", v.render());

    // A new user through the service's API, and a straggler written on the monolith.
    let service_db = Db::open(&s, &[Resource::Users], Seed::Empty).unwrap();
    let refs = Arc::new(RemoteReferences::new("http://127.0.0.1:9").unwrap());
    let router = Board::new(service_db, &[Resource::Users], refs).router();
    let on_service = post_user(&router, "new on the service").await;
    let on_service_sql: i64 = {
        let c = sqlite(&s);
        c.execute(
            "INSERT INTO users (username, name, bio) VALUES ('sql', '', '')",
            [],
        )
        .unwrap();
        c.last_insert_rowid()
    };
    let straggler: i64 = {
        let c = sqlite(&m);
        c.execute(
            "INSERT INTO users (username, name, bio) VALUES ('straggler', '', '')",
            [],
        )
        .unwrap();
        c.last_insert_rowid()
    };
    assert_eq!((on_service, on_service_sql), (21, 22));
    assert!(
        straggler > sync::FENCE_GAP,
        "the straggler took id {straggler}, in the service's range"
    );

    // Back to the monolith: the fence goes, and the monolith's own ids continue above the
    // straggler's.
    sqlite(&m)
        .execute("DELETE FROM _strangler_changes", [])
        .unwrap();
    sqlite(&m)
        .execute("DELETE FROM users WHERE id = ?1", [straggler])
        .unwrap();
    sqlite(&m)
        .execute(
            "INSERT INTO users VALUES (21, 'new on the service', '', ''), (22, 'sql', '', '')",
            [],
        )
        .unwrap();
    sqlite(&m)
        .execute("DELETE FROM _strangler_changes", [])
        .unwrap();
    sqlite(&s)
        .execute("DELETE FROM _strangler_changes", [])
        .unwrap();
    sync::switch(
        dir.path(),
        &common::declared(Resource::Users),
        Direction::Forward,
    )
    .unwrap();
    let state = sync::read_state(dir.path(), &common::declared(Resource::Users))
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.direction, state.stage),
        (Direction::Forward, SyncStage::Reversed)
    );
    let max: i64 = sqlite(&m)
        .query_row("SELECT max(id) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(max, 22, "the fence row is gone from the monolith");
}

#[test]
fn followers_killed_with_9_resume_in_both_directions() {
    let dir = OpsTest::new("kill9").board(10, 10, 300).start();
    let (m, s) = (dir.join("monolith.db"), dir.join("posts.db"));
    let (mut child, mut out) = follower(&dir, &["posts", "--follow"]);
    out.wait_for("following changes to posts in the monolith");
    // Refuses to remove capture under a live follower.
    let o = dir.migrate(&["posts", "--remove-capture"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("a follower is running"),
        "{}",
        stderr(&o)
    );

    // Forward: changes made just before and after the kill are all applied by the restart.
    sqlite(&m)
        .execute(
            "UPDATE posts SET text = 'before the kill' WHERE id BETWEEN 1 AND 100",
            [],
        )
        .unwrap();
    kill9(&mut child);
    sqlite(&m)
        .execute(
            "UPDATE posts SET text = 'after the kill' WHERE id BETWEEN 50 AND 150",
            [],
        )
        .unwrap();
    sqlite(&m)
        .execute("DELETE FROM posts WHERE id = 200", [])
        .unwrap();
    assert!(changes(&m) > 0, "capture stayed in place");
    let (mut child, mut out) = follower(&dir, &["posts", "--follow"]);
    out.wait_for("following changes to posts in the monolith");
    assert!(
        out.saw("resuming: change capture on both sides was left in place"),
        "{:?}",
        out.seen
    );
    assert!(!out.saw("copied posts"), "{:?}", out.seen);
    assert!(out.saw("verification OK: 299 rows"), "{:?}", out.seen);
    assert_eq!(text_of(&s, 120).as_deref(), Some("after the kill"));

    // Reverse: switched, killed while applying, restarted with --reverse --follow.
    sync::drain(
        dir.path(),
        &common::declared(Resource::Posts),
        Direction::Forward,
        LONG,
    )
    .unwrap();
    sync::switch(
        dir.path(),
        &common::declared(Resource::Posts),
        Direction::Reverse,
    )
    .unwrap();
    sync::wait_follower(
        dir.path(),
        &common::declared(Resource::Posts),
        Direction::Reverse,
        LONG,
    )
    .unwrap();
    sqlite(&s)
        .execute(
            "UPDATE posts SET text = 'service before the kill' WHERE id BETWEEN 1 AND 100",
            [],
        )
        .unwrap();
    kill9(&mut child);
    sqlite(&s)
        .execute(
            "UPDATE posts SET text = 'service after the kill' WHERE id BETWEEN 90 AND 180",
            [],
        )
        .unwrap();
    // Not removable while writes are switched.
    let o = dir.migrate(&["posts", "--remove-capture"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("writes are switched"), "{}", stderr(&o));
    // A one-shot --reverse catches the monolith up and verifies.
    let o = dir.migrate(&["posts", "--reverse"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("verification OK: 299 rows"),
        "{}",
        stdout(&o)
    );
    assert_eq!(text_of(&m, 170).as_deref(), Some("service after the kill"));
    sqlite(&s)
        .execute("UPDATE posts SET text = 'later' WHERE id = 250", [])
        .unwrap();
    let (mut child, mut out) = follower(&dir, &["posts", "--reverse", "--follow"]);
    out.wait_for("following changes to posts in the service");
    assert!(out.saw("verification OK: 299 rows"), "{:?}", out.seen);
    assert_eq!(text_of(&m, 250).as_deref(), Some("later"));
    assert_eq!(changes(&m), 0);
    kill9(&mut child);

    // A forced removal after the kill cleans both databases.
    let o = dir.migrate(&["posts", "--remove-capture", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("monolith triggers removed, service triggers removed"),
        "{}",
        stdout(&o)
    );
    assert_eq!(strangler_objects(&m), Vec::<String>::new());
    let state = sync::read_state(dir.path(), &common::declared(Resource::Posts))
        .unwrap()
        .unwrap();
    assert_eq!(state.capture_installed, (false, false));
}

#[test]
fn remove_capture_cleans_up_after_a_follower_killed_before_any_cutover() {
    let dir = OpsTest::new("remove").board(5, 5, 20).start();
    let m = dir.join("monolith.db");
    let (mut child, mut out) = follower(&dir, &["posts", "--follow"]);
    out.wait_for("following changes to posts in the monolith");
    kill9(&mut child);
    sqlite(&m)
        .execute("UPDATE posts SET text = 'x' WHERE id = 1", [])
        .unwrap();
    let o = dir.migrate(&["posts", "--remove-capture"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("discarded 1 captured change(s)"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("back to not started"), "{}", stdout(&o));
    assert_eq!(strangler_objects(&m), Vec::<String>::new());
    assert!(
        sync::read_state(dir.path(), &common::declared(Resource::Posts))
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_thread_by_a_user_just_created_on_the_service_is_accepted_by_the_monolith() {
    let dir = OpsTest::new("e2e422").board(10, 5, 5).start();
    let (m, s) = (dir.join("monolith.db"), dir.join("users.db"));
    let (mut child, mut out) = follower(&dir, &["users", "--follow"]);
    out.wait_for("following changes to users in the monolith");
    sync::drain(
        dir.path(),
        &common::declared(Resource::Users),
        Direction::Forward,
        LONG,
    )
    .unwrap();
    sync::switch(
        dir.path(),
        &common::declared(Resource::Users),
        Direction::Reverse,
    )
    .unwrap();
    sync::wait_follower(
        dir.path(),
        &common::declared(Resource::Users),
        Direction::Reverse,
        LONG,
    )
    .unwrap();

    let service_db = Db::open(&s, &[Resource::Users], Seed::Empty).unwrap();
    let refs = Arc::new(RemoteReferences::new("http://127.0.0.1:9").unwrap());
    let users_service = Board::new(service_db, &[Resource::Users], refs).router();
    let monolith_db = Db::open(&m, &Resource::ALL, Seed::Empty).unwrap();
    let local = monolith::references::LocalReferences::with_wait(
        monolith_db.clone(),
        Duration::from_secs(2),
    );
    let monolith = Board::new(monolith_db, &Resource::ALL, Arc::new(local)).router();

    for n in 0..5 {
        let user = post_user(&users_service, &format!("fresh{n}")).await;
        // At once, on the monolith, which checks its own (reverse-synced) users table.
        let request = Request::post("/api/threads")
            .header("content-type", "application/json")
            .body(Body::from(format!(
                r#"{{"title":"by a new user","createdBy":{user}}}"#
            )))
            .unwrap();
        let response = monolith.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            status,
            201,
            "user {user}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    kill9(&mut child);
}
