//! A stand-in for a running proxy's admin endpoint (and for a Prometheus server in front of a
//! fleet of them), driven by the routes file the scripts edit: every scrape of `/metrics`
//! counts a fixed number of new requests per route, split by the weight currently in the file,
//! with the failures, latencies and shadow mismatches the test asks for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use serde_json::{Value, json};
use strangler_proxy::admin::{RouteDoc, RoutesDoc, ServiceDoc};
use strangler_proxy::config::{self, Config};
use strangler_proxy::metrics::Metrics;

/// Bucket bounds of the simulated Prometheus server's histograms.
const BUCKETS: [f64; 7] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

/// How the simulated traffic behaves.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// New requests per route per scrape (or per Prometheus window).
    pub per_scrape: u64,
    /// From this weight on, the service fails this share of its requests with 500.
    pub service_fails: Option<(u8, f64)>,
    /// Latency of every service answer, seconds.
    pub service_latency: f64,
    /// Latency of every default answer, seconds.
    pub default_latency: f64,
    /// Share of shadow comparisons that differ.
    pub shadow_mismatch: f64,
    /// Share of shadowed requests that cannot be compared (`skipped{reason="too_large"}`).
    pub shadow_skipped: f64,
    /// Each service failure is retried on the default (fallback) instead of answered 500.
    pub fallback: bool,
    /// Near misses (`strangler_route_near_misses_total`) per route per scrape.
    pub near_misses: u64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            per_scrape: 2000,
            service_fails: None,
            service_latency: 0.004,
            default_latency: 0.004,
            shadow_mismatch: 0.0,
            shadow_skipped: 0.0,
            fallback: false,
            near_misses: 0,
        }
    }
}

#[derive(Default)]
struct Sim {
    file: PathBuf,
    behaviour: Behaviour,
    config: Option<Config>,
    sha: String,
    revision: u64,
    /// The proxy's own metric families: `/metrics` is rendered by the real encoder, so a
    /// renamed metric or label fails these tests as it would fail the scripts in production.
    metrics: Metrics,
    scrapes: u64,
    queries: Vec<String>,
}

/// One window of traffic for one route at `weight`.
struct Traffic {
    service_ok: u64,
    service_failed: u64,
    default: u64,
    compared: u64,
    mismatched: u64,
    skipped: u64,
}

impl Sim {
    fn reload(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.file) else {
            return;
        };
        let sha = config::sha256_hex(text.as_bytes());
        if sha == self.sha {
            return;
        }
        // Like the proxy: an invalid file changes nothing.
        if let Ok(c) = config::parse(&text) {
            self.config = Some(c);
            self.sha = sha;
            self.revision += 1;
        }
    }

    fn traffic(&self, weight: u8, shadow: bool) -> Traffic {
        let b = &self.behaviour;
        let service = b.per_scrape * u64::from(weight) / 100;
        let failed = match b.service_fails {
            Some((from, ratio)) if weight >= from => (service as f64 * ratio).round() as u64,
            _ => 0,
        };
        let default = b.per_scrape - service;
        let shadowed = if shadow { default } else { 0 };
        let skipped = (shadowed as f64 * b.shadow_skipped).round() as u64;
        let compared = shadowed - skipped;
        Traffic {
            skipped,
            service_ok: service - failed,
            service_failed: failed,
            default,
            compared,
            mismatched: (compared as f64 * b.shadow_mismatch).round() as u64,
        }
    }

    fn advance(&mut self) {
        self.reload();
        self.scrapes += 1;
        let Some(config) = self.config.clone() else {
            return;
        };
        let default = config.proxy.default.clone();
        for r in &config.routes {
            let t = self.traffic(r.weight, r.shadow);
            let svc = r.service.clone();
            let name = r.name.clone();
            let metrics = &self.metrics;
            let count = |backend: &str, code: u16, n: u64, latency: f64| {
                if n == 0 {
                    return;
                }
                metrics
                    .requests
                    .with_label_values(&[&name, backend, &code.to_string()])
                    .inc_by(n);
                let histogram = metrics.duration.with_label_values(&[&name, backend]);
                for _ in 0..n {
                    histogram.observe(latency);
                }
            };
            count(&svc, 200, t.service_ok, self.behaviour.service_latency);
            count(&default, 200, t.default, self.behaviour.default_latency);
            if self.behaviour.fallback {
                count(
                    &default,
                    200,
                    t.service_failed,
                    self.behaviour.default_latency,
                );
                metrics
                    .fallbacks
                    .with_label_values(&[&name])
                    .inc_by(t.service_failed);
            } else {
                count(&svc, 500, t.service_failed, self.behaviour.service_latency);
            }
            let shadow = |result: &str, n: u64| {
                metrics
                    .shadow_comparisons
                    .with_label_values(&[&name, result])
                    .inc_by(n);
            };
            shadow("match", t.compared - t.mismatched);
            shadow("mismatch", t.mismatched);
            if self.behaviour.near_misses > 0 {
                metrics
                    .near_misses
                    .with_label_values(&[&name])
                    .inc_by(self.behaviour.near_misses);
            }
            if t.skipped > 0 {
                shadow("skipped", t.skipped);
                metrics
                    .shadow_skipped
                    .with_label_values(&[&name, "too_large"])
                    .inc_by(t.skipped);
            }
        }
    }

    fn render(&self) -> Vec<u8> {
        // Only the routes (and stages) in the file now, as the proxy publishes them.
        self.metrics.route_weight.reset();
        if let Some(config) = &self.config {
            for r in &config.routes {
                self.metrics
                    .route_weight
                    .with_label_values(&[&r.name, &r.service, r.stage().as_str()])
                    .set(i64::from(r.weight));
            }
        }
        self.metrics.revision.set(self.revision as i64);
        self.metrics.render()
    }

    fn routes(&self) -> Option<RoutesDoc> {
        let config = self.config.as_ref()?;
        Some(RoutesDoc {
            file: self.file.display().to_string(),
            revision: self.revision,
            sha256: self.sha.clone(),
            loaded_at: "2026-11-23T10:04:05Z".into(),
            last_reload_error: None,
            default: config.proxy.default.clone(),
            services: config
                .services
                .iter()
                .map(|s| ServiceDoc {
                    name: s.name.clone(),
                    url: format!("http://{}", s.authority),
                    // As the proxy: a route's service has a breaker, closed here.
                    outlier: (s.name != config.proxy.default
                        && config.routes.iter().any(|r| r.service == s.name))
                    .then(|| "closed".to_string()),
                    ejected_until: None,
                    consecutive_failures: 0,
                })
                .collect(),
            routes: config.routes.iter().map(RouteDoc::of).collect(),
        })
    }

    /// A Prometheus instant query: increases are one window of traffic at the weight in the
    /// file, summed over two replicas that share it evenly.
    fn query(&mut self, q: &str) -> Value {
        self.reload();
        self.queries.push(q.to_string());
        let Some(config) = self.config.clone() else {
            return json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        };
        let route_name = q
            .split("route=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default();
        let Some(r) = config.routes.iter().find(|r| r.name == route_name) else {
            return json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        };
        let t = self.traffic(r.weight, r.shadow);
        let default = config.proxy.default.as_str();
        let sample =
            |metric: Value, v: f64| json!({"metric": metric, "value": [1.7e9, v.to_string()]});
        let result: Vec<Value> = if q.starts_with("strangler_route_weight") {
            (0..2)
                .map(|i| {
                    sample(
                        json!({"route": r.name, "service": r.service, "stage": r.stage().as_str(), "instance": format!("proxy-{i}")}),
                        f64::from(r.weight),
                    )
                })
                .collect()
        } else if q.contains("strangler_requests_total") {
            vec![
                sample(
                    json!({"backend": r.service, "code": "200"}),
                    t.service_ok as f64,
                ),
                sample(
                    json!({"backend": r.service, "code": "500"}),
                    t.service_failed as f64,
                ),
                sample(json!({"backend": default, "code": "200"}), t.default as f64),
            ]
        } else if q.contains("strangler_request_duration_seconds_bucket") {
            let mut v = Vec::new();
            for (backend, n, latency) in [
                (
                    r.service.as_str(),
                    t.service_ok + t.service_failed,
                    self.behaviour.service_latency,
                ),
                (default, t.default, self.behaviour.default_latency),
            ] {
                for le in BUCKETS.iter().copied().chain([f64::INFINITY]) {
                    let label = if le.is_infinite() {
                        "+Inf".to_string()
                    } else {
                        le.to_string()
                    };
                    let c = if latency <= le { n } else { 0 };
                    v.push(sample(json!({"backend": backend, "le": label}), c as f64));
                }
            }
            v
        } else if q.contains("strangler_fallbacks_total") {
            vec![sample(json!({}), 0.0)]
        } else if q.contains("strangler_shadow_comparisons_total") {
            vec![
                sample(
                    json!({"result": "match"}),
                    (t.compared - t.mismatched) as f64,
                ),
                sample(json!({"result": "mismatch"}), t.mismatched as f64),
                sample(json!({"result": "skipped"}), t.skipped as f64),
            ]
        } else if q.contains("strangler_shadow_skipped_total") {
            vec![sample(json!({"reason": "too_large"}), t.skipped as f64)]
        } else {
            return json!({"status": "error", "errorType": "bad_data", "error": "unknown query"});
        };
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }
}

/// A fake admin endpoint (and Prometheus API) on 127.0.0.1:0, stopped when dropped.
pub struct FakeProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    sim: Arc<Mutex<Sim>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeProxy {
    /// Serves figures for the routes in `file`.
    pub fn start(file: PathBuf, behaviour: Behaviour) -> FakeProxy {
        let sim = Arc::new(Mutex::new(Sim {
            file,
            behaviour,
            ..Sim::default()
        }));
        sim.lock().unwrap().reload();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = Router::new()
            .route(
                "/metrics",
                get(|State(sim): State<Arc<Mutex<Sim>>>| async move {
                    let mut sim = sim.lock().unwrap();
                    sim.advance();
                    sim.render()
                }),
            )
            .route(
                "/routes",
                get(|State(sim): State<Arc<Mutex<Sim>>>| async move {
                    let mut sim = sim.lock().unwrap();
                    sim.reload();
                    axum::Json(sim.routes().expect("the test's routes file is valid"))
                }),
            )
            .route(
                "/api/v1/query",
                get(
                    |State(sim): State<Arc<Mutex<Sim>>>,
                     Query(q): Query<BTreeMap<String, String>>| async move {
                        let query = q.get("query").cloned().unwrap_or_default();
                        axum::Json(sim.lock().unwrap().query(&query))
                    },
                ),
            )
            .with_state(sim.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        FakeProxy {
            url,
            sim,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Changes the simulated traffic from now on.
    pub fn set(&self, behaviour: Behaviour) {
        self.sim.lock().unwrap().behaviour = behaviour;
    }

    /// How many times `/metrics` was scraped.
    pub fn scrapes(&self) -> u64 {
        self.sim.lock().unwrap().scrapes
    }

    /// Every PromQL query received.
    pub fn queries(&self) -> Vec<String> {
        self.sim.lock().unwrap().queries.clone()
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
