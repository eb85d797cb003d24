//! The reversible mapping from portable bus names to Pub/Sub resource IDs.
//!
//! Pub/Sub IDs are 3 to 255 characters from `A-Z a-z 0-9 - _ . ~ + %`, starting with a letter.
//! Portable names may contain `/` (not allowed in an ID) and `%` (which the REST admin API
//! treats as an escape in URL paths), and may be 1 or 2 characters long. `+` never occurs in a
//! portable name, so it is the escape character here:
//!
//! - `/` becomes `+s` and `%` becomes `+p`;
//! - IDs shorter than 3 characters are padded with `+z` (which decodes to nothing);
//! - a subscription ID is `<encoded subscription name>++<encoded topic>`: Pub/Sub
//!   subscriptions are per project while bus subscription names are per topic, and `++` never
//!   occurs inside an encoded name.
//!
//! `autopatch/crash_detail-v0.1.0` → topic ID `autopatch+scrash_detail-v0.1.0`; subscription
//! `patch-evaluation` on it → `patch-evaluation++autopatch+scrash_detail-v0.1.0`.

use bus_core::{Error, Result, SubscriptionName, Topic};

use crate::BACKEND;

const MAX_ID: usize = 255;
const MIN_ID: usize = 3;

fn encode(name: &str) -> String {
    let mut id = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '/' => id.push_str("+s"),
            '%' => id.push_str("+p"),
            c => id.push(c),
        }
    }
    while id.len() < MIN_ID {
        id.push_str("+z");
    }
    id
}

fn decode(id: &str) -> Result<String> {
    let mut name = String::with_capacity(id.len());
    let mut chars = id.chars();
    while let Some(c) = chars.next() {
        if c != '+' {
            name.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => name.push('/'),
            Some('p') => name.push('%'),
            Some('z') => {}
            _ => {
                return Err(Error::invalid_argument(
                    BACKEND,
                    format!("{id:?} is not a bus-encoded Pub/Sub ID"),
                ))
            }
        }
    }
    Ok(name)
}

fn check_len(id: String, what: &str, name: &str) -> Result<String> {
    if id.len() > MAX_ID {
        return Err(Error::invalid_argument(
            BACKEND,
            format!(
                "{what} {name:?} maps to the Pub/Sub ID {id:?}, {} characters long; Pub/Sub allows {MAX_ID}: use a shorter name",
                id.len()
            ),
        ));
    }
    Ok(id)
}

/// The Pub/Sub topic ID of a portable topic.
pub fn topic_id(topic: &Topic) -> Result<String> {
    check_len(encode(topic.as_str()), "topic", topic.as_str())
}

/// The Pub/Sub subscription ID of a subscription name on a topic.
pub fn subscription_id(name: &SubscriptionName, topic: &Topic) -> Result<String> {
    let id = format!("{}++{}", encode(name.as_str()), encode(topic.as_str()));
    check_len(id, "subscription", &format!("{name} on {topic}"))
}

/// The portable topic a Pub/Sub topic ID came from.
pub fn topic_from_id(id: &str) -> Result<Topic> {
    Topic::new(decode(id)?)
}

/// The subscription name and topic a Pub/Sub subscription ID came from.
pub fn subscription_from_id(id: &str) -> Result<(SubscriptionName, Topic)> {
    let (name, topic) = id.split_once("++").ok_or_else(|| {
        Error::invalid_argument(BACKEND, format!("{id:?} is not a bus subscription ID"))
    })?;
    Ok((SubscriptionName::new(decode(name)?)?, topic_from_id(topic)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for name in [
            "a",
            "ab",
            "abc",
            "autopatch/crash_detail-v0.1.0",
            "a%2Fb/c",
            "x~y.z_%",
            "a/b",
        ] {
            let topic = Topic::new(name).unwrap();
            let id = topic_id(&topic).unwrap();
            assert!(
                id.len() >= 3 && id.starts_with(|c: char| c.is_ascii_alphabetic()),
                "{id}"
            );
            assert!(!id.contains('/') && !id.contains('%'), "{id}");
            assert_eq!(topic_from_id(&id).unwrap(), topic, "{id}");
        }
        let topic = Topic::new("autopatch/crash_detail-v0.1.0").unwrap();
        assert_eq!(topic_id(&topic).unwrap(), "autopatch+scrash_detail-v0.1.0");
    }

    #[test]
    fn subscriptions_round_trip() {
        let topic = Topic::new("autopatch/crash_detail").unwrap();
        let name = SubscriptionName::new("patch-evaluation").unwrap();
        let id = subscription_id(&name, &topic).unwrap();
        assert_eq!(id, "patch-evaluation++autopatch+scrash_detail");
        assert_eq!(subscription_from_id(&id).unwrap(), (name, topic));
        let short = SubscriptionName::new("s%").unwrap();
        let t = Topic::new("t").unwrap();
        assert_eq!(
            subscription_from_id(&subscription_id(&short, &t).unwrap()).unwrap(),
            (short, t)
        );
    }

    #[test]
    fn names_that_cannot_map_are_invalid_arguments() {
        let topic = Topic::new(format!("a{}", "/b".repeat(100))).unwrap();
        let err = topic_id(&topic).unwrap_err();
        assert_eq!(err.kind(), bus_core::ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("Pub/Sub allows 255"), "{err}");
    }
}
