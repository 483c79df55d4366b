//! `rollout` against a fake proxy whose traffic follows the weight in the routes file: it
//! completes when the service behaves, and writes the last safe weight back (exit 1) when a
//! gate fails, naming the gate and the figures.

mod common;

use common::fake::{Behaviour, FakeProxy};
use common::{Ops, OpsTest, SHIPPED, stderr, stdout};

/// A test on the shipped routes with the users route moved to reads only (and shadowing when
/// asked).
fn reads_only(name: &str, shadow: bool) -> Ops {
    let extra = if shadow {
        "methods = [\"GET\", \"HEAD\"]\nshadow = true\n"
    } else {
        "methods = [\"GET\", \"HEAD\"]\n"
    };
    let text = SHIPPED.replacen("weight  = 0\n", &format!("weight  = 0\n{extra}"), 1);
    OpsTest::new(name).routes(&text).start()
}

fn rollout(dir: &Ops, source: &[&str], extra: &[&str]) -> std::process::Output {
    // --max-holds bounds every run: a test never waits for traffic that will not come.
    let mut args = vec![
        "rollout",
        "users",
        "--interval",
        "200ms",
        "--apply-timeout",
        "5s",
    ];
    if !extra.contains(&"--max-holds") {
        args.extend(["--max-holds", "5"]);
    }
    args.extend_from_slice(source);
    args.extend_from_slice(extra);
    dir.run(&args)
}

/// [`rollout`] reading the `/metrics` of a fake proxy behaving as `behaviour`: what the run
/// returned and its stdout.
fn rollout_against(
    dir: &Ops,
    behaviour: Behaviour,
    extra: &[&str],
) -> (std::process::Output, String) {
    let fake = dir.fake(behaviour);
    let o = rollout(dir, &["--metrics", &format!("{}/metrics", fake.url)], extra);
    let out = stdout(&o);
    (o, out)
}

#[test]
fn a_healthy_service_is_rolled_out_to_100() {
    let dir = reads_only("rollout-ok", true);
    let (o, out) = rollout_against(&dir, Behaviour::default(), &[]);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert_eq!(dir.weight("users"), 100);
    for step in [
        "step 1/6 (0%)",
        "step 2/6 (1%)",
        "step 3/6 (5%)",
        "step 4/6 (25%)",
        "step 5/6 (50%)",
        "step 6/6 (100%)",
    ] {
        assert!(
            out.contains(&format!("{step}: gates passed")),
            "{step}: {out}"
        );
    }
    // Shadow comparisons were judged at 0%, and the service's share grew step by step.
    assert!(out.contains("shadow 100.00% matched (2000/2000)"), "{out}");
    assert!(
        out.contains("step 4/6 (25%): route users: weight 5 → 25"),
        "{out}"
    );
    assert!(out.contains("service 500 req, 0.00% errors"), "{out}");
    assert!(
        out.contains("rollout of users complete: weight 100"),
        "{out}"
    );
    // Other routes are untouched.
    assert_eq!(dir.weight("posts"), 0);
}

#[test]
fn errors_from_50_percent_on_roll_back_to_25_and_exit_1() {
    let dir = reads_only("rollout-errors", false);
    let (o, out) = rollout_against(
        &dir,
        Behaviour {
            service_fails: Some((50, 0.3)),
            ..Behaviour::default()
        },
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", stderr(&o));
    assert!(out.contains("step 4/6 (25%): gates passed"), "{out}");
    assert!(
        out.contains("step 5/6 (50%): GATE FAILED: error ratio: service 0.3000 (300 of 1000 requests) > --max-error-ratio 0.01 (default 0.0000 (0 of 1000 requests))"),
        "{out}"
    );
    assert!(
        out.contains("wrote the last safe weight back: route users: weight 50 → 25"),
        "{out}"
    );
    assert!(!out.contains("step 6/6"), "{out}");
    assert_eq!(dir.weight("users"), 25);
}

#[test]
fn failures_hidden_by_fallback_still_count_against_the_service() {
    let dir = reads_only("rollout-fallback", false);
    let (o, out) = rollout_against(
        &dir,
        Behaviour {
            service_fails: Some((1, 0.5)),
            fallback: true,
            ..Behaviour::default()
        },
        &["--steps", "0,25,100"],
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
    // 500 requests for the service: 250 answered, 250 failed and served by the default instead.
    assert!(
        out.contains("GATE FAILED: error ratio: service 0.5000 (250 of 500 requests)"),
        "{out}"
    );
    assert!(out.contains("| 250 fallbacks"), "{out}");
    assert_eq!(dir.weight("users"), 0);
}

#[test]
fn a_slow_service_fails_the_latency_gate() {
    let dir = reads_only("rollout-slow", false);
    let (o, out) = rollout_against(
        &dir,
        Behaviour {
            service_latency: 0.3,
            default_latency: 0.02,
            ..Behaviour::default()
        },
        &["--steps", "0,25,100"],
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        // p99 interpolated in the proxy's own histogram buckets (0.25–0.5 s and 0.01–0.025 s).
        out.contains("GATE FAILED: p99 latency: service 497.5 ms > --max-latency-ratio 2 x default 24.9 ms (= 49.7 ms)"),
        "{out}"
    );
    assert_eq!(dir.weight("users"), 0);
}

#[test]
fn shadow_mismatches_stop_the_rollout_before_any_traffic_moves() {
    let dir = reads_only("rollout-shadow", true);
    let (o, out) = rollout_against(
        &dir,
        Behaviour {
            shadow_mismatch: 0.05,
            ..Behaviour::default()
        },
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("step 1/6 (0%): GATE FAILED: shadow match ratio: 0.9500 (1900 of 2000 comparisons matched, 100 differed, 0 failed) < --min-shadow-match 0.999"),
        "{out}"
    );
    assert!(!out.contains("step 2/6"), "{out}");
    assert_eq!(dir.weight("users"), 0);
}

#[test]
fn a_perfect_match_ratio_over_too_little_coverage_does_not_promote() {
    let dir = reads_only("rollout-coverage", true);
    // Every compared answer matches, but a quarter of the shadowed requests are skipped.
    let (o, out) = rollout_against(
        &dir,
        Behaviour {
            shadow_skipped: 0.25,
            ..Behaviour::default()
        },
        &["--max-holds", "2"],
    );
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(
        out.contains("shadow 100.00% matched (1500/1500), coverage 75.00% (1500/2000)"),
        "{out}"
    );
    assert!(
        out.contains(
            "step 1/6 (0%): holding at 0%: shadow coverage 0.7500 (1500 of 2000 shadowed requests \
             compared; not compared: 500 skipped (too_large 500)) < --min-shadow-coverage 0.95"
        ),
        "{out}"
    );
    assert!(!out.contains("step 2/6"), "{out}");
    assert_eq!(dir.weight("users"), 0);

    // The operator may accept less coverage, knowingly.
    let (o, out) = rollout_against(
        &dir,
        Behaviour {
            shadow_skipped: 0.25,
            ..Behaviour::default()
        },
        &["--min-shadow-coverage", "0.7", "--steps", "0,100"],
    );
    assert!(o.status.success(), "{out}");
    assert_eq!(dir.weight("users"), 100);
}

#[test]
fn too_little_traffic_holds_the_step_until_traffic_comes() {
    let dir = reads_only("rollout-hold", false);
    let fake = dir.fake(Behaviour {
        per_scrape: 40,
        ..Behaviour::default()
    });
    let metrics = format!("{}/metrics", fake.url);
    let (mut child, mut lines) = dir.spawn(&[
        "rollout",
        "users",
        "--interval",
        "200ms",
        "--steps",
        "0,25,100",
        "--max-holds",
        "50",
        "--metrics",
        &metrics,
    ]);
    lines.wait_for(
        "step 2/3 (25%): holding at 25%: the service answered 10 requests in the interval, fewer than --min-requests 20; waiting another interval",
    );
    assert_eq!(dir.weight("users"), 25, "a hold keeps the weight");
    fake.set(Behaviour::default());
    let status = child.wait().expect("wait");
    lines.wait_for("rollout of users complete: weight 100");
    assert!(status.success(), "{:?}", lines.seen);
    assert_eq!(dir.weight("users"), 100);
}

#[test]
fn holding_too_long_gives_up_and_writes_the_last_safe_weight_back() {
    let dir = reads_only("rollout-giveup", false);
    let (o, out) = rollout_against(
        &dir,
        Behaviour {
            per_scrape: 40,
            ..Behaviour::default()
        },
        &["--steps", "0,25,100", "--max-holds", "2"],
    );
    assert_eq!(o.status.code(), Some(3), "{out}");
    // The first hold waits another interval; the second is the last, and says why it gives up.
    assert_eq!(out.matches("holding at 25%").count(), 1, "{out}");
    assert!(out.contains("(hold 1 of --max-holds 2)"), "{out}");
    assert!(
        out.contains(
            "step 2/3 (25%): still holding after 2 intervals (--max-holds 2): the service \
             answered 10 requests in the interval, fewer than --min-requests 20; giving up"
        ),
        "{out}"
    );
    assert!(
        out.contains("wrote the last safe weight back: route users: weight 25 → 0"),
        "{out}"
    );
    assert_eq!(dir.weight("users"), 0);
}

#[test]
fn splitting_writes_is_refused_unless_allowed() {
    let dir = OpsTest::new("rollout-writes").shipped_routes().start();
    let fake = dir.fake(Behaviour::default());
    let metrics = format!("{}/metrics", fake.url);
    let o = rollout(&dir, &["--metrics", &metrics], &[]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(
            "refusing to roll out: route \"users\" sends every method (writes included) to \
             \"users\", and 1%, 5%, 25%, 50% would split them between two databases"
        ),
        "{out}"
    );
    assert!(out.contains("--allow-split-writes"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&dir.config).unwrap(),
        SHIPPED,
        "nothing changed"
    );
    assert_eq!(fake.scrapes(), 0, "refused before reading any metrics");

    // Straight to 100 splits nothing; so is an explicit permission.
    let o = rollout(&dir, &["--metrics", &metrics], &["--steps", "0,100"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let dir2 = OpsTest::new("rollout-writes-allowed")
        .shipped_routes()
        .start();
    let fake2 = dir2.fake(Behaviour::default());
    let o = rollout(
        &dir2,
        &["--metrics", &format!("{}/metrics", fake2.url)],
        &["--steps", "0,50,100", "--allow-split-writes"],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(dir2.weight("users"), 100);
}

#[test]
fn a_proxy_that_never_applies_the_weight_stops_the_rollout() {
    let dir = reads_only("rollout-unapplied", false);
    // The fake serves a different copy of the file, as a proxy watching another file would.
    let other = dir.join("other.toml");
    std::fs::copy(&dir.config, &other).unwrap();
    let fake = FakeProxy::start(other, Behaviour::default());
    let metrics = format!("{}/metrics", fake.url);
    let o = dir.run(&[
        "rollout",
        "users",
        "--interval",
        "200ms",
        "--apply-timeout",
        "500ms",
        "--steps",
        "0,25",
        "--max-holds",
        "5",
        "--metrics",
        &metrics,
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("the proxy did not report weight 25 for route \"users\" within 500ms (it reports [0.0]): is it watching this routes file?"), "{out}");
    assert_eq!(dir.weight("users"), 0);
}

#[test]
fn prometheus_is_queried_for_the_fleet() {
    let dir = reads_only("rollout-prom", false);
    let fake = dir.fake(Behaviour::default());
    let o = rollout(&dir, &["--prometheus", &fake.url], &["--steps", "0,50,100"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains(&format!("reading Prometheus {}", fake.url)),
        "{out}"
    );
    assert!(out.contains("step 2/3 (50%): gates passed"), "{out}");
    assert_eq!(dir.weight("users"), 100);
    let queries = fake.queries();
    assert!(
        queries
            .iter()
            .any(|q| q == "strangler_route_weight{route=\"users\"}"),
        "{queries:?}"
    );
    assert!(
        queries.iter().any(|q| q
            == "sum by (backend, code) (increase(strangler_requests_total{route=\"users\"}[1s]))"),
        "{queries:?}"
    );
    assert!(queries.iter().any(|q| q.starts_with(
        "sum by (backend, le) (increase(strangler_request_duration_seconds_bucket{route=\"users\"}["
    )));

    // The same breach through Prometheus.
    fake.set(Behaviour {
        service_fails: Some((1, 0.2)),
        ..Behaviour::default()
    });
    let o = rollout(&dir, &["--prometheus", &fake.url], &["--steps", "100"]);
    // Already at 100: the single step is judged and fails; there is no safer weight than the start.
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("GATE FAILED: error ratio: service 0.2000 (400 of 2000 requests)"),
        "{out}"
    );
}
