//! `status` against a fake admin endpoint: one row per route with the window's figures.

mod common;

use common::fake::{Behaviour, FakeProxy};
use common::{OpsTest, SHIPPED, stderr, stdout};

#[test]
fn status_shows_every_route_with_both_sides() {
    let dir = OpsTest::new("status")
        .routes(&SHIPPED.replacen("weight  = 0\n", "weight  = 25\nshadow  = true\n", 1))
        .start();
    let fake = dir.fake(Behaviour {
        per_scrape: 200,
        service_fails: Some((1, 0.1)),
        ..Behaviour::default()
    });
    let p = &dir.config;
    let o = dir.run(&["status", "--admin", &fake.url, "--window", "200ms"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.starts_with(&format!("proxy {}: revision 1, loaded 2026-11-23T10:04:05Z, default monolith (serving {p} as saved)\n", fake.url)), "{out}");
    assert!(out.contains("over the last 0."), "{out}");
    let header = out
        .lines()
        .find(|l| l.starts_with("route"))
        .expect("header");
    for column in [
        "stage",
        "weight",
        "req/s svc",
        "req/s default",
        "errors svc",
        "errors default",
        "p99 svc",
        "p99 default",
        "shadow match",
        "fallbacks",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let users = out
        .lines()
        .find(|l| l.starts_with("users "))
        .expect("users row");
    let cells: Vec<&str> = users
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cells[..3], ["users", "canary", "25"], "{users}");
    // 200 requests per scrape: 50 to the service (5 failing), 150 to the default, all shadowed.
    let rate: f64 = cells[3].parse().unwrap();
    let default_rate: f64 = cells[4].parse().unwrap();
    assert!((default_rate - 3.0 * rate).abs() < 0.5, "{users}");
    assert_eq!(
        cells[5..],
        [
            "10.00% (5/50)",
            "0.00% (0/150)",
            "5.0 ms",
            "5.0 ms",
            "100.00% (150/150), covers 100.00% (150/150)",
            "0 (0 in all)"
        ],
        "{users}"
    );
    let threads = out
        .lines()
        .find(|l| l.starts_with("threads "))
        .expect("threads row");
    let mut cells: Vec<&str> = threads
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    // The default's rate depends on the window's exact length.
    assert!(cells.remove(4).parse::<f64>().unwrap() > 0.0, "{threads}");
    assert_eq!(
        cells,
        [
            "threads",
            "dark",
            "0",
            "0.0",
            "-",
            "0.00% (0/200)",
            "-",
            "5.0 ms",
            "-",
            "0 (0 in all)"
        ],
        "{threads}"
    );
}

#[test]
fn near_misses_are_noted_per_route() {
    let dir = OpsTest::new("status-near-miss").routes(SHIPPED).start();
    let o = dir.run(&[
        "status",
        "--admin",
        &dir.fake(Behaviour::default()).url,
        "--window",
        "100ms",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("near miss"), "{}", stdout(&o));
    let fake = dir.fake(Behaviour {
        near_misses: 3,
        ..Behaviour::default()
    });
    let o = dir.run(&["status", "--admin", &fake.url, "--window", "100ms"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    // Two scrapes: 3 new in the window, 6 since the (fake) proxy started.
    assert!(
        out.contains(
            "NOTE: route users: 3 near miss(es) in the window (6 since the proxy started): \
             requests matching /api/users only when letter case is ignored"
        ),
        "{out}"
    );
    assert!(out.contains("set [proxy] ignore_case = true"), "{out}");
}

#[test]
fn shadow_coverage_stands_next_to_the_match_ratio_and_low_coverage_is_explained() {
    let dir = OpsTest::new("status-coverage")
        .routes(&SHIPPED.replacen("weight  = 0\n", "weight  = 0\nshadow  = true\n", 1))
        .start();
    // 200 shadowed per scrape, 75 of them too large to compare: every compared one matched.
    let fake = dir.fake(Behaviour {
        per_scrape: 200,
        shadow_skipped: 0.375,
        ..Behaviour::default()
    });
    let o = dir.run(&["status", "--admin", &fake.url, "--window", "200ms"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    let users = out
        .lines()
        .find(|l| l.starts_with("users "))
        .expect("users row");
    assert!(
        users.contains("100.00% (125/125), covers 62.50% (125/200)"),
        "{users}"
    );
    assert!(
        out.contains(
            "NOTE: users: the shadow match ratio speaks for 62.50% of shadowed requests only \
             (125 of 200 compared; not compared: 75 skipped (too_large 75))"
        ),
        "{out}"
    );
}

#[test]
fn a_saved_file_the_proxy_does_not_serve_is_pointed_out() {
    let dir = OpsTest::new("status-stale")
        .routes(&SHIPPED.replacen("weight  = 0", "weight  = 5", 1))
        .start();
    let served = dir.join("served.toml");
    std::fs::write(&served, SHIPPED).unwrap();
    let fake = FakeProxy::start(served, Behaviour::default());
    let p = &dir.config;
    let o = dir.run(&["status", "--admin", &fake.url, "--window", "100ms"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("NOTE: {p} differs from what the proxy serves")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn an_unreachable_admin_endpoint_says_where_it_looked() {
    // Nothing listens on this admin address.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dir = OpsTest::new("status-down")
        .routes(&SHIPPED.replace("127.0.0.1:9901", &format!("127.0.0.1:{port}")))
        .start();
    let o = dir.run(&["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "is the proxy running with its admin listener at http://127.0.0.1:{port}?"
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_live_route_whose_writes_stay_on_the_default_is_not_plainly_live() {
    let reads_live = SHIPPED.replacen(
        "weight  = 0\n# methods = [\"GET\", \"HEAD\"]",
        "weight  = 100\nmethods = [\"GET\", \"HEAD\"]",
        1,
    );
    assert_ne!(reads_live, SHIPPED);
    let dir = OpsTest::new("status-reads").routes(&reads_live).start();
    let fake = dir.fake(Behaviour::default());
    let o = dir.run(&["status", "--admin", &fake.url, "--window", "100ms"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("users ")).collect();
    assert!(rows[0].contains("live (reads)"), "{out}");
    // The settings table: what moved, sticky, shadow, fence; then the services.
    assert!(rows[1].contains("reads only (GET HEAD)"), "{out}");
    let threads = out
        .lines()
        .filter(|l| l.starts_with("threads "))
        .nth(1)
        .expect("threads settings row");
    assert!(threads.contains("nothing"), "{threads}");
    assert!(
        out.contains("services: monolith default, posts closed, threads closed, users closed"),
        "{out}"
    );
}

#[test]
fn an_invalid_routes_file_is_said_and_the_served_table_still_shown() {
    let dir = OpsTest::new("status-invalid").routes(SHIPPED).start();
    let served = dir.join("served.toml");
    std::fs::write(&served, SHIPPED).unwrap();
    let fake = FakeProxy::start(served, Behaviour::default());
    // The admin address is read from the broken file itself: no --admin.
    let admin = fake.url.trim_start_matches("http://");
    let broken =
        SHIPPED
            .replace("127.0.0.1:9901", admin)
            .replacen("weight  = 0", "weight  = 250", 1);
    dir.write_routes(&broken);
    let line = broken
        .lines()
        .position(|l| l.starts_with("weight  = 250"))
        .unwrap()
        + 1;
    let p = &dir.config;
    let o = dir.run(&["status", "--window", "100ms"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains(&format!(
            "WARNING: {p} is invalid; the proxy keeps serving its last good table (revision 1)"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{p}:{line}:")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("users ")), "{out}");

    // A file whose admin address itself cannot be read: told to name the proxy.
    dir.write_routes("[proxy\nadmin = \n");
    let o = dir.run(&["status", "--window", "100ms"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("--admin URL"), "{}", stderr(&o));
    let o = dir.run(&["status", "--admin", &fake.url, "--window", "100ms"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("is invalid"), "{}", stdout(&o));
}

#[test]
fn watch_refreshes_until_its_count() {
    let dir = OpsTest::new("status-watch").routes(SHIPPED).start();
    let fake = dir.fake(Behaviour::default());
    let o = dir.run(&[
        "status",
        "--admin",
        &fake.url,
        "--window",
        "100ms",
        "--watch",
        "--interval",
        "200ms",
        "--count",
        "3",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    // Not a terminal: one timestamped page after another, never escape codes.
    assert_eq!(
        out.matches("\n--- ").count() + usize::from(out.starts_with("--- ")),
        3,
        "{out}"
    );
    assert_eq!(out.matches("over the last").count(), 3, "{out}");
    assert!(!out.contains('\x1b'), "{out}");
    assert_eq!(fake.scrapes(), 6);
    let o = dir.run(&["status", "--count", "2"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "--count without --watch is refused"
    );
}
