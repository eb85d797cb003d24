//! Batches: `publish_batch`, `receive_batch`, `ack_all` and `nack_all`.

use super::*;
use bus_core::{ack_all, nack_all};

/// Receives (with `receive_batch`, at most `max` per call) until `count` deliveries came;
/// checks every batch's size.
async fn receive_batches(
    limit: Duration,
    subscription: &dyn Subscription,
    count: usize,
    max: usize,
    what: &str,
) -> Vec<Delivery> {
    let mut received = Vec::new();
    let deadline = Instant::now() + limit;
    while received.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: {} of {count} deliveries after {limit:?}",
            received.len()
        );
        let batch = subscription
            .receive_batch(max, left)
            .await
            .unwrap_or_else(|e| panic!("{what}: receive_batch: {e}"));
        assert!(batch.len() <= max, "{what}: {} > max {max}", batch.len());
        received.extend(batch);
    }
    received
}

/// Fifty messages published in one batch get fifty distinct ids and arrive through
/// `receive_batch` (never more per call than asked for); `ack_all` settles them all, and
/// nothing comes back.
pub async fn batch_round_trip(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "batch_round_trip").await;
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("batches")).await;
    let messages: Vec<Message> = (0..50)
        .map(|n| Message::new(format!("batch {n}")).with_attribute("n", n.to_string()))
        .collect();
    let results = publisher.publish_batch(&topic, messages).await;
    assert_eq!(results.len(), 50, "one result per message");
    let ids: HashSet<String> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("publish_batch: {e}")))
        .collect();
    assert_eq!(ids.len(), 50, "distinct ids");

    let received = receive_batches(limit, &*subscription, 50, 16, "the batch").await;
    let got: HashSet<String> = received.iter().map(|d| d.id().to_string()).collect();
    assert_eq!(got, ids, "the published messages, each once");
    for delivery in &received {
        let n = &delivery.attributes()["n"];
        assert_eq!(delivery.payload().as_ref(), format!("batch {n}").as_bytes());
    }
    for result in ack_all(received).await {
        result.expect("ack_all");
    }
    expect_nothing(&*subscription, QUIET_PERIOD, "everything was acked").await;
    Outcome::Passed
}

/// A batch with an oversize message and one with too many attributes: those two fail with
/// their own errors, the three others are published and arrive, and nothing else does.
pub async fn batch_partial_failure(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let caps = target.capabilities();
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "batch_partial").await;
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("partial")).await;
    let mut crowded = Message::new("crowded");
    for i in 0..=caps.max_attributes {
        crowded.attributes.insert(format!("k{i}"), "v".into());
    }
    let batch = vec![
        Message::new("first"),
        Message::new(vec![b'x'; caps.max_message_bytes + 1]),
        Message::new("second"),
        crowded,
        Message::new("third"),
    ];
    let results = publisher.publish_batch(&topic, batch).await;
    assert_eq!(results.len(), 5, "one result per message");
    let kinds: Vec<Option<ErrorKind>> = results
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            None,
            Some(ErrorKind::PayloadTooLarge),
            None,
            Some(ErrorKind::InvalidArgument),
            None
        ],
        "{results:?}"
    );
    let received = receive_batches(limit, &*subscription, 3, 10, "the valid messages").await;
    let mut payloads: Vec<String> = received
        .iter()
        .map(|d| String::from_utf8_lossy(d.payload()).into_owned())
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["first", "second", "third"]);
    for result in ack_all(received).await {
        result.expect("ack_all");
    }
    expect_nothing(&*subscription, QUIET_PERIOD, "only the valid messages").await;
    Outcome::Passed
}

/// On an ordered subscription, a batch of 120 messages over 4 ordering keys arrives in the
/// batch's order per key.
pub async fn batch_keeps_order(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    if !target.capabilities().ordering {
        return skip("backend does not declare ordering");
    }
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "batch_order").await;
    let options = fresh_options("ordered-batch").with_ordering(true);
    let subscription = subscribe(&*subscriber, &topic, &options).await;
    let batch: Vec<Message> = (0..120)
        .map(|n| {
            Message::new(format!("{n}"))
                .with_ordering_key(format!("key-{}", n % 4))
                .with_attribute("seq", (n / 4).to_string())
        })
        .collect();
    for result in publisher.publish_batch(&topic, batch).await {
        result.expect("publish_batch");
    }
    let mut next_seq: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + limit;
    while seen.len() < 120 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{} of 120 after {limit:?}", seen.len());
        let batch = subscription
            .receive_batch(32, left)
            .await
            .expect("receive_batch");
        for delivery in &batch {
            let key = delivery
                .ordering_key()
                .expect("ordering key kept")
                .to_string();
            let seq: usize = delivery.attributes()["seq"].parse().expect("seq");
            let expected = next_seq.entry(key.clone()).or_insert(0);
            if seen.insert(delivery.id().to_string()) {
                assert_eq!(seq, *expected, "key {key}: got {seq}, expected {expected}");
                *expected += 1;
            }
        }
        for result in ack_all(batch).await {
            result.expect("ack_all");
        }
    }
    Outcome::Passed
}

/// Two subscriptions get the same ten messages; one `ack_all` takes half of each
/// subscription's deliveries and one `nack_all` the other half (the halves crossed): exactly
/// the nacked ones come back, each on its own subscription. A call mixes deliveries of two
/// subscriptions, as a service draining several subscriptions does.
pub async fn batch_settles_only_what_was_asked(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "batch_settle").await;
    let first = subscribe(&*subscriber, &topic, &fresh_options("settle-a")).await;
    let second = subscribe(&*subscriber, &topic, &fresh_options("settle-b")).await;
    let batch: Vec<Message> = (0..10).map(|n| Message::new(format!("m{n}"))).collect();
    for result in publisher.publish_batch(&topic, batch).await {
        result.expect("publish_batch");
    }
    let (mut to_ack, mut to_nack) = (Vec::new(), Vec::new());
    let mut nacked: [HashSet<String>; 2] = Default::default();
    for (which, subscription) in [&first, &second].into_iter().enumerate() {
        let received = receive_batches(limit, &**subscription, 10, 10, "the batch").await;
        for (i, delivery) in received.into_iter().enumerate() {
            // The first subscription acks its even deliveries, the second its odd ones.
            if i % 2 == which {
                to_ack.push(delivery);
            } else {
                nacked[which].insert(delivery.id().to_string());
                to_nack.push(delivery);
            }
        }
    }
    for result in ack_all(to_ack).await {
        result.expect("ack_all");
    }
    for result in nack_all(to_nack).await {
        result.expect("nack_all");
    }
    for (which, subscription) in [&first, &second].into_iter().enumerate() {
        let again = receive_batches(limit, &**subscription, 5, 10, "the nacked messages").await;
        let back: HashSet<String> = again.iter().map(|d| d.id().to_string()).collect();
        assert_eq!(
            back, nacked[which],
            "exactly the messages nacked on subscription {which} come back to it"
        );
        for delivery in &again {
            assert!(delivery.attempt() >= 2, "a redelivery has attempt > 1");
        }
        for result in ack_all(again).await {
            result.expect("ack_all");
        }
    }
    futures::join!(
        expect_nothing(&*first, QUIET_PERIOD, "everything settled"),
        expect_nothing(&*second, QUIET_PERIOD, "everything settled"),
    );
    Outcome::Passed
}

/// `receive_batch` returns an empty batch once its wait is over, and a call blocked in it
/// returns `Closed` promptly when the subscription is closed.
pub async fn batch_receive_waits_and_closes(target: &Target) -> Outcome {
    let subscriber = subscriber(target).await;
    let topic = fresh_topic("batch_close");
    let subscription: Arc<dyn Subscription> =
        Arc::from(subscribe(&*subscriber, &topic, &fresh_options("batch-blocked")).await);
    let started = Instant::now();
    let empty = subscription
        .receive_batch(10, Duration::from_millis(300))
        .await
        .expect("receive_batch with nothing published");
    assert!(empty.is_empty(), "nothing was published: {empty:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "returned before its wait was over: {:?}",
        started.elapsed()
    );
    let blocked = tokio::spawn({
        let subscription = subscription.clone();
        async move {
            subscription
                .receive_batch(10, Duration::from_secs(120))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished(), "returned with nothing published");
    timeout(Duration::from_secs(5), subscription.close())
        .await
        .expect("close returns promptly")
        .expect("close");
    let result = timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the blocked receive_batch returns promptly after close")
        .expect("receive_batch task");
    let err = result.expect_err("receive_batch on a closed subscription");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    Outcome::Passed
}
