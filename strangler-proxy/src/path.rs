//! Path normalization: the one reading of a request path that routing and the upstream share.
//!
//! Routing on one spelling and forwarding another is how `/api/users/../admin` reaches a route
//! it should not, so the proxy routes on the normalized path and forwards exactly that path.
//! Rules (RFC 3986 §6.2.2): percent-escapes of unreserved characters are decoded, other escapes
//! are kept with upper-case hex, `.` and `..` segments are resolved, empty segments collapse, a
//! trailing `/` is kept. Anything that cannot be read safely is refused, never guessed.

use std::borrow::Cow;

/// Why a path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form (`/…`).
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// A `..` would climb above the root.
    #[error("'..' climbs above the root")]
    AboveRoot,
    /// An encoded `/` next to a dot segment (`..%2F`): a traversal attempt whichever way the
    /// upstream decodes it.
    #[error("an encoded '/' next to '.' or '..' could climb out of the route")]
    EncodedTraversal,
    /// `%` not followed by two hex digits.
    #[error("a '%' is not followed by two hex digits")]
    BadEscape,
}

/// Normalizes `path` (no query). Borrows when the path is already normal, which is the common
/// case on the hot path, so most requests allocate nothing here.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out = String::with_capacity(decoded.len());
    // Whether the last segment read leaves the path ending in '/' ("", "." and ".." do).
    let mut trailing_slash = false;
    let mut depth = 0usize;
    for segment in decoded.split('/') {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                if depth == 0 {
                    return Err(PathError::AboveRoot);
                }
                depth -= 1;
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
                trailing_slash = true;
            }
            s => {
                if s.contains("%2F") && s.split("%2F").any(|piece| piece == "." || piece == "..") {
                    return Err(PathError::EncodedTraversal);
                }
                depth += 1;
                out.push('/');
                out.push_str(s);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// True when the path contains an encoded `/`, which the upstream may or may not decode: the
/// caller checks that decoding it would not change the route before forwarding it.
pub fn has_encoded_slash(path: &str) -> bool {
    path.contains("%2F")
}

/// `path` with `%2F` decoded to `/`, for that check.
pub fn decode_slashes(path: &str) -> String {
    path.replace("%2F", "/")
}

/// A path already in normal form: no escapes, no empty or dot segments.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.contains(&b'%') {
        return false;
    }
    // Every segment after the leading '/' must be non-empty and not a dot segment; the last one
    // may be empty (a trailing slash).
    let mut segments = path[1..].split('/').peekable();
    while let Some(s) = segments.next() {
        let last = segments.peek().is_none();
        match s {
            "" if last => {}
            "" | "." | ".." => return false,
            _ => {}
        }
    }
    true
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Request paths are ASCII on the wire; hyper refuses anything else before we see it.
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|h| hex(*h)),
            bytes.get(i + 2).and_then(|l| hex(*l)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let value = hi << 4 | lo;
        if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
            out.push(char::from(value));
        } else {
            // Kept encoded (bytes that would be invalid UTF-8 stay escapes too): the upstream
            // decides what they mean, routing treats them as opaque segment bytes.
            out.push('%');
            out.push(char::from(HEX[usize::from(hi)]));
            out.push(char::from(HEX[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let long = format!("/api/users/{}", "a".repeat(8 * 1024));
        let cases: Vec<(&str, Result<&str, PathError>)> = vec![
            ("/", Ok("/")),
            ("/api/users", Ok("/api/users")),
            ("/api/users/", Ok("/api/users/")),
            ("/api/users/../posts", Ok("/api/posts")),
            ("/api/users/%2e%2e/posts", Ok("/api/posts")),
            (
                "/api/users/%2E%2E%2Fposts",
                Err(PathError::EncodedTraversal),
            ),
            ("/api/users/a%2F..", Err(PathError::EncodedTraversal)),
            ("/api/users/a%2Fb", Ok("/api/users/a%2Fb")),
            ("/files/a..b", Ok("/files/a..b")),
            ("//api//users/1", Ok("/api/users/1")),
            ("/api/users/./1", Ok("/api/users/1")),
            ("/api/usersX", Ok("/api/usersX")),
            ("/API/users", Ok("/API/users")),
            ("/..", Err(PathError::AboveRoot)),
            ("/api/../..", Err(PathError::AboveRoot)),
            ("/api/users/..", Ok("/api/")),
            ("/api/users/.", Ok("/api/users/")),
            ("/api/%75sers", Ok("/api/users")),
            ("/api/users/%ff%FE", Ok("/api/users/%FF%FE")),
            ("/api/users/%zz", Err(PathError::BadEscape)),
            ("/api/users/%2", Err(PathError::BadEscape)),
            ("/api/users/caf%C3%A9", Ok("/api/users/caf%C3%A9")),
            ("api/users", Err(PathError::NotAbsolute)),
            ("*", Err(PathError::NotAbsolute)),
            (long.as_str(), Ok(long.as_str())),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalize(input).as_deref().map_err(|e| *e),
                expected,
                "normalize({input:?})"
            );
        }
    }

    #[test]
    fn normal_paths_are_borrowed_not_copied() {
        assert!(matches!(normalize("/api/users/7"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/api/users/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/api//users"), Ok(Cow::Owned(_))));
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just("%2F".to_string()),
            Just("%41".to_string()),
            Just("%ff".to_string()),
            "[a-zA-Z0-9._~-]{1,6}",
        ];
        prop::collection::vec(segment, 0..10).prop_map(|segs| format!("/{}", segs.join("/")))
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(path in path_strategy()) {
            if let Ok(once) = normalize(&path) {
                let twice = normalize(&once).expect("a normalized path normalizes");
                prop_assert_eq!(once.as_ref(), twice.as_ref());
            }
        }

        #[test]
        fn a_normalized_path_has_no_dot_or_empty_segments(path in path_strategy()) {
            if let Ok(n) = normalize(&path) {
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"), "{} -> {}", path, n);
                // Not even an upstream that decodes %2F finds a dot segment in it.
                for segment in n.split('/').flat_map(|s| s.split("%2F")) {
                    prop_assert!(segment != ".." && segment != ".", "{} -> {}", path, n);
                }
            }
        }
    }
}
