//! Route resolution at 10 to 100,000 prefixes, and the sticky-hash decision.
//!
//! `cargo bench -p strangler-proxy --bench routing`. Tables are built the way the proxy builds
//! them (`config::parse` of a generated `routes.toml`, then `RouteTable::compile`), so the
//! numbers include whatever the compiled form costs at lookup time.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use strangler_proxy::config;
use strangler_proxy::routes::{RouteTable, sticky_bucket};
use strangler_proxy::upstream::Upstreams;

/// A table of `n` routes `/api/r{i}/items`; every tenth is a sticky 50 % canary so the split
/// code runs too.
fn table(n: usize) -> RouteTable {
    let mut text = String::with_capacity(n * 110 + 256);
    text.push_str(
        "[proxy]\ndefault = \"monolith\"\n\
         [services.monolith]\nurl = \"http://127.0.0.1:1\"\n\
         [services.users]\nurl = \"http://127.0.0.1:2\"\n",
    );
    for i in 0..n {
        let split = if i % 10 == 0 {
            "weight = 50\nsticky = \"header:x-user-id\"\n"
        } else {
            "weight = 100\n"
        };
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nprefix = \"/api/r{i}/items\"\nservice = \"users\"\n{split}"
        ));
    }
    let config = config::parse(&text).unwrap_or_else(|errors| {
        panic!("generated config is invalid: {:?}", errors.first());
    });
    RouteTable::compile(config, String::new(), 1, &Upstreams::default())
}

fn resolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("resolve");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static("user-4242"));
    for n in [10, 1_000, 10_000, 100_000] {
        let t = table(n);
        // A route in the middle of the table, below its prefix (three probes deep).
        let hit = format!("/api/r{}/items/42", n / 2 + 1);
        // A sticky canary route: lookup plus the hash decision.
        let sticky = format!("/api/r{}/items/42", n / 2 / 10 * 10);
        // Nothing matches: every probe misses, then the default serves.
        let miss = "/unrouted/path/that/is/deep";
        for (case, path) in [("hit", hit.as_str()), ("sticky", &sticky), ("miss", miss)] {
            group.bench_with_input(BenchmarkId::new(case, n), path, |b, path| {
                b.iter(|| {
                    let d = t.resolve(&Method::GET, black_box(path), &headers);
                    black_box(d.upstream);
                });
            });
        }
    }
    group.finish();
}

fn sticky(c: &mut Criterion) {
    let mut group = c.benchmark_group("sticky_bucket");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for key in ["user-42", "0b1c5a7e-8d0f-4f5e-9c3b-2a6d9e8f7a10"] {
        group.bench_with_input(BenchmarkId::from_parameter(key.len()), key, |b, key| {
            b.iter(|| sticky_bucket(black_box("users"), black_box(key.as_bytes())));
        });
    }
    group.finish();
}

criterion_group!(benches, resolve, sticky);
criterion_main!(benches);
