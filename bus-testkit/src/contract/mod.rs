//! The contract scenarios, by area. Each one makes its own fresh topic and subscription names,
//! so a rerun against a long-lived broker cannot see old data; each panics (like a test
//! assertion) when the backend breaks the contract, and returns [`Outcome::Skipped`] when the
//! backend declares that it lacks what the scenario checks.

mod batch;
mod delivery;
mod durability;
mod input;
mod lifecycle;
mod settling;

pub use batch::{
    batch_keeps_order, batch_partial_failure, batch_receive_waits_and_closes, batch_round_trip,
    batch_settles_only_what_was_asked,
};
pub use delivery::{
    competing_consumers, concurrent_publishers, fan_out, round_trip, topic_isolation,
};
pub use durability::{dropped_consumer_hands_messages_on, durable_backlog, resubscribe_in_batches};
pub use input::{bad_input_rejected, typed_decode_error_keeps_delivery};
pub use lifecycle::{close_unblocks_receive, operations_after_close_fail, publisher_close_flushes};
pub use settling::{
    ack_deadline_redelivers, dead_letter_after_max_attempts, nack_redelivers,
    nack_stays_on_its_subscription, ordering_per_key,
};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{
    Delivery, ErrorKind, JsonSubscription, Message, PublishJson, Publisher, Subscriber,
    Subscription, SubscriptionOptions, Topic,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};

use crate::{Outcome, Target};

/// How long a scenario waits for one expected delivery before failing, unless the backend's
/// target says otherwise ([`Target::receive_timeout`]).
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a scenario watches for deliveries that must not come.
pub const QUIET_PERIOD: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh topic for one scenario run: `bus-test/<scenario>/<random>`.
pub fn fresh_topic(scenario: &str) -> Topic {
    let name = format!("bus-test/{scenario}/{}", uuid::Uuid::new_v4().simple());
    Topic::new(name).expect("generated topic names are valid")
}

/// Fresh subscription options for one scenario run: `<label>-<random>`.
pub fn fresh_options(label: &str) -> SubscriptionOptions {
    let name = format!("{label}-{}", uuid::Uuid::new_v4().simple());
    SubscriptionOptions::new(name).expect("generated subscription names are valid")
}

async fn publisher(target: &Target) -> Box<dyn Publisher> {
    target.backend().publisher()
}

async fn subscriber(target: &Target) -> Box<dyn Subscriber> {
    target.backend().subscriber()
}

/// What most scenarios start from: a publisher, a subscriber and a fresh topic.
struct Fixture {
    publisher: Box<dyn Publisher>,
    subscriber: Box<dyn Subscriber>,
    topic: Topic,
}

impl Fixture {
    async fn new(target: &Target, scenario: &str) -> Fixture {
        Fixture {
            publisher: publisher(target).await,
            subscriber: subscriber(target).await,
            topic: fresh_topic(scenario),
        }
    }
}

async fn subscribe(
    subscriber: &dyn Subscriber,
    topic: &Topic,
    options: &SubscriptionOptions,
) -> Box<dyn Subscription> {
    subscriber
        .subscribe(topic, options.clone())
        .await
        .unwrap_or_else(|e| panic!("subscribe to {topic} as {}: {e}", options.name))
}

async fn publish(publisher: &dyn Publisher, topic: &Topic, message: Message) -> String {
    publisher
        .publish(topic, message)
        .await
        .unwrap_or_else(|e| panic!("publish to {topic}: {e}"))
}

/// Receives one delivery or panics after `limit`.
pub async fn receive(limit: Duration, subscription: &dyn Subscription, what: &str) -> Delivery {
    match timeout(limit, subscription.receive()).await {
        Ok(Ok(delivery)) => delivery,
        Ok(Err(e)) => panic!("receiving {what}: {e}"),
        Err(_) => panic!("receiving {what}: nothing arrived within {limit:?}"),
    }
}

/// Panics if a delivery arrives within `period`.
pub async fn expect_nothing(subscription: &dyn Subscription, period: Duration, why: &str) {
    if let Ok(result) = timeout(period, subscription.receive()).await {
        match result {
            Ok(delivery) => panic!("{why}, but got {delivery:?}"),
            Err(e) => panic!("{why}, but receive failed: {e}"),
        }
    }
}

/// Receives and acks until `expected` distinct message ids were seen, returning how many
/// deliveries were duplicates. Panics (naming how many are missing) if a delivery takes longer
/// than `limit`, or on an id that was never published.
pub async fn receive_all(
    limit: Duration,
    subscription: &dyn Subscription,
    expected: &HashSet<String>,
    what: &str,
) -> usize {
    let mut seen = HashSet::with_capacity(expected.len());
    let mut duplicates = 0;
    while seen.len() < expected.len() {
        let delivery = match timeout(limit, subscription.receive()).await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(e)) => panic!(
                "{what}: receive failed after {} of {}: {e}",
                seen.len(),
                expected.len()
            ),
            Err(_) => panic!(
                "{what}: {} of {} messages lost (nothing more arrived within {limit:?})",
                expected.len() - seen.len(),
                expected.len()
            ),
        };
        let id = delivery.id().to_string();
        assert!(
            expected.contains(&id),
            "{what}: unexpected message {delivery:?}"
        );
        if !seen.insert(id) {
            duplicates += 1;
        }
        delivery
            .ack()
            .await
            .unwrap_or_else(|e| panic!("{what}: ack: {e}"));
    }
    duplicates
}

fn skip(reason: &str) -> Outcome {
    Outcome::Skipped(reason.to_string())
}
