//! The legacy routing contract: how the original Koa message board read paths, ids and methods.
//!
//! Everything here is pure so the quirks clients depend on are pinned by table tests, and the
//! monolith and every extracted service share one reading of them.

use std::borrow::Cow;

use http::Method;

/// A resource of the message board; each one can be owned by a different process and database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `/api/users`
    Users,
    /// `/api/threads`
    Threads,
    /// `/api/posts`
    Posts,
}

impl Resource {
    /// Every resource, in the order their tables are created (referenced tables first).
    pub const ALL: [Resource; 3] = [Resource::Users, Resource::Threads, Resource::Posts];

    /// The name used in paths and as the table name.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Users => "users",
            Resource::Threads => "threads",
            Resource::Posts => "posts",
        }
    }

    /// The singular noun used in messages ("user 7 does not exist").
    pub fn singular(self) -> &'static str {
        match self {
            Resource::Users => "user",
            Resource::Threads => "thread",
            Resource::Posts => "post",
        }
    }
}

/// A request method the legacy router implements; anything else is answered 501.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// GET
    Get,
    /// HEAD, answered as GET without a body
    Head,
    /// POST
    Post,
    /// PUT (implemented by the router, allowed on no path)
    Put,
    /// PATCH (implemented by the router, allowed on no path)
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
}

impl Verb {
    /// Reads a method the way koa-router's `allowedMethods` does: its seven methods or nothing.
    pub fn from_method(method: &Method) -> Option<Verb> {
        Some(match *method {
            Method::GET => Verb::Get,
            Method::HEAD => Verb::Head,
            Method::POST => Verb::Post,
            Method::PUT => Verb::Put,
            Method::PATCH => Verb::Patch,
            Method::DELETE => Verb::Delete,
            Method::OPTIONS => Verb::Options,
            _ => return None,
        })
    }
}

/// One route of the legacy API, with the raw (percent-decoded) id segment where it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `/`
    Root,
    /// `/api`
    ApiRoot,
    /// `/api/users`
    Users,
    /// `/api/users/{id}`
    User(Cow<'a, str>),
    /// `/api/threads`
    Threads,
    /// `/api/threads/{id}`
    Thread(Cow<'a, str>),
    /// `/api/posts`
    Posts,
    /// `/api/posts/{id}` (DELETE only, ours: the original had no such path)
    Post(Cow<'a, str>),
    /// `/api/posts/in-thread/{id}`
    PostsInThread(Cow<'a, str>),
    /// `/api/posts/by-user/{id}`
    PostsByUser(Cow<'a, str>),
}

/// The methods an endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// GET and HEAD
    Read,
    /// GET, HEAD and POST
    ReadCreate,
    /// DELETE
    Delete,
}

impl Allowed {
    /// Whether `verb` is answered by the endpoint (OPTIONS always is).
    pub fn contains(self, verb: Verb) -> bool {
        match verb {
            Verb::Options => true,
            Verb::Get | Verb::Head => matches!(self, Allowed::Read | Allowed::ReadCreate),
            Verb::Post => self == Allowed::ReadCreate,
            Verb::Delete => self == Allowed::Delete,
            Verb::Put | Verb::Patch => false,
        }
    }

    /// The `Allow` header as koa-router's `allowedMethods` sent it: one line per method, in the
    /// order the routes were declared (HEAD before GET), never OPTIONS.
    pub fn header_lines(self) -> &'static [&'static str] {
        match self {
            Allowed::Read => &["HEAD", "GET"],
            Allowed::ReadCreate => &["HEAD", "GET", "POST"],
            Allowed::Delete => &["DELETE"],
        }
    }
}

impl<'a> Endpoint<'a> {
    /// Matches a request path (no query) the way koa-router did: ASCII case-insensitive
    /// literals, one optional trailing slash, non-empty id segments, ids percent-decoded.
    pub fn parse(path: &'a str) -> Option<Endpoint<'a>> {
        if path == "/" {
            return Some(Endpoint::Root);
        }
        let path = path.strip_prefix('/')?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut segments = path.split('/');
        let mut next = || segments.next();
        let lit = |segment: &str, literal: &str| segment.eq_ignore_ascii_case(literal);

        if !lit(next()?, "api") {
            return None;
        }
        let endpoint = match next() {
            None => Endpoint::ApiRoot,
            Some(s) if lit(s, "users") => match next() {
                None => Endpoint::Users,
                Some(id) => Endpoint::User(decode_segment(id)?),
            },
            Some(s) if lit(s, "threads") => match next() {
                None => Endpoint::Threads,
                Some(id) => Endpoint::Thread(decode_segment(id)?),
            },
            Some(s) if lit(s, "posts") => match (next(), next()) {
                (None, _) => Endpoint::Posts,
                (Some(id), None) => Endpoint::Post(decode_segment(id)?),
                (Some(filter), Some(id)) if lit(filter, "in-thread") => {
                    Endpoint::PostsInThread(decode_segment(id)?)
                }
                (Some(filter), Some(id)) if lit(filter, "by-user") => {
                    Endpoint::PostsByUser(decode_segment(id)?)
                }
                _ => return None,
            },
            _ => return None,
        };
        match next() {
            None => Some(endpoint),
            Some(_) => None,
        }
    }

    /// The resource whose owner answers this endpoint; `None` for `/` and `/api`, which
    /// every process answers.
    pub fn resource(&self) -> Option<Resource> {
        match self {
            Endpoint::Root | Endpoint::ApiRoot => None,
            Endpoint::Users | Endpoint::User(_) => Some(Resource::Users),
            Endpoint::Threads | Endpoint::Thread(_) => Some(Resource::Threads),
            Endpoint::Posts
            | Endpoint::Post(_)
            | Endpoint::PostsInThread(_)
            | Endpoint::PostsByUser(_) => Some(Resource::Posts),
        }
    }

    /// Whether a request with `verb` (`None`: a method the router does not implement) finds
    /// this endpoint at all. `/api/posts/{id}` exists only for our DELETE: to every other
    /// method it stays the unknown path the original answered 404 (or 501) to, so the new write
    /// changes no answer a client of the original could get.
    pub fn known_to(&self, verb: Option<Verb>) -> bool {
        match self {
            Endpoint::Post(_) => verb == Some(Verb::Delete),
            _ => true,
        }
    }

    /// The methods this endpoint answers.
    pub fn allowed(&self) -> Allowed {
        match self {
            Endpoint::Users | Endpoint::Threads | Endpoint::Posts => Allowed::ReadCreate,
            Endpoint::Post(_) => Allowed::Delete,
            _ => Allowed::Read,
        }
    }
}

/// Decodes an id segment like `decodeURIComponent`, keeping the raw text when that would throw
/// (koa-router's `safeDecodeURIComponent`); `None` for an empty segment, which matches no route.
fn decode_segment(segment: &str) -> Option<Cow<'_, str>> {
    if segment.is_empty() {
        return None;
    }
    if !segment.contains('%') {
        return Some(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                let h = std::str::from_utf8(h).ok()?;
                u8::from_str_radix(h, 16).ok()
            });
            match hex {
                Some(byte) => {
                    decoded.push(byte);
                    i += 3;
                }
                None => return Some(Cow::Borrowed(segment)),
            }
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    Some(match String::from_utf8(decoded) {
        Ok(text) => Cow::Owned(text),
        Err(_) => Cow::Borrowed(segment),
    })
}

/// JavaScript's `parseInt(text)` without a radix, as an integer: `None` where JS gives `NaN`
/// or a value beyond `i64` (no row can have such an id, so both find nothing).
pub fn parse_int(text: &str) -> Option<i64> {
    let text = text.trim_start_matches(is_js_whitespace);
    let (negative, text) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = match text.get(..2) {
        Some("0x" | "0X") => (16, &text[2..]),
        _ => (10, text),
    };
    let digits_len = digits
        .bytes()
        .take_while(|b| (*b as char).is_digit(radix))
        .count();
    if digits_len == 0 {
        return None;
    }
    // Accumulate negatively so i64::MIN (a valid JS result) does not overflow on the way.
    let mut value: i64 = 0;
    for digit in digits[..digits_len].bytes() {
        let digit = i64::from((digit as char).to_digit(radix)?);
        value = value.checked_mul(i64::from(radix))?.checked_sub(digit)?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// The id a legacy read looks up: `parseInt`, where only positive values can match a row.
pub fn lookup_id(text: &str) -> Option<i64> {
    parse_int(text).filter(|id| *id > 0)
}

/// The id a write accepts: a canonical positive decimal integer (`7`, never `07`, `+7` or
/// `7abc`), because a DELETE must never act on a lenient guess.
pub fn strict_id(text: &str) -> Option<i64> {
    let canonical =
        !text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit());
    if canonical { text.parse().ok() } else { None }
}

/// ECMAScript's StrWhiteSpaceChar (WhiteSpace and LineTerminator), which differs from
/// Unicode's `White_Space`: it includes U+FEFF and excludes U+0085.
fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_int_reads_like_javascript() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1", Some(1)),
            ("1abc", Some(1)),
            ("01", Some(1)),
            ("007", Some(7)),
            ("12.9", Some(12)),
            ("1e3", Some(1)),
            ("  42", Some(42)),
            ("\t\n\u{a0}\u{feff}\u{3000}5", Some(5)),
            ("\u{85}5", None),
            ("+4", Some(4)),
            ("-1", Some(-1)),
            ("-0", Some(0)),
            ("0", Some(0)),
            ("0x2", Some(2)),
            ("0X1f", Some(31)),
            ("0x1g", Some(1)),
            ("-0x2", Some(-2)),
            ("+0x2", Some(2)),
            ("0x", None),
            ("0xg", None),
            ("0b1", Some(0)),
            ("abc", None),
            ("", None),
            ("   ", None),
            ("+", None),
            ("-", None),
            ("+-1", None),
            ("- 1", None),
            ("1 2", Some(1)),
            ("١", None),
            ("９", None),
            ("9223372036854775807", Some(i64::MAX)),
            ("9223372036854775808", None),
            ("-9223372036854775808", Some(i64::MIN)),
            ("99999999999999999999", None),
            ("0xffffffffffffffffff", None),
            ("1;DROP TABLE users", Some(1)),
            ("1' OR '1'='1", Some(1)),
            ("' OR '1'='1", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_int(text), *expected, "parseInt({text:?})");
        }
    }

    #[test]
    fn lookup_and_strict_ids() {
        let cases: &[(&str, Option<i64>, Option<i64>)] = &[
            // text, lookup_id, strict_id
            ("1", Some(1), Some(1)),
            ("123", Some(123), Some(123)),
            ("1abc", Some(1), None),
            ("01", Some(1), None),
            ("+1", Some(1), None),
            (" 1", Some(1), None),
            ("0x2", Some(2), None),
            ("0", None, None),
            ("-1", None, None),
            ("abc", None, None),
            ("", None, None),
            ("9223372036854775807", Some(i64::MAX), Some(i64::MAX)),
            ("99999999999999999999", None, None),
            ("1;DROP TABLE posts", Some(1), None),
        ];
        for (text, lookup, strict) in cases {
            assert_eq!(lookup_id(text), *lookup, "lookup_id({text:?})");
            assert_eq!(strict_id(text), *strict, "strict_id({text:?})");
        }
    }

    #[test]
    fn paths_match_like_koa_router() {
        use Endpoint as E;
        let id = |s: &'static str| Cow::Borrowed(s);
        let cases: Vec<(&str, Option<Endpoint<'static>>)> = vec![
            ("/", Some(E::Root)),
            ("//", None),
            ("", None),
            ("/api", Some(E::ApiRoot)),
            ("/api/", Some(E::ApiRoot)),
            ("/API", Some(E::ApiRoot)),
            ("/api//", None),
            ("/apix", None),
            ("/api/users", Some(E::Users)),
            ("/API/Users/", Some(E::Users)),
            ("/api/users//", None),
            ("/api//users", None),
            ("/api/usersX", None),
            ("/api/users/7", Some(E::User(id("7")))),
            ("/api/users/7/", Some(E::User(id("7")))),
            ("/api/users/7/x", None),
            ("/api/users/%20%203", Some(E::User(id("  3")))),
            ("/api/users/%E2%9C%93", Some(E::User(id("✓")))),
            ("/api/users/%ZZ", Some(E::User(id("%ZZ")))),
            ("/api/users/%C3", Some(E::User(id("%C3")))),
            ("/api/users/1%2F2", Some(E::User(id("1/2")))),
            ("/api/threads", Some(E::Threads)),
            ("/api/THREADS/abc", Some(E::Thread(id("abc")))),
            ("/api/posts", Some(E::Posts)),
            ("/api/posts/3", Some(E::Post(id("3")))),
            ("/api/posts/in-thread", Some(E::Post(id("in-thread")))),
            ("/api/posts/in-thread/2", Some(E::PostsInThread(id("2")))),
            ("/API/Posts/By-User/2/", Some(E::PostsByUser(id("2")))),
            ("/api/posts/by-user/", Some(E::Post(id("by-user")))),
            ("/api/posts/elsewhere/2", None),
            ("/api/posts/in-thread/2/x", None),
            ("/api/%75sers", None),
            ("/api/ſsers", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Endpoint::parse(path), expected, "path {path:?}");
        }
    }

    #[test]
    fn allowed_methods_follow_the_endpoint() {
        let cases: &[(&str, Verb, bool)] = &[
            ("/", Verb::Get, true),
            ("/", Verb::Post, false),
            ("/api/users", Verb::Post, true),
            ("/api/users", Verb::Head, true),
            ("/api/users", Verb::Delete, false),
            ("/api/users/1", Verb::Post, false),
            ("/api/users/1", Verb::Put, false),
            ("/api/posts/1", Verb::Delete, true),
            ("/api/posts/1", Verb::Get, false),
            ("/api/posts/1", Verb::Head, false),
            ("/api/posts/in-thread/1", Verb::Get, true),
            ("/api/posts/in-thread/1", Verb::Options, true),
        ];
        for (path, verb, allowed) in cases {
            let endpoint = Endpoint::parse(path).expect("known path");
            assert_eq!(
                endpoint.allowed().contains(*verb),
                *allowed,
                "{verb:?} {path}"
            );
        }
        assert_eq!(Verb::from_method(&Method::TRACE), None);
        assert_eq!(Verb::from_method(&Method::CONNECT), None);
        let propfind = Method::from_bytes(b"PROPFIND").expect("valid token");
        assert_eq!(Verb::from_method(&propfind), None);
    }

    #[test]
    fn only_delete_finds_a_single_post() {
        let cases: &[(&str, Option<Verb>, bool)] = &[
            ("/api/posts/1", Some(Verb::Delete), true),
            ("/api/posts/1", Some(Verb::Get), false),
            ("/api/posts/1", Some(Verb::Head), false),
            ("/api/posts/1", Some(Verb::Options), false),
            ("/api/posts/1", Some(Verb::Put), false),
            ("/api/posts/in-thread", Some(Verb::Get), false),
            ("/api/posts/1", None, false),
            ("/api/posts", Some(Verb::Get), true),
            ("/api/posts", None, true),
            ("/api/users/1", Some(Verb::Options), true),
            ("/", None, true),
        ];
        for (path, verb, known) in cases {
            let endpoint = Endpoint::parse(path).expect("parses");
            assert_eq!(endpoint.known_to(*verb), *known, "{verb:?} {path}");
        }
    }
}
