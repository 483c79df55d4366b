//! `routes.toml`: parse → validate → the validated [`Config`] that `routes` compiles into a live
//! table.
//!
//! `file` holds what the file may contain, `validate` turns it into the `model`, and `error`
//! says what is wrong and where. `syntax` reads the TOML: every syntax error, unknown key and
//! wrong type, each named by its key; the semantic errors of what remains are collected too, so
//! an operator fixes a file in one pass. Every error carries the line and column of the value it
//! is about.

mod error;
mod file;
mod model;
mod syntax;
mod validate;

use std::path::Path;

use sha2::{Digest, Sha256};

use error::Lines;
pub use error::{ConfigError, ConfigErrors};
pub use file::{ProxySection, RouteEntry, RoutesFile, ServiceEntry, WeightValue};
pub use model::{Config, ProxySettings, RouteConfig, ServiceConfig, Stage, StickyKey};
pub use validate::parse_duration;

/// Defaults an operator may leave out of `[proxy]` and `[services.*]`.
pub mod defaults {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    /// The public side.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// The admin side: loopback, never public unless the operator says so.
    pub const ADMIN: &str = "127.0.0.1:9901";
    /// Time to establish a TCP connection to a service.
    pub const CONNECT_TIMEOUT: &str = "1s";
    /// Time from sending a request until the service's response headers arrive.
    pub const REQUEST_TIMEOUT: &str = "30s";
    /// Idle pooled connections are closed after this; shorter than common upstream keep-alive
    /// timeouts (gunicorn's 2 s, Node's and Apache's 5 s) so the proxy rarely reuses a connection
    /// the upstream is closing. A safe, bodiless request that meets one anyway is sent again on a
    /// new connection; a write cannot be, which is why this stays below 2 s.
    pub const IDLE_TIMEOUT: &str = "1500ms";
    /// Consecutive failures of a service (no answer, or 502–504) that eject it (Envoy's
    /// `consecutive_5xx` default).
    pub const OUTLIER_FAILURES: i64 = 5;
    /// How long an ejected service is left alone before one probe request is let through.
    pub const OUTLIER_COOLDOWN: &str = "10s";
    /// How long SIGTERM waits for in-flight requests.
    pub const DRAIN_TIMEOUT: &str = "30s";
    /// Longest request target accepted before 414.
    pub const MAX_URI_BYTES: i64 = 16 * 1024;
    /// Largest total of request header names and values accepted before 431.
    pub const MAX_HEADER_BYTES: i64 = 64 * 1024;
    /// Shadow requests in flight at once; more are dropped and counted.
    pub const SHADOW_CONCURRENCY: i64 = 64;
    /// Longest a write waits behind a `hold_writes` fence before 503 (reference §7).
    pub const HOLD_TIMEOUT: &str = "5s";
    /// Most requests held behind fences at once; more get 503 at once.
    pub const HOLD_MAX: i64 = 10_000;

    /// Shortest timeout: below a millisecond a timer cannot tell it from zero.
    pub const TIMEOUT_MIN: Duration = Duration::from_millis(1);
    /// Longest timeout: anything longer is a typo, and keeping every deadline this short keeps
    /// `Instant + timeout` far from overflowing.
    pub const TIMEOUT_MAX: Duration = Duration::from_secs(3600);
    /// Longest grace or drain period: a shutdown or a hand-over that waits longer is stuck.
    pub const GRACE_MAX: Duration = Duration::from_secs(600);

    /// The range every duration key is checked against, chosen by its name so that a key added
    /// later is bounded without a line of its own: `*drain*` and `*grace*` keys 0..=10m (zero
    /// means do not wait), every other duration (timeouts, intervals) 1ms..=1h.
    pub fn duration_range(key: &str) -> RangeInclusive<Duration> {
        if key.contains("drain") || key.contains("grace") {
            Duration::ZERO..=GRACE_MAX
        } else {
            TIMEOUT_MIN..=TIMEOUT_MAX
        }
    }
    /// Client connections per listener; at the cap the oldest idle one is closed, never the
    /// new one. Also bounded by half the descriptor limit (the rest is for upstreams).
    pub const MAX_CONNECTIONS: i64 = 10_000;
    /// A connection that sends nothing this long after it is accepted is closed.
    pub const FIRST_BYTE_TIMEOUT: &str = "10s";
    /// A request head still incomplete this long after its first byte closes the connection
    /// (slowloris).
    pub const HEADER_READ_TIMEOUT: &str = "30s";
    /// An idle client connection is closed after this: longer than the idle timeouts of the
    /// load balancers in front (ALB 60 s, nginx 60 s), so the balancer, not the proxy, closes
    /// first and never sends on a connection the proxy is closing (a 502).
    pub const CLIENT_IDLE_TIMEOUT: &str = "75s";
    /// How long SIGTERM keeps accepting and serving (with `Connection: close`, `/readyz` 503)
    /// so balancers notice before the listener closes.
    pub const DRAIN_GRACE: &str = "5s";
}

/// A file read from disk and validated, with the digest `/routes` shows.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
    /// What the file allows but an operator should hear about (`check` prints them).
    pub warnings: ConfigErrors,
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads, parses and validates `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let bytes = read(path)?;
    from_bytes(path, bytes)
}

/// Reads the file's bytes, or says why it cannot.
pub fn read(path: &Path) -> Result<Vec<u8>, ConfigErrors> {
    std::fs::read(path).map_err(|e| ConfigErrors {
        file: path.display().to_string(),
        errors: vec![ConfigError {
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
        }],
    })
}

/// Parses and validates the bytes of the file at `path`.
pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Loaded, ConfigErrors> {
    let file = path.display().to_string();
    let sha256 = sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|e| {
        let text = String::from_utf8_lossy(e.as_bytes());
        let (line, column) = Lines::new(&text).position(e.utf8_error().valid_up_to());
        ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                line,
                column,
                message: "the file is not valid UTF-8".into(),
            }],
        }
    })?;
    let config = parse(&text).map_err(|errors| ConfigErrors {
        file: file.clone(),
        errors,
    })?;
    let warnings = ConfigErrors {
        errors: validate::warnings(&text, &config),
        file,
    };
    Ok(Loaded {
        config,
        sha256,
        warnings,
    })
}

/// The admin listener's address as far as `text` tells it, even when the file has errors
/// elsewhere (read with the same recovering TOML parse as [`parse`]): its `[proxy] admin`,
/// else the default when the whole file parsed; `None` when the key holds no address or a
/// syntax error may hide it. The operator scripts use it to reach a proxy whose file was
/// broken after it loaded.
pub fn admin_address(text: &str) -> Option<std::net::SocketAddr> {
    match syntax::proxy_key(text, "admin") {
        syntax::ProxyKey::String(admin) => admin.parse().ok(),
        syntax::ProxyKey::Absent => defaults::ADMIN.parse().ok(),
        syntax::ProxyKey::NotAString | syntax::ProxyKey::Unknown => None,
    }
}

/// Parses and validates `text`, returning every error found, in file order.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let parsed = syntax::parse(text);
    let mut errors = parsed.errors;
    if let Some(file) = parsed.file {
        match validate::validate(text, file) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(more) => errors.extend(more),
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    Err(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_address_is_read_from_a_file_with_errors_elsewhere() {
        let broken = "[proxy]\nadmin = \"127.0.0.1:9999\"\ndefault = \"m\"\nwieght = 3\n\
                      [services.m]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/a\"\n\
                      service = \"nope\"\nweight = 400\n";
        assert!(parse(broken).is_err());
        assert_eq!(
            admin_address(broken),
            Some("127.0.0.1:9999".parse().unwrap())
        );
        let unset = "[proxy]\ndefault = \"m\"\n[[routes]]\nprefix = \"/a\"\nweight = \"x\"\n";
        assert_eq!(admin_address(unset), Some(defaults::ADMIN.parse().unwrap()));
        assert_eq!(admin_address("[proxy]\nadmin = \"nowhere\"\n"), None);
        assert_eq!(admin_address("[proxy]\nadmin = 9901\n"), None);
        // A syntax error may hide the key: no guess at the default.
        assert_eq!(admin_address("[proxy\nadmin = \n"), None);
        let hidden = "[proxy]\nlisten = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:7\"\nx = [\n";
        assert_eq!(admin_address(hidden), Some("127.0.0.1:7".parse().unwrap()));
    }
}
