//! Response builders with the exact headers the original Koa app sent.
//!
//! Every body gets an explicit `content-length`, so a HEAD answer keeps it after its body is
//! stripped, whether the router is served by hyper or called directly with `oneshot`.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
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

/// An empty answer with no content headers (Koa's answer to a `null` body).
pub fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Adds the `Allow` header.
pub fn with_allow(mut response: Response, allow: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The answer to HEAD: the same status and headers, no body.
pub fn strip_body(response: Response) -> Response {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Body::empty())
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
