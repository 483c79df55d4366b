//! The public side: one request in, one response out.
//!
//! The steps run in a fixed order, each for a reason: the table is loaded first so the whole
//! request sees one revision; the request id comes next so every later log line and error body
//! carries it; limits and normalization precede routing so nothing unsafe is ever routed;
//! metrics and the access log come last, when the outcome is known.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::compare::Ignored;
use crate::forward::{self, Downstream, Failure, FailureKind};
use crate::path::{self, PathError};
use crate::reload::Live;
use crate::routes::RouteTable;
use crate::shadow::{self, Tee};
use crate::upstream::{BoxError, Upstream};

/// The body of every response the proxy sends: an upstream's, streamed (and copied when it is
/// being shadowed), or its own.
pub type ProxyBody = Either<Tee<Incoming>, Full<Bytes>>;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-strangler-backend`, when `[proxy] backend_header = true`.
pub static X_STRANGLER_BACKEND: HeaderName = HeaderName::from_static("x-strangler-backend");

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
    /// Upstream: no response.
    #[error("service {service:?} failed: {}", kind.as_str())]
    Upstream {
        /// Which service.
        service: String,
        /// How it failed.
        kind: FailureKind,
    },
    /// Internal: a request we could not rebuild (a bug, never the client's fault).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::AmbiguousSlash => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Upstream {
                kind: FailureKind::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream {
                kind: FailureKind::ClientAborted,
                ..
            } => StatusCode::BAD_REQUEST,
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
        response
    }

    fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::BadPath(_) | ProxyError::AmbiguousSlash => Some("bad_path"),
            ProxyError::UriTooLong(_) => Some("uri_too_long"),
            ProxyError::HeadersTooLarge(_) => Some("headers_too_large"),
            _ => None,
        }
    }
}

/// The proxy: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Proxy {
    live: Arc<Live>,
}

impl Proxy {
    /// A proxy serving whatever table `live` holds.
    pub fn new(live: Arc<Live>) -> Self {
        Self { live }
    }

    /// Proxies one request from `client`.
    pub async fn handle<B>(&self, req: Request<B>, client: SocketAddr) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        // One table for the whole request, whatever reloads happen meanwhile.
        let table = self.live.table();
        let (mut parts, body) = req.into_parts();
        let request_id = ensure_request_id(&mut parts.headers);

        if let Err(e) = check_limits(&parts, &table) {
            return self.refuse(e, &parts.method, &request_id, start);
        }
        // A Uri clone shares its bytes; borrowing the path from it leaves `parts` free to change.
        let uri = parts.uri.clone();
        let path = match route_path(&table, uri.path()) {
            Ok(p) => p,
            Err(e) => return self.refuse(e, &parts.method, &request_id, start),
        };
        let mut decision = table.resolve(&parts.method, &path, &parts.headers);
        if let Some(name) = &table.config.proxy.override_header {
            // The client's choice was honoured (or not) above; the backend never sees it.
            parts.headers.remove(name);
        }
        let method = parts.method.clone();
        let upgrade = forward::is_upgrade(&parts.headers);
        let to_default = Arc::ptr_eq(decision.upstream, &table.default);
        // Only a request that can be sent again unchanged may fall back: a safe method with
        // no body. Anything else could be applied twice.
        let fallback = decision
            .route
            .filter(|r| r.config.fallback && !to_default && !upgrade)
            .filter(|_| is_replayable(&method) && body.is_end_stream());
        let shadow = decision
            .route
            .filter(|r| r.config.shadow && to_default && !upgrade)
            .filter(|r| r.config.shadow_methods.contains(&method))
            .and_then(|r| match self.live.shadows().try_permit() {
                Some(permit) => Some((r, permit)),
                None => {
                    self.live
                        .metrics()
                        .shadow_comparisons
                        .with_label_values(&[&r.config.name, "dropped"])
                        .inc();
                    None
                }
            });
        let (body, request_capture) = match &shadow {
            Some(_) if !body.is_end_stream() => {
                let (tee, rx) = Tee::capture(body);
                (tee, Some(rx))
            }
            _ => (Tee::passthrough(body), None),
        };
        let mut req = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let downstream = Downstream {
            client,
            normalized_path: matches!(path, Cow::Owned(_)).then_some(path.as_ref()),
            upgrade,
            request_id: &request_id,
        };
        if let Err(e) = forward::rewrite(&mut req, decision.upstream, &downstream) {
            return ProxyError::Internal(e.to_string()).into_response(&request_id);
        }
        let template = (fallback.is_some() || shadow.is_some()).then(|| forward::template_of(&req));

        let mut outcome = forward::send(decision.upstream, req).await;
        if let (Some(route), Some(template)) = (fallback, &template) {
            let failed = match &outcome {
                Ok(r) if is_gateway_error(r.status()) => Some(status_kind(r.status())),
                Err(f) if f.kind != FailureKind::ClientAborted => Some(f.kind.as_str()),
                _ => None,
            };
            if let Some(reason) = failed {
                decision.metrics.upstream_error(self.live.metrics(), reason);
                self.live
                    .metrics()
                    .fallbacks
                    .with_label_values(&[&route.config.name])
                    .inc();
                tracing::warn!(
                    request_id = request_id.to_str().unwrap_or(""),
                    route = route.config.name,
                    service = decision.upstream.name(),
                    reason,
                    "service failed; falling back to the default"
                );
                decision = table.fallback(route);
                outcome = self.replay(template, decision.upstream).await;
            }
        }

        let mut response = match outcome {
            Ok(response) => response,
            Err(Failure { kind, detail }) => {
                decision
                    .metrics
                    .upstream_error(self.live.metrics(), kind.as_str());
                tracing::warn!(
                    request_id = request_id.to_str().unwrap_or(""),
                    route = decision.route_name(),
                    backend = decision.upstream.name(),
                    kind = kind.as_str(),
                    "upstream failed: {detail}"
                );
                let response = ProxyError::Upstream {
                    service: decision.upstream.name().to_string(),
                    kind,
                }
                .into_response(&request_id);
                self.finish(
                    &table,
                    &decision,
                    &method,
                    &path,
                    &request_id,
                    response.status(),
                    start,
                );
                return response;
            }
        };
        forward::clean_response(&mut response);
        if let Some(client_upgrade) = client_upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            tunnel(client_upgrade, hyper::upgrade::on(&mut response));
        }
        let headers = response.headers_mut();
        if !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(&X_REQUEST_ID, request_id.clone());
        }
        if table.config.proxy.backend_header {
            headers.insert(&X_STRANGLER_BACKEND, decision.upstream.header_value.clone());
        }
        self.finish(
            &table,
            &decision,
            &method,
            &path,
            &request_id,
            response.status(),
            start,
        );
        let Some(((route, permit), template)) = shadow.zip(template) else {
            return response.map(|b| Either::Left(Tee::passthrough(b)));
        };
        let default_head = (response.status().as_u16(), shadow::content_type(&response));
        let (response, default_body) = {
            let (parts, body) = response.into_parts();
            let (tee, rx) = Tee::capture(body);
            (Response::from_parts(parts, Either::Left(tee)), rx)
        };
        let ignore = Ignored::new(route.config.shadow_ignore.iter().cloned());
        shadow::spawn(
            shadow::Job {
                route: route.config.name.clone(),
                ignore,
                // The noise check sends the request to the default a second time: only a
                // request that may be sent twice qualifies.
                noise_check: route.config.shadow_noise_check
                    && is_replayable(&method)
                    && request_capture.is_none(),
                template,
                request_body: request_capture,
                default_head,
                default_body,
                service: route.service.clone(),
                default: table.default.clone(),
                request_id: request_id.to_str().unwrap_or("").to_string(),
                permit,
            },
            self.live.shadows().clone(),
            self.live.metrics().clone(),
        );
        response
    }

    /// Sends a bodiless copy of a request to `upstream` (a fallback).
    async fn replay(
        &self,
        template: &Request<()>,
        upstream: &Upstream,
    ) -> Result<Response<Incoming>, Failure> {
        let body = Empty::new().map_err(Into::into).boxed_unsync();
        let req = forward::from_template(template, body, upstream).map_err(|e| Failure {
            kind: FailureKind::Protocol,
            detail: e.to_string(),
        })?;
        forward::send(upstream, req).await
    }

    fn refuse(
        &self,
        error: ProxyError,
        method: &http::Method,
        request_id: &HeaderValue,
        start: Instant,
    ) -> Response<ProxyBody> {
        if let Some(reason) = error.rejection_reason() {
            self.live
                .metrics()
                .rejected
                .with_label_values(&[reason])
                .inc();
        }
        tracing::info!(
            target: "strangler::access",
            request_id = request_id.to_str().unwrap_or(""),
            method = %method,
            status = error.status().as_u16(),
            duration_us = start.elapsed().as_micros() as u64,
            "refused: {error}"
        );
        error.into_response(request_id)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        table: &RouteTable,
        decision: &crate::routes::Decision<'_>,
        method: &http::Method,
        path: &str,
        request_id: &HeaderValue,
        status: StatusCode,
        start: Instant,
    ) {
        let elapsed = start.elapsed();
        decision
            .metrics
            .observe(self.live.metrics(), status.as_u16(), elapsed.as_secs_f64());
        if table.config.proxy.access_log {
            tracing::info!(
                target: "strangler::access",
                request_id = request_id.to_str().unwrap_or(""),
                method = %method,
                path,
                route = decision.route_name(),
                backend = decision.upstream.name(),
                status = status.as_u16(),
                duration_us = elapsed.as_micros() as u64,
                revision = table.revision,
            );
        }
    }
}

/// Methods whose request can be sent twice without harm (RFC 9110 §9.2.1, safe methods).
fn is_replayable(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
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
