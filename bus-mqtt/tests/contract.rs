//! The bus contract suite against a real Mosquitto started for this test binary (or the broker
//! named by BUS_TEST_MQTT_URL).

use std::sync::Arc;

use bus_core::{Capabilities, Publisher, Result, Subscriber};
use bus_mqtt::{MqttBackend, MqttConfig};
use bus_testkit::mosquitto::Mosquitto;
use bus_testkit::BackendFactory;

struct MqttFactory(MqttBackend);

#[async_trait::async_trait]
impl BackendFactory for MqttFactory {
    fn name(&self) -> &'static str {
        bus_mqtt::BACKEND
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
}

fn broker_url() -> String {
    match std::env::var("BUS_TEST_MQTT_URL") {
        Ok(url) => url,
        Err(_) => Mosquitto::shared().url(),
    }
}

async fn factory() -> Arc<dyn BackendFactory> {
    let config = MqttConfig {
        url: broker_url(),
        client_id: format!("contract-{}", std::process::id()),
        ..MqttConfig::default()
    };
    Arc::new(MqttFactory(
        MqttBackend::connect(&config)
            .await
            .expect("connect to the broker"),
    ))
}

bus_testkit::contract_suite!(factory());
