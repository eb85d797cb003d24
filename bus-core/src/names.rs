//! Portable names: [`Topic`] and [`SubscriptionName`], validated once here so every backend
//! can rely on them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::{Error, Result, CORE};

/// The longest topic or subscription name, in bytes (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 255;

/// A portable topic name such as `autopatch/crash_detail-v0.1.0`.
///
/// Rules (checked by [`Topic::new`]):
/// - 1 to 255 characters from `A-Z a-z 0-9 . _ ~ % / -`;
/// - starts with a letter (so never `$`, which MQTT reserves);
/// - contains no MQTT wildcard (`+` or `#`): MQTT forbids both anywhere in a topic name;
/// - does not start with `goog` (reserved by Google Cloud Pub/Sub);
/// - has no empty segment (`a//b`, trailing `/`).
///
/// Each backend maps the name to its own naming: MQTT uses it as is, Pub/Sub encodes it.
///
/// ```
/// use bus_core::Topic;
///
/// let topic = Topic::new("autopatch/crash_detail-v0.1.0")?;
/// assert_eq!(topic.as_str(), "autopatch/crash_detail-v0.1.0");
/// assert!(Topic::new("sensors/+/temp").is_err());
/// # Ok::<(), bus_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` and makes a topic of it, or returns an
    /// [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error naming the rule broken.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        validate(name, "topic", true)?;
        Ok(Topic(Arc::from(name)))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl FromStr for Topic {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Topic::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Topic::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Topic::new(s)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// The name of a subscription, such as `patch-evaluation`.
///
/// Every subscription name receives every message published to its topic after it was created
/// (fan-out); consumers that subscribe with the same name share its messages (load sharing).
///
/// Rules (checked by [`SubscriptionName::new`]): 1 to 255 characters from
/// `A-Z a-z 0-9 . _ ~ % -`, starting with a letter, not starting with `goog`. There is no `/` or
/// `+` because MQTT shared-subscription names cannot contain them.
///
/// ```
/// use bus_core::SubscriptionName;
///
/// assert!(SubscriptionName::new("llm-dispatch").is_ok());
/// assert!(SubscriptionName::new("a/b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionName(Arc<str>);

impl SubscriptionName {
    /// Validates `name`, or returns an [`InvalidArgument`](crate::ErrorKind::InvalidArgument)
    /// error naming the rule broken.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        validate(name, "subscription name", false)?;
        Ok(SubscriptionName(Arc::from(name)))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubscriptionName({:?})", &*self.0)
    }
}

impl FromStr for SubscriptionName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SubscriptionName::new(s)
    }
}

impl TryFrom<&str> for SubscriptionName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        SubscriptionName::new(s)
    }
}

impl AsRef<str> for SubscriptionName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

fn validate(name: &str, what: &str, is_topic: bool) -> Result<()> {
    let fail = |rule: String| {
        Err(Error::invalid_argument(
            CORE,
            format!("{what} {name:?}: {rule}"),
        ))
    };
    if name.is_empty() {
        return fail("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return fail(format!(
            "is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return fail("must start with a letter (A-Z or a-z)".into());
    }
    if name.to_ascii_lowercase().starts_with("goog") {
        return fail("must not start with `goog` (reserved by Google Cloud Pub/Sub)".into());
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '.' | '_' | '~' | '%' | '-')
            || (is_topic && c == '/')
    };
    if let Some(wildcard) = name.chars().find(|&c| c == '+' || c == '#') {
        return fail(format!(
            "{wildcard:?} is an MQTT wildcard; names denote one topic or subscription, not a pattern"
        ));
    }
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        let set = if is_topic {
            "A-Z a-z 0-9 . _ ~ % / -"
        } else {
            "A-Z a-z 0-9 . _ ~ % -"
        };
        return fail(format!("character {bad:?} is not allowed; use only {set}"));
    }
    if is_topic && name.split('/').any(str::is_empty) {
        return fail("must not contain an empty segment (`//` or a trailing `/`)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn accepts_portable_topics() {
        for ok in [
            "a",
            "autopatch/crash_detail-v0.1.0",
            "python/mqtt",
            "A.b_c~d%f/g-h",
            &"x".repeat(255),
        ] {
            assert!(Topic::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_and_names_the_rule() {
        let cases = [
            ("", "empty"),
            ("1abc", "start with a letter"),
            ("$SYS/x", "start with a letter"),
            ("googtopic", "goog"),
            ("a/#", "wildcard"),
            ("a+b", "wildcard"),
            ("a/+/b", "wildcard"),
            ("a b", "' '"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("é", "start with a letter"),
        ];
        for (name, rule) in cases {
            let err = Topic::new(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains(rule), "{name}: {err}");
        }
        let long = "x".repeat(256);
        assert!(Topic::new(&long)
            .unwrap_err()
            .to_string()
            .contains("at most 255"));
    }

    #[test]
    fn subscription_names_exclude_slash_and_plus() {
        assert!(SubscriptionName::new("patch-evaluation.v1").is_ok());
        assert!(SubscriptionName::new("a/b").is_err());
        assert!(SubscriptionName::new("a+b").is_err());
    }
}
