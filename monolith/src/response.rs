//! Response builders with the exact headers the original Koa app sent.
//!
//! Every body gets an explicit `content-length`, so a HEAD answer keeps it after its body is
//! stripped, whether the router is served by hyper or called directly with `oneshot`. An answer
//! without a body sends no `content-length` at all, as Koa did (RFC 9110 §8.6 forbids one in a
//! 204).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::{Frame, SizeHint};
use serde::Serialize;

/// `content-type` of every JSON body.
pub const JSON: &str = "application/json; charset=utf-8";
/// `content-type` of every text body.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A compact JSON body; a value that cannot be serialized becomes a 500 rather than a panic.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(status, JSON, Bytes::from(body)),
        Err(err) => {
            tracing::error!(%err, "cannot serialize a response body");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// A JSON `{"error": message}` body.
pub fn error(status: StatusCode, message: &str) -> Response {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    let body = serde_json::to_vec(&ErrorBody { error: message })
        .unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec());
    with_body(status, JSON, Bytes::from(body))
}

/// A plain-text body.
pub fn text(status: StatusCode, body: &'static str) -> Response {
    with_body(status, TEXT, Bytes::from_static(body.as_bytes()))
}

/// Koa's answer when no handler set a body (404, 405, 501): the status's reason phrase as
/// text. Koa filled it in only when sending, after skipping HEAD, so a HEAD answer of this
/// kind has no content headers at all (see [`strip_body`]).
pub fn status_text(status: StatusCode) -> Response {
    let mut response = text(status, status.canonical_reason().unwrap_or(""));
    response.extensions_mut().insert(StatusText);
    response
}

/// Marks a [`status_text`] answer.
#[derive(Clone, Copy, Debug)]
struct StatusText;

/// An empty answer with no content headers (Koa's answer to a `null` body).
pub fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(no_body());
    *response.status_mut() = status;
    response
}

/// Adds an `Allow` header line per method, as koa-router did.
pub fn with_allow(mut response: Response, methods: &[&'static str]) -> Response {
    let headers = response.headers_mut();
    for method in methods {
        headers.append(header::ALLOW, HeaderValue::from_static(method));
    }
    response
}

/// The answer to HEAD: the same status and headers, no body; a [`status_text`] answer also
/// loses its content headers, as it did in Koa.
pub fn strip_body(response: Response) -> Response {
    let (mut parts, _) = response.into_parts();
    if parts.extensions.get::<StatusText>().is_some() {
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    Response::from_parts(parts, no_body())
}

/// A body that is over before it starts and does not state its size.
///
/// axum's router writes `content-length` from a body's exact size hint whenever the header is
/// missing, so `Body::empty()` (exactly 0) would put `content-length: 0` on every 204 and on
/// HEAD answers we strip of content headers, and hyper sends a header it is given even where it
/// would never add one. Without an exact hint axum adds nothing, and hyper, seeing the body
/// already ended, writes no length either.
fn no_body() -> Body {
    Body::new(NoBody)
}

struct NoBody;

impl http_body::Body for NoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, length);
    response
}
