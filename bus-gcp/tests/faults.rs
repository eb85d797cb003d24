//! Faults between bus-gcp and the emulator: connections cut by a TCP proxy under load.
//!
//! A cut consumer connection leaves a phantom stream on the emulator (see the crate docs), which
//! keeps taking the subscription's messages and hands them back only as their ack deadline
//! expires, after an unbounded number of rounds. So the "nothing lost" run cuts the publishers'
//! connections, and the consumer's cut is a test of its own that checks it recovers.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Backend, Message, Publisher, Subscriber, Subscription, SubscriptionOptions, Topic};
use bus_gcp::{GcpBackend, GcpConfig};
use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::fault_proxy::FaultProxy;
use bus_testkit::faults::load_under_faults;
use futures::future::BoxFuture;

fn emulator_address() -> SocketAddr {
    let host = std::env::var(bus_gcp::EMULATOR_HOST_VAR)
        .unwrap_or_else(|_| PubSubEmulator::shared().host_port());
    host.parse()
        .expect("PUBSUB_EMULATOR_HOST is HOST:PORT with an IP address")
}

async fn connect(address: SocketAddr) -> GcpBackend {
    let config = GcpConfig {
        endpoint: Some(format!("http://{address}")),
        ..GcpConfig::new("bus-faults")
    };
    GcpBackend::connect(&config)
        .await
        .expect("connect to the emulator")
}

/// A proxy to the emulator, a backend through it, a backend straight to the emulator and a
/// fresh topic.
async fn setup(label: &str) -> (FaultProxy, GcpBackend, GcpBackend, Topic) {
    let proxy = FaultProxy::start(emulator_address()).await;
    let through_proxy = connect(proxy.address()).await;
    let direct = connect(emulator_address()).await;
    let topic = Topic::new(format!("faults/{label}/{}", uuid::Uuid::new_v4().simple())).unwrap();
    (proxy, through_proxy, direct, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_publish_connections_are_cut_twice_under_load() {
    const PUBLISHERS: usize = 10;
    const EACH: usize = 1_000;
    let (proxy, through_proxy, direct, topic) = setup("publish-cut").await;
    let proxy = Arc::new(proxy);
    let subscription = direct
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("survivor").unwrap())
        .await
        .unwrap();

    let publishers: Vec<Arc<dyn Publisher>> = (0..PUBLISHERS)
        .map(|_| Arc::new(through_proxy.publisher()) as Arc<dyn Publisher>)
        .collect();
    let cut = {
        let proxy = proxy.clone();
        move || -> BoxFuture<'static, ()> {
            proxy.cut();
            Box::pin(async {})
        }
    };
    let report = load_under_faults(
        publishers,
        &*subscription,
        &topic,
        EACH,
        Duration::from_secs(60),
        &[PUBLISHERS * EACH / 4, PUBLISHERS * EACH * 3 / 5],
        cut,
    )
    .await;
    assert_eq!(proxy.cuts(), 2);
    let _ = writeln!(
        std::io::stderr(),
        "publish connections cut twice during {} publishes: 0 lost, {} duplicate deliveries, {:?}",
        report.messages,
        report.duplicates,
        report.elapsed
    );
}

/// Publishes `count` messages tagged `round` directly, then receives until one of them
/// arrives (earlier rounds may still trickle in), acking everything.
async fn publish_round_and_receive_one(
    publisher: &dyn Publisher,
    subscription: &dyn Subscription,
    topic: &Topic,
    round: usize,
    count: usize,
) {
    let mut ids = HashSet::new();
    for i in 0..count {
        let message = Message::new(format!("{round}:{i}"));
        ids.insert(publisher.publish(topic, message).await.unwrap());
    }
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(60), subscription.receive())
            .await
            .unwrap_or_else(|_| panic!("round {round}: nothing received within 60 s"))
            .unwrap_or_else(|e| panic!("round {round}: the consumer failed: {e}"));
        let mine = ids.contains(delivery.id());
        delivery.ack().await.unwrap();
        if mine {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_keeps_receiving_after_its_connection_is_cut_twice() {
    let (proxy, through_proxy, direct, topic) = setup("consumer-cut").await;
    let subscription = through_proxy
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("survivor").unwrap())
        .await
        .unwrap();
    let publisher = direct.publisher();
    publish_round_and_receive_one(&publisher, &*subscription, &topic, 0, 200).await;
    for round in 1..=2 {
        proxy.cut();
        // The consumer's stream failed; it must reopen it and go on receiving.
        publish_round_and_receive_one(&publisher, &*subscription, &topic, round, 200).await;
    }
    assert_eq!(proxy.cuts(), 2);
    subscription.close().await.unwrap();
}
