//! The bus contract suite against Google's Pub/Sub emulator, started for this test binary (or
//! the one named by PUBSUB_EMULATOR_HOST).

use std::time::Duration;

use bus_gcp::{GcpBackend, GcpConfig};
use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::Target;

async fn target() -> Target {
    let host = match std::env::var(bus_gcp::EMULATOR_HOST_VAR) {
        Ok(host) => host,
        Err(_) => PubSubEmulator::shared().host_port(),
    };
    let config = GcpConfig {
        endpoint: Some(format!("http://{host}")),
        ..GcpConfig::new("bus-contract")
    };
    let backend = GcpBackend::connect(&config)
        .await
        .expect("connect to the emulator");
    // A redelivery after the ack deadline (10 s at least on Pub/Sub) on a busy 2-core machine.
    Target::new(backend).with_receive_timeout(Duration::from_secs(60))
}

bus_testkit::contract_suite!(target());
