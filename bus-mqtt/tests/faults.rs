//! Faults against a real Mosquitto, with the default configuration: graceful broker restarts
//! under load with the consumers attached or away, outages, oversize messages, secrets in
//! Debug. Every message is counted per subscription.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Backend, Message, Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_mqtt::{MqttBackend, MqttConfig, Secret};
use bus_testkit::fault_proxy::FaultProxy;
use bus_testkit::faults::{Collector, Publishing, Tally};
use bus_testkit::mosquitto::{broker_version, Mosquitto};

/// The default configuration, on `broker`, with client ids of its own.
fn config_for(broker: &Mosquitto, label: &str) -> MqttConfig {
    MqttConfig {
        url: broker.url(),
        client_id: format!("{label}-{}", std::process::id()),
        ..MqttConfig::default()
    }
}

#[test]
fn the_password_never_appears_in_debug_output() {
    let config = MqttConfig {
        username: Some("svc".into()),
        password: Some(Secret::new("hunter2-very-secret")),
        ..MqttConfig::default()
    };
    let shown = format!("{config:?} {:?}", config.password);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("svc"));
}

/// 10 publishers × 1,000 messages to a topic with `subscriptions` subscriptions while the
/// broker restarts twice (SIGTERM: Mosquitto saves its state). With `away`, every consumer
/// leaves (close) before each restart and comes back a second after it, while publishing goes
/// on. Every subscription must receive every message.
async fn restarts_under_load(subscriptions: usize, away: bool) {
    const PUBLISHERS: usize = 10;
    const EACH: usize = 1_000;
    let broker = Arc::new(Mosquitto::start());
    let label = format!("restarts-{subscriptions}-{away}");
    let config = config_for(&broker, &label);
    let topic = Topic::new(format!("faults/{label}")).unwrap();
    let consumers = MqttBackend::connect(&config).await.unwrap();
    let subscriber = consumers.subscriber();
    let names: Vec<SubscriptionOptions> = (0..subscriptions)
        .map(|i| SubscriptionOptions::new(format!("survivor-{i}")).unwrap())
        .collect();
    let tallies: Vec<Tally> = names.iter().map(|_| Tally::new()).collect();
    let mut collectors = Vec::new();
    for (options, tally) in names.iter().zip(&tallies) {
        let subscription = subscriber.subscribe(&topic, options.clone()).await.unwrap();
        collectors.push(Collector::start(subscription, tally.clone()));
    }
    let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
    for p in 0..PUBLISHERS {
        let config = config_for(&broker, &format!("{label}-pub{p}"));
        publishers.push(Arc::new(
            MqttBackend::connect(&config).await.unwrap().publisher(),
        ));
    }
    let publishing = Publishing::start(publishers, &topic, EACH);
    for threshold in [PUBLISHERS * EACH / 4, PUBLISHERS * EACH * 3 / 5] {
        publishing.reach(threshold).await;
        if away {
            for collector in collectors.drain(..) {
                collector.stop().await;
            }
        }
        let restarting = broker.clone();
        tokio::task::spawn_blocking(move || restarting.restart())
            .await
            .unwrap();
        if away {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (options, tally) in names.iter().zip(&tallies) {
                let subscription = subscriber.subscribe(&topic, options.clone()).await.unwrap();
                collectors.push(Collector::start(subscription, tally.clone()));
            }
        }
    }
    let total = publishing.total;
    publishing.finish().await;
    let mut report = Vec::new();
    for (options, tally) in names.iter().zip(&tallies) {
        tally.wait_for(total, Duration::from_secs(60)).await;
        let missing = tally.missing(PUBLISHERS, EACH);
        assert!(
            missing.is_empty(),
            "subscription {}: {} of {total} messages lost, e.g. {:?}\nbroker log:\n{}",
            options.name,
            missing.len(),
            &missing[..missing.len().min(5)],
            broker.log()
        );
        report.push(format!(
            "{}: 0 lost, {} duplicates",
            options.name,
            tally.duplicates()
        ));
    }
    for collector in collectors {
        collector.stop().await;
    }
    let _ = writeln!(
        std::io::stderr(),
        "mosquitto {:?}, {total} messages, 2 restarts, consumers {}: {}",
        broker_version(),
        if away { "away" } else { "attached" },
        report.join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_nothing_with_the_consumer_attached() {
    restarts_under_load(1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_nothing_for_two_subscriptions_with_consumers_attached() {
    restarts_under_load(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_nothing_with_the_consumer_away() {
    restarts_under_load(1, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_nothing_for_two_subscriptions_with_consumers_away() {
    restarts_under_load(2, true).await;
}

/// A consumer that vanishes half-way through taking over the anchor (its connection drops
/// right after the hand-over's first UNSUBSCRIBE reached the broker) must not leave the anchor
/// answering probes for a topic it no longer takes: after a restart only the anchor's plain
/// subscriptions are left, a publisher that finds the probe answered does not anchor the
/// subscription again, and what it publishes would miss the subscription. (Found on Mosquitto
/// 2.1.2 by `restarts_lose_nothing_for_two_subscriptions_with_consumers_away`, about one run in
/// ten; cut here on purpose, every version lost all 20 messages before the fix.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_cut_short_leaves_the_subscription_protected_across_a_restart() {
    const MESSAGES: usize = 20;
    let broker = Arc::new(Mosquitto::start());
    let topic = Topic::new("faults/cut-hand-over").unwrap();
    let kept = SubscriptionOptions::new("kept").unwrap();
    // The anchor holds the subscription until a consumer takes it over.
    let setup = MqttBackend::connect(&config_for(&broker, "setup"))
        .await
        .unwrap();
    setup
        .subscriber()
        .create_subscription(&topic, kept.clone())
        .await
        .unwrap();
    setup.close().await.unwrap();
    // Another subscription with a consumer: the topic never lacks a subscriber, so a message
    // this one misses is acknowledged all the same.
    let others = MqttBackend::connect(&config_for(&broker, "others"))
        .await
        .unwrap();
    let other = others
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("other").unwrap())
        .await
        .unwrap();

    let broker_address = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    let proxy = FaultProxy::start_cutting_after_unsubscribe(broker_address).await;
    let cut = MqttBackend::connect(&MqttConfig {
        url: format!("mqtt://{}", proxy.address()),
        ..config_for(&broker, "cut")
    })
    .await
    .unwrap();
    let cut_short = cut
        .subscriber()
        .subscribe(&topic, kept.clone())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while proxy.cuts() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never started taking the anchor over\nbroker log:\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cut_short.close().await.unwrap();
    cut.close().await.unwrap();

    let restarting = broker.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap();
    let producer = MqttBackend::connect(&config_for(&broker, "producer"))
        .await
        .unwrap();
    let publisher = producer.publisher();
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..MESSAGES {
        let message = Message::new(format!("after the restart {i}"));
        sent.insert(publisher.publish(&topic, message).await.unwrap());
    }

    let back = MqttBackend::connect(&config_for(&broker, "back"))
        .await
        .unwrap();
    let subscription = back.subscriber().subscribe(&topic, kept).await.unwrap();
    let mut received = std::collections::BTreeSet::new();
    while !sent.is_subset(&received) {
        let Ok(delivery) =
            tokio::time::timeout(Duration::from_secs(30), subscription.receive()).await
        else {
            panic!(
                "subscription kept: {} of {MESSAGES} messages published after the restart lost\nbroker log:\n{}",
                sent.difference(&received).count(),
                broker.log()
            );
        };
        let delivery = delivery.unwrap();
        received.insert(delivery.id().to_string());
        delivery.ack().await.unwrap();
    }
    for subscription in [subscription, other] {
        subscription.close().await.unwrap();
    }
    for backend in [back, producer, others] {
        backend.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_publish_during_an_outage_waits_and_succeeds_after_reconnecting() {
    let broker = Mosquitto::start();
    let config = MqttConfig {
        reconnect_max_ms: 300,
        ..config_for(&broker, "outage")
    };
    let topic = Topic::new("faults/outage").unwrap();
    let backend = MqttBackend::connect(&config).await.unwrap();
    let subscription = backend
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("outage").unwrap())
        .await
        .unwrap();
    let publisher = backend.publisher();
    broker.stop();
    let publish = publisher.publish(&topic, Message::new("sent while down"));
    tokio::pin!(publish);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut publish)
            .await
            .is_err(),
        "a publish cannot be confirmed while the broker is down"
    );
    broker.restart();
    let id = tokio::time::timeout(Duration::from_secs(20), publish)
        .await
        .expect("confirmed after reconnecting")
        .expect("the publish succeeds");
    let delivery = tokio::time::timeout(Duration::from_secs(20), subscription.receive())
        .await
        .expect("delivered after the outage")
        .unwrap();
    assert_eq!(delivery.id(), id);
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn an_oversize_incoming_message_is_skipped_and_the_next_one_arrives() {
    let broker = Mosquitto::shared();
    let topic = Topic::new(format!("faults/oversize/{}", std::process::id())).unwrap();
    let small = MqttConfig {
        max_packet_size: 4096,
        ..config_for(broker, "oversize-small")
    };
    let subscription = MqttBackend::connect(&small)
        .await
        .unwrap()
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("small").unwrap())
        .await
        .unwrap();
    let publisher = MqttBackend::connect(&config_for(broker, "oversize"))
        .await
        .unwrap()
        .publisher();
    publisher
        .publish(&topic, Message::new(vec![b'x'; 64 * 1024]))
        .await
        .unwrap();
    let id = publisher
        .publish(&topic, Message::new("fits"))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.receive())
        .await
        .expect("the connection is not wedged by the oversize message")
        .unwrap();
    assert_eq!(
        delivery.id(),
        id,
        "the oversize message is skipped, not delivered"
    );
    delivery.ack().await.unwrap();
}
