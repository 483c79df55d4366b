//! `STRANGLER_MIGRATIONS` names the declarations file once for a shell (as `scripts/up
//! --postgres` tells the operator to export), and `--migrations` still wins over it.

mod common;

use common::{OpsTest, ops, stderr};

fn declaring(name: &str) -> String {
    format!(
        "[resources.{name}]
route = \"{name}\"
key = \"id\"
source = {{ url = \"sqlite:monolith.db\", table = \"{name}\" }}
target = {{ url = \"sqlite:{name}.db\", table = \"{name}\" }}
"
    )
}

#[test]
fn the_environment_names_the_declarations_and_the_flag_wins() {
    let t = OpsTest::new("migrations-env").start();
    let from_env = t.join("from-env.toml");
    let from_flag = t.join("from-flag.toml");
    std::fs::write(&from_env, declaring("accounts")).unwrap();
    std::fs::write(&from_flag, declaring("ledgers")).unwrap();

    // `users` is declared by neither file, so each run names the file it read.
    let out = ops()
        .env("STRANGLER_MIGRATIONS", &from_env)
        .args(t.migrate_args(&["users"]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "unknown resource \"users\": {} declares accounts",
            from_env.display()
        )),
        "{err}"
    );

    let out = ops()
        .env("STRANGLER_MIGRATIONS", &from_env)
        .args(t.migrate_args(&["users", "--migrations", &from_flag.display().to_string()]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "unknown resource \"users\": {} declares ledgers",
            from_flag.display()
        )),
        "{err}"
    );
}
