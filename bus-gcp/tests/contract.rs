//! The bus contract suite against Google's Pub/Sub emulator, started for this test binary (or
//! the one named by PUBSUB_EMULATOR_HOST).

use std::sync::Arc;
use std::time::Duration;

use bus_core::{Capabilities, Publisher, Result, Subscriber};
use bus_gcp::{GcpBackend, GcpConfig};
use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::BackendFactory;

struct GcpFactory(GcpBackend);

#[async_trait::async_trait]
impl BackendFactory for GcpFactory {
    fn name(&self) -> &'static str {
        bus_gcp::BACKEND
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(self.0.publisher()))
    }
    async fn subscriber(&self) -> Result<Box<dyn Subscriber>> {
        Ok(Box::new(self.0.subscriber()))
    }
    /// A redelivery after the ack deadline (10 s at least on Pub/Sub) on a busy 2-core machine.
    fn receive_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
}

async fn factory() -> Arc<dyn BackendFactory> {
    let host = match std::env::var(bus_gcp::EMULATOR_HOST_VAR) {
        Ok(host) => host,
        Err(_) => PubSubEmulator::shared().host_port(),
    };
    let config = GcpConfig {
        endpoint: Some(format!("http://{host}")),
        ..GcpConfig::new("bus-contract")
    };
    Arc::new(GcpFactory(
        GcpBackend::connect(&config)
            .await
            .expect("connect to the emulator"),
    ))
}

bus_testkit::contract_suite!(factory());
