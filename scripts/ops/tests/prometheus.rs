//! `rollout --prometheus` against a real Prometheus server scraping a real proxy on loopback,
//! as an operator with a fleet of proxies would run it. Needs the `prometheus` binary (Debian's
//! package); CI installs it and this test fails there without it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::stack::{Load, prepare, stack};
use common::{Scratch, eventually};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Kills the Prometheus child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_reads_its_figures_from_prometheus() {
    let prometheus = match which("prometheus") {
        Some(path) => path,
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "prometheus is not installed: CI must `apt-get install -y prometheus` (see .ci/run)"
            )
        }
        None => {
            eprintln!(
                "\n!!! SKIPPING a_rollout_reads_its_figures_from_prometheus: no `prometheus` binary \
                 on PATH (apt-get install -y prometheus); CI runs it\n"
            );
            return;
        }
    };
    let s = stack("prometheus", None).await;
    prepare(&s, "on").await;

    let dir = Scratch::new("prometheus-server");
    let port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: strangler\n    static_configs:\n      - targets: ['{}']\n",
            s.proxy.admin
        ),
    )
    .unwrap();
    let _server = Child(
        std::process::Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let url = format!("http://127.0.0.1:{port}");
    // Up, and holding at least one scrape of the proxy.
    let probe = url.clone();
    tokio::task::spawn_blocking(move || {
        eventually(
            Duration::from_secs(60),
            "Prometheus scraping the proxy",
            || {
                let body = strangler_ops::fetch::get(
                    &format!("{probe}/api/v1/query?query=strangler_config_revision"),
                    Duration::from_secs(2),
                )
                .ok()?;
                body.contains("strangler_config_revision").then_some(())
            },
        )
    })
    .await
    .unwrap();

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

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|p| p.is_file())
}
