//! Behaviour specific to the in-memory broker: bounds, backpressure, config errors, sharing.

use std::time::Duration;

use bus_core::{Backend, ErrorKind, Message, SubscriptionOptions, Topic};
use bus_memory::{MemoryBackend, MemoryConfig, PER_MESSAGE_OVERHEAD};
use tokio::time::timeout;

/// A broker of its own (a name nobody else uses).
async fn broker(config: MemoryConfig) -> MemoryBackend {
    let config = MemoryConfig {
        name: format!("test-{}", uuid::Uuid::new_v4().simple()),
        ..config
    };
    MemoryBackend::connect(&config).await.expect("valid config")
}

/// Room for exactly `messages` messages of 100 bytes per subscription.
async fn small_broker(messages: usize, publish_timeout_ms: u64) -> MemoryBackend {
    broker(MemoryConfig {
        max_message_bytes: 100,
        max_queued_bytes: messages * (100 + PER_MESSAGE_OVERHEAD),
        publish_timeout_ms,
        ..MemoryConfig::default()
    })
    .await
}

fn hundred_bytes(i: usize) -> Message {
    let mut payload = format!("{i:>100}").into_bytes();
    payload.truncate(100);
    Message::new(payload)
}

#[tokio::test]
async fn a_full_subscription_holds_the_publisher_back_until_an_ack() {
    let broker = small_broker(10, 0).await;
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = Topic::new("bounded").unwrap();
    let subscription = subscriber
        .subscribe(&topic, SubscriptionOptions::new("slow").unwrap())
        .await
        .unwrap();
    for i in 0..10 {
        publisher.publish(&topic, hundred_bytes(i)).await.unwrap();
    }
    let blocked = publisher.publish(&topic, hundred_bytes(10));
    tokio::pin!(blocked);
    assert!(
        timeout(Duration::from_millis(200), &mut blocked)
            .await
            .is_err(),
        "the 11th publish must wait for room"
    );
    // Receiving alone frees nothing: in-flight messages still hold their room.
    let first = subscription.receive().await.unwrap();
    assert!(timeout(Duration::from_millis(100), &mut blocked)
        .await
        .is_err());
    first.ack().await.unwrap();
    timeout(Duration::from_secs(5), &mut blocked)
        .await
        .expect("an ack makes room")
        .unwrap();
}

#[tokio::test]
async fn a_publish_that_waits_too_long_fails_with_a_retryable_timeout() {
    let broker = small_broker(2, 100).await;
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = Topic::new("bounded").unwrap();
    let _subscription = subscriber
        .subscribe(&topic, SubscriptionOptions::new("stalled").unwrap())
        .await
        .unwrap();
    publisher.publish(&topic, hundred_bytes(0)).await.unwrap();
    publisher.publish(&topic, hundred_bytes(1)).await.unwrap();
    let err = publisher
        .publish(&topic, hundred_bytes(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_retryable());
    assert!(err.to_string().contains("memory.max_queued_bytes"), "{err}");
}

#[tokio::test]
async fn a_stalled_subscription_never_blocks_another_subscriptions_consumer() {
    let broker = small_broker(5, 0).await;
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = Topic::new("two-consumers").unwrap();
    let _stalled = subscriber
        .subscribe(&topic, SubscriptionOptions::new("stalled").unwrap())
        .await
        .unwrap();
    let healthy = subscriber
        .subscribe(&topic, SubscriptionOptions::new("healthy").unwrap())
        .await
        .unwrap();
    for i in 0..5 {
        publisher.publish(&topic, hundred_bytes(i)).await.unwrap();
    }
    // The stalled subscription is full and the next publish waits for it...
    let waiting = publisher.publish(&topic, hundred_bytes(5));
    tokio::pin!(waiting);
    assert!(timeout(Duration::from_millis(100), &mut waiting)
        .await
        .is_err());
    // ...while the healthy one still hands out and settles everything it holds.
    for _ in 0..5 {
        let delivery = timeout(Duration::from_secs(1), healthy.receive())
            .await
            .expect("healthy consumer is not blocked")
            .unwrap();
        delivery.ack().await.unwrap();
    }
}

#[tokio::test]
async fn a_nacked_keyed_message_comes_back_before_later_messages_with_its_key() {
    let broker = broker(MemoryConfig::default()).await;
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = Topic::new("ordered").unwrap();
    let options = SubscriptionOptions::new("ordered")
        .unwrap()
        .with_ordering(true);
    let subscription = subscriber.subscribe(&topic, options).await.unwrap();
    for i in 0..3 {
        let message = Message::new(format!("{i}")).with_ordering_key("k");
        publisher.publish(&topic, message).await.unwrap();
    }
    let first = subscription.receive().await.unwrap();
    assert_eq!(first.payload().as_ref(), b"0");
    // While `0` is in flight, nothing else with key `k` is handed out.
    assert!(timeout(Duration::from_millis(100), subscription.receive())
        .await
        .is_err());
    first.nack().await.unwrap();
    let again = subscription.receive().await.unwrap();
    assert_eq!((again.payload().as_ref(), again.attempt()), (&b"0"[..], 2));
    again.ack().await.unwrap();
    let next = subscription.receive().await.unwrap();
    assert_eq!(next.payload().as_ref(), b"1");
}

#[tokio::test]
async fn without_ordering_keyed_messages_are_handed_out_concurrently() {
    let broker = broker(MemoryConfig::default()).await;
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = Topic::new("unordered").unwrap();
    let subscription = subscriber
        .subscribe(&topic, SubscriptionOptions::new("any").unwrap())
        .await
        .unwrap();
    for i in 0..2 {
        let message = Message::new(format!("{i}")).with_ordering_key("k");
        publisher.publish(&topic, message).await.unwrap();
    }
    let a = subscription.receive().await.unwrap();
    let b = timeout(Duration::from_secs(1), subscription.receive())
        .await
        .expect("second keyed message is not held back")
        .unwrap();
    assert_eq!(b.ordering_key(), Some("k"));
    a.ack().await.unwrap();
    b.ack().await.unwrap();
}

#[tokio::test]
async fn messages_published_before_any_subscription_are_discarded() {
    let broker = broker(MemoryConfig::default()).await;
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = Topic::new("early").unwrap();
    publisher
        .publish(&topic, Message::new("nobody"))
        .await
        .unwrap();
    let subscription = subscriber
        .subscribe(&topic, SubscriptionOptions::new("late").unwrap())
        .await
        .unwrap();
    publisher
        .publish(&topic, Message::new("seen"))
        .await
        .unwrap();
    let delivery = subscription.receive().await.unwrap();
    assert_eq!(delivery.payload().as_ref(), b"seen");
}

#[tokio::test]
async fn shared_brokers_are_found_by_name() {
    let config = MemoryConfig {
        name: "shared-by-name-test".into(),
        ..MemoryConfig::default()
    };
    let a = MemoryBackend::connect(&config).await.unwrap();
    let b = MemoryBackend::connect(&config).await.unwrap();
    let topic = Topic::new("shared").unwrap();
    let subscription = b
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("s").unwrap())
        .await
        .unwrap();
    a.publisher()
        .publish(&topic, Message::new("across"))
        .await
        .unwrap();
    assert_eq!(
        subscription.receive().await.unwrap().payload().as_ref(),
        b"across"
    );
}

#[tokio::test]
async fn config_errors_name_the_key_and_the_fix() {
    let err = MemoryBackend::connect(&MemoryConfig {
        name: "invalid".into(),
        max_queued_bytes: 1000,
        ..MemoryConfig::default()
    })
    .await
    .expect_err("queue smaller than a message");
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.to_string();
    assert!(text.contains("memory.max_queued_bytes = 1000"), "{text}");
    assert!(text.contains("set it to at least"), "{text}");
}

#[tokio::test]
async fn options_outside_the_capabilities_are_rejected() {
    let broker = broker(MemoryConfig::default()).await;
    let options = SubscriptionOptions::new("too-long")
        .unwrap()
        .with_ack_deadline(Duration::from_secs(3600));
    let err = broker
        .subscriber()
        .subscribe(&Topic::new("t").unwrap(), options)
        .await
        .expect_err("ack deadline above the maximum");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("ack_deadline"), "{err}");
}

/// Dead-lettering happens beside the consumer, not in its way: with the dead-letter topic's
/// only subscription full, a message that used its attempts waits (holding its room), while
/// `nack` returns at once and the next message is still received.
#[tokio::test]
async fn a_full_dead_letter_topic_does_not_stall_receive_or_nack() {
    let broker = small_broker(3, 0).await;
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let (topic, dead) = (
        Topic::new("work").unwrap(),
        Topic::new("work-dead").unwrap(),
    );
    let dead_letters = subscriber
        .subscribe(&dead, SubscriptionOptions::new("dead").unwrap())
        .await
        .unwrap();
    for i in 0..3 {
        publisher.publish(&dead, hundred_bytes(i)).await.unwrap();
    }
    let options = SubscriptionOptions::new("work")
        .unwrap()
        .with_dead_letter(dead.clone(), 1);
    let work = subscriber.subscribe(&topic, options).await.unwrap();
    publisher.publish(&topic, hundred_bytes(10)).await.unwrap();
    publisher.publish(&topic, hundred_bytes(11)).await.unwrap();
    let first = work.receive().await.unwrap();
    timeout(Duration::from_secs(1), first.nack())
        .await
        .expect("nack does not wait for the full dead-letter topic")
        .unwrap();
    let second = timeout(Duration::from_secs(1), work.receive())
        .await
        .expect("receive is not stalled by the full dead-letter topic")
        .unwrap();
    second.ack().await.unwrap();
    // Room on the dead-letter topic: the exhausted message arrives there.
    for _ in 0..3 {
        dead_letters.receive().await.unwrap().ack().await.unwrap();
    }
    let arrived = timeout(Duration::from_secs(5), dead_letters.receive())
        .await
        .expect("dead-lettered once there is room")
        .unwrap();
    assert_eq!(arrived.payload(), &hundred_bytes(10).payload);
}
