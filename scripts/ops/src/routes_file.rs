//! Editing `routes.toml` in place: one route's weight, shadow flag or methods changed with
//! toml_edit so comments and layout survive, the result validated by the proxy's own parser
//! (what `strangler-proxy check` runs) and written atomically, or not at all.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use strangler_proxy::config::{self, Config, ConfigErrors, RouteConfig};
use toml_edit::{DocumentMut, Item, TableLike, Value};

/// What to change on one route; `None` leaves a setting alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// New weight, 0..=100 (validated with the rest of the file).
    pub weight: Option<i64>,
    /// Turn shadowing on or off.
    pub shadow: Option<bool>,
    /// `Some(None)` removes the key (every method), `Some(Some(list))` sets it.
    pub methods: Option<Option<Vec<String>>>,
    /// Raise (`true`) or lift (`false`, removing the key) the route's write fence.
    pub hold_writes: Option<bool>,
}

/// A route's settings as the scripts show them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteState {
    /// Percent to the service.
    pub weight: i64,
    /// Shadowing on.
    pub shadow: bool,
    /// Peeled-off methods; `None` is every method.
    pub methods: Option<Vec<String>>,
    /// The derived stage (`dark`, `shadow`, `canary`, `live`).
    pub stage: &'static str,
    /// [`RouteConfig::claims_writes`], kept so the state never disagrees with the proxy.
    claims_writes: bool,
}

impl RouteState {
    fn of(config: &Config, route: &str) -> Option<RouteState> {
        config
            .routes
            .iter()
            .find(|r| r.name == route)
            .map(RouteState::from)
    }

    /// Whether the route claims non-safe methods (POST, DELETE, …): at any weight above 0 it
    /// sends them to the service ([`RouteConfig::sends_writes`]).
    pub fn includes_writes(&self) -> bool {
        self.claims_writes
    }
}

impl From<&RouteConfig> for RouteState {
    fn from(r: &RouteConfig) -> RouteState {
        RouteState {
            weight: i64::from(r.weight),
            shadow: r.shadow,
            methods: r
                .methods
                .as_ref()
                .map(|m| m.iter().map(|m| m.to_string()).collect()),
            stage: r.stage().as_str(),
            claims_writes: r.claims_writes(),
        }
    }
}

impl fmt::Display for RouteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "weight {}, shadow {}, methods {}, stage {}",
            self.weight,
            if self.shadow { "on" } else { "off" },
            self.methods
                .as_ref()
                .map_or_else(|| "all".to_string(), |m| m.join(",")),
            self.stage
        )
    }
}

/// Why an edit was refused; the file is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The edit would move writes against a running migration (see
    /// [`crate::cutover::guard_writes`]).
    #[error("refusing to edit {path}: {reason}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why, and what to run instead.
        reason: String,
    },
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML at all.
    #[error("{path}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// No `[[routes]]` entry has that name.
    #[error("{path}: no route named {route:?} (routes: {known})")]
    UnknownRoute {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        route: String,
        /// The names present.
        known: String,
    },
    /// The edited file would not pass `strangler-proxy check`.
    #[error(
        "refusing to write a file `strangler-proxy check` would reject; {path} is unchanged:\n{errors}"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every error, as `FILE:LINE:COL: message`.
        errors: ConfigErrors,
    },
    /// Someone else changed the file between our read and our write.
    #[error("{path} changed while it was being edited; nothing written, run the command again")]
    Raced {
        /// The file.
        path: PathBuf,
    },
}

/// The outcome of an edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edited {
    /// The route's settings before.
    pub before: Option<RouteState>,
    /// The route's settings after.
    pub after: RouteState,
    /// Whether the file's bytes changed (an edit to the values already there writes nothing).
    pub written: bool,
}

/// Applies `change` to route `route` in the text of a routes file; returns the new text.
pub fn edit_text(
    text: &str,
    path: &Path,
    route: &str,
    change: &Change,
) -> Result<String, EditError> {
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| EditError::Syntax {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
    let mut known = Vec::new();
    let mut found = false;
    for entry in route_entries(&mut doc) {
        let name = entry_name(entry);
        if name.as_deref() == Some(route) && !found {
            found = true;
            apply(entry, change);
        } else if let Some(name) = name {
            known.push(name);
        }
    }
    if !found {
        return Err(EditError::UnknownRoute {
            path: path.to_owned(),
            route: route.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    }
    Ok(doc.to_string())
}

/// Every `[[routes]]` entry, as tables or inline tables.
fn route_entries(doc: &mut DocumentMut) -> Vec<&mut dyn TableLike> {
    match doc.get_mut("routes") {
        Some(Item::ArrayOfTables(tables)) => {
            tables.iter_mut().map(|t| t as &mut dyn TableLike).collect()
        }
        Some(Item::Value(Value::Array(array))) => array
            .iter_mut()
            .filter_map(|v| v.as_inline_table_mut())
            .map(|t| t as &mut dyn TableLike)
            .collect(),
        _ => Vec::new(),
    }
}

/// A route's name: `name`, or its service's name when absent (as the proxy reads it).
fn entry_name(entry: &dyn TableLike) -> Option<String> {
    entry
        .get("name")
        .and_then(Item::as_str)
        .or_else(|| entry.get("service").and_then(Item::as_str))
        .map(str::to_string)
}

fn apply(entry: &mut dyn TableLike, change: &Change) {
    if let Some(weight) = change.weight {
        set(entry, "weight", Value::from(weight));
    }
    if let Some(shadow) = change.shadow {
        // Off is the default: an absent key needs no `shadow = false`.
        if shadow || entry.contains_key("shadow") {
            set(entry, "shadow", Value::from(shadow));
        }
    }
    match change.hold_writes {
        Some(true) => set(entry, "hold_writes", Value::from(true)),
        Some(false) => {
            entry.remove("hold_writes");
        }
        None => {}
    }
    match &change.methods {
        Some(Some(methods)) => {
            let array: toml_edit::Array = methods.iter().map(String::as_str).collect();
            set(entry, "methods", Value::Array(array));
        }
        Some(None) => {
            entry.remove("methods");
        }
        None => {}
    }
}

/// Replaces the value of `key`, keeping the spacing and comment around the old one; a new key
/// goes after the others, its `=` aligned with theirs when they are aligned.
fn set(entry: &mut dyn TableLike, key: &str, mut value: Value) {
    if let Some(Item::Value(old)) = entry.get_mut(key) {
        let mut decor = old.decor().clone();
        // Keep a trailing comment in its column: take the growth out of the spaces before it.
        let grown = bare_len(&value) as isize - bare_len(old) as isize;
        if let Some(suffix) = decor.suffix().and_then(|s| s.as_str()) {
            let spaces = suffix.len() - suffix.trim_start_matches(' ').len();
            if spaces < suffix.len() {
                let keep = (spaces as isize - grown).max(1) as usize;
                decor.set_suffix(format!("{}{}", " ".repeat(keep), &suffix[spaces..]));
            }
        }
        *value.decor_mut() = decor;
        *old = value;
        return;
    }
    let column = aligned_column(entry);
    entry.insert(key, Item::Value(value));
    if let (Some(column), Some(mut k)) = (column, entry.key_mut(key)) {
        let pad = column.saturating_sub(key.len()).max(1);
        k.leaf_decor_mut().set_suffix(" ".repeat(pad));
    }
}

/// Length of a value as written, without the spacing and comments around it.
fn bare_len(value: &Value) -> usize {
    let mut bare = value.clone();
    bare.decor_mut().clear();
    bare.to_string().len()
}

/// The column of `=` shared by every key of `entry`, if the keys are aligned.
fn aligned_column(entry: &dyn TableLike) -> Option<usize> {
    let mut column = None;
    for (key, _) in entry.iter() {
        let k = entry.key(key)?;
        let suffix = k
            .leaf_decor()
            .suffix()
            .and_then(|s| s.as_str())
            .unwrap_or(" ");
        let here = k.display_repr().len() + suffix.len();
        match column {
            None => column = Some(here),
            Some(c) if c == here => {}
            Some(_) => return None,
        }
    }
    column
}

/// Reads `path`, applies `change` to `route`, validates the result as `strangler-proxy check`
/// does and replaces the file atomically. An invalid result, an unknown route or a concurrent
/// edit leaves the file as it was.
pub fn edit_file(path: &Path, route: &str, change: &Change) -> Result<Edited, EditError> {
    edit_file_checked(path, route, change, &|_| Ok(()))
}

/// [`edit_file`], refusing (file untouched) an edited route that `check` rejects, e.g.
/// [`crate::cutover::guard_writes`].
pub fn edit_file_checked(
    path: &Path,
    route: &str,
    change: &Change,
    check: &dyn Fn(&RouteConfig) -> Result<(), String>,
) -> Result<Edited, EditError> {
    // Scripts editing the same file at once (two rollouts, a cutover beside a rollout) take
    // turns; an editor saving meanwhile is caught by `write_atomically`, and the edit is made
    // again on what it saved.
    let _turn = lock_beside(path)?;
    let mut attempt = 0;
    loop {
        match edit_once(path, route, change, check) {
            Err(EditError::Raced { .. }) if attempt < 3 => attempt += 1,
            result => return result,
        }
    }
}

/// An exclusive lock on the file itself (flock), held until dropped; nothing is left beside
/// it (a ConfigMap directory stays as it was). Every edit replaces the file by rename, so a
/// lock taken on the inode being replaced is retaken on the new one.
fn lock_beside(path: &Path) -> Result<std::fs::File, EditError> {
    use std::os::unix::fs::MetadataExt as _;
    let io = |source| EditError::Io {
        path: path.to_owned(),
        source,
    };
    loop {
        let real = std::fs::canonicalize(path).map_err(io)?;
        let file = std::fs::File::open(&real).map_err(io)?;
        file.lock().map_err(io)?;
        let held = file.metadata().map_err(io)?;
        let now = std::fs::metadata(&real).map_err(io)?;
        if (held.dev(), held.ino()) == (now.dev(), now.ino()) {
            return Ok(file);
        }
    }
}

fn edit_once(
    path: &Path,
    route: &str,
    change: &Change,
    check: &dyn Fn(&RouteConfig) -> Result<(), String>,
) -> Result<Edited, EditError> {
    let io = |source| EditError::Io {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let before = config::parse(&text)
        .ok()
        .and_then(|c| RouteState::of(&c, route));
    let new_text = edit_text(&text, path, route, change)?;
    let config = config::parse(&new_text).map_err(|errors| EditError::Invalid {
        path: path.to_owned(),
        errors: ConfigErrors {
            file: path.display().to_string(),
            errors,
        },
    })?;
    let after = RouteState::of(&config, route).ok_or_else(|| EditError::UnknownRoute {
        path: path.to_owned(),
        route: route.to_string(),
        known: config
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    if let Some(edited) = config.routes.iter().find(|r| r.name == route)
        && let Err(reason) = check(edited)
    {
        return Err(EditError::Refused {
            path: path.to_owned(),
            reason,
        });
    }
    if new_text == text {
        return Ok(Edited {
            before,
            after,
            written: false,
        });
    }
    write_atomically(path, &text, &new_text)?;
    Ok(Edited {
        before,
        after,
        written: true,
    })
}

/// Writes `new` to a temporary file beside `path`, then renames it over `path`, so a reader
/// (the proxy's watcher) sees the old file or the new one, never half of one. Refuses when the
/// file no longer holds `old`.
pub fn write_atomically(path: &Path, old: &str, new: &str) -> Result<(), EditError> {
    let io = |source| EditError::Io {
        path: path.to_owned(),
        source,
    };
    // Write where the file really lives, so a symlinked routes.toml stays a symlink.
    let real = std::fs::canonicalize(path).map_err(io)?;
    let dir = real.parent().unwrap_or(Path::new("."));
    let file_name = real.file_name().map_or_else(
        || "routes.toml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(new.as_bytes())?;
        file.sync_all()?;
        if let Ok(meta) = std::fs::metadata(&real) {
            std::fs::set_permissions(&temp, meta.permissions())?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(io(e));
    }
    match std::fs::read_to_string(&real) {
        Ok(now) if now == old => {}
        Ok(_) => {
            let _ = std::fs::remove_file(&temp);
            return Err(EditError::Raced {
                path: path.to_owned(),
            });
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(io(e));
        }
    }
    if let Err(e) = std::fs::rename(&temp, &real) {
        let _ = std::fs::remove_file(&temp);
        return Err(io(e));
    }
    // Persist the rename itself; a failure here leaves the new file in place, so it is only
    // worth a warning.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `weight 0 → 25, stage dark → canary`: what changed, for the operator.
pub fn describe(route: &str, edited: &Edited) -> String {
    let after = &edited.after;
    let Some(before) = &edited.before else {
        return format!("route {route}: {after}");
    };
    let mut parts = Vec::new();
    if before.weight != after.weight {
        parts.push(format!("weight {} → {}", before.weight, after.weight));
    }
    if before.shadow != after.shadow {
        let word = |on| if on { "on" } else { "off" };
        parts.push(format!(
            "shadow {} → {}",
            word(before.shadow),
            word(after.shadow)
        ));
    }
    if before.methods != after.methods {
        let list =
            |m: &Option<Vec<String>>| m.as_ref().map_or_else(|| "all".into(), |m| m.join(","));
        parts.push(format!(
            "methods {} → {}",
            list(&before.methods),
            list(&after.methods)
        ));
    }
    if before.stage != after.stage {
        parts.push(format!("stage {} → {}", before.stage, after.stage));
    }
    if parts.is_empty() {
        format!("route {route}: unchanged ({after})")
    } else {
        format!("route {route}: {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# routes for the test
[proxy]
listen  = "127.0.0.1:8080"
admin   = "127.0.0.1:9901"
default = "monolith"

[services.monolith]
url = "http://127.0.0.1:3000"

[services.users]
url = "http://127.0.0.1:3001"

[services.other]
url = "http://127.0.0.1:3002"

[[routes]]
name    = "users"               # the metric label
prefix  = "/api/users"
service = "users"
weight  = 0                     # dark for now
# shadow  = true                # try me

[[routes]]
prefix = "/api/other"
service = "other"
weight = 5
"#;

    fn edit(route: &str, change: &Change) -> String {
        edit_text(FILE, Path::new("routes.toml"), route, change).expect("edit")
    }

    #[test]
    fn a_weight_change_keeps_comments_and_alignment() {
        let out = edit(
            "users",
            &Change {
                weight: Some(25),
                ..Change::default()
            },
        );
        assert_eq!(
            out,
            FILE.replace(
                "weight  = 0                     # dark for now",
                "weight  = 25                    # dark for now"
            ),
        );
    }

    #[test]
    fn shadow_is_added_aligned_and_methods_as_an_array() {
        let out = edit(
            "users",
            &Change {
                shadow: Some(true),
                methods: Some(Some(vec!["GET".into(), "HEAD".into()])),
                ..Change::default()
            },
        );
        assert!(
            out.contains("weight  = 0                     # dark for now\n"),
            "{out}"
        );
        assert!(out.contains("shadow  = true\n"), "{out}");
        assert!(out.contains("methods = [\"GET\", \"HEAD\"]\n"), "{out}");
        // The commented-out line and everything else survive.
        assert!(
            out.contains("# shadow  = true                # try me"),
            "{out}"
        );
        assert!(
            out.starts_with("# routes for the test\n[proxy]\nlisten  = "),
            "{out}"
        );
    }

    #[test]
    fn shadow_off_on_a_route_without_the_key_writes_nothing() {
        let out = edit(
            "users",
            &Change {
                shadow: Some(false),
                ..Change::default()
            },
        );
        assert_eq!(out, FILE);
    }

    #[test]
    fn a_route_without_a_name_is_found_by_its_service() {
        let out = edit(
            "users",
            &Change {
                weight: Some(1),
                ..Change::default()
            },
        );
        assert!(
            out.contains("weight = 5\n"),
            "only the first match changes: {out}"
        );
    }

    #[test]
    fn unknown_routes_are_refused_with_the_known_names() {
        let err =
            edit_text(FILE, Path::new("routes.toml"), "posts", &Change::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "routes.toml: no route named \"posts\" (routes: users, other)"
        );
    }

    #[test]
    fn inline_route_tables_are_edited_too() {
        let text = "[proxy]\ndefault = \"m\"\n[services.m]\nurl = \"http://127.0.0.1:1\"\n\
                    [services.s]\nurl = \"http://127.0.0.1:2\"\n\
                    routes = [{ name = \"s\", prefix = \"/s\", service = \"s\", weight = 0 }]\n";
        // `routes = [...]` after a table header belongs to that table; put it at the top.
        let text = format!(
            "routes = [{{ name = \"s\", prefix = \"/s\", service = \"s\", weight = 0 }}]\n{}",
            text.lines()
                .filter(|l| !l.starts_with("routes"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let out = edit_text(
            &text,
            Path::new("r.toml"),
            "s",
            &Change {
                weight: Some(50),
                ..Change::default()
            },
        )
        .expect("edit");
        assert!(
            out.starts_with(
                "routes = [{ name = \"s\", prefix = \"/s\", service = \"s\", weight = 50 }]"
            ),
            "{out}"
        );
    }

    #[test]
    fn scripts_editing_one_file_at_once_take_turns_and_lose_no_edit() {
        let dir = std::env::temp_dir().join(format!("strangler-turns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.toml");
        std::fs::write(&path, FILE).unwrap();
        let editors: Vec<_> = [("users", 0i64), ("other", 1i64)]
            .into_iter()
            .map(|(route, parity)| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for step in 0..40i64 {
                        let change = Change {
                            weight: Some(2 * step + parity),
                            ..Change::default()
                        };
                        edit_file(&path, route, &change)
                            .unwrap_or_else(|e| panic!("{route} step {step}: {e}"));
                    }
                })
            })
            .collect();
        for e in editors {
            e.join().unwrap();
        }
        let config = config::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let weight = |name: &str| {
            config
                .routes
                .iter()
                .find(|r| r.name == name)
                .unwrap()
                .weight
        };
        // Each editor's last edit survived the other's.
        assert_eq!((weight("users"), weight("other")), (78, 79));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
