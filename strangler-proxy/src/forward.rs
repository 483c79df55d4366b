//! Sending one request to one upstream: the rewrite a request needs on its way through a proxy
//! (RFC 9110 §7.6: hop-by-hop headers, `x-forwarded-*`), the call itself with its deadline, and
//! the classification of failures. Bodies are never buffered: both are streamed as they come.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;

use crate::headers::{
    FORWARDED, HOP_BY_HOP, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
    X_STRANGLER_SHADOW,
};
use crate::pool::{self, Reuse, SendError};
use crate::upstream::{Upstream, UpstreamBody};

/// A response from a service, its body streamed from a pooled connection.
pub type UpstreamResponse = Response<pool::Body>;

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

/// Removes hop-by-hop headers, including those the `Connection` header names. Driven by what
/// is present: one pass over the names finds them, and a block that has none (the usual
/// request and response) costs no removal at all.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    Scan::of(headers).strip(headers);
}

/// Which of the names the rewrite acts on a header block holds, found in one pass over it.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    /// Bit `i` set: `HOP_BY_HOP[i]` is present; bit 8: `Upgrade`.
    hop_by_hop: u16,
    shadow_marker: bool,
    x_forwarded_for: bool,
    forwarded: bool,
    cookie: bool,
}

/// After the bits of the eight `HOP_BY_HOP` names.
const UPGRADE_BIT: u16 = 1 << 8;

impl Scan {
    fn of(headers: &HeaderMap) -> Self {
        let mut scan = Self::default();
        for name in headers.keys() {
            // `as_str` of a standard name is a table lookup; the match compiles to a switch on
            // the length and one comparison.
            match name.as_str() {
                "connection" => scan.hop_by_hop |= 1 << 0,
                "keep-alive" => scan.hop_by_hop |= 1 << 1,
                "proxy-connection" => scan.hop_by_hop |= 1 << 2,
                "proxy-authenticate" => scan.hop_by_hop |= 1 << 3,
                "proxy-authorization" => scan.hop_by_hop |= 1 << 4,
                "te" => scan.hop_by_hop |= 1 << 5,
                "trailer" => scan.hop_by_hop |= 1 << 6,
                "transfer-encoding" => scan.hop_by_hop |= 1 << 7,
                "upgrade" => scan.hop_by_hop |= UPGRADE_BIT,
                "x-strangler-shadow" => scan.shadow_marker = true,
                "x-forwarded-for" => scan.x_forwarded_for = true,
                "forwarded" => scan.forwarded = true,
                "cookie" => scan.cookie = true,
                _ => {}
            }
        }
        scan
    }

    /// Removes the hop-by-hop headers found, and the names `Connection` lists.
    fn strip(self, headers: &mut HeaderMap) {
        if self.hop_by_hop == 0 {
            return;
        }
        if self.hop_by_hop & 1 != 0 {
            // Names listed in Connection are hop-by-hop too; collect them before it goes.
            let listed: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
                .collect();
            for name in &listed {
                headers.remove(name);
            }
        }
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            if self.hop_by_hop & (1 << i) != 0 {
                headers.remove(name);
            }
        }
        if self.hop_by_hop & UPGRADE_BIT != 0 {
            headers.remove(header::UPGRADE);
        }
    }
}

/// What the rewrite needs to know about the downstream side.
pub struct Downstream<'a> {
    /// The client, rendered once per connection.
    pub client: &'a ClientHop,
    /// The path routing used (normalized); `None` when the original path already was.
    pub normalized_path: Option<&'a str>,
    /// Keep `Upgrade` and `Connection: upgrade`.
    pub upgrade: bool,
    /// The request id, set after hop-by-hop removal so `Connection` cannot name it away.
    pub request_id: &'a HeaderValue,
}

/// Rewrites a downstream request for an upstream: origin-form target with exactly the routed
/// path, then the header steps below in this order, then HTTP/1.1 on the wire. One pass over
/// the header names finds what the steps act on; a step whose header is absent costs nothing.
///
/// 1. [`strip_hop_by_hop`] (keeping a WebSocket upgrade aside), [`drop_shadow_marker`],
///    the request id, the upgrade restored: connection-level headers go first, so no later
///    step's header can be named away by `Connection`.
/// 2. [`set_host`]: the target's authority wins over `Host` (RFC 9112 §3.2.2, RFC 9113
///    §8.3.1); the `host` later steps report is this one.
/// 3. [`append_x_forwarded_for`], [`append_forwarded`] (RFC 7239), [`set_x_forwarded`]
///    (`-proto`, `-host`): this hop added after every prior one.
/// 4. [`join_cookies`]: HTTP/2's split `cookie` fields become one line (RFC 9113 §8.2.3).
pub fn rewrite(
    req: &mut Request<UpstreamBody>,
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
    *req.uri_mut() = upstream_uri(path_and_query);

    let headers = req.headers_mut();
    let scan = Scan::of(headers);
    let upgrade = if downstream.upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    scan.strip(headers);
    if scan.shadow_marker {
        drop_shadow_marker(headers);
    }
    // The headers below, added at most once each, without growing the table twice.
    headers.reserve(6);
    headers.insert(&X_REQUEST_ID, downstream.request_id.clone());
    if let Some(protocol) = upgrade {
        // The one hop-by-hop exchange a proxy must pass on: the protocol switch itself.
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let host = set_host(headers, &original);
    add_x_forwarded_for(headers, downstream.client, scan.x_forwarded_for);
    add_forwarded(headers, downstream.client, host.as_ref(), scan.forwarded);
    set_x_forwarded(headers, host);
    if scan.cookie {
        join_cookies(headers);
    }
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// Only the proxy marks shadows; a client's marker could make a service skip a real write.
pub fn drop_shadow_marker(headers: &mut HeaderMap) {
    headers.remove(&X_STRANGLER_SHADOW);
}

/// Sets `Host` to the authority of the request target when it has one (absolute form in
/// HTTP/1.1, RFC 9112 §3.2.2; `:authority` in HTTP/2, RFC 9113 §8.3.1), without userinfo;
/// otherwise keeps the client's `Host`. Returns the host the upstream gets.
pub fn set_host(headers: &mut HeaderMap, target: &Uri) -> Option<HeaderValue> {
    let from_target = target.authority().and_then(|a| {
        let host = a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h);
        HeaderValue::from_str(host).ok()
    });
    match from_target {
        Some(host) => {
            headers.insert(header::HOST, host.clone());
            Some(host)
        }
        None => headers.get(header::HOST).cloned(),
    }
}

/// This hop's client as the forwarding headers name it, rendered once per connection (the
/// address does not change between its requests), so a request pays for no formatting.
#[derive(Debug)]
pub struct ClientHop {
    /// The client's address.
    pub addr: SocketAddr,
    /// The IP as `x-forwarded-for` lists it.
    ip: HeaderValue,
    /// `for=…;proto=http` (RFC 7239 §4): an IPv6 address bracketed and quoted.
    forwarded: String,
    /// The last `Host` and the whole element rendered for it.
    last_element: Mutex<Option<(Option<HeaderValue>, HeaderValue)>>,
}

impl ClientHop {
    /// Renders `addr` for the forwarding headers.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_string();
        let node = match addr.ip() {
            IpAddr::V4(_) => ip.clone(),
            IpAddr::V6(_) => format!("[{ip}]"),
        };
        let mut forwarded = String::from("for=");
        push_forwarded_value(&mut forwarded, &node);
        forwarded.push_str(";proto=http");
        Self {
            addr,
            ip: HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded,
            last_element: Mutex::new(None),
        }
    }

    /// This hop's `Forwarded` element for a request to `host`. The requests of a connection
    /// nearly always name the same host, so the last element is kept and reused (a value
    /// clone, no formatting); another host renders a new one.
    fn forwarded_element(&self, host: Option<&HeaderValue>) -> HeaderValue {
        // Another request of the connection (HTTP/2) using the cache: render, do not wait.
        let mut last = self.last_element.try_lock().ok();
        if let Some(Some((h, element))) = last.as_deref()
            && h.as_ref() == host
        {
            return element.clone();
        }
        let mut element = String::with_capacity(self.forwarded.len() + 64);
        element.push_str(&self.forwarded);
        if let Some(host) = host.and_then(|h| h.to_str().ok()) {
            element.push_str(";host=");
            push_forwarded_value(&mut element, host);
        }
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(element))
            .unwrap_or_else(|_| HeaderValue::from_static("for=unknown"));
        if let Some(last) = last.as_deref_mut() {
            *last = Some((host.cloned(), value.clone()));
        }
        value
    }
}

/// Appends this hop's client to `x-forwarded-for`, joining every prior line into one list.
pub fn append_x_forwarded_for(headers: &mut HeaderMap, client: &ClientHop) {
    let prior = headers.contains_key(&X_FORWARDED_FOR);
    add_x_forwarded_for(headers, client, prior);
}

/// [`append_x_forwarded_for`] knowing whether the header is there already.
fn add_x_forwarded_for(headers: &mut HeaderMap, client: &ClientHop, prior: bool) {
    if !prior {
        headers.insert(&X_FORWARDED_FOR, client.ip.clone());
        return;
    }
    if let Ok(v) = append_to_list(headers, &X_FORWARDED_FOR, client.ip.as_bytes()) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// Appends this hop to `Forwarded` (RFC 7239 §4) as `for=…;proto=http;host=…`, keeping every
/// prior element; an IPv6 address is bracketed and quoted, any value that is not a token is
/// quoted (§6).
pub fn append_forwarded(headers: &mut HeaderMap, client: &ClientHop, host: Option<&HeaderValue>) {
    let prior = headers.contains_key(&FORWARDED);
    add_forwarded(headers, client, host, prior);
}

/// [`append_forwarded`] knowing whether the header is there already.
fn add_forwarded(
    headers: &mut HeaderMap,
    client: &ClientHop,
    host: Option<&HeaderValue>,
    prior: bool,
) {
    let element = client.forwarded_element(host);
    let value = if prior {
        append_to_list(headers, &FORWARDED, element.as_bytes())
    } else {
        Ok(element)
    };
    if let Ok(v) = value {
        headers.insert(&FORWARDED, v);
    }
}

/// `x-forwarded-proto: http` and `x-forwarded-host` (the host the upstream gets).
pub fn set_x_forwarded(headers: &mut HeaderMap, host: Option<HeaderValue>) {
    if let Some(host) = host {
        headers.insert(&X_FORWARDED_HOST, host);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// Joins several `cookie` fields into one, separated by `; ` (RFC 9113 §8.2.3): an HTTP/2
/// client may send each cookie as its own field, and an HTTP/1.1 server may read only the
/// first `Cookie` line (Rack does).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, field) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(field.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// The lines of a comma-separated list header joined into one, with `item` appended.
fn append_to_list(
    headers: &HeaderMap,
    name: &HeaderName,
    item: &[u8],
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut v = Vec::new();
    for prior in headers.get_all(name) {
        v.extend_from_slice(prior.as_bytes());
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(item);
    HeaderValue::from_bytes(&v)
}

/// Appends a `Forwarded` parameter value: the token itself, or a quoted string (RFC 7239 §4,
/// RFC 9110 §5.6.2, §5.6.4).
fn push_forwarded_value(out: &mut String, value: &str) {
    let tchar = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
    };
    if !value.is_empty() && value.bytes().all(tchar) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// A bodiless copy of a rewritten request, to send again elsewhere (fallback, shadow).
pub fn template_of<B>(req: &Request<B>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// A request built from a template and a body; its origin-form target suits any upstream.
pub fn from_template(template: &Request<()>, body: UpstreamBody) -> Request<UpstreamBody> {
    let mut req = Request::new(body);
    *req.method_mut() = template.method().clone();
    *req.uri_mut() = template.uri().clone();
    *req.headers_mut() = template.headers().clone();
    req
}

/// The request target a service gets: origin-form (RFC 9112 §3.2.1), the connection already
/// names the service.
fn upstream_uri(path_and_query: PathAndQuery) -> Uri {
    Uri::from(path_and_query)
}

/// What [`send_retrying`] got: the answer or the failure, and the failure of a first attempt that was
/// sent again.
pub struct Sent {
    /// The response headers, or why none came.
    pub outcome: Result<UpstreamResponse, Failure>,
    /// The first attempt's failure when the request was sent a second time.
    pub retried: Option<Failure>,
}

/// Sends `req` once and waits for the response headers, at most the service's `request_timeout`.
pub async fn send(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
) -> Result<UpstreamResponse, Failure> {
    let timeout: Duration = upstream.config.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    attempt(upstream, req, Reuse::Pooled, deadline, timeout).await
}

/// Sends `req` and waits for the response headers, at most the service's `request_timeout` in
/// all. With `again` (a template of a request that may be sent twice: safe method, no body),
/// a failure that left the request unanswered before any byte of the answer arrived
/// ([`may_retry`]) is sent once more on a new connection within the same deadline: the usual
/// cause is a pooled connection the service closed as the proxy reused it, which hyper-util's
/// own retry does not cover once the request has been written.
pub async fn send_retrying(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    again: Option<&Request<()>>,
) -> Sent {
    let timeout: Duration = upstream.config.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let first = attempt(upstream, req, Reuse::Pooled, deadline, timeout).await;
    let (Err(failure), Some(template)) = (&first, again) else {
        return Sent {
            outcome: first,
            retried: None,
        };
    };
    if !may_retry(failure) {
        return Sent {
            outcome: first,
            retried: None,
        };
    }
    let body = http_body_util::Empty::new()
        .map_err(Into::into)
        .boxed_unsync();
    let req = from_template(template, body);
    let outcome = attempt(upstream, req, Reuse::Fresh, deadline, timeout).await;
    Sent {
        outcome,
        retried: first.err(),
    }
}

async fn attempt(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    reuse: Reuse,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<UpstreamResponse, Failure> {
    match tokio::time::timeout_at(deadline, upstream.pool.send(req, reuse)).await {
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

/// Whether a failure may be sent again: the connection closed or was reset before any response
/// byte (hyper's "connection closed before message completed", a reset, a cancelled send). A
/// connect failure, a timeout or a malformed answer would only fail again.
pub fn may_retry(failure: &Failure) -> bool {
    failure.kind == FailureKind::Reset
}

/// Cleans an upstream response for the client: hop-by-hop headers go, except on a protocol
/// switch, where `Upgrade` and `Connection` are the point.
pub fn clean_response(response: &mut UpstreamResponse) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(response.headers_mut());
    }
}

fn classify(e: &SendError) -> FailureKind {
    if matches!(e, SendError::Connect(_)) {
        return FailureKind::Connect;
    }
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
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

    /// The element kept for the last host is never given for another.
    #[test]
    fn the_forwarded_element_follows_the_host_of_each_request() {
        let hop = ClientHop::new("10.0.0.9:4000".parse().unwrap());
        let a = HeaderValue::from_static("a.example");
        let b = HeaderValue::from_static("b example");
        for (host, expected) in [
            (Some(&a), "for=10.0.0.9;proto=http;host=a.example"),
            (Some(&a), "for=10.0.0.9;proto=http;host=a.example"),
            (Some(&b), "for=10.0.0.9;proto=http;host=\"b example\""),
            (None, "for=10.0.0.9;proto=http"),
            (Some(&a), "for=10.0.0.9;proto=http;host=a.example"),
        ] {
            assert_eq!(hop.forwarded_element(host), expected);
        }
    }

    /// The scan's bits follow `HOP_BY_HOP`'s order, so `strip` removes what was found.
    #[test]
    fn the_scan_finds_each_hop_by_hop_name_at_its_index() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            assert_eq!(Scan::of(&h).hop_by_hop, 1 << i, "{name}");
            Scan::of(&h).strip(&mut h);
            assert!(!h.contains_key(name), "{name} was not removed");
            assert!(h.contains_key(header::ACCEPT));
        }
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(Scan::of(&h).hop_by_hop, UPGRADE_BIT);
    }

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

    fn values(h: &HeaderMap, name: &HeaderName) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn several_cookie_fields_become_one_line() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1".parse().unwrap());
        h.append(header::COOKIE, "b=2; c=3".parse().unwrap());
        h.append(header::COOKIE, "d=4".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(values(&h, &header::COOKIE), ["a=1; b=2; c=3; d=4"]);
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, "a=1, b".parse().unwrap());
        join_cookies(&mut one);
        assert_eq!(
            values(&one, &header::COOKIE),
            ["a=1, b"],
            "one line is left alone"
        );
        let mut none = HeaderMap::new();
        join_cookies(&mut none);
        assert!(none.is_empty());
    }

    /// One line per case: the request target, the client's Host, then the Host sent upstream.
    #[test]
    fn the_target_authority_replaces_host() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("/api/users", Some("shop.example"), Some("shop.example")),
            ("/api/users", None, None),
            (
                "http://target.example:8080/api",
                Some("other.example"),
                Some("target.example:8080"),
            ),
            ("http://target.example/api", None, Some("target.example")),
            (
                "http://user:pw@target.example/api",
                Some("x"),
                Some("target.example"),
            ),
        ];
        for (target, host, expected) in cases {
            let mut h = HeaderMap::new();
            if let Some(host) = host {
                h.insert(header::HOST, host.parse().unwrap());
            }
            let uri: Uri = target.parse().unwrap();
            let returned = set_host(&mut h, &uri);
            let sent = h.get(header::HOST).map(|v| v.to_str().unwrap());
            assert_eq!(sent, *expected, "{target} with Host {host:?}");
            assert_eq!(returned.as_ref().map(|v| v.to_str().unwrap()), *expected);
        }
    }

    fn hop(ip: &str) -> ClientHop {
        ClientHop::new(SocketAddr::new(ip.parse().unwrap(), 1234))
    }

    #[test]
    fn x_forwarded_for_appends_this_hop_to_every_prior_line() {
        let mut h = HeaderMap::new();
        append_x_forwarded_for(&mut h, &hop("10.0.0.9"));
        assert_eq!(values(&h, &X_FORWARDED_FOR), ["10.0.0.9"]);
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.append(&X_FORWARDED_FOR, "2.2.2.2, 3.3.3.3".parse().unwrap());
        append_x_forwarded_for(&mut h, &hop("::1"));
        assert_eq!(
            values(&h, &X_FORWARDED_FOR),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, ::1"]
        );
    }

    /// One line per case: prior `Forwarded` lines, client, host, then the line sent upstream.
    #[test]
    fn forwarded_appends_this_hop_quoting_what_is_not_a_token() {
        let cases: &[(&[&str], &str, Option<&str>, &str)] = &[
            (&[], "10.0.0.9", None, "for=10.0.0.9;proto=http"),
            (
                &[],
                "10.0.0.9",
                Some("shop.example"),
                "for=10.0.0.9;proto=http;host=shop.example",
            ),
            (
                &[],
                "2001:db8::7",
                Some("127.0.0.1:8080"),
                "for=\"[2001:db8::7]\";proto=http;host=\"127.0.0.1:8080\"",
            ),
            (
                &["for=192.0.2.43", "for=198.51.100.17;by=203.0.113.60"],
                "10.0.0.9",
                None,
                "for=192.0.2.43, for=198.51.100.17;by=203.0.113.60, for=10.0.0.9;proto=http",
            ),
            (
                &["for=\"_gazonk\""],
                "10.0.0.9",
                Some("a\"b"),
                "for=\"_gazonk\", for=10.0.0.9;proto=http;host=\"a\\\"b\"",
            ),
        ];
        for (prior, client, host, expected) in cases {
            let mut h = HeaderMap::new();
            for p in *prior {
                h.append(&FORWARDED, p.parse().unwrap());
            }
            let host = host.map(|v| HeaderValue::from_str(v).unwrap());
            append_forwarded(&mut h, &hop(client), host.as_ref());
            assert_eq!(values(&h, &FORWARDED), [*expected], "{prior:?} {client}");
        }
    }

    #[test]
    fn a_client_shadow_marker_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(&X_STRANGLER_SHADOW, "1".parse().unwrap());
        drop_shadow_marker(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn x_forwarded_proto_and_host_are_set() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_HOST, "forged".parse().unwrap());
        set_x_forwarded(&mut h, Some(HeaderValue::from_static("shop.example")));
        assert_eq!(values(&h, &X_FORWARDED_HOST), ["shop.example"]);
        assert_eq!(values(&h, &X_FORWARDED_PROTO), ["http"]);
    }
}
