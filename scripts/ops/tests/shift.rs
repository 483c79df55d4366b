//! `shift` and `rollback` on a copy of the shipped routes.toml: comments and layout survive,
//! the file is replaced by rename, and anything `strangler-proxy check` would reject is refused
//! with the file left byte for byte as it was.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use common::{OpsTest, SHIPPED, stderr, stdout};

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The shipped file with the users route's `weight  = 0` line replaced by `lines`.
fn users_route_with(lines: &str) -> String {
    let users = SHIPPED
        .find("prefix  = \"/api/users\"")
        .expect("users route");
    let at = users + SHIPPED[users..].find("weight  = 0\n").expect("weight line");
    format!(
        "{}{lines}{}",
        &SHIPPED[..at],
        &SHIPPED[at + "weight  = 0\n".len()..]
    )
}

#[test]
fn shift_changes_one_value_and_nothing_else() {
    let dir = OpsTest::new("shift").shipped_routes().start();
    let path = dir.config.clone();
    let inode = std::fs::metadata(&path).unwrap().ino();
    // Every method would go to the service: a canary splits writes, refused as `rollout`
    // refuses it, the file untouched.
    let o = dir.run(&["shift", "users", "25"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("25% would split them between two databases"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("--allow-split-writes"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), SHIPPED);
    let o = dir.run(&["shift", "users", "25", "--allow-split-writes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("{path}: route users: weight 0 → 25, stage dark → canary\n")
    );
    assert!(stderr(&o).contains("splits writes"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        users_route_with("weight  = 25\n")
    );
    // Replaced by rename (a new inode), no temporary file left behind.
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode);
    assert_eq!(files_in(dir.path()), ["routes.toml"]);
    // What the proxy would load.
    let loaded = strangler_proxy::config::load(Path::new(&path)).expect("valid");
    let users = loaded
        .config
        .routes
        .iter()
        .find(|r| r.name == "users")
        .unwrap();
    assert_eq!((users.weight, users.stage().as_str()), (25, "canary"));
}

#[test]
fn shadow_and_methods_are_added_aligned_then_rolled_back_at_once() {
    let dir = OpsTest::new("shadow").shipped_routes().start();
    let path = dir.config.clone();
    let o = dir.run(&[
        "shift",
        "users",
        "10",
        "--shadow",
        "on",
        "--methods",
        "GET,HEAD",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "{path}: route users: weight 0 → 10, shadow off → on, methods all → GET,HEAD, stage dark → canary\n"
        )
    );
    assert!(
        !stderr(&o).contains("splits writes"),
        "reads only: {}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        users_route_with("weight  = 10\nshadow  = true\nmethods = [\"GET\", \"HEAD\"]\n")
    );

    let o = dir.run(&["rollback", "users"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("{path}: route users: weight 10 → 0, shadow on → off, stage canary → dark\n")
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        users_route_with("weight  = 0\nshadow  = false\nmethods = [\"GET\", \"HEAD\"]\n")
    );

    // `--methods all` lifts the restriction; the same values again write nothing.
    let o = dir.run(&["shift", "users", "0", "--methods", "all"]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        users_route_with("weight  = 0\nshadow  = false\n")
    );
    let o = dir.run(&["shift", "users", "0"]);
    assert!(
        stdout(&o).contains("unchanged") && stdout(&o).contains("nothing to write"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn invalid_results_are_refused_and_the_file_left_untouched() {
    let dir = OpsTest::new("refuse").shipped_routes().start();
    let path = dir.config.clone();
    let before = std::fs::metadata(&path).unwrap();
    // The users route's `weight` line, 1-based; a new key goes on the line after it.
    let users = SHIPPED
        .find("prefix  = \"/api/users\"")
        .expect("users route");
    let weight_at = users + SHIPPED[users..].find("weight  = 0\n").expect("weight line");
    let line = SHIPPED[..weight_at].matches('\n').count() + 1;
    for (args, message) in [
        (
            vec!["shift", "users", "150"],
            format!("{path}:{line}:11: weight: expected an integer 0..=100, found 150"),
        ),
        (
            vec!["shift", "users", "5", "--methods", "GET,FETCH"],
            format!(
                "{path}:{}:19: methods: \"FETCH\" is not a standard upper-case method",
                line + 1
            ),
        ),
        (
            vec!["shift", "posts", "-1"],
            "weight: expected an integer 0..=100, found -1".to_string(),
        ),
        (
            vec!["shift", "orders", "5"],
            format!("{path}: no route named \"orders\" (routes: users, threads, posts)"),
        ),
        (
            vec!["rollback", "orders"],
            "no route named \"orders\"".to_string(),
        ),
    ] {
        let o = dir.run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(&message), "{args:?}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), SHIPPED, "{args:?}");
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.ino(), after.mtime_nsec()),
            (before.ino(), before.mtime_nsec())
        );
        assert_eq!(files_in(dir.path()), ["routes.toml"]);
    }
}

#[test]
fn a_file_that_is_not_toml_is_refused() {
    let dir = OpsTest::new("garbage")
        .routes("[[routes]\nweight = ")
        .start();
    let o = dir.run(&["shift", "users", "5"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not valid TOML"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&dir.config).unwrap(),
        "[[routes]\nweight = "
    );
}

#[test]
fn shadowing_to_a_service_whose_database_is_empty_warns() {
    let dir = OpsTest::new("shadow-empty").shipped_routes().start();
    let shadow = [
        "shift",
        "users",
        "0",
        "--shadow",
        "on",
        "--methods",
        "GET,HEAD",
        "--data-dir",
        &dir.data,
    ];
    let users_db = Path::new(&dir.data).join("users.db");
    let o = dir.run(&shadow);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "warning: the users service has no database at {} yet",
            users_db.display()
        )),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("scripts/migrate-data users --follow"));

    let db = common::sqlite(&users_db);
    db.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT)")
        .unwrap();
    let o = dir.run(&shadow);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("database") && stderr(&o).contains("holds no users yet"),
        "{}",
        stderr(&o)
    );

    db.execute("INSERT INTO users (username) VALUES ('finn')", [])
        .unwrap();
    let o = dir.run(&shadow);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    // Without --shadow on, nothing is said about the data.
    std::fs::remove_file(&users_db).unwrap();
    let o = dir.run(&["shift", "users", "0", "--data-dir", &dir.data]);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}
