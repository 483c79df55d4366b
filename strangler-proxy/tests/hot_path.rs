//! The routing hot path allocates nothing: normalizing an already-normal path, resolving it in
//! a 10,000-route table (with a sticky split) and counting it in the metrics.

use http::{HeaderMap, Method};
use strangler_proxy::config;
use strangler_proxy::metrics::Metrics;
use strangler_proxy::path::normalize;
use strangler_proxy::routes::RouteTable;
use strangler_proxy::upstream::Upstreams;

fn big_table() -> RouteTable {
    let mut text = String::from(
        "[proxy]\ndefault = \"monolith\"\n[services.monolith]\nurl = \"http://127.0.0.1:1\"\n[services.users]\nurl = \"http://127.0.0.1:2\"\n",
    );
    for i in 0..10_000 {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nprefix = \"/api/r{i}/items\"\nservice = \"users\"\nweight = {}\nsticky = \"header:x-user-id\"\n",
            i % 101
        ));
    }
    let config = config::parse(&text).expect("valid");
    RouteTable::compile(config, String::new(), 1, &Upstreams::default())
}

#[tokio::test]
async fn resolving_and_counting_a_request_allocates_nothing() {
    let table = big_table();
    let metrics = Metrics::new();
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", "user-42".parse().unwrap());
    let paths = [
        "/api/r7/items/3",
        "/api/r9999/items",
        "/api/r50/items/9/deep/er",
        "/unrouted/x",
    ];
    // Warm up: metric handles are resolved on first use, by design.
    for p in paths {
        let d = table.resolve(&Method::GET, p, &headers);
        d.metrics.observe(&metrics, 200, 0.001);
    }
    let mut seen = Vec::with_capacity(paths.len());
    let info = allocation_counter::measure(|| {
        for p in paths {
            let path = normalize(p).expect("normal");
            let d = table.resolve(&Method::GET, &path, &headers);
            d.metrics.observe(&metrics, 200, 0.001);
            seen.push(d.route.is_some());
        }
    });
    assert_eq!(seen, vec![true, true, true, false]);
    assert_eq!(info.count_total, 0, "the hot path allocated: {info:?}");
    // What a request that falls to the default pays on top: the near-miss lookup, no more.
    let info = allocation_counter::measure(|| {
        let near = table
            .near_miss("/API/R7/Items/3")
            .map(|r| r.config.name.as_str());
        assert_eq!(near, Some("r7"));
    });
    assert_eq!(
        info.count_total, 0,
        "the near-miss lookup allocated: {info:?}"
    );
}
