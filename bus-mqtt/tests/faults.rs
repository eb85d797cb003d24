//! Faults against a real Mosquitto: broker restarts and outages, oversize messages, secrets in
//! Debug. (A consumer that dies without acking is a contract scenario.)

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Message, Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_mqtt::{MqttConfig, MqttPublisher, MqttSubscriber, Secret};
use bus_testkit::faults::load_under_faults;
use bus_testkit::mosquitto::Mosquitto;
use futures::future::BoxFuture;

fn broker() -> &'static Mosquitto {
    Mosquitto::shared()
}

/// A config for this binary's broker, with client ids of its own.
fn config() -> MqttConfig {
    let client_id = format!("faults-{}", std::process::id());
    MqttConfig {
        url: broker().url(),
        client_id,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_broker_restarts_twice_under_load() {
    const PUBLISHERS: usize = 10;
    const EACH: usize = 1_000;
    // A broker of its own: this test stops and starts it.
    let broker = Arc::new(Mosquitto::start());
    let config = MqttConfig {
        url: broker.url(),
        client_id: format!("restarts-{}", std::process::id()),
        reconnect_max_ms: 500,
        publish_timeout_ms: 60_000,
        // Mosquitto forgets shared subscriptions on restart until the consumer resubscribes;
        // publishers hold on to messages nobody matched until it has.
        retry_unmatched_ms: 30_000,
        ..MqttConfig::default()
    };
    let topic = Topic::new("faults/restarts").unwrap();
    let subscriber = MqttSubscriber::new(&config).unwrap();
    let subscription = subscriber
        .subscribe(&topic, SubscriptionOptions::new("survivor").unwrap())
        .await
        .unwrap();

    let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
    for _ in 0..PUBLISHERS {
        publishers.push(Arc::new(MqttPublisher::connect(&config).await.unwrap()));
    }
    let restart = {
        let broker = broker.clone();
        move || -> BoxFuture<'static, ()> {
            let broker = broker.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || broker.restart())
                    .await
                    .unwrap();
            })
        }
    };
    let report = load_under_faults(
        publishers,
        &*subscription,
        &topic,
        EACH,
        Duration::from_secs(60),
        &[PUBLISHERS * EACH / 4, PUBLISHERS * EACH * 3 / 5],
        restart,
    )
    .await;
    let _ = writeln!(
        std::io::stderr(),
        "broker restarted twice during {} publishes: 0 lost, {} duplicate deliveries",
        report.messages,
        report.duplicates
    );
}

#[tokio::test]
async fn a_publish_during_an_outage_waits_and_succeeds_after_reconnecting() {
    let broker = Mosquitto::start();
    let config = MqttConfig {
        url: broker.url(),
        client_id: format!("outage-{}", std::process::id()),
        reconnect_max_ms: 300,
        // The publisher may reconnect before the consumer has resubscribed (Mosquitto forgets
        // shared subscriptions on restart): hold the message until the subscription is back.
        retry_unmatched_ms: 20_000,
        ..MqttConfig::default()
    };
    let topic = Topic::new("faults/outage").unwrap();
    let subscription = MqttSubscriber::new(&config)
        .unwrap()
        .subscribe(&topic, SubscriptionOptions::new("outage").unwrap())
        .await
        .unwrap();
    let publisher = MqttPublisher::connect(&config).await.unwrap();
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
    let topic = Topic::new(format!("faults/oversize/{}", std::process::id())).unwrap();
    let small = MqttConfig {
        max_packet_size: 4096,
        ..config()
    };
    let subscription = MqttSubscriber::new(&small)
        .unwrap()
        .subscribe(&topic, SubscriptionOptions::new("small").unwrap())
        .await
        .unwrap();
    let publisher = MqttPublisher::connect(&config()).await.unwrap();
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
