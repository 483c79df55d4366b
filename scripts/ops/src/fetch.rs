//! A minimal HTTP/1.1 GET over a plain TCP connection, for the admin endpoint and the
//! Prometheus API: loopback or in-cluster `http://` only, so a full client (and a TLS stack
//! to build) would buy nothing.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

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
    /// Connecting, sending or reading failed.
    #[error("GET {url}: {source}")]
    Io {
        /// As given.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The answer is not HTTP.
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

/// An `http://` URL split into what a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `host:port`.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    /// Reads `http://host:port/path?query`; a bare `host:port` means `http://host:port/`.
    pub fn parse(url: &str) -> Result<Url, FetchError> {
        let err = |reason| FetchError::Url {
            url: url.to_string(),
            reason,
        };
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.contains("://") {
            return Err(err("only http:// URLs are supported"));
        } else {
            url
        };
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(err("no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            target: target.to_string(),
        })
    }
}

/// GETs `url` and returns the body of a 200 answer.
pub fn get(url: &str, timeout: Duration) -> Result<String, FetchError> {
    let parsed = Url::parse(url)?;
    let io = |source| FetchError::Io {
        url: url.to_string(),
        source,
    };
    let malformed = |reason: String| FetchError::Malformed {
        url: url.to_string(),
        reason,
    };
    let addrs: Vec<_> = parsed.authority.to_socket_addrs().map_err(io)?.collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        io(last.unwrap_or_else(|| std::io::Error::other("the host has no address")))
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: strangler-ops\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        parsed.target, parsed.authority
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let head_end = find(&raw, b"\r\n\r\n").ok_or_else(|| malformed("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed(format!("bad status line {status_line:?}")))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(body).map_err(malformed)?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| malformed(format!("body shorter than content-length {n}")))?
            .to_vec()
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| malformed("body is not UTF-8".into()))?;
    if status != 200 {
        return Err(FetchError::Status {
            url: url.to_string(),
            status,
            body: body.chars().take(300).collect(),
        });
    }
    Ok(body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or("chunk size line without CRLF")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("chunk longer than the body")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or("chunk without trailing CRLF")?;
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
    use super::*;

    #[test]
    fn urls_split_into_authority_and_target() {
        assert_eq!(
            Url::parse("http://127.0.0.1:9901/metrics").unwrap(),
            Url {
                authority: "127.0.0.1:9901".into(),
                target: "/metrics".into()
            }
        );
        assert_eq!(Url::parse("127.0.0.1:9901").unwrap().target, "/");
        assert_eq!(
            Url::parse("http://prometheus/api").unwrap().authority,
            "prometheus:80"
        );
        assert!(Url::parse("https://x:1/").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_component("sum by (le) (x{route=\"a\"}[5s])"),
            "sum%20by%20%28le%29%20%28x%7Broute%3D%22a%22%7D%5B5s%5D%29"
        );
    }
}
