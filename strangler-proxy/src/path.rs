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
    /// A dot segment in disguise: next to an encoded `/` (`..%2F`), a backslash (`..\`, which
    /// IIS and some Node stacks read as `/`) or with parameters (`..;`, which Tomcat and Spring
    /// resolve): a traversal attempt whichever way the upstream reads it.
    #[error("a disguised '.' or '..' segment could climb out of the route")]
    EncodedTraversal,
    /// `%` not followed by two hex digits.
    #[error("a '%' is not followed by two hex digits")]
    BadEscape,
    /// A control character (0x00–0x1F, 0x7F), raw or percent-encoded: a backend that stops
    /// at NUL or splits at a line break would serve another path than the one routed.
    #[error("a control character (e.g. %00) is not allowed in a path")]
    ControlCharacter,
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
                if is_disguised_dot_segment(s) {
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

/// True when the path contains something an upstream may read as `/`: an encoded slash, or a
/// backslash raw or encoded. The caller checks that reading it so would not change the route.
pub fn has_slash_lookalike(path: &str) -> bool {
    // One pass over the bytes (two substring searches cost more than the whole path).
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'\\' || (b == b'%' && matches!(bytes.get(i + 1..i + 3), Some(b"2F" | b"5C")))
    })
}

/// `path` with every slash lookalike read as `/`, for that check.
pub fn as_slashes(path: &str) -> String {
    path.replace("%2F", "/")
        .replace("%5C", "/")
        .replace('\\', "/")
}

/// Whether a segment hides a dot segment behind a separator some upstream honours.
fn is_disguised_dot_segment(segment: &str) -> bool {
    segment
        .split("%2F")
        .flat_map(|s| s.split("%5C"))
        .flat_map(|s| s.split('\\'))
        .map(|piece| piece.split(';').next().unwrap_or(piece))
        .any(|piece| piece == "." || piece == "..")
}

/// A path already in normal form: only plain ASCII without control characters, no escapes, no empty or dot segments, and
/// nothing that could disguise one (`;`, `\`).
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes
        .iter()
        .any(|b| matches!(b, b'%' | b';' | b'\\') || !b.is_ascii() || is_control(*b))
    {
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
        if !b.is_ascii() {
            // hyper lets raw non-ASCII bytes through; send them on percent-encoded (the same
            // resource by RFC 3986) so they survive the rewrite byte for byte.
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
            i += 1;
            continue;
        }
        if is_control(b) {
            return Err(PathError::ControlCharacter);
        }
        if b != b'%' {
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
        if is_control(value) {
            return Err(PathError::ControlCharacter);
        }
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

/// C0 controls and DEL: never part of a path routed or forwarded.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
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
            ("/api/users/..;/..;/admin", Err(PathError::EncodedTraversal)),
            ("/api/users/..\\..\\admin", Err(PathError::EncodedTraversal)),
            (
                "/api/users/..%5C..%5Cadmin",
                Err(PathError::EncodedTraversal),
            ),
            ("/api/users/.;x", Err(PathError::EncodedTraversal)),
            ("/api/users/1;v=2", Ok("/api/users/1;v=2")),
            ("/api/users/a\\b", Ok("/api/users/a\\b")),
            ("/api/users/café", Ok("/api/users/caf%C3%A9")),
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
            (
                "/api/users%00/../../admin",
                Err(PathError::ControlCharacter),
            ),
            ("/admin%00", Err(PathError::ControlCharacter)),
            ("/api/users/%00", Err(PathError::ControlCharacter)),
            ("/api/users/..%00/admin", Err(PathError::ControlCharacter)),
            ("/api/users/%0a", Err(PathError::ControlCharacter)),
            ("/api/users/%0D%0A", Err(PathError::ControlCharacter)),
            ("/api/users/%1f", Err(PathError::ControlCharacter)),
            ("/api/users/%7F", Err(PathError::ControlCharacter)),
            ("/api/users/%09", Err(PathError::ControlCharacter)),
            ("/api/users/\0", Err(PathError::ControlCharacter)),
            ("/api/users/a\tb", Err(PathError::ControlCharacter)),
            ("/api/users/\n", Err(PathError::ControlCharacter)),
            ("/api/users/\x1f", Err(PathError::ControlCharacter)),
            ("/api/users/\x7f", Err(PathError::ControlCharacter)),
            ("/api/users/%20", Ok("/api/users/%20")),
            ("/api/users/%7E", Ok("/api/users/~")),
            ("/api/users/%80", Ok("/api/users/%80")),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalize(input).as_deref().map_err(|e| *e),
                expected,
                "normalize({input:?})"
            );
        }
    }

    /// Every control character, raw and encoded in either case, is refused wherever it sits.
    #[test]
    fn every_control_character_is_refused() {
        for b in (0u8..0x20).chain([0x7F]) {
            let raw = format!("/api/{}x", char::from(b));
            let upper = format!("/api/x%{b:02X}");
            let lower = format!("/api/%{b:02x}/y");
            for path in [raw, upper, lower] {
                assert_eq!(
                    normalize(&path),
                    Err(PathError::ControlCharacter),
                    "normalize({path:?})"
                );
            }
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
            Just("..;".to_string()),
            Just("..\\x".to_string()),
            Just("%5C..".to_string()),
            Just("é".to_string()),
            "[a-zA-Z0-9._~-]{1,6}",
        ];
        prop::collection::vec(segment, 0..10).prop_map(|segs| format!("/{}", segs.join("/")))
    }

    proptest! {
        /// The one-pass scan finds exactly what the three substring searches it replaced did.
        #[test]
        fn slash_lookalikes_are_the_escapes_and_the_backslash(s in "[%25FCcf5a/\\\\]{0,16}") {
            prop_assert_eq!(
                has_slash_lookalike(&s),
                s.contains("%2F") || s.contains("%5C") || s.contains('\\')
            );
        }

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
                prop_assert!(n.is_ascii(), "{} -> {}", path, n);
                // Not even an upstream that decodes %2F, reads '\' as '/' or drops ';'
                // parameters finds a dot segment in it.
                for segment in n.split('/') {
                    prop_assert!(!is_disguised_dot_segment(segment), "{} -> {}", path, n);
                }
            }
        }
    }
}
