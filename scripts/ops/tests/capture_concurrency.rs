//! Installing change capture while the monolith takes writes: a busy database is a wait, never
//! a failure (found by the end-to-end migration test: the second resource's `--follow` failed
//! with "database is locked" when a write landed between its schema reads and its first write).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use monolith::db::{Db, Seed};
use monolith::legacy::Resource;
use strangler_ops::capture;
use strangler_ops::pair::{Open, Pair};
use strangler_ops::sync::Side;

mod common;

#[test]
fn capture_installs_while_another_connection_keeps_writing() {
    let dir = common::Scratch::new("capture-busy");
    let monolith = dir.join("monolith.db");
    drop(Db::open(&monolith, &Resource::ALL, Seed::Legacy).expect("monolith db"));
    let (_, users) = Pair::open(
        &dir.path,
        &common::declared(Resource::Users),
        Open::CreatingTarget,
    )
    .unwrap();
    let (mut pair, posts) = Pair::open(
        &dir.path,
        &common::declared(Resource::Posts),
        Open::CreatingTarget,
    )
    .unwrap();
    let (users, posts) = (&users, &posts);
    let conn = &mut pair.monolith;
    // The change table exists already, as it does once a first resource is followed.
    capture::install(conn, users, Side::Monolith).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let monolith = monolith.clone();
        std::thread::spawn(move || {
            let w = rusqlite::Connection::open(&monolith).unwrap();
            w.busy_timeout(Duration::from_secs(10)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                w.execute(
                    "INSERT INTO users (username, name, bio) VALUES (?1, 'n', 'b')",
                    [format!("writer{n}")],
                )
                .unwrap();
                n += 1;
            }
            n
        })
    };
    for round in 0..200 {
        capture::install(conn, posts, Side::Monolith)
            .unwrap_or_else(|e| panic!("install {round}: {e}"));
        capture::uninstall(conn, posts, Side::Monolith)
            .unwrap_or_else(|e| panic!("uninstall {round}: {e}"));
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(written > 0, "the writer wrote while capture was installed");
}
