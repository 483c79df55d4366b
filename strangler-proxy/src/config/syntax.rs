//! TOML text → [`RoutesFile`], every syntax and type error named by its key.
//!
//! The `toml` crate stops at the first error, and `deny_unknown_fields` makes one misspelt key
//! hide everything after it. So the document is parsed with recovery (every syntax error), and
//! each deserialization error removes the entry it is about from the parsed tree before the
//! tree is deserialized again: every unknown key and wrong type of a file is reported in one
//! run. What remains is validated too unless something was lost that validation would then
//! misreport (a syntax error, or a table dropped for a missing required key).

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};

use super::error::{ConfigError, Lines};
use super::file::RoutesFile;

/// Past this many errors a file is not worth reading further (and a bug here cannot loop).
const MAX_ERRORS: usize = 200;

/// What parsing found: the file when what remains can be validated, and every error.
pub(super) struct Parsed {
    /// `None` when validating what remains would report errors that are not there.
    pub(super) file: Option<RoutesFile>,
    /// Syntax, unknown-key and type errors, each naming its key.
    pub(super) errors: Vec<ConfigError>,
}

/// What a `[proxy]` key holds in whatever part of `text` parses, whatever errors the rest has.
pub(super) enum ProxyKey {
    /// A string.
    String(String),
    /// Something else.
    NotAString,
    /// No such key, and the whole file parsed: the default applies.
    Absent,
    /// No such key in what parsed, but some of the file did not parse.
    Unknown,
}

/// The value of `[proxy] KEY` as far as `text` can be read.
pub(super) fn proxy_key(text: &str, key: &str) -> ProxyKey {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let value = match doc.get_ref().get("proxy").map(Spanned::get_ref) {
        Some(DeValue::Table(proxy)) => proxy.get(key).map(Spanned::get_ref),
        _ => None,
    };
    match value {
        Some(DeValue::String(s)) => ProxyKey::String(s.to_string()),
        Some(_) => ProxyKey::NotAString,
        None if syntax.is_empty() => ProxyKey::Absent,
        None => ProxyKey::Unknown,
    }
}

/// Parses `text`, reporting every syntax error, unknown key and wrong type.
pub(super) fn parse(text: &str) -> Parsed {
    let lines = Lines::new(text);
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    let mut errors = Vec::new();
    // Where something is already known to be wrong: what follows from it is not reported again.
    let mut wrong: Vec<usize> = Vec::new();
    let mut duplicated_tables: Vec<Range<usize>> = Vec::new();
    for e in &syntax {
        let at = e.span().map_or(0, |s| s.start);
        wrong.push(at);
        if duplicated_tables.iter().any(|t| t.contains(&at)) {
            continue; // a key of a table defined twice: the table's error says it all
        }
        let message = syntax_message(text, at, e.message().trim(), &mut duplicated_tables);
        push(&mut errors, &lines, at, message);
    }
    let mut complete = syntax.is_empty();
    while errors.len() < MAX_ERRORS {
        let e = match RoutesFile::deserialize(Deserializer::from(doc.clone())) {
            Ok(file) => {
                return Parsed {
                    file: complete.then_some(file),
                    errors,
                };
            }
            Err(e) => e,
        };
        let message = e.message().trim().to_string();
        let Some(span) = e.span() else {
            errors.push(ConfigError {
                line: 1,
                column: 1,
                message,
            });
            break;
        };
        let Some(path) = innermost(doc.get_ref(), span.start) else {
            push(&mut errors, &lines, span.start, message);
            break;
        };
        let key = path
            .iter()
            .rev()
            .find_map(|s| match s {
                Seg::Key(k) => Some(k.clone()),
                Seg::Index(_) => None,
            })
            .unwrap_or_default();
        if let Some(field) = between(&message, "missing field `", "`") {
            // The table lacks a required key: without it nothing of the table can be used.
            complete = false;
            let table = table_text(text, span.start);
            if !wrong.iter().any(|w| table.contains(w)) {
                let message =
                    format!("{field}: required key is missing: add `{field} = ...` to this table");
                push(&mut errors, &lines, span.start, message);
            }
        } else if !wrong
            .iter()
            .any(|w| lines.position(*w).0 == lines.position(span.start).0)
        {
            push(
                &mut errors,
                &lines,
                span.start,
                serde_message(&key, &message),
            );
        }
        wrong.push(span.start);
        if !remove(doc.get_mut(), &path) {
            break;
        }
    }
    Parsed { file: None, errors }
}

fn push(errors: &mut Vec<ConfigError>, lines: &Lines<'_>, at: usize, message: String) {
    let (line, column) = lines.position(at);
    errors.push(ConfigError {
        line,
        column,
        message,
    });
}

/// One step of the path from the document root to an entry.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The innermost entry whose key or value contains `at` (an element of an array of tables
/// counts as an entry; an element of any other array stands for its array's entry).
fn innermost(root: &DeTable<'_>, at: usize) -> Option<Vec<Seg>> {
    fn contains(span: &Range<usize>, at: usize) -> bool {
        span.start <= at && at < span.end.max(span.start + 1)
    }
    fn consider(best: &mut Option<(usize, Vec<Seg>)>, span: Range<usize>, path: &[Seg]) {
        // `<=`: on a tie the deeper entry, visited later, wins.
        if best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
            *best = Some((span.len(), path.to_vec()));
        }
    }
    fn walk(
        table: &DeTable<'_>,
        at: usize,
        path: &mut Vec<Seg>,
        best: &mut Option<(usize, Vec<Seg>)>,
    ) {
        for (k, v) in table.iter() {
            path.push(Seg::Key(k.get_ref().to_string()));
            for span in [k.span(), v.span()] {
                if contains(&span, at) {
                    consider(best, span, path);
                }
            }
            match v.get_ref() {
                DeValue::Table(t) => walk(t, at, path, best),
                DeValue::Array(a) => {
                    for (i, e) in a.iter().enumerate() {
                        if let DeValue::Table(t) = e.get_ref() {
                            path.push(Seg::Index(i));
                            if contains(&e.span(), at) {
                                consider(best, e.span(), path);
                            }
                            walk(t, at, path, best);
                            path.pop();
                        }
                    }
                }
                _ => {}
            }
            path.pop();
        }
    }
    let mut best = None;
    walk(root, at, &mut Vec::new(), &mut best);
    best.map(|(_, path)| path)
}

/// Removes the entry at `path`; false when there is none.
fn remove(table: &mut DeTable<'_>, path: &[Seg]) -> bool {
    match path {
        [Seg::Key(k)] => table.remove(k.as_str()).is_some(),
        [Seg::Key(k), rest @ ..] => match table.get_mut(k.as_str()).map(Spanned::get_mut) {
            Some(DeValue::Table(t)) => remove(t, rest),
            Some(DeValue::Array(a)) => remove_in_array(a, rest),
            _ => false,
        },
        _ => false,
    }
}

fn remove_in_array(array: &mut DeArray<'_>, path: &[Seg]) -> bool {
    match path {
        [Seg::Index(i)] if *i < array.len() => {
            let mut kept = DeArray::new();
            for (j, e) in array.iter().enumerate() {
                if j != *i {
                    kept.push(e.clone());
                }
            }
            *array = kept;
            true
        }
        [Seg::Index(i), rest @ ..] => match array.get_mut(*i).map(Spanned::get_mut) {
            Some(DeValue::Table(t)) => remove(t, rest),
            _ => false,
        },
        _ => false,
    }
}

/// The text between `start` and the next `end` after it.
fn between<'m>(message: &'m str, start: &str, end: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(start)?;
    rest.split(end).next()
}

/// Byte range of the table whose header is at `at`: up to the next header.
fn table_text(text: &str, at: usize) -> Range<usize> {
    let body = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
    let end = text[body..]
        .match_indices('\n')
        .map(|(i, _)| body + i + 1)
        .find(|start| text[*start..].trim_start().starts_with('['))
        .unwrap_or(text.len());
    at..end
}

/// A deserialization error of `key`, rewritten to name the key and say what to write.
fn serde_message(key: &str, message: &str) -> String {
    if message.starts_with(&format!("{key}:")) {
        return message.to_string();
    }
    if let Some(unknown) = between(message, "unknown field `", "`") {
        let known: Vec<&str> = message
            .split_once("expected ")
            .map(|(_, list)| {
                list.split(", ")
                    .map(|k| k.trim_start_matches("one of ").trim_matches('`'))
                    .collect()
            })
            .unwrap_or_default();
        let hint = match super::validate::did_you_mean(unknown, &known) {
            Some(k) => format!("did you mean {k:?}?"),
            None if known.is_empty() => "remove it".to_string(),
            None => format!("known keys here: {}", known.join(", ")),
        };
        return format!("{unknown}: unknown key ({hint})");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        return type_message(key, found, expected);
    }
    format!("{key}: {message}")
}

/// `found` and `expected` as serde words them (`string "on"`, `a boolean`).
fn type_message(key: &str, found: &str, expected: &str) -> String {
    let found = found.replace('`', "");
    if let Some(n) = found.strip_suffix(" as i128") {
        let n = n.trim_start_matches("integer ");
        return format!("{key}: {n} is too large for a TOML integer");
    }
    let quoted = found
        .strip_prefix("string \"")
        .and_then(|s| s.strip_suffix('"'));
    let (expected, fix) = match expected {
        "a boolean" => {
            let fix = match quoted {
                Some("on" | "yes" | "true" | "1") => "write true, without quotes".to_string(),
                Some("off" | "no" | "false" | "0") => "write false, without quotes".to_string(),
                _ => "write true or false, without quotes".to_string(),
            };
            ("a boolean", fix)
        }
        "i64" | "u64" | "an integer" => {
            let fix = match quoted {
                Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("write {s}, without quotes")
                }
                _ => "write a whole number, without quotes".to_string(),
            };
            ("an integer", fix)
        }
        "a sequence" => {
            let fix = match quoted {
                Some(s) => format!("write a list, e.g. {key} = [\"{s}\"]"),
                None => format!("write a list, e.g. {key} = [\"...\"]"),
            };
            ("a list", fix)
        }
        "a string" => ("a string", "write it in double quotes".to_string()),
        other => (other, String::new()),
    };
    if fix.is_empty() {
        format!("{key}: expected {expected}, found {found}")
    } else {
        format!("{key}: expected {expected}, found {found}: {fix}")
    }
}

/// What a TOML syntax error at `at` means for the key it is on.
fn syntax_message(
    text: &str,
    at: usize,
    message: &str,
    duplicated_tables: &mut Vec<Range<usize>>,
) -> String {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = &text[start..end];
    let trimmed = line.trim();
    let earlier = |wanted: &dyn Fn(&str) -> bool| {
        text[..start]
            .lines()
            .enumerate()
            .filter(|(_, l)| wanted(l.trim()))
            .map(|(n, _)| n + 1)
            .last()
    };
    if trimmed.starts_with('[') {
        let header = trimmed.split('#').next().unwrap_or(trimmed).trim();
        if message.starts_with("duplicate key") {
            duplicated_tables.push(table_text(text, start));
            return match earlier(&|l: &str| l.split('#').next().unwrap_or(l).trim() == header) {
                Some(first) => format!(
                    "{header}: this table is already defined on line {first}: merge the two into one"
                ),
                None => format!(
                    "{header}: this table is already defined: merge its keys into the first"
                ),
            };
        }
        return format!("{header}: {message}");
    }
    let Some((key, value)) = line.split_once('=') else {
        return message.to_string();
    };
    let key = key.trim();
    let value = value.split('#').next().unwrap_or(value).trim();
    if message.starts_with("duplicate key") {
        let table_start = text[..start]
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with('['))
            .map(|(n, _)| n)
            .last()
            .unwrap_or(0);
        let first = earlier(&|l: &str| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim() == key && !l.starts_with('#'))
        })
        .filter(|n| *n > table_start);
        return match first {
            Some(first) => {
                format!("{key}: this key is already set on line {first}: keep one of the two")
            }
            None => format!("{key}: this key is set twice in one table: keep one of the two"),
        };
    }
    if message.contains("leading zero") {
        let (sign, digits) = match value.strip_prefix(['-', '+']) {
            Some(rest) => (&value[..1], rest),
            None => ("", value),
        };
        let stripped = digits.trim_start_matches('0');
        let stripped = if stripped.is_empty() { "0" } else { stripped };
        return format!(
            "{key}: leading zeros are not allowed in TOML integers; write {}{stripped}",
            sign.trim_start_matches('+')
        );
    }
    if message.contains("inline table") && message.contains("dotted key") {
        let (table, rest) = key.split_once('.').unwrap_or((key, ""));
        let table = table.trim();
        let defined = earlier(&|l: &str| {
            l.split_once('=')
                .is_some_and(|(k, v)| k.trim() == table && v.trim_start().starts_with('{'))
        });
        let on = defined.map_or(String::new(), |n| format!(" (line {n})"));
        return format!(
            "{key}: {table} is an inline table{on}, which a dotted key cannot extend: \
             write {} inside its braces, or make {table} a [table]",
            rest.trim()
        );
    }
    format!("{key}: {message}")
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    /// A valid file; each case edits one line of it (or adds lines) and expects one error.
    const BASE: &str = r#"[proxy]
default = "monolith"
shadow_concurrency = 64
backend_header = false
drain_timeout = "30s"

[services.monolith]
url = "http://127.0.0.1:3000"

[services.users]
url = "http://127.0.0.1:3001"
request_timeout = "30s"
idle_timeout = "4s"

[[routes]]
prefix = "/api/users"
service = "users"
weight = 50
shadow_noise_check = false
shadow_ignore = ["/createdAt"]
"#;

    /// `BASE` with the line starting `from` replaced by `to` (several lines if `to` has them).
    fn edit(from: &str, to: &str) -> String {
        let mut found = false;
        let text: Vec<&str> = BASE
            .lines()
            .map(|l| {
                if !found && l.starts_with(from) {
                    found = true;
                    to
                } else {
                    l
                }
            })
            .collect();
        assert!(found, "no line starts with {from:?}");
        text.join("\n") + "\n"
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect(),
        }
    }

    #[test]
    fn the_base_file_is_valid() {
        assert_eq!(errors(BASE), Vec::<String>::new());
    }

    /// One line per case: the line replaced, its replacement, the one expected error.
    #[test]
    fn every_error_names_its_key_and_the_fix() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "shadow_noise_check",
                "shadow_noise_check = \"on\"",
                "19:22: shadow_noise_check: expected a boolean, found string \"on\": write true, without quotes",
            ),
            (
                "backend_header",
                "backend_header = \"on\"",
                "4:18: backend_header: expected a boolean, found string \"on\": write true, without quotes",
            ),
            (
                "shadow_ignore",
                "shadow_ignore = \"/createdAt\"",
                "20:17: shadow_ignore: expected a list, found string \"/createdAt\": write a list, e.g. shadow_ignore = [\"/createdAt\"]",
            ),
            (
                "shadow_concurrency",
                "shadow_concurrency = \"64\"",
                "3:22: shadow_concurrency: expected an integer, found string \"64\": write 64, without quotes",
            ),
            (
                "shadow_concurrency",
                "shadow_concurrency = 99999999999999999999",
                "3:22: shadow_concurrency: 99999999999999999999 is too large for a TOML integer",
            ),
            (
                "weight",
                "weight = 50\nweight = 60",
                "19:1: weight: this key is already set on line 18: keep one of the two",
            ),
            (
                "[services.users]",
                "[services.monolith]",
                "10:11: [services.monolith]: this table is already defined on line 7: merge the two into one",
            ),
            (
                "[services.users]",
                "[services]\nusers = { url = \"http://127.0.0.1:3001\" }\nusers.request_timeout = \"30s\"\n[services.x]",
                "12:1: users.request_timeout: users is an inline table (line 11), which a dotted key cannot extend: write request_timeout inside its braces, or make users a [table]",
            ),
            (
                "weight",
                "weight = 050",
                "18:10: weight: leading zeros are not allowed in TOML integers; write 50",
            ),
            (
                "weight",
                "weight = \"50\"",
                "18:10: weight: expected an integer 0..=100, found string \"50\"",
            ),
            (
                "weight",
                "wieght = 50",
                "18:1: wieght: unknown key (did you mean \"weight\"?)",
            ),
            (
                "weight",
                "",
                "15:1: weight: required key is missing: add `weight = ...` to this table",
            ),
            (
                "url = \"http://127.0.0.1:3001\"",
                "url = 3001",
                "11:7: url: expected a string, found integer 3001: write it in double quotes",
            ),
            (
                "request_timeout",
                "request_timeout = \"18446744073709551615s\"",
                "12:19: request_timeout: \"18446744073709551615s\" is out of range: expected at most 1h",
            ),
            (
                "idle_timeout",
                "idle_timeout = \"18446744073709551615s\"",
                "13:16: idle_timeout: \"18446744073709551615s\" is out of range: expected at most 1h",
            ),
            (
                "request_timeout",
                "request_timeout = \"99999999999999999999999h\"",
                "12:19: request_timeout: \"99999999999999999999999h\" is out of range: expected at most 1h",
            ),
            (
                "request_timeout",
                "request_timeout = \"2h\"",
                "12:19: request_timeout: \"2h\" is out of range: expected at most 1h",
            ),
            (
                "request_timeout",
                "request_timeout = \"0s\"",
                "12:19: request_timeout: \"0s\" is out of range: expected at least 1ms",
            ),
            (
                "request_timeout",
                "request_timeout = \"1.5s\"",
                "12:19: request_timeout: \"1.5s\": fractions are not allowed, use a smaller unit: write \"1500ms\"",
            ),
            (
                "request_timeout",
                "request_timeout = \"500us\"",
                "12:19: request_timeout: \"500us\": unknown unit \"us\" (use ms, s, m or h)",
            ),
            (
                "request_timeout",
                "request_timeout = \"-5s\"",
                "12:19: request_timeout: \"-5s\": a duration cannot be negative",
            ),
            (
                "request_timeout",
                "request_timeout = \"30\"",
                "12:19: request_timeout: \"30\" has no unit: write e.g. \"30s\" or \"30ms\"",
            ),
            (
                "request_timeout",
                "request_timeout = \"30 s\"",
                "12:19: request_timeout: \"30 s\": write the unit right after the number, e.g. \"30s\"",
            ),
            (
                "request_timeout",
                "request_timeout = 30",
                "12:19: request_timeout: expected a string, found integer 30: write it in double quotes",
            ),
            (
                "drain_timeout",
                "drain_timeout = \"11m\"",
                "5:17: drain_timeout: \"11m\" is out of range: expected at most 10m",
            ),
        ];
        for (from, to, expected) in cases {
            let text = edit(from, to);
            assert_eq!(errors(&text), [*expected], "{to:?} in\n{text}");
        }
    }

    /// An unknown key early used to stop everything: now each error of the file is printed,
    /// whatever its kind, in file order.
    #[test]
    fn every_error_of_a_file_is_reported() {
        let text = edit(
            "default",
            "default = \"monolith\"\nlisten_adress = \"127.0.0.1:1\"",
        )
        .replace("backend_header = false", "backend_header = \"on\"")
        .replace(
            "idle_timeout = \"4s\"",
            "idle_timeout = \"18446744073709551615s\"",
        )
        .replace("service = \"users\"", "service = \"user\"")
        .replace("shadow_noise_check = false", "shadow_noise_check = \"yes\"");
        let errors = errors(&text);
        // The unknown key lists every key [proxy] knows (the list grows with the product).
        let (unknown, rest) = errors.split_first().expect("errors");
        assert!(
            unknown.starts_with(
                "3:1: listen_adress: unknown key (known keys here: listen, admin, default, "
            ) && unknown.contains(" max_header_bytes"),
            "{unknown}"
        );
        assert_eq!(
            rest,
            [
                "5:18: backend_header: expected a boolean, found string \"on\": write true, without quotes",
                "14:16: idle_timeout: \"18446744073709551615s\" is out of range: expected at most 1h",
                "18:11: route \"user\": service \"user\" is not defined (did you mean \"users\"?)",
                "20:22: shadow_noise_check: expected a boolean, found string \"yes\": write true, without quotes",
            ]
        );
    }
}
