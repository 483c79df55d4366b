//! File → model: one function per key, each recording what is wrong with its value and going
//! on, so one run reports every error in the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, Method};
use toml::Spanned;

use super::defaults;
use super::error::{ConfigError, Lines};
use super::file::{ProxySection, RouteEntry, RoutesFile, ServiceEntry};
use super::model::{Config, ProxySettings, RouteConfig, ServiceConfig, StickyKey};
use crate::path;

/// Validates a parsed file; `text` is what it was parsed from, for positions.
pub(super) fn validate(text: &str, file: RoutesFile) -> Result<Config, Vec<ConfigError>> {
    Validator {
        lines: Lines::new(text),
        errors: Vec::new(),
    }
    .run(file)
}

/// What a valid file allows but an operator should hear about, each at the position of the
/// value it is about, its message starting `warning:`. `config` is what `text` validated to.
pub(super) fn warnings(text: &str, config: &Config) -> Vec<ConfigError> {
    let Ok(file) = toml::from_str::<RoutesFile>(text) else {
        return Vec::new();
    };
    let lines = Lines::new(text);
    let mut warnings = Vec::new();
    if !config.proxy.ignore_case {
        for (route, entry) in config.routes.iter().zip(&file.routes) {
            if !route.claims_writes() {
                continue;
            }
            let (line, column) = lines.position(entry.get_ref().prefix.span().start);
            warnings.push(ConfigError {
                line,
                column,
                message: format!(
                    "warning: route {:?} takes writes and [proxy] ignore_case is off: a legacy \
                     router that ignores case serves {} as the route's, but the proxy sends it \
                     to the default, so writes could split between the two; set ignore_case = \
                     true if the default's router ignores case \
                     (strangler_route_near_misses_total counts such requests)",
                    route.name,
                    route.prefix.to_ascii_uppercase()
                ),
            });
        }
    }
    warnings
}

/// Methods a route may name.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// Prefixes already routed (normalized, lower-cased with `ignore_case`) with their line, and
/// route names already taken: what makes a route a duplicate of an earlier one.
#[derive(Default)]
struct Seen {
    prefixes: HashMap<String, usize>,
    names: HashSet<String>,
}

struct Validator<'t> {
    lines: Lines<'t>,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.lines.position(span.start);
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
        let mut seen = Seen::default();
        let routes = file
            .routes
            .iter()
            .filter_map(|entry| self.route(entry, &names, ignore_case, &mut seen))
            .collect();
        let no_routes = self.no_routes(file.proxy.as_ref(), file.routes.len());
        self.errors.sort_by_key(|e| (e.line, e.column));
        match proxy {
            Some(proxy) if self.errors.is_empty() => Ok(Config {
                proxy: ProxySettings { no_routes, ..proxy },
                services,
                routes,
            }),
            _ => Err(self.errors),
        }
    }

    // -- [proxy] ---------------------------------------------------------------------------

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
        self.listeners_differ(
            listen,
            admin,
            p.admin.as_ref().map_or(span.clone(), |a| a.span()),
        );
        let default = self.default_service(p.default.as_ref(), span, names);
        let override_header = p
            .override_header
            .as_ref()
            .and_then(|h| self.override_header(h));
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
        let hold_timeout = self.duration(
            "hold_timeout",
            p.hold_timeout.as_ref(),
            defaults::HOLD_TIMEOUT,
        );
        let hold_max = self.bounded_int(
            "hold_max",
            p.hold_max.as_ref(),
            defaults::HOLD_MAX,
            0..=1_000_000,
        );
        let max_connections = self.bounded_int(
            "max_connections",
            p.max_connections.as_ref(),
            defaults::MAX_CONNECTIONS,
            1..=1_000_000,
        );
        let workers = match p.workers.as_ref() {
            None => Some(None),
            Some(v) => self.bounded_int("workers", Some(v), 1, 1..=64).map(Some),
        };
        let first_byte_timeout = self.duration(
            "first_byte_timeout",
            p.first_byte_timeout.as_ref(),
            defaults::FIRST_BYTE_TIMEOUT,
        );
        let header_read_timeout = self.duration(
            "header_read_timeout",
            p.header_read_timeout.as_ref(),
            defaults::HEADER_READ_TIMEOUT,
        );
        let client_idle_timeout = self.duration(
            "client_idle_timeout",
            p.client_idle_timeout.as_ref(),
            defaults::CLIENT_IDLE_TIMEOUT,
        );
        let drain_grace =
            self.duration_or_zero("drain_grace", p.drain_grace.as_ref(), defaults::DRAIN_GRACE);
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
            hold_timeout: hold_timeout?,
            hold_max: hold_max?,
            max_uri_bytes: max_uri_bytes?,
            max_header_bytes: max_header_bytes?,
            max_connections: max_connections?,
            workers: workers?,
            first_byte_timeout: first_byte_timeout?,
            header_read_timeout: header_read_timeout?,
            client_idle_timeout: client_idle_timeout?,
            drain_grace: drain_grace?,
            no_routes: false,
            show_query_keys: self.show_query_keys(p.show_query_keys.iter().flatten()),
        })
    }

    /// `listen` and `admin`: two listeners cannot share an address.
    fn listeners_differ(
        &mut self,
        listen: Option<SocketAddr>,
        admin: Option<SocketAddr>,
        at: Range<usize>,
    ) {
        // Port 0 (any free port) is how tests run several proxies; it never collides.
        if let (Some(l), Some(a)) = (listen, admin)
            && l == a
            && l.port() != 0
        {
            self.error(at, format!("admin: must differ from listen (both are {l})"));
        }
    }

    /// `default`: required, and a defined service.
    fn default_service(
        &mut self,
        value: Option<&Spanned<String>>,
        section: Range<usize>,
        names: &[&str],
    ) -> Option<String> {
        let Some(d) = value else {
            self.error(
                section,
                "[proxy] default is required: name the service that serves unmatched paths, e.g. default = \"monolith\"",
            );
            return None;
        };
        self.service_ref("default", d, names);
        Some(d.get_ref().clone())
    }

    fn override_header(&mut self, value: &Spanned<String>) -> Option<HeaderName> {
        HeaderName::from_bytes(value.get_ref().as_bytes())
            .map_err(|_| {
                self.error(
                    value.span(),
                    format!(
                        "override_header: {:?} is not a valid header name",
                        value.get_ref()
                    ),
                )
            })
            .ok()
    }

    // -- values shared by several keys -------------------------------------------------------

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
        range: RangeInclusive<i64>,
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

    /// A duration key: a whole number and a unit, within [`defaults::duration_range`] of its
    /// name, so nothing downstream adds to a duration that could overflow.
    fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: &str,
    ) -> Option<Duration> {
        let Some(v) = value else {
            return parse_duration(default).ok();
        };
        let text = v.get_ref();
        let d = duration_literal(text)
            .map_err(|why| self.error(v.span(), format!("{key}: {why}")))
            .ok()?;
        let range = defaults::duration_range(key);
        let bound = if d > *range.end() {
            format!("at most {}", format_duration(*range.end()))
        } else if d < *range.start() {
            format!("at least {}", format_duration(*range.start()))
        } else {
            return Some(d);
        };
        self.error(
            v.span(),
            format!("{key}: {text:?} is out of range: expected {bound}"),
        );
        None
    }

    /// A duration where zero means "none" (`drain_grace = "0s"`: stop accepting at once).
    fn duration_or_zero(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: &str,
    ) -> Option<Duration> {
        if let Some(v) = value {
            let text = v.get_ref();
            let digits = text.bytes().take_while(u8::is_ascii_digit).count();
            let (number, unit) = text.split_at(digits);
            if !number.is_empty()
                && number.bytes().all(|b| b == b'0')
                && matches!(unit, "ms" | "s" | "m" | "h")
            {
                return Some(Duration::ZERO);
            }
        }
        self.duration(key, value, default)
    }

    /// A reference to a service by name: it must be defined.
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

    // -- [services.NAME] ---------------------------------------------------------------------

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
        entries
            .iter()
            .filter_map(|(name, entry)| self.service(name, entry))
            .collect()
    }

    fn service(&mut self, name: &str, entry: &Spanned<ServiceEntry>) -> Option<ServiceConfig> {
        let e = entry.get_ref();
        if !is_label_safe(name) {
            self.error(
                entry.span(),
                format!("service {name:?}: names may use only letters, digits, '-' and '_' (they become metric labels)"),
            );
        }
        let authority = self.service_url(name, &e.url);
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
        let outlier_failures = self.bounded_int(
            "outlier_failures",
            e.outlier_failures.as_ref(),
            defaults::OUTLIER_FAILURES,
            0..=10_000,
        );
        let outlier_cooldown = self.duration(
            "outlier_cooldown",
            e.outlier_cooldown.as_ref(),
            defaults::OUTLIER_COOLDOWN,
        );
        Some(ServiceConfig {
            name: name.to_string(),
            authority: authority?,
            connect_timeout: connect_timeout?,
            request_timeout: request_timeout?,
            idle_timeout: idle_timeout?,
            outlier_failures: u32::try_from(outlier_failures?).ok()?,
            outlier_cooldown: outlier_cooldown?,
        })
    }

    fn service_url(&mut self, service: &str, value: &Spanned<String>) -> Option<Authority> {
        parse_service_url(value.get_ref())
            .map_err(|why| self.error(value.span(), format!("service {service:?}: url: {why}")))
            .ok()
    }

    // -- [[routes]] --------------------------------------------------------------------------

    /// One route; `None` when any of its keys is wrong (the errors are recorded).
    fn route(
        &mut self,
        entry: &Spanned<RouteEntry>,
        names: &[&str],
        ignore_case: bool,
        seen: &mut Seen,
    ) -> Option<RouteConfig> {
        let r = entry.get_ref();
        let (line, _) = self.lines.position(entry.span().start);
        let before = self.errors.len();
        let name = self.route_name(r, seen);
        self.prefix(&name, &r.prefix, line, ignore_case, seen);
        self.service_ref(&format!("route {name:?}"), &r.service, names);
        let weight = self.weight(r);
        let methods = r.methods.as_ref().map(|m| self.methods("methods", m));
        let shadow_methods = r.shadow_methods.as_ref().map_or_else(
            || vec![Method::GET, Method::HEAD, Method::OPTIONS],
            |m| self.methods("shadow_methods", m),
        );
        let sticky = r.sticky.as_ref().and_then(|s| self.sticky(s));
        let shadow_ignore = self.pointers(
            "shadow_ignore",
            "\"/createdAt\"",
            r.shadow_ignore.iter().flatten(),
        );
        let shadow_redact = self.pointers(
            "shadow_redact",
            "\"/password\" or \"/*/token\"",
            r.shadow_redact.iter().flatten(),
        );
        let (shadow_headers, shadow_ignore_headers) = self.shadow_headers(r);
        if self.errors.len() != before {
            return None;
        }
        Some(RouteConfig {
            name,
            prefix: r.prefix.get_ref().clone(),
            service: r.service.get_ref().clone(),
            weight,
            methods,
            sticky,
            shadow: r.shadow,
            fallback: r.fallback,
            shadow_methods,
            shadow_ignore,
            shadow_headers,
            shadow_ignore_headers,
            shadow_noise_check: r.shadow_noise_check,
            hold_writes: r.hold_writes,
            shadow_redact,
        })
    }

    /// `name` (the service's name when left out): a metric label, unique, not `default`.
    fn route_name(&mut self, r: &RouteEntry, seen: &mut Seen) -> String {
        let (name, span) = match &r.name {
            Some(n) => (n.get_ref().clone(), n.span()),
            None => (r.service.get_ref().clone(), r.service.span()),
        };
        if !is_label_safe(&name) {
            self.error(
                span,
                format!("route {name:?}: name may use only letters, digits, '-' and '_' (it becomes a metric label)"),
            );
        } else if name == "default" {
            self.error(
                span,
                "route name \"default\" is reserved for requests no route claims: choose another `name`",
            );
        } else if !seen.names.insert(name.clone()) {
            self.error(
                span,
                format!(
                    "route {name:?}: another route already has this name: set a distinct `name`"
                ),
            );
        }
        name
    }

    /// `prefix`: absolute, already normalized, and not routed by an earlier route.
    fn prefix(
        &mut self,
        name: &str,
        value: &Spanned<String>,
        line: usize,
        ignore_case: bool,
        seen: &mut Seen,
    ) {
        let prefix = value.get_ref();
        if !prefix.starts_with('/') {
            self.error(
                value.span(),
                format!("route {name:?}: prefix {prefix:?} must start with '/'"),
            );
            return;
        }
        if prefix.contains(['?', '#']) {
            self.error(
                value.span(),
                format!("route {name:?}: prefix {prefix:?} must not contain a query or fragment"),
            );
            return;
        }
        match path::normalize(prefix) {
            Ok(n) if n == *prefix && (prefix == "/" || !prefix.ends_with('/')) => {
                // With ignore_case, /api/users and /API/Users are one prefix.
                let key = if ignore_case {
                    prefix.to_ascii_lowercase()
                } else {
                    prefix.clone()
                };
                if let Some(other_line) = seen.prefixes.get(&key) {
                    self.error(
                        value.span(),
                        format!("route {name:?}: prefix {prefix:?} is already routed on line {other_line}: merge the two routes"),
                    );
                } else {
                    seen.prefixes.insert(key, line);
                }
            }
            Ok(n) => {
                let n = if n.len() > 1 {
                    n.trim_end_matches('/').to_string()
                } else {
                    n.into_owned()
                };
                self.error(
                    value.span(),
                    format!("route {name:?}: prefix {prefix:?} is not normalized: write {n:?}"),
                );
            }
            Err(why) => {
                self.error(
                    value.span(),
                    format!("route {name:?}: prefix {prefix:?}: {why}"),
                );
            }
        }
    }

    /// `weight`: required, 0..=100.
    fn weight(&mut self, r: &RouteEntry) -> u8 {
        let weight = r.weight.get_ref().0;
        u8::try_from(weight)
            .ok()
            .filter(|w| *w <= 100)
            .unwrap_or_else(|| {
                self.error(
                    r.weight.span(),
                    format!("weight: expected an integer 0..=100, found {weight}"),
                );
                0
            })
    }

    /// `methods` and `shadow_methods`: a non-empty list of distinct standard methods.
    fn methods(&mut self, key: &str, list: &Spanned<Vec<Spanned<String>>>) -> Vec<Method> {
        if list.get_ref().is_empty() {
            self.error(
                list.span(),
                format!("{key}: an empty list would match nothing: remove the key or name methods"),
            );
        }
        let mut out = Vec::new();
        for m in list.get_ref() {
            let s = m.get_ref();
            if !KNOWN_METHODS.contains(&s.as_str()) {
                let hint = if KNOWN_METHODS.contains(&s.to_ascii_uppercase().as_str()) {
                    format!(" (write {:?})", s.to_ascii_uppercase())
                } else {
                    format!(" (one of {})", KNOWN_METHODS.join(", "))
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

    /// `sticky`: `header:NAME` or `cookie:NAME`.
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

impl Validator<'_> {
    /// `[proxy] routes`: only `"none"`, and only in a file without `[[routes]]`, so it always
    /// states a fact: the empty table is meant (a half-written file is not).
    fn no_routes(&mut self, section: Option<&Spanned<ProxySection>>, routes: usize) -> bool {
        let Some(value) = section.and_then(|s| s.get_ref().routes.as_ref()) else {
            return false;
        };
        if value.get_ref() != "none" {
            self.error(
                value.span(),
                format!(
                    "routes: expected \"none\" (the only value: it says the file has no [[routes]] on purpose), found {:?}",
                    value.get_ref()
                ),
            );
            return false;
        }
        if routes > 0 {
            self.error(
                value.span(),
                format!(
                    "routes = \"none\" but the file has {routes} [[routes]]: remove `routes = \"none\"` from [proxy]"
                ),
            );
            return false;
        }
        true
    }

    /// `[proxy] show_query_keys`: query keys as sent (no `=`, `&`, `#`, space), each once.
    fn show_query_keys<'v>(
        &mut self,
        keys: impl Iterator<Item = &'v Spanned<String>>,
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for key in keys {
            let k = key.get_ref();
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=&#".contains(&b))
            {
                self.error(
                    key.span(),
                    format!(
                        "show_query_keys: {k:?} is not a query key: write it as sent, e.g. \"page\""
                    ),
                );
            } else if out.contains(k) {
                self.error(
                    key.span(),
                    format!("show_query_keys: {k:?} is listed twice"),
                );
            } else {
                out.push(k.clone());
            }
        }
        out
    }

    /// A list of JSON pointers (`shadow_ignore`, `shadow_redact`); `*` matches one segment,
    /// `""` the whole body. `example` is what the error suggests writing.
    fn pointers<'v>(
        &mut self,
        key: &str,
        example: &str,
        pointers: impl Iterator<Item = &'v Spanned<String>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for p in pointers {
            if p.get_ref().is_empty() || p.get_ref().starts_with('/') {
                out.push(p.get_ref().clone());
            } else {
                self.error(
                    p.span(),
                    format!(
                        "{key}: {:?} is not a JSON pointer: write it like {example}",
                        p.get_ref()
                    ),
                );
            }
        }
        out
    }

    /// `shadow_headers` (compared besides the defaults) and `shadow_ignore_headers` (defaults
    /// not compared): valid header names, each listed once, stored lower-cased; adding a
    /// default, or removing what is not compared, is a mistake worth naming.
    fn shadow_headers(&mut self, r: &RouteEntry) -> (Vec<HeaderName>, Vec<HeaderName>) {
        let defaults = crate::compare::DEFAULT_HEADERS;
        let mut add: Vec<HeaderName> = Vec::new();
        let mut remove: Vec<HeaderName> = Vec::new();
        for (key, list, adding) in [
            ("shadow_headers", &r.shadow_headers, true),
            ("shadow_ignore_headers", &r.shadow_ignore_headers, false),
        ] {
            for value in list.iter().flatten() {
                let text = value.get_ref();
                let Ok(name) = HeaderName::from_bytes(text.as_bytes()) else {
                    self.error(
                        value.span(),
                        format!("{key}: {text:?} is not a valid header name"),
                    );
                    continue;
                };
                let is_default = defaults.contains(&name.as_str());
                let why = if add.contains(&name) || remove.contains(&name) {
                    Some("is listed twice (in shadow_headers or shadow_ignore_headers)".to_string())
                } else if adding && is_default {
                    Some("is compared by default: remove it from shadow_headers".to_string())
                } else if !adding && !is_default {
                    Some(format!(
                        "is not compared by default, so there is nothing to ignore (the defaults are {})",
                        defaults.join(", ")
                    ))
                } else {
                    None
                };
                match why {
                    Some(why) => {
                        self.error(value.span(), format!("{key}: {:?} {why}", name.as_str()))
                    }
                    None if adding => add.push(name),
                    None => remove.push(name),
                }
            }
        }
        (add, remove)
    }
}

fn is_label_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `"500ms"`, `"30s"`, `"2m"`, `"1h"`: a positive whole number and a unit, nothing
/// else.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = duration_literal(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: a zero duration would fail every request"));
    }
    if d == Duration::MAX {
        return Err(format!("{s:?} is too large"));
    }
    Ok(d)
}

/// A whole number and a unit, zero allowed; a number too large for any duration saturates to
/// [`Duration::MAX`], which every range refuses by naming its bound.
fn duration_literal(s: &str) -> Result<Duration, String> {
    const EXAMPLE: &str = "write a whole number and a unit, e.g. \"500ms\" or \"30s\"";
    if s.starts_with('-') {
        return Err(format!("{s:?}: a duration cannot be negative"));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(format!("{s:?} is not a duration: {EXAMPLE}"));
    }
    // Only digits, so a failure is overflow: saturate and let the range name the bound.
    let n: u64 = number.parse().unwrap_or(u64::MAX);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "{s:?} has no unit: write e.g. \"{n}s\" or \"{n}ms\""
            ));
        }
        u if u.starts_with('.') => {
            let whole: String = s
                .chars()
                .filter(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let unit = s.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
            let hint = match (whole.parse::<f64>(), unit) {
                (Ok(x), "s") => format!(": write \"{}ms\"", (x * 1000.0).round()),
                (Ok(x), "m") => format!(": write \"{}s\"", (x * 60.0).round()),
                (Ok(x), "h") => format!(": write \"{}m\"", (x * 60.0).round()),
                _ => format!(": {EXAMPLE}"),
            };
            return Err(format!(
                "{s:?}: fractions are not allowed, use a smaller unit{hint}"
            ));
        }
        u if u.starts_with(char::is_whitespace) && ["ms", "s", "m", "h"].contains(&u.trim()) => {
            return Err(format!(
                "{s:?}: write the unit right after the number, e.g. \"{n}{}\"",
                u.trim()
            ));
        }
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    Ok(n.checked_mul(unit_ms)
        .map_or(Duration::MAX, Duration::from_millis))
}

/// `d` in the largest unit that writes it exactly, as a file would (`1h`, `10m`, `1ms`).
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
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
pub(super) fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(name, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;

    use super::{parse_duration, warnings};
    use crate::config::{Stage, parse};

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
        assert_eq!(users.idle_timeout, Duration::from_millis(1500));
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
                "weight: required key is missing",
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
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nshadow_headers = [\"x api\"]",
                "shadow_headers: \"x api\" is not a valid header name",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nshadow_headers = [\"Allow\"]",
                "shadow_headers: \"allow\" is compared by default",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nshadow_headers = [\"x-v\", \"X-V\"]",
                "shadow_headers: \"x-v\" is listed twice",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nshadow_ignore_headers = [\"date\"]",
                "shadow_ignore_headers: \"date\" is not compared by default, so there is nothing to ignore",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 1\nwieght = 2",
                "wieght: unknown key (did you mean \"weight\"?)",
            ),
            (
                "name = \"default\"\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 1",
                "reserved",
            ),
            (
                "name = \"a b\"\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 1",
                "only letters, digits",
            ),
            (
                "prefix = \"/api/users\"\nservice = \"users\"\nweight = 0\nshadow_redact = [\"password\"]",
                "shadow_redact: \"password\" is not a JSON pointer",
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
                "[services.a]: this table is already defined on line 3",
            ),
            (
                "[proxy]\ndefault = \"a\"\nroutes = \"all\"\n[services.a]\nurl = \"http://x:1\"",
                "routes: expected \"none\"",
            ),
            (
                "[proxy]\ndefault = \"a\"\nroutes = \"none\"\n[services.a]\nurl = \"http://x:1\"\n[[routes]]\nprefix = \"/a\"\nservice = \"a\"\nweight = 1",
                "routes = \"none\" but the file has 1 [[routes]]: remove",
            ),
            (
                "[proxy]\ndefault = \"a\"\nshow_query_keys = [\"page\", \"a=b\"]\n[services.a]\nurl = \"http://x:1\"",
                "show_query_keys: \"a=b\" is not a query key",
            ),
            (
                "[proxy]\ndefault = \"a\"\nshow_query_keys = [\"page\", \"page\"]\n[services.a]\nurl = \"http://x:1\"",
                "show_query_keys: \"page\" is listed twice",
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
    fn did_you_mean_suggests_the_closest_name_within_two_edits() {
        let names = ["monolith", "users", "posts"];
        assert_eq!(super::did_you_mean("user", &names), Some("users"));
        assert_eq!(super::did_you_mean("monolit", &names), Some("monolith"));
        assert_eq!(super::did_you_mean("psts", &names), Some("posts"));
        assert_eq!(super::did_you_mean("threads", &names), None);
        assert_eq!(super::did_you_mean("usr", &[]), None);
    }

    #[test]
    fn shadow_headers_are_stored_lower_cased_with_their_positions_on_errors() {
        let text = with_route(
            "prefix = \"/api/users\"\nservice = \"users\"\nweight = 0\nshadow = true\nshadow_headers = [\"X-Api-Version\"]\nshadow_ignore_headers = [\"Cache-Control\"]",
        );
        let config = parse(&text).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.shadow_headers, ["x-api-version"]);
        assert_eq!(route.shadow_ignore_headers, ["cache-control"]);
        let bad = with_route(
            "prefix = \"/api/users\"\nservice = \"users\"\nweight = 0\nshadow_headers = [\"ok\", \"b@d\"]",
        );
        let line = bad.lines().position(|l| l.contains("b@d")).unwrap() + 1;
        assert_eq!(
            errors(&bad),
            [format!(
                "{line}:25: shadow_headers: \"b@d\" is not a valid header name"
            )]
        );
    }

    #[test]
    fn routes_none_shows_query_keys_and_shadow_redact_reach_the_model() {
        let none = "[proxy]\ndefault = \"a\"\nroutes = \"none\"\nshow_query_keys = [\"page\"]\n[services.a]\nurl = \"http://x:1\"";
        let config = parse(none).unwrap();
        assert!(config.proxy.no_routes);
        assert_eq!(config.proxy.show_query_keys, ["page"]);
        let config = parse(&with_route(
            "prefix = \"/api/users\"\nservice = \"users\"\nweight = 0\nshadow_redact = [\"/password\", \"/*/token\"]",
        ))
        .unwrap();
        assert!(!config.proxy.no_routes);
        assert!(config.proxy.show_query_keys.is_empty());
        assert_eq!(config.routes[0].shadow_redact, ["/password", "/*/token"]);
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("").is_err());
    }

    /// One line per case: `[proxy]` extra, route extra, whether `check` warns about case.
    #[test]
    fn routes_taking_writes_without_ignore_case_are_warned_about() {
        let cases = [
            ("", "", true),
            ("", "methods = [\"GET\", \"POST\"]\n", true),
            ("", "methods = [\"GET\", \"HEAD\"]\n", false),
            ("ignore_case = true\n", "", false),
        ];
        for (proxy, route, warns) in cases {
            let text = format!(
                "[proxy]\ndefault = \"m\"\n{proxy}[services.m]\nurl = \"http://127.0.0.1:1\"\n\
                 [[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"m\"\nweight = 0\n{route}"
            );
            let config = super::super::parse(&text).expect("valid");
            let found = warnings(&text, &config);
            assert_eq!(!found.is_empty(), warns, "{proxy:?} {route:?}: {found:?}");
            if warns {
                assert_eq!((found[0].line, found[0].column), (7, 10), "{found:?}");
                assert!(found[0].message.starts_with("warning: route \"users\""));
                assert!(found[0].message.contains("/API/USERS"));
            }
        }
    }
}
