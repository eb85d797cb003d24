//! Settling deliveries: nack, the ack deadline, dead-lettering, ordering.

#![allow(unused_imports)]
use super::*;

/// A nacked message comes back with attempt 2, and not again once acked.
pub async fn nack_redelivers(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    if !target.capabilities().nack {
        return skip("backend does not declare nack");
    }
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "nack_redelivers").await;
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
pub async fn nack_stays_on_its_subscription(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let caps = target.capabilities();
    if !(caps.nack && caps.fan_out) {
        return skip("backend does not declare both nack and fan-out");
    }
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "nack_isolated").await;
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
pub async fn ack_deadline_redelivers(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let caps = target.capabilities();
    if !caps.ack_deadline {
        return skip("backend does not declare ack deadlines");
    }
    let deadline = caps.min_ack_deadline.max(Duration::from_secs(1));
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "ack_deadline").await;
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
pub async fn dead_letter_after_max_attempts(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let caps = target.capabilities();
    if !caps.dead_letter {
        return skip("backend does not declare dead-letter topics");
    }
    let attempts = caps.min_delivery_attempts.max(2);
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "dead_letter").await;
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
pub async fn ordering_per_key(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    if !target.capabilities().ordering {
        return skip("backend does not declare ordering");
    }
    const KEYS: usize = 16;
    const PER_KEY: usize = 1_000 / KEYS + 1;
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "ordering").await;
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
