//! Comparing the default's answer with the service's: status, content type and body, JSON
//! structurally, with ignored and learned-noisy fields left out. Pure, so it is tested with
//! tables.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;

/// One side's answer, as captured for comparison.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `content-type`, if any.
    pub content_type: Option<String>,
    /// The whole body (bounded by the capture limit).
    pub body: Bytes,
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

/// Every difference between two answers that `ignored` does not cover.
pub fn compare(default: &Answer, service: &Answer, ignored: &Ignored) -> Vec<Difference> {
    let mut out = Vec::new();
    if default.status != service.status {
        out.push(Difference {
            at: "status".into(),
            default: default.status.to_string(),
            service: service.status.to_string(),
        });
    }
    if media_type(&default.content_type) != media_type(&service.content_type) {
        out.push(Difference {
            at: "content-type".into(),
            default: format!("{:?}", default.content_type.as_deref().unwrap_or("")),
            service: format!("{:?}", service.content_type.as_deref().unwrap_or("")),
        });
    }
    let as_json = |a: &Answer| -> Option<Value> {
        if a.body.is_empty() {
            return None;
        }
        serde_json::from_slice(&a.body).ok()
    };
    match (as_json(default), as_json(service)) {
        (Some(d), Some(s)) => walk("", &d, &s, ignored, &mut out),
        _ if default.body != service.body && !ignored.covers("") => out.push(Difference {
            at: "body".into(),
            default: excerpt(&default.body),
            service: excerpt(&service.body),
        }),
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

fn media_type(ct: &Option<String>) -> Option<String> {
    ct.as_ref().map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

fn walk(at: &str, d: &Value, s: &Value, ignored: &Ignored, out: &mut Vec<Difference>) {
    if ignored.covers(at) {
        return;
    }
    match (d, s) {
        (Value::Object(dm), Value::Object(sm)) => {
            let keys: BTreeSet<&String> = dm.keys().chain(sm.keys()).collect();
            for key in keys {
                let child = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (dm.get(key), sm.get(key)) {
                    (Some(dv), Some(sv)) => walk(&child, dv, sv, ignored, out),
                    (Some(dv), None) if !ignored.covers(&child) => out.push(Difference {
                        at: child,
                        default: render_value(dv),
                        service: "(missing)".into(),
                    }),
                    (None, Some(sv)) if !ignored.covers(&child) => out.push(Difference {
                        at: child,
                        default: "(missing)".into(),
                        service: render_value(sv),
                    }),
                    _ => {}
                }
            }
        }
        (Value::Array(da), Value::Array(sa)) => {
            for i in 0..da.len().max(sa.len()) {
                let child = format!("{at}/{i}");
                match (da.get(i), sa.get(i)) {
                    (Some(dv), Some(sv)) => walk(&child, dv, sv, ignored, out),
                    (dv, sv) if !ignored.covers(&child) => out.push(Difference {
                        at: child,
                        default: dv.map_or_else(|| "(missing)".into(), render_value),
                        service: sv.map_or_else(|| "(missing)".into(), render_value),
                    }),
                    _ => {}
                }
            }
        }
        _ if d != s => out.push(Difference {
            at: if at.is_empty() { "/".into() } else { at.into() },
            default: render_value(d),
            service: render_value(s),
        }),
        _ => {}
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

    fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: Some("application/json; charset=utf-8".into()),
            body: Bytes::from(body.to_string()),
        }
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
            let diffs = compare(&json(200, d), &json(200, s), &ignored);
            let got: Vec<String> = render(&diffs).lines().map(String::from).collect();
            assert_eq!(got, *expected, "{d} vs {s}");
        }
    }

    #[test]
    fn status_content_type_and_text_bodies_are_compared() {
        let text = |status, body: &str| Answer {
            status,
            content_type: Some("text/plain; charset=utf-8".into()),
            body: Bytes::from(body.to_string()),
        };
        assert!(compare(&text(200, "ok"), &text(200, "ok"), &Ignored::default()).is_empty());
        let diffs = compare(&text(200, "ok"), &json(500, "{}"), &Ignored::default());
        let at: Vec<&str> = diffs.iter().map(|d| d.at.as_str()).collect();
        assert_eq!(at, vec!["status", "content-type", "body"]);
        // A charset difference alone is not a different media type.
        let mut latin = text(204, "");
        latin.content_type = Some("text/plain".into());
        assert!(compare(&text(204, ""), &latin, &Ignored::default()).is_empty());
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
}
