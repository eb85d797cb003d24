//! How Mosquitto shares a subscription between consumers that come and go, as bus-mqtt maps
//! subscriptions (shared subscriptions, one persistent session per consumer slot).

use std::time::Duration;

use bus_core::{Message, Publisher, Subscriber, Subscription, SubscriptionOptions, Topic};
use bus_mqtt::{MqttConfig, MqttPublisher, MqttSubscriber};
use bus_testkit::mosquitto::Mosquitto;

fn config() -> MqttConfig {
    MqttConfig {
        url: Mosquitto::shared().url(),
        client_id: format!("sessions-{}", std::process::id()),
        ..MqttConfig::default()
    }
}

/// Receives and acks until nothing arrives for `quiet`; returns the payloads.
async fn drain(subscription: &dyn Subscription, quiet: Duration) -> Vec<String> {
    let mut payloads = Vec::new();
    while let Ok(delivery) = tokio::time::timeout(quiet, subscription.receive()).await {
        let delivery = delivery.expect("receive");
        payloads.push(String::from_utf8_lossy(delivery.payload()).into_owned());
        delivery.ack().await.expect("ack");
    }
    payloads
}

/// Documents a limit of MQTT shared subscriptions on Mosquitto 2.0: the broker goes on giving
/// a consumer that left (its persistent session) its turn of the subscription's messages, and
/// keeps them queued for it. They are delivered when a consumer takes that slot again, which a
/// consumer of the same subscription in the same process (or the restarted process) does, and
/// are discarded if the session expires first (`mqtt.session_expiry_secs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_left_keeps_its_share_until_its_slot_is_taken_again() {
    const MESSAGES: usize = 20;
    let topic = Topic::new(format!("sessions/share/{}", uuid::Uuid::new_v4().simple())).unwrap();
    let options = SubscriptionOptions::new("workers").unwrap();
    let subscriber = MqttSubscriber::new(&config()).unwrap();
    let leaving = subscriber.subscribe(&topic, options.clone()).await.unwrap();
    let staying = subscriber.subscribe(&topic, options.clone()).await.unwrap();
    leaving.close().await.unwrap();
    drop(leaving);

    let publisher = MqttPublisher::connect(&config()).await.unwrap();
    for i in 0..MESSAGES {
        publisher
            .publish(&topic, Message::new(format!("job {i}")))
            .await
            .unwrap();
    }
    let to_staying = drain(&*staying, Duration::from_secs(3)).await;
    assert!(
        !to_staying.is_empty() && to_staying.len() < MESSAGES,
        "the consumer still attached gets only its turns: {} of {MESSAGES}",
        to_staying.len()
    );

    // The next consumer takes the free slot, resumes that session and gets the rest.
    let returning = subscriber.subscribe(&topic, options).await.unwrap();
    let to_returning = drain(&*returning, Duration::from_secs(3)).await;
    let mut all: Vec<String> = to_staying.into_iter().chain(to_returning).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), MESSAGES, "nothing is lost: {all:?}");
    publisher.close().await.unwrap();
}
