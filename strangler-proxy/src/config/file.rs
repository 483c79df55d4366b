//! File-side types: exactly what `routes.toml` may contain, with the position of every value.
//!
//! `#[serde(deny_unknown_fields)]` turns a misspelt key into a parse error; every value the
//! validator checks is [`Spanned`] so its error can name the line and column.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

/// The whole file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// `[proxy]`: listeners and global behaviour.
    pub proxy: Option<Spanned<ProxySection>>,
    /// `[services.NAME]`: where each backend lives.
    #[serde(default)]
    pub services: BTreeMap<String, Spanned<ServiceEntry>>,
    /// `[[routes]]`: prefixes peeled off the default.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteEntry>>,
}

/// `[proxy]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) admin: Option<Spanned<String>>,
    pub(super) default: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) backend_header: bool,
    #[serde(default)]
    pub(super) ignore_case: bool,
    pub(super) access_log: Option<bool>,
    pub(super) override_header: Option<Spanned<String>>,
    pub(super) shadow_concurrency: Option<Spanned<i64>>,
    pub(super) drain_timeout: Option<Spanned<String>>,
    pub(super) hold_timeout: Option<Spanned<String>>,
    pub(super) hold_max: Option<Spanned<i64>>,
    pub(super) max_uri_bytes: Option<Spanned<i64>>,
    pub(super) max_header_bytes: Option<Spanned<i64>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) workers: Option<Spanned<i64>>,
    pub(super) first_byte_timeout: Option<Spanned<String>>,
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) client_idle_timeout: Option<Spanned<String>>,
    pub(super) drain_grace: Option<Spanned<String>>,
    /// `routes = "none"`: the file has no `[[routes]]` on purpose (a reload may drop them all).
    pub(super) routes: Option<Spanned<String>>,
    /// Query keys whose values `/diffs` and logs show; every other value is redacted.
    pub(super) show_query_keys: Option<Vec<Spanned<String>>>,
}

/// `[services.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    pub(super) url: Spanned<String>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) request_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) outlier_failures: Option<Spanned<i64>>,
    pub(super) outlier_cooldown: Option<Spanned<String>>,
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub(super) name: Option<Spanned<String>>,
    pub(super) prefix: Spanned<String>,
    pub(super) service: Spanned<String>,
    pub(super) weight: Spanned<WeightValue>,
    pub(super) methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) sticky: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) shadow: bool,
    #[serde(default)]
    pub(super) fallback: bool,
    pub(super) shadow_methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) shadow_ignore: Option<Vec<Spanned<String>>>,
    pub(super) shadow_headers: Option<Vec<Spanned<String>>>,
    pub(super) shadow_ignore_headers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) shadow_noise_check: bool,
    #[serde(default)]
    pub(super) hold_writes: bool,
    pub(super) shadow_redact: Option<Vec<Spanned<String>>>,
}

/// A `weight` value: any integer parses (range is checked with the other errors), anything else
/// is refused with a message that names the key, as operators type `"50"` more often than not.
#[derive(Debug, Clone, Copy)]
pub struct WeightValue(pub(super) i64);

impl<'de> Deserialize<'de> for WeightValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WeightVisitor;
        impl Visitor<'_> for WeightVisitor {
            type Value = WeightValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer 0..=100")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WeightValue, E> {
                Ok(WeightValue(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WeightValue, E> {
                Ok(WeightValue(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WeightValue, E> {
                Err(E::custom(format!(
                    "weight: expected an integer 0..=100, found string {v:?}"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<WeightValue, E> {
                Err(E::custom(format!(
                    "weight: expected an integer 0..=100, found float {v}"
                )))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<WeightValue, E> {
                Err(E::custom(format!(
                    "weight: expected an integer 0..=100, found boolean {v}"
                )))
            }
        }
        deserializer.deserialize_any(WeightVisitor)
    }
}
