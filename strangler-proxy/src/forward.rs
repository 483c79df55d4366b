//! Sending one request to one upstream: the rewrite a request needs on its way through a proxy
//! (RFC 9110 §7.6: hop-by-hop headers, `x-forwarded-*`), the call itself with its deadline, and
//! the classification of failures. Bodies are never buffered: both are streamed as they come.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::headers::{
    HOP_BY_HOP, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
    X_STRANGLER_SHADOW,
};
use crate::upstream::{Upstream, UpstreamBody};

/// Why an upstream gave no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    Connect,
    /// No response headers within `request_timeout`.
    Timeout,
    /// The connection closed or reset before a complete response.
    Reset,
    /// The upstream sent something that is not HTTP.
    Protocol,
    /// The client's own request body failed while being sent (client went away).
    ClientAborted,
}

impl FailureKind {
    /// The `kind` label of `strangler_upstream_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Protocol => "protocol",
            FailureKind::ClientAborted => "client_aborted",
        }
    }
}

/// An upstream failure with its description for the log and the error body.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong, as a label.
    pub kind: FailureKind,
    /// The underlying error, for the log.
    pub detail: String,
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too; collect them before Connection goes.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// What the rewrite needs to know about the downstream side.
pub struct Downstream<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// The path routing used (normalized); `None` when the original path already was.
    pub normalized_path: Option<&'a str>,
    /// Keep `Upgrade` and `Connection: upgrade`.
    pub upgrade: bool,
    /// The request id, set after hop-by-hop removal so `Connection` cannot name it away.
    pub request_id: &'a HeaderValue,
}

/// Rewrites a downstream request for `upstream`: absolute URI on the upstream with exactly the
/// routed path, hop-by-hop headers removed, `x-forwarded-*` added, HTTP/1.1 on the wire.
pub fn rewrite(
    req: &mut Request<UpstreamBody>,
    upstream: &Upstream,
    downstream: &Downstream<'_>,
) -> Result<(), http::Error> {
    let original = req.uri().clone();
    let path_and_query = match downstream.normalized_path {
        // Cloning a PathAndQuery shares its bytes: the common case allocates nothing.
        None => original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Some(path) => match original.query() {
            Some(q) => PathAndQuery::try_from(format!("{path}?{q}"))?,
            None => PathAndQuery::try_from(path)?,
        },
    };
    *req.uri_mut() = upstream_uri(upstream, path_and_query)?;

    let headers = req.headers_mut();
    let upgrade = if downstream.upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    // Only the proxy marks shadows; a client's marker could make a service skip a real write.
    headers.remove(&X_STRANGLER_SHADOW);
    headers.insert(&X_REQUEST_ID, downstream.request_id.clone());
    if let Some(protocol) = upgrade {
        // The one hop-by-hop exchange a proxy must pass on: the protocol switch itself.
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // HTTP/2 clients send :authority instead of Host; keep the host the client asked for.
    let host = match headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => original
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if let Some(host) = host {
        headers.insert(&X_FORWARDED_HOST, host.clone());
        headers.insert(header::HOST, host);
    }
    let ip = downstream.client.ip().to_string();
    let forwarded_for = if headers.contains_key(&X_FORWARDED_FOR) {
        // Every prior line, in order, then this hop: a list split over lines is one list.
        let mut v = Vec::new();
        for prior in headers.get_all(&X_FORWARDED_FOR) {
            v.extend_from_slice(prior.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(ip.as_bytes());
        HeaderValue::from_bytes(&v)
    } else {
        HeaderValue::from_str(&ip)
    };
    if let Ok(v) = forwarded_for {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// A bodiless copy of a rewritten request, to send again elsewhere (fallback, shadow).
pub fn template_of<B>(req: &Request<B>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// A request built from a template and a body, pointed at `upstream`.
pub fn from_template(
    template: &Request<()>,
    body: UpstreamBody,
    upstream: &Upstream,
) -> Result<Request<UpstreamBody>, http::Error> {
    let mut req = Request::new(body);
    *req.method_mut() = template.method().clone();
    *req.uri_mut() = template.uri().clone();
    *req.headers_mut() = template.headers().clone();
    retarget(&mut req, upstream)?;
    Ok(req)
}

/// Points an already rewritten request at another upstream (fallback, shadow), keeping its
/// path and query.
fn retarget<B>(req: &mut Request<B>, upstream: &Upstream) -> Result<(), http::Error> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = upstream_uri(upstream, path_and_query)?;
    Ok(())
}

fn upstream_uri(upstream: &Upstream, path_and_query: PathAndQuery) -> Result<Uri, http::Error> {
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority().clone())
        .path_and_query(path_and_query)
        .build()
}

/// Sends `req` and waits for the response headers, at most the service's `request_timeout`.
pub async fn send(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, Failure> {
    let timeout: Duration = upstream.config.request_timeout;
    match tokio::time::timeout(timeout, upstream.client.request(req)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(Failure {
            kind: classify(&e),
            detail: describe(&e),
        }),
        Err(_) => Err(Failure {
            kind: FailureKind::Timeout,
            detail: format!("no response headers within {timeout:?}"),
        }),
    }
}

/// Cleans an upstream response for the client: hop-by-hop headers go, except on a protocol
/// switch, where `Upgrade` and `Connection` are the point.
pub fn clean_response(response: &mut Response<Incoming>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(response.headers_mut());
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> FailureKind {
    if e.is_connect() {
        return FailureKind::Connect;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_body_write_aborted() || h.is_user() {
                return FailureKind::ClientAborted;
            }
            if h.is_parse() || h.is_parse_status() {
                return FailureKind::Protocol;
            }
            if h.is_timeout() {
                return FailureKind::Timeout;
            }
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return FailureKind::Reset;
            }
        }
        if s.downcast_ref::<io::Error>().is_some() {
            return FailureKind::Reset;
        }
        source = s.source();
    }
    FailureKind::Reset
}

fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("traceparent", "00-abc-def-01".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["traceparent", "content-type"]);
    }
}
