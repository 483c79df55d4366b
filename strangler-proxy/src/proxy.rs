//! The public side: one request in, one response out.
//!
//! [`Proxy::handle`] runs named phases around a per-request [`Exchange`], in a fixed order,
//! each for a reason: the table is loaded first so the whole request sees one revision; the
//! request id comes next so every later log line and error body carries it; `admit` (limits,
//! normalization) precedes `decide` (routing) so nothing unsafe is ever routed; `send` (with
//! fallback) → `respond` → `finish`, which counts and logs once the outcome is known; the
//! shadow comparison last, off the request path.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::access_log::{self, AccessLog};
use crate::compare::{HeaderRules, Ignored};
use crate::forward::{self, ClientHop, Downstream, Failure, FailureKind, UpstreamResponse};
use crate::headers::{self as names, X_REQUEST_ID, X_STRANGLER_BACKEND};
use crate::live::Live;
use crate::metrics::{Metrics, shadow_result};
use crate::near_miss;
use crate::outlier::{Admit, Transition};
use crate::path::{self, PathError};
use crate::pool;
use crate::routes::{Decision, RouteTable};
use crate::shadow::{self, Captured, Shadows, Tee};
use crate::upstream::{BoxError, Upstream, UpstreamBody};

/// The body of every response the proxy sends: an upstream's, streamed (and copied when it is
/// being shadowed), or its own.
pub type ProxyBody = Either<Tee<pool::Body>, Full<Bytes>>;

/// Everything the proxy can answer on its own, typed by which side failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream: a path that cannot be routed safely.
    #[error("the request path cannot be routed safely: {0}")]
    BadPath(#[from] PathError),
    /// Downstream: an encoded '/' or a backslash that would route differently read as '/'.
    #[error(
        "the request path has an encoded '/' or a '\\' that would change its route if read as '/'"
    )]
    AmbiguousSlash,
    /// Downstream: request target over `max_uri_bytes`.
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(usize),
    /// Downstream: header block over `max_header_bytes`.
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// Downstream: an HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2: answer 400).
    #[error("an HTTP/1.1 request needs exactly one Host header (RFC 9112 §3.2); it had {0}")]
    BadHost(usize),
    /// Downstream: the client's request body failed while being sent (the client went away).
    #[error("the request body ended early: {0}")]
    ClientAborted(String),
    /// Upstream: no response.
    #[error("service {service:?} failed: {}", kind.as_str())]
    Upstream {
        /// Which service.
        service: String,
        /// How it failed.
        kind: FailureKind,
        /// The underlying error, for the log only.
        detail: String,
    },
    /// Downstream: a write the route's fence (`hold_writes`) held past `hold_timeout`, or
    /// refused because `hold_max` requests were held already; it was never forwarded.
    #[error("writes to route {route:?} are paused for a cutover and {why}; retry shortly")]
    Held {
        /// The fenced route.
        route: String,
        /// `timeout` or `full`: the `reason` label of `strangler_hold_rejections_total`.
        reason: &'static str,
        /// `the pause outlasted hold_timeout (5s)` or `hold_max (N) requests already wait`.
        why: String,
    },
    /// Upstream: the service is ejected by outlier detection and the request may not fall
    /// back; it was never sent.
    #[error(
        "service {service:?} is failing and gets no requests for now; retry in {}s",
        retry_after.as_secs().max(1)
    )]
    Ejected {
        /// Which service.
        service: String,
        /// Until the next probe, about.
        retry_after: std::time::Duration,
    },
    /// Internal: a request we could not rebuild (a bug, never the client's fault).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Which side of the proxy a failure is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client or its request.
    Downstream,
    /// The backend.
    Upstream,
    /// The proxy itself (a bug).
    Internal,
}

impl ProxyError {
    /// The side that failed.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::Upstream { .. } | ProxyError::Ejected { .. } => Side::Upstream,
            ProxyError::Internal(_) => Side::Internal,
            _ => Side::Downstream,
        }
    }

    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::AmbiguousSlash | ProxyError::BadHost(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Upstream {
                kind: FailureKind::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientAborted(_) => StatusCode::BAD_REQUEST,
            ProxyError::Held { .. } | ProxyError::Ejected { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The one place a proxy error becomes a response: short JSON with the request id.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": self.to_string(),
            "request_id": request_id.to_str().unwrap_or(""),
        });
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(&X_REQUEST_ID, request_id.clone());
        if matches!(self, ProxyError::Held { .. }) {
            // A fence lifts within seconds; the request is safe to send again.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ProxyError::Ejected { retry_after, .. } = &self {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        response
    }

    fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::BadPath(_) | ProxyError::AmbiguousSlash => Some("bad_path"),
            ProxyError::UriTooLong(_) => Some("uri_too_long"),
            ProxyError::HeadersTooLarge(_) => Some("headers_too_large"),
            ProxyError::BadHost(_) => Some("bad_host"),
            _ => None,
        }
    }
}

/// What every connection shares: the live table, the metrics and the shadow permits.
struct Shared {
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    shadows: Arc<Shadows>,
    /// Where answered requests are logged when the table's `access_log` is on.
    access_log: Option<AccessLog>,
    /// Requests held behind write fences now, all routes (bounded by `hold_max`).
    held: AtomicUsize,
}

/// The proxy, for one client address: cheap to clone (one `Arc`), a `tower::Service`.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    client: Arc<ClientHop>,
}

impl Proxy {
    /// A proxy serving whatever table `live` holds, counting into `metrics`, bounding shadow
    /// work by `shadows`, logging answered requests to `access_log` (none: not logged). Its
    /// client address is unspecified until [`Proxy::for_client`].
    pub fn new(
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        shadows: Arc<Shadows>,
        access_log: Option<AccessLog>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                live,
                metrics,
                shadows,
                access_log,
                held: AtomicUsize::new(0),
            }),
            client: Arc::new(ClientHop::new(SocketAddr::from(([0, 0, 0, 0], 0)))),
        }
    }

    /// The same proxy for requests from `client` (it goes into `x-forwarded-for`).
    pub fn for_client(&self, client: SocketAddr) -> Self {
        Self {
            shared: self.shared.clone(),
            client: Arc::new(ClientHop::new(client)),
        }
    }

    /// Proxies one request, one line per phase.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        // One table for the whole request, whatever reloads happen meanwhile: the first, or
        // for a write held behind a fence, the one that lifted it.
        let (table, held) = match self.through_fence(&parts).await {
            Ok(table) => (table, None),
            Err((table, error)) => (table, Some(error)),
        };
        // A Uri clone shares its bytes; borrowing the path from it leaves `parts` free to change.
        let uri = parts.uri.clone();
        let mut ex = Exchange::begin(&table, &self.shared, &mut parts, start);
        if let Err(e) = ex.admit(&parts, uri.path()) {
            return ex.refuse(e);
        }
        ex.decide(&mut parts, body.is_end_stream());
        if let Some(error) = held {
            return ex.fail(error);
        }
        let shadow = self.shadow_permit(&ex);
        let (body, request_capture) = match &shadow {
            Some(_) if !body.is_end_stream() => {
                let (tee, rx) = Tee::capture(body);
                (tee, Some(rx))
            }
            _ => (Tee::passthrough(body), None),
        };
        let mut req = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        let client_upgrade = ex.upgrade.then(|| hyper::upgrade::on(&mut req));
        if let Err(e) = ex.rewrite(&mut req, &self.client) {
            return ex.fail(ProxyError::Internal(e.to_string()));
        }
        // Kept for a request that may be sent again: on a new connection, or to the default.
        let template = (ex.retry || shadow.is_some()).then(|| forward::template_of(&req));
        let response = match ex.send(req, template.as_ref()).await {
            Ok(response) => ex.respond(response, client_upgrade),
            Err(e) => return ex.fail(e),
        };
        ex.finish(response.status());
        match (shadow, template) {
            (Some(permit), Some(template)) => {
                self.mirror(&ex, permit, template, request_capture, response)
            }
            _ => response.map(|b| Either::Left(Tee::passthrough(b))),
        }
    }

    /// Waits while a route's write fence holds this request (reference §7), until a table without
    /// the fence is in service; returns that table. Past `hold_timeout`, or when `hold_max`
    /// requests already wait, returns the error instead: the request was never forwarded.
    /// Safe methods, and every request while no route has a fence, pass at once.
    async fn through_fence(
        &self,
        parts: &Parts,
    ) -> Result<Arc<RouteTable>, (Arc<RouteTable>, ProxyError)> {
        let live = &self.shared.live;
        let table = live.table();
        if !table.has_fences() || parts.method.is_safe() {
            return Ok(table);
        }
        // A path that cannot be normalized is refused by `admit` right after.
        let Ok(path) = path::normalize(parts.uri.path()) else {
            return Ok(table);
        };
        let Some(route) = table.fence(&parts.method, &path) else {
            return Ok(table);
        };
        let route = route.config.name.clone();
        let settings = &table.config.proxy;
        let (timeout, max) = (settings.hold_timeout, settings.hold_max);
        let held = match Held::enter(&self.shared, route, max) {
            Ok(held) => held,
            Err(route) => {
                let why = format!("hold_max ({max}) requests already wait");
                let reason = "full";
                return Err((table, ProxyError::Held { route, reason, why }));
            }
        };
        // Checked: `check` bounds hold_timeout, but a configured value must never panic a
        // request; past the longest timeout a file may set, waiting longer changes nothing.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + crate::config::defaults::TIMEOUT_MAX);
        let mut stored = live.subscribe();
        loop {
            let table = live.table();
            if table.fence(&parts.method, &path).is_none() {
                return Ok(table);
            }
            match tokio::time::timeout_at(deadline, stored.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the table can no longer change (shutting down).
                _ => {
                    let why = format!("the pause outlasted hold_timeout ({timeout:?})");
                    let route = held.route.clone();
                    let reason = "timeout";
                    return Err((table, ProxyError::Held { route, reason, why }));
                }
            }
        }
    }

    /// A shadow permit when the decision mirrors this request; `None` (counted as `dropped`)
    /// when the bound on shadow work is reached.
    fn shadow_permit(&self, ex: &Exchange<'_>) -> Option<OwnedSemaphorePermit> {
        let decision = ex.decision.as_ref().filter(|d| d.shadow)?;
        let permit = self.shared.shadows.try_permit();
        if permit.is_none() {
            self.shared
                .metrics
                .shadow_comparisons
                .with_label_values(&[decision.route_name(), shadow_result::DROPPED])
                .inc();
        }
        permit
    }

    /// Copies the default's answer as it streams to the client and compares it with the
    /// service's off the request path. A body hyper will never poll (a HEAD answer, 204, 304,
    /// `content-length: 0`) is not teed: its capture is complete, and empty, at once.
    fn mirror(
        &self,
        ex: &Exchange<'_>,
        permit: OwnedSemaphorePermit,
        template: Request<()>,
        request_body: Option<oneshot::Receiver<Captured>>,
        response: UpstreamResponse,
    ) -> Response<ProxyBody> {
        let Some(route) = ex.decision.as_ref().and_then(|d| d.route) else {
            return response.map(|b| Either::Left(Tee::passthrough(b)));
        };
        let default_head = (response.status().as_u16(), response.headers().clone());
        let (parts, body) = response.into_parts();
        let (tee, default_body) = if ex.method == Method::HEAD || body.is_end_stream() {
            (Tee::passthrough(body), shadow::captured_empty())
        } else {
            Tee::capture(body)
        };
        let config = &route.config;
        shadow::spawn(
            shadow::Job {
                route: config.name.clone(),
                ignore: Ignored::new(config.shadow_ignore.iter().cloned()),
                redact: Ignored::new(config.shadow_redact.iter().cloned()),
                show_query_keys: ex.table.config.proxy.show_query_keys.clone(),
                headers: HeaderRules::new(&config.shadow_headers, &config.shadow_ignore_headers),
                // The noise check sends the request to the default a second time: only a
                // request that may be sent twice qualifies.
                noise_check: route.config.shadow_noise_check
                    && ex.method.is_safe()
                    && request_body.is_none(),
                template,
                request_body,
                default_head,
                default_body,
                service: route.service.clone(),
                default: ex.table.default.clone(),
                request_id: ex.request_id.to_str().unwrap_or("").to_string(),
                permit,
            },
            self.shared.shadows.clone(),
            self.shared.metrics.clone(),
        );
        Response::from_parts(parts, Either::Left(tee))
    }
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Never busy: every limit is applied per request, inside `handle`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move { Ok(proxy.handle(req).await) })
    }
}

/// One request held behind a write fence: counted in `strangler_held_requests` while it waits
/// and in `strangler_hold_duration_seconds` when the wait ends, however it ends (lifted, timed
/// out, or the client went away and the request was dropped).
struct Held<'s> {
    shared: &'s Shared,
    route: String,
    since: Instant,
}

impl<'s> Held<'s> {
    /// Starts a hold, or gives `route` back when `max` requests are held already.
    fn enter(shared: &'s Shared, route: String, max: usize) -> Result<Self, String> {
        let held = shared.held.fetch_add(1, Ordering::SeqCst);
        if held >= max {
            shared.held.fetch_sub(1, Ordering::SeqCst);
            return Err(route);
        }
        shared.metrics.held.with_label_values(&[&route]).inc();
        Ok(Self {
            shared,
            route,
            since: Instant::now(),
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.shared.held.fetch_sub(1, Ordering::SeqCst);
        let metrics = &self.shared.metrics;
        metrics.held.with_label_values(&[&self.route]).dec();
        metrics
            .hold_duration
            .with_label_values(&[&self.route])
            .observe(self.since.elapsed().as_secs_f64());
    }
}

/// One request's context, threaded through the phases of [`Proxy::handle`].
/// [`Exchange::finish`] (and [`Exchange::refuse`] before routing) is the one place a request is
/// counted and logged.
struct Exchange<'r> {
    table: &'r RouteTable,
    metrics: &'r Metrics,
    access_log: Option<&'r AccessLog>,
    start: Instant,
    method: Method,
    request_id: HeaderValue,
    /// The normalized path routing used, set by [`Exchange::admit`].
    path: Cow<'r, str>,
    /// Who serves it, set by [`Exchange::decide`] (and changed by a fallback).
    decision: Option<Decision<'r>>,
    /// A protocol switch (WebSocket) to tunnel.
    upgrade: bool,
    /// A failure of the service may be retried on the default.
    fallback: bool,
    /// A safe, bodiless request, not a protocol switch: it may be sent twice.
    retry: bool,
}

impl<'r> Exchange<'r> {
    /// Starts the clock and gives the request its id (the client's, or a new one).
    fn begin(table: &'r RouteTable, shared: &'r Shared, parts: &mut Parts, start: Instant) -> Self {
        Self {
            table,
            metrics: &shared.metrics,
            access_log: shared.access_log.as_ref(),
            start,
            method: parts.method.clone(),
            request_id: ensure_request_id(&mut parts.headers),
            path: Cow::Borrowed("/"),
            decision: None,
            upgrade: false,
            fallback: false,
            retry: false,
        }
    }

    /// Size limits, `Host`, then the normalized path: nothing unsafe is ever routed.
    fn admit(&mut self, parts: &Parts, path: &'r str) -> Result<(), ProxyError> {
        check_limits(parts, self.table)?;
        check_host(parts)?;
        self.path = route_path(self.table, path)?;
        Ok(())
    }

    /// Routes the request (pure: [`RouteTable::resolve`]) and drops the override header, which
    /// the backend never sees.
    fn decide(&mut self, parts: &mut Parts, body_is_empty: bool) {
        let decision = self
            .table
            .resolve(&parts.method, &self.path, &parts.headers);
        // Only a request that falls to the default pays for near-miss detection.
        if decision.route.is_none() {
            self.near_missed();
        }
        if let Some(name) = &self.table.config.proxy.override_header {
            parts.headers.remove(name);
        }
        self.upgrade = names::is_upgrade(&parts.headers);
        // Only a request that can be sent again unchanged may fall back: no body either.
        self.fallback = decision.fallback && body_is_empty;
        self.retry = parts.method.is_safe() && body_is_empty && !self.upgrade;
        self.decision = Some(decision);
    }

    /// The event of a near miss (see [`crate::near_miss`]): counted per route, logged once
    /// per path shape.
    fn near_missed(&self) {
        let Some(route) = self.table.near_miss(&self.path) else {
            return;
        };
        let name = route.config.name.as_str();
        self.metrics.near_misses.with_label_values(&[name]).inc();
        let shape = near_miss::shape(&self.path);
        if route.near_miss_shapes.first_sighting(&shape) {
            tracing::warn!(
                request_id = self.request_id.to_str().unwrap_or(""),
                route = %name,
                prefix = %route.config.prefix,
                method = %self.method,
                shape = %shape,
                "near miss: the path matches route {name:?} only when letter case is ignored, \
                 so the default serves it; a legacy router that ignores case serves it as the \
                 route's, and the route's writes would split between the two. Set [proxy] \
                 ignore_case = true if the default's router ignores case (logged once per path \
                 shape; strangler_route_near_misses_total counts them all)"
            );
        }
    }

    fn decision(&self) -> &Decision<'r> {
        self.decision
            .as_ref()
            .unwrap_or_else(|| unreachable!("decide runs before every later phase"))
    }

    /// Rewrites the request for its backend.
    fn rewrite(
        &self,
        req: &mut Request<UpstreamBody>,
        client: &ClientHop,
    ) -> Result<(), http::Error> {
        let downstream = Downstream {
            client,
            normalized_path: matches!(self.path, Cow::Owned(_)).then_some(self.path.as_ref()),
            upgrade: self.upgrade,
            request_id: &self.request_id,
        };
        forward::rewrite(req, &downstream)
    }

    /// Sends to the decided backend; a failure of the service on a request that may fall back
    /// is counted and sent again, bodiless, to the default.
    async fn send(
        &mut self,
        req: Request<UpstreamBody>,
        template: Option<&Request<()>>,
    ) -> Result<UpstreamResponse, ProxyError> {
        let ticket = match self.outlier() {
            Some(Admit::Ejected(retry_after)) => return self.shunned(retry_after, template).await,
            Some(Admit::Send(ticket)) => Some(ticket),
            None => None,
        };
        let again = template.filter(|_| self.retry);
        let outcome = {
            let write = !self.method.is_safe();
            let _in_flight = self.decision().metrics.in_flight(self.metrics, write);
            let sent = forward::send_retrying(self.decision().upstream, req, again).await;
            self.sent(sent)
        };
        let failed = match &outcome {
            Ok(r) if is_gateway_error(r.status()) => Some(status_kind(r.status())),
            Err(f) if f.kind != FailureKind::ClientAborted => Some(f.kind.as_str()),
            _ => None,
        };
        if let Some(ticket) = ticket {
            let aborted = matches!(&outcome, Err(f) if f.kind == FailureKind::ClientAborted);
            // A client that went away says nothing about the service.
            if !aborted && let Some(transition) = ticket.record(failed.is_none()) {
                self.outlier_event(transition);
            }
        }
        let route = self.decision().route;
        let retry = template.filter(|_| self.fallback).zip(failed).zip(route);
        let Some(((template, reason), route)) = retry else {
            return outcome.map_err(|f| self.failure(f));
        };
        self.fell_back(reason);
        self.decision = Some(self.table.fallback(route));
        // Only safe methods fall back.
        let _in_flight = self.decision().metrics.in_flight(self.metrics, false);
        let sent = replay(template, self.decision().upstream).await;
        self.sent(sent).map_err(|f| self.failure(f))
    }

    /// The event of a request sent twice to its backend: counted, logged; the outcome passed on.
    fn sent(&self, sent: forward::Sent) -> Result<UpstreamResponse, Failure> {
        if let Some(first) = &sent.retried {
            let decision = self.decision();
            decision.metrics.retried(self.metrics);
            tracing::info!(
                request_id = self.request_id.to_str().unwrap_or(""),
                route = decision.route_name(),
                backend = decision.upstream.name(),
                kind = first.kind.as_str(),
                "sent again on a new connection: {}",
                first.detail
            );
        }
        sent.outcome
    }

    /// The outlier breaker of the decided backend, unless it is the default, which is never
    /// ejected: there is nowhere else to send.
    fn outlier(&self) -> Option<Admit<'r>> {
        let upstream: &'r Arc<Upstream> = self.decision().upstream;
        (!Arc::ptr_eq(upstream, &self.table.default)).then(|| upstream.outlier.admit())
    }

    /// A request for an ejected service: to the default at once when it may fall back, else a
    /// fast 503.
    async fn shunned(
        &mut self,
        retry_after: std::time::Duration,
        template: Option<&Request<()>>,
    ) -> Result<UpstreamResponse, ProxyError> {
        let service = self.decision().upstream.name().to_string();
        let route = self.decision().route;
        let Some((template, route)) = template.filter(|_| self.fallback).zip(route) else {
            return Err(ProxyError::Ejected {
                service,
                retry_after,
            });
        };
        self.metrics
            .fallbacks
            .with_label_values(&[route.config.name.as_str()])
            .inc();
        tracing::debug!(
            request_id = self.request_id.to_str().unwrap_or(""),
            route = route.config.name.as_str(),
            service,
            "service ejected; sent to the default"
        );
        self.decision = Some(self.table.fallback(route));
        let _in_flight = self.decision().metrics.in_flight(self.metrics, false);
        let sent = replay(template, self.decision().upstream).await;
        self.sent(sent).map_err(|f| self.failure(f))
    }

    /// The event of a breaker changing state: counted, gauged and logged.
    fn outlier_event(&self, transition: Transition) {
        let service = self.decision().upstream.name();
        let ejected = self.metrics.outlier_ejected.with_label_values(&[service]);
        match transition {
            Transition::Ejected(cooldown) => {
                self.metrics
                    .outlier_ejections
                    .with_label_values(&[service])
                    .inc();
                ejected.set(1);
                tracing::warn!(
                    service,
                    "service ejected for {cooldown:?} after consecutive failures: requests \
                     that may fall back go to the default, others get 503; then one probe \
                     request at a time"
                );
            }
            Transition::Closed => {
                ejected.set(0);
                tracing::info!(service, "probe answered: service takes requests again");
            }
        }
    }

    /// The event of a fallback: counted against the service, logged, counted for the route.
    fn fell_back(&self, reason: &str) {
        let decision = self.decision();
        decision.metrics.upstream_error(self.metrics, reason);
        self.metrics
            .fallbacks
            .with_label_values(&[decision.route_name()])
            .inc();
        tracing::warn!(
            request_id = self.request_id.to_str().unwrap_or(""),
            route = decision.route_name(),
            service = decision.upstream.name(),
            reason,
            "service failed; falling back to the default"
        );
    }

    /// A forwarding failure, on the side it belongs to.
    fn failure(&self, failure: Failure) -> ProxyError {
        match failure.kind {
            FailureKind::ClientAborted => ProxyError::ClientAborted(failure.detail),
            kind => ProxyError::Upstream {
                service: self.decision().upstream.name().to_string(),
                kind,
                detail: failure.detail,
            },
        }
    }

    /// The upstream's answer made ready for the client: hop-by-hop headers cleaned, a protocol
    /// switch tunnelled, the request id and (optionally) the backend named.
    fn respond(
        &self,
        mut response: UpstreamResponse,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> UpstreamResponse {
        forward::clean_response(&mut response);
        if let Some(client_upgrade) = client_upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            tunnel(client_upgrade, hyper::upgrade::on(&mut response));
        }
        let headers = response.headers_mut();
        if !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(&X_REQUEST_ID, self.request_id.clone());
        }
        if self.table.config.proxy.backend_header {
            headers.insert(
                &X_STRANGLER_BACKEND,
                self.decision().upstream.header_value.clone(),
            );
        }
        response
    }

    /// The event of a failure after routing: counted on its side, logged, answered.
    fn fail(&self, error: ProxyError) -> Response<ProxyBody> {
        let decision = self.decision();
        let request_id = self.request_id.to_str().unwrap_or("");
        match &error {
            ProxyError::Upstream { kind, detail, .. } => {
                decision.metrics.upstream_error(self.metrics, kind.as_str());
                tracing::warn!(
                    request_id,
                    route = decision.route_name(),
                    backend = decision.upstream.name(),
                    kind = kind.as_str(),
                    "upstream failed: {detail}"
                );
            }
            ProxyError::ClientAborted(detail) => {
                self.metrics
                    .client_aborts
                    .with_label_values(&[decision.route_name()])
                    .inc();
                tracing::debug!(
                    request_id,
                    route = decision.route_name(),
                    "client went away: {detail}"
                );
            }
            ProxyError::Held { route, reason, .. } => {
                // Counted apart: no backend saw it, so it is no backend's error.
                self.metrics
                    .hold_rejections
                    .with_label_values(&[route.as_str(), reason])
                    .inc();
                tracing::warn!(request_id, route, "write not forwarded: {error}");
                return error.into_response(&self.request_id);
            }
            ProxyError::Ejected { service, .. } => tracing::debug!(
                request_id,
                route = decision.route_name(),
                service,
                "not sent: service ejected"
            ),
            _ => tracing::error!(request_id, "{error}"),
        }
        let response = error.into_response(&self.request_id);
        self.finish(response.status());
        response
    }

    /// The one place an answered request is counted and written to the access log.
    fn finish(&self, status: StatusCode) {
        let decision = self.decision();
        let elapsed = self.start.elapsed();
        decision
            .metrics
            .observe(self.metrics, status.as_u16(), elapsed.as_secs_f64());
        if self.table.config.proxy.access_log
            && let Some(log) = self.access_log
        {
            log.record(&access_log::Entry {
                request_id: self.request_id.to_str().unwrap_or(""),
                method: self.method.as_str(),
                path: &self.path,
                route: decision.route_name(),
                backend: decision.upstream.name(),
                status: status.as_u16(),
                duration_us: elapsed.as_micros() as u64,
                revision: self.table.revision,
            });
        }
    }

    /// The event of a request refused before routing: counted by reason, logged, answered.
    fn refuse(&self, error: ProxyError) -> Response<ProxyBody> {
        if let Some(reason) = error.rejection_reason() {
            self.metrics.rejected.with_label_values(&[reason]).inc();
        }
        tracing::info!(
            target: "strangler::access",
            request_id = self.request_id.to_str().unwrap_or(""),
            method = %self.method,
            status = error.status().as_u16(),
            duration_us = self.start.elapsed().as_micros() as u64,
            "refused: {error}"
        );
        error.into_response(&self.request_id)
    }
}

/// Sends a bodiless copy of a request to `upstream` (a fallback), again on a new connection
/// if the first closes before answering.
async fn replay(template: &Request<()>, upstream: &Upstream) -> forward::Sent {
    let body = Empty::new().map_err(Into::into).boxed_unsync();
    let req = forward::from_template(template, body);
    forward::send_retrying(upstream, req, Some(template)).await
}

fn is_gateway_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

fn status_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        502 => "http_502",
        503 => "http_503",
        _ => "http_504",
    }
}

/// Uses the client's `x-request-id` or adds a fresh one (32 hex digits), and returns it.
fn ensure_request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        return id.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    let random =
        (u128::from(crate::random::next_u64()) << 64) | u128::from(crate::random::next_u64());
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((random >> (4 * i)) & 0xF) as usize];
    }
    let id =
        HeaderValue::from_bytes(&digits).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    headers.insert(&X_REQUEST_ID, id.clone());
    id
}

fn check_limits(req: &http::request::Parts, table: &RouteTable) -> Result<(), ProxyError> {
    let settings = &table.config.proxy;
    let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > settings.max_uri_bytes {
        return Err(ProxyError::UriTooLong(settings.max_uri_bytes));
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > settings.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(settings.max_header_bytes));
    }
    Ok(())
}

/// An HTTP/1.1 request carries exactly one `Host`, even with an absolute-form target (RFC 9112
/// §3.2); HTTP/1.0 may omit it and HTTP/2 sends `:authority` instead.
fn check_host(req: &Parts) -> Result<(), ProxyError> {
    if req.version != http::Version::HTTP_11 {
        return Ok(());
    }
    match req.headers.get_all(header::HOST).iter().count() {
        1 => Ok(()),
        n => Err(ProxyError::BadHost(n)),
    }
}

/// The normalized path to route on and forward. An encoded '/' or a backslash is forwarded as it
/// is only when reading it as '/' would not change the route: the upstream may, and then it must
/// still be the route's business.
fn route_path<'p>(table: &RouteTable, original: &'p str) -> Result<Cow<'p, str>, ProxyError> {
    let normalized = path::normalize(original)?;
    if path::has_slash_lookalike(&normalized) {
        let decoded_slashes = path::as_slashes(&normalized);
        let decoded = path::normalize(&decoded_slashes)?;
        let as_sent = table.lookup(&normalized).map(|r| &r.config.name);
        let as_decoded = table.lookup(&decoded).map(|r| &r.config.name);
        if as_sent != as_decoded {
            return Err(ProxyError::AmbiguousSlash);
        }
    }
    Ok(normalized)
}

/// Joins the client's and the upstream's upgraded connections until either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
        }
    });
}
