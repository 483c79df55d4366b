//! Durations that used to pass `check` and then panic at run time (issue 13, point 6):
//! `request_timeout` overflowed every shadow comparison's deadline, `idle_timeout` the pool's
//! reaper. Both are now refused by `check`, and the proxy refuses to start on them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_strangler-proxy");

/// A file that `check` accepted before: valid but for two durations near `u64::MAX` seconds.
fn huge_timeouts(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("strangler-unbounded-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("routes.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndefault = \"monolith\"\n\
         [services.monolith]\nurl = \"http://127.0.0.1:1\"\n\
         [services.users]\nurl = \"http://127.0.0.1:2\"\n\
         request_timeout = \"18446744073709551615s\"\nidle_timeout = \"18446744073709551615s\"\n\
         [[routes]]\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 0\nshadow = true\n",
    )
    .unwrap();
    path
}

#[test]
fn check_refuses_durations_past_their_bound_and_names_it() {
    let path = huge_timeouts("check");
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted it: {stderr}");
    let file = path.display();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "{file}:9:19: request_timeout: \"18446744073709551615s\" is out of range: expected at most 1h"
            ),
            format!(
                "{file}:10:16: idle_timeout: \"18446744073709551615s\" is out of range: expected at most 1h"
            ),
        ]
    );
}

#[tokio::test]
async fn the_proxy_refuses_to_start_on_them() {
    let path = huge_timeouts("run");
    let run = strangler_proxy::server::run(&path);
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the proxy started (and served) instead of refusing the file");
    let error = outcome.expect_err("the proxy started on an unbounded request_timeout");
    assert!(
        format!("{error:#}").contains("request_timeout: \"18446744073709551615s\" is out of range"),
        "{error:#}"
    );
}
