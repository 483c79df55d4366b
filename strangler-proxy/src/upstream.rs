//! Backends: one pooled HTTP client per service, kept across reloads while its settings hold.
//!
//! A reload that changes only weights must not throw away warm keep-alive connections (a table
//! rewritten every 100 ms would otherwise reconnect constantly), so [`Upstreams`] hands out the
//! same [`Upstream`] for the same [`ServiceConfig`].

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};

use crate::config::ServiceConfig;
use crate::outlier::Outlier;
use crate::pool::Pool;
use bytes::Bytes;
use http::HeaderValue;
use http::uri::Authority;
use http_body_util::combinators::UnsyncBoxBody;

/// Any error a body can fail with.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of a request sent to a service: the client's body, streamed.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// One service: its settings and its connection pool.
pub struct Upstream {
    /// Settings it was built from.
    pub config: ServiceConfig,
    /// `x-strangler-backend` value, built once.
    pub header_value: HeaderValue,
    /// Keep-alive connections to the service.
    pub pool: Pool,
    /// Consecutive failures and ejection (kept, like the pool, across reloads that keep the
    /// service's settings).
    pub outlier: Outlier,
}

impl Upstream {
    fn new(config: ServiceConfig) -> Self {
        let pool = Pool::new(
            config.authority.clone(),
            config.connect_timeout,
            config.idle_timeout,
        );
        let header_value = HeaderValue::from_str(&config.name)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-name"));
        Self {
            outlier: Outlier::new(config.outlier_failures, config.outlier_cooldown),
            config,
            header_value,
            pool,
        }
    }

    /// The service name (metric label, `x-strangler-backend`).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// `host:port` to send requests to.
    pub fn authority(&self) -> &Authority {
        &self.config.authority
    }
}

/// Upstreams by settings, reused across reloads.
#[derive(Default)]
pub struct Upstreams {
    by_config: Mutex<HashMap<ServiceConfig, Arc<Upstream>>>,
}

impl Upstreams {
    /// Upstreams for `services`, reusing pools whose settings did not change and forgetting the
    /// rest (their connections close when the last table using them is dropped).
    pub fn resolve(&self, services: &[ServiceConfig]) -> HashMap<String, Arc<Upstream>> {
        let mut cache = self.by_config.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::with_capacity(services.len());
        let mut out = HashMap::with_capacity(services.len());
        for service in services {
            let upstream = cache
                .remove(service)
                .unwrap_or_else(|| Arc::new(Upstream::new(service.clone())));
            kept.insert(service.clone(), upstream.clone());
            out.insert(service.name.clone(), upstream);
        }
        *cache = kept;
        out
    }
}
