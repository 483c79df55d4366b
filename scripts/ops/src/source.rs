//! Where a rollout reads its figures: one proxy's `/metrics` (two scrapes, one interval
//! apart) or a Prometheus server's HTTP API (`increase()` over the interval, summed over
//! every proxy replica it scrapes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::exposition::Scrape;
use crate::fetch;
use crate::figures::{Increase, RouteWindow, increases, names};

/// How long one HTTP request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A metrics source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A proxy's `/metrics` URL.
    Proxy(String),
    /// A Prometheus server's base URL.
    Prometheus(String),
    /// Several proxies' `/metrics` URLs, read directly (`cutover` across a fleet without
    /// waiting for Prometheus' scrape interval). Only the cutover readings accept it.
    Proxies(Vec<String>),
}

/// The start of a window.
#[derive(Clone, Debug)]
pub enum Mark {
    /// The scrape taken at the start.
    Scrape(Scrape, Instant),
    /// Prometheus answers for any past window; only the time matters.
    Time(Instant),
}

/// The names a route's series carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteNames {
    /// The `route` label.
    pub route: String,
    /// The service's `backend` label.
    pub service: String,
    /// The default's `backend` label.
    pub default: String,
}

impl Source {
    /// A proxy source from a URL or admin address; a URL without a path gets `/metrics`.
    pub fn proxy(url: &str) -> Source {
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let after_scheme = &url["http://".len().min(url.len())..];
        if after_scheme.trim_end_matches('/').contains('/') {
            Source::Proxy(url)
        } else {
            Source::Proxy(format!("{}/metrics", url.trim_end_matches('/')))
        }
    }

    /// A Prometheus source from its base URL (`http://prometheus:9090`).
    pub fn prometheus(url: &str) -> Source {
        Source::Prometheus(url.trim_end_matches('/').to_string())
    }

    /// Where it reads from, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Proxy(url) => format!("proxy metrics {url}"),
            Source::Prometheus(url) => format!("Prometheus {url}"),
            Source::Proxies(urls) => format!("proxy metrics {}", urls.join(", ")),
        }
    }

    /// One scrape per proxy, for the readings that accept several.
    fn scrapes(&self) -> anyhow::Result<Vec<Scrape>> {
        match self {
            Source::Proxy(url) => Ok(vec![scrape(url)?]),
            Source::Proxies(urls) => urls.iter().map(|u| scrape(u)).collect(),
            Source::Prometheus(_) => bail!("Prometheus is queried, not scraped"),
        }
    }

    /// Starts a window now.
    pub fn mark(&self) -> anyhow::Result<Mark> {
        Ok(match self {
            Source::Proxy(url) => Mark::Scrape(scrape(url)?, Instant::now()),
            Source::Prometheus(_) => Mark::Time(Instant::now()),
            Source::Proxies(_) => bail!("a rollout reads one proxy or Prometheus"),
        })
    }

    /// The route's figures from `mark` until now.
    pub fn window(&self, mark: &Mark, names: &RouteNames) -> anyhow::Result<RouteWindow> {
        let (incs, seconds) = match (self, mark) {
            (Source::Proxy(url), Mark::Scrape(start, at)) => {
                let end = scrape(url)?;
                (
                    increases(start, &end, &names.route),
                    at.elapsed().as_secs_f64(),
                )
            }
            (Source::Prometheus(base), Mark::Scrape(_, at) | Mark::Time(at)) => {
                let seconds = at.elapsed().as_secs_f64();
                (prometheus_increases(base, &names.route, seconds)?, seconds)
            }
            (Source::Proxy(_), Mark::Time(_)) => bail!("a proxy window needs a starting scrape"),
            (Source::Proxies(_), _) => bail!("a rollout reads one proxy or Prometheus"),
        };
        Ok(RouteWindow::from_increases(
            &incs,
            &names.service,
            &names.default,
            seconds,
        ))
    }

    /// The weight each proxy reports for `route` now (one value per replica).
    pub fn weights(&self, route: &str) -> anyhow::Result<Vec<f64>> {
        match self {
            Source::Proxy(_) | Source::Proxies(_) => Ok(self
                .scrapes()?
                .iter()
                .flat_map(|s| s.named(names::ROUTE_WEIGHT))
                .filter(|s| s.label("route") == route)
                .map(|s| s.value)
                .collect()),
            Source::Prometheus(base) => {
                let query = format!("{}{{route={}}}", names::ROUTE_WEIGHT, quote(route));
                Ok(prometheus_query(base, &query)?
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect())
            }
        }
    }
}

impl Source {
    /// The sha256 of the routes file each proxy serves now (`strangler_config_info`), one
    /// entry per proxy; a proxy still reporting an older file has its older digest here.
    pub fn served_files(&self) -> anyhow::Result<Vec<String>> {
        let info = names::CONFIG_INFO;
        Ok(match self {
            Source::Proxy(_) | Source::Proxies(_) => self
                .scrapes()?
                .iter()
                .flat_map(|s| s.named(info))
                .map(|s| s.label("sha256").to_string())
                .collect(),
            Source::Prometheus(base) => prometheus_query(base, info)?
                .into_iter()
                .map(|(labels, _)| labels.get("sha256").cloned().unwrap_or_default())
                .collect(),
        })
    }

    /// Requests that matched `route` only when letter case is ignored
    /// (`strangler_route_near_misses_total`), since each proxy started, summed over proxies.
    pub fn near_misses(&self, route: &str) -> anyhow::Result<f64> {
        let name = names::ROUTE_NEAR_MISSES;
        Ok(match self {
            Source::Proxy(_) | Source::Proxies(_) => self
                .scrapes()?
                .iter()
                .flat_map(|s| s.named(name))
                .filter(|s| s.label("route") == route)
                .map(|s| s.value)
                .sum(),
            Source::Prometheus(base) => {
                let query = format!("sum({name}{{route={}}})", quote(route));
                prometheus_query(base, &query)?
                    .into_iter()
                    .map(|(_, v)| v)
                    .sum()
            }
        })
    }

    /// Writes of `route` forwarded to `backend` and not answered yet, summed over proxies.
    pub fn writes_in_flight(&self, route: &str, backend: &str) -> anyhow::Result<f64> {
        let name = names::IN_FLIGHT;
        Ok(match self {
            Source::Proxy(_) | Source::Proxies(_) => self
                .scrapes()?
                .iter()
                .flat_map(|s| s.named(name))
                .filter(|s| {
                    s.label("route") == route
                        && s.label("backend") == backend
                        && s.label("class") == "write"
                })
                .map(|s| s.value)
                .sum(),
            Source::Prometheus(base) => {
                let query = format!(
                    "sum({name}{{route={},backend={},class=\"write\"}})",
                    quote(route),
                    quote(backend)
                );
                prometheus_query(base, &query)?
                    .into_iter()
                    .map(|(_, v)| v)
                    .sum()
            }
        })
    }

    /// The cumulative buckets `(le, count)` of `route`'s hold durations since each proxy
    /// started, summed over proxies, ascending with `+Inf` last.
    pub fn hold_histogram(&self, route: &str) -> anyhow::Result<Vec<(f64, f64)>> {
        let bucket = format!("{}_bucket", names::HOLD_DURATION);
        let mut by_le: BTreeMap<String, f64> = BTreeMap::new();
        match self {
            Source::Proxy(_) | Source::Proxies(_) => {
                for scrape in self.scrapes()? {
                    for s in scrape.named(&bucket).filter(|s| s.label("route") == route) {
                        *by_le.entry(s.label("le").to_string()).or_default() += s.value;
                    }
                }
            }
            Source::Prometheus(base) => {
                let query = format!("sum by (le) ({bucket}{{route={}}})", quote(route));
                for (labels, v) in prometheus_query(base, &query)? {
                    *by_le
                        .entry(labels.get("le").cloned().unwrap_or_default())
                        .or_default() += v;
                }
            }
        }
        let mut buckets: Vec<(f64, f64)> = by_le
            .into_iter()
            .filter_map(|(le, n)| Some((crate::exposition::parse_value(&le)?, n)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(buckets)
    }
}

/// Scrapes a proxy's `/metrics`.
pub fn scrape(url: &str) -> anyhow::Result<Scrape> {
    let text = fetch::get(url, TIMEOUT)?;
    Scrape::parse(&text).map_err(|e| anyhow::anyhow!("{url}: not Prometheus text: {e}"))
}

/// A PromQL string literal.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The growth of the route's series over the last `seconds`, summed over every replica.
fn prometheus_increases(base: &str, route: &str, seconds: f64) -> anyhow::Result<Vec<Increase>> {
    // Whole seconds, at least one: PromQL ranges take integer units here.
    let range = format!("{}s", seconds.ceil().max(1.0) as u64);
    let r = quote(route);
    let queries = [
        (
            names::REQUESTS,
            format!(
                "sum by (backend, code) (increase({}{{route={r}}}[{range}]))",
                names::REQUESTS
            ),
        ),
        (
            names::REQUEST_DURATION_BUCKET,
            format!(
                "sum by (backend, le) (increase({}{{route={r}}}[{range}]))",
                names::REQUEST_DURATION_BUCKET
            ),
        ),
        (
            names::FALLBACKS,
            format!("sum(increase({}{{route={r}}}[{range}]))", names::FALLBACKS),
        ),
        (
            names::SHADOW_COMPARISONS,
            format!(
                "sum by (result) (increase({}{{route={r}}}[{range}]))",
                names::SHADOW_COMPARISONS
            ),
        ),
        (
            names::SHADOW_SKIPPED,
            format!(
                "sum by (reason) (increase({}{{route={r}}}[{range}]))",
                names::SHADOW_SKIPPED
            ),
        ),
    ];
    let mut out = Vec::new();
    for (name, query) in queries {
        for (labels, value) in prometheus_query(base, &query)? {
            if value.is_finite() {
                out.push(Increase {
                    name: name.to_string(),
                    labels,
                    value,
                });
            }
        }
    }
    Ok(out)
}

/// Runs an instant query; returns each series' labels and value.
pub fn prometheus_query(
    base: &str,
    query: &str,
) -> anyhow::Result<Vec<(BTreeMap<String, String>, f64)>> {
    let url = format!(
        "{base}/api/v1/query?query={}",
        fetch::encode_component(query)
    );
    let body = fetch::get(&url, TIMEOUT)?;
    let doc: Value =
        serde_json::from_str(&body).with_context(|| format!("{url}: the answer is not JSON"))?;
    if doc["status"] != "success" {
        bail!(
            "Prometheus refused {query:?}: {}",
            doc["error"].as_str().unwrap_or("no reason given")
        );
    }
    let Some(result) = doc["data"]["result"].as_array() else {
        bail!("Prometheus answered {query:?} without data.result");
    };
    let mut out = Vec::new();
    for series in result {
        let labels = series["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let value = series["value"][1]
            .as_str()
            .and_then(crate::exposition::parse_value)
            .with_context(|| format!("Prometheus answered {query:?} with a malformed value"))?;
        out.push((labels, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_sources_default_to_the_metrics_path() {
        assert_eq!(
            Source::proxy("127.0.0.1:9901"),
            Source::Proxy("http://127.0.0.1:9901/metrics".into())
        );
        assert_eq!(
            Source::proxy("http://127.0.0.1:9901/"),
            Source::Proxy("http://127.0.0.1:9901/metrics".into())
        );
        assert_eq!(
            Source::proxy("http://h:1/custom/metrics"),
            Source::Proxy("http://h:1/custom/metrics".into())
        );
    }

    #[test]
    fn promql_strings_are_quoted() {
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
    }
}
