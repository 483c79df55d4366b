//! HTTP GET for the admin endpoint and the Prometheus API, over `ureq` without TLS: loopback or
//! in-cluster `http://` only.
//!
//! Every error names the URL and what failed, since the scripts print it as the reason a step
//! could not be judged.

use std::io;
use std::time::Duration;

/// The largest body read: a `/metrics` page of many routes, or a large Prometheus answer.
const BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// How much of an unexpected answer's body an error quotes.
const QUOTED_BODY_CHARS: usize = 300;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://host:port/path`.
    #[error("{url}: {reason}")]
    Url {
        /// As given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Connecting, sending or reading failed, or took longer than the timeout.
    #[error("GET {url}: {source}")]
    Io {
        /// As given.
        url: String,
        /// Why (`TimedOut` for a timeout, `ConnectionRefused` when nothing listens).
        source: io::Error,
    },
    /// The answer is not HTTP, or its body not text.
    #[error("GET {url}: malformed response: {reason}")]
    Malformed {
        /// As given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server answered with a status other than 200.
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        /// As given.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// GETs `url` (`http://host:port/path?query`, or a bare `host:port`) and returns the body of a
/// 200 answer; connecting, and each of sending and receiving, may take up to `timeout`.
pub fn get(url: &str, timeout: Duration) -> Result<String, FetchError> {
    let target = http_url(url)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // A proxy from the environment would stand between the scripts and a loopback admin
        // listener; redirects are not part of either API.
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent("strangler-ops")
        .timeout_connect(Some(timeout))
        .timeout_send_request(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_recv_body(Some(timeout))
        .build()
        .into();
    let failed = |e| failure(url, timeout, e);
    let mut response = agent.get(&target).call().map_err(failed)?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_vec()
        .map_err(failed)?;
    if status != 200 {
        return Err(FetchError::Status {
            url: url.to_string(),
            status,
            body: String::from_utf8_lossy(&body)
                .chars()
                .take(QUOTED_BODY_CHARS)
                .collect(),
        });
    }
    String::from_utf8(body).map_err(|_| FetchError::Malformed {
        url: url.to_string(),
        reason: "body is not UTF-8".into(),
    })
}

/// `url` as an `http://` URL: a bare `host:port` gets the scheme, any other scheme is refused.
fn http_url(url: &str) -> Result<String, FetchError> {
    let err = |reason| FetchError::Url {
        url: url.to_string(),
        reason,
    };
    let full = if url.starts_with("http://") {
        url.to_string()
    } else if url.contains("://") {
        return Err(err("only http:// URLs are supported"));
    } else {
        format!("http://{url}")
    };
    match full.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(full),
        Ok(_) => Err(err("no host")),
        Err(_) => Err(err("not a URL")),
    }
}

/// What went wrong on the way, in the terms of [`FetchError`].
fn failure(url: &str, timeout: Duration, e: ureq::Error) -> FetchError {
    let io = |source| FetchError::Io {
        url: url.to_string(),
        source,
    };
    match e {
        ureq::Error::Timeout(phase) => io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?} (timed out in {phase})"),
        )),
        ureq::Error::Io(source) => io(source),
        ureq::Error::HostNotFound => io(io::Error::new(
            io::ErrorKind::NotFound,
            "the host has no address",
        )),
        e @ (ureq::Error::Protocol(_)
        | ureq::Error::LargeResponseHeader(..)
        | ureq::Error::BodyExceedsLimit(_)) => FetchError::Malformed {
            url: url.to_string(),
            reason: e.to_string(),
        },
        e => io(e.into_io()),
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    use super::*;

    /// Answers one connection with `response` once the request's headers are in; returns the
    /// server's `host:port`.
    fn serve_once(response: &'static [u8]) -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = reader.get_mut().write_all(response);
        });
        (addr, server)
    }

    #[test]
    fn urls_are_http_and_a_bare_address_means_http() {
        assert_eq!(
            http_url("http://127.0.0.1:9901/metrics").unwrap(),
            "http://127.0.0.1:9901/metrics"
        );
        assert_eq!(http_url("127.0.0.1:9901").unwrap(), "http://127.0.0.1:9901");
        assert!(http_url("https://x:1/").is_err());
        assert!(http_url("http:///metrics").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let (addr, server) = serve_once(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n",
        );
        let body = get(&format!("http://{addr}/metrics"), Duration::from_secs(5));
        assert_eq!(body.unwrap(), "Wikipedia");
        server.join().unwrap();
    }

    #[test]
    fn a_status_other_than_200_is_an_error_naming_url_status_and_body() {
        let (addr, server) =
            serve_once(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\n\r\ndraining");
        let url = format!("http://{addr}/routes");
        let e = get(&url, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.to_string(), format!("GET {url}: HTTP 503: draining"));
        server.join().unwrap();
    }

    #[test]
    fn a_refused_connection_names_the_url() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let url = format!("http://{addr}/metrics");
        let e = get(&url, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&e, FetchError::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused),
            "{e:?}"
        );
        assert!(e.to_string().starts_with(&format!("GET {url}: ")), "{e}");
    }

    #[test]
    fn a_silent_server_times_out_with_the_url_and_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let e = get(&url, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(&e, FetchError::Io { source, .. } if source.kind() == io::ErrorKind::TimedOut),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("GET {url}: no answer within 200ms")),
            "{e}"
        );
        drop(listener);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_component("sum by (le) (x{route=\"a\"}[5s])"),
            "sum%20by%20%28le%29%20%28x%7Broute%3D%22a%22%7D%5B5s%5D%29"
        );
    }
}
