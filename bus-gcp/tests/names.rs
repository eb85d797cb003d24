//! The Pub/Sub name encoding, for any portable name: IDs Pub/Sub accepts, decoded back to the
//! same names; and decoding any string never panics.

use bus_core::{SubscriptionName, Topic};
use bus_gcp::names::{subscription_from_id, subscription_id, topic_from_id, topic_id};
use proptest::prelude::*;

/// Portable topics: a letter, then allowed characters, segments separated by `/`.
fn topics() -> impl Strategy<Value = Topic> {
    "[a-zA-Z][a-zA-Z0-9._~%-]{0,20}(/[a-zA-Z0-9._~%-]{1,20}){0,4}"
        .prop_filter_map("a valid topic", |t| Topic::new(t).ok())
}

fn names() -> impl Strategy<Value = SubscriptionName> {
    "[a-zA-Z][a-zA-Z0-9._~%-]{0,30}"
        .prop_filter_map("a valid name", |n| SubscriptionName::new(n).ok())
}

/// What Pub/Sub accepts as a resource ID.
fn is_pubsub_id(id: &str) -> bool {
    (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
}

proptest! {
    #[test]
    fn topic_ids_round_trip(topic in topics()) {
        if let Ok(id) = topic_id(&topic) {
            prop_assert!(is_pubsub_id(&id), "{}", id);
            prop_assert_eq!(topic_from_id(&id).unwrap(), topic);
        }
    }

    #[test]
    fn subscription_ids_round_trip(name in names(), topic in topics()) {
        if let Ok(id) = subscription_id(&name, &topic) {
            prop_assert!(is_pubsub_id(&id), "{}", id);
            prop_assert_eq!(subscription_from_id(&id).unwrap(), (name, topic));
        }
    }

    #[test]
    fn decoding_any_string_never_panics(id in ".{0,300}") {
        let _ = topic_from_id(&id);
        let _ = subscription_from_id(&id);
    }
}
