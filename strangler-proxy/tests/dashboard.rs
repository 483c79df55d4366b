//! The admin dashboard in a real browser: Debian's `chromium`, driven by `playwright-core`
//! (`tests/browser/dashboard.mjs`), against a real proxy with real upstreams on 127.0.0.1:0.
//! The page must render every route, show a weight edited in `routes.toml` without being
//! reloaded, show a deliberate shadow difference in the diffs and a refused reload's error;
//! the script saves a screenshot under the target directory and prints its path.
//!
//! Needs `chromium` (`apt-get install chromium`, or `CHROMIUM=/path`) and the script's npm
//! package (`npm ci` in `strangler-proxy/tests/browser`); `.ci/run` installs both. Without
//! them the test fails saying so: nothing is installed at test time.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use support::*;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The browser binary, or a panic saying how to install what is missing.
fn prerequisites() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "the dashboard's browser test needs Chromium at {}: install it with \
         `sudo apt-get install -y chromium` (Debian's package; `.ci/run` does), or point \
         CHROMIUM at a Chromium binary",
        chromium.display()
    );
    let module = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        module.exists(),
        "the dashboard's browser test needs the npm package playwright-core: run \
         `npm ci --prefix {}` (`.ci/run` does); missing: {}",
        browser_dir().display(),
        module.display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the dashboard's browser test needs Node.js (`node` on PATH): install it with \
         `sudo apt-get install -y nodejs`"
    );
    chromium
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_routes_weights_diffs_and_refused_reloads_in_a_browser() {
    let chromium = prerequisites();
    let monolith = echo_upstream("monolith").await;
    let builder = ProxyBuilder::new("dashboard")
        .service("monolith", monolith)
        .service("users", echo_upstream("users").await)
        .service("threads", echo_upstream("threads").await)
        .service("posts", echo_upstream("posts").await)
        // Shadowed: the echo upstreams name themselves, so every comparison differs at /backend.
        .route("/api/users", "users", 0)
        .with("shadow = true")
        .route("/api/threads", "threads", 40)
        .with("sticky = \"header:x-user\"")
        // Live for reads; writes stay on the monolith.
        .route("/api/posts", "posts", 100)
        .with("methods = [\"GET\", \"HEAD\"]")
        // A service nobody listens for: 502s, then ejected by outlier detection (503s).
        .service("reports", closed_port())
        .route("/api/reports", "reports", 100);
    let p = builder.start().await;

    // Traffic for the charts and the shadow comparisons, in four 10 s buckets whose sampling
    // the test drives (bounded: 100 rounds in all).
    let start = SystemTime::now();
    for bucket in 1..=4u32 {
        for i in 0..(10 * bucket) {
            for path in ["/api/users/1", "/api/threads/2", "/api/posts/3", "/other"] {
                let who = format!("u{i}");
                let answer = get_with(&p.url(path), &[("x-user", &who)]).await;
                assert_eq!(answer.status, 200, "{path}: {}", answer.text());
            }
            let failed = get(&p.url("/api/reports/1")).await;
            assert!(failed.status.is_server_error(), "{}", failed.text());
        }
        p.history.sample(start + Duration::from_secs(10) * bucket);
    }
    let history = get(&p.admin_url("/history")).await.json();
    let threads = &history["routes"][1];
    assert_eq!(threads["name"], "threads");
    assert_eq!(threads["points"].as_array().unwrap().len(), 5, "{threads}");
    assert_eq!(
        threads["window"]["service"]["requests"].as_u64().unwrap()
            + threads["window"]["default"]["requests"].as_u64().unwrap(),
        100
    );
    let mismatched = eventually(Duration::from_secs(10), || async {
        let diffs = get(&p.admin_url("/diffs?route=users")).await.json();
        diffs["groups"].as_array().is_some_and(|g| !g.is_empty())
    })
    .await;
    assert!(mismatched, "the shadowed route recorded no mismatch");

    let weighted = builder.text().replace("weight = 40", "weight = 65");
    assert_ne!(weighted, builder.text());
    // An unknown key on the last line of the file: refused, revision 2 keeps serving.
    let bad = format!("{weighted}wieght = 70\n");
    let bad_line = bad.lines().count();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");

    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .current_dir(browser_dir())
        .env("DASHBOARD_URL", p.admin_url("/"))
        .env("ROUTES", r#"["users","threads","posts","reports"]"#)
        .env("EJECTED_SERVICE", "reports")
        .env("ROUTES_FILE", p.path())
        .env("WEIGHT_TEXT", &weighted)
        .env("WEIGHT_ROUTE", "threads")
        .env("WEIGHT_VALUE", "65")
        .env("BAD_TEXT", &bad)
        .env("BAD_LINE", bad_line.to_string())
        .env("DIFF_ROUTE", "users")
        .env("DIFF_TEXT", "\"users\"")
        .env("READS_ONLY_ROUTE", "posts")
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let stdout = node.stdout.take().unwrap();
    let stderr = node.stderr.take().unwrap();
    let read = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text).await;
            text
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = tokio::time::timeout(Duration::from_secs(180), node.wait())
        .await
        .expect("the browser script finished within 3 minutes")
        .unwrap();
    let (out, err) = (out.await.unwrap(), err.await.unwrap());
    println!("{out}");
    eprintln!("{err}");
    assert!(status.success(), "the browser script failed:\n{out}\n{err}");
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    println!("dashboard screenshot: {}", screenshot.display());

    // What the page showed is what the proxy holds.
    let routes = get(&p.admin_url("/routes")).await.json();
    assert_eq!(routes["revision"], 2, "{routes}");
    assert!(routes["last_reload_error"].is_object(), "{routes}");
    p.shutdown().await;
}
