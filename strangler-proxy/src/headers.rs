//! Every header name the proxy reads or writes, defined once, and the pure inspections of a
//! header block that routing and forwarding share.
//!
//! The names the proxy adds (`x-request-id`, `x-strangler-*`) are also read back by tests and
//! by the operator scripts: importing them from here makes a rename break the build, not a
//! deployment.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`: the client's, or one the proxy adds (32 hex digits).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-strangler-backend`: which service answered, when `[proxy] backend_header = true`.
pub static X_STRANGLER_BACKEND: HeaderName = HeaderName::from_static("x-strangler-backend");
/// `x-strangler-shadow: 1`: marks the copy of a request a service receives as a shadow, so it
/// can tell them apart. Only the proxy sets it; a client's is removed.
pub static X_STRANGLER_SHADOW: HeaderName = HeaderName::from_static("x-strangler-shadow");
/// `x-forwarded-for`: every client address the request passed, this hop's last.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`: the scheme the client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`: the host the client asked for.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `forwarded` (RFC 7239): every hop as `for=…;proto=…;host=…`, this hop's element last.
pub static FORWARDED: HeaderName = header::FORWARDED;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), removed both ways
/// together with those `Connection` names and `Upgrade`.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether the request asks to switch to WebSocket, the one upgrade the proxy tunnels. Others
/// are dropped as hop-by-hop: an `h2c` upgrade tunnelled to a backend would let the client
/// speak HTTP/2 straight to it for any path, past routing, normalization and limits.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| has_token(v, b"websocket"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, b"upgrade"))
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive).
pub fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!is_upgrade(&h));
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_upgrade(&h));
    }

    #[test]
    fn only_websocket_counts_as_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        h.insert(
            header::CONNECTION,
            "Upgrade, HTTP2-Settings".parse().unwrap(),
        );
        assert!(!is_upgrade(&h));
    }
}
