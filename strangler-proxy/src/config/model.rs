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
    /// Longest request target before 414.
    pub max_uri_bytes: usize,
    /// Largest request header block before 431.
    pub max_header_bytes: usize,
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
    /// Learn noisy fields by asking the default twice.
    pub shadow_noise_check: bool,
}

/// The stage of a route, derived from weight and shadow, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}
