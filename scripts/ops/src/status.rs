//! `status`: one line per route of what the running proxy serves — stage, weight, requests/s,
//! error ratio and p99 for the service and the default, shadow match ratio, fallbacks — from
//! its admin endpoint (`/routes`, and `/metrics` scraped twice a window apart).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

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

/// One route as `/routes` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// Name (metric label).
    pub name: String,
    /// Service.
    pub service: String,
    /// Weight.
    pub weight: u64,
    /// Derived stage.
    pub stage: String,
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
    let doc: Value = serde_json::from_str(
        &fetch::get(&routes_url, Duration::from_secs(5))
            .with_context(|| format!("is the proxy running with its admin listener at {base}?"))?,
    )
    .with_context(|| format!("{routes_url}: the answer is not JSON"))?;
    let metrics_url = format!("{base}/metrics");
    let first = scrape(&metrics_url)?;
    let started = std::time::Instant::now();
    std::thread::sleep(options.window);
    let second = scrape(&metrics_url)?;
    let seconds = started.elapsed().as_secs_f64();

    let default = doc["default"].as_str().unwrap_or("default").to_string();
    writeln!(
        out,
        "proxy {base}: revision {}, loaded {}, default {default}{}",
        doc["revision"],
        doc["loaded_at"].as_str().unwrap_or("?"),
        file_note(&doc, config),
    )?;
    if let Some(errors) = doc["last_reload_error"]["errors"].as_array() {
        writeln!(
            out,
            "WARNING: the last reload was rejected at {} (the proxy keeps serving revision {}):",
            doc["last_reload_error"]["at"].as_str().unwrap_or("?"),
            doc["revision"]
        )?;
        for e in errors {
            writeln!(out, "  {}", e.as_str().unwrap_or_default())?;
        }
    }
    let routes = route_infos(&doc);
    write!(
        out,
        "{}",
        render(&routes, &default, &first, &second, seconds)
    )?;
    Ok(())
}

/// Routes listed by `/routes`.
pub fn route_infos(doc: &Value) -> Vec<RouteInfo> {
    doc["routes"]
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|r| RouteInfo {
                    name: r["name"].as_str().unwrap_or_default().to_string(),
                    service: r["service"].as_str().unwrap_or_default().to_string(),
                    weight: r["weight"].as_u64().unwrap_or(0),
                    stage: r["stage"].as_str().unwrap_or("?").to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn file_note(doc: &Value, config: Option<&Path>) -> String {
    let Some(path) = config else {
        return String::new();
    };
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let local = strangler_proxy::config::sha256_hex(&bytes);
    match doc["sha256"].as_str() {
        Some(served) if served == local => format!(" (serving {} as saved)", path.display()),
        Some(_) => format!(
            "\nNOTE: {} differs from what the proxy serves (not reloaded yet, invalid, or another file)",
            path.display()
        ),
        None => String::new(),
    }
}

/// The table: figures over the window between the two scrapes; where a side saw no traffic in
/// the window, its ratios since the proxy started, marked `*`.
pub fn render(
    routes: &[RouteInfo],
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
