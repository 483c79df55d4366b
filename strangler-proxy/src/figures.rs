//! One route's traffic over a window — requests, errors, p99 latency, shadow comparisons,
//! fallbacks and near misses for the service and for the default — computed from counter
//! increases, whichever source they came from: the proxy's own history (`history`), two
//! scrapes of `/metrics` or Prometheus' `increase()` (the operator scripts). One rule for the
//! dashboard, `scripts/status` and `scripts/rollout`.

use std::collections::BTreeMap;

use crate::metrics::{names, shadow_result};

/// How much a counter series grew over the window, with the labels that matter.
#[derive(Clone, Debug, PartialEq)]
pub struct Increase {
    /// Metric name.
    pub name: String,
    /// Labels of the series (or of the Prometheus aggregation).
    pub labels: BTreeMap<String, String>,
    /// Growth over the window.
    pub value: f64,
}

/// One backend's share of a route over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Side {
    /// Requests it was asked to answer.
    pub requests: f64,
    /// Of those, answered 5xx or failed before answering.
    pub errors: f64,
    /// Cumulative latency histogram: (upper bound in seconds, count), ascending, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

impl Side {
    /// Errors over requests, if there were requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }

    /// The 99th percentile latency in seconds, if anything was observed.
    pub fn p99(&self) -> Option<f64> {
        quantile(0.99, &self.buckets)
    }
}

/// Shadow verdicts over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shadow {
    /// Same answer from both.
    pub matched: f64,
    /// Different answers.
    pub mismatched: f64,
    /// The service failed to answer (a verdict against it: compared, not matching).
    pub errors: f64,
    /// Could not be compared.
    pub skipped: f64,
    /// Not mirrored at all: the proxy's bound on shadow work was reached.
    pub dropped: f64,
    /// `skipped`, by reason (`too_large`, `client_aborted`, ...).
    pub skipped_by_reason: BTreeMap<String, f64>,
}

impl Shadow {
    /// Comparisons made: matches, mismatches and errors.
    pub fn compared(&self) -> f64 {
        self.matched + self.mismatched + self.errors
    }

    /// Every shadowed request, whatever became of it.
    pub fn shadowed(&self) -> f64 {
        self.compared() + self.skipped + self.dropped
    }

    /// Compared over shadowed: how much of the shadowed traffic the match ratio speaks for.
    pub fn coverage(&self) -> Option<f64> {
        let n = self.shadowed();
        (n > 0.0).then(|| self.compared() / n)
    }

    /// What was not compared, and why, for messages: `9 skipped (too_large 5, timeout 4), 2
    /// dropped`.
    pub fn uncompared(&self) -> String {
        let mut parts = Vec::new();
        if self.skipped > 0.0 {
            let reasons: Vec<String> = self
                .skipped_by_reason
                .iter()
                .filter(|(_, n)| **n > 0.0)
                .map(|(r, n)| format!("{r} {n:.0}"))
                .collect();
            if reasons.is_empty() {
                parts.push(format!("{:.0} skipped", self.skipped));
            } else {
                parts.push(format!(
                    "{:.0} skipped ({})",
                    self.skipped,
                    reasons.join(", ")
                ));
            }
        }
        if self.dropped > 0.0 {
            parts.push(format!("{:.0} dropped", self.dropped));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    /// Matches over comparisons, if any were made.
    pub fn match_ratio(&self) -> Option<f64> {
        let n = self.compared();
        (n > 0.0).then(|| self.matched / n)
    }
}

/// A route's figures over one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteWindow {
    /// Length of the window.
    pub seconds: f64,
    /// The extracted service.
    pub service: Side,
    /// The default backend (the monolith), for the same route.
    pub default: Side,
    /// Requests the service failed that were retried on the default.
    pub fallbacks: f64,
    /// Shadow comparisons.
    pub shadow: Shadow,
    /// Requests the default served that match the route only when letter case is ignored.
    pub near_misses: f64,
}

impl RouteWindow {
    /// Folds counter growth into figures. A request the service failed and the proxy retried
    /// on the default (a fallback) is counted under the default by the proxy; here it is also
    /// one request and one error of the service, since that is what the service did with it.
    pub fn from_increases(
        increases: &[Increase],
        service: &str,
        default: &str,
        seconds: f64,
    ) -> RouteWindow {
        let mut w = RouteWindow {
            seconds,
            ..RouteWindow::default()
        };
        let mut buckets: [BTreeMap<u64, (f64, f64)>; 2] = Default::default();
        for inc in increases {
            let label = |k: &str| inc.labels.get(k).map_or("", String::as_str);
            let side = match label("backend") {
                b if b == service => Some(0),
                b if b == default => Some(1),
                _ => None,
            };
            match inc.name.as_str() {
                names::REQUESTS => {
                    let Some(i) = side else { continue };
                    let s = if i == 0 {
                        &mut w.service
                    } else {
                        &mut w.default
                    };
                    s.requests += inc.value;
                    if label("code").starts_with('5') {
                        s.errors += inc.value;
                    }
                }
                names::REQUEST_DURATION_BUCKET => {
                    let Some(i) = side else { continue };
                    let Some(le) = parse_bound(label("le")) else {
                        continue;
                    };
                    let entry = buckets[i].entry(order_key(le)).or_insert((le, 0.0));
                    entry.1 += inc.value;
                }
                names::FALLBACKS => w.fallbacks += inc.value,
                names::ROUTE_NEAR_MISSES => w.near_misses += inc.value,
                names::SHADOW_COMPARISONS => match label("result") {
                    shadow_result::MATCH => w.shadow.matched += inc.value,
                    shadow_result::MISMATCH => w.shadow.mismatched += inc.value,
                    shadow_result::ERROR => w.shadow.errors += inc.value,
                    shadow_result::SKIPPED => w.shadow.skipped += inc.value,
                    shadow_result::DROPPED => w.shadow.dropped += inc.value,
                    _ => {}
                },
                names::SHADOW_SKIPPED => {
                    *w.shadow
                        .skipped_by_reason
                        .entry(label("reason").to_string())
                        .or_default() += inc.value;
                }
                _ => {}
            }
        }
        w.service.requests += w.fallbacks;
        w.service.errors += w.fallbacks;
        let [s, d] = buckets;
        w.service.buckets = s.into_values().collect();
        w.default.buckets = d.into_values().collect();
        w
    }
}

/// A sort key that orders non-negative floats (bucket bounds) as numbers.
fn order_key(le: f64) -> u64 {
    if le.is_sign_negative() {
        0
    } else {
        le.to_bits()
    }
}

/// The `q` quantile of a cumulative histogram, interpolated linearly inside the bucket it
/// falls in, as Prometheus' `histogram_quantile` does; `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !buckets.last()?.0.is_infinite() {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank)?;
    let (upper, count) = buckets[i];
    if upper.is_infinite() {
        // Beyond the largest finite bound: that bound is all that can be said.
        return Some(if i > 0 { buckets[i - 1].0 } else { 0.0 });
    }
    let (lower, below) = if i > 0 { buckets[i - 1] } else { (0.0, 0.0) };
    if count <= below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

/// A bucket's upper bound as the `le` label writes it (`0.005`, `+Inf`).
pub fn parse_bound(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        t => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(name: &str, labels: &[(&str, &str)], value: f64) -> Increase {
        Increase {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let b = [
            (0.001, 50.0),
            (0.01, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // Rank 99 lies 9/10 of the way through (0.01, 0.1].
        let p99 = quantile(0.99, &b).unwrap();
        assert!((p99 - 0.091).abs() < 1e-9, "{p99}");
        assert!((quantile(0.5, &b).unwrap() - 0.001).abs() < 1e-12);
        assert_eq!(quantile(0.99, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        // Everything slower than the last finite bound.
        assert_eq!(
            quantile(0.99, &[(0.1, 0.0), (f64::INFINITY, 5.0)]),
            Some(0.1)
        );
    }

    #[test]
    fn fallbacks_count_as_failed_service_requests() {
        let incs = [
            inc(
                names::REQUESTS,
                &[("backend", "users"), ("code", "200")],
                90.0,
            ),
            inc(
                names::REQUESTS,
                &[("backend", "users"), ("code", "502")],
                4.0,
            ),
            inc(
                names::REQUESTS,
                &[("backend", "monolith"), ("code", "200")],
                300.0,
            ),
            inc(
                names::REQUESTS,
                &[("backend", "monolith"), ("code", "500")],
                3.0,
            ),
            inc(names::FALLBACKS, &[], 6.0),
            inc(names::SHADOW_COMPARISONS, &[("result", "match")], 98.0),
            inc(names::SHADOW_COMPARISONS, &[("result", "mismatch")], 1.0),
            inc(names::SHADOW_COMPARISONS, &[("result", "error")], 1.0),
            inc(names::SHADOW_COMPARISONS, &[("result", "dropped")], 50.0),
            inc(names::SHADOW_COMPARISONS, &[("result", "skipped")], 50.0),
            inc(names::SHADOW_SKIPPED, &[("reason", "too_large")], 30.0),
            inc(names::SHADOW_SKIPPED, &[("reason", "timeout")], 20.0),
            inc(
                names::REQUEST_DURATION_BUCKET,
                &[("backend", "users"), ("le", "+Inf")],
                94.0,
            ),
            inc(
                names::REQUEST_DURATION_BUCKET,
                &[("backend", "users"), ("le", "0.01")],
                94.0,
            ),
        ];
        let w = RouteWindow::from_increases(&incs, "users", "monolith", 10.0);
        assert_eq!(w.service.requests, 100.0);
        assert_eq!(w.service.errors, 10.0);
        assert_eq!(w.service.error_ratio(), Some(0.1));
        assert_eq!(w.default.requests, 303.0);
        assert_eq!(w.default.error_ratio(), Some(3.0 / 303.0));
        assert_eq!(w.shadow.compared(), 100.0);
        assert_eq!(w.shadow.match_ratio(), Some(0.98));
        // Coverage: 100 compared of 200 shadowed (50 dropped, 50 skipped).
        assert_eq!(w.shadow.shadowed(), 200.0);
        assert_eq!(w.shadow.coverage(), Some(0.5));
        assert_eq!(
            w.shadow.uncompared(),
            "50 skipped (timeout 20, too_large 30), 50 dropped"
        );
        assert_eq!(w.service.buckets, vec![(0.01, 94.0), (f64::INFINITY, 94.0)]);
        assert_eq!(w.default.p99(), None);
    }
}
