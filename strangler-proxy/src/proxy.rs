//! The public side: one request in, one response out.
//!
//! The steps run in a fixed order, each for a reason: the table is loaded first so the whole
//! request sees one revision; the request id comes next so every later log line and error body
//! carries it; limits and normalization precede routing so nothing unsafe is ever routed;
//! metrics and the access log come last, when the outcome is known.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::forward::{self, Downstream, Failure, FailureKind};
use crate::path::{self, PathError};
use crate::reload::Live;
use crate::routes::RouteTable;
use crate::upstream::BoxError;

/// The body of every response the proxy sends: an upstream's, streamed, or its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

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
    /// Downstream: an encoded '/' that would route differently once decoded.
    #[error("the request path has an encoded '/' that would change its route once decoded")]
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

    /// A tower service for requests from `client`.
    pub fn service(&self, client: SocketAddr) -> ProxyService {
        ProxyService {
            proxy: self.clone(),
            client,
        }
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
        let mut req = req.map(|b| b.map_err(Into::into).boxed_unsync());
        let request_id = ensure_request_id(req.headers_mut());

        if let Err(e) = check_limits(&req, &table) {
            return self.refuse(e, &req, &request_id, start);
        }
        // A Uri clone shares its bytes; borrowing the path from it keeps `req` free to change.
        let uri = req.uri().clone();
        let path = match route_path(&table, uri.path()) {
            Ok(p) => p,
            Err(e) => return self.refuse(e, &req, &request_id, start),
        };
        let decision = table.resolve(req.method(), &path, req.headers());
        let upstream = decision.upstream.clone();
        let method = req.method().clone();

        let upgrade = forward::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let downstream = Downstream {
            client,
            normalized_path: matches!(path, Cow::Owned(_)).then_some(path.as_ref()),
            upgrade,
        };
        if let Err(e) = forward::rewrite(&mut req, &upstream, &downstream) {
            return ProxyError::Internal(e.to_string()).into_response(&request_id);
        }

        let mut response = match forward::send(&upstream, req).await {
            Ok(response) => response,
            Err(Failure { kind, detail }) => {
                decision
                    .metrics
                    .upstream_error(self.live.metrics(), kind.as_str());
                tracing::warn!(
                    request_id = request_id.to_str().unwrap_or(""),
                    route = decision.route_name(),
                    backend = upstream.name(),
                    kind = kind.as_str(),
                    "upstream failed: {detail}"
                );
                let response = ProxyError::Upstream {
                    service: upstream.name().to_string(),
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
            headers.insert(&X_STRANGLER_BACKEND, upstream.header_value.clone());
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
        response.map(Either::Left)
    }

    fn refuse<B>(
        &self,
        error: ProxyError,
        req: &Request<B>,
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
            method = %req.method(),
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

/// Uses the client's `x-request-id` or adds a fresh one, and returns it.
fn ensure_request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        return id.clone();
    }
    let (a, b) = (crate::random::next_u64(), crate::random::next_u64());
    let id = HeaderValue::from_str(&format!("{a:016x}{b:016x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    headers.insert(&X_REQUEST_ID, id.clone());
    id
}

fn check_limits<B>(req: &Request<B>, table: &RouteTable) -> Result<(), ProxyError> {
    let settings = &table.config.proxy;
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > settings.max_uri_bytes {
        return Err(ProxyError::UriTooLong(settings.max_uri_bytes));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > settings.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(settings.max_header_bytes));
    }
    Ok(())
}

/// The normalized path to route on and forward. An encoded '/' is forwarded as it is only when
/// decoding it would not change the route: the upstream may decode it, and then it must still
/// be the route's business.
fn route_path<'p>(table: &RouteTable, original: &'p str) -> Result<Cow<'p, str>, ProxyError> {
    let normalized = path::normalize(original)?;
    if path::has_encoded_slash(&normalized) {
        let decoded_slashes = path::decode_slashes(&normalized);
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

/// [`Proxy`] as a tower service bound to one client address.
#[derive(Clone)]
pub struct ProxyService {
    proxy: Proxy,
    client: SocketAddr,
}

impl<B> tower::Service<Request<B>> for ProxyService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let proxy = self.proxy.clone();
        let client = self.client;
        Box::pin(async move { Ok(proxy.handle(req, client).await) })
    }
}
