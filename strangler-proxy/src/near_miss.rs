//! Near misses: requests that no route claims but that would match one if letter case were
//! ignored, such as `POST /API/USERS` against the prefix `/api/users`. A legacy router that
//! ignores case serves them as the route's resource, so with the route's writes on the service
//! they would still land in the monolith's database: the operator must hear of them before
//! cutting writes over.
//!
//! A trailing slash never causes one: lookup already ignores it (`/api/users/` is under
//! `/api/users`) and normalization collapses `//`, so what is left is letter case, with or
//! without a trailing slash. Each is counted per route (`strangler_route_near_misses_total`)
//! and logged once per path shape: ids generalised, at most [`SHAPES`] per route and table.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

/// Distinct path shapes logged per route (per table: a reload starts afresh).
pub const SHAPES: usize = 32;

/// The shape of a path for the log: segments of digits become `{n}`, long hexadecimal or
/// UUID-like segments `{id}`, and a trailing slash goes, so `/Api/Users/7` and `/Api/Users/8/`
/// are one shape.
pub fn shape(path: &str) -> String {
    let path = match path.strip_suffix('/') {
        Some("") | None => path,
        Some(p) => p,
    };
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(generalised(segment));
    }
    out
}

fn generalised(segment: &str) -> &str {
    let bytes = segment.as_bytes();
    if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        "{n}"
    } else if bytes.len() >= 16
        && bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-')
        && bytes.iter().any(u8::is_ascii_digit)
    {
        "{id}"
    } else {
        segment
    }
}

/// The path shapes of one route's near misses already logged: a fixed-size set of hashes,
/// allocated on the route's first near miss, lock-free.
#[derive(Default)]
pub struct Shapes {
    seen: OnceLock<Box<[AtomicU64]>>,
}

impl Shapes {
    /// Records `shape`; true only the first time it is seen and while fewer than [`SHAPES`]
    /// shapes were recorded (past that, nothing more is logged for the route).
    pub fn first_sighting(&self, shape: &str) -> bool {
        // 0 marks a free slot.
        let hash = xxh3_64(shape.as_bytes()) | 1;
        let slots = self
            .seen
            .get_or_init(|| (0..SHAPES).map(|_| AtomicU64::new(0)).collect());
        for slot in slots.iter() {
            match slot.compare_exchange(0, hash, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(held) if held == hash => return false,
                Err(_) => continue,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per case: the path, then its shape.
    #[test]
    fn shapes_generalise_ids() {
        let cases = [
            ("/API/USERS", "/API/USERS"),
            ("/API/USERS/", "/API/USERS"),
            ("/Api/Users/7", "/Api/Users/{n}"),
            ("/Api/Users/123/posts/9/", "/Api/Users/{n}/posts/{n}"),
            (
                "/Api/Users/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                "/Api/Users/{id}",
            ),
            ("/Api/Users/deadbeefdeadbeef0", "/Api/Users/{id}"),
            ("/Api/Users/me", "/Api/Users/me"),
            ("/Api/Users/v2x", "/Api/Users/v2x"),
            ("/", "/"),
        ];
        for (path, expected) in cases {
            assert_eq!(shape(path), expected, "{path}");
        }
    }

    #[test]
    fn a_shape_is_sighted_once_and_the_set_is_bounded() {
        let shapes = Shapes::default();
        assert!(shapes.first_sighting("/API/USERS"));
        assert!(!shapes.first_sighting("/API/USERS"));
        for i in 1..SHAPES {
            assert!(shapes.first_sighting(&format!("/a/{i}")), "{i}");
        }
        assert!(!shapes.first_sighting("/one/too/many"), "the set is full");
        assert!(!shapes.first_sighting("/a/1"));
    }
}
