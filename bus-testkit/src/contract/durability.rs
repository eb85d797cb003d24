//! Keeping messages while consumers come and go.

#![allow(unused_imports)]
use super::*;

/// 100 messages published while no consumer is attached to an existing subscription (made
/// with `create_subscription`) are all delivered when one attaches.
pub async fn durable_backlog(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    if !target.capabilities().durable {
        return skip("backend does not declare durable subscriptions");
    }
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "durable_backlog").await;
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

/// A consumer that disappears without settling anything (no ack, no nack, no close) does not
/// lose its messages: the next consumer of the subscription gets them, as redeliveries.
pub async fn dropped_consumer_hands_messages_on(target: &Target) -> Outcome {
    let caps = target.capabilities();
    if !(caps.durable && caps.ack_deadline) {
        return skip("backend does not declare durable subscriptions and ack deadlines");
    }
    if !caps.prompt_handover {
        return skip("backend does not declare prompt hand-over to the next consumer");
    }
    let limit = target.receive_timeout();
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "dropped_consumer").await;
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

/// A consumer reading 5,000 messages in 5 batches, closing and subscribing again between
/// batches, loses none.
pub async fn resubscribe_in_batches(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let caps = target.capabilities();
    if !caps.durable {
        return skip("backend does not declare durable subscriptions");
    }
    if !caps.prompt_handover {
        return skip("backend does not declare prompt hand-over to the next consumer");
    }
    const TOTAL: usize = 5_000;
    const BATCHES: usize = 5;
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "resubscribe").await;
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
