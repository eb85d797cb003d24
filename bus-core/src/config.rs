//! For config types: secrets that never show, and string settings that take any scalar.
//!
//! Settings come from TOML files and environment variables, where `123456789`, `true` or
//! `3.14159` look like numbers and booleans. A string setting (a client id, a user name, a
//! project number, a password) must accept them as the text they are: deserialize it with
//! [`string`], [`option_string`] or [`Secret`].
//!
//! ```
//! use bus_core::config::Secret;
//!
//! #[derive(serde::Deserialize)]
//! struct Section {
//!     #[serde(deserialize_with = "bus_core::config::string")]
//!     client_id: String,
//!     password: Option<Secret>,
//! }
//!
//! let section: Section = serde_json::from_str(r#"{"client_id": 1234, "password": 123456789}"#).unwrap();
//! assert_eq!(section.client_id, "1234");
//! assert_eq!(section.password.unwrap().expose(), "123456789");
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Takes a string, or a number or boolean as its text.
struct Lenient;

impl Visitor<'_> for Lenient {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// Deserializes a string setting, taking a number or boolean as its text.
pub fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(Lenient)
}

/// [`string`] for an optional setting.
pub fn option_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "string")] String);
    Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(s)| s))
}

/// [`string`] for an optional path setting.
pub fn option_path<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PathBuf>, D::Error> {
    Ok(option_string(deserializer)?.map(PathBuf::from))
}

/// A secret string (a password, a token): serialisable, but never shown by `Debug` or
/// `Display`, and any scalar is taken as its text.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The value never goes into an error message: only its kind does.
        deserializer
            .deserialize_any(Lenient)
            .map(Secret)
            .map_err(|_| de::Error::custom("a secret must be a string"))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Whether a setting named `key` holds a secret (its value is never shown).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "credential"]
        .iter()
        .any(|word| key.contains(word))
}

/// A URL with any user name and password (`scheme://user:pw@host`) taken out, for messages.
///
/// ```
/// assert_eq!(bus_core::config::redact_url("mqtt://svc:hunter2@broker:1883"), "mqtt://***@broker:1883");
/// assert_eq!(bus_core::config::redact_url("mqtt://broker:1883"), "mqtt://broker:1883");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let redacted = match rest[..authority_end].rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_string(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{redacted}"),
        None => redacted,
    }
}
