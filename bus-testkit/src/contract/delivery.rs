//! Getting messages there: round trip, fan-out, load sharing, many publishers, topic isolation.

#![allow(unused_imports)]
use super::*;

/// Payloads (all 256 byte values, empty, 1 MiB where allowed), unicode attributes, the
/// ordering key, the id returned by publish and the attempt number survive a round trip.
pub async fn round_trip(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let caps = target.capabilities();
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "round_trip").await;
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

/// Two subscription names on one topic each receive every message.
pub async fn fan_out(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    if !target.capabilities().fan_out {
        return skip("backend does not declare fan-out");
    }
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "fan_out").await;
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

/// Three consumers sharing one subscription name split 1,000 messages: none lost, every
/// consumer gets some, and a message seen twice is only ever a redelivery (attempt > 1).
pub async fn competing_consumers(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    if !target.capabilities().competing_consumers {
        return skip("backend does not declare competing consumers");
    }
    const TOTAL: usize = 1_000;
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "competing_consumers").await;
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

/// 10,000 messages from 20 concurrent publishers: none lost.
pub async fn concurrent_publishers(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    const PUBLISHERS: usize = 20;
    const EACH: usize = 500;
    let subscriber = subscriber(target).await;
    let topic = fresh_topic("concurrent_publishers");
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("many")).await;
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        publishers.push(Arc::new(publisher(target).await));
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
pub async fn topic_isolation(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let (publisher, subscriber) = (publisher(target).await, subscriber(target).await);
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
