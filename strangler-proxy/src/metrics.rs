//! Every metric the proxy exports, declared once and registered at start-up.
//!
//! Label values come only from `routes.toml` (route and service names) and from fixed sets
//! (status codes, error kinds, results), never from request data, so a client cannot grow the
//! series count. The request path takes per-route handles resolved once (see [`PairMetrics`]),
//! so counting a request is an atomic add, not a label lookup under a lock.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric name the proxy exports: the contract with `scripts/status`, `rollout`,
/// `cutover`, the Prometheus rules and the dashboard, which read them back with these constants.
pub mod names {
    /// Counter `{route, backend, code}`: requests answered.
    pub const REQUESTS: &str = "strangler_requests_total";
    /// Histogram `{route, backend}`, seconds: time to response headers.
    pub const REQUEST_DURATION: &str = "strangler_request_duration_seconds";
    /// The `_bucket` series of [`REQUEST_DURATION`] (`{route, backend, le}`).
    pub const REQUEST_DURATION_BUCKET: &str = "strangler_request_duration_seconds_bucket";
    /// Counter `{route, backend, kind}`: a backend failed before answering.
    pub const UPSTREAM_ERRORS: &str = "strangler_upstream_errors_total";
    /// Counter `{route}`: the client went away before the backend answered.
    pub const CLIENT_ABORTS: &str = "strangler_client_aborts_total";
    /// Counter `{route}`: service failures retried on the default.
    pub const FALLBACKS: &str = "strangler_fallbacks_total";
    /// Counter `{route, result}`: shadowed requests by verdict ([`super::shadow_result`]).
    /// Coverage is compared ÷ shadowed: (`match` + `mismatch` + `error`) ÷ all results.
    pub const SHADOW_COMPARISONS: &str = "strangler_shadow_comparisons_total";
    /// Why shadowed requests were `skipped` (`too_large`, `client_aborted`, `body_error`,
    /// `timeout`, `undecodable`); sums to the `skipped` result.
    /// Counter `{route, reason}`.
    pub const SHADOW_SKIPPED: &str = "strangler_shadow_skipped_total";
    /// Gauge `{route, service, stage}`: percent of a route's requests its service serves.
    pub const ROUTE_WEIGHT: &str = "strangler_route_weight";
    /// Counter `{result}`: reloads of `routes.toml`.
    pub const CONFIG_RELOADS: &str = "strangler_config_reloads_total";
    /// Gauge: revision of the table in service.
    pub const CONFIG_REVISION: &str = "strangler_config_revision";
    /// Counter `{reason}`: requests refused before routing.
    pub const DOWNSTREAM_REJECTED: &str = "strangler_downstream_rejected_total";
    /// Gauge `{route}`: requests held behind the route's write fence now.
    pub const HELD_REQUESTS: &str = "strangler_held_requests";
    /// Counter `{route, reason}`: held requests answered 503 without being forwarded, because
    /// the fence outlasted `hold_timeout` (`timeout`) or `hold_max` were held (`full`).
    pub const HOLD_REJECTIONS: &str = "strangler_hold_rejections_total";
    /// Histogram `{route}`, seconds: how long requests were held behind a write fence.
    pub const HOLD_DURATION: &str = "strangler_hold_duration_seconds";
    /// Gauge `{route, backend, class}`: requests forwarded and not yet answered (headers);
    /// `class` is `read` (safe methods, RFC 9110 §9.2.1) or `write` (the rest), so a cutover
    /// can wait for writes alone while reads keep flowing.
    pub const IN_FLIGHT: &str = "strangler_in_flight_requests";
    /// Gauge `{sha256}`, always 1: the digest of the file the table in service came from, so
    /// a fleet's replicas can be compared.
    pub const CONFIG_INFO: &str = "strangler_config_info";
    /// Counter `{route}`: requests no route claimed that match the route when letter case is
    /// ignored (a case-insensitive legacy router would serve them as the route's).
    pub const ROUTE_NEAR_MISSES: &str = "strangler_route_near_misses_total";
    /// Counter `{route, backend}`: safe, bodiless requests sent a second time, on a new
    /// connection, because the first connection closed or reset before any byte of the answer
    /// (usually a pooled connection the backend closed as it was reused).
    pub const UPSTREAM_RETRIES: &str = "strangler_upstream_retries_total";
    /// Counter `{service}`: times a service was ejected by outlier detection (consecutive
    /// failures, or a failed probe).
    pub const OUTLIER_EJECTIONS: &str = "strangler_outlier_ejections_total";
    /// Gauge `{service}`: 1 while the service is ejected (or probing), 0 once it is closed.
    pub const OUTLIER_EJECTED: &str = "strangler_outlier_ejected";
}

/// The `result` label values of [`names::SHADOW_COMPARISONS`].
///
/// An `error` (the service failed to answer) is a verdict against the service: it counts as
/// compared and as not matching. `skipped` and `dropped` are not comparisons: they lower
/// coverage, never the match ratio.
pub mod shadow_result {
    /// Same answer from both.
    pub const MATCH: &str = "match";
    /// Different answers.
    pub const MISMATCH: &str = "mismatch";
    /// The service failed to answer.
    pub const ERROR: &str = "error";
    /// Could not be compared; the reason is in `strangler_shadow_skipped_total`.
    pub const SKIPPED: &str = "skipped";
    /// Not mirrored: the bound on shadow work was reached.
    pub const DROPPED: &str = "dropped";
    /// Every result, in that order.
    pub const ALL: [&str; 5] = [MATCH, MISMATCH, ERROR, SKIPPED, DROPPED];
    /// The results that are comparisons (the numerator of coverage).
    pub const COMPARED: [&str; 3] = [MATCH, MISMATCH, ERROR];
}

/// The proxy's metric families.
pub struct Metrics {
    registry: Registry,
    /// `strangler_requests_total{route, backend, code}`
    pub requests: IntCounterVec,
    /// `strangler_request_duration_seconds{route, backend}`
    pub duration: HistogramVec,
    /// `strangler_upstream_errors_total{route, backend, kind}`
    pub upstream_errors: IntCounterVec,
    /// `strangler_fallbacks_total{route}`
    pub fallbacks: IntCounterVec,
    /// `strangler_shadow_comparisons_total{route, result}`
    pub shadow_comparisons: IntCounterVec,
    /// `strangler_shadow_skipped_total{route, reason}`
    pub shadow_skipped: IntCounterVec,
    /// `strangler_route_weight{route, service, stage}`
    pub route_weight: IntGaugeVec,
    /// `strangler_config_reloads_total{result}`
    pub reloads: IntCounterVec,
    /// `strangler_config_revision`
    pub revision: IntGauge,
    /// `strangler_downstream_rejected_total{reason}`: requests refused before routing.
    pub rejected: IntCounterVec,
    /// `strangler_client_aborts_total{route}`
    pub client_aborts: IntCounterVec,
    /// `strangler_held_requests{route}`
    pub held: IntGaugeVec,
    /// `strangler_hold_duration_seconds{route}`
    pub hold_duration: HistogramVec,
    /// `strangler_hold_rejections_total{route, reason}`
    pub hold_rejections: IntCounterVec,
    /// `strangler_in_flight_requests{route, backend, class}`
    pub in_flight: IntGaugeVec,
    /// `strangler_config_info{sha256}`
    pub config_info: IntGaugeVec,
    /// `strangler_route_near_misses_total{route}`
    pub near_misses: IntCounterVec,
    /// `strangler_upstream_retries_total{route, backend}`
    pub upstream_retries: IntCounterVec,
    /// `strangler_outlier_ejections_total{service}`
    pub outlier_ejections: IntCounterVec,
    /// `strangler_outlier_ejected{service}`
    pub outlier_ejected: IntGaugeVec,
}

/// Latency buckets from 0.5 ms to 30 s: proxied calls to a local service sit at the low end,
/// a slow monolith at the high end.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Declares and registers every family.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let requests = counter(
            names::REQUESTS,
            "Requests answered, by route, backend that answered and status code.",
            &["route", "backend", "code"],
        );
        let upstream_errors = counter(
            names::UPSTREAM_ERRORS,
            "Requests a backend failed before answering, by kind (connect, timeout, reset, protocol).",
            &["route", "backend", "kind"],
        );
        let fallbacks = counter(
            names::FALLBACKS,
            "Requests the service failed that were retried on the default.",
            &["route"],
        );
        let shadow_comparisons = counter(
            names::SHADOW_COMPARISONS,
            "Shadowed requests, by result (match, mismatch, error, skipped, dropped).",
            &["route", "result"],
        );
        let shadow_skipped = counter(
            names::SHADOW_SKIPPED,
            "Shadowed requests that could not be compared, by reason (too_large, client_aborted, \
             body_error, timeout, undecodable).",
            &["route", "reason"],
        );
        let reloads = counter(
            names::CONFIG_RELOADS,
            "Reloads of routes.toml, by result (applied, rejected).",
            &["result"],
        );
        let rejected = counter(
            names::DOWNSTREAM_REJECTED,
            "Requests refused before routing, by reason (bad_path, uri_too_long, headers_too_large, \
             bad_host).",
            &["reason"],
        );
        let client_aborts = counter(
            names::CLIENT_ABORTS,
            "Requests whose client went away before the backend answered (a downstream event, \
             not counted against the backend).",
            &["route"],
        );
        let near_misses = counter(
            names::ROUTE_NEAR_MISSES,
            "Requests the default served that match the route only when letter case is ignored \
             ([proxy] ignore_case is off); a case-insensitive legacy router serves them as the \
             route's.",
            &["route"],
        );
        let upstream_retries = counter(
            names::UPSTREAM_RETRIES,
            "Safe, bodiless requests sent again on a new connection because the first closed or \
             reset before any byte of the answer.",
            &["route", "backend"],
        );
        let outlier_ejections = counter(
            names::OUTLIER_EJECTIONS,
            "Times a service was ejected after consecutive failures (or a failed probe): requests \
             routed to it fall back or get 503 until a probe succeeds.",
            &["service"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                names::REQUEST_DURATION,
                "Time from receiving a request to sending the response headers.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "backend"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        let route_weight = IntGaugeVec::new(
            Opts::new(
                names::ROUTE_WEIGHT,
                "Percent of a route's matching requests its service serves; `stage` is derived \
                 from weight and shadow (dark, shadow, canary, live).",
            ),
            &["route", "service", "stage"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(route_weight.clone()))
            .expect("registered once");
        let revision = IntGauge::new(
            names::CONFIG_REVISION,
            "Revision of the route table serving now.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(revision.clone()))
            .expect("registered once");
        let hold_rejections = counter(
            names::HOLD_REJECTIONS,
            "Held requests answered 503 without being forwarded, by reason (timeout, full).",
            &["route", "reason"],
        );
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let held = gauge(
            names::HELD_REQUESTS,
            "Requests held behind the route's write fence (hold_writes) now.",
            &["route"],
        );
        let in_flight = gauge(
            names::IN_FLIGHT,
            "Requests forwarded to a backend whose response headers have not arrived yet; class \
             is read (safe methods) or write.",
            &["route", "backend", "class"],
        );
        let config_info = gauge(
            names::CONFIG_INFO,
            "Always 1; sha256 is the digest of the routes file the table in service came from.",
            &["sha256"],
        );
        let outlier_ejected = gauge(
            names::OUTLIER_EJECTED,
            "1 while outlier detection keeps requests away from the service, else 0.",
            &["service"],
        );
        let hold_duration = HistogramVec::new(
            HistogramOpts::new(
                names::HOLD_DURATION,
                "How long requests waited behind a write fence, whatever the outcome.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(hold_duration.clone()))
            .expect("registered once");
        for result in ["applied", "rejected"] {
            reloads.with_label_values(&[result]);
        }
        Self {
            registry,
            requests,
            duration,
            upstream_errors,
            fallbacks,
            shadow_comparisons,
            shadow_skipped,
            route_weight,
            reloads,
            revision,
            rejected,
            client_aborts,
            held,
            hold_duration,
            hold_rejections,
            in_flight,
            config_info,
            near_misses,
            upstream_retries,
            outlier_ejections,
            outlier_ejected,
        }
    }

    /// Per route, the count of each shadow result and of each skip reason since start-up,
    /// read without creating series (a route with no shadow traffic has none).
    pub fn shadow_counts(&self) -> ShadowCounts {
        let mut out = ShadowCounts::default();
        let read =
            |vec: &IntCounterVec, label: &str, into: &mut BTreeMap<(String, String), u64>| {
                for family in vec.collect() {
                    for m in family.get_metric() {
                        let value = |name: &str| {
                            m.get_label()
                                .iter()
                                .find(|l| l.name() == name)
                                .map(|l| l.value().to_string())
                                .unwrap_or_default()
                        };
                        into.insert(
                            (value("route"), value(label)),
                            m.get_counter().get_value() as u64,
                        );
                    }
                }
            };
        read(&self.shadow_comparisons, "result", &mut out.results);
        read(&self.shadow_skipped, "reason", &mut out.skipped);
        out
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure would be a bug in a family.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// [`Metrics::shadow_counts`]: `(route, result)` and `(route, reason)` to counts.
#[derive(Debug, Default, Clone)]
pub struct ShadowCounts {
    /// `(route, result)` → count.
    pub results: BTreeMap<(String, String), u64>,
    /// `(route, reason)` → count.
    pub skipped: BTreeMap<(String, String), u64>,
}

/// Status codes that get a pre-resolved counter; others take the labelled lookup.
const COMMON_CODES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 422, 500, 502, 503, 504,
];

/// Handles for one (route, backend) pair, resolved on first use so a table of 10,000 dark
/// routes costs no series until traffic arrives.
pub struct PairMetrics {
    route: Box<str>,
    backend: Box<str>,
    resolved: OnceLock<Resolved>,
}

struct Resolved {
    duration: Histogram,
    /// `[read, write]`.
    in_flight: [IntGauge; 2],
    /// Resolved on a code's first occurrence, so unused codes export no zero series.
    codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
}

impl PairMetrics {
    /// Handles for `route` served by `backend`.
    pub fn new(route: &str, backend: &str) -> Self {
        Self {
            route: route.into(),
            backend: backend.into(),
            resolved: OnceLock::new(),
        }
    }

    /// The route label.
    pub fn route(&self) -> &str {
        &self.route
    }

    fn resolved(&self, metrics: &Metrics) -> &Resolved {
        self.resolved.get_or_init(|| Resolved {
            duration: metrics
                .duration
                .with_label_values(&[&*self.route, &*self.backend]),
            in_flight: ["read", "write"].map(|class| {
                metrics
                    .in_flight
                    .with_label_values(&[&*self.route, &*self.backend, class])
            }),
            codes: Default::default(),
        })
    }

    /// Counts one answered request and its latency.
    pub fn observe(&self, metrics: &Metrics, code: u16, seconds: f64) {
        let resolved = self.resolved(metrics);
        resolved.duration.observe(seconds);
        let counter = || {
            metrics
                .requests
                .with_label_values(&[&*self.route, &*self.backend, code_label(code)])
        };
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => resolved.codes[i].get_or_init(counter).inc(),
            None => counter().inc(),
        }
    }

    /// Counts a request as in flight to the backend until the guard is dropped; `write` for
    /// non-safe methods.
    pub fn in_flight(&self, metrics: &Metrics, write: bool) -> InFlight {
        let gauge = self.resolved(metrics).in_flight[usize::from(write)].clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Counts a request sent to the backend a second time.
    pub fn retried(&self, metrics: &Metrics) {
        metrics
            .upstream_retries
            .with_label_values(&[&*self.route, &*self.backend])
            .inc();
    }

    /// Counts a failure to get an answer from the backend.
    pub fn upstream_error(&self, metrics: &Metrics, kind: &str) {
        metrics
            .upstream_errors
            .with_label_values(&[&*self.route, &*self.backend, kind])
            .inc();
    }
}

/// One request in flight to a backend; dropping it (answered, failed or cancelled) counts it out.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A static label for every valid status code, so counting never formats a string.
fn code_label(code: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..1000).map(|c| c.to_string()).collect());
    labels
        .get(usize::from(code))
        .map_or("other", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_handles_count_into_the_labelled_families() {
        let metrics = Metrics::new();
        let pair = PairMetrics::new("users", "users");
        pair.observe(&metrics, 200, 0.001);
        pair.observe(&metrics, 200, 0.002);
        pair.observe(&metrics, 418, 0.002);
        pair.upstream_error(&metrics, "connect");
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["users", "users", "200"])
                .get(),
            2
        );
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["users", "users", "418"])
                .get(),
            1
        );
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(
                "strangler_request_duration_seconds_count{backend=\"users\",route=\"users\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains(
            "strangler_upstream_errors_total{backend=\"users\",kind=\"connect\",route=\"users\"} 1"
        ));
        assert!(text.contains("strangler_config_reloads_total{result=\"rejected\"} 0"));
    }
}
