//! Faults between bus-gcp and the emulator: connections cut by a TCP proxy under load. (A
//! consumer that disappears without acking is a contract scenario.)

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Publisher, Subscriber, SubscriptionOptions, Topic};
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

fn config(endpoint: String) -> GcpConfig {
    GcpConfig {
        endpoint: Some(endpoint),
        // What is in flight on a cut stream comes back only when its ack deadline runs out,
        // slowly on the emulator: a small prefetch keeps that tail short.
        max_outstanding_messages: 20,
        ..GcpConfig::new("bus-faults")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_connections_are_cut_twice_under_load() {
    const PUBLISHERS: usize = 10;
    const EACH: usize = 1_000;
    let proxy = FaultProxy::start(emulator_address()).await;
    let backend = GcpBackend::connect(&config(format!("http://{}", proxy.address())))
        .await
        .unwrap();
    let topic = Topic::new("faults/cut").unwrap();
    let subscription = backend
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("survivor").unwrap())
        .await
        .unwrap();

    let publishers: Vec<Arc<dyn Publisher>> = (0..PUBLISHERS)
        .map(|_| Arc::new(backend.publisher()) as Arc<dyn Publisher>)
        .collect();
    let proxy = Arc::new(proxy);
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
        Duration::from_secs(180),
        &[PUBLISHERS * EACH / 4, PUBLISHERS * EACH * 3 / 5],
        cut,
    )
    .await;
    assert_eq!(proxy.cuts(), 2);
    let _ = writeln!(
        std::io::stderr(),
        "connections cut twice during {} publishes: 0 lost, {} duplicate deliveries, {:?}",
        report.messages,
        report.duplicates,
        report.elapsed
    );
}
