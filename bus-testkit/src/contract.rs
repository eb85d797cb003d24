//! The contract scenarios. Each one makes its own fresh topic and subscription names, so a rerun
//! against a long-lived broker cannot see old data; each panics (like a test assertion) when
//! the backend breaks the contract, and returns [`Outcome::Skipped`] when the backend declares
//! that it lacks what the scenario checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{
    Delivery, ErrorKind, JsonSubscription, Message, Publisher, PublisherExt, Subscriber,
    Subscription, SubscriptionOptions, Topic,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};

use crate::{BackendFactory, Outcome};

/// How long a scenario waits for one expected delivery before failing, unless the backend's
/// factory says otherwise ([`BackendFactory::receive_timeout`]).
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

async fn publisher(factory: &dyn BackendFactory) -> Box<dyn Publisher> {
    factory
        .publisher()
        .await
        .unwrap_or_else(|e| panic!("{}: cannot create a publisher: {e}", factory.name()))
}

async fn subscriber(factory: &dyn BackendFactory) -> Box<dyn Subscriber> {
    factory
        .subscriber()
        .await
        .unwrap_or_else(|e| panic!("{}: cannot create a subscriber: {e}", factory.name()))
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

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Payloads (all 256 byte values, empty, 1 MiB where allowed), unicode attributes, the
/// ordering key, the id returned by publish and the attempt number survive a round trip.
pub async fn round_trip(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    let caps = factory.capabilities();
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("round_trip");
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("round-trip")).await;

    let every_byte: Vec<u8> = (0..=255u8).collect();
    let mut messages = vec![
        Message::new(every_byte)
            .with_attribute("clé", "välue ✓")
            .with_attribute("emoji-🚀", "日本語 テキスト")
            .with_attribute("empty-value", ""),
        Message::new(Bytes::new()).with_attribute("kind", "empty"),
    ];
    if caps.ordering {
        messages.push(Message::new("keyed").with_ordering_key("key-1"));
    }
    let mebibyte = 1024 * 1024;
    let large_fits = caps.max_message_bytes >= mebibyte + 64;
    if large_fits {
        let large: Vec<u8> = (0..mebibyte).map(|i| (i * 31 % 251) as u8).collect();
        messages.push(Message::new(large).with_attribute("kind", "large"));
    }

    let mut published = HashMap::new();
    for message in messages {
        let id = publish(&*publisher, &topic, message.clone()).await;
        assert!(!id.is_empty(), "publish returned an empty id");
        assert!(
            published.insert(id.clone(), message).is_none(),
            "publish returned id {id} twice"
        );
    }
    let mut received = 0;
    while received < published.len() {
        let delivery = receive(limit, &*subscription, "a round-trip message").await;
        let sent = published
            .get(delivery.id())
            .unwrap_or_else(|| panic!("delivery id {} was not returned by publish", delivery.id()));
        assert_eq!(delivery.attempt(), 1, "first delivery must be attempt 1");
        assert_eq!(delivery.topic(), &topic);
        assert_eq!(delivery.payload(), &sent.payload, "payload changed");
        assert_eq!(
            delivery.attributes(),
            &sent.attributes,
            "attributes changed"
        );
        assert_eq!(delivery.ordering_key(), sent.ordering_key.as_deref());
        delivery.ack().await.expect("ack");
        received += 1;
    }
    expect_nothing(&*subscription, QUIET_PERIOD, "every message was acked").await;
    if large_fits {
        Outcome::Passed
    } else {
        skip("the 1 MiB payload: max_message_bytes is below 1 MiB")
    }
}

/// 100 messages published while no consumer is attached to an existing subscription (made
/// with `create_subscription`) are all delivered when one attaches.
pub async fn durable_backlog(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    if !factory.capabilities().durable {
        return skip("backend does not declare durable subscriptions");
    }
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("durable_backlog");
    let options = fresh_options("durable");
    subscriber
        .create_subscription(&topic, options.clone())
        .await
        .unwrap_or_else(|e| panic!("create subscription {} on {topic}: {e}", options.name));
    subscriber
        .create_subscription(&topic, options.clone())
        .await
        .unwrap_or_else(|e| panic!("creating an existing subscription is not an error: {e}"));

    let mut ids = HashSet::new();
    for i in 0..100 {
        ids.insert(publish(&*publisher, &topic, Message::new(format!("backlog {i}"))).await);
    }
    let second = subscribe(&*subscriber, &topic, &options).await;
    receive_all(limit, &*second, &ids, "backlog published while detached").await;
    Outcome::Passed
}

/// Two subscription names on one topic each receive every message.
pub async fn fan_out(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    if !factory.capabilities().fan_out {
        return skip("backend does not declare fan-out");
    }
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("fan_out");
    let left = subscribe(&*subscriber, &topic, &fresh_options("left")).await;
    let right = subscribe(&*subscriber, &topic, &fresh_options("right")).await;
    let mut ids = HashSet::new();
    for i in 0..50 {
        ids.insert(publish(&*publisher, &topic, Message::new(format!("fan-out {i}"))).await);
    }
    receive_all(limit, &*left, &ids, "first subscription").await;
    receive_all(limit, &*right, &ids, "second subscription").await;
    Outcome::Passed
}

/// A consumer that disappears without settling anything (no ack, no nack, no close) does not
/// lose its messages: the next consumer of the subscription gets them, as redeliveries.
pub async fn dropped_consumer_hands_messages_on(factory: &dyn BackendFactory) -> Outcome {
    let caps = factory.capabilities();
    if !(caps.durable && caps.ack_deadline) {
        return skip("backend does not declare durable subscriptions and ack deadlines");
    }
    if !caps.prompt_handover {
        return skip("backend does not declare prompt hand-over to the next consumer");
    }
    let limit = factory.receive_timeout();
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("dropped_consumer");
    let options = fresh_options("dropped")
        .with_ack_deadline(caps.min_ack_deadline.max(Duration::from_secs(1)));
    let doomed = subscribe(&*subscriber, &topic, &options).await;
    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(publish(&*publisher, &topic, Message::new(format!("job {i}"))).await);
    }
    let mut unsettled = Vec::new();
    for _ in 0..5 {
        unsettled.push(receive(limit, &*doomed, "a message for the doomed consumer").await);
    }
    drop(unsettled);
    drop(doomed);

    let next = subscribe(&*subscriber, &topic, &options).await;
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let delivery = receive(limit, &*next, "the dropped consumer's messages").await;
        assert!(
            ids.contains(delivery.id()),
            "unexpected message {delivery:?}"
        );
        assert!(
            delivery.attempt() >= 2,
            "a redelivery reports attempt >= 2: {delivery:?}"
        );
        seen.insert(delivery.id().to_string());
        delivery.ack().await.expect("ack");
    }
    Outcome::Passed
}

/// Three consumers sharing one subscription name split 1,000 messages: none lost, every
/// consumer gets some, and a message seen twice is only ever a redelivery (attempt > 1).
pub async fn competing_consumers(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    if !factory.capabilities().competing_consumers {
        return skip("backend does not declare competing consumers");
    }
    const TOTAL: usize = 1_000;
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("competing_consumers");
    let options = fresh_options("shared");
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(Arc::new(subscribe(&*subscriber, &topic, &options).await));
    }
    /// Message id -> (consumer index, attempt) of each of its deliveries.
    type DeliveryLog = HashMap<String, Vec<(usize, u32)>>;
    let log: Arc<Mutex<DeliveryLog>> = Arc::default();
    let tasks: Vec<_> = consumers
        .iter()
        .enumerate()
        .map(|(index, consumer)| {
            let (consumer, log) = (consumer.clone(), log.clone());
            tokio::spawn(async move {
                while let Ok(delivery) = consumer.receive().await {
                    log.lock()
                        .expect("log lock")
                        .entry(delivery.id().to_string())
                        .or_default()
                        .push((index, delivery.attempt()));
                    delivery.ack().await.expect("ack");
                    // Let the others take their turn, as a real handler would by doing work.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();

    let mut ids = HashSet::new();
    for i in 0..TOTAL {
        ids.insert(publish(&*publisher, &topic, Message::new(format!("work {i}"))).await);
    }
    let deadline = Instant::now() + limit;
    loop {
        let seen = log.lock().expect("log lock").len();
        if seen >= TOTAL || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for consumer in &consumers {
        consumer.close().await.expect("close consumer");
    }
    for task in tasks {
        task.await.expect("consumer task");
    }
    let log = log.lock().expect("log lock");
    let missing = ids.iter().filter(|id| !log.contains_key(*id)).count();
    assert_eq!(
        missing, 0,
        "{missing} of {TOTAL} messages were never delivered"
    );
    let mut per_consumer = [0usize; 3];
    for (id, deliveries) in log.iter() {
        assert!(ids.contains(id), "unexpected message id {id}");
        let first_attempts = deliveries
            .iter()
            .filter(|(_, attempt)| *attempt == 1)
            .count();
        assert!(
            first_attempts <= 1,
            "message {id} was delivered as attempt 1 more than once: {deliveries:?}"
        );
        for (consumer, _) in deliveries {
            per_consumer[*consumer] += 1;
        }
    }
    assert!(
        per_consumer.iter().all(|&n| n > 0),
        "every consumer should get a share, got {per_consumer:?}"
    );
    Outcome::Passed
}

/// A nacked message comes back with attempt 2, and not again once acked.
pub async fn nack_redelivers(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    if !factory.capabilities().nack {
        return skip("backend does not declare nack");
    }
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("nack_redelivers");
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("nack")).await;
    let id = publish(&*publisher, &topic, Message::new("try again")).await;

    let first = receive(limit, &*subscription, "the first delivery").await;
    assert_eq!((first.id(), first.attempt()), (id.as_str(), 1));
    first.nack().await.expect("nack");
    let second = receive(limit, &*subscription, "the redelivery after nack").await;
    assert_eq!(second.id(), id, "the nacked message must come back");
    assert_eq!(
        second.attempt(),
        2,
        "a redelivery after one nack is attempt 2"
    );
    assert_eq!(second.payload().as_ref(), b"try again");
    second.ack().await.expect("ack");
    expect_nothing(&*subscription, QUIET_PERIOD, "the message was acked").await;
    Outcome::Passed
}

/// A nacked message comes back only on the subscription that nacked it: another subscription
/// of the topic, which acked it, does not see it again.
pub async fn nack_stays_on_its_subscription(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    let caps = factory.capabilities();
    if !(caps.nack && caps.fan_out) {
        return skip("backend does not declare both nack and fan-out");
    }
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("nack_isolated");
    let nacking = subscribe(&*subscriber, &topic, &fresh_options("nacking")).await;
    let acking = subscribe(&*subscriber, &topic, &fresh_options("acking")).await;
    let id = publish(&*publisher, &topic, Message::new("once per subscription")).await;

    let first = receive(limit, &*acking, "the message on the acking subscription").await;
    assert_eq!(first.id(), id);
    first.ack().await.expect("ack");
    let nacked = receive(limit, &*nacking, "the message on the nacking subscription").await;
    nacked.nack().await.expect("nack");
    let again = receive(
        limit,
        &*nacking,
        "the redelivery on the nacking subscription",
    )
    .await;
    assert_eq!((again.id(), again.attempt()), (id.as_str(), 2));
    again.ack().await.expect("ack");
    expect_nothing(
        &*acking,
        QUIET_PERIOD,
        "a nack elsewhere must not redeliver here",
    )
    .await;
    Outcome::Passed
}

/// A delivery that is not settled within the ack deadline is redelivered.
pub async fn ack_deadline_redelivers(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    let caps = factory.capabilities();
    if !caps.ack_deadline {
        return skip("backend does not declare ack deadlines");
    }
    let deadline = caps.min_ack_deadline.max(Duration::from_secs(1));
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("ack_deadline");
    let options = fresh_options("deadline").with_ack_deadline(deadline);
    let subscription = subscribe(&*subscriber, &topic, &options).await;
    let id = publish(&*publisher, &topic, Message::new("forgotten")).await;

    let first = receive(limit, &*subscription, "the first delivery").await;
    assert_eq!(first.id(), id);
    let held_since = Instant::now();
    // Neither ack nor nack: keep the delivery alive so nothing settles it early.
    let second = receive(
        limit,
        &*subscription,
        "the redelivery after the ack deadline",
    )
    .await;
    assert_eq!(second.id(), id, "the unsettled message must come back");
    assert!(
        second.attempt() >= 2,
        "a redelivery has attempt > 1, got {}",
        second.attempt()
    );
    assert!(
        held_since.elapsed() >= deadline.mul_f32(0.9),
        "redelivered after {:?}, before the ack deadline of {deadline:?}",
        held_since.elapsed()
    );
    second.ack().await.expect("ack");
    drop(first);
    Outcome::Passed
}

/// After `max_delivery_attempts` nacks the message is on the dead-letter topic with its payload
/// and attributes intact, and not on the subscription any more.
pub async fn dead_letter_after_max_attempts(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    let caps = factory.capabilities();
    if !caps.dead_letter {
        return skip("backend does not declare dead-letter topics");
    }
    let attempts = caps.min_delivery_attempts.max(2);
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("dead_letter");
    let dead_topic = fresh_topic("dead_letter_target");
    let dead_subscription = subscribe(&*subscriber, &dead_topic, &fresh_options("dlq")).await;
    let options = fresh_options("poison").with_dead_letter(dead_topic.clone(), attempts);
    let subscription = subscribe(&*subscriber, &topic, &options).await;
    let sent = Message::new(vec![0u8, 159, 146, 150])
        .with_attribute("reason", "poison")
        .with_attribute("ünïcode", "✓");
    publish(&*publisher, &topic, sent.clone()).await;

    for attempt in 1..=attempts {
        let delivery = receive(
            limit,
            &*subscription,
            &format!("delivery attempt {attempt}"),
        )
        .await;
        assert_eq!(delivery.attempt(), attempt);
        delivery.nack().await.expect("nack");
    }
    let dead = receive(limit, &*dead_subscription, "the dead-lettered message").await;
    assert_eq!(dead.payload(), &sent.payload);
    for (key, value) in &sent.attributes {
        assert_eq!(
            dead.attributes().get(key),
            Some(value),
            "attribute {key} lost on dead-lettering: {:?}",
            dead.attributes()
        );
    }
    dead.ack().await.expect("ack");
    expect_nothing(
        &*subscription,
        QUIET_PERIOD,
        "the message was dead-lettered",
    )
    .await;
    Outcome::Passed
}

/// 1,000 messages over 16 ordering keys, published by one publisher, arrive in order per key
/// on an ordered subscription.
pub async fn ordering_per_key(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    if !factory.capabilities().ordering {
        return skip("backend does not declare ordering");
    }
    const KEYS: usize = 16;
    const PER_KEY: usize = 1_000 / KEYS + 1;
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("ordering");
    let options = fresh_options("ordered").with_ordering(true);
    let subscription = subscribe(&*subscriber, &topic, &options).await;

    // Keys publish concurrently; within a key, each publish waits for the previous one.
    let per_key = (0..KEYS).map(|key| {
        let (publisher, topic) = (&publisher, &topic);
        async move {
            let mut ids = Vec::new();
            for seq in 0..PER_KEY {
                let message = Message::new(format!("{key}:{seq}"))
                    .with_ordering_key(format!("key-{key}"))
                    .with_attribute("seq", seq.to_string());
                ids.push(publish(&**publisher, topic, message).await);
            }
            ids
        }
    });
    let total: usize = futures::future::join_all(per_key)
        .await
        .iter()
        .map(Vec::len)
        .sum();

    let mut next_seq: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = HashSet::new();
    while seen.len() < total {
        let delivery = receive(limit, &*subscription, "ordered messages").await;
        let key = delivery
            .ordering_key()
            .expect("ordering key kept")
            .to_string();
        let seq: usize = delivery.attributes()["seq"].parse().expect("seq attribute");
        let expected = next_seq.entry(key.clone()).or_insert(0);
        if seen.insert(delivery.id().to_string()) {
            assert_eq!(
                seq, *expected,
                "key {key}: got seq {seq}, expected {expected}"
            );
            *expected += 1;
        } else {
            assert!(
                delivery.attempt() > 1,
                "duplicate of {key}:{seq} without redelivery"
            );
        }
        delivery.ack().await.expect("ack");
    }
    Outcome::Passed
}

/// 10,000 messages from 20 concurrent publishers: none lost.
pub async fn concurrent_publishers(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    const PUBLISHERS: usize = 20;
    const EACH: usize = 500;
    let subscriber = subscriber(factory).await;
    let topic = fresh_topic("concurrent_publishers");
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("many")).await;
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        publishers.push(Arc::new(publisher(factory).await));
    }
    let tasks: Vec<_> = publishers
        .iter()
        .enumerate()
        .map(|(p, publisher)| {
            let (publisher, topic) = (publisher.clone(), topic.clone());
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    ids.push(publish(&**publisher, &topic, Message::new(format!("{p}:{i}"))).await);
                }
                ids
            })
        })
        .collect();
    let consumer = async {
        // Consume while publishing, as a real deployment would.
        let mut seen = HashMap::new();
        while seen.len() < PUBLISHERS * EACH {
            let delivery =
                receive(limit, &*subscription, "messages from concurrent publishers").await;
            *seen.entry(delivery.id().to_string()).or_insert(0usize) += 1;
            delivery.ack().await.expect("ack");
        }
        seen
    };
    let (seen, published) = tokio::join!(consumer, futures::future::join_all(tasks));
    let mut ids = HashSet::new();
    for task in published {
        ids.extend(task.expect("publisher task"));
    }
    assert_eq!(
        ids.len(),
        PUBLISHERS * EACH,
        "publish returned duplicate ids"
    );
    let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    assert_eq!(missing, 0, "{missing} messages lost");
    for publisher in &publishers {
        publisher.close().await.expect("close publisher");
    }
    Outcome::Passed
}

/// Messages published to one topic never reach a subscription of another.
pub async fn topic_isolation(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let (first, second) = (fresh_topic("isolation_a"), fresh_topic("isolation_b"));
    let options = fresh_options("isolated");
    // The same subscription name on both topics: still two separate subscriptions.
    let on_first = subscribe(&*subscriber, &first, &options).await;
    let on_second = subscribe(&*subscriber, &second, &options).await;
    let mut first_ids = HashSet::new();
    let mut second_ids = HashSet::new();
    for i in 0..10 {
        first_ids.insert(publish(&*publisher, &first, Message::new(format!("a{i}"))).await);
        second_ids.insert(publish(&*publisher, &second, Message::new(format!("b{i}"))).await);
    }
    receive_all(limit, &*on_first, &first_ids, "first topic").await;
    receive_all(limit, &*on_second, &second_ids, "second topic").await;
    expect_nothing(
        &*on_first,
        QUIET_PERIOD,
        "the first topic got all its messages",
    )
    .await;
    expect_nothing(
        &*on_second,
        QUIET_PERIOD,
        "the second topic got all its messages",
    )
    .await;
    Outcome::Passed
}

/// A consumer reading 5,000 messages in 5 batches, closing and subscribing again between
/// batches, loses none.
pub async fn resubscribe_in_batches(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    let caps = factory.capabilities();
    if !caps.durable {
        return skip("backend does not declare durable subscriptions");
    }
    if !caps.prompt_handover {
        return skip("backend does not declare prompt hand-over to the next consumer");
    }
    const TOTAL: usize = 5_000;
    const BATCHES: usize = 5;
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("resubscribe");
    let options = fresh_options("batches");
    let first = subscribe(&*subscriber, &topic, &options).await;
    let mut ids = HashSet::new();
    for i in 0..TOTAL {
        ids.insert(publish(&*publisher, &topic, Message::new(format!("batch item {i}"))).await);
    }
    let mut seen = HashSet::new();
    let mut subscription = Some(first);
    for batch in 0..BATCHES {
        let current = match subscription.take() {
            Some(current) => current,
            None => subscribe(&*subscriber, &topic, &options).await,
        };
        let goal = (batch + 1) * TOTAL / BATCHES;
        while seen.len() < goal {
            let delivery = receive(limit, &*current, &format!("batch {batch}")).await;
            assert!(
                ids.contains(delivery.id()),
                "unexpected message {delivery:?}"
            );
            seen.insert(delivery.id().to_string());
            delivery.ack().await.expect("ack");
        }
        current.close().await.expect("close between batches");
    }
    assert_eq!(seen.len(), TOTAL);
    Outcome::Passed
}

/// Closing a publisher waits for publishes in flight: every publish that returned an id is
/// delivered, and the others failed with `Closed`.
pub async fn publisher_close_flushes(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let publisher: Arc<dyn Publisher> = Arc::from(publisher);
    let topic = fresh_topic("close_flushes");
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("flush")).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (publisher, topic) = (publisher.clone(), topic.clone());
            tokio::spawn(async move {
                publisher
                    .publish(&topic, Message::new(format!("{i}")))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    publisher.close().await.expect("close");
    let mut ids = HashSet::new();
    for task in tasks {
        match task.await.expect("publish task") {
            Ok(id) => {
                ids.insert(id);
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Closed, "publish during close: {e}"),
        }
    }
    receive_all(
        limit,
        &*subscription,
        &ids,
        "messages confirmed before close",
    )
    .await;
    Outcome::Passed
}

/// After close, publish, subscribe and receive return `Closed`.
pub async fn operations_after_close_fail(factory: &dyn BackendFactory) -> Outcome {
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("after_close");
    let options = fresh_options("closed");
    let subscription = subscribe(&*subscriber, &topic, &options).await;

    publisher.close().await.expect("close publisher");
    publisher.close().await.expect("close is idempotent");
    let err = publisher
        .publish(&topic, Message::new("late"))
        .await
        .expect_err("publish after close");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");

    subscription.close().await.expect("close subscription");
    subscription.close().await.expect("close is idempotent");
    let err = subscription
        .receive()
        .await
        .expect_err("receive after close");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");

    subscriber.close().await.expect("close subscriber");
    let err = subscriber
        .subscribe(&topic, options)
        .await
        .err()
        .expect("subscribe after close must fail");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    Outcome::Passed
}

/// Closing a subscription whose consumer is blocked in `receive` returns promptly, and so does
/// the blocked `receive` (with `Closed`).
pub async fn close_unblocks_receive(factory: &dyn BackendFactory) -> Outcome {
    let subscriber = subscriber(factory).await;
    let topic = fresh_topic("close_blocked");
    let subscription: Arc<dyn Subscription> =
        Arc::from(subscribe(&*subscriber, &topic, &fresh_options("blocked")).await);
    let blocked = tokio::spawn({
        let subscription = subscription.clone();
        async move { subscription.receive().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !blocked.is_finished(),
        "receive returned with nothing published"
    );
    timeout(Duration::from_secs(5), subscription.close())
        .await
        .expect("close returns promptly")
        .expect("close");
    let result = timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the blocked receive returns promptly after close")
        .expect("receive task");
    let err = result.expect_err("receive on a closed subscription");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    Outcome::Passed
}

/// An invalid topic name, an oversize payload and too many attributes are rejected with the
/// right error kind, and the backend still works afterwards.
pub async fn bad_input_rejected(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    let caps = factory.capabilities();
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    for bad in [
        "",
        "1starts-with-digit",
        "has space",
        "wild/+/card",
        "a/#",
        "$SYS/x",
    ] {
        let err = Topic::new(bad).expect_err("invalid topic");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}: {err}");
    }
    let topic = fresh_topic("bad_input");
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("bad")).await;

    let oversize = Message::new(vec![b'x'; caps.max_message_bytes + 1]);
    let err = publisher
        .publish(&topic, oversize)
        .await
        .expect_err("oversize payload");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert_eq!(err.backend(), factory.name(), "errors name their backend");

    let mut crowded = Message::new("crowded");
    for i in 0..=caps.max_attributes {
        crowded.attributes.insert(format!("k{i}"), "v".into());
    }
    let err = publisher
        .publish(&topic, crowded)
        .await
        .expect_err("too many attributes");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    let id = publish(&*publisher, &topic, Message::new("still works")).await;
    let delivery = receive(limit, &*subscription, "a message after rejected input").await;
    assert_eq!(delivery.id(), id);
    assert_eq!(delivery.payload().as_ref(), b"still works");
    delivery.ack().await.expect("ack");
    Outcome::Passed
}

/// A typed subscriber given a payload that is not valid JSON yields a `Decode` error that
/// carries the delivery; the next valid message still arrives.
pub async fn typed_decode_error_keeps_delivery(factory: &dyn BackendFactory) -> Outcome {
    let limit = factory.receive_timeout();
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct CrashDetail {
        executable_name: String,
        is_input_from_file: bool,
    }
    let (publisher, subscriber) = (publisher(factory).await, subscriber(factory).await);
    let topic = fresh_topic("typed");
    let typed = JsonSubscription::<CrashDetail>::new(
        subscribe(&*subscriber, &topic, &fresh_options("typed")).await,
    );
    let bad_id = publish(&*publisher, &topic, Message::new("{not json")).await;
    let good = CrashDetail {
        executable_name: "boflow1".into(),
        is_input_from_file: false,
    };
    publisher
        .publish_json(&topic, &good)
        .await
        .expect("publish json");

    // Backends without ordering may deliver the two in either order.
    let (mut decode_errors, mut decoded) = (0, 0);
    for _ in 0..2 {
        match timeout(limit, typed.receive())
            .await
            .expect("a typed delivery")
        {
            Ok(next) => {
                assert_eq!(next.value, good);
                next.ack().await.expect("ack");
                decoded += 1;
            }
            Err(mut err) => {
                assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
                let bad = err
                    .take_delivery()
                    .expect("decode error carries the delivery");
                assert_eq!(bad.id(), bad_id);
                assert_eq!(bad.payload().as_ref(), b"{not json");
                bad.ack().await.expect("ack the undecodable message");
                decode_errors += 1;
            }
        }
    }
    assert_eq!((decode_errors, decoded), (1, 1));
    Outcome::Passed
}
