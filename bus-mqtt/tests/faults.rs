//! Faults against a real Mosquitto, with the default configuration: graceful broker restarts
//! under load with the consumers attached or away, outages, oversize messages, secrets in
//! Debug. Every message is counted per subscription.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Backend, Message, Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_mqtt::{MqttBackend, MqttConfig, Secret};
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
