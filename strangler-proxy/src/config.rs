//! `routes.toml`: file-side types, validation that collects every error, and the validated
//! [`Config`] that `routes` compiles into a live table.
//!
//! Parse errors (TOML syntax, unknown keys, wrong types) stop at the first one because the file
//! cannot be read further; every semantic error after that is collected, so an operator fixes a
//! file in one pass. Every error carries the line and column of the value it is about.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, Method};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::path;

/// Defaults an operator may leave out of `[proxy]` and `[services.*]`.
pub mod defaults {
    /// The public side.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// The admin side: loopback, never public unless the operator says so.
    pub const ADMIN: &str = "127.0.0.1:9901";
    /// Time to establish a TCP connection to a service.
    pub const CONNECT_TIMEOUT: &str = "1s";
    /// Time from sending a request until the service's response headers arrive.
    pub const REQUEST_TIMEOUT: &str = "30s";
    /// Idle pooled connections are closed after this; shorter than common upstream keep-alive
    /// timeouts (Node's is 5 s) so the proxy never reuses a connection the upstream is closing.
    pub const IDLE_TIMEOUT: &str = "4s";
    /// How long SIGTERM waits for in-flight requests.
    pub const DRAIN_TIMEOUT: &str = "30s";
    /// Longest request target accepted before 414.
    pub const MAX_URI_BYTES: i64 = 16 * 1024;
    /// Largest total of request header names and values accepted before 431.
    pub const MAX_HEADER_BYTES: i64 = 64 * 1024;
    /// Shadow requests in flight at once; more are dropped and counted.
    pub const SHADOW_CONCURRENCY: i64 = 64;
}

// ---------------------------------------------------------------------------------------------
// File-side types: exactly what `routes.toml` may contain.

/// The whole file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// `[proxy]`: listeners and global behaviour.
    pub proxy: Option<Spanned<ProxySection>>,
    /// `[services.NAME]`: where each backend lives.
    #[serde(default)]
    pub services: BTreeMap<String, Spanned<ServiceEntry>>,
    /// `[[routes]]`: prefixes peeled off the default.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteEntry>>,
}

/// `[proxy]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    listen: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    default: Option<Spanned<String>>,
    #[serde(default)]
    backend_header: bool,
    #[serde(default)]
    ignore_case: bool,
    access_log: Option<bool>,
    override_header: Option<Spanned<String>>,
    shadow_concurrency: Option<Spanned<i64>>,
    drain_timeout: Option<Spanned<String>>,
    max_uri_bytes: Option<Spanned<i64>>,
    max_header_bytes: Option<Spanned<i64>>,
}

/// `[services.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    url: Spanned<String>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    name: Option<Spanned<String>>,
    prefix: Spanned<String>,
    service: Spanned<String>,
    weight: Spanned<WeightValue>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    sticky: Option<Spanned<String>>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    fallback: bool,
    shadow_methods: Option<Spanned<Vec<Spanned<String>>>>,
    shadow_ignore: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    shadow_noise_check: bool,
}

/// A `weight` value: any integer parses (range is checked with the other errors), anything else
/// is refused with a message that names the key, as operators type `"50"` more often than not.
#[derive(Debug, Clone, Copy)]
pub struct WeightValue(i64);

impl<'de> Deserialize<'de> for WeightValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WeightVisitor;
        impl Visitor<'_> for WeightVisitor {
            type Value = WeightValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer 0..=100")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WeightValue, E> {
                Ok(WeightValue(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WeightValue, E> {
                Ok(WeightValue(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WeightValue, E> {
                Err(E::custom(format!(
                    "weight: expected an integer 0..=100, found string {v:?}"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<WeightValue, E> {
                Err(E::custom(format!(
                    "weight: expected an integer 0..=100, found float {v}"
                )))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<WeightValue, E> {
                Err(E::custom(format!(
                    "weight: expected an integer 0..=100, found boolean {v}"
                )))
            }
        }
        deserializer.deserialize_any(WeightVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Validated types: everything checked, nothing left as a string that could still be wrong.

/// A file that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// Global settings from `[proxy]`.
    pub proxy: ProxySettings,
    /// Services in name order.
    pub services: Vec<ServiceConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
}

/// `[proxy]`, validated.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Public listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Service that serves whatever no route claims.
    pub default: String,
    /// Add `x-strangler-backend` to responses.
    pub backend_header: bool,
    /// Match prefixes whatever the letter case (for monoliths whose router ignores case).
    pub ignore_case: bool,
    /// One log line per request.
    pub access_log: bool,
    /// Header that lets a client force a backend (off unless set).
    pub override_header: Option<HeaderName>,
    /// Shadow requests in flight at once.
    pub shadow_concurrency: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Longest request target before 414.
    pub max_uri_bytes: usize,
    /// Largest request header block before 431.
    pub max_header_bytes: usize,
}

/// `[services.NAME]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceConfig {
    /// The name routes refer to; also the `backend` metric label.
    pub name: String,
    /// `host:port` of the service.
    pub authority: Authority,
    /// TCP connect budget.
    pub connect_timeout: Duration,
    /// Budget until response headers.
    pub request_timeout: Duration,
    /// Idle pooled connections close after this.
    pub idle_timeout: Duration,
}

/// How a sticky route finds a request's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// `header:NAME`
    Header(HeaderName),
    /// `cookie:NAME`
    Cookie(String),
}

/// One `[[routes]]` entry, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Metric label and `/routes` key.
    pub name: String,
    /// Normalized, segment-aware prefix.
    pub prefix: String,
    /// Service that takes the peeled-off share.
    pub service: String,
    /// Percent of matching requests the service serves.
    pub weight: u8,
    /// Only these methods are peeled off; `None` means all.
    pub methods: Option<Vec<Method>>,
    /// Where a request's stickiness key comes from.
    pub sticky: Option<StickyKey>,
    /// Mirror what the default serves to the service and compare.
    pub shadow: bool,
    /// Retry an idempotent request the service fails on the default.
    pub fallback: bool,
    /// Methods mirrored when shadowing (safe methods unless set).
    pub shadow_methods: Vec<Method>,
    /// JSON pointers ignored when comparing shadow answers.
    pub shadow_ignore: Vec<String>,
    /// Learn noisy fields by asking the default twice.
    pub shadow_noise_check: bool,
}

/// The stage of a route, derived from weight and shadow, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Weight 0, no shadow: extracted but not used.
    Dark,
    /// Weight 0, shadow on: the default serves, the service is compared.
    Shadow,
    /// 0 < weight < 100.
    Canary,
    /// Weight 100.
    Live,
}

impl Stage {
    /// The stage name used in `/routes` and scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dark => "dark",
            Stage::Shadow => "shadow",
            Stage::Canary => "canary",
            Stage::Live => "live",
        }
    }
}

impl RouteConfig {
    /// The derived stage.
    pub fn stage(&self) -> Stage {
        match (self.weight, self.shadow) {
            (0, false) => Stage::Dark,
            (0, true) => Stage::Shadow,
            (100, _) => Stage::Live,
            _ => Stage::Canary,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// One problem in the file, with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The file as named by the operator.
    pub file: String,
    /// In file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}:{}: {}", self.file, e.line, e.column, e.message)?;
        }
        Ok(())
    }
}

/// A file read from disk and validated, with the digest `/routes` shows.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
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
        let (line, column) = line_col(
            &String::from_utf8_lossy(e.as_bytes()),
            e.utf8_error().valid_up_to(),
        );
        ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                line,
                column,
                message: "the file is not valid UTF-8".into(),
            }],
        }
    })?;
    let config = parse(&text).map_err(|errors| ConfigErrors { file, errors })?;
    Ok(Loaded { config, sha256 })
}

/// Parses and validates `text`, returning every error found.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let file: RoutesFile = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        vec![ConfigError {
            line,
            column,
            message: e.message().trim().to_string(),
        }]
    })?;
    Validator::new(text).run(file)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before, |i| &before[i + 1..])
        .chars()
        .count()
        + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Validator<'t> {
    text: &'t str,
    /// Byte offset of each line start, so positions cost a binary search, not a scan.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'t> Validator<'t> {
    fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text,
            line_starts,
            errors: Vec::new(),
        }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|start| *start <= offset);
        let start = self.line_starts[line - 1];
        let column = self.text[start..offset.min(self.text.len())]
            .chars()
            .count()
            + 1;
        (line, column)
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            line,
            column,
            message: message.into(),
        });
    }

    fn run(mut self, file: RoutesFile) -> Result<Config, Vec<ConfigError>> {
        let services = self.services(&file.services);
        let names: Vec<&str> = file.services.keys().map(String::as_str).collect();
        let proxy = self.proxy(file.proxy.as_ref(), &names);
        let ignore_case = file.proxy.as_ref().is_some_and(|p| p.get_ref().ignore_case);
        let routes = self.routes(&file.routes, &names, ignore_case);
        self.errors.sort_by_key(|e| (e.line, e.column));
        match proxy {
            Some(proxy) if self.errors.is_empty() => Ok(Config {
                proxy,
                services,
                routes,
            }),
            _ => Err(self.errors),
        }
    }

    fn proxy(
        &mut self,
        section: Option<&Spanned<ProxySection>>,
        names: &[&str],
    ) -> Option<ProxySettings> {
        let Some(section) = section else {
            self.error(
                0..0,
                "missing [proxy] section: add `[proxy]` with `default = \"<service>\"` naming who serves unmatched paths",
            );
            return None;
        };
        let span = section.span();
        let p = section.get_ref();
        let listen = self.socket_addr("listen", p.listen.as_ref(), defaults::LISTEN);
        let admin = self.socket_addr("admin", p.admin.as_ref(), defaults::ADMIN);
        // Port 0 (any free port) is how tests run several proxies; it never collides.
        if let (Some(l), Some(a)) = (listen, admin)
            && l == a
            && l.port() != 0
        {
            let at = p.admin.as_ref().map_or(span.clone(), |a| a.span());
            self.error(at, format!("admin: must differ from listen (both are {l})"));
        }
        let default = match &p.default {
            None => {
                self.error(
                    span.clone(),
                    "[proxy] default is required: name the service that serves unmatched paths, e.g. default = \"monolith\"",
                );
                None
            }
            Some(d) => {
                self.service_ref("default", d, names);
                Some(d.get_ref().clone())
            }
        };
        let override_header = p.override_header.as_ref().and_then(|h| {
            HeaderName::from_bytes(h.get_ref().as_bytes())
                .map_err(|_| {
                    self.error(
                        h.span(),
                        format!(
                            "override_header: {:?} is not a valid header name",
                            h.get_ref()
                        ),
                    )
                })
                .ok()
        });
        let shadow_concurrency = self.bounded_int(
            "shadow_concurrency",
            p.shadow_concurrency.as_ref(),
            defaults::SHADOW_CONCURRENCY,
            1..=65_536,
        );
        let max_uri_bytes = self.bounded_int(
            "max_uri_bytes",
            p.max_uri_bytes.as_ref(),
            defaults::MAX_URI_BYTES,
            256..=65_000,
        );
        let max_header_bytes = self.bounded_int(
            "max_header_bytes",
            p.max_header_bytes.as_ref(),
            defaults::MAX_HEADER_BYTES,
            1024..=1_048_576,
        );
        let drain_timeout = self.duration(
            "drain_timeout",
            p.drain_timeout.as_ref(),
            defaults::DRAIN_TIMEOUT,
        );
        Some(ProxySettings {
            listen: listen?,
            admin: admin?,
            default: default?,
            backend_header: p.backend_header,
            ignore_case: p.ignore_case,
            access_log: p.access_log.unwrap_or(true),
            override_header,
            shadow_concurrency: shadow_concurrency?,
            drain_timeout: drain_timeout?,
            max_uri_bytes: max_uri_bytes?,
            max_header_bytes: max_header_bytes?,
        })
    }

    fn socket_addr(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: &str,
    ) -> Option<SocketAddr> {
        let Some(v) = value else {
            return default.parse().ok();
        };
        v.get_ref()
            .parse()
            .map_err(|_| {
                self.error(
                    v.span(),
                    format!(
                        "{key}: {:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:8080\"",
                        v.get_ref()
                    ),
                )
            })
            .ok()
    }

    fn bounded_int(
        &mut self,
        key: &str,
        value: Option<&Spanned<i64>>,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<usize> {
        let n = value.map_or(default, |v| *v.get_ref());
        if !range.contains(&n) {
            let at = value.map_or(0..0, |v| v.span());
            self.error(
                at,
                format!(
                    "{key}: expected an integer {}..={}, found {n}",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        usize::try_from(n).ok()
    }

    fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: &str,
    ) -> Option<Duration> {
        let Some(v) = value else {
            return parse_duration(default).ok();
        };
        parse_duration(v.get_ref())
            .map_err(|why| self.error(v.span(), format!("{key}: {why}")))
            .ok()
    }

    fn service_ref(&mut self, context: &str, value: &Spanned<String>, names: &[&str]) {
        let name = value.get_ref();
        if names.contains(&name.as_str()) {
            return;
        }
        let hint = did_you_mean(name, names)
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_else(|| {
                if names.is_empty() {
                    " (no [services.*] are defined)".to_string()
                } else {
                    format!(" (defined: {})", names.join(", "))
                }
            });
        self.error(
            value.span(),
            format!("{context}: service {name:?} is not defined{hint}"),
        );
    }

    fn services(
        &mut self,
        entries: &BTreeMap<String, Spanned<ServiceEntry>>,
    ) -> Vec<ServiceConfig> {
        if entries.is_empty() {
            self.error(
                0..0,
                "no services: add at least `[services.<name>]` with `url = \"http://host:port\"`",
            );
        }
        let mut out = Vec::new();
        for (name, entry) in entries {
            let span = entry.span();
            let e = entry.get_ref();
            if !is_label_safe(name) {
                self.error(
                    span.clone(),
                    format!("service {name:?}: names may use only letters, digits, '-' and '_' (they become metric labels)"),
                );
            }
            let authority = match parse_service_url(e.url.get_ref()) {
                Ok(a) => Some(a),
                Err(why) => {
                    self.error(e.url.span(), format!("service {name:?}: url: {why}"));
                    None
                }
            };
            let connect_timeout = self.duration(
                "connect_timeout",
                e.connect_timeout.as_ref(),
                defaults::CONNECT_TIMEOUT,
            );
            let request_timeout = self.duration(
                "request_timeout",
                e.request_timeout.as_ref(),
                defaults::REQUEST_TIMEOUT,
            );
            let idle_timeout = self.duration(
                "idle_timeout",
                e.idle_timeout.as_ref(),
                defaults::IDLE_TIMEOUT,
            );
            if let (
                Some(authority),
                Some(connect_timeout),
                Some(request_timeout),
                Some(idle_timeout),
            ) = (authority, connect_timeout, request_timeout, idle_timeout)
            {
                out.push(ServiceConfig {
                    name: name.clone(),
                    authority,
                    connect_timeout,
                    request_timeout,
                    idle_timeout,
                });
            }
        }
        out
    }

    fn routes(
        &mut self,
        entries: &[Spanned<RouteEntry>],
        names: &[&str],
        ignore_case: bool,
    ) -> Vec<RouteConfig> {
        let mut out = Vec::new();
        let mut seen_prefixes: HashMap<String, usize> = HashMap::new();
        let mut seen_names = HashSet::new();
        for entry in entries {
            let r = entry.get_ref();
            let (line, _) = self.position(entry.span().start);
            let name = r
                .name
                .as_ref()
                .map_or_else(|| r.service.get_ref().clone(), |n| n.get_ref().clone());
            let name_span = r.name.as_ref().map_or(r.service.span(), |n| n.span());
            let before = self.errors.len();
            if !is_label_safe(&name) {
                self.error(
                    name_span.clone(),
                    format!("route {name:?}: name may use only letters, digits, '-' and '_' (it becomes a metric label)"),
                );
            } else if name == "default" {
                self.error(
                    name_span.clone(),
                    "route name \"default\" is reserved for requests no route claims: choose another `name`",
                );
            } else if !seen_names.insert(name.clone()) {
                self.error(
                    name_span.clone(),
                    format!(
                        "route {name:?}: another route already has this name: set a distinct `name`"
                    ),
                );
            }
            let prefix = r.prefix.get_ref();
            if !prefix.starts_with('/') {
                self.error(
                    r.prefix.span(),
                    format!("route {name:?}: prefix {prefix:?} must start with '/'"),
                );
            } else if prefix.contains(['?', '#']) {
                self.error(
                    r.prefix.span(),
                    format!(
                        "route {name:?}: prefix {prefix:?} must not contain a query or fragment"
                    ),
                );
            } else {
                match path::normalize(prefix) {
                    Ok(n) if n == *prefix && (prefix == "/" || !prefix.ends_with('/')) => {
                        // With ignore_case, /api/users and /API/Users are one prefix.
                        let key = if ignore_case {
                            prefix.to_ascii_lowercase()
                        } else {
                            prefix.clone()
                        };
                        if let Some(other_line) = seen_prefixes.get(&key) {
                            self.error(
                                r.prefix.span(),
                                format!("route {name:?}: prefix {prefix:?} is already routed on line {other_line}: merge the two routes"),
                            );
                        } else {
                            seen_prefixes.insert(key, line);
                        }
                    }
                    Ok(n) => {
                        let n = if n.len() > 1 {
                            n.trim_end_matches('/').to_string()
                        } else {
                            n.into_owned()
                        };
                        self.error(
                            r.prefix.span(),
                            format!(
                                "route {name:?}: prefix {prefix:?} is not normalized: write {n:?}"
                            ),
                        );
                    }
                    Err(why) => {
                        self.error(
                            r.prefix.span(),
                            format!("route {name:?}: prefix {prefix:?}: {why}"),
                        );
                    }
                }
            }
            self.service_ref(&format!("route {name:?}"), &r.service, names);
            let weight = r.weight.get_ref().0;
            if !(0..=100).contains(&weight) {
                self.error(
                    r.weight.span(),
                    format!("weight: expected an integer 0..=100, found {weight}"),
                );
            }
            let methods = r.methods.as_ref().map(|m| self.methods("methods", m));
            let shadow_methods = r.shadow_methods.as_ref().map_or_else(
                || vec![Method::GET, Method::HEAD, Method::OPTIONS],
                |m| self.methods("shadow_methods", m),
            );
            let sticky = r.sticky.as_ref().and_then(|s| self.sticky(s));
            let mut shadow_ignore = Vec::new();
            for p in r.shadow_ignore.iter().flatten() {
                if p.get_ref().is_empty() || p.get_ref().starts_with('/') {
                    shadow_ignore.push(p.get_ref().clone());
                } else {
                    self.error(
                        p.span(),
                        format!("shadow_ignore: {:?} is not a JSON pointer: write it like \"/createdAt\"", p.get_ref()),
                    );
                }
            }
            if self.errors.len() == before {
                out.push(RouteConfig {
                    name,
                    prefix: prefix.clone(),
                    service: r.service.get_ref().clone(),
                    weight: u8::try_from(weight).unwrap_or(0),
                    methods,
                    sticky,
                    shadow: r.shadow,
                    fallback: r.fallback,
                    shadow_methods,
                    shadow_ignore,
                    shadow_noise_check: r.shadow_noise_check,
                });
            }
        }
        out
    }

    fn methods(&mut self, key: &str, list: &Spanned<Vec<Spanned<String>>>) -> Vec<Method> {
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
        ];
        if list.get_ref().is_empty() {
            self.error(
                list.span(),
                format!("{key}: an empty list would match nothing: remove the key or name methods"),
            );
        }
        let mut out = Vec::new();
        for m in list.get_ref() {
            let s = m.get_ref();
            if !KNOWN.contains(&s.as_str()) {
                let hint = if KNOWN.contains(&s.to_ascii_uppercase().as_str()) {
                    format!(" (write {:?})", s.to_ascii_uppercase())
                } else {
                    format!(" (one of {})", KNOWN.join(", "))
                };
                self.error(
                    m.span(),
                    format!("{key}: {s:?} is not a standard upper-case method{hint}"),
                );
                continue;
            }
            match Method::from_bytes(s.as_bytes()) {
                Ok(method) if out.contains(&method) => {
                    self.error(m.span(), format!("{key}: {s:?} is listed twice"))
                }
                Ok(method) => out.push(method),
                Err(_) => self.error(m.span(), format!("{key}: {s:?} is not a method")),
            }
        }
        out
    }

    fn sticky(&mut self, value: &Spanned<String>) -> Option<StickyKey> {
        let s = value.get_ref();
        let parsed = match s.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(StickyKey::Header),
            Some(("cookie", name))
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b)) =>
            {
                Some(StickyKey::Cookie(name.to_string()))
            }
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                value.span(),
                format!(
                    "sticky: {s:?} is not a key source: write \"header:NAME\" or \"cookie:NAME\""
                ),
            );
        }
        parsed
    }
}

fn is_label_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `"500ms"`, `"30s"`, `"2m"`, `"1h"`: an integer and a unit, nothing else.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let n: u64 = number.parse().map_err(|_| {
        format!(
            "{s:?} is not a duration: write a whole number and a unit, e.g. \"500ms\" or \"30s\""
        )
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => {
            return Err(format!(
                "{s:?} has no unit: write e.g. \"{n}s\" or \"{n}ms\""
            ));
        }
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: a zero duration would fail every request"));
    }
    Ok(d)
}

fn parse_service_url(url: &str) -> Result<Authority, String> {
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https is not supported yet: use http:// (TLS to services is planned)"
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL: write \"http://host:port\""))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?} must start with http://"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host: write \"http://host:port\""))?
        .clone();
    if authority.host().is_empty() {
        return Err(format!("{url:?} has no host: write \"http://host:port\""));
    }
    if authority.port_u16().is_none() {
        return Err(format!(
            "{url:?} has no port: write \"http://{}:PORT\"",
            authority.host()
        ));
    }
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: credentials in the URL are not supported"));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if path != "/" || url.ends_with('/') && url.matches('/').count() > 3 {
        return Err(format!(
            "{url:?} has a path: a service URL is only \"http://host:port\""
        ));
    }
    Ok(authority)
}

/// The closest name within edit distance 2, if any.
fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
admin = "127.0.0.1:9901"
default = "monolith"

[services.monolith]
url = "http://127.0.0.1:3000"

[services.users]
url = "http://127.0.0.1:3001"
connect_timeout = "500ms"
request_timeout = "30s"
"#;

    fn with_route(route: &str) -> String {
        format!("{BASE}\n[[routes]]\n{route}\n")
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => vec![],
            Err(errors) => errors
                .into_iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect(),
        }
    }

    #[test]
    fn a_valid_file_compiles_with_defaults_filled_in() {
        let config = parse(&with_route(
            "prefix = \"/api/users\"\nservice = \"users\"\nweight = 25",
        ))
        .unwrap();
        assert_eq!(config.proxy.default, "monolith");
        assert_eq!(config.services.len(), 2);
        let users = &config.services[1];
        assert_eq!(users.connect_timeout, Duration::from_millis(500));
        assert_eq!(users.idle_timeout, Duration::from_secs(4));
        let route = &config.routes[0];
        assert_eq!(
            (route.name.as_str(), route.weight, route.stage()),
            ("users", 25, Stage::Canary)
        );
        assert_eq!(
            route.shadow_methods,
            vec![Method::GET, Method::HEAD, Method::OPTIONS]
        );
    }

    /// One line per case: the route body, and a fragment the single error must contain.
    #[test]
    fn route_errors_name_the_key_and_the_fix() {
        let cases: &[(&str, &str)] = &[
            (
                "prefix = \"/api/users\"\nservice = \"user\"\nweight = 1",
                "service \"user\" is not defined (did you mean \"users\"?)",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 101",
                "weight: expected an integer 0..=100, found 101",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = -1",
                "weight: expected an integer 0..=100, found -1",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = \"50\"",
                "weight: expected an integer 0..=100, found string \"50\"",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 5.5",
                "found float 5.5",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"",
                "missing field `weight`",
            ),
            (
                "prefix = \"api/users\"\nservice = \"users\"\nweight = 1",
                "must start with '/'",
            ),
            (
                "prefix = \"/api/users/\"\nservice = \"users\"\nweight = 1",
                "is not normalized: write \"/api/users\"",
            ),
            (
                "prefix = \"/api/../users\"\nservice = \"users\"\nweight = 1",
                "is not normalized: write \"/users\"",
            ),
            (
                "prefix = \"/api//users\"\nservice = \"users\"\nweight = 1",
                "is not normalized: write \"/api/users\"",
            ),
            (
                "prefix = \"/api/users?x=1\"\nservice = \"users\"\nweight = 1",
                "must not contain a query",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nmethods = [\"get\"]",
                "\"get\" is not a standard upper-case method (write \"GET\")",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nmethods = []",
                "an empty list would match nothing",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nsticky = \"ip\"",
                "write \"header:NAME\" or \"cookie:NAME\"",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nshadow_ignore = [\"createdAt\"]",
                "not a JSON pointer",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nwieght = 2",
                "unknown field `wieght`",
            ),
            (
                "name = \"default\"\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 1",
                "reserved",
            ),
            (
                "name = \"a b\"\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 1",
                "only letters, digits",
            ),
        ];
        for (route, expected) in cases {
            let errors = errors(&with_route(route));
            assert_eq!(errors.len(), 1, "case {route:?} gave {errors:?}");
            assert!(
                errors[0].contains(expected),
                "case {route:?}: {:?} does not contain {expected:?}",
                errors[0]
            );
        }
    }

    #[test]
    fn proxy_and_service_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[services.a]\nurl = \"http://127.0.0.1:1\"",
                "[proxy] default is required",
            ),
            (
                "[proxy]\ndefault = \"monolit\"\n[services.monolith]\nurl = \"http://127.0.0.1:1\"",
                "did you mean \"monolith\"",
            ),
            (
                "[proxy]\ndefault = \"a\"\n[services.a]\nurl = \"https://x:1\"",
                "https is not supported yet",
            ),
            (
                "[proxy]\ndefault = \"a\"\n[services.a]\nurl = \"http://x\"",
                "has no port",
            ),
            (
                "[proxy]\ndefault = \"a\"\n[services.a]\nurl = \"http://x:1/api\"",
                "has a path",
            ),
            (
                "[proxy]\ndefault = \"a\"\n[services.a]\nurl = \"localhost:1\"",
                "must start with http://",
            ),
            (
                "[proxy]\ndefault = \"a\"\n[services.a]\nurl = \"http://x:1\"\nconnect_timeout = \"5\"",
                "has no unit",
            ),
            (
                "[proxy]\ndefault = \"a\"\n[services.a]\nurl = \"http://x:1\"\nrequest_timeout = \"5 parsecs\"",
                "unknown unit",
            ),
            (
                "[proxy]\ndefault = \"a\"\nlisten = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:1\"\n[services.a]\nurl = \"http://x:1\"",
                "must differ from listen",
            ),
            (
                "[proxy]\ndefault = \"a\"\nlisten = \"localhost\"\n[services.a]\nurl = \"http://x:1\"",
                "listen: \"localhost\" is not an address",
            ),
            (
                "[services.a]\nurl = \"http://x:1\"",
                "missing [proxy] section",
            ),
            (
                "[proxy]\ndefault = \"a\"\n[services.a]\nurl = \"http://x:1\"\n[services.a]\nurl = \"http://x:2\"",
                "duplicate key",
            ),
        ];
        for (text, expected) in cases {
            let errors = errors(text);
            assert_eq!(errors.len(), 1, "case {text:?} gave {errors:?}");
            assert!(
                errors[0].contains(expected),
                "case {text:?}: {:?} does not contain {expected:?}",
                errors[0]
            );
        }
    }

    #[test]
    fn every_error_is_reported_with_its_position() {
        let text = format!(
            "{BASE}\n[[routes]]\nprefix = \"/api/users\"\nservice = \"user\"\nweight = 1\n\n[[routes]]\nname = \"u2\"\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 300\n"
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let first_prefix = line_of("prefix = \"/api/users\"");
        assert_eq!(
            errors[0],
            format!(
                "{}:11: route \"user\": service \"user\" is not defined (did you mean \"users\"?)",
                line_of("\"user\"")
            )
        );
        assert!(
            errors[1].starts_with(&format!("{}:10: route \"u2\"", line_of("u2") + 1)),
            "{errors:?}"
        );
        assert!(
            errors[1].ends_with(&format!(
                "already routed on line {}: merge the two routes",
                first_prefix - 1
            )),
            "{errors:?}"
        );
        assert_eq!(
            errors[2],
            format!(
                "{}:10: weight: expected an integer 0..=100, found 300",
                line_of("weight = 300")
            )
        );
    }

    #[test]
    fn duplicate_prefixes_are_caught_whatever_the_order() {
        let text = format!(
            "{BASE}\n[[routes]]\nname = \"a\"\nprefix = \"/api\"\nservice = \"users\"\nweight = 1\n[[routes]]\nname = \"b\"\nprefix = \"/api\"\nservice = \"users\"\nweight = 1\n"
        );
        assert_eq!(errors(&text).len(), 1);
    }

    #[test]
    fn with_ignore_case_prefixes_differing_in_case_are_duplicates() {
        let routes = "[[routes]]\nname = \"a\"\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 1\n[[routes]]\nname = \"b\"\nprefix = \"/API/Users\"\nservice = \"users\"\nweight = 1\n";
        assert!(errors(&format!("{BASE}\n{routes}")).is_empty());
        let insensitive = format!("{BASE}\n{routes}").replace(
            "default = \"monolith\"",
            "default = \"monolith\"\nignore_case = true",
        );
        let errors = errors(&insensitive);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("already routed"), "{errors:?}");
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn stage_is_derived_from_weight_and_shadow() {
        let mut r = parse(&with_route(
            "prefix = \"/api/users\"\nservice = \"users\"\nweight = 0",
        ))
        .unwrap()
        .routes
        .remove(0);
        assert_eq!(r.stage(), Stage::Dark);
        r.shadow = true;
        assert_eq!(r.stage(), Stage::Shadow);
        r.weight = 100;
        assert_eq!(r.stage(), Stage::Live);
    }
}
