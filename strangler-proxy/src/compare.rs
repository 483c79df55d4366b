//! Comparing the default's answer with the service's: status, a set of response headers,
//! and the body (decoded beforehand, see `decode`), JSON structurally, with ignored and
//! learned-noisy fields left out. Pure, so it is tested with tables.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, HeaderName};
use serde_json::Value;

use crate::decode;

/// One side's answer, as captured for comparison.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers as received.
    pub headers: HeaderMap,
    /// The whole body with its content codings undone (bounded by the capture limit).
    pub body: Bytes,
}

impl Answer {
    /// `content-type`, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }
}

/// What the client asked, where that changes what counts as the same answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    /// A HEAD request: both answers are bodiless whatever their status.
    pub head: bool,
    /// The request's `accept-encoding`: any coding it accepts is as good as another.
    pub accept_encoding: Option<String>,
}

/// Response headers compared unless a route's `shadow_ignore_headers` removes them; a route's
/// `shadow_headers` adds others. How each is compared is in [`HeaderRules`].
pub const DEFAULT_HEADERS: [&str; 7] = [
    "allow",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-type",
    "location",
    "set-cookie",
];

/// The response headers a route compares, and how:
///
/// - `content-type`: the media type (parameters such as `charset` left out);
/// - `allow`: the set of methods, in any order or case;
/// - `content-encoding`: only when one side used a coding the client did not accept (bodies
///   are compared decoded, so gzip against identity is the same answer);
/// - `cache-control`: the set of directives, in any order or case;
/// - `set-cookie`: the names of the cookies set (values are per session);
/// - `content-length`: whether it is present, on bodiless answers only (HEAD, or no body on
///   either side), where it is the one framing detail a client can see;
/// - anything else (`location`, a route's own): the values, comma-joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRules {
    /// Sorted by name, each once.
    names: Vec<HeaderName>,
}

impl Default for HeaderRules {
    fn default() -> Self {
        Self::new(&[], &[])
    }
}

impl HeaderRules {
    /// The defaults with `add` added and `remove` removed.
    pub fn new(add: &[HeaderName], remove: &[HeaderName]) -> Self {
        let mut names: Vec<HeaderName> = DEFAULT_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .chain(add.iter().cloned())
            .filter(|n| !remove.contains(n))
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        Self { names }
    }

    /// The compared names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(HeaderName::as_str)
    }

    /// Every difference between the two answers' compared headers.
    pub fn differences(
        &self,
        default: &Answer,
        service: &Answer,
        asked: &Asked,
    ) -> Vec<Difference> {
        let mut out = Vec::new();
        // content-type first: it is what a reader of a diff looks at after the status.
        if self.names.contains(&header::CONTENT_TYPE) {
            let (d, s) = (
                media_type(default.content_type()),
                media_type(service.content_type()),
            );
            if d != s {
                out.push(Difference {
                    at: "content-type".into(),
                    default: format!("{:?}", default.content_type().unwrap_or("")),
                    service: format!("{:?}", service.content_type().unwrap_or("")),
                });
            }
        }
        let bodiless = asked.head || (default.body.is_empty() && service.body.is_empty());
        for name in self.names.iter().filter(|n| **n != header::CONTENT_TYPE) {
            let view = |a: &Answer| -> Option<String> {
                match name.as_str() {
                    "allow" => tokens(&a.headers, name, |t| t.to_ascii_uppercase()),
                    "cache-control" => tokens(&a.headers, name, |t| t.to_ascii_lowercase()),
                    "set-cookie" => cookie_names(&a.headers),
                    "content-length" if !bodiless => None,
                    "content-length" => Some(presence(&a.headers, name)),
                    "content-encoding" => None,
                    _ => joined(&a.headers, name),
                }
            };
            let (d, s) = if name == header::CONTENT_ENCODING {
                encoding_views(default, service, asked)
            } else {
                (view(default), view(service))
            };
            if d != s {
                let show =
                    |v: Option<String>| v.map_or_else(|| "(missing)".into(), |v| format!("{v:?}"));
                out.push(Difference {
                    at: format!("header {name}"),
                    default: show(d),
                    service: show(s),
                });
            }
        }
        out
    }
}

/// Each side's codings, or `None` for both when the client accepts both (the usual case: a
/// client asking for gzip takes identity too).
fn encoding_views(
    default: &Answer,
    service: &Answer,
    asked: &Asked,
) -> (Option<String>, Option<String>) {
    let codings = |a: &Answer| {
        let list: Vec<String> = a
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(decode::codings)
            .collect();
        list
    };
    let (d, s) = (codings(default), codings(service));
    let accepted = |list: &[String]| {
        if list.is_empty() {
            decode::accepts(asked.accept_encoding.as_deref(), "identity")
        } else {
            list.iter()
                .all(|c| decode::accepts(asked.accept_encoding.as_deref(), c))
        }
    };
    if d == s || (accepted(&d) && accepted(&s)) {
        return (None, None);
    }
    let show = |l: Vec<String>| {
        if l.is_empty() {
            "identity".to_string()
        } else {
            l.join(", ")
        }
    };
    (Some(show(d)), Some(show(s)))
}

/// Comma-separated tokens of every value of `name`, normalized by `norm`, as a sorted set.
fn tokens(headers: &HeaderMap, name: &HeaderName, norm: impl Fn(&str) -> String) -> Option<String> {
    if !headers.contains_key(name) {
        return None;
    }
    let set: BTreeSet<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .flat_map(|v| v.split(',').map(|t| norm(t.trim())).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect();
    Some(set.into_iter().collect::<Vec<_>>().join(", "))
}

fn cookie_names(headers: &HeaderMap) -> Option<String> {
    if !headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let names: BTreeSet<String> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| {
            let v = String::from_utf8_lossy(v.as_bytes());
            v.split(['=', ';']).next().unwrap_or("").trim().to_string()
        })
        .collect();
    Some(names.into_iter().collect::<Vec<_>>().join(", "))
}

fn presence(headers: &HeaderMap, name: &HeaderName) -> String {
    if headers.contains_key(name) {
        "present".into()
    } else {
        "absent".into()
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    if !headers.contains_key(name) {
        return None;
    }
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .collect();
    Some(values.join(", "))
}

/// One difference, at a JSON pointer (or `status`, `content-type`, `body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Where: a JSON pointer, or a pseudo-field name.
    pub at: String,
    /// The default's value, rendered.
    pub default: String,
    /// The service's value, rendered.
    pub service: String,
}

/// Pointers to leave out: configured (`shadow_ignore`) and learned as noise. A `*` segment
/// matches any one segment (array indices or keys), and a pointer covers everything below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignored {
    patterns: BTreeSet<String>,
}

impl Ignored {
    /// From configured pointers.
    pub fn new<I: IntoIterator<Item = String>>(pointers: I) -> Self {
        Self {
            patterns: pointers.into_iter().collect(),
        }
    }

    /// Adds a pattern; returns whether it was new.
    pub fn insert(&mut self, pattern: String) -> bool {
        self.patterns.insert(pattern)
    }

    /// Adds every pattern of `other`.
    pub fn extend(&mut self, other: &Ignored) {
        self.patterns.extend(other.patterns.iter().cloned());
    }

    /// The patterns, sorted.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(String::as_str)
    }

    /// Whether `pointer` is covered by a pattern.
    pub fn covers(&self, pointer: &str) -> bool {
        self.patterns.iter().any(|p| covers(p, pointer))
    }
}

fn covers(pattern: &str, pointer: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let mut want = pattern.split('/').skip(1);
    let mut have = pointer.split('/').skip(1);
    loop {
        match (want.next(), have.next()) {
            (None, _) => return true,
            (Some(_), None) => return false,
            (Some(w), Some(h)) if w == "*" || w == h => {}
            _ => return false,
        }
    }
}

/// Generalizes a pointer for learning: array indices become `*`, so noise learned at
/// `/3/updatedAt` covers every element's `updatedAt`.
pub fn generalize(pointer: &str) -> String {
    pointer
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// What `/diffs` and logs show instead of a secret.
pub const REDACTED: &str = "REDACTED";

/// Differences kept per mismatch; the rest are counted in a last entry.
pub const MAX_DIFFERENCES: usize = 50;

/// Every difference between two answers that `ignored` (JSON pointers) and `headers` (the
/// compared header set) do not leave out, values under `redacted` pointers shown as
/// [`REDACTED`], at most [`MAX_DIFFERENCES`] (each value at most ~200 bytes).
pub fn compare(
    default: &Answer,
    service: &Answer,
    ignored: &Ignored,
    redacted: &Ignored,
    headers: &HeaderRules,
    asked: &Asked,
) -> Vec<Difference> {
    let mut out = Vec::new();
    if default.status != service.status {
        out.push(Difference {
            at: "status".into(),
            default: default.status.to_string(),
            service: service.status.to_string(),
        });
    }
    out.extend(headers.differences(default, service, asked));
    for d in out.iter_mut().filter(|d| d.at == "header location") {
        d.default = redact_query(&d.default, &[]);
        d.service = redact_query(&d.service, &[]);
    }
    out.extend(compare_bodies(default, service, ignored, redacted));
    if out.len() > MAX_DIFFERENCES {
        let more = out.len() - MAX_DIFFERENCES;
        out.truncate(MAX_DIFFERENCES);
        out.push(Difference {
            at: "more".into(),
            default: format!("{more} more differences not shown"),
            service: String::new(),
        });
    }
    out
}

/// `path?query` with every query value replaced by [`REDACTED`] unless its key is in `shown`
/// (as sent). A part without `=` may be a token itself: it is shown only when listed.
pub fn redact_query(path_and_query: &str, shown: &[String]) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|part| match part.split_once('=') {
            Some((key, _)) if shown.iter().any(|s| s == key) => part.to_string(),
            Some((key, _)) => format!("{key}={REDACTED}"),
            None if part.is_empty() || shown.iter().any(|s| s == part) => part.to_string(),
            None => REDACTED.to_string(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// Differences between the two bodies alone (also how noise in the default is learned); values
/// under `redacted` pointers are shown as [`REDACTED`], and a body that is not JSON is shown
/// only by its size when anything is redacted.
pub fn compare_bodies(
    default: &Answer,
    service: &Answer,
    ignored: &Ignored,
    redacted: &Ignored,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let as_json = |a: &Answer| -> Option<Value> {
        if a.body.is_empty() {
            return None;
        }
        serde_json::from_slice(&a.body).ok()
    };
    match (as_json(default), as_json(service)) {
        (Some(d), Some(s)) => walk("", &d, &s, ignored, redacted, &mut out),
        _ if default.body != service.body && !ignored.covers("") => {
            let show = |body: &Bytes| {
                if redacted.patterns.is_empty() {
                    excerpt(body)
                } else {
                    format!("{} bytes ({REDACTED}: not JSON)", body.len())
                }
            };
            out.push(Difference {
                at: "body".into(),
                default: show(&default.body),
                service: show(&service.body),
            })
        }
        _ => {}
    }
    out
}

/// Renders differences one per line, for `/diffs` and logs.
pub fn render(differences: &[Difference]) -> String {
    let mut out = String::new();
    for d in differences {
        let _ = writeln!(
            out,
            "{}: default {} | service {}",
            d.at, d.default, d.service
        );
    }
    out
}

fn media_type(ct: Option<&str>) -> Option<String> {
    ct.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

fn walk(
    at: &str,
    d: &Value,
    s: &Value,
    ignored: &Ignored,
    redacted: &Ignored,
    out: &mut Vec<Difference>,
) {
    let render_value = |at: &str, v: &Value| render_redacted(at, v, redacted);
    if ignored.covers(at) {
        return;
    }
    match (d, s) {
        (Value::Object(dm), Value::Object(sm)) => {
            let keys: BTreeSet<&String> = dm.keys().chain(sm.keys()).collect();
            for key in keys {
                let child = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (dm.get(key), sm.get(key)) {
                    (Some(dv), Some(sv)) => walk(&child, dv, sv, ignored, redacted, out),
                    (Some(dv), None) if !ignored.covers(&child) => out.push(Difference {
                        default: render_value(&child, dv),
                        service: "(missing)".into(),
                        at: child,
                    }),
                    (None, Some(sv)) if !ignored.covers(&child) => out.push(Difference {
                        default: "(missing)".into(),
                        service: render_value(&child, sv),
                        at: child,
                    }),
                    _ => {}
                }
            }
        }
        (Value::Array(da), Value::Array(sa)) => {
            for i in 0..da.len().max(sa.len()) {
                let child = format!("{at}/{i}");
                match (da.get(i), sa.get(i)) {
                    (Some(dv), Some(sv)) => walk(&child, dv, sv, ignored, redacted, out),
                    (dv, sv) if !ignored.covers(&child) => out.push(Difference {
                        default: dv.map_or_else(|| "(missing)".into(), |v| render_value(&child, v)),
                        service: sv.map_or_else(|| "(missing)".into(), |v| render_value(&child, v)),
                        at: child,
                    }),
                    _ => {}
                }
            }
        }
        _ if d != s => out.push(Difference {
            at: if at.is_empty() { "/".into() } else { at.into() },
            default: render_value(at, d),
            service: render_value(at, s),
        }),
        _ => {}
    }
}

/// `v` (found at pointer `at`) rendered with every value under a redacted pointer replaced.
fn render_redacted(at: &str, v: &Value, redacted: &Ignored) -> String {
    if redacted.covers(at) {
        return format!("{REDACTED:?}");
    }
    if redacted.patterns.is_empty() {
        return render_value(v);
    }
    let mut v = v.clone();
    mask(at, &mut v, redacted);
    render_value(&v)
}

fn mask(at: &str, v: &mut Value, redacted: &Ignored) {
    let children: Vec<(String, &mut Value)> = match v {
        Value::Object(map) => map
            .iter_mut()
            .map(|(k, c)| {
                (
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    c,
                )
            })
            .collect(),
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .map(|(i, c)| (format!("{at}/{i}"), c))
            .collect(),
        _ => return,
    };
    for (pointer, child) in children {
        if redacted.covers(&pointer) {
            *child = Value::String(REDACTED.into());
        } else {
            mask(&pointer, child, redacted);
        }
    }
}

fn render_value(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 200 {
        format!("{}…", &text[..text.floor_char_boundary(200)])
    } else {
        text
    }
}

fn excerpt(body: &Bytes) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() > 200 {
        format!(
            "{:?}… ({} bytes)",
            &text[..text.floor_char_boundary(200)],
            body.len()
        )
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Answer {
            status,
            headers: map,
            body: Bytes::from(body.to_string()),
        }
    }

    fn json(status: u16, body: &str) -> Answer {
        answer(
            status,
            &[("content-type", "application/json; charset=utf-8")],
            body,
        )
    }

    fn all(default: &Answer, service: &Answer) -> Vec<Difference> {
        compare(
            default,
            service,
            &Ignored::default(),
            &Ignored::default(),
            &HeaderRules::default(),
            &Asked::default(),
        )
    }

    /// One line per case: default body, service body, ignored patterns, differences expected.
    #[test]
    fn comparison_table() {
        let cases: &[(&str, &str, &[&str], &[&str])] = &[
            (r#"{"id":1,"name":"a"}"#, r#"{"name":"a","id":1}"#, &[], &[]),
            (
                r#"{"id":1,"name":"a"}"#,
                r#"{"id":1}"#,
                &[],
                &["/name: default \"a\" | service (missing)"],
            ),
            (
                r#"{"id":1}"#,
                r#"{"id":1,"extra":true}"#,
                &[],
                &["/extra: default (missing) | service true"],
            ),
            (
                r#"[{"id":1},{"id":2}]"#,
                r#"[{"id":2},{"id":1}]"#,
                &[],
                &[
                    "/0/id: default 1 | service 2",
                    "/1/id: default 2 | service 1",
                ],
            ),
            (
                r#"[1,2,3]"#,
                r#"[1,2]"#,
                &[],
                &["/2: default 3 | service (missing)"],
            ),
            (
                r#"{"at":"10:00","id":1}"#,
                r#"{"at":"10:01","id":1}"#,
                &["/at"],
                &[],
            ),
            (
                r#"[{"at":1,"id":1},{"at":2,"id":2}]"#,
                r#"[{"at":5,"id":1},{"at":6,"id":2}]"#,
                &["/*/at"],
                &[],
            ),
            (
                r#"{"a":{"b":{"c":1}}}"#,
                r#"{"a":{"b":{"c":2}}}"#,
                &["/a"],
                &[],
            ),
            (
                r#"{"a/b":1}"#,
                r#"{"a/b":2}"#,
                &[],
                &["/a~1b: default 1 | service 2"],
            ),
            (r#"1"#, r#"1.0"#, &[], &["/: default 1 | service 1.0"]),
        ];
        for (d, s, ignore, expected) in cases {
            let ignored = Ignored::new(ignore.iter().map(|p| p.to_string()));
            let diffs = compare_bodies(&json(200, d), &json(200, s), &ignored, &Ignored::default());
            let got: Vec<String> = render(&diffs).lines().map(String::from).collect();
            assert_eq!(got, *expected, "{d} vs {s}");
        }
    }

    #[test]
    fn status_content_type_and_text_bodies_are_compared() {
        let text = |status, body: &str| {
            answer(
                status,
                &[("content-type", "text/plain; charset=utf-8")],
                body,
            )
        };
        assert!(all(&text(200, "ok"), &text(200, "ok")).is_empty());
        let diffs = all(&text(200, "ok"), &json(500, "{}"));
        let at: Vec<&str> = diffs.iter().map(|d| d.at.as_str()).collect();
        assert_eq!(at, vec!["status", "content-type", "body"]);
        // A charset difference alone is not a different media type.
        let latin = answer(204, &[("content-type", "text/plain")], "");
        assert!(all(&text(204, ""), &latin).is_empty());
        // The legacy 204 against a body: both the status and the body differ.
        let diffs = all(&answer(204, &[], ""), &text(200, "hello"));
        let at: Vec<&str> = diffs.iter().map(|d| d.at.as_str()).collect();
        assert_eq!(at, vec!["status", "content-type", "body"]);
    }

    /// One line per case: default body, service body, redacted pointers, differences shown.
    #[test]
    fn redacted_values_never_appear() {
        let cases: &[(&str, &str, &[&str], &[&str])] = &[
            (
                r#"{"password":"hunter2","n":1}"#,
                r#"{"password":"swordfish","n":1}"#,
                &["/password"],
                &["/password: default \"REDACTED\" | service \"REDACTED\""],
            ),
            (
                r#"{"user":{"password":"hunter2"}}"#,
                r#"{}"#,
                &["/*/password"],
                &["/user: default {\"password\":\"REDACTED\"} | service (missing)"],
            ),
            (
                r#"[{"token":"t1","id":1}]"#,
                r#"[]"#,
                &["/*/token"],
                &["/0: default {\"id\":1,\"token\":\"REDACTED\"} | service (missing)"],
            ),
            (
                r#"{"password":"hunter2"}"#,
                r#"[1]"#,
                &["/password"],
                &["/: default {\"password\":\"REDACTED\"} | service [1]"],
            ),
        ];
        for (d, s, redact, expected) in cases {
            let redacted = Ignored::new(redact.iter().map(|p| p.to_string()));
            let diffs =
                compare_bodies(&json(200, d), &json(200, s), &Ignored::default(), &redacted);
            let got: Vec<String> = render(&diffs).lines().map(String::from).collect();
            assert_eq!(got, *expected, "{d} vs {s}");
        }
        let text = |b: &str| answer(200, &[("content-type", "text/plain")], b);
        let diffs = compare_bodies(
            &text("password=hunter2"),
            &text("password=x"),
            &Ignored::default(),
            &Ignored::new(["/password".to_string()]),
        );
        assert!(!render(&diffs).contains("hunter2"), "{diffs:?}");
    }

    #[test]
    fn query_values_are_redacted_unless_their_key_is_shown() {
        let shown = ["page".to_string()];
        let cases = [
            ("/api/users/1", "/api/users/1"),
            ("/a?access_token=SECRET", "/a?access_token=REDACTED"),
            (
                "/a?page=2&token=S&flag",
                "/a?page=2&token=REDACTED&REDACTED",
            ),
            ("/a?page&x=", "/a?page&x=REDACTED"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_query(input, &shown), expected);
        }
    }

    #[test]
    fn differences_are_capped() {
        let many: String = (0..200)
            .map(|i| format!("\"k{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let diffs = compare(
            &json(200, &format!("{{{many}}}")),
            &json(200, "{}"),
            &Ignored::default(),
            &Ignored::default(),
            &HeaderRules::default(),
            &Asked::default(),
        );
        assert_eq!(diffs.len(), MAX_DIFFERENCES + 1);
        assert_eq!(
            diffs[MAX_DIFFERENCES].default,
            "150 more differences not shown"
        );
    }

    #[test]
    fn learned_pointers_generalize_array_indices() {
        assert_eq!(generalize("/3/updatedAt"), "/*/updatedAt");
        assert_eq!(generalize("/items/12/at"), "/items/*/at");
        assert_eq!(generalize("/v2"), "/v2");
        let ignored = Ignored::new([generalize("/0/at")]);
        assert!(ignored.covers("/7/at"));
        assert!(!ignored.covers("/7/id"));
    }

    type Headers<'a> = &'a [(&'a str, &'a str)];

    /// One line per case: request (HEAD?, accept-encoding), default headers and body, service
    /// headers and body, extra compared headers, removed headers, the differences expected.
    #[test]
    fn header_rules_table() {
        #[allow(clippy::type_complexity)]
        let cases: &[(
            bool,
            Option<&str>,
            Headers,
            &str,
            Headers,
            &str,
            &[&str],
            &[&str],
            &[&str],
        )] = &[
            // Allow: a set of methods, order and case free.
            (
                false,
                None,
                &[("allow", "GET, HEAD, OPTIONS")],
                "",
                &[("allow", "options,get, head")],
                "",
                &[],
                &[],
                &[],
            ),
            (
                false,
                None,
                &[("allow", "GET, HEAD, OPTIONS")],
                "",
                &[("allow", "GET, HEAD")],
                "",
                &[],
                &[],
                &["header allow: default \"GET, HEAD, OPTIONS\" | service \"GET, HEAD\""],
            ),
            (
                false,
                None,
                &[("allow", "GET")],
                "",
                &[],
                "",
                &[],
                &[],
                &["header allow: default \"GET\" | service (missing)"],
            ),
            (
                false,
                None,
                &[("allow", "GET")],
                "",
                &[],
                "",
                &[],
                &["allow"],
                &[],
            ),
            // Content-Length: presence, on bodiless answers only.
            (
                true,
                None,
                &[("content-length", "12")],
                "",
                &[],
                "",
                &[],
                &[],
                &["header content-length: default \"present\" | service \"absent\""],
            ),
            (
                true,
                None,
                &[("content-length", "12")],
                "",
                &[("content-length", "40")],
                "",
                &[],
                &[],
                &[],
            ),
            (
                false,
                None,
                &[("content-length", "0")],
                "",
                &[],
                "",
                &[],
                &[],
                &["header content-length: default \"present\" | service \"absent\""],
            ),
            (
                false,
                None,
                &[("content-length", "2")],
                "ok",
                &[],
                "ok",
                &[],
                &[],
                &[],
            ),
            (
                true,
                None,
                &[("content-length", "12")],
                "",
                &[],
                "",
                &[],
                &["content-length"],
                &[],
            ),
            // Content-Encoding: any coding the client accepts is as good as another.
            (
                false,
                Some("gzip"),
                &[("content-encoding", "gzip")],
                "x",
                &[],
                "x",
                &[],
                &[],
                &[],
            ),
            (
                false,
                Some("gzip, br"),
                &[("content-encoding", "gzip")],
                "x",
                &[("content-encoding", "br")],
                "x",
                &[],
                &[],
                &[],
            ),
            (
                false,
                Some("gzip"),
                &[("content-encoding", "gzip")],
                "x",
                &[("content-encoding", "br")],
                "x",
                &[],
                &[],
                &["header content-encoding: default \"gzip\" | service \"br\""],
            ),
            (
                false,
                None,
                &[],
                "x",
                &[("content-encoding", "gzip")],
                "x",
                &[],
                &[],
                &["header content-encoding: default \"identity\" | service \"gzip\""],
            ),
            // Cache-Control: directives as a set.
            (
                false,
                None,
                &[("cache-control", "no-cache, Max-Age=0")],
                "",
                &[("cache-control", "max-age=0,no-cache")],
                "",
                &[],
                &[],
                &[],
            ),
            (
                false,
                None,
                &[("cache-control", "no-store")],
                "",
                &[("cache-control", "max-age=60")],
                "",
                &[],
                &[],
                &["header cache-control: default \"no-store\" | service \"max-age=60\""],
            ),
            (
                false,
                None,
                &[("cache-control", "no-store")],
                "",
                &[],
                "",
                &[],
                &["cache-control"],
                &[],
            ),
            // Set-Cookie: names only.
            (
                false,
                None,
                &[
                    ("set-cookie", "sid=abc; Path=/"),
                    ("set-cookie", "theme=dark"),
                ],
                "",
                &[
                    ("set-cookie", "theme=light"),
                    ("set-cookie", "sid=xyz; HttpOnly"),
                ],
                "",
                &[],
                &[],
                &[],
            ),
            (
                false,
                None,
                &[("set-cookie", "sid=abc")],
                "",
                &[("set-cookie", "session=abc")],
                "",
                &[],
                &[],
                &["header set-cookie: default \"sid\" | service \"session\""],
            ),
            // Location and any header a route adds: the values.
            (
                false,
                None,
                &[("location", "/api/users/7")],
                "",
                &[("location", "/api/users/8")],
                "",
                &[],
                &[],
                &["header location: default \"/api/users/7\" | service \"/api/users/8\""],
            ),
            (
                false,
                None,
                &[("x-api-version", "1")],
                "",
                &[("x-api-version", "2")],
                "",
                &[],
                &[],
                &[],
            ),
            (
                false,
                None,
                &[("x-api-version", "1")],
                "",
                &[("x-api-version", "2")],
                "",
                &["x-api-version"],
                &[],
                &["header x-api-version: default \"1\" | service \"2\""],
            ),
            // Headers outside the set are never compared.
            (
                false,
                None,
                &[("date", "Mon")],
                "",
                &[("date", "Tue")],
                "",
                &[],
                &[],
                &[],
            ),
        ];
        let names = |l: &[&str]| -> Vec<HeaderName> {
            l.iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
                .collect()
        };
        for (i, (head, accept, dh, db, sh, sb, add, remove, expected)) in cases.iter().enumerate() {
            let rules = HeaderRules::new(&names(add), &names(remove));
            let asked = Asked {
                head: *head,
                accept_encoding: accept.map(String::from),
            };
            let diffs = rules.differences(&answer(200, dh, db), &answer(200, sh, sb), &asked);
            let got: Vec<String> = render(&diffs).lines().map(String::from).collect();
            assert_eq!(got, *expected, "case {i}");
        }
    }

    #[test]
    fn the_default_header_set_can_be_extended_and_narrowed() {
        let rules = HeaderRules::new(
            &[HeaderName::from_static("x-api-version")],
            &[HeaderName::from_static("cache-control")],
        );
        let names: Vec<&str> = rules.names().collect();
        assert_eq!(
            names,
            [
                "allow",
                "content-encoding",
                "content-length",
                "content-type",
                "location",
                "set-cookie",
                "x-api-version"
            ]
        );
    }
}
