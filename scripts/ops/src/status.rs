//! `status`: one line per route of what the running proxy serves — stage, weight, requests/s,
//! error ratio and p99 for the service and the default, shadow match ratio, fallbacks — from
//! its admin endpoint (`/routes`, and `/metrics` scraped twice a window apart).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use strangler_proxy::admin::{RouteDoc, RoutesDoc};

use crate::exposition::Scrape;
use crate::fetch;
use crate::figures::{RouteWindow, Side, increases};
use crate::source::scrape;
use crate::text_table::TextTable;

/// What `status` reads.
#[derive(Clone, Debug)]
pub struct StatusOptions {
    /// Admin base URL, `http://127.0.0.1:9901`.
    pub admin: String,
    /// Time between the two scrapes.
    pub window: Duration,
}

/// The admin address of `[proxy] admin` as a URL; a wildcard listen address is reached on
/// loopback.
pub fn admin_url(addr: std::net::SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("http://{ip}:{}", addr.port())
}

/// Prints the status table; `config` (the local routes file) is compared with what the
/// proxy serves.
pub fn run(
    options: &StatusOptions,
    config: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let base = options.admin.trim_end_matches('/');
    let routes_url = format!("{base}/routes");
    let doc: RoutesDoc = serde_json::from_str(
        &fetch::get(&routes_url, Duration::from_secs(5))
            .with_context(|| format!("is the proxy running with its admin listener at {base}?"))?,
    )
    .with_context(|| format!("{routes_url}: the answer is not the /routes document"))?;
    let metrics_url = format!("{base}/metrics");
    let first = scrape(&metrics_url)?;
    let started = std::time::Instant::now();
    std::thread::sleep(options.window);
    let second = scrape(&metrics_url)?;
    let seconds = started.elapsed().as_secs_f64();

    writeln!(
        out,
        "proxy {base}: revision {}, loaded {}, default {}{}",
        doc.revision,
        doc.loaded_at,
        doc.default,
        file_note(&doc, config),
    )?;
    if let Some(rejected) = &doc.last_reload_error {
        writeln!(
            out,
            "WARNING: the last reload was rejected at {} (the proxy keeps serving revision {}):",
            rejected.at, doc.revision
        )?;
        for e in &rejected.errors {
            writeln!(out, "  {e}")?;
        }
    }
    write!(
        out,
        "{}",
        render(&doc.routes, &doc.default, &first, &second, seconds)
    )?;
    Ok(())
}

fn file_note(doc: &RoutesDoc, config: Option<&Path>) -> String {
    let Some(path) = config else {
        return String::new();
    };
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let local = strangler_proxy::config::sha256_hex(&bytes);
    if doc.sha256 == local {
        format!(" (serving {} as saved)", path.display())
    } else {
        format!(
            "\nNOTE: {} differs from what the proxy serves (not reloaded yet, invalid, or another file)",
            path.display()
        )
    }
}

/// The table: figures over the window between the two scrapes; where a side saw no traffic in
/// the window, its ratios since the proxy started, marked `*`.
pub fn render(
    routes: &[RouteDoc],
    default: &str,
    first: &Scrape,
    second: &Scrape,
    seconds: f64,
) -> String {
    let mut t = TextTable::new([
        "route",
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
    ]);
    let empty = Scrape::default();
    let mut starred = false;
    for r in routes {
        let window = RouteWindow::from_increases(
            &increases(first, second, &r.name),
            &r.service,
            default,
            seconds,
        );
        let life = RouteWindow::from_increases(
            &increases(&empty, second, &r.name),
            &r.service,
            default,
            seconds,
        );
        let mut pick = |w: &Side, l: &Side| {
            if w.requests > 0.0 {
                (w.clone(), "")
            } else if l.requests > 0.0 {
                starred = true;
                (l.clone(), "*")
            } else {
                (w.clone(), "")
            }
        };
        let (svc, svc_mark) = pick(&window.service, &life.service);
        let (def, def_mark) = pick(&window.default, &life.default);
        let shadow = if window.shadow.compared() > 0.0 {
            ratio_cell(window.shadow.matched, window.shadow.compared(), "")
        } else if life.shadow.compared() > 0.0 {
            starred = true;
            ratio_cell(life.shadow.matched, life.shadow.compared(), "*")
        } else {
            "-".into()
        };
        t.row([
            r.name.clone(),
            r.stage.clone(),
            r.weight.to_string(),
            format!("{:.1}", window.service.requests / seconds.max(1e-9)),
            format!("{:.1}", window.default.requests / seconds.max(1e-9)),
            ratio_cell(svc.errors, svc.requests, svc_mark),
            ratio_cell(def.errors, def.requests, def_mark),
            latency_cell(svc.p99(), svc_mark),
            latency_cell(def.p99(), def_mark),
            shadow,
            format!("{:.0} ({:.0} in all)", window.fallbacks, life.fallbacks),
        ]);
    }
    let mut out = format!("over the last {seconds:.1}s:\n{}", t.render());
    if starred {
        out.push_str("* no traffic in the window: figure since the proxy started\n");
    }
    out
}

fn ratio_cell(part: f64, whole: f64, mark: &str) -> String {
    if whole <= 0.0 {
        return "-".into();
    }
    format!("{:.2}% ({part:.0}/{whole:.0}){mark}", 100.0 * part / whole)
}

/// `3.2 ms` or `1.50 s`.
pub fn latency_cell(seconds: Option<f64>, mark: &str) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.1} ms{mark}", s * 1000.0),
        Some(s) => format!("{s:.2} s{mark}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_admin_addresses_are_reached_on_loopback() {
        assert_eq!(
            admin_url("0.0.0.0:9901".parse().unwrap()),
            "http://127.0.0.1:9901"
        );
        assert_eq!(admin_url("[::]:9901".parse().unwrap()), "http://[::1]:9901");
        assert_eq!(
            admin_url("10.1.2.3:1".parse().unwrap()),
            "http://10.1.2.3:1"
        );
    }
}
