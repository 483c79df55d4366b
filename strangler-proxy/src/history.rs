//! A short in-memory history of every route's traffic, so one proxy can show the last 15
//! minutes (the admin dashboard, `/history`) without a Prometheus server.
//!
//! Nothing is added to the request path: every [`INTERVAL`] a task reads the counters the
//! request path already keeps (`strangler_requests_total`, the latency histogram, fallbacks,
//! shadow verdicts, near misses) and stores how much each grew since the previous sample, in a
//! ring of [`BUCKETS`] buckets. A reader also gets the bucket still open (growth since the
//! last sample), so the newest point is never up to [`INTERVAL`] old. Figures are folded by
//! [`RouteWindow::from_increases`], the same rule `scripts/status` and `rollout` apply to
//! scrapes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};

use crate::figures::{Increase, RouteWindow, Side};
use crate::metrics::{Metrics, names};

/// Time between two samples: the width of a bucket.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Buckets kept: 90 × 10 s = 15 minutes.
pub const BUCKETS: usize = 90;

/// A counter series: metric name and its labels.
type Series = (String, BTreeMap<String, String>);

/// One closed (or, as read, the open) bucket: how much each series grew in `[start, end)`.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Start of the bucket.
    pub start: SystemTime,
    /// End of the bucket.
    pub end: SystemTime,
    /// Growth of every series that grew, each with a `route` label.
    pub increases: Vec<Increase>,
}

impl Bucket {
    fn seconds(&self) -> f64 {
        self.end
            .duration_since(self.start)
            .unwrap_or_default()
            .as_secs_f64()
    }
}

struct State {
    totals: BTreeMap<Series, f64>,
    at: SystemTime,
    buckets: VecDeque<Bucket>,
}

/// The ring of buckets and the counter values at the last sample.
pub struct History {
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

impl History {
    /// A history starting now, from the counters' current values.
    pub fn new(metrics: Arc<Metrics>, now: SystemTime) -> Self {
        let totals = totals(&metrics);
        Self {
            metrics,
            state: Mutex::new(State {
                totals,
                at: now,
                buckets: VecDeque::with_capacity(BUCKETS),
            }),
        }
    }

    /// Closes the open bucket at `now`: stores the growth since the last sample, dropping the
    /// oldest bucket once [`BUCKETS`] are kept.
    pub fn sample(&self, now: SystemTime) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let totals = totals(&self.metrics);
        let bucket = Bucket {
            start: state.at,
            end: now,
            increases: growth(&state.totals, &totals),
        };
        if state.buckets.len() == BUCKETS {
            state.buckets.pop_front();
        }
        state.buckets.push_back(bucket);
        state.totals = totals;
        state.at = now;
    }

    /// The closed buckets, oldest first, then the open one (growth from the last sample to
    /// `now`).
    pub fn buckets(&self, now: SystemTime) -> Vec<Bucket> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Bucket> = state.buckets.iter().cloned().collect();
        out.push(Bucket {
            start: state.at,
            end: now.max(state.at),
            increases: growth(&state.totals, &totals(&self.metrics)),
        });
        out
    }

    /// Samples every [`INTERVAL`], for the life of the process.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.sample(SystemTime::now());
        }
    }

    /// The `/history` document for `routes` (name, service) with `default` as the default.
    pub fn doc(&self, routes: &[(&str, &str)], default: &str, now: SystemTime) -> HistoryDoc {
        let buckets = self.buckets(now);
        let mut by_route: BTreeMap<&str, Vec<Vec<Increase>>> = BTreeMap::new();
        for (name, _) in routes {
            by_route.insert(name, vec![Vec::new(); buckets.len()]);
        }
        for (i, bucket) in buckets.iter().enumerate() {
            for inc in &bucket.increases {
                let route = inc.labels.get("route").map_or("", String::as_str);
                if let Some(per_bucket) = by_route.get_mut(route) {
                    per_bucket[i].push(inc.clone());
                }
            }
        }
        let window_seconds: f64 = buckets.iter().map(Bucket::seconds).sum();
        let routes = routes
            .iter()
            .map(|(name, service)| {
                let per_bucket = &by_route[name];
                let points = buckets
                    .iter()
                    .zip(per_bucket)
                    .map(|(b, incs)| {
                        let w = RouteWindow::from_increases(incs, service, default, b.seconds());
                        PointDoc {
                            end: humantime::format_rfc3339_millis(b.end).to_string(),
                            seconds: b.seconds(),
                            service: CountsDoc::of(&w.service),
                            default: CountsDoc::of(&w.default),
                            shadow_match: w.shadow.matched as u64,
                            shadow_mismatch: w.shadow.mismatched as u64,
                            shadow_other: (w.shadow.errors + w.shadow.skipped + w.shadow.dropped)
                                as u64,
                        }
                    })
                    .collect();
                let all: Vec<Increase> = per_bucket.iter().flatten().cloned().collect();
                let w = RouteWindow::from_increases(&all, service, default, window_seconds);
                RouteHistoryDoc {
                    name: name.to_string(),
                    service: service.to_string(),
                    default: default.to_string(),
                    points,
                    window: WindowDoc {
                        seconds: window_seconds,
                        service: SideDoc::of(&w.service),
                        default: SideDoc::of(&w.default),
                        fallbacks: w.fallbacks as u64,
                        near_misses: w.near_misses as u64,
                        shadow_match: w.shadow.matched as u64,
                        shadow_mismatch: w.shadow.mismatched as u64,
                        shadow_error: w.shadow.errors as u64,
                        shadow_skipped: w.shadow.skipped as u64,
                        shadow_dropped: w.shadow.dropped as u64,
                        shadow_coverage: w.shadow.coverage(),
                        shadow_match_ratio: w.shadow.match_ratio(),
                    },
                }
            })
            .collect();
        HistoryDoc {
            interval_seconds: INTERVAL.as_secs(),
            buckets: BUCKETS,
            routes,
        }
    }
}

/// The `/history` document: every route's traffic over the last 15 minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryDoc {
    /// Width of a closed bucket, seconds.
    pub interval_seconds: u64,
    /// Closed buckets kept at most.
    pub buckets: usize,
    /// Every route of the table in service, in file order.
    pub routes: Vec<RouteHistoryDoc>,
}

/// One route in [`HistoryDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteHistoryDoc {
    /// Route name.
    pub name: String,
    /// Its service (the `backend` label of the service side).
    pub service: String,
    /// The default service.
    pub default: String,
    /// One point per bucket, oldest first; the last is the bucket still open.
    pub points: Vec<PointDoc>,
    /// The whole history folded into one window.
    pub window: WindowDoc,
}

/// One bucket of a route in [`RouteHistoryDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointDoc {
    /// End of the bucket, RFC 3339 in UTC with milliseconds.
    pub end: String,
    /// Width of the bucket, seconds (less than the interval for the open one).
    pub seconds: f64,
    /// The service's requests and errors (a fallback counts as a request and an error of the
    /// service, as in `scripts/status`).
    pub service: CountsDoc,
    /// The default's.
    pub default: CountsDoc,
    /// Shadow verdicts `match`.
    pub shadow_match: u64,
    /// Shadow verdicts `mismatch`.
    pub shadow_mismatch: u64,
    /// Shadowed requests neither matching nor mismatching (`error`, `skipped`, `dropped`).
    pub shadow_other: u64,
}

/// Requests and errors (5xx answers, fallbacks) of one side in a bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsDoc {
    /// Requests answered.
    pub requests: u64,
    /// Of those, 5xx or failed.
    pub errors: u64,
}

impl CountsDoc {
    fn of(side: &Side) -> Self {
        CountsDoc {
            requests: side.requests as u64,
            errors: side.errors as u64,
        }
    }
}

/// One side over the whole history in [`WindowDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideDoc {
    /// Requests answered.
    pub requests: u64,
    /// Of those, 5xx or failed.
    pub errors: u64,
    /// `errors / requests`; `None` without requests.
    pub error_ratio: Option<f64>,
    /// 99th percentile of the time to response headers, seconds, interpolated in the
    /// histogram's buckets as Prometheus' `histogram_quantile`; `None` without requests.
    pub p99_seconds: Option<f64>,
}

impl SideDoc {
    fn of(side: &Side) -> Self {
        SideDoc {
            requests: side.requests as u64,
            errors: side.errors as u64,
            error_ratio: side.error_ratio(),
            p99_seconds: side.p99(),
        }
    }
}

/// A route's figures over the whole history, in [`RouteHistoryDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowDoc {
    /// Length of the history, seconds (up to 15 minutes).
    pub seconds: f64,
    /// The service.
    pub service: SideDoc,
    /// The default.
    pub default: SideDoc,
    /// Requests the service failed that were retried on the default.
    pub fallbacks: u64,
    /// Requests the default served that match the route only when letter case is ignored.
    pub near_misses: u64,
    /// Shadow verdicts `match`.
    pub shadow_match: u64,
    /// Shadow verdicts `mismatch`.
    pub shadow_mismatch: u64,
    /// Shadow verdicts `error` (the service failed to answer).
    pub shadow_error: u64,
    /// Shadowed requests not compared.
    pub shadow_skipped: u64,
    /// Requests not mirrored (the bound on shadow work).
    pub shadow_dropped: u64,
    /// Compared over shadowed; `None` before anything was shadowed.
    pub shadow_coverage: Option<f64>,
    /// `match` over compared; `None` before anything was compared.
    pub shadow_match_ratio: Option<f64>,
}

/// The current value of every counter series the figures read.
fn totals(metrics: &Metrics) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    let families: Vec<MetricFamily> = [
        metrics.requests.collect(),
        metrics.fallbacks.collect(),
        metrics.shadow_comparisons.collect(),
        metrics.shadow_skipped.collect(),
        metrics.near_misses.collect(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for family in &families {
        for m in family.get_metric() {
            out.insert(
                (family.name().to_string(), labels(m)),
                m.get_counter().get_value(),
            );
        }
    }
    for family in metrics.duration.collect() {
        for m in family.get_metric() {
            let h = m.get_histogram();
            let base = labels(m);
            let bounds = h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound().to_string(), b.cumulative_count() as f64))
                .chain([("+Inf".to_string(), h.get_sample_count() as f64)]);
            for (le, count) in bounds {
                let mut labels = base.clone();
                labels.insert("le".into(), le);
                out.insert((names::REQUEST_DURATION_BUCKET.to_string(), labels), count);
            }
        }
    }
    out
}

fn labels(m: &prometheus::proto::Metric) -> BTreeMap<String, String> {
    m.get_label()
        .iter()
        .map(|l| (l.name().to_string(), l.value().to_string()))
        .collect()
}

/// How much each series grew from `before` to `after`; a series that shrank was reset, so its
/// whole value is growth. Series that did not grow are left out.
fn growth(before: &BTreeMap<Series, f64>, after: &BTreeMap<Series, f64>) -> Vec<Increase> {
    after
        .iter()
        .filter_map(|((name, labels), value)| {
            let old = before
                .get(&(name.clone(), labels.clone()))
                .copied()
                .unwrap_or(0.0);
            let grew = if *value >= old { value - old } else { *value };
            (grew > 0.0).then(|| Increase {
                name: name.clone(),
                labels: labels.clone(),
                value: grew,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PairMetrics;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn buckets_hold_growth_per_interval_and_the_ring_is_bounded() {
        let metrics = Arc::new(Metrics::new());
        let service = PairMetrics::new("users", "users");
        let default = PairMetrics::new("users", "monolith");
        service.observe(&metrics, 200, 0.001);
        let history = History::new(metrics.clone(), at(0));
        // Counted before the history began: not in any bucket.
        for _ in 0..3 {
            service.observe(&metrics, 200, 0.002);
        }
        default.observe(&metrics, 503, 0.2);
        history.sample(at(10));
        service.observe(&metrics, 200, 0.002);
        let doc = history.doc(&[("users", "users")], "monolith", at(15));
        let route = &doc.routes[0];
        assert_eq!(route.points.len(), 2, "one closed bucket and the open one");
        assert_eq!(route.points[0].service.requests, 3);
        assert_eq!(route.points[0].default.requests, 1);
        assert_eq!(route.points[0].default.errors, 1);
        assert_eq!(route.points[1].service.requests, 1);
        assert_eq!(route.points[1].seconds, 5.0);
        assert_eq!(route.window.service.requests, 4);
        assert_eq!(route.window.default.error_ratio, Some(1.0));
        assert_eq!(route.window.seconds, 15.0);
        let p99 = route.window.service.p99_seconds.unwrap();
        assert!(p99 > 0.001 && p99 <= 0.0025, "{p99}");
        assert!(route.window.default.p99_seconds.unwrap() > 0.1);

        for i in 2..(BUCKETS as u64 + 10) {
            history.sample(at(10 * i));
        }
        let doc = history.doc(&[("users", "users")], "monolith", at(10 * 200));
        assert_eq!(doc.routes[0].points.len(), BUCKETS + 1);
        // The buckets that held traffic have rolled out of the ring.
        assert_eq!(doc.routes[0].window.service.requests, 0);
    }

    #[test]
    fn routes_not_in_the_table_are_left_out_and_shadow_verdicts_are_folded() {
        let metrics = Arc::new(Metrics::new());
        let history = History::new(metrics.clone(), at(0));
        PairMetrics::new("gone", "users").observe(&metrics, 200, 0.001);
        for (result, n) in [("match", 8), ("mismatch", 2), ("skipped", 10)] {
            metrics
                .shadow_comparisons
                .with_label_values(&["users", result])
                .inc_by(n);
        }
        metrics.near_misses.with_label_values(&["users"]).inc();
        let doc = history.doc(&[("users", "users")], "monolith", at(3));
        assert_eq!(doc.routes.len(), 1);
        let w = &doc.routes[0].window;
        assert_eq!(w.service.requests, 0);
        assert_eq!((w.shadow_match, w.shadow_mismatch), (8, 2));
        assert_eq!(w.shadow_match_ratio, Some(0.8));
        assert_eq!(w.shadow_coverage, Some(0.5));
        assert_eq!(w.near_misses, 1);
        assert_eq!(doc.routes[0].points[0].shadow_other, 10);
    }
}
