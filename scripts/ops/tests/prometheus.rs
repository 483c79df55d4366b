//! `rollout --prometheus` against a real Prometheus server scraping a real proxy on loopback,
//! as an operator with a fleet of proxies would run it. Needs the `prometheus` binary (Debian's
//! package); CI installs it and this test fails there without it.

mod common;

use common::prometheus::Prometheus;
use common::stack::{Load, prepare, stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_reads_its_figures_from_prometheus() {
    let s = stack("prometheus", None).await;
    prepare(&s, "on").await;

    let Some(prometheus) = Prometheus::start(
        "a_rollout_reads_its_figures_from_prometheus",
        &[s.proxy.admin],
    ) else {
        return;
    };
    let url = prometheus.url.clone();

    let load = Load::start(s.proxy.public);
    let (code, out) = s
        .run_async(&[
            "rollout",
            "users",
            "--prometheus",
            &url,
            "--steps",
            "0,50,100",
            "--interval",
            "4s",
            "--min-requests",
            "5",
            "--max-holds",
            "5",
            "--apply-timeout",
            "20s",
        ])
        .await;
    let (ok, failures) = load.finish();
    println!("{out}");
    assert_eq!(code, Some(0), "{out}");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 100);
    assert!(out.contains(&format!("reading Prometheus {url}")), "{out}");
    assert!(out.contains("step 1/3 (0%): gates passed"), "{out}");
    assert!(out.contains("shadow 100.00% matched"), "{out}");
    assert!(
        out.contains("rollout of users complete: weight 100"),
        "{out}"
    );
    assert_eq!(s.weight("users"), 100);
    s.proxy.shutdown().await;
}
