//! One route's traffic over a window, from two scrapes of `/metrics` or Prometheus'
//! `increase()`: the figures themselves (`RouteWindow`, `Side`, `Shadow`, `quantile`) are the
//! proxy's (`strangler_proxy::figures`), so the dashboard and the scripts share one rule.

use std::collections::BTreeMap;

use crate::exposition::{Sample, Scrape};

pub use strangler_proxy::figures::{Increase, RouteWindow, Shadow, Side, quantile};
/// The metric names the figures read: the proxy's own constants, so a rename breaks this build.
pub use strangler_proxy::metrics::{names, shadow_result};

/// Growth of every series of `route` between two scrapes of one proxy. A series that shrank
/// was reset (the proxy restarted): its whole current value is growth.
pub fn increases(start: &Scrape, end: &Scrape, route: &str) -> Vec<Increase> {
    let key = |s: &Sample| (s.name.clone(), s.labels.clone());
    let before: BTreeMap<_, f64> = start
        .samples
        .iter()
        .filter(|s| s.label("route") == route)
        .map(|s| (key(s), s.value))
        .collect();
    end.samples
        .iter()
        .filter(|s| s.label("route") == route)
        .filter(|s| {
            [
                names::REQUESTS,
                names::REQUEST_DURATION_BUCKET,
                names::FALLBACKS,
                names::SHADOW_COMPARISONS,
                names::SHADOW_SKIPPED,
            ]
            .contains(&s.name.as_str())
        })
        .map(|s| {
            let old = before.get(&key(s)).copied().unwrap_or(0.0);
            Increase {
                name: s.name.clone(),
                labels: s.labels.clone(),
                value: if s.value >= old {
                    s.value - old
                } else {
                    s.value
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_deltas_survive_a_counter_reset() {
        let a = Scrape::parse(
            "strangler_requests_total{route=\"r\",backend=\"s\",code=\"200\"} 100\n\
             strangler_requests_total{route=\"other\",backend=\"s\",code=\"200\"} 1\n",
        )
        .unwrap();
        let b = Scrape::parse(
            "strangler_requests_total{route=\"r\",backend=\"s\",code=\"200\"} 7\n\
             strangler_requests_total{route=\"r\",backend=\"s\",code=\"500\"} 2\n\
             strangler_requests_total{route=\"other\",backend=\"s\",code=\"200\"} 9\n",
        )
        .unwrap();
        let w = RouteWindow::from_increases(&increases(&a, &b, "r"), "s", "m", 1.0);
        assert_eq!(w.service.requests, 9.0);
        assert_eq!(w.service.errors, 2.0);
    }
}
