//! The compiled route table and the routing decision.
//!
//! [`RouteTable::resolve`] does no I/O, takes no lock and allocates nothing: it probes a hash map
//! with at most `max_depth + 1` sub-slices of the normalized path (longest first), so its cost
//! depends on the path's depth, not on how many routes the table holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method, header};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::config::{Config, RouteConfig, StickyKey};
use crate::metrics::PairMetrics;
use crate::near_miss::Shapes;
use crate::upstream::{Upstream, Upstreams};

/// Label of requests no route claims.
pub const UNMATCHED: &str = "default";

/// Sticky decisions use this many buckets, so weights are exact to 0.01 %.
const BUCKETS: u64 = 10_000;

/// One route, compiled: names resolved to upstreams, metric handles ready.
pub struct Route {
    /// The route as validated.
    pub config: RouteConfig,
    /// The service taking the peeled-off share.
    pub service: Arc<Upstream>,
    /// Path shapes of this route's near misses already logged.
    pub near_miss_shapes: Shapes,
    /// [`sticky_seed`] of the route's name, computed once.
    sticky_seed: u64,
    to_service: PairMetrics,
    to_default: PairMetrics,
}

/// An immutable snapshot of `routes.toml`, swapped whole on reload.
pub struct RouteTable {
    /// Increases by one with every applied reload.
    pub revision: u64,
    /// sha256 of the file this table came from.
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// The validated file.
    pub config: Config,
    /// Who serves what no route claims.
    pub default: Arc<Upstream>,
    unmatched: PairMetrics,
    routes: Vec<Route>,
    /// Route indices by [`prefix_hash`] of their prefix; collisions are told apart by
    /// comparing the prefix itself, so the probe never allocates.
    by_prefix: HashMap<u64, Vec<usize>>,
    /// `[proxy] ignore_case`: prefixes match whatever the letter case.
    ignore_case: bool,
    /// Segments in the deepest prefix: probing deeper is pointless.
    max_depth: usize,
    /// Some route has `hold_writes`: only then does a write pay for the fence check.
    fences: bool,
}

/// Where one request goes.
pub struct Decision<'t> {
    /// The route that matched, if any (it may still send the request to the default).
    pub route: Option<&'t Route>,
    /// Who serves the request.
    pub upstream: &'t Arc<Upstream>,
    /// Handles for counting it.
    pub metrics: &'t PairMetrics,
    /// A failure of the service may be retried on the default: the route allows it, the
    /// service serves the request, the method is safe (RFC 9110 §9.2.1: it may be sent twice)
    /// and it is not a protocol switch. The caller adds the last condition, an empty body.
    pub fallback: bool,
    /// The default serves the request and the route mirrors it to the service for comparison
    /// (`shadow` on, the method among `shadow_methods`, not a protocol switch).
    pub shadow: bool,
    /// The route's write fence is up and the method is not safe (RFC 9110 §9.2.1): the
    /// request waits for a table without the fence instead of being forwarded (reference §7).
    pub hold: bool,
}

impl Decision<'_> {
    /// The route label: the route's name, or `default` when none matched.
    pub fn route_name(&self) -> &str {
        self.metrics.route()
    }
}

impl RouteTable {
    /// Compiles a validated config; `upstreams` keeps connection pools across reloads.
    ///
    /// # Panics
    ///
    /// If `config` names a service it does not define, which [`crate::config::parse`] refuses:
    /// compile only what it returned.
    pub fn compile(config: Config, sha256: String, revision: u64, upstreams: &Upstreams) -> Self {
        let by_name = upstreams.resolve(&config.services);
        let lookup = |name: &str| {
            Arc::clone(by_name.get(name).unwrap_or_else(|| {
                panic!("service {name:?} is not defined; validation refuses such a config")
            }))
        };
        let default = lookup(&config.proxy.default);
        let ignore_case = config.proxy.ignore_case;
        let fences = config.routes.iter().any(|r| r.hold_writes);
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut by_prefix = HashMap::with_capacity(config.routes.len());
        let mut max_depth = 0;
        for (i, route) in config.routes.iter().enumerate() {
            let service = lookup(&route.service);
            by_prefix
                .entry(prefix_hash(&route.prefix))
                .or_insert_with(Vec::new)
                .push(i);
            max_depth = max_depth.max(depth(&route.prefix));
            routes.push(Route {
                sticky_seed: sticky_seed(&route.name),
                near_miss_shapes: Shapes::default(),
                to_service: PairMetrics::new(&route.name, service.name()),
                to_default: PairMetrics::new(&route.name, default.name()),
                config: route.clone(),
                service,
            });
        }
        Self {
            revision,
            sha256,
            loaded_at: SystemTime::now(),
            unmatched: PairMetrics::new(UNMATCHED, default.name()),
            default,
            config,
            routes,
            by_prefix,
            ignore_case,
            max_depth,
            fences,
        }
    }

    /// Routes in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route whose prefix is the longest segment-aware prefix of `path` (normalized).
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        self.lookup_with(path, self.ignore_case)
    }

    /// For a request no route claims: the route it would match if letter case were ignored
    /// (see [`crate::near_miss`]). `None` when the table ignores case already. Allocates
    /// nothing, but only requests that fall to the default should pay for it.
    pub fn near_miss(&self, path: &str) -> Option<&Route> {
        if self.ignore_case {
            return None;
        }
        self.lookup_with(path, true)
    }

    fn lookup_with(&self, path: &str, ignore_case: bool) -> Option<&Route> {
        // Ignore a trailing slash: `/api/users/` is under `/api/users`.
        let path = match path.strip_suffix('/') {
            Some("") | None => path,
            Some(p) => p,
        };
        if self.by_prefix.is_empty() {
            return None;
        }
        // Start at the deepest candidate any prefix could match.
        let mut end = if self.max_depth == 0 { 0 } else { path.len() };
        let mut seen = 0;
        for (i, b) in path.bytes().enumerate().skip(1) {
            if b == b'/' {
                seen += 1;
                if seen == self.max_depth {
                    end = i;
                    break;
                }
            }
        }
        loop {
            let candidate = if end == 0 { "/" } else { &path[..end] };
            if let Some(route) = self.probe(candidate, ignore_case) {
                return Some(route);
            }
            if end == 0 {
                return None;
            }
            end = path[..end].rfind('/').unwrap_or(0);
        }
    }

    /// Decides who serves a request. Pure: the same inputs give the same answer except for
    /// non-sticky splits, which draw a per-request random number.
    pub fn resolve(&self, method: &Method, path: &str, headers: &HeaderMap) -> Decision<'_> {
        let Some(route) = self.lookup(path) else {
            return Decision {
                route: None,
                upstream: &self.default,
                metrics: &self.unmatched,
                fallback: false,
                shadow: false,
                hold: false,
            };
        };
        let to_service = match self.forced(headers, route) {
            Some(forced) => forced,
            None => {
                route
                    .config
                    .methods
                    .as_ref()
                    .is_none_or(|m| m.contains(method))
                    && route.takes(headers)
            }
        };
        let config = &route.config;
        // A tunnel cannot be replayed or compared; checked only when a flag could be set.
        let plain = || !crate::headers::is_upgrade(headers);
        let hold = config.hold_writes && !method.is_safe();
        if to_service {
            Decision {
                route: Some(route),
                upstream: &route.service,
                metrics: &route.to_service,
                fallback: config.fallback && method.is_safe() && plain(),
                shadow: false,
                hold,
            }
        } else {
            Decision {
                route: Some(route),
                upstream: &self.default,
                metrics: &route.to_default,
                fallback: false,
                shadow: config.shadow && config.shadow_methods.contains(method) && plain(),
                hold,
            }
        }
    }
}

impl RouteTable {
    fn probe(&self, candidate: &str, ignore_case: bool) -> Option<&Route> {
        let indices = self.by_prefix.get(&prefix_hash(candidate))?;
        indices.iter().map(|i| &self.routes[*i]).find(|r| {
            let prefix = r.config.prefix.as_str();
            if ignore_case {
                prefix.eq_ignore_ascii_case(candidate)
            } else {
                prefix == candidate
            }
        })
    }

    /// The operator-enabled override: `Some(true)` forces the route's service, `Some(false)`
    /// the default; any other value is ignored.
    fn forced(&self, headers: &HeaderMap, route: &Route) -> Option<bool> {
        let name = self.config.proxy.override_header.as_ref()?;
        let value = headers.get(name)?.as_bytes();
        if value == route.config.service.as_bytes() {
            Some(true)
        } else if value == UNMATCHED.as_bytes() {
            Some(false)
        } else {
            None
        }
    }

    /// Where a request the route's service failed is retried: the default, counted under the
    /// same route.
    pub fn fallback<'t>(&'t self, route: &'t Route) -> Decision<'t> {
        Decision {
            route: Some(route),
            upstream: &self.default,
            metrics: &route.to_default,
            fallback: false,
            shadow: false,
            hold: false,
        }
    }

    /// Whether any route has its write fence up.
    pub fn has_fences(&self) -> bool {
        self.fences
    }

    /// The route whose write fence holds a request with `method` to `path` (normalized), if
    /// any. Costs nothing for safe methods or a table without fences.
    pub fn fence(&self, method: &Method, path: &str) -> Option<&Route> {
        if !self.fences || method.is_safe() {
            return None;
        }
        self.lookup(path).filter(|r| r.config.hold_writes)
    }
}

impl Route {
    /// Whether this request falls in the service's share of the split.
    fn takes(&self, headers: &HeaderMap) -> bool {
        match self.config.weight {
            0 => false,
            100 => true,
            weight => {
                let bucket = match self.sticky_key(headers) {
                    Some(key) => bucket(self.sticky_seed, key),
                    None => random_bucket(),
                };
                bucket < u64::from(weight) * (BUCKETS / 100)
            }
        }
    }

    fn sticky_key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        match self.config.sticky.as_ref()? {
            StickyKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            StickyKey::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
                    (k == name.as_bytes()).then(|| &v[1..])
                }),
        }
    }
}

/// The bucket of a sticky key: xxh3 (a fixed, published specification, so every replica and
/// every version agrees) of the key seeded by the route name, so routes split independently.
/// A key in the service's share at weight w stays there at any weight above w.
pub fn sticky_bucket(route: &str, key: &[u8]) -> u64 {
    bucket(sticky_seed(route), key)
}

fn sticky_seed(route: &str) -> u64 {
    xxh3_64_with_seed(route.as_bytes(), 0)
}

fn bucket(seed: u64, key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, seed) % BUCKETS
}

fn random_bucket() -> u64 {
    crate::random::next_u64() % BUCKETS
}

/// FNV-1a over the ASCII-lower-cased bytes: the same for prefixes that differ only in case, so
/// one table serves both matching modes.
fn prefix_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    })
}

fn depth(prefix: &str) -> usize {
    prefix.bytes().filter(|b| *b == b'/').count() - usize::from(prefix == "/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::path::normalize;

    fn table(routes: &str) -> RouteTable {
        table_with_proxy("", routes)
    }

    fn table_with_proxy(proxy_extra: &str, routes: &str) -> RouteTable {
        let text = format!(
            "[proxy]\ndefault = \"monolith\"\n{proxy_extra}[services.monolith]\nurl = \"http://127.0.0.1:1\"\n\
             [services.users]\nurl = \"http://127.0.0.1:2\"\n[services.posts]\nurl = \"http://127.0.0.1:3\"\n\
             [services.admin]\nurl = \"http://127.0.0.1:4\"\n{routes}"
        );
        let config = config::parse(&text).expect("valid config");
        RouteTable::compile(config, String::new(), 1, &Upstreams::default())
    }

    fn routed(t: &RouteTable, method: &Method, raw: &str) -> String {
        let path = raw.split('?').next().unwrap_or(raw);
        match normalize(path) {
            Ok(p) => {
                let d = t.resolve(method, &p, &HeaderMap::new());
                format!("{} {} {}", d.route_name(), d.upstream.name(), p)
            }
            Err(e) => format!("400 {e}"),
        }
    }

    const ROUTES: &str = "[[routes]]\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 100\n\
        [[routes]]\nprefix = \"/api/posts\"\nservice = \"posts\"\nweight = 100\n\
        [[routes]]\nname = \"posts-reads\"\nprefix = \"/api/posts/by-user\"\nservice = \"posts\"\nweight = 100\nmethods = [\"GET\", \"HEAD\"]\n\
        [[routes]]\nprefix = \"/admin\"\nservice = \"admin\"\nweight = 100\n";

    /// Fallback and shadow eligibility, one line per case: route settings, method, whether the
    /// request asks for a WebSocket upgrade, then `backend fallback shadow`.
    #[test]
    fn fallback_and_shadow_eligibility_table() {
        let cases: &[(&str, Method, bool, &str)] = &[
            (
                "weight = 100\nfallback = true",
                Method::GET,
                false,
                "users fallback -",
            ),
            (
                "weight = 100\nfallback = true",
                Method::HEAD,
                false,
                "users fallback -",
            ),
            (
                "weight = 100\nfallback = true",
                Method::OPTIONS,
                false,
                "users fallback -",
            ),
            (
                "weight = 100\nfallback = true",
                Method::POST,
                false,
                "users - -",
            ),
            (
                "weight = 100\nfallback = true",
                Method::DELETE,
                false,
                "users - -",
            ),
            (
                "weight = 100\nfallback = true",
                Method::GET,
                true,
                "users - -",
            ),
            ("weight = 100", Method::GET, false, "users - -"),
            (
                "weight = 0\nfallback = true",
                Method::GET,
                false,
                "monolith - -",
            ),
            (
                "weight = 0\nshadow = true",
                Method::GET,
                false,
                "monolith - shadow",
            ),
            (
                "weight = 0\nshadow = true",
                Method::HEAD,
                false,
                "monolith - shadow",
            ),
            (
                "weight = 0\nshadow = true",
                Method::POST,
                false,
                "monolith - -",
            ),
            (
                "weight = 0\nshadow = true",
                Method::GET,
                true,
                "monolith - -",
            ),
            (
                "weight = 0\nshadow = true\nshadow_methods = [\"GET\", \"POST\"]",
                Method::POST,
                false,
                "monolith - shadow",
            ),
            (
                "weight = 100\nshadow = true",
                Method::GET,
                false,
                "users - -",
            ),
            (
                "weight = 100\nshadow = true\nmethods = [\"GET\"]",
                Method::POST,
                false,
                "monolith - -",
            ),
            ("weight = 0", Method::GET, false, "monolith - -"),
        ];
        for (settings, method, upgrade, expected) in cases {
            let t = table(&format!(
                "[[routes]]\nprefix = \"/api/users\"\nservice = \"users\"\n{settings}\n"
            ));
            let mut headers = HeaderMap::new();
            if *upgrade {
                headers.insert(header::UPGRADE, "websocket".parse().unwrap());
                headers.insert(header::CONNECTION, "upgrade".parse().unwrap());
            }
            let d = t.resolve(method, "/api/users/1", &headers);
            let got = format!(
                "{} {} {}",
                d.upstream.name(),
                if d.fallback { "fallback" } else { "-" },
                if d.shadow { "shadow" } else { "-" }
            );
            assert_eq!(&got, expected, "{settings:?} {method} upgrade={upgrade}");
        }
    }

    /// One line per case: the request, then `route backend path-sent-upstream` or `400 why`.
    #[test]
    fn routing_table() {
        let t = table(ROUTES);
        let get = Method::GET;
        let long = format!("/api/users/{}", "x".repeat(8 * 1024));
        let cases: Vec<(&Method, &str, String)> = vec![
            (&get, "/api/users", "users users /api/users".into()),
            (&get, "/api/users/7", "users users /api/users/7".into()),
            (&get, "/api/users/", "users users /api/users/".into()),
            (&get, "/api/usersX", "default monolith /api/usersX".into()),
            (&get, "/API/users", "default monolith /API/users".into()),
            (&get, "/api/users/../posts", "posts posts /api/posts".into()),
            (
                &get,
                "/api/users/%2e%2e/posts",
                "posts posts /api/posts".into(),
            ),
            (
                &get,
                "/api/users/%2E%2E%2Fposts",
                "400 a disguised '.' or '..' segment could climb out of the route".into(),
            ),
            (
                &get,
                "/api/users/../admin",
                "default monolith /api/admin".into(),
            ),
            (&get, "/api/users/../../admin", "admin admin /admin".into()),
            (
                &get,
                "/api/users/../../../admin",
                "400 '..' climbs above the root".into(),
            ),
            (&get, "//api//users/1", "users users /api/users/1".into()),
            (&get, "/api/users/./1", "users users /api/users/1".into()),
            (
                &get,
                "/api/users?next=/api/posts",
                "users users /api/users".into(),
            ),
            (&get, "/api?x=/api/users", "default monolith /api".into()),
            (&get, "/..", "400 '..' climbs above the root".into()),
            (&get, "/", "default monolith /".into()),
            (
                &get,
                "/api/users/%FF%FE",
                "users users /api/users/%FF%FE".into(),
            ),
            (&get, &long, format!("users users {long}")),
            (
                &get,
                "/api/posts/by-user/2",
                "posts-reads posts /api/posts/by-user/2".into(),
            ),
            (
                &Method::DELETE,
                "/api/posts/by-user/2",
                "posts-reads monolith /api/posts/by-user/2".into(),
            ),
            (
                &Method::DELETE,
                "/api/posts/2",
                "posts posts /api/posts/2".into(),
            ),
            (
                &get,
                "/api/posts/by-userX",
                "posts posts /api/posts/by-userX".into(),
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(routed(&t, method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn file_order_does_not_matter() {
        let a = table(ROUTES);
        let reversed: Vec<&str> = ROUTES
            .split("[[routes]]\n")
            .filter(|s| !s.is_empty())
            .collect();
        let b = table(
            &reversed
                .iter()
                .rev()
                .map(|r| format!("[[routes]]\n{r}"))
                .collect::<String>(),
        );
        for path in ["/api/posts/by-user/1", "/api/posts/1", "/api/users", "/x"] {
            assert_eq!(
                routed(&a, &Method::GET, path),
                routed(&b, &Method::GET, path),
                "{path}"
            );
        }
    }

    #[test]
    fn weight_zero_and_hundred_are_absolute() {
        let t = table("[[routes]]\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 0\n");
        for _ in 0..1000 {
            assert_eq!(
                routed(&t, &Method::GET, "/api/users/1"),
                "users monolith /api/users/1"
            );
        }
    }

    #[test]
    fn a_root_prefix_claims_everything_but_longer_prefixes_win() {
        let t = table(
            "[[routes]]\nprefix = \"/\"\nservice = \"admin\"\nweight = 100\n[[routes]]\nprefix = \"/api/users\"\nservice = \"users\"\nweight = 100\n",
        );
        assert_eq!(
            routed(&t, &Method::GET, "/anything/else"),
            "admin admin /anything/else"
        );
        assert_eq!(routed(&t, &Method::GET, "/"), "admin admin /");
        assert_eq!(
            routed(&t, &Method::GET, "/api/users/3"),
            "users users /api/users/3"
        );
    }

    #[test]
    fn sticky_keys_come_from_headers_or_cookies() {
        let t = table(
            "[[routes]]\nprefix = \"/a\"\nservice = \"users\"\nweight = 50\nsticky = \"cookie:sid\"\n",
        );
        let route = &t.routes()[0];
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; sid=abc123; x=1".parse().unwrap(),
        );
        assert_eq!(route.sticky_key(&headers), Some(&b"abc123"[..]));
        headers.insert(header::COOKIE, "sidx=1".parse().unwrap());
        assert_eq!(route.sticky_key(&headers), None);
    }

    #[test]
    fn the_same_sticky_key_always_lands_on_the_same_side() {
        let t = table(
            "[[routes]]\nprefix = \"/a\"\nservice = \"users\"\nweight = 30\nsticky = \"header:x-user-id\"\n",
        );
        for user in 0..200 {
            let mut headers = HeaderMap::new();
            headers.insert("x-user-id", user.to_string().parse().unwrap());
            let first = t
                .resolve(&Method::GET, "/a", &headers)
                .upstream
                .name()
                .to_string();
            for _ in 0..5 {
                assert_eq!(
                    t.resolve(&Method::GET, "/a", &headers).upstream.name(),
                    first
                );
            }
        }
    }

    #[test]
    fn a_non_sticky_split_converges_to_its_weight() {
        let t = table("[[routes]]\nprefix = \"/a\"\nservice = \"users\"\nweight = 30\n");
        let to_service = (0..10_000)
            .filter(|_| {
                t.resolve(&Method::GET, "/a/1", &HeaderMap::new())
                    .upstream
                    .name()
                    == "users"
            })
            .count();
        assert!(
            (2_800..=3_200).contains(&to_service),
            "{to_service} of 10000 at weight 30"
        );
    }

    #[test]
    fn sticky_keys_split_at_the_weight_and_agree_across_compiles() {
        let text = "[[routes]]\nprefix = \"/a\"\nservice = \"users\"\nweight = 30\nsticky = \"header:x-user-id\"\n";
        let (a, b) = (table(text), table(text));
        let mut to_service = 0;
        for user in 0..1_000 {
            let mut headers = HeaderMap::new();
            headers.insert("x-user-id", format!("user-{user}").parse().unwrap());
            let side = a.resolve(&Method::GET, "/a", &headers).upstream.name();
            assert_eq!(
                side,
                b.resolve(&Method::GET, "/a", &headers).upstream.name()
            );
            to_service += usize::from(side == "users");
        }
        assert!(
            (250..=350).contains(&to_service),
            "{to_service} of 1000 keys at weight 30"
        );
    }

    /// The bucket function is part of the contract between replicas and versions: these values
    /// must never change, or a rolling upgrade would reshuffle every sticky key.
    #[test]
    fn sticky_buckets_are_pinned() {
        let pinned: Vec<u64> = ["user-1", "user-2", "abc"]
            .iter()
            .map(|k| sticky_bucket("users", k.as_bytes()))
            .collect();
        assert_eq!(pinned, PINNED_BUCKETS.to_vec());
        assert_ne!(
            sticky_bucket("users", b"user-1"),
            sticky_bucket("posts", b"user-1")
        );
    }

    /// Computed independently with the Python `xxhash` package:
    /// `xxh3_64_intdigest(key, seed=xxh3_64_intdigest(b"users", seed=0)) % 10000`.
    const PINNED_BUCKETS: [u64; 3] = [4401, 5398, 9150];

    proptest::proptest! {
        /// A ramp only adds keys: a key on the service at a weight stays there at every higher
        /// weight.
        #[test]
        fn raising_the_weight_only_adds_keys(key in "[a-z0-9-]{1,24}", low in 1u8..100, step in 1u8..100) {
            let high = low.saturating_add(step).min(100);
            let at = |w: u8| {
                let t = table(&format!("[[routes]]\nprefix = \"/a\"\nservice = \"users\"\nweight = {w}\nsticky = \"cookie:sid\"\n"));
                let mut headers = HeaderMap::new();
                headers.insert(header::COOKIE, format!("sid={key}").parse().unwrap());
                t.resolve(&Method::GET, "/a", &headers).upstream.name() == "users"
            };
            if at(low) {
                proptest::prop_assert!(at(high), "key {} left the service going {} -> {}", key, low, high);
            }
        }
    }

    /// One line per case: the path (normalized) as a request no route claimed, then the route
    /// it nearly matched, or `-`.
    #[test]
    fn near_misses_are_matches_only_when_case_is_ignored() {
        let t = table(ROUTES);
        let cases = [
            ("/API/USERS", "users"),
            ("/API/USERS/", "users"),
            ("/Api/Users/7", "users"),
            ("/api/POSTS/1", "posts"),
            ("/api/POSTS/by-user/2", "posts-reads"),
            ("/API/usersX", "-"),
            ("/api/threads", "-"),
            ("/", "-"),
        ];
        for (path, expected) in cases {
            assert!(
                t.lookup(path).is_none(),
                "{path} is claimed: never a near miss"
            );
            let got = t.near_miss(path).map_or("-", |r| r.config.name.as_str());
            assert_eq!(got, expected, "{path}");
        }
        let insensitive = table_with_proxy("ignore_case = true\n", ROUTES);
        assert!(insensitive.near_miss("/API/USERS").is_none());
    }

    #[test]
    fn ignore_case_matches_prefixes_whatever_the_case() {
        let sensitive = table(ROUTES);
        assert_eq!(
            routed(&sensitive, &Method::GET, "/API/Users/1"),
            "default monolith /API/Users/1"
        );
        let insensitive = table_with_proxy("ignore_case = true\n", ROUTES);
        assert_eq!(
            routed(&insensitive, &Method::GET, "/API/Users/1"),
            "users users /API/Users/1"
        );
        assert_eq!(
            routed(&insensitive, &Method::GET, "/api/POSTS/by-USER/2"),
            "posts-reads posts /api/POSTS/by-USER/2"
        );
        assert_eq!(
            routed(&insensitive, &Method::GET, "/api/usersX"),
            "default monolith /api/usersX"
        );
    }
}
