//! What a connection costs to keep: rumqttc keeps a slot for every publish a connection may
//! have unconfirmed, for the connection's whole life. Left to the broker (Mosquitto's test
//! config allows 65,535), that is about 14 MiB per connection, and every subscription has a
//! connection of its own. `mqtt.max_in_flight_publishes` bounds it; publishes beyond it wait
//! their turn instead of failing. (A file of its own: it reads the process's resident size.)

use std::time::Duration;

use bus_core::{Backend, Message, SubscriptionOptions, Topic};
use bus_mqtt::{MqttBackend, MqttConfig};
use bus_testkit::mosquitto::Mosquitto;

/// The process's resident set, in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stay_small_and_publishes_beyond_the_limit_wait_their_turn() {
    let broker = Mosquitto::start();
    let run = std::process::id();

    // Seventeen connections: one publisher and sixteen consumers.
    let config = MqttConfig {
        url: broker.url(),
        client_id: format!("footprint-{run}"),
        ..MqttConfig::default()
    };
    let backend = MqttBackend::connect(&config).await.unwrap();
    let topic = Topic::new(format!("footprint/{run}")).unwrap();
    let publisher = backend.publisher();
    publisher
        .publish(&topic, Message::new("warm-up"))
        .await
        .unwrap();
    let before = resident_kib();
    let mut consumers = Vec::new();
    for n in 0..16 {
        let options = SubscriptionOptions::new(format!("s{n}")).unwrap();
        consumers.push(
            backend
                .subscriber()
                .subscribe(&topic, options)
                .await
                .unwrap(),
        );
    }
    let grown_kib = resident_kib().saturating_sub(before);
    eprintln!("16 consumers: {grown_kib} KiB more resident");
    let grown_mib = grown_kib / 1024;
    // Before the limit: 16 × ~14 MiB. With it: well under 1 MiB each.
    assert!(
        grown_mib < 48,
        "16 consumers grew the process by {grown_mib} MiB"
    );
    for consumer in &consumers {
        consumer.close().await.unwrap();
    }
    backend.close().await.unwrap();

    // With room for 4 unconfirmed publishes, 200 concurrent ones all go through, each once.
    let config = MqttConfig {
        url: broker.url(),
        client_id: format!("footprint-narrow-{run}"),
        max_in_flight_publishes: 4,
        ..MqttConfig::default()
    };
    let backend = MqttBackend::connect(&config).await.unwrap();
    let topic = Topic::new(format!("footprint/narrow/{run}")).unwrap();
    let subscription = backend
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("all").unwrap())
        .await
        .unwrap();
    let publisher = backend.publisher();
    let publishes = (0..200).map(|n| publisher.publish(&topic, Message::new(n.to_string())));
    for result in futures::future::join_all(publishes).await {
        result.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 200 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.receive())
            .await
            .expect("every publish arrives")
            .unwrap();
        let n: u32 = std::str::from_utf8(delivery.payload())
            .unwrap()
            .parse()
            .unwrap();
        assert!(seen.insert(n), "message {n} arrived twice");
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>()
    );
    subscription.close().await.unwrap();
    backend.close().await.unwrap();
}
