//! The admin listener: the dashboard, metrics, health, readiness, the route table in service,
//! its recent traffic and reloads, and the latest shadow differences.
//!
//! The dashboard (`/`) is a read-only page built into the binary (`assets/`): it fetches
//! nothing but this listener's own JSON documents (`/routes`, `/history`, `/reloads`,
//! `/diffs`), which it polls.
//!
//! It binds to loopback unless `[proxy] admin` says otherwise, because `/routes` tells anyone
//! who can reach it where every service lives. The `/routes` document is typed
//! ([`RoutesDoc`]) and the operator scripts read it back with the same type.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::compare::HeaderRules;
use crate::config::{RouteConfig, Stage, StickyKey};
use crate::drain::Draining;
use crate::history::{History, HistoryDoc};
use crate::metrics::{Metrics, ShadowCounts, shadow_result};
use crate::near_miss;
use crate::outlier::State;
use crate::reload::{ReloadEvent, Reloader};
use crate::shadow::{Mismatch, Shadows};

/// The dashboard's page, stylesheet and script, built into the binary.
const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");

/// The dashboard may load only its own assets and talk only to this listener.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                             connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                             form-action 'none'; frame-ancestors 'none'";

/// The `/routes` document: the table in service and how it got there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutesDoc {
    /// The file the proxy serves.
    pub file: String,
    /// Revision of the table in service (1 at start, +1 per applied reload).
    pub revision: u64,
    /// sha256 (hex) of the file's bytes the table came from, to compare replicas and files.
    pub sha256: String,
    /// When the table was loaded, RFC 3339 in UTC.
    pub loaded_at: String,
    /// The last refused reload, while the file has not been fixed.
    pub last_reload_error: Option<ReloadError>,
    /// The service that serves what no route claims.
    pub default: String,
    /// Every service.
    pub services: Vec<ServiceDoc>,
    /// Every route, in file order.
    pub routes: Vec<RouteDoc>,
}

/// A refused reload in [`RoutesDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadError {
    /// When, RFC 3339 in UTC.
    pub at: String,
    /// Every error, one `FILE:LINE:COL: message` per entry.
    pub errors: Vec<String>,
}

/// A service in [`RoutesDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDoc {
    /// Its name in `routes.toml`.
    pub name: String,
    /// `http://host:port`.
    pub url: String,
    /// Outlier detection: `closed`, `ejected` or `probing` (`None` for the default, which is
    /// never ejected).
    #[serde(default)]
    pub outlier: Option<String>,
    /// While `ejected`: when the next probe may go, RFC 3339 in UTC.
    #[serde(default)]
    pub ejected_until: Option<String>,
    /// While `closed`: failures in a row so far.
    #[serde(default)]
    pub consecutive_failures: u64,
}

/// A route in [`RoutesDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteDoc {
    /// Metric label.
    pub name: String,
    /// Path prefix (segment-aware).
    pub prefix: String,
    /// The service taking the route's share.
    pub service: String,
    /// Percent of matching requests the service serves.
    pub weight: u8,
    /// Derived stage: `dark`, `shadow`, `canary` or `live` (reference §4).
    pub stage: Stage,
    /// Whether the default's answers are mirrored to the service and compared.
    pub shadow: bool,
    /// Whether safe, bodiless requests the service fails are retried on the default.
    pub fallback: bool,
    /// The methods peeled off, or `None` for every method.
    pub methods: Option<Vec<String>>,
    /// `header:NAME` or `cookie:NAME`.
    pub sticky: Option<String>,
    /// Whether the service takes non-safe methods (writes) at a weight above 0.
    #[serde(default)]
    pub sends_writes: bool,
    /// What the route moved to its service: nothing, reads only, or reads and writes.
    #[serde(default)]
    pub moved: Moved,
    /// The write fence (`hold_writes`): non-safe requests are held, not forwarded.
    #[serde(default)]
    pub hold_writes: bool,
    /// Requests held behind the fence now (`strangler_held_requests`).
    #[serde(default)]
    pub held: i64,
    /// Requests forwarded and not answered yet, by backend (`strangler_in_flight_requests`).
    #[serde(default)]
    pub in_flight: BTreeMap<String, i64>,
    /// Of those, writes (non-safe methods), by backend.
    #[serde(default)]
    pub writes_in_flight: BTreeMap<String, i64>,
    /// Response headers compared besides the defaults (`shadow_headers`).
    #[serde(default)]
    pub shadow_headers: Vec<String>,
    /// Default response headers not compared (`shadow_ignore_headers`).
    #[serde(default)]
    pub shadow_ignore_headers: Vec<String>,
    /// The response headers the shadow comparison compares, sorted.
    #[serde(default)]
    pub compared_headers: Vec<String>,
    /// Shadowed requests since the proxy started, by verdict, and the coverage they give.
    #[serde(default)]
    pub shadow_counts: ShadowDoc,
}

/// What a route moved to its service (`moved` in [`RouteDoc`]): the rule the dashboard and
/// `scripts/status` show, so a route at 100 % whose writes stay on the default is never shown
/// as plainly `live`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Moved {
    /// Weight 0: the default serves everything.
    #[default]
    Nothing,
    /// A share of the safe methods (RFC 9110 §9.2.1) only; writes stay on the default.
    Reads,
    /// A share of reads and writes (`RouteConfig::sends_writes`).
    ReadsAndWrites,
}

impl Moved {
    /// What `c` moves.
    pub fn of(c: &RouteConfig) -> Self {
        match (c.weight, c.sends_writes()) {
            (0, _) => Moved::Nothing,
            (_, false) => Moved::Reads,
            (_, true) => Moved::ReadsAndWrites,
        }
    }

    /// `nothing`, `reads only` or `reads and writes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Moved::Nothing => "nothing",
            Moved::Reads => "reads only",
            Moved::ReadsAndWrites => "reads and writes",
        }
    }
}

/// A route's shadow verdicts since the proxy started (`strangler_shadow_comparisons_total`
/// and `strangler_shadow_skipped_total`), in [`RouteDoc`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowDoc {
    /// Count per result (`match`, `mismatch`, `error`, `skipped`, `dropped`); absent is 0.
    pub results: BTreeMap<String, u64>,
    /// `skipped`, per reason.
    pub skipped: BTreeMap<String, u64>,
    /// Compared (`match` + `mismatch` + `error`: an error is a verdict against the service)
    /// over shadowed (every result); `None` before anything was shadowed.
    pub coverage: Option<f64>,
    /// `match` over compared; `None` before anything was compared.
    pub match_ratio: Option<f64>,
}

impl ShadowDoc {
    fn of(counts: &ShadowCounts, route: &str) -> Self {
        let pick = |map: &BTreeMap<(String, String), u64>| -> BTreeMap<String, u64> {
            map.iter()
                .filter(|((r, _), _)| r == route)
                .map(|((_, k), v)| (k.clone(), *v))
                .collect()
        };
        let results = pick(&counts.results);
        let count = |r: &str| results.get(r).copied().unwrap_or(0);
        let shadowed: u64 = shadow_result::ALL.iter().map(|r| count(r)).sum();
        let compared: u64 = shadow_result::COMPARED.iter().map(|r| count(r)).sum();
        let ratio = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
        ShadowDoc {
            coverage: ratio(compared, shadowed),
            match_ratio: ratio(count(shadow_result::MATCH), compared),
            skipped: pick(&counts.skipped),
            results,
        }
    }
}

impl RouteDoc {
    /// How `/routes` describes a validated route.
    pub fn of(c: &RouteConfig) -> Self {
        RouteDoc {
            name: c.name.clone(),
            prefix: c.prefix.clone(),
            service: c.service.clone(),
            weight: c.weight,
            stage: c.stage(),
            shadow: c.shadow,
            fallback: c.fallback,
            methods: c
                .methods
                .as_ref()
                .map(|m| m.iter().map(|m| m.as_str().to_string()).collect()),
            sticky: c.sticky.as_ref().map(|s| match s {
                StickyKey::Header(h) => format!("header:{h}"),
                StickyKey::Cookie(c) => format!("cookie:{c}"),
            }),
            sends_writes: c.sends_writes(),
            moved: Moved::of(c),
            hold_writes: c.hold_writes,
            held: 0,
            in_flight: BTreeMap::new(),
            writes_in_flight: BTreeMap::new(),
            shadow_headers: c.shadow_headers.iter().map(|h| h.to_string()).collect(),
            shadow_ignore_headers: c
                .shadow_ignore_headers
                .iter()
                .map(|h| h.to_string())
                .collect(),
            compared_headers: HeaderRules::new(&c.shadow_headers, &c.shadow_ignore_headers)
                .names()
                .map(String::from)
                .collect(),
            shadow_counts: ShadowDoc::default(),
        }
    }
}

/// What the admin listener reads: handed over by the server at start-up.
pub struct Admin {
    /// The file, the live table and the last rejection.
    pub reloader: Arc<Reloader>,
    /// Rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Mismatches and learned noise, at `/diffs`.
    pub shadows: Arc<Shadows>,
    /// `/readyz` answers 503 once set.
    pub draining: Arc<Draining>,
    /// The last 15 minutes of traffic, at `/history`.
    pub history: Arc<History>,
}

/// The `/reloads` document: the latest loads of the file, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadsDoc {
    /// The file the proxy serves.
    pub file: String,
    /// Newest first, at most `reload::RELOADS_KEPT`.
    pub reloads: Vec<ReloadDoc>,
}

/// One load in [`ReloadsDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadDoc {
    /// When, RFC 3339 in UTC.
    pub at: String,
    /// `applied` or `rejected`.
    pub result: String,
    /// Applied: the new revision; rejected: the revision that kept serving.
    pub revision: u64,
    /// sha256 (hex) of the bytes read; `None` when the file could not be read.
    pub sha256: Option<String>,
    /// Rejected: every error, with its position in the file.
    pub errors: Vec<ReloadErrorDoc>,
}

/// One error of a refused load, in [`ReloadDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadErrorDoc {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl ReloadDoc {
    fn of(e: &ReloadEvent) -> Self {
        ReloadDoc {
            at: rfc3339(e.at),
            result: if e.applied { "applied" } else { "rejected" }.into(),
            revision: e.revision,
            sha256: e.sha256.clone(),
            errors: e
                .errors
                .iter()
                .map(|e| ReloadErrorDoc {
                    line: e.line,
                    column: e.column,
                    message: e.message.clone(),
                })
                .collect(),
        }
    }
}

impl Admin {
    /// Answers one admin request.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match req.uri().path() {
            "/" | "/index.html" => asset("text/html; charset=utf-8", DASHBOARD_HTML),
            "/dashboard.css" => asset("text/css; charset=utf-8", DASHBOARD_CSS),
            "/dashboard.js" => asset("text/javascript; charset=utf-8", DASHBOARD_JS),
            "/history" => json_response(&self.history()),
            "/reloads" => json_response(&self.reloads()),
            "/metrics" => Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(self.metrics.render())))
                .unwrap_or_default(),
            "/healthz" => text(StatusCode::OK, "alive\n"),
            "/readyz" if self.draining.is_set() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => text(
                StatusCode::OK,
                &format!(
                    "ready: revision {}\n",
                    self.reloader.live().table().revision
                ),
            ),
            "/routes" => json_response(&self.routes()),
            "/diffs" => match query_param(req.uri().query().unwrap_or(""), "route") {
                Some(route) if !self.knows_route(&route) => text(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no route named {route:?} in the table in service; routes: {}\n",
                        self.route_names().join(", ")
                    ),
                ),
                Some(route) => json_response(&self.diffs(&route)),
                None => text(
                    StatusCode::BAD_REQUEST,
                    "name a route: /diffs?route=NAME (names are in /routes)\n",
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try / (the dashboard), /metrics, /healthz, /readyz, /routes, \
                 /history, /reloads or /diffs?route=NAME\n",
            ),
        }
    }

    /// The `/routes` document.
    pub fn routes(&self) -> RoutesDoc {
        let table = self.reloader.live().table();
        let default = &table.config.proxy.default;
        let shadow_counts = self.metrics.shadow_counts();
        let routes = table
            .routes()
            .iter()
            .map(|r| {
                let mut doc = RouteDoc::of(&r.config);
                let name = r.config.name.as_str();
                doc.held = self.metrics.held.with_label_values(&[name]).get();
                doc.shadow_counts = ShadowDoc::of(&shadow_counts, name);
                for backend in [r.service.name(), default.as_str()] {
                    let count = |class| {
                        let labels = [name, backend, class];
                        self.metrics.in_flight.with_label_values(&labels).get()
                    };
                    let (reads, writes) = (count("read"), count("write"));
                    doc.in_flight.insert(backend.to_string(), reads + writes);
                    doc.writes_in_flight.insert(backend.to_string(), writes);
                }
                doc
            })
            .collect();
        RoutesDoc {
            file: self.reloader.path().display().to_string(),
            revision: table.revision,
            sha256: table.sha256.clone(),
            loaded_at: rfc3339(table.loaded_at),
            last_reload_error: self.reloader.last_rejection().map(|r| ReloadError {
                at: rfc3339(r.at),
                errors: r.errors.to_string().lines().map(String::from).collect(),
            }),
            default: table.config.proxy.default.clone(),
            services: table
                .config
                .services
                .iter()
                .map(|s| {
                    let mut doc = ServiceDoc {
                        name: s.name.clone(),
                        url: format!("http://{}", s.authority),
                        outlier: None,
                        ejected_until: None,
                        consecutive_failures: 0,
                    };
                    let upstream = table
                        .routes()
                        .iter()
                        .map(|r| &r.service)
                        .find(|u| u.name() == s.name && !Arc::ptr_eq(u, &table.default));
                    if let Some(upstream) = upstream {
                        let (state, until, failures) = match upstream.outlier.state() {
                            State::Closed(n) => ("closed", None, n),
                            State::Ejected(until) => ("ejected", Some(rfc3339(until)), 0),
                            State::Probing => ("probing", None, 0),
                        };
                        doc.outlier = Some(state.to_string());
                        doc.ejected_until = until;
                        doc.consecutive_failures = failures;
                    }
                    doc
                })
                .collect(),
            routes,
        }
    }

    /// The `/history` document: every route's traffic over the last 15 minutes.
    pub fn history(&self) -> HistoryDoc {
        let table = self.reloader.live().table();
        let routes: Vec<(&str, &str)> = table
            .routes()
            .iter()
            .map(|r| (r.config.name.as_str(), r.config.service.as_str()))
            .collect();
        self.history
            .doc(&routes, &table.config.proxy.default, SystemTime::now())
    }

    /// The `/reloads` document: the latest loads of the file, newest first.
    pub fn reloads(&self) -> ReloadsDoc {
        ReloadsDoc {
            file: self.reloader.path().display().to_string(),
            reloads: self
                .reloader
                .events()
                .iter()
                .rev()
                .map(ReloadDoc::of)
                .collect(),
        }
    }

    fn route_names(&self) -> Vec<String> {
        let table = self.reloader.live().table();
        table
            .routes()
            .iter()
            .map(|r| r.config.name.clone())
            .collect()
    }

    fn knows_route(&self, route: &str) -> bool {
        self.route_names().iter().any(|r| r == route)
    }

    /// The `/diffs?route=NAME` document: the latest shadow mismatches, newest first; the same
    /// grouped by request shape (method and path with ids generalised, as near misses are
    /// logged), newest group first; and the fields learned as noise.
    pub fn diffs(&self, route: &str) -> Value {
        let mismatches = self.shadows.mismatches(route);
        json!({
            "route": route,
            "known_route": self.knows_route(route),
            "learned_noise": self.shadows.noise(route),
            "groups": groups(&mismatches),
            "mismatches": mismatches.iter().map(mismatch_json).collect::<Vec<_>>(),
        })
    }
}

fn mismatch_json(m: &Mismatch) -> Value {
    json!({
        "at": rfc3339(m.at),
        "method": m.method,
        "path": m.path,
        "request_id": m.request_id,
        "default_status": m.default_status,
        "service_status": m.service_status,
        "diff": m.diff,
        "differences": m.differences.iter().map(|d| json!({
            "at": d.at,
            "default": d.default,
            "service": d.service,
        })).collect::<Vec<_>>(),
    })
}

/// Mismatches (newest first) grouped by request shape: `METHOD /path/{n}` (query left out),
/// each with its count, how many of them differ exactly as the newest does, and the newest.
fn groups(mismatches: &[Mismatch]) -> Vec<Value> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut members: BTreeMap<(String, String), Vec<&Mismatch>> = BTreeMap::new();
    for m in mismatches {
        let path = m.path.split_once('?').map_or(m.path.as_str(), |(p, _)| p);
        let key = (m.method.clone(), near_miss::shape(path));
        if !members.contains_key(&key) {
            order.push(key.clone());
        }
        members.entry(key).or_default().push(m);
    }
    order
        .into_iter()
        .map(|key| {
            let ms = &members[&key];
            let newest = ms[0];
            json!({
                "method": key.0,
                "shape": key.1,
                "count": ms.len(),
                "same_diff": ms.iter().filter(|m| m.diff == newest.diff).count(),
                "latest": mismatch_json(newest),
            })
        })
        .collect()
}

fn asset(content_type: &str, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key && !v.is_empty()).then(|| v.to_string())
    })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// JSON indented, one field a line, ending in a newline: `curl` on a terminal shows it as
/// readably as a browser does.
fn json_response<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
    body.push('\n');
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// `2026-11-23T10:04:05Z`: RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_428_245)),
            "2026-11-23T10:04:05Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
