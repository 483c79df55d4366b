//! A real Prometheus server (Debian's package) scraping proxies on loopback every second, as an
//! operator with a fleet of proxies runs one. CI installs it; elsewhere a test without it says
//! so loudly and skips.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{Scratch, eventually};

/// The server, killed when dropped.
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    _dir: Scratch,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts a server scraping `targets` and waits until it holds a scrape of every one.
    /// `None` (with a loud note) when the binary is missing outside CI; in CI that panics.
    pub fn start(test: &str, targets: &[SocketAddr]) -> Option<Prometheus> {
        let Some(binary) = which("prometheus") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "prometheus is not installed: CI must `apt-get install -y prometheus` (see .ci/run)"
            );
            eprintln!(
                "\n!!! SKIPPING {test}: no `prometheus` binary on PATH (apt-get install -y \
                 prometheus); CI runs it\n"
            );
            return None;
        };
        let dir = Scratch::new(&format!("{test}-prometheus"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listed: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: strangler\n    static_configs:\n      - targets: [{}]\n",
                listed.join(", ")
            ),
        )
        .expect("prometheus.yml");
        let child = std::process::Command::new(binary)
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
            .expect("start prometheus");
        let server = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let probe = format!(
            "{}/api/v1/query?query=strangler_config_revision",
            server.url
        );
        eventually(
            Duration::from_secs(60),
            "Prometheus holding a scrape of every proxy",
            || {
                let body = strangler_ops::fetch::get(&probe, Duration::from_secs(2)).ok()?;
                (body.matches("strangler_config_revision").count() >= targets.len()).then_some(())
            },
        );
        Some(server)
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}
