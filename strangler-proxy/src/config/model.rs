//! The validated model: everything checked, nothing left as a string that could still be wrong.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, Method};

/// A file that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// Global settings from `[proxy]`.
    pub proxy: ProxySettings,
    /// Services in name order.
    pub services: Vec<ServiceConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
}

/// `[proxy]`, validated.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Public listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Service that serves whatever no route claims.
    pub default: String,
    /// Add `x-strangler-backend` to responses.
    pub backend_header: bool,
    /// Match prefixes whatever the letter case (for monoliths whose router ignores case).
    pub ignore_case: bool,
    /// One log line per request.
    pub access_log: bool,
    /// Header that lets a client force a backend (off unless set).
    pub override_header: Option<HeaderName>,
    /// Shadow requests in flight at once.
    pub shadow_concurrency: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Longest a request waits behind a `hold_writes` fence before 503.
    pub hold_timeout: Duration,
    /// Most requests held behind fences at once.
    pub hold_max: usize,
    /// Longest request target before 414.
    pub max_uri_bytes: usize,
    /// Largest request header block before 431.
    pub max_header_bytes: usize,
    /// Client connections each listener holds before it closes the oldest idle one.
    pub max_connections: usize,
    /// Worker threads, each with its own runtime and listener (`SO_REUSEPORT`); `None`: as
    /// many as the CPUs the process may run on (its affinity mask), at most 64. Read at start-up.
    pub workers: Option<usize>,
    /// A new connection that sends nothing for this long is closed.
    pub first_byte_timeout: Duration,
    /// A request head not complete this long after its first byte closes the connection.
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    pub client_idle_timeout: Duration,
    /// On shutdown, how long the proxy keeps accepting and serving (with `Connection: close`)
    /// while `/readyz` says 503, before it stops accepting and drains.
    pub drain_grace: Duration,
    /// `routes = "none"`: no `[[routes]]` on purpose, so a reload may drop every route.
    pub no_routes: bool,
    /// Query keys whose values `/diffs` and logs show as sent; every other value is redacted.
    pub show_query_keys: Vec<String>,
}

/// `[services.NAME]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceConfig {
    /// The name routes refer to; also the `backend` metric label.
    pub name: String,
    /// `host:port` of the service.
    pub authority: Authority,
    /// TCP connect budget.
    pub connect_timeout: Duration,
    /// Budget until response headers.
    pub request_timeout: Duration,
    /// Idle pooled connections close after this.
    pub idle_timeout: Duration,
    /// Consecutive failures (no answer, or 502–504) that eject the service; 0 never ejects.
    pub outlier_failures: u32,
    /// How long an ejected service gets no request before one probe is let through; doubled
    /// on each failed probe, up to 8 times.
    pub outlier_cooldown: Duration,
}

/// How a sticky route finds a request's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// `header:NAME`
    Header(HeaderName),
    /// `cookie:NAME`
    Cookie(String),
}

/// One `[[routes]]` entry, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Metric label and `/routes` key.
    pub name: String,
    /// Normalized, segment-aware prefix.
    pub prefix: String,
    /// Service that takes the peeled-off share.
    pub service: String,
    /// Percent of matching requests the service serves.
    pub weight: u8,
    /// Only these methods are peeled off; `None` means all.
    pub methods: Option<Vec<Method>>,
    /// Where a request's stickiness key comes from.
    pub sticky: Option<StickyKey>,
    /// Mirror what the default serves to the service and compare.
    pub shadow: bool,
    /// Retry an idempotent request the service fails on the default.
    pub fallback: bool,
    /// Methods mirrored when shadowing (safe methods unless set).
    pub shadow_methods: Vec<Method>,
    /// JSON pointers ignored when comparing shadow answers.
    pub shadow_ignore: Vec<String>,
    /// Response headers compared besides the defaults (`compare::DEFAULT_HEADERS`).
    pub shadow_headers: Vec<HeaderName>,
    /// Default response headers not compared.
    pub shadow_ignore_headers: Vec<HeaderName>,
    /// Learn noisy fields by asking the default twice.
    pub shadow_noise_check: bool,
    /// The write fence (reference §7): requests with non-safe methods are held, not forwarded,
    /// until a table without the fence is in service.
    pub hold_writes: bool,
    /// JSON pointers whose values never appear in `/diffs` or logs (`*` matches one segment).
    pub shadow_redact: Vec<String>,
}

/// The stage of a route, derived from weight and shadow, never stored. Serialized as its
/// [`Stage::as_str`] name (`/routes`, read back by the scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Weight 0, no shadow: extracted but not used.
    Dark,
    /// Weight 0, shadow on: the default serves, the service is compared.
    Shadow,
    /// 0 < weight < 100.
    Canary,
    /// Weight 100.
    Live,
}

impl Stage {
    /// The stage name used in `/routes` and scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dark => "dark",
            Stage::Shadow => "shadow",
            Stage::Canary => "canary",
            Stage::Live => "live",
        }
    }
}

impl RouteConfig {
    /// The derived stage.
    pub fn stage(&self) -> Stage {
        match (self.weight, self.shadow) {
            (0, false) => Stage::Dark,
            (0, true) => Stage::Shadow,
            (100, _) => Stage::Live,
            _ => Stage::Canary,
        }
    }

    /// Whether the route claims any non-safe method (RFC 9110 §9.2.1: all but GET, HEAD,
    /// OPTIONS and TRACE), whatever its weight: no `methods` list claims them all.
    pub fn claims_writes(&self) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| !m.is_safe()))
    }

    /// Whether, at `weight`, the route would split its writes between two databases: it
    /// claims non-safe methods and sends only a share (1..=99 %) of them to its service, the
    /// rest to the default. The one rule `shift` and `rollout` refuse by (unless told the
    /// service writes through to the monolith).
    pub fn splits_writes_at(&self, weight: u8) -> bool {
        (1..=99).contains(&weight) && self.claims_writes()
    }

    /// Whether the route sends writes (any non-safe method, RFC 9110 §9.2.1) to its service:
    /// it claims one and its weight is above 0. Such a service's database takes changes the
    /// monolith's does not have.
    pub fn sends_writes(&self) -> bool {
        self.weight > 0 && self.claims_writes()
    }

    /// Whether shadowing mirrors writes to the service: they land in its database although the
    /// default serves them.
    pub fn mirrors_writes(&self) -> bool {
        self.shadow && self.shadow_methods.iter().any(|m| !m.is_safe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(weight: u8, methods: Option<&[Method]>) -> RouteConfig {
        RouteConfig {
            name: "users".into(),
            prefix: "/api/users".into(),
            service: "users".into(),
            weight,
            methods: methods.map(<[Method]>::to_vec),
            sticky: None,
            shadow: false,
            fallback: false,
            hold_writes: false,
            shadow_methods: vec![Method::GET, Method::HEAD, Method::OPTIONS],
            shadow_ignore: Vec::new(),
            shadow_headers: Vec::new(),
            shadow_ignore_headers: Vec::new(),
            shadow_noise_check: false,
            shadow_redact: Vec::new(),
        }
    }

    #[test]
    fn stages_serialize_as_their_names() {
        for stage in [Stage::Dark, Stage::Shadow, Stage::Canary, Stage::Live] {
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.as_str()));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), stage);
        }
    }

    #[test]
    fn stage_is_derived_from_weight_and_shadow() {
        let mut r = route(0, None);
        assert_eq!(r.stage(), Stage::Dark);
        r.shadow = true;
        assert_eq!(r.stage(), Stage::Shadow);
        r.weight = 100;
        assert_eq!(r.stage(), Stage::Live);
    }

    /// One line per case: weight, methods, whether the route sends writes to its service.
    #[test]
    fn a_route_sends_writes_when_it_claims_a_non_safe_method_at_a_weight() {
        let reads: &[Method] = &[Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
        let cases: &[(u8, Option<&[Method]>, bool)] = &[
            (0, None, false),
            (1, None, true),
            (100, None, true),
            (100, Some(reads), false),
            (50, Some(&[Method::GET, Method::POST]), true),
            (50, Some(&[Method::DELETE]), true),
            (0, Some(&[Method::DELETE]), false),
        ];
        for (weight, methods, expected) in cases {
            let r = route(*weight, *methods);
            assert_eq!(
                r.sends_writes(),
                *expected,
                "weight {weight}, methods {methods:?}"
            );
            assert_eq!(r.claims_writes(), methods.is_none_or(|m| m != reads));
        }
    }

    #[test]
    fn shadowing_mirrors_writes_only_when_shadow_methods_name_one() {
        let mut r = route(0, None);
        r.shadow = true;
        assert!(!r.mirrors_writes());
        r.shadow_methods.push(Method::POST);
        assert!(r.mirrors_writes());
        r.shadow = false;
        assert!(!r.mirrors_writes());
    }
}
