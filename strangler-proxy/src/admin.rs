//! The admin listener: metrics, health, readiness and the route table in service.
//!
//! It binds to loopback unless `[proxy] admin` says otherwise, because `/routes` tells anyone
//! who can reach it where every service lives.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::reload::Live;

/// Answers one admin request.
pub fn respond<B>(live: &Arc<Live>, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(live.metrics().render())))
            .unwrap_or_default(),
        "/healthz" => text(StatusCode::OK, "alive\n"),
        "/readyz" if live.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(
            StatusCode::OK,
            &format!("ready: revision {}\n", live.table().revision),
        ),
        "/routes" => json_response(&routes(live)),
        "/diffs" => match query_param(req.uri().query().unwrap_or(""), "route") {
            Some(route) => json_response(&diffs(live, &route)),
            None => text(
                StatusCode::BAD_REQUEST,
                "name a route: /diffs?route=NAME (names are in /routes)\n",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz, /routes or /diffs?route=NAME\n",
        ),
    }
}

/// The `/routes` document.
pub fn routes(live: &Live) -> Value {
    let table = live.table();
    let routes: Vec<Value> = table
        .routes()
        .iter()
        .map(|r| {
            let c = &r.config;
            json!({
                "name": c.name,
                "prefix": c.prefix,
                "service": c.service,
                "weight": c.weight,
                "stage": c.stage().as_str(),
                "shadow": c.shadow,
                "fallback": c.fallback,
                "methods": c.methods.as_ref().map(|m| m.iter().map(Method::as_str).collect::<Vec<_>>()),
                "sticky": c.sticky.as_ref().map(|s| match s {
                    crate::config::StickyKey::Header(h) => format!("header:{h}"),
                    crate::config::StickyKey::Cookie(c) => format!("cookie:{c}"),
                }),
            })
        })
        .collect();
    let last_error = live.last_rejection().map(|r| {
        json!({
            "at": rfc3339(r.at),
            "errors": r.errors.to_string().lines().collect::<Vec<_>>(),
        })
    });
    json!({
        "file": live.path().display().to_string(),
        "revision": table.revision,
        "sha256": table.sha256,
        "loaded_at": rfc3339(table.loaded_at),
        "last_reload_error": last_error,
        "default": table.config.proxy.default,
        "services": table.config.services.iter().map(|s| json!({
            "name": s.name,
            "url": format!("http://{}", s.authority),
        })).collect::<Vec<_>>(),
        "routes": routes,
    })
}

/// The `/diffs?route=NAME` document: the latest shadow mismatches, newest first, and the
/// fields learned as noise.
pub fn diffs(live: &Live, route: &str) -> Value {
    let shadows = live.shadows();
    let mismatches: Vec<Value> = shadows
        .mismatches(route)
        .into_iter()
        .map(|m| {
            json!({
                "at": rfc3339(m.at),
                "method": m.method,
                "path": m.path,
                "request_id": m.request_id,
                "default_status": m.default_status,
                "service_status": m.service_status,
                "diff": m.diff,
            })
        })
        .collect();
    json!({
        "route": route,
        "known_route": live.table().routes().iter().any(|r| r.config.name == route),
        "learned_noise": shadows.noise(route),
        "mismatches": mismatches,
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key && !v.is_empty()).then(|| v.to_string())
    })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn json_response(value: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_default()
}

/// `2026-11-23T10:04:05Z` for a time after the epoch (civil-from-days, H. Hinnant).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_428_245)),
            "2026-11-23T10:04:05Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
